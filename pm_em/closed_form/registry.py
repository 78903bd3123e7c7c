"""Which closed-form family handles an observed variable, keyed on the type of its Op.

To add a family: write its module (a `Block` subclass and a ``match_<family>(ctx, comps) ->
Block | None``, reading a `components.Components`, which serves explicit latents and
marginal mixtures alike), then add one line here.
"""

from collections.abc import Callable

from pytensor.tensor.random.basic import (
    BernoulliRV,
    BinomialRV,
    CategoricalRV,
    MvNormalRV,
    NormalRV,
    PoissonRV,
)

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.categorical import match_categorical
from pm_em.closed_form.components import Components
from pm_em.closed_form.counts import match_binomial, match_poisson
from pm_em.closed_form.mvnormal import match_mvnormal
from pm_em.closed_form.mvnormal_cov import match_mvnormal_cov
from pm_em.closed_form.normal import match_normal

__all__ = ["COMPONENTS", "first_match"]


def first_match(*matchers: Callable) -> Callable[[Context, Components], Block | None]:
    """Return a matcher trying ``matchers`` in turn: the first block found, or None."""

    def match(ctx: Context, comps: Components) -> Block | None:
        for matcher in matchers:
            block = matcher(ctx, comps)
            if block is not None:
                return block
        return None

    return match


# Component distributions, keyed on their Op type.
COMPONENTS: dict[type, Callable[[Context, Components], Block | None]] = {
    NormalRV: match_normal,
    # A free covariance matrix with a flat prior in closed form; covariances built from
    # other free variables (LKJ Cholesky factors) by an ECM step on the statistics.
    MvNormalRV: first_match(match_mvnormal, match_mvnormal_cov),
    PoissonRV: match_poisson,
    BernoulliRV: match_binomial,
    BinomialRV: match_binomial,
    CategoricalRV: match_categorical,
}
