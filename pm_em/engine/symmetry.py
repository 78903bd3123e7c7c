"""Identical components: the symmetric saddle that second derivatives cannot see.

When several components of a mixture are the same (same density, any weights), EM keeps
them the same: the point is stationary, and at the one-component fit the curvature along
the directions that would pull them apart vanishes to second order (the gain is fourth
order), so the Hessian check (`pm_em.engine.curvature`) passes it. Such components are
found from the `Latent`/`EStepResult` contract: two support values whose joint log densities
differ by the same constant for every element (their log weights) are duplicates. Their
shared responsibility is then split by the data they hold, along its first principal
direction (quantiles, one part per duplicate), and one M-step from the split gives a
direction in parameter space that pulls them apart; `pm_em.engine.curvature.escape` walks
along it and keeps only a higher point.
"""

import numpy as np

from pm_em.engine.estep import EStepResult
from pm_em.engine.profile import LatentData

__all__ = ["DUPLICATE_NATS", "duplicate_groups", "split_responsibilities"]

# Two components whose log densities differ by a constant to within this many nats over
# every element are duplicates.
DUPLICATE_NATS = 1e-4


def duplicate_groups(log_resp: np.ndarray, log_marginal: np.ndarray) -> list[list[int]]:
    """Find the groups (two or more) of support indices whose densities coincide.

    Parameters
    ----------
    log_resp : ndarray of shape (*latent.shape, n_support)
    log_marginal : ndarray of shape latent.shape

    Returns
    -------
    list of list of int
    """
    n_support = log_resp.shape[-1]
    log_joint = log_resp.reshape(-1, n_support) + log_marginal.reshape(-1, 1)
    groups: list[list[int]] = []
    placed = set()
    for a in range(n_support):
        if a in placed:
            continue
        group = [a]
        for b in range(a + 1, n_support):
            if b in placed:
                continue
            both = np.isfinite(log_joint[:, a]) & np.isfinite(log_joint[:, b])
            same_support = np.array_equal(both, np.isfinite(log_joint[:, a]))
            if not (same_support and both.any()):
                continue
            diff = log_joint[both, a] - log_joint[both, b]
            if np.ptp(diff) <= DUPLICATE_NATS:
                group.append(b)
        if len(group) > 1:
            groups.append(group)
            placed.update(group)
    return groups


def _principal_projection(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Project standardized rows on their weighted first principal direction."""
    finite = np.isfinite(rows)
    col_mean = np.where(finite, rows, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    filled = np.where(finite, rows, col_mean)
    total = max(float(weights.sum()), np.finfo(float).tiny)
    centre = (weights[:, None] * filled).sum(axis=0) / total
    centred = filled - centre
    scale = np.sqrt((weights[:, None] * centred**2).sum(axis=0) / total)
    centred = centred / np.where(scale > 0, scale, 1.0)
    cov = (weights[:, None] * centred).T @ centred / total
    _, vectors = np.linalg.eigh(cov)
    return centred @ vectors[:, -1]


def split_responsibilities(
    e: EStepResult, j: int, data: LatentData, groups: list[list[int]]
) -> tuple[np.ndarray, ...]:
    """Return the responsibilities with each group's shared mass split by its data.

    Each element's responsibility for a group of g duplicates is given whole to one of them,
    by which of g weighted quantile bins its projection falls in (mostly: 0.9 to its bin,
    the rest spread over the group, so no weight becomes 0).
    """
    resp = [np.array(r, dtype="float64", copy=True) for r in e.resp]
    n_support = resp[j].shape[-1]
    flat = resp[j].reshape(-1, n_support)
    for group in groups:
        mass = flat[:, group].sum(axis=1)
        projection = _principal_projection(data.rows, mass)
        order = np.argsort(projection, kind="stable")
        cum = np.cumsum(mass[order]) / max(float(mass.sum()), np.finfo(float).tiny)
        bins = np.empty(order.size, dtype=int)
        bins[order] = np.minimum((cum * len(group)).astype(int), len(group) - 1)
        share = np.full((flat.shape[0], len(group)), 0.1 / len(group))
        share[np.arange(flat.shape[0]), bins] += 0.9
        flat[:, group] = mass[:, None] * share
    resp[j] = np.ascontiguousarray(flat.reshape(resp[j].shape))
    return tuple(resp)
