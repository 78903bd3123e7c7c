"""The data each latent explains: rows aligned with its elements, their spread and ties.

Starting points (`pm_em.engine.init`) cluster these rows, and the degeneracy checks
(`pm_em.engine.health`) compare a component's own scale with their spread and count the
distinct rows a component holds. Everything here is read from the `Latent` contract (its
shape, ``observed`` names and values per element) and `EMProblem.data`, so it serves every
kind of latent alike.
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pm_em.reading.problem import EMProblem, Latent

__all__ = ["LatentData", "latent_data", "latent_rows"]

# Above this many rows, distinct values are first counted on a prefix: the count only
# matters when it is small, and a prefix with more distinct rows than that settles it.
_PREFIX_ROWS = 10_000


def latent_rows(problem: EMProblem, latent: Latent) -> np.ndarray | None:
    """Observed data aligned with the latent's elements: (n_elements, n_features), or None.

    Each observed variable of the latent contributes its values per element as columns
    (leading or trailing axes matching the latent's shape); NaN stays where data are
    missing. None when no observed variable lines up with the latent's elements.
    """
    n = int(np.prod(latent.shape))
    nz = len(latent.shape)
    cols = []
    for name in latent.observed:
        data = problem.data.get(name)
        if data is None or not np.issubdtype(np.asarray(data).dtype, np.number):
            continue
        data = np.asarray(data, dtype="float64")
        if data.shape[:nz] == latent.shape:
            cols.append(data.reshape(n, -1))
        elif nz and data.shape[-nz:] == latent.shape:
            cols.append(np.moveaxis(data.reshape(-1, n), 0, 1))
    if not cols:
        return None
    return np.concatenate(cols, axis=1)


def _is_continuous(problem: EMProblem, latent: Latent) -> bool:
    """Whether any observed variable of the latent has a density (not a probability mass).

    A probability mass is at most 1, so a likelihood made of masses alone is bounded and no
    component can collapse; a density is unbounded as a scale goes to 0.
    """
    named = problem.model.named_vars
    for name in latent.observed:
        var = named.get(name)
        if var is not None and not var.type.dtype.startswith(("int", "uint", "bool")):
            return True
    return False


@dataclass(frozen=True, eq=False)
class LatentData:
    """What the degeneracy checks need to know about the data of one latent.

    Attributes
    ----------
    latent : Latent
    rows : ndarray of shape (n_elements, n_features)
        Its data rows (NaN where missing).
    continuous : bool
        Whether the likelihood of its rows is a density (a component can collapse).
    log_spread : float
        Mean over the columns with a positive spread of the log standard deviation: the
        log scale, per value, of the data as a whole (NaN when no column varies).
    """

    latent: Latent
    rows: np.ndarray
    continuous: bool
    log_spread: float

    @cached_property
    def row_ids(self) -> np.ndarray:
        """Index of each row's distinct value (ties share one), shape (n_elements,)."""
        keyed = np.where(np.isnan(self.rows), np.inf, self.rows)  # missing entries tie
        _, inverse = np.unique(keyed, axis=0, return_inverse=True)
        return inverse.reshape(-1)

    def n_distinct(self, at_least: int) -> int:
        """Count the distinct rows, stopping early once more than ``at_least`` are seen."""
        keyed = np.where(np.isnan(self.rows), np.inf, self.rows)
        if keyed.shape[0] > _PREFIX_ROWS:
            head = np.unique(keyed[:_PREFIX_ROWS], axis=0).shape[0]
            if head > at_least:
                return head
        return int(self.row_ids.max()) + 1 if keyed.shape[0] else 0

    def distinct_held(self, resp_k: np.ndarray, share: float) -> tuple[int, np.ndarray]:
        """How many distinct rows hold ``share`` of a component's responsibility mass.

        Parameters
        ----------
        resp_k : ndarray of shape (n_elements,)
            The component's responsibilities.
        share : float
            Fraction of its mass to cover, e.g. 0.999.

        Returns
        -------
        count : int
            The fewest distinct rows whose responsibility mass covers ``share``.
        top_row : ndarray of shape (n_features,)
            The distinct row holding the most of it.
        """
        mass = np.bincount(self.row_ids, weights=resp_k)
        order = np.argsort(mass)[::-1]
        covered = np.cumsum(mass[order])
        count = int(np.searchsorted(covered, share * covered[-1]) + 1)
        top = int(np.flatnonzero(self.row_ids == order[0])[0])
        return count, self.rows[top]


def _column_sd(rows: np.ndarray) -> np.ndarray:
    """Return each column's standard deviation over its finite entries (NaN if none)."""
    finite = np.isfinite(rows)
    count = finite.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(finite, rows, 0.0).sum(axis=0) / safe
    var = np.where(finite, (rows - mean) ** 2, 0.0).sum(axis=0) / safe
    return np.where(count > 0, np.sqrt(var), np.nan)


def latent_data(problem: EMProblem) -> tuple[LatentData | None, ...]:
    """Return the `LatentData` of every latent of ``problem`` (None where no data line up)."""
    out = []
    for latent in problem.latents:
        rows = latent_rows(problem, latent)
        if rows is None or rows.shape[0] < 2:
            out.append(None)
            continue
        sd = _column_sd(rows)
        varying = np.isfinite(sd) & (sd > 0)
        log_spread = float(np.mean(np.log(sd[varying]))) if varying.any() else np.nan
        out.append(LatentData(latent, rows, _is_continuous(problem, latent), log_spread))
    return tuple(out)
