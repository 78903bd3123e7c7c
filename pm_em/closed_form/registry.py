"""Which closed-form family handles an observed variable, keyed on the type of its Op.

To add a family: write its module (a `Block` subclass and a ``match_<family>(ctx, y, z,
n_support) -> Block | None``), then add one line here.
"""

from collections.abc import Callable

from pytensor.graph.basic import Variable
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
from pm_em.closed_form.counts import match_binomial, match_poisson
from pm_em.closed_form.mvnormal import match_mvnormal
from pm_em.closed_form.normal import match_normal

__all__ = ["COMPONENTS"]

# Observed variables that depend on a latent, keyed on their Op type.
COMPONENTS: dict[type, Callable[[Context, Variable, Variable, int], Block | None]] = {
    NormalRV: match_normal,
    MvNormalRV: match_mvnormal,
    PoissonRV: match_poisson,
    BernoulliRV: match_binomial,
    BinomialRV: match_binomial,
    CategoricalRV: match_categorical,
}
