"""A hidden Markov model's observed-data likelihood as pytensor graphs, for NUTS and Laplace.

Two graphs of one density, log p(y) with the chain summed out:

- `forward_log_likelihood`: the forward algorithm as a ``pytensor.scan``, per time step
  log p(y_t | y_<t). Differentiable to any order: the Laplace Hessian (`pm_em.laplace`).
- `hmm_log_likelihood`: one Op per sequence that runs the Numba forward–backward of
  `pm_em.distributions.forward_backward`; its gradient is the smoothed expectations
  themselves (∂ log p(y) / ∂ log p(y_t | z_t = k) = γ_t[k], / ∂ log P_ij = ξ_ij, / ∂ log
  p(z_0 = k) = γ_0[k]: Fisher's identity), exact and about a hundred times faster than
  differentiating the scan, so NUTS (`pm_em.sample_marginal`) runs on it. It has no second
  derivative.

The recursion carries the normalized log filter a_t = log p(z_t | y_≤t), so every quantity
that enters ``exp`` is O(1) whatever the length of the series (the unnormalized log form
loses ~1e-9 of accuracy at T = 1e5):

    w_t = log(exp(a_{t-1}) P) + log B_t,   c_t = logsumexp(w_t),   a_t = w_t − c_t.

Structural zeros of P (and of the initial distribution) are legal: their logs are -inf, and
the double ``switch`` keeps the gradient finite.
"""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import grad_not_implemented
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import generate_fallback_impl, numba_funcify

from pm_em.distributions.forward_backward import forward_backward

__all__ = ["forward_log_likelihood", "hmm_log_likelihood"]


def _log_positive(p: Variable) -> Variable:
    """Log p, -inf where p == 0, with a finite gradient there."""
    positive = p > 0
    return pt.switch(positive, pt.log(pt.switch(positive, p, 1.0)), -np.inf)


def _normalize(w: Variable) -> tuple[Variable, Variable]:
    """Return (w − logsumexp(w), logsumexp(w)) over the last axis; all -inf stays -inf."""
    c = pt.logsumexp(w, axis=-1)
    return w - pt.switch(pt.isinf(c), 0.0, c)[..., None], c


def forward_log_likelihood(log_init, log_trans, log_emission) -> Variable:
    """Return log p(y_t | y_<t) of a hidden Markov model for every time step.

    Parameters
    ----------
    log_init : tensor_like of shape (*batch, K)
        log p(z_0 = k).
    log_trans : tensor_like of shape (K, K) or (*batch, K, K)
        log P, ``log_trans[..., i, j] = log p(z_t = j | z_{t-1} = i)``.
    log_emission : tensor_like of shape (*batch, T, K)
        log p(y_t | z_t = k): the dependents' joint log density at each time step and state.

    Returns
    -------
    TensorVariable of shape (*batch, T)
        Its sum over time is the log likelihood of each sequence, log p(y).

    Examples
    --------
    >>> import numpy as np
    >>> from pm_em.distributions import forward_log_likelihood
    >>> log_b = np.log([[0.9, 0.2], [0.9, 0.2], [0.1, 0.8], [0.9, 0.2], [0.9, 0.2]])
    >>> steps = forward_log_likelihood(np.log([0.5, 0.5]), np.log([[0.7, 0.3], [0.3, 0.7]]), log_b)
    >>> round(float(steps.sum().eval()), 4)  # the umbrella example: log p(y)
    -3.3725
    """
    log_init = pt.as_tensor_variable(log_init)
    trans = pt.exp(pt.as_tensor_variable(log_trans))
    log_b = pt.moveaxis(pt.as_tensor_variable(log_emission), -2, 0)  # (T, *batch, K)
    a0, c0 = _normalize(log_init + log_b[0])

    def step(log_b_t, a_prev, c_prev, trans):
        # c_prev is carried only so that a 0-step scan (T = 1) keeps its shape.
        predicted = (pt.exp(a_prev)[..., None, :] @ trans)[..., 0, :]  # (*batch, K)
        return _normalize(_log_positive(predicted) + log_b_t)

    _, c_rest = pytensor.scan(
        step,
        sequences=[log_b[1:]],
        outputs_info=[a0, c0],
        non_sequences=[trans],
        return_updates=False,
    )
    steps = pt.concatenate([c0[None], c_rest], axis=0)  # (T, *batch)
    return pt.moveaxis(steps, 0, -1)


def _sequences(log_init, log_trans, log_emission):
    """(S, K), (S or 1, K, K) probabilities, (S, T, K) from the broadcast batch of sequences."""
    batch = log_emission.shape[:-2]
    n_steps, n_states = log_emission.shape[-2:]
    n_seq = int(np.prod(batch))
    emission = log_emission.reshape(n_seq, n_steps, n_states)
    init = np.broadcast_to(log_init, (*batch, n_states)).reshape(n_seq, n_states)
    if log_trans.ndim == 2:
        log_trans = log_trans[None]
    else:
        log_trans = np.broadcast_to(log_trans, (*batch, n_states, n_states))
        log_trans = log_trans.reshape(n_seq, n_states, n_states)
    with np.errstate(under="ignore"):
        return init, np.exp(log_trans), emission, batch


class _Expectations(Op):
    """(log_init, log_trans, log_emission) -> (γ_0, ξ, γ) per sequence; no gradient."""

    __props__ = ()

    def make_node(self, log_init, log_trans, log_emission):
        inputs = [
            pt.as_tensor_variable(v).astype("float64") for v in (log_init, log_trans, log_emission)
        ]
        emission = inputs[2]
        batch = emission.type.shape[:-2]
        k = emission.type.shape[-1]
        outputs = [
            pt.tensor(dtype="float64", shape=(*batch, k)),
            pt.tensor(dtype="float64", shape=(*batch, k, k)),
            emission.type(),
        ]
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, outputs):
        init, trans, emission, batch = _sequences(*inputs)
        fb = forward_backward(init, trans, emission)
        k = emission.shape[-1]
        outputs[0][0] = fb.resp[:, 0, :].reshape(*batch, k)
        outputs[1][0] = fb.transitions.reshape(*batch, k, k)
        outputs[2][0] = fb.resp.reshape(inputs[2].shape)

    def pullback(self, inputs, outputs, cotangents):
        return [grad_not_implemented(self, i, v) for i, v in enumerate(inputs)]


def _sum_to(value: Variable, like: Variable) -> Variable:
    """Sum ``value`` over the axes ``like`` broadcasts along (leading, or of length 1)."""
    extra = value.type.ndim - like.type.ndim
    if extra:
        value = value.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, b in enumerate(like.type.broadcastable) if b)
    return value.sum(axis=axes, keepdims=True) if axes else value


class _LogLikelihood(Op):
    """(log_init, log_trans, log_emission) -> log p(y) per sequence, (*batch,)."""

    __props__ = ()

    def make_node(self, log_init, log_trans, log_emission):
        inputs = [
            pt.as_tensor_variable(v).astype("float64") for v in (log_init, log_trans, log_emission)
        ]
        batch = inputs[2].type.shape[:-2]
        return Apply(self, inputs, [pt.tensor(dtype="float64", shape=batch)])

    def perform(self, node, inputs, outputs):
        init, trans, emission, batch = _sequences(*inputs)
        outputs[0][0] = np.asarray(
            forward_backward(init, trans, emission).log_likelihood.reshape(batch)
        )

    def pullback(self, inputs, outputs, cotangents):
        (g,) = cotangents  # (*batch,)
        initial, transitions, resp = _Expectations()(*inputs)
        log_init, log_trans, log_emission = inputs
        return [
            _sum_to(g[..., None] * initial, log_init),
            _sum_to(g[..., None, None] * transitions, log_trans),
            _sum_to(g[..., None, None] * resp, log_emission),
        ]


def hmm_log_likelihood(log_init, log_trans, log_emission) -> Variable:
    """Return log p(y) of each sequence of a hidden Markov model, with a fast exact gradient.

    The same density as ``forward_log_likelihood(...).sum(-1)``, computed by the Numba
    forward–backward; the gradient is the smoothed expectations (see the module docstring).
    No second derivative: differentiate `forward_log_likelihood` for a Hessian.

    Parameters
    ----------
    log_init : tensor_like of shape (*batch, K)
    log_trans : tensor_like of shape (K, K) or (*batch, K, K)
    log_emission : tensor_like of shape (*batch, T, K)

    Returns
    -------
    TensorVariable of shape batch

    Examples
    --------
    >>> import numpy as np
    >>> from pm_em.distributions import hmm_log_likelihood
    >>> log_b = np.log([[0.9, 0.2], [0.9, 0.2], [0.1, 0.8], [0.9, 0.2], [0.9, 0.2]])
    >>> ll = hmm_log_likelihood(np.log([0.5, 0.5]), np.log([[0.7, 0.3], [0.3, 0.7]]), log_b)
    >>> round(float(ll.eval()), 4)
    -3.3725
    """
    return _LogLikelihood()(log_init, log_trans, log_emission)


def object_mode_in_numba(*ops: type) -> None:
    """Let PyTensor's Numba backend call these Ops' ``perform`` without its warning.

    Their ``perform`` already runs compiled Numba kernels (or cheap numpy), so object mode
    costs one Python call per evaluation; PyTensor's generic fallback would do the same but
    warn that it is slow.
    """

    def quiet(op, node, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Numba will use object mode", UserWarning)
            return generate_fallback_impl(op, node, **kwargs)

    for op in ops:
        numba_funcify.register(op)(quiet)


object_mode_in_numba(_LogLikelihood, _Expectations)
