"""The Numba forward–backward and Viterbi against enumeration of every path and textbooks."""

import numpy as np
import pytest

from pm_em.distributions.forward_backward import _log_space, forward_backward, viterbi
from tests.hmm_oracles import enumerate_paths
from tests.oracles import make_rng

# Exact identities computed two ways (recursions vs sums over K^T paths): round-off only,
# ~1e-15 measured; 1e-10 leaves room for other platforms' libm.
EXACT = 1e-10


def _random_hmm(rng, n_seq, n_steps, n_states, *, batched, zero=False):
    shape = (n_seq, n_states, n_states) if batched else (1, n_states, n_states)
    trans = rng.dirichlet(np.ones(n_states), size=shape[:-1])
    if zero and n_states == 3:  # a structural zero: 0 -> 2 is impossible
        trans[..., 0, 2] = 0.0
        trans[..., 0, :] /= trans[..., 0, :].sum(-1, keepdims=True)
    log_init = np.log(rng.dirichlet(np.ones(n_states), size=n_seq))
    log_b = 3.0 * rng.normal(size=(n_seq, n_steps, n_states))
    return log_init, trans, log_b


@pytest.mark.parametrize("n_states", [1, 2, 3])
@pytest.mark.parametrize("n_steps", [1, 2, 5, 8])
@pytest.mark.parametrize("batched", [False, True], ids=["shared-P", "per-sequence-P"])
def test_against_every_path(n_states, n_steps, batched):
    if n_states == 3 and n_steps == 8:
        n_steps = 7  # 3^8 paths x 3 sequences is slow in numpy; 3^7 is plenty
    rng = make_rng(100 * n_states + n_steps)
    log_init, trans, log_b = _random_hmm(rng, 3, n_steps, n_states, batched=batched, zero=True)
    with np.errstate(divide="ignore"):
        log_trans = np.log(trans)
        ref = enumerate_paths(log_init, log_trans, log_b)
        fb = forward_backward(log_init, trans, log_b, entropy=True)
        path, best = viterbi(log_init, log_trans, log_b)
    np.testing.assert_allclose(fb.log_likelihood, ref.log_lik, rtol=0, atol=EXACT)
    np.testing.assert_allclose(fb.resp, ref.resp, rtol=0, atol=EXACT)
    np.testing.assert_allclose(fb.transitions, ref.transitions, rtol=0, atol=EXACT)
    np.testing.assert_allclose(fb.entropy, ref.entropy, rtol=0, atol=EXACT)
    np.testing.assert_array_equal(path, ref.viterbi)
    np.testing.assert_allclose(best, ref.viterbi_log_joint, rtol=0, atol=EXACT)
    assert fb.n_log_space == 0


def test_log_space_kernel_against_every_path():
    rng = make_rng(7)
    log_init, trans, log_b = _random_hmm(rng, 2, 6, 3, batched=True, zero=True)
    with np.errstate(divide="ignore"):
        ref = enumerate_paths(log_init, np.log(trans), log_b)
    for s in range(2):
        gamma, xi, steps = np.empty((6, 3)), np.zeros((3, 3)), np.empty(6)
        entropy = _log_space(log_init[s], trans[s], log_b[s], gamma, xi, steps, True)
        np.testing.assert_allclose(gamma, ref.resp[s], rtol=0, atol=EXACT)
        np.testing.assert_allclose(xi, ref.transitions[s], rtol=0, atol=EXACT)
        assert steps.sum() == pytest.approx(ref.log_lik[s], abs=EXACT)
        assert entropy == pytest.approx(ref.entropy[s], abs=EXACT)


def test_scaled_and_log_space_agree_on_a_long_series():
    # T = 1e5: the unnormalized log form loses ~1e-9 here; both normalized forms keep ~1e-13.
    rng = make_rng(11)
    n_steps, k = 100_000, 4
    trans = np.full((k, k), 0.02) + np.eye(k) * (1 - 0.02 * k)
    y = rng.normal(2.0 * rng.integers(0, k, n_steps), 1.0)
    log_b = -0.5 * (y[:, None] - 2.0 * np.arange(k)) ** 2 - 0.5 * np.log(2 * np.pi)
    log_init = np.full((1, k), -np.log(k))
    fb = forward_backward(log_init, trans[None], log_b[None])
    gamma, xi, steps = np.empty((n_steps, k)), np.zeros((k, k)), np.empty(n_steps)
    _log_space(log_init[0], trans, log_b, gamma, xi, steps, False)
    np.testing.assert_allclose(fb.resp[0], gamma, rtol=0, atol=1e-11)
    np.testing.assert_allclose(fb.transitions[0], xi, rtol=1e-11)
    assert fb.log_likelihood[0] == pytest.approx(steps.sum(), rel=1e-13)
    np.testing.assert_allclose(fb.resp.sum(-1), 1.0, rtol=0, atol=1e-12)


def test_an_unreachable_best_state_next_to_an_outlier():
    # A left-to-right chain that cannot reach state 2 before step 2, whose data at step 1
    # favour state 2 by 2000 nats: shifting by the best emission overall would underflow
    # every reachable state; the kernel shifts by the best reachable one.
    trans = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    log_b = np.zeros((1, 6, 3))
    log_b[0, 1] = [-2000.0, -1990.0, 0.0]
    with np.errstate(divide="ignore"):
        log_init = np.log([[1.0, 0.0, 0.0]])
        ref = enumerate_paths(log_init, np.log(trans), log_b)
        fb = forward_backward(log_init, trans[None], log_b)
    assert fb.log_likelihood[0] == pytest.approx(ref.log_lik[0], abs=EXACT)
    np.testing.assert_allclose(fb.resp, ref.resp, rtol=0, atol=EXACT)


def test_an_impossible_sequence_has_zero_likelihood_and_no_expectations():
    trans = np.array([[1.0, 0.0], [0.0, 1.0]])
    log_b = np.zeros((2, 3, 2))
    log_b[1, 2] = [-np.inf, 0.0]  # sequence 1 starts in state 0 and can never leave it
    with np.errstate(divide="ignore"):
        fb = forward_backward(np.log([[1.0, 0.0]]), trans[None], log_b)
    assert np.isfinite(fb.log_likelihood[0]) and fb.log_likelihood[1] == -np.inf
    assert np.all(fb.resp[1] == 0) and np.all(fb.transitions[1] == 0)


def test_degraded_sequences_are_redone_in_log_space():
    # Normalizers near the subnormal range lose digits: P with a transition of 1e-300 into
    # the only state that can explain the data.
    trans = np.array([[1 - 1e-300, 1e-300], [0.5, 0.5]])
    log_b = np.zeros((1, 4, 2))
    log_b[0, 1] = [-np.inf, 0.0]
    with np.errstate(divide="ignore"):
        log_init = np.log([[1.0, 0.0]])
        ref = enumerate_paths(log_init, np.log(trans), log_b)
        fb = forward_backward(log_init, trans[None], log_b)
    assert fb.n_log_space == 1
    assert fb.log_likelihood[0] == pytest.approx(ref.log_lik[0], rel=1e-12)
    np.testing.assert_allclose(fb.resp, ref.resp, rtol=0, atol=EXACT)


def test_wikipedia_umbrella_example():
    # hmmlearn's tests/test_base.py (TestBaseAgainstWikipedia), from the Wikipedia article
    # on the forward-backward algorithm; its values are published to 4 decimals.
    frameprob = np.array([[0.9, 0.2], [0.9, 0.2], [0.1, 0.8], [0.9, 0.2], [0.9, 0.2]])
    trans = np.array([[0.7, 0.3], [0.3, 0.7]])
    log_init = np.log([[0.5, 0.5]])
    fb = forward_backward(log_init, trans[None], np.log(frameprob)[None])
    path, best = viterbi(log_init, np.log(trans)[None], np.log(frameprob)[None])
    assert round(float(fb.log_likelihood[0]), 4) == -3.3725
    np.testing.assert_array_equal(path[0], [0, 0, 1, 0, 0])
    assert round(float(best[0]), 4) == -4.4590
    alpha = np.array([[0.45, 0.1], [0.3105, 0.041], [0.023, 0.0975], [0.0408, 0.015]])
    beta = np.array([[0.0661, 0.0455], [0.0906, 0.1503], [0.4593, 0.2437], [0.69, 0.41]])
    # The published forward and backward lattices give the smoothed marginals to ~1e-3
    # (products of 4-decimal numbers, normalized).
    published = alpha * beta / (alpha * beta).sum(-1, keepdims=True)
    np.testing.assert_allclose(fb.resp[0, :4], published, rtol=0, atol=2e-3)


def test_wikipedia_weather_example():
    # hmmlearn's tests/test_categorical_hmm.py: ['walk', 'shop', 'clean'] were most likely
    # generated by ['Sunny', 'Rainy', 'Rainy'] with probability 0.01344.
    emission = np.array([[0.1, 0.4, 0.5], [0.6, 0.3, 0.1]])
    trans = np.array([[0.7, 0.3], [0.4, 0.6]])
    log_init = np.log([[0.6, 0.4]])
    log_b = np.log(emission[:, [0, 1, 2]].T)[None]
    path, best = viterbi(log_init, np.log(trans)[None], log_b)
    np.testing.assert_array_equal(path[0], [1, 0, 0])
    assert round(float(np.exp(best[0])), 5) == 0.01344
    fb = forward_backward(log_init, trans[None], log_b)
    # hmmlearn's constants (atol 1e-6 there) are 7e-8 to 9e-8 from the exact values.
    hmmlearn = [[0.23170303, 0.76829697], [0.62406281, 0.37593719], [0.86397706, 0.13602294]]
    np.testing.assert_allclose(fb.resp[0], hmmlearn, rtol=0, atol=1e-7)
