"""The distinct optima that EM restarts reached.

Runs end at their own stopping points, a little short of their optimum (EM converges
linearly); the best run is polished to the mode. To tell "the same optimum" from "another
one", every other run whose log posterior lies within `AMBIGUOUS_GAP` of the best's is
polished too, and runs are then grouped by log posterior: polished runs within
``SAME_RTOL * |lp| + SAME_ATOL`` of each other reached one optimum (the polish reaches the
mode to ~1e-10 relative); without the polish the tolerance is `UNPOLISHED_RTOL`. Runs that
ended degenerate are in no optimum.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AMBIGUOUS_GAP", "Optimum", "group_optima"]

SAME_RTOL = 1e-7
SAME_ATOL = 1e-6
UNPOLISHED_RTOL = 1e-5
# (absolute nats, relative): runs this close below the best are polished before grouping.
AMBIGUOUS_GAP = (1.0, 1e-4)


@dataclass(frozen=True)
class Optimum:
    """A log posterior reached by one or more runs (indices into the list of runs)."""

    log_posterior: float
    runs: tuple[int, ...]


def group_optima(runs: Sequence, best, polish: Callable | None) -> list[Optimum]:
    """Group the non-degenerate runs by the optimum they reached, best first.

    Parameters
    ----------
    runs : sequence of EMRun
    best : EMRun
        The returned run (already finished).
    polish : callable or None
        ``polish(run)``, applied to runs close to the best; None: no polish (``fit(...,
        polish=False)``), and the looser tolerance.

    Returns
    -------
    list of Optimum
    """
    good = [i for i, r in enumerate(runs) if r.status != "degenerate"]
    top = best.final_log_posterior
    if polish is not None:
        for i in good:
            run = runs[i]
            gap = top - run.final_log_posterior
            near = AMBIGUOUS_GAP[0] + AMBIGUOUS_GAP[1] * abs(top)
            if run is not best and not run.polished and -near <= gap <= near:
                polish(run)
    rtol = SAME_RTOL if polish is not None else UNPOLISHED_RTOL
    order = sorted(good, key=lambda i: -runs[i].final_log_posterior)
    groups: list[list[int]] = []
    for i in order:
        lp = runs[i].final_log_posterior
        if groups:
            ref = runs[groups[-1][0]].final_log_posterior
            if abs(ref - lp) <= rtol * abs(ref) + SAME_ATOL:
                groups[-1].append(i)
                continue
        groups.append([i])
    return [
        Optimum(float(np.max([runs[i].final_log_posterior for i in g])), tuple(sorted(g)))
        for g in groups
    ]
