"""Convergence of an EM run: the history of the log posterior and EM's stopping rule."""

import numpy as np

from pm_em.exceptions import NonMonotoneWarning, warn

__all__ = ["ConvergenceMonitor"]


class ConvergenceMonitor:
    """History of the observed-data log posterior, with EM's convergence rule.

    Converged when the change between the last two values, relative to the last value's
    size, is at most ``tol`` (so ``tol=0`` stops only when the value stops changing).
    A decrease beyond floating-point noise is reported with a `NonMonotoneWarning`.
    Subclass and override `converged` for another rule.
    """

    def __init__(self, tol: float, max_iter: int):
        self.tol = tol
        self.max_iter = max_iter
        self.history: list[float] = []

    @property
    def n_iter(self) -> int:
        """Number of M-steps taken (the history holds the start too)."""
        return max(len(self.history) - 1, 0)

    def report(self, log_posterior: float) -> None:
        """Record a new value and warn if it decreased."""
        if self.history:
            prev = self.history[-1]
            noise = np.sqrt(np.finfo(float).eps) * max(1.0, abs(prev))
            if log_posterior < prev - noise:
                warn(
                    f"The observed-data log posterior decreased at EM iteration {self.n_iter + 1}"
                    f" from {prev:.10g} to {log_posterior:.10g}. EM cannot decrease it; this "
                    "points at an M-step that failed to improve its objective.",
                    NonMonotoneWarning,
                )
        self.history.append(float(log_posterior))

    @property
    def converged(self) -> bool:
        """Whether the relative change of the last step is within ``tol``."""
        if len(self.history) < 2:
            return False
        last, prev = self.history[-1], self.history[-2]
        return abs(last - prev) <= self.tol * abs(last)
