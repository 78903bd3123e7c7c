"""Finite supports of discrete distributions, looked up by the type of their Op.

EM enumerates a latent variable's support, so each distribution usable as a latent registers
here the function that returns its support as a 1-D integer array. Distributions whose
support is infinite (Poisson, Geometric, ...) are not registered, and `finite_support`
refuses them with an error that names the variable.
"""

from functools import singledispatch

import numpy as np
from pymc.distributions.discrete import DiscreteUniformRV
from pymc.pytensorf import constant_fold, resolve_shapes
from pytensor.graph.basic import Variable
from pytensor.tensor.random.basic import BernoulliRV, BinomialRV, CategoricalRV

__all__ = ["finite_support"]


class NotConstantSupportError(ValueError):
    """The support bounds are not constants of the graph."""


def _fold(var: Variable, what: str) -> np.ndarray:
    (value,) = constant_fold([var], raise_not_constant=False)
    if isinstance(value, Variable):
        raise NotConstantSupportError(what)
    return np.asarray(value)


@singledispatch
def _support(op, rv) -> np.ndarray:
    raise NotImplementedError


@_support.register(BernoulliRV)
def _bernoulli(op, rv):
    return np.array([0, 1])


@_support.register(CategoricalRV)
def _categorical(op, rv):
    (p,) = op.dist_params(rv.owner)
    # resolve_shapes keeps the RV (and its RNG) out of the folded graph.
    (n_categories,) = resolve_shapes([p.shape[-1]])
    return np.arange(int(_fold(n_categories, "the length of p")))


@_support.register(BinomialRV)
def _binomial(op, rv):
    n, _ = op.dist_params(rv.owner)
    return np.arange(int(_fold(n, "n").max()) + 1)


@_support.register(DiscreteUniformRV)
def _discrete_uniform(op, rv):
    lower, upper = op.dist_params(rv.owner)
    # The bounds are float in the graph; the support is integer.
    lo = int(np.round(_fold(lower, "lower").min()))
    hi = int(np.round(_fold(upper, "upper").max()))
    return np.arange(lo, hi + 1)


def finite_support(rv: Variable, name: str) -> np.ndarray:
    """Return the finite support of the discrete random variable ``rv`` as an int array.

    Parameters
    ----------
    rv : TensorVariable
        A discrete random variable of a PyMC model.
    name : str
        Its name, used in error messages.

    Returns
    -------
    ndarray of shape (n_support,)
        The values the variable can take, sorted. Elementwise bounds (a Binomial with
        ``n`` per element) give the union; values outside an element's own support get
        log density -inf, which the E-step handles.

    Raises
    ------
    ValueError
        If the support is infinite, unknown, or depends on other random variables.
    """
    op = rv.owner.op
    dist = type(op).__name__.removesuffix("RV")
    try:
        support = _support(op, rv)
    except NotImplementedError:
        raise ValueError(
            f"Latent variable '{name}' has a {dist} distribution, whose support is not known to "
            "be finite. EM sums a latent out by enumerating its support, which works for "
            "Categorical, Bernoulli, Binomial (constant n) and DiscreteUniform (constant bounds). "
            f"Give '{name}' one of these distributions, or leave it out of `latent`."
        ) from None
    except NotConstantSupportError as err:
        raise ValueError(
            f"Latent variable '{name}' ({dist}) has a support that is not a constant of the "
            f"model ({err} depends on other variables or on `pm.Data`). EM enumerates the "
            f"support once, so it must be fixed: pass {err} as a numpy array."
        ) from None
    if support.size == 0:
        raise ValueError(f"Latent variable '{name}' ({dist}) has an empty support.")
    return support.astype(rv.type.dtype)
