"""The forward algorithm as a pytensor graph: values against enumeration, finite gradients."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from pm_em.distributions import forward_log_likelihood
from tests.hmm_oracles import enumerate_paths
from tests.oracles import make_rng


@pytest.mark.parametrize("n_steps", [1, 2, 6])
@pytest.mark.parametrize("batched", [False, True], ids=["shared-P", "per-sequence-P"])
def test_per_step_terms_sum_to_every_path(n_steps, batched):
    rng = make_rng(n_steps)
    k, n_seq = 3, 2
    trans = rng.dirichlet(np.ones(k), size=(n_seq, k) if batched else (k,))
    trans[..., 0, 2] = 0.0  # a structural zero
    trans[..., 0, :] /= trans[..., 0, :].sum(-1, keepdims=True)
    log_init = np.log(rng.dirichlet(np.ones(k), size=n_seq))
    log_b = 2.0 * rng.normal(size=(n_seq, n_steps, k))
    with np.errstate(divide="ignore"):
        log_trans = np.log(trans)
    steps = forward_log_likelihood(log_init, log_trans, log_b).eval(mode="FAST_COMPILE")
    assert steps.shape == (n_seq, n_steps)
    ref = enumerate_paths(log_init, log_trans, log_b)
    # Exact identity, round-off only.
    np.testing.assert_allclose(steps.sum(-1), ref.log_lik, rtol=0, atol=1e-10)


def test_gradient_is_finite_with_structural_zeros_and_matches_differences():
    rng = make_rng(2)
    log_b = rng.normal(size=(1, 5, 3))
    theta = pt.vector("theta")
    trans = pt.as_tensor(np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.3, 0.3, 0.4]]))
    log_init = pt.log(pt.as_tensor(np.array([[1.0, 0.0, 0.0]])))
    emission = pt.as_tensor(log_b) * theta[0] + theta[1]
    ll = forward_log_likelihood(log_init, pt.log(trans), emission).sum()
    fn = pytensor.function([theta], [ll, pytensor.grad(ll, theta)], mode="FAST_COMPILE")
    at = np.array([0.7, -0.2])
    _, grad = fn(at)
    assert np.all(np.isfinite(grad))
    h = 1e-6
    numeric = [(fn(at + e)[0] - fn(at - e)[0]) / (2 * h) for e in np.eye(2) * h]
    # Central differences at h = 1e-6: truncation ~1e-12, cancellation ~1e-10.
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("trans_shape", ["shared", "per-sequence", "broadcast"])
def test_forward_backward_op_equals_the_scan_in_value_and_gradient(trans_shape):
    from pm_em.distributions import hmm_log_likelihood

    rng = make_rng(3)
    theta = pt.vector("theta")
    k = 3
    trans = {
        "shared": rng.dirichlet(np.ones(k), size=k),
        "per-sequence": rng.dirichlet(np.ones(k), size=(2, k)),
        "broadcast": rng.dirichlet(np.ones(k), size=(1, k)),
    }[trans_shape]
    log_b = pt.as_tensor(rng.normal(size=(2, 6, k))) * theta[0]
    log_trans = pt.log(pt.as_tensor(trans)) * theta[1]
    log_init = pt.log(pt.as_tensor(rng.dirichlet(np.ones(k), size=2))) * theta[2]
    op = hmm_log_likelihood(log_init, log_trans, log_b).sum()
    scan = forward_log_likelihood(log_init, log_trans, log_b).sum()
    fn = pytensor.function(
        [theta], [op, scan, pytensor.grad(op, theta), pytensor.grad(scan, theta)], mode="CVM"
    )
    v_op, v_scan, g_op, g_scan = fn(np.array([0.7, 1.1, 0.9]))
    # Two algorithms for one density; the Op's gradient is the smoothed expectations
    # (Fisher's identity), the scan's is reverse-mode through the recursion: round-off only.
    assert v_op == pytest.approx(v_scan, abs=1e-12)
    np.testing.assert_allclose(g_op, g_scan, rtol=1e-10, atol=1e-12)
