"""The distinct optima that EM restarts reached.

Runs end at their own stopping points, a little short of their optimum (EM converges
linearly). To tell "the same optimum" from "another one", `polish_contenders` polishes every
run whose log posterior lies within `AMBIGUOUS_GAP` of the highest before the best is chosen
(so a run that only looked lower can still win), and `group_optima` then groups the runs by
log posterior: two polished runs within ``SAME_RTOL * |lp| + SAME_ATOL`` of each other
reached one optimum (the polish reaches the mode to ~1e-10 relative); if either is not
polished the tolerance is `UNPOLISHED_RTOL`. Runs that ended degenerate are in no optimum.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AMBIGUOUS_GAP", "Optimum", "group_optima", "polish_contenders"]

SAME_RTOL = 1e-7
SAME_ATOL = 1e-6
UNPOLISHED_RTOL = 1e-5
# (absolute nats, relative): runs this close to the highest are polished before grouping.
AMBIGUOUS_GAP = (1.0, 1e-4)


@dataclass(frozen=True)
class Optimum:
    """A log posterior reached by one or more runs (indices into the list of runs)."""

    log_posterior: float
    runs: tuple[int, ...]


def polish_contenders(runs: Sequence, polish: Callable) -> None:
    """Polish every non-degenerate run within `AMBIGUOUS_GAP` of the highest one.

    Parameters
    ----------
    runs : sequence of EMRun
    polish : callable
        ``polish(run)``.
    """
    good = [r for r in runs if r.status != "degenerate"]
    if len(good) < 2:
        return
    top = max(r.final_log_posterior for r in good)
    near = AMBIGUOUS_GAP[0] + AMBIGUOUS_GAP[1] * abs(top)
    for run in good:
        if not run.polished and top - run.final_log_posterior <= near:
            polish(run)


def group_optima(runs: Sequence) -> list[Optimum]:
    """Group the non-degenerate runs by the optimum they reached, best first.

    Parameters
    ----------
    runs : sequence of EMRun

    Returns
    -------
    list of Optimum
    """
    good = [i for i, r in enumerate(runs) if r.status != "degenerate"]
    order = sorted(good, key=lambda i: -runs[i].final_log_posterior)
    groups: list[list[int]] = []
    for i in order:
        if groups:
            ref = runs[groups[-1][0]]
            rtol = SAME_RTOL if ref.polished and runs[i].polished else UNPOLISHED_RTOL
            gap = abs(ref.final_log_posterior - runs[i].final_log_posterior)
            if gap <= rtol * abs(ref.final_log_posterior) + SAME_ATOL:
                groups[-1].append(i)
                continue
        groups.append([i])
    return [
        Optimum(float(np.max([runs[i].final_log_posterior for i in g])), tuple(sorted(g)))
        for g in groups
    ]
