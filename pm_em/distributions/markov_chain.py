"""`MarkovChain`: a first-order discrete Markov chain as a PyMC distribution.

The chain is a `SymbolicRandomVariable` (as PyMC's own ``pm.AR``): its Op, `MarkovChainRV`,
has the inputs ``[P, steps, init_dist, rng]`` (the order pymc-extras' ``DiscreteMarkovChain``
uses, so one reader handles both) and the outputs ``[next_rng, chain]``. PyMC draws from the
scan inside it; the log density, the support point and resizing are registered below, so the
chain works in any PyMC model (prior predictive, ``pm.sample`` with the Gibbs step of
`pm_em.distributions.step`), and pm_em recognizes it by its Op (`pm_em.reading.chains`).

Shapes: ``P`` is ``(*b, K, K)`` with rows summing to 1; the chain is ``(*batch, T)`` with time last,
``T = steps + 1``, and ``batch`` the broadcast of ``P``'s batch ``b`` and the initial
distribution's shape.
"""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.distributions.dist_math import check_parameters
from pymc.distributions.distribution import (
    Distribution,
    SymbolicRandomVariable,
    _support_point,
    support_point,
)
from pymc.distributions.shape_utils import _change_dist_size, change_dist_size, get_support_shape_1d
from pymc.logprob.abstract import _logprob
from pymc.logprob.basic import logp
from pymc.pytensorf import intX
from pymc.util import check_dist_not_registered
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.op import Op
from pytensor.tensor.random.basic import CategoricalRV
from pytensor.tensor.variable import TensorVariable

from pm_em.distributions.forward import object_mode_in_numba

__all__ = ["MarkovChain", "MarkovChainRV", "stationary_distribution"]


def stationary_distribution(P) -> TensorVariable:
    """Return the stationary distribution of the row-stochastic matrix ``P``.

    Solves ``π P = π, Σ π = 1`` as ``(I − Pᵀ + 1 1ᵀ) π = 1``: the rank-one term replaces the
    normalization, and the matrix is invertible whenever the chain has one stationary
    distribution (an irreducible chain). Differentiable, and batched over leading axes.

    Parameters
    ----------
    P : tensor_like of shape ``(*b, K, K)``

    Returns
    -------
    TensorVariable of shape ``(*b, K)``

    Examples
    --------
    >>> import numpy as np
    >>> from pm_em.distributions import stationary_distribution
    >>> stationary_distribution(np.array([[0.9, 0.1], [0.3, 0.7]])).eval().round(3)
    array([0.75, 0.25])
    """
    P = pt.as_tensor_variable(P)
    n_states = P.shape[-1]
    system = pt.eye(n_states) - pt.swapaxes(P, -1, -2) + pt.ones((n_states, n_states))
    rhs = pt.ones_like(P[..., :, :1])  # (*b, K, 1)
    return pt.linalg.solve(system, rhs)[..., 0]


class MarkovChainRV(SymbolicRandomVariable):
    """The Op of a first-order Markov chain: inputs ``[P, steps, init_dist, rng]``.

    ``init_kind`` is ``"dist"`` for a given initial distribution and ``"stationary"`` when it
    is the stationary distribution of ``P``.
    """

    extended_signature = "(k,k),(),(),[rng]->[rng],(t)"
    init_kind: str
    _print_name = ("MarkovChain", "\\operatorname{MarkovChain}")

    def __init__(self, *args, init_kind: str = "dist", **kwargs):
        self.init_kind = init_kind
        super().__init__(*args, **kwargs)

    def update(self, node):
        """Return the update of the random generator."""
        return {node.inputs[-1]: node.outputs[0]}

    @classmethod
    def rv_op(cls, P, steps, init_dist, init_kind="dist", size=None):
        """Build the chain's graph: the initial state, then ``steps`` Categorical draws."""
        P = pt.as_tensor_variable(P)
        if size is None:
            batch = tuple(
                pt.broadcast_shape(
                    tuple(P.shape)[:-2], tuple(init_dist.shape), arrays_are_shapes=True
                )
            )
        else:
            batch = tuple(size)
        init_dist = change_dist_size(init_dist, batch)
        # The inner graph must take every shape from these dummies: a shape read off the outer
        # variables would drag their random generators into it.
        P_, steps_, init_ = P.type(), steps.type(), init_dist.type()
        rng = pytensor.shared(np.random.default_rng())
        n_states = P_.shape[-1]
        P_batched = pt.broadcast_to(P_, (*tuple(init_.shape), n_states, n_states))

        def step(prev, old_rng, P_b):
            # The row of P for each sequence's previous state: (*batch, K).
            p = pt.take_along_axis(P_b, prev[..., None, None], axis=-2)[..., 0, :]
            next_rng, state = pm.Categorical.dist(p=p, rng=old_rng, return_next_rng=True)
            # The recurrent state keeps the initial state's static shape (e.g. a batch of 1).
            return prev.type.filter_variable(state), next_rng

        states, next_rng = pytensor.scan(
            step,
            outputs_info=[init_, rng],
            non_sequences=[P_batched],
            n_steps=steps_,
            strict=True,
            return_updates=False,
        )
        chain = pt.moveaxis(pt.concatenate([init_[None], states], axis=0), 0, -1)  # (*batch, T)
        op = cls(inputs=[P_, steps_, init_, rng], outputs=[next_rng, chain], init_kind=init_kind)
        return op(P, steps, init_dist, rng)


class MarkovChain(Distribution):
    r"""A first-order Markov chain over the states 0, …, K − 1.

    .. math::

        p(z_0, \ldots, z_{T-1}) = \pi_{z_0} \prod_{t=1}^{T-1} P_{z_{t-1} z_t}

    With observed variables that depend on ``z[t]`` alone (``mu[z]``, ``beta[z]``, ...) it is
    a hidden Markov model, which `pm_em.fit` fits by Baum–Welch EM (forward–backward E-step)
    and `pm_em.sample_marginal` samples with the chain summed out by the forward algorithm.

    Parameters
    ----------
    P : tensor_like of shape ``(*b, K, K)``
        Transition probabilities, ``P[i, j] = p(z_t = j | z_{t-1} = i)``; each row sums to 1
        (e.g. ``pm.Dirichlet("P", a=np.ones((K, K)))``). Leading axes batch sequences.
    init_dist : Categorical distribution or "stationary"
        Distribution of the first state: ``pm.Categorical.dist(p=p0)`` (an unregistered
        distribution, resized to the batch of sequences), or ``"stationary"`` for the
        stationary distribution of ``P`` (`stationary_distribution`).
    steps : int, optional
        Number of transitions (the chain has ``steps + 1`` states). Only needed when neither
        ``shape`` nor ``dims`` (nor ``observed``) gives the length; the last axis is time.
    **kwargs
        ``shape``, ``dims``, ``size`` and the other arguments of a PyMC distribution. With
        ``dims=("sequence", "time")`` the chain is a batch of independent sequences.

    Notes
    -----
    Sequences of different lengths can share one array: pad the observed data with NaN.
    PyMC imputes the missing entries and pm_em integrates them out, so a padded step
    contributes nothing to the likelihood and the chain carries on through it.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pm_em
    >>> P = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> chain = pm_em.MarkovChain.dist(P=P, init_dist=pm.Categorical.dist(p=[0.5, 0.5]), steps=9)
    >>> pm.draw(chain, random_seed=1).shape
    (10,)
    >>> with pm.Model(coords={"time": range(10)}):
    ...     z = pm_em.MarkovChain("z", P=P, init_dist="stationary", dims="time")
    >>> z.type.ndim
    1
    """

    rv_type = MarkovChainRV
    rv_op = MarkovChainRV.rv_op

    def __new__(cls, name, *args, steps=None, **kwargs):
        """Register a chain in the model; its length can come from ``dims`` or ``observed``."""
        steps = get_support_shape_1d(
            support_shape=steps,
            shape=None,  # checked in `dist`
            dims=kwargs.get("dims"),
            observed=kwargs.get("observed"),
            support_shape_offset=1,
        )
        return super().__new__(cls, name, *args, steps=steps, **kwargs)

    @classmethod
    def dist(cls, P, init_dist=None, *, steps=None, **kwargs):
        """Create an unregistered chain (see the class docstring for the parameters)."""
        P = pt.as_tensor_variable(P)
        if P.type.ndim < 2:
            raise ValueError(
                f"MarkovChain needs a transition matrix `P` of shape (..., K, K); got a "
                f"{P.type.ndim}-dimensional P."
            )
        rows, cols = P.type.shape[-2:]
        if rows is not None and cols is not None and rows != cols:
            raise ValueError(
                f"MarkovChain's transition matrix `P` must be square (K, K), one row and one "
                f"column per state; got shape {P.type.shape}."
            )
        steps = get_support_shape_1d(
            support_shape=steps, shape=kwargs.get("shape"), support_shape_offset=1
        )
        if steps is None:
            raise ValueError(
                "MarkovChain needs its length: pass `steps` (the number of transitions), "
                "`shape` or `dims` (time is the last axis)."
            )
        steps = pt.as_tensor_variable(intX(steps), ndim=0)
        init_kind, init_dist = _initial(P, init_dist)
        return super().dist([P, steps, init_dist], init_kind=init_kind, **kwargs)


def _initial(P: Variable, init_dist) -> tuple[str, Variable]:
    """Return the kind of initial distribution and the Categorical distribution itself."""
    if isinstance(init_dist, str) and init_dist == "stationary":
        return "stationary", pm.Categorical.dist(p=stationary_distribution(P))
    if init_dist is None:
        raise ValueError(
            "MarkovChain needs `init_dist`: `pm.Categorical.dist(p=p0)` for a given initial "
            'distribution, or "stationary" for the stationary distribution of P.'
        )
    if not isinstance(init_dist, TensorVariable) or not isinstance(
        getattr(init_dist.owner, "op", None), CategoricalRV
    ):
        raise ValueError(
            "MarkovChain's `init_dist` must be `pm.Categorical.dist(p=...)` (the distribution "
            f'of the first state) or "stationary"; got {init_dist!r}.'
        )
    check_dist_not_registered(init_dist)
    return "dist", init_dist


@_change_dist_size.register(MarkovChainRV)
def _change_size(op, dist, new_size, expand=False):
    if expand:
        new_size = tuple(new_size) + tuple(dist.shape[:-1])
    P, steps, init_dist, _ = dist.owner.inputs
    return MarkovChain.rv_op(P, steps, init_dist, init_kind=op.init_kind, size=new_size)


class _GreedyPath(Op):
    """(successor (*batch, K), first (*batch,), steps) -> z_t = g^t(z_0), (*batch, steps + 1).

    ``g(i) = successor[..., i]``. By doubling, g^t = Π g^(2^b) over the bits b of t: log2(T)
    vectorized gathers in numpy, where a T-step scan costs seconds at T = 1e5 (and the
    initial point is computed for every fit).
    """

    __props__ = ()

    def make_node(self, successor, first, steps):
        successor, first = pt.as_tensor_variable(successor), pt.as_tensor_variable(first)
        steps = pt.as_tensor_variable(steps)
        out = pt.tensor(dtype=first.dtype, shape=(*first.type.shape, None))
        return Apply(self, [successor, first, steps], [out])

    def perform(self, node, inputs, outputs):
        successor, first, steps = inputs
        power = np.array(successor, dtype=np.int64)  # g^(2^bit): (*batch, K)
        t = np.arange(int(steps) + 1)
        state = np.repeat(np.asarray(first, dtype=np.int64)[..., None], t.size, axis=-1)
        for bit in range(max(int(steps), 1).bit_length()):
            move = ((t >> bit) & 1).astype(bool)
            state[..., move] = np.take_along_axis(power, state[..., move], axis=-1)
            power = np.take_along_axis(power, power, axis=-1)
        outputs[0][0] = state.astype(node.outputs[0].dtype)


object_mode_in_numba(_GreedyPath)


@_support_point.register(MarkovChainRV)
def _support_point_chain(op, rv, P, steps, init_dist, rng):
    # A path of positive probability: the mode of the first state, then the likeliest next
    # state each step.
    first = support_point(init_dist)  # (*batch,)
    n_states = P.shape[-1]
    batch = tuple(first.shape)
    successor = pt.argmax(pt.broadcast_to(P, (*batch, n_states, n_states)), axis=-1)
    return _GreedyPath()(successor, first.astype(rv.dtype), steps)


@_logprob.register(MarkovChainRV)
def _logp_chain(op, values, P, steps, init_dist, rng, **kwargs):
    (value,) = values  # (*batch, T)
    n_states = P.shape[-1]
    inside = pt.all((value >= 0) & (value < n_states), axis=-1)
    # Keep the gathers legal for an out-of-range value; `inside` makes its density -inf.
    v = pt.clip(value, 0, n_states - 1)
    init_lp = logp(init_dist, v[..., 0])  # (*batch,)
    batch = tuple(value.shape)[:-1]
    log_P = pt.broadcast_to(pt.log(P), (*batch, n_states, n_states))
    flat = log_P.reshape((*batch, n_states * n_states))
    trans_lp = pt.take_along_axis(flat, v[..., :-1] * n_states + v[..., 1:], axis=-1).sum(-1)
    lp = pt.switch(inside, init_lp + trans_lp, -np.inf)
    return check_parameters(
        lp,
        pt.all(P >= 0),
        pt.all(pt.isclose(P.sum(-1), 1.0)),
        msg="P >= 0, rows of P sum to 1",
    )
