"""The pieces of a closed-form M-step: a `Block` per term of Q, and the matching `Context`."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pytensor.graph.basic import Variable

from pm_em.closed_form.transforms import FORWARD
from pm_em.reading.problem import EMProblem

__all__ = ["Block", "Context"]


@dataclass
class Context:
    """What blocks need to know about the model while they are being matched."""

    problem: EMProblem
    free: set[Variable]
    children: dict[Variable, set[Variable]]
    shapes: dict[str, tuple[int, ...]]

    def claimable(self, rv: Variable, owners: set[Variable]) -> bool:
        """``rv`` enters only ``owners``' densities, has a transform we can invert."""
        model = self.problem.model
        transform = model.rvs_to_transforms.get(rv)
        return self.children.get(rv, set()) <= owners and type(transform) in FORWARD


class Block:
    """One piece of Q with a closed-form maximizer: a latent's prior or one dependent."""

    claims: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    n_stats: int = 0
    # Whether the block also writes its terms one component at a time (`log_density_k`,
    # `stats_k`): K graphs over vectors of length n fuse and vectorize better than one graph
    # over (n, K), which the lean E-step then uses.
    unrolled: bool = False
    # Whether the (n, K) joint density is cheaper stacked from `log_density_k` than written
    # over (n, K) at once (rows of an MvNormal: (n, K, d, d) broadcasts otherwise).
    stack_joint: bool = False
    # Whether `update` takes the flat parameter vector too (``update(stats, current, x=x)``):
    # a block that maximizes numerically over its own coordinates.
    uses_x: bool = False
    # Whether `stats` takes a chain's `ChainExpectations` (P's and p0's blocks) rather than
    # (n, K) responsibilities (every other block, a chain's emissions included).
    takes_chain: bool = False

    def log_density(self, values: dict[str, Variable]) -> Variable:
        """Return this block's term of log p(z_i = k, · | θ), broadcastable to (n, K)."""
        raise NotImplementedError

    def stats(self, resp: Variable, values: dict[str, Variable]) -> list[Variable]:
        """Sufficient statistics (small arrays) from the (n, K) responsibilities."""
        return []

    def log_density_k(self, values: dict[str, Variable], k: int) -> Variable:
        """Return the term of component ``k`` alone, broadcastable to (n,)."""
        raise NotImplementedError

    def stats_k(self, resp_k: Variable, values: dict[str, Variable], k: int) -> list[Variable]:
        """Return component ``k``'s entry of each statistic, from its responsibilities (n,)."""
        return []

    def update(
        self, stats: Sequence[np.ndarray], current: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | None:
        """Return new constrained values of ``claims``; None when no closed form applies."""
        return {}
