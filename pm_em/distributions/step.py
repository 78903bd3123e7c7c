"""A Gibbs step for `MarkovChain` variables, so that ``pm.sample`` on the full model works.

Without it PyMC hands a chain to plain Metropolis, which proposes states outside 0..K-1 that
then crash the model's own indexing (``mu[z]``). `MarkovChainGibbsMetropolis` is PyMC's
``CategoricalGibbsMetropolis`` (single-site Metropolis-within-Gibbs over each element's K
states) taught to read the number of states from the transition matrix, and registered in
``pm.STEP_METHODS`` with ``Competence.IDEAL`` for chains. To sample a hidden Markov model, the
better route is `pm_em.sample_marginal` (NUTS with the chain summed out).
"""

import pymc as pm
from pymc.step_methods import STEP_METHODS
from pymc.step_methods.arraystep import ArrayStep
from pymc.step_methods.compound import Competence
from pymc.step_methods.metropolis import CategoricalGibbsMetropolis
from pymc.util import get_value_vars_from_user_vars

from pm_em.distributions.markov_chain import MarkovChainRV

__all__ = ["MarkovChainGibbsMetropolis"]


class MarkovChainGibbsMetropolis(CategoricalGibbsMetropolis):
    """Single-site Metropolis-within-Gibbs over the K states of every element of a chain.

    Parameters
    ----------
    vars : list of variables
        `MarkovChain` variables of the model.
    proposal : {"uniform", "proportional"}, default "uniform"
    order : "random" or permutation, default "random"
    model, rng, initial_point, compile_kwargs, blocked
        As in ``pm.CategoricalGibbsMetropolis``.
    """

    name = "markov_chain_gibbs_metropolis"

    def __init__(
        self,
        vars,
        *,
        proposal="uniform",
        order="random",
        model=None,
        rng=None,
        initial_point=None,
        compile_kwargs=None,
        blocked=True,
    ):
        model = pm.modelcontext(model)
        vars = get_value_vars_from_user_vars(vars, model)
        if initial_point is None:
            initial_point = model.initial_point()
        dimcats = []
        for v in vars:
            rv = model.values_to_rvs[v]
            if not isinstance(rv.owner.op, MarkovChainRV):
                raise ValueError(f"MarkovChainGibbsMetropolis samples MarkovChains, not '{rv}'.")
            (n_states,) = model.replace_rvs_by_values([rv.owner.inputs[0].shape[-1]])
            count = model.compile_fn(
                n_states, inputs=model.value_vars, on_unused_input="ignore", mode="FAST_COMPILE"
            )(initial_point)
            start = len(dimcats)
            dimcats += [(d, int(count)) for d in range(start, start + initial_point[v.name].size)]
        if order == "random":
            self.shuffle_dims, self.dimcats = True, dimcats
        else:
            if sorted(order) != list(range(len(dimcats))):
                raise ValueError("Argument 'order' has to be a permutation")
            self.shuffle_dims, self.dimcats = False, [dimcats[j] for j in order]
        if proposal == "uniform":
            self.astep = self.astep_unif
        elif proposal == "proportional":
            self.astep = self.astep_prop
        else:
            raise ValueError("Argument 'proposal' should either be 'uniform' or 'proportional'")
        logp = model.compile_logp(**(compile_kwargs or {}))
        ArrayStep.__init__(self, vars, [logp], blocked=blocked, rng=rng)

    @staticmethod
    def competence(var):
        """IDEAL for a `MarkovChain`, else INCOMPATIBLE."""
        if isinstance(var.owner.op, MarkovChainRV):
            return Competence.IDEAL
        return Competence.INCOMPATIBLE


# Registered once, at import: `pm.sample` then assigns this step to MarkovChain variables.
if MarkovChainGibbsMetropolis not in STEP_METHODS:
    STEP_METHODS.append(MarkovChainGibbsMetropolis)
