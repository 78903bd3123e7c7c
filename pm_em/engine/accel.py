"""The EM iteration as a map, and its SQUAREM acceleration.

`EMMap` is one plain EM iteration ``x -> M(x, E(x))`` together with the E-step that goes with
it: the full one (responsibilities) for a numeric M-step, or the lean one (sufficient
statistics) for a closed-form M-step. The loop in `pm_em.fit` advances with a step object:

- `PlainStep`: one EM iteration.
- `SquaremStep`: SQUAREM (Varadhan and Roland 2008, scheme S3), which extrapolates from two
  EM iterations ``x1 = F(x0)``, ``x2 = F(x1)`` to ``x' = x0 + 2α r + α² v`` (``r = x1 - x0``,
  ``v = x2 - 2 x1 + x0``, ``α = |r| / |v|``) in the unconstrained space, then takes one EM
  iteration from ``x'``. The step is accepted only if the observed-data log posterior did not
  decrease (and the point is not degenerate); otherwise it falls back to ``x2``, the plain two
  EM iterations, so the monotone guarantee of EM is kept. As in the authors' SQUAREM package,
  the step length is capped, starting at 1 (plain EM) and growing fourfold after each
  iteration held back by the cap, shrinking fourfold after a rejected one.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["EMMap", "PlainStep", "SquaremStep", "make_step"]


@dataclass(frozen=True)
class EMMap:
    """One plain EM iteration and its E-step.

    Attributes
    ----------
    estep : callable
        ``estep(x) -> result`` with at least ``log_posterior``, ``log_likelihood`` and
        ``log_marginal`` (an `EStepResult` or a `LeanEStepResult`).
    mstep : callable
        ``mstep(x, result) -> x_new``, given the E-step result at ``x``.
    lean : bool
        Whether ``estep`` returns statistics only (the loop then computes the responsibilities
        once at the end).
    """

    estep: Callable
    mstep: Callable
    lean: bool = False


Valid = Callable[[object], bool]


def _always(e) -> bool:
    return True


class PlainStep:
    """One EM iteration per call.

    Attributes
    ----------
    n_estep : int
        E-steps evaluated so far.
    """

    def __init__(self, em: EMMap):
        self.em = em
        self.n_estep = 0

    def __call__(self, x: np.ndarray, e, valid: Valid = _always):
        """Return ``(x_new, estep(x_new))`` from ``x`` and the E-step result ``e`` there."""
        x_new = self.em.mstep(x, e)
        self.n_estep += 1
        return x_new, self.em.estep(x_new)


class SquaremStep:
    """One SQUAREM iteration per call, never decreasing the log posterior.

    Parameters
    ----------
    em : EMMap
    step_factor : float, default 4
        Factor by which the cap on the step length grows after an accepted step at the cap.

    Attributes
    ----------
    n_estep : int
        E-steps evaluated so far (each EM map evaluation costs one).
    n_rejected : int
        Extrapolations rejected in favour of two plain EM iterations.
    """

    def __init__(self, em: EMMap, step_factor: float = 4.0):
        self.em = em
        self.step_factor = step_factor
        self.step_max = 1.0
        self.n_estep = 0
        self.n_rejected = 0

    def _estep(self, x):
        self.n_estep += 1
        return self.em.estep(x)

    def __call__(self, x0: np.ndarray, e0, valid: Valid = _always):
        """Return ``(x, estep(x))`` after one SQUAREM iteration from ``x0``.

        ``valid(e)`` may reject a point (e.g. a collapsed component); the log posterior at
        the returned point is at least the one at ``x0`` unless plain EM itself fails.
        """
        mstep = self.em.mstep
        x1 = mstep(x0, e0)
        e1 = self._estep(x1)
        if not np.isfinite(e1.log_posterior):
            return x1, e1  # plain EM already fails here: let the loop handle it
        x2 = mstep(x1, e1)
        r = x1 - x0
        v = x2 - x1 - r
        sr2, sv2 = float(r @ r), float(v @ v)
        alpha = np.sqrt(sr2 / sv2) if sv2 > 0 else 1.0
        alpha = min(max(alpha, 1.0), self.step_max)
        if alpha > 1.0 + 1e-2:
            x_ext = x0 + 2.0 * alpha * r + alpha * alpha * v
            e_ext = self._estep(x_ext)
            # Only the point returned is checked with `valid` (a pass over the data each):
            # the loop checks it again, and rejects a degenerate one.
            if np.isfinite(e_ext.log_posterior):
                # One EM iteration from the extrapolation: EM's own stabilization.
                x_new = mstep(x_ext, e_ext)
                e_new = self._estep(x_new)
                if (
                    np.all(np.isfinite(x_new))
                    and np.isfinite(e_new.log_posterior)
                    and e_new.log_posterior >= e0.log_posterior
                    and valid(e_new)
                ):
                    if alpha == self.step_max:
                        self.step_max *= self.step_factor
                    return x_new, e_new
            self.n_rejected += 1
            if alpha == self.step_max:
                self.step_max = max(1.0, self.step_max / self.step_factor)
        elif alpha == self.step_max:
            # Two plain iterations because the cap held the step back: allow longer steps.
            self.step_max *= self.step_factor
        return x2, self._estep(x2)


def make_step(em: EMMap, accelerate: bool | str) -> PlainStep | SquaremStep:
    """Return the step object for one EM run: `SquaremStep` if ``accelerate``, else `PlainStep`.

    ``accelerate`` is a bool, or ``"squarem"`` (the same as True).
    """
    if accelerate is False or accelerate is None:
        return PlainStep(em)
    if accelerate is True or accelerate == "squarem":
        return SquaremStep(em)
    raise ValueError(f"`accelerate` must be True, False or 'squarem', got {accelerate!r}.")
