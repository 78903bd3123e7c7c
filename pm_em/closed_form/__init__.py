"""Closed-form M-steps, recognized from the PyMC graph.

For the models people fit most, the expected complete-data log posterior

    Q(θ) = Σ_i Σ_k r_ik log p(z_i = k, y_i | θ) + log p(θ)

has a known maximizer, a function of a few weighted sums over the data (the sufficient
statistics). This subpackage reads a model's graph, recognizes such structures, and describes for
each latent, explicit (``z = pm.Categorical(...)``, ``y ~ Normal(mu[z], ...)``) or the implicit
latent of a marginal mixture (``pm.NormalMixture``, ``pm.Mixture``):

- which free variables have a closed-form update ("claimed") and which the update merely
  reads (their current values enter the formulas);
- the component log densities as a broadcast (n, K) graph (no ``mu[z]`` gathers), from which
  the lean E-step computes responsibilities;
- the sufficient statistics as graphs of the responsibilities and the data;
- the update, statistics → new constrained values → the flat unconstrained vector, through
  each variable's transform.

Where things live:

- `pm_em.closed_form.plan`: `match_closed_form` and the `ClosedFormPlan` it returns (which
  variables are claimed, the statistics as graphs, the update);
- `pm_em.closed_form.block`: the `Block` every family subclasses, and the matching `Context`;
- `pm_em.closed_form.components`: `Components`, the K component distributions of an
  observed variable and how each parameter varies over them, read alike from ``mu[z]`` and
  from a mixture's list or batch of components, so one family module serves both forms;
- one module per family: `weights` (the latent's prior or the mixture's weights), `normal`,
  `mvnormal`, `counts` (Poisson, Bernoulli, Binomial), `categorical`;
- three registries: `registry.COMPONENTS` (component distributions, keyed on their Op type),
  `priors.PRIORS` (a free variable's prior, keyed on its Op type) and `transforms.FORWARD`
  (a transform, keyed on its type);
- `graph`: reading parameters out of the graph (``P[z]``, constants, broadcasts).

Adding a family is one new module (a `Block` subclass and its ``match_<family>(ctx, comps)``,
which returns None for any structure it does not recognize) and one line in
`registry.COMPONENTS`; a new prior or transform is one entry in its registry. Anything
unexpected leaves the variables involved unclaimed, and the numeric M-step handles them.

Every update is the MAP in `pm.find_MAP`'s convention (constrained space, no Jacobian), so it
includes its prior's contribution; flat priors give the maximum-likelihood update. Where the
joint maximizer over a block has no closed form (a Normal prior on the locations together with
a free scale) the update is exact still: a one-dimensional root search per scale on the
profile, far cheaper than the joint L-BFGS of the numeric M-step.
"""

from pm_em.closed_form.plan import ClosedFormPlan, match_closed_form

__all__ = ["ClosedFormPlan", "match_closed_form"]
