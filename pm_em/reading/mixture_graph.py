"""The graph of a marginal mixture: its node's inputs, and its components' log densities.

PyMC's marginal mixtures (`pm.Mixture`, `pm.NormalMixture`, the zero-inflated and hurdle
families) are one node, ``mixture(rng, weights, *components)``, of the class
``pymc.distributions.mixture._BaseMixtureRV`` (``MixtureRV``; ``_HurdleRV`` for the hurdles).
Not to be confused with ``pymc.logprob.mixture.MixtureRV``, the intermediate form of index
mixtures. `as_mixture` reads such a node (also behind PyMC's block imputation of missing
data, ``PartialObservedRV(mixture, mask)``), and `mixture_terms` builds the log weights and
the component log densities, whose logsumexp over the components is PyMC's mixture density.
"""

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.dist_math import check_parameters
from pymc.distributions.distribution import DiracDeltaRV, PartialObservedRV
from pymc.distributions.mixture import _BaseMixtureRV, _HurdleRV
from pytensor.graph.basic import Variable

from pm_em.reading.missing import Imputed

__all__ = ["MarginalMixture", "as_mixture", "latent_name", "log_weights", "mixture_terms"]


@dataclass(frozen=True, eq=False)
class MarginalMixture:
    """One observed marginal mixture, as read from the graph.

    Attributes
    ----------
    name : str
        The user's variable.
    rv : Variable
        The observed variable: the mixture itself, or PyMC's ``<name>_observed`` when the
        data have missing values.
    mixture : Variable
        The mixture random variable (``rv`` or the block ``rv`` imputes).
    kind : str
        ``"Hurdle"``, ``"ZeroInflated"`` (a component is a point mass) or ``"Mixture"``.
    weights : Variable
        The weights as the user gave them (component axis last), in model-RV terms.
    components : tuple of Variable
        The component distributions: one per component, or one batched distribution whose
        component axis is ``-ndim_supp - 1``.
    ndim_supp : int
        0 for univariate components, 1 for multivariate (MvNormal) ones.
    imputed : Imputed or None
        PyMC's imputation of the missing entries, if any.
    """

    name: str
    rv: Variable
    mixture: Variable
    kind: str
    weights: Variable
    components: tuple[Variable, ...]
    ndim_supp: int
    imputed: Imputed | None

    @property
    def batched(self) -> bool:
        """One batched component distribution rather than a list."""
        return len(self.components) == 1


def latent_name(name: str) -> str:
    """Name of the component latent of mixture ``name``."""
    return f"{name}_component"


def as_mixture(model: pm.Model, rv: Variable, imputed=()) -> MarginalMixture | None:
    """Read observed variable ``rv`` as a marginal mixture; None if it is none.

    Parameters
    ----------
    model : pm.Model
    rv : Variable
        An observed variable of ``model``.
    imputed : sequence of Imputed
        PyMC's imputed variables (`pm_em.reading.missing.find_imputed`).
    """
    mixture, imp = rv, None
    if rv.owner is not None and isinstance(rv.owner.op, PartialObservedRV):
        mixture = rv.owner.inputs[0]
        imp = next((i for i in imputed if i.observed == rv.name), None)
    if mixture.owner is None or not isinstance(mixture.owner.op, _BaseMixtureRV):
        return None
    if rv is not mixture and imp is None:
        return None  # a block imputation pm_em did not recognize: left to the model's logp
    _rng, weights, *components = mixture.owner.inputs
    if isinstance(mixture.owner.op, _HurdleRV):
        kind = "Hurdle"
    elif any(isinstance(c.owner.op, DiracDeltaRV) for c in components):
        kind = "ZeroInflated"
    else:
        kind = "Mixture"
    return MarginalMixture(
        name=imp.name if imp is not None else rv.name,
        rv=rv,
        mixture=mixture,
        kind=kind,
        weights=weights,
        components=tuple(components),
        ndim_supp=int(components[0].owner.op.ndim_supp),
        imputed=imp,
    )


def mixture_terms(mixture: MarginalMixture, value: Variable) -> tuple[Variable, Variable]:
    """Log weights and component log densities at ``value``, both (*batch, K), model-RV terms.

    ``logsumexp(log_w + log_f, -1)`` is PyMC's mixture log density at ``value`` (for a hurdle
    too: its second component has density 0 at y = 0); ``log_w`` is `log_weights`.
    """
    value = pt.as_tensor(value)
    comps = mixture.components
    if mixture.batched:
        axis = -mixture.ndim_supp - 1  # the component axis of the batched distribution
        log_f = pm.logp(comps[0], pt.expand_dims(value, axis), warn_rvs=False)
    else:
        parts = [pm.logp(c, value, warn_rvs=False) for c in comps]
        if mixture.kind == "Hurdle":
            parts[1] = _hurdle_nonzero(comps[1], value)
        log_f = pt.stack([p.astype("float64") for p in parts], axis=-1)
    log_f = log_f.astype("float64")
    return log_weights(mixture, log_f.shape), log_f


def log_weights(mixture: MarginalMixture, shape) -> Variable:
    """Log weights broadcast to ``shape`` (*batch, K), with PyMC's checks on the weights.

    PyMC's mixture density is -inf unless the weights lie in [0, 1] and sum to 1 along the
    component axis; the same check makes EM's density -inf there too.
    """
    weights = mixture.weights
    log_w = check_parameters(
        pt.log(weights).astype("float64"),
        0 <= weights,
        weights <= 1,
        pt.isclose(pt.sum(weights, axis=-1), 1),
        msg="0 <= weights <= 1, sum(weights) == 1",
    )
    return pt.broadcast_to(log_w, shape)


def _hurdle_nonzero(component: Variable, value: Variable) -> Variable:
    """Return the hurdle's second component: its density where y != 0, and 0 (-inf) at 0.

    PyMC's hurdle density is ``log(1 - psi)`` at 0 and ``log(psi) + logp(dist, y)`` elsewhere;
    a continuous ``dist`` may have a finite or infinite density at 0, which a plain logsumexp
    over the components would add. The density is evaluated at a safe value where y = 0, so
    that its gradient there is finite (and multiplied by 0), as PyMC does.
    """
    zero = pt.eq(value, 0)
    safe = pt.switch(zero, pt.ones_like(value), value)
    return pt.switch(zero, -np.inf, pm.logp(component, safe, warn_rvs=False).astype("float64"))
