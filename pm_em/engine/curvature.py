"""Second-order check of an estimate: a local maximum, or a saddle EM stopped on.

EM and L-BFGS both stop where the gradient vanishes, which includes saddle points, such as
the point a random start may lead EM to (TECH-NOTES §0.7). At the returned point the
Hessian of the observed-data log posterior (in the unconstrained parameter vector) must
have no positive eigenvalue. It is taken from exact gradients
(`CompiledProblem.value_and_grad`, the function the polish uses) by central differences:

- with at most `FULL_HESSIAN_MAX` parameters, the whole Hessian (2 gradients per parameter),
  steps ``1e-4 max(1, |x_j|) / sqrt(n)`` for n latent elements, shortened to 1e-3 standard
  errors where the curvature found says they were longer;
- with more, a `LANCZOS_STEPS`-step Lanczos iteration on Hessian-vector products from a
  seeded random start (2 gradients per step), whose largest Ritz value approximates the
  largest eigenvalue; the cost then does not grow with the number of parameters.

A point is a saddle when the largest eigenvalue exceeds `SADDLE_RTOL` times the largest in
magnitude; `escape` then steps along its eigenvector (both signs, lengths set by the
curvature, `curvature_steps`) and accepts only a point with a higher log posterior, so a
finite-difference artefact never moves the estimate. Identical components, whose saddle is
flat to second order, are pulled apart by `pm_em.engine.symmetry`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pm_em.engine.compiled import CompiledProblem
from pm_em.engine.estep import EStepResult

__all__ = [
    "FULL_HESSIAN_MAX",
    "LANCZOS_STEPS",
    "SADDLE_RTOL",
    "ModeCheck",
    "check_mode",
    "curvature_steps",
    "escape",
]

FULL_HESSIAN_MAX = 50
LANCZOS_STEPS = 12
SADDLE_RTOL = 1e-5
# Relative step of a central difference for one observation; standard errors shrink as
# 1/sqrt(n), and so does the first step tried (it is shortened if still too long).
_REL_STEP = 1e-4
# Largest step, in standard errors along the coordinate, of a central difference.
_MAX_STEP_SE = 1e-3


@dataclass(frozen=True)
class ModeCheck:
    """The second-order check at one point.

    Attributes
    ----------
    method : str
        ``"hessian"`` (all eigenvalues), ``"lanczos"`` (the extreme ones) or ``"none"``
        (no parameters, or no finite gradient).
    max_curvature : float
        Largest eigenvalue of the Hessian of the log posterior (≤ 0 at a maximum).
    curvature_scale : float
        Largest eigenvalue in magnitude.
    gradient_norm : float
        Largest entry of the gradient in magnitude.
    newton_se : float
        Length of a Newton step along the Hessian's negative-curvature directions, in
        standard errors (``"hessian"`` only; NaN otherwise).
    direction : ndarray or None
        Unit eigenvector of ``max_curvature``.
    """

    method: str
    max_curvature: float
    curvature_scale: float
    gradient_norm: float
    newton_se: float
    direction: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_saddle(self) -> bool:
        """Whether the log posterior curves upwards along some direction."""
        return self.max_curvature > SADDLE_RTOL * self.curvature_scale


def _gradient_fn(compiled: CompiledProblem) -> Callable[[np.ndarray], np.ndarray | None]:
    def gradient(x: np.ndarray) -> np.ndarray | None:
        return compiled.value_and_grad(x)[1]

    return gradient


def _central(gradient, x: np.ndarray, v: np.ndarray, h: float) -> np.ndarray | None:
    """(g(x + h v) - g(x - h v)) / 2h, shrinking h up to three times if a side is not finite."""
    for _ in range(4):
        up, down = gradient(x + h * v), gradient(x - h * v)
        if up is not None and down is not None:
            return (up - down) / (2.0 * h)
        h /= 10.0
    return None


def _full_hessian(gradient, x: np.ndarray, n_obs: int) -> np.ndarray | None:
    p = x.size
    hess = np.empty((p, p))
    for j in range(p):
        e_j = np.zeros(p)
        e_j[j] = 1.0
        h = _REL_STEP * max(1.0, abs(x[j])) / np.sqrt(n_obs)
        col = _central(gradient, x, e_j, h)
        if col is None:
            return None
        # A step of more than 1e-3 standard errors (1/sqrt(|H_jj|)) measures a secant, not
        # the curvature: redo it shorter.
        if col[j] != 0 and h > _MAX_STEP_SE / np.sqrt(abs(col[j])):
            col = _central(gradient, x, e_j, _MAX_STEP_SE / np.sqrt(abs(col[j])))
            if col is None:
                return None
        hess[:, j] = col
    return 0.5 * (hess + hess.T)


def _lanczos(gradient, x: np.ndarray, n_obs: int, rng: np.random.Generator, steps: int):
    """Extreme eigenpairs of the Hessian from Hessian-vector products (full reorthogonalization)."""
    p = x.size
    h = _REL_STEP * max(1.0, float(np.sqrt(np.mean(x * x)))) / np.sqrt(n_obs)
    basis = [rng.standard_normal(p)]
    basis[0] /= np.linalg.norm(basis[0])
    alphas, betas = [], []
    for i in range(min(steps, p)):
        w = _central(gradient, x, basis[i], h)
        if w is None:
            return None
        alphas.append(float(w @ basis[i]))
        for b in basis:  # full reorthogonalization: a few vectors, cheap
            w = w - (w @ b) * b
        beta = float(np.linalg.norm(w))
        if i == min(steps, p) - 1 or beta < 1e-12 * max(1.0, abs(alphas[-1])):
            break
        betas.append(beta)
        basis.append(w / beta)
    tri = (
        np.diag(alphas)
        + np.diag(betas[: len(alphas) - 1], 1)
        + np.diag(betas[: len(alphas) - 1], -1)
    )
    theta, s = np.linalg.eigh(tri)
    vectors = np.array(basis[: len(alphas)]).T @ s
    return theta, vectors


def check_mode(compiled: CompiledProblem, x: np.ndarray, rng: np.random.Generator) -> ModeCheck:
    """Check the second-order conditions of a maximum of the log posterior at ``x``.

    Parameters
    ----------
    compiled : CompiledProblem
    x : ndarray of shape (n_params,)
    rng : numpy Generator
        Start of the Lanczos iteration (more than `FULL_HESSIAN_MAX` parameters).

    Returns
    -------
    ModeCheck
    """
    gradient = _gradient_fn(compiled)
    n_obs = max(sum(int(np.prod(lat.shape)) for lat in compiled.problem.latents), 1)
    g = gradient(x) if x.size else None
    if g is None:
        return ModeCheck("none", np.nan, np.nan, np.nan, np.nan)
    if x.size <= FULL_HESSIAN_MAX:
        hess = _full_hessian(gradient, x, n_obs)
        if hess is None or not np.all(np.isfinite(hess)):
            return ModeCheck("none", np.nan, np.nan, float(np.max(np.abs(g))), np.nan)
        theta, vectors = np.linalg.eigh(hess)
        method = "hessian"
        scale = float(np.max(np.abs(theta)))
        newton_se = _newton_se(theta, vectors, g)
    else:
        found = _lanczos(gradient, x, n_obs, rng, LANCZOS_STEPS)
        if found is None:
            return ModeCheck("none", np.nan, np.nan, float(np.max(np.abs(g))), np.nan)
        theta, vectors = found
        method, newton_se = "lanczos", np.nan
        scale = float(np.max(np.abs(theta)))
    top = int(np.argmax(theta))
    return ModeCheck(
        method,
        float(theta[top]),
        scale,
        float(np.max(np.abs(g))),
        newton_se,
        vectors[:, top] / np.linalg.norm(vectors[:, top]),
    )


def _curved(theta: np.ndarray) -> np.ndarray:
    """Mark the eigen-directions that curve downwards (flat ridges left out)."""
    return theta < -SADDLE_RTOL * float(np.max(np.abs(theta)))


def _newton_se(theta: np.ndarray, vectors: np.ndarray, g: np.ndarray) -> float:
    """Length of the Newton step along the downward directions, in standard errors."""
    down = _curved(theta)
    along = vectors[:, down].T @ g
    return float(np.max(np.abs(along) / np.sqrt(-theta[down]), initial=0.0))


def curvature_steps(check: ModeCheck) -> list[list[np.ndarray]]:
    """Return steps along the upward eigenvector, grouped by length.

    Lengths ``sqrt(2 gain / curvature)`` for quadratic gains of 1, 10, 0.1, 100 and 0.01
    nats, each in both directions.
    """
    if check.direction is None or not check.is_saddle:
        return []
    lengths = [np.sqrt(2.0 * gain / check.max_curvature) for gain in (1.0, 10.0, 0.1, 100.0, 0.01)]
    return [[t * check.direction, -t * check.direction] for t in lengths]


def escape(
    compiled: CompiledProblem,
    x: np.ndarray,
    e: EStepResult,
    steps: list[list[np.ndarray]],
    acceptable: Callable[[EStepResult], bool],
) -> tuple[np.ndarray, EStepResult] | None:
    """Step off a stationary point; None if no step raises the log posterior.

    ``steps`` are groups of displacements tried in order; the first group with a point
    whose log posterior exceeds ``e``'s by more than round-off (1e-9 relative), and that is
    ``acceptable`` (e.g. not degenerate), gives its best point.
    """
    base = e.log_posterior
    noise = 1e-9 * max(1.0, abs(base))
    for group in steps:
        best = None
        for step in group:
            x_try = x + step
            e_try = compiled.estep(x_try)
            if (
                np.isfinite(e_try.log_posterior)
                and e_try.log_posterior > base + noise
                and acceptable(e_try)
                and (best is None or e_try.log_posterior > best[1].log_posterior)
            ):
                best = (x_try, e_try)
        if best is not None:
            return best
    return None
