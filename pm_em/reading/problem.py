"""What EM needs to know about a model: the contract between reading a model and running EM.

`pm_em.reading.build.build_problem` fills these from a PyMC model; the E- and M-steps, the
loop and the results read them and nothing else of the model's graph internals.
"""

from dataclasses import dataclass, field

import numpy as np
import pymc as pm
from pytensor.graph.basic import Variable

__all__ = ["EMProblem", "Latent", "MissingValues", "Parameter"]


@dataclass(frozen=True)
class Latent:
    """A finite discrete latent variable and its enumerated joint log density.

    Explicit latents are discrete free variables of the model; implicit ones are the
    component assignments of the model's marginal mixtures (`pm_em.reading.mixtures`).

    Attributes
    ----------
    name : str
        The model variable (explicit), or ``"<y>_component"`` for mixture ``y`` (implicit).
    support : ndarray of shape (n_support,)
        The values it can take.
    shape : tuple of int
        Its shape (the batch of independent latent elements).
    dims : tuple of str
        Dim names of its elements: the model's, or ``"<name>_dim_<i>"``.
    support_dim : str
        Name of the trailing dim that indexes ``support``: ``"<name>_support"``, or for a
        mixture whose weights have dims, the weights' component dim (e.g. ``"component"``).
    kind : str
        Its distribution (``"Categorical"``, ``"Bernoulli"``, ...), or for an implicit
        latent the kind of mixture (``"Mixture"``, ``"ZeroInflated"``, ``"Hurdle"``).
    dependents : tuple of str
        The observed variables and potentials whose density involves it.
    observed : tuple of str
        The observed ones among them.
    values_per_element : int
        How many observed values each latent element explains (1 for a univariate mixture,
        d for rows of length d).
    log_joint : TensorVariable of shape (*shape, n_support)
        log p(z_i = k, dependents_i | θ) for every element i and support value k, as a
        function of the flat parameter vector `EMProblem.x`.
    mixture_of : str or None
        For an implicit latent, the component assignment of a marginal mixture
        (`pm.Mixture`, `pm.NormalMixture`, ...): the model's observed variable whose density
        it enumerates (PyMC's ``<y>_observed`` when the data have missing values). None for
        an explicit latent, which is a free variable of the model named ``name``.
    """

    name: str
    support: np.ndarray
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    support_dim: str
    kind: str
    dependents: tuple[str, ...]
    observed: tuple[str, ...]
    values_per_element: int
    log_joint: Variable = field(repr=False)
    mixture_of: str | None = None


@dataclass(frozen=True)
class MissingValues:
    """Missing entries of one observed variable, integrated out; graphs for their imputation.

    Attributes
    ----------
    name : str
        The user's variable (PyMC's Deterministic holding the completed data).
    unobserved : str
        PyMC's ``<name>_unobserved``: the flat vector of missing entries.
    dims : tuple of str
        Dims of ``unobserved``.
    mask : ndarray of bool, full shape
        True where missing.
    data : ndarray, full shape
        The data, NaN where missing.
    partial : bool
        MvNormal rows (True) or an elementwise likelihood (False); see `pm_em.missing`.
    latent : str or None
        The latent whose value the entries' distribution depends on, if any.
    element : ndarray of int or None
        With a latent: for each missing entry (elementwise) or each row (MvNormal), the flat
        index of its latent element.
    mean, var : TensorVariable
        Conditional mean and variance given the data, functions of `EMProblem.x`: of the
        missing entries (elementwise) or of whole rows (MvNormal, 0 variance where observed);
        with a latent, one per support value on a leading axis.
    """

    name: str
    unobserved: str
    dims: tuple[str, ...]
    mask: np.ndarray = field(repr=False)
    data: np.ndarray = field(repr=False)
    partial: bool
    latent: str | None
    element: np.ndarray | None = field(repr=False)
    mean: Variable = field(repr=False)
    var: Variable = field(repr=False)


@dataclass(frozen=True)
class Parameter:
    """A continuous free variable, estimated by the M-step."""

    name: str
    value_name: str
    shape: tuple[int, ...]
    size: int


@dataclass(frozen=True)
class EMProblem:
    """What EM needs to know about a model, as graphs of one flat parameter vector ``x``.

    The observed-data log posterior is
    ``log_prior + sum(log_lik_rest) + sum_j sum_i logsumexp_k latents[j].log_joint[i, k]``,
    with missing values integrated out (see `pm_em.missing`). ``data`` holds each observed
    variable's data under the user's name, NaN where missing; ``log_lik_dims`` the dims of
    each pointwise log likelihood (keyed by latent name for latent groups; None: the model's).
    """

    model: pm.Model
    latents: tuple[Latent, ...]
    params: tuple[Parameter, ...]
    missing: tuple[MissingValues, ...]
    x: Variable = field(repr=False)
    log_prior: Variable = field(repr=False)
    prior_terms: dict[str, Variable] = field(repr=False)
    log_lik_rest: dict[str, Variable] = field(repr=False)
    constrained: dict[str, Variable] = field(repr=False)
    deterministics: dict[str, Variable] = field(repr=False)
    data: dict[str, np.ndarray] = field(repr=False)
    log_lik_dims: dict[str, tuple[str, ...] | None] = field(repr=False)
    start: np.ndarray = field(repr=False)

    @property
    def n_params(self) -> int:
        """Length of the unconstrained parameter vector."""
        return sum(p.size for p in self.params)

    def to_x(self, point: dict[str, np.ndarray]) -> np.ndarray:
        """Ravel a point {value variable name: value} into the flat vector."""
        parts = [np.asarray(point[p.value_name], dtype="float64").ravel() for p in self.params]
        return np.concatenate(parts) if parts else np.zeros(0)

    def from_x(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Split the flat vector into {value variable name: value}."""
        out, i = {}, 0
        for p in self.params:
            out[p.value_name] = np.asarray(x[i : i + p.size]).reshape(p.shape)
            i += p.size
        return out
