"""The forward algorithm as a pytensor graph: a hidden Markov model's observed-data likelihood.

`forward_log_likelihood` sums a chain out of the joint density of a hidden Markov model and
returns, per time step, log p(y_t | y_<t): their sum is log p(y). It is a differentiable
``pytensor.scan``, so NUTS (`pm_em.sample_marginal`) and the Laplace Hessian
(`pm_em.laplace`) use the very density EM maximizes; the E-step itself runs the faster
compiled forward–backward of `pm_em.engine.forward_backward`.

The recursion carries the normalized log filter a_t = log p(z_t | y_≤t), so every quantity
that enters ``exp`` is O(1) whatever the length of the series (the unnormalized log form
loses ~1e-9 of accuracy at T = 1e5):

    w_t = log(exp(a_{t-1}) P) + log B_t,   c_t = logsumexp(w_t),   a_t = w_t − c_t.

Structural zeros of P (and of the initial distribution) are legal: their logs are -inf, and
the double ``switch`` keeps the gradient finite.
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

__all__ = ["forward_log_likelihood"]


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
