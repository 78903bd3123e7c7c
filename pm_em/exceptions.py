"""Warning and error classes of pm_em, so that users can filter each kind on its own.

`warn` issues a pm_em warning attributed to the first frame outside pm_em: the user's call.
"""

import warnings
from pathlib import Path

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def warn(message: str, category: type[Warning]) -> None:
    """Warn with ``category``, pointing at the caller's first frame outside pm_em."""
    warnings.warn(message, category, skip_file_prefixes=(_PACKAGE_DIR,))


class EMWarning(UserWarning):
    """Base class of every warning pm_em emits."""


class EMConvergenceWarning(EMWarning):
    """EM stopped at ``max_iter`` before the log posterior settled within ``tol``."""


class NonMonotoneWarning(EMWarning):
    """The observed-data log posterior decreased between two EM iterations.

    EM cannot decrease it, so a decrease beyond floating-point noise means an M-step that
    did not improve its objective (e.g. an optimizer that stopped early) or a bug.
    """


class EmptyComponentWarning(EMWarning):
    """A value of a categorical latent has (almost) no responsibility left at the estimate."""


class MissingMomentWarning(EMWarning):
    """The conditional mean or variance of missing entries is unknown for their distribution."""


class DegenerateRunWarning(EMWarning):
    """A restart was abandoned because the likelihood became unbounded (a collapsed component)."""


class MultipleOptimaWarning(EMWarning):
    """EM restarts ended at different optima, or the best was reached by a single restart.

    ``em_stats.optimum_log_posterior`` and ``optimum_n_runs`` list the optima.
    """


class BoundaryPriorWarning(EMWarning):
    """A prior's density is unbounded on the boundary (e.g. a Dirichlet with a < 1).

    The posterior then has no global mode; EM returns at best a local mode inside.
    """


class NoLatentWarning(EMWarning):
    """EM had nothing to do: the model has no latent of any kind and no missing value.

    The result is then the plain MAP (`pm.find_MAP`'s answer), not an EM fit.
    """


class LabelSwitchingWarning(EMWarning):
    """The chains of a posterior sample label the mixture components differently."""


class LaplaceWarning(EMWarning):
    """The Laplace approximation at the EM estimate is unreliable (see the message)."""


class DegenerateFitError(ValueError):
    """Every EM run ended in a degenerate point (unbounded likelihood)."""


class ChunkError(RuntimeError):
    """A chunk of rows failed to compute in a chunked or distributed fit.

    Raised instead of any result: a fit never returns an estimate some chunk did not enter.

    Parameters
    ----------
    message : str
    chunk : int
        Index of the chunk (0-based, in row order).
    rows : tuple of int
        The chunk's rows, ``[start, stop)``.
    """

    def __init__(self, message: str, chunk: int = -1, rows: tuple[int, int] = (-1, -1)):
        super().__init__(message)
        self.chunk = chunk
        self.rows = tuple(rows)

    def __reduce__(self):
        # Picklable with its attributes, so a worker's error reaches the client intact.
        return (type(self), (self.args[0], self.chunk, self.rows))


class ClusterConnectionError(ConnectionError):
    """The Dask scheduler given to `pm_em.fit` (``client=``) could not be reached."""
