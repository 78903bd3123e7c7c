"""Starting points for EM.

EM started from the model's initial point often sits on the symmetric saddle where every
component of a mixture is the same (see TECH-NOTES §0.7). The data-driven start breaks that
symmetry: k-means on the observed data attached to each latent element gives starting
responsibilities, and one M-step from them gives the starting parameters. It needs no prior
draws, so it works with flat priors.
"""

from collections.abc import Callable, Mapping
from typing import Literal, get_args

import numpy as np

from pm_em.engine.chains import start_expectations
from pm_em.engine.estep import EStepResult
from pm_em.reading.initial_point import initial_point
from pm_em.reading.problem import EMProblem, Latent

__all__ = ["InitMethod", "initial_x", "kmeans"]

InitMethod = Literal["auto", "kmeans", "random", "initial_point"]
VALID_INIT = get_args(InitMethod)

# k-means on more clusters than this is a poor guess of a latent's states (e.g. a Binomial
# with large n); such latents start from the E-step at the model's initial point instead.
_MAX_KMEANS_CLUSTERS = 50


def base_x(problem: EMProblem, initvals: Mapping[str, object] | None) -> np.ndarray:
    """Flatten the model's initial point, with ``initvals`` (constrained values) applied.

    Non-finite coordinates (e.g. an ordered transform of equal initial values) become 0,
    a valid point of the unconstrained space.
    """
    model = problem.model
    initvals = dict(initvals or {})
    latent_names = {lat.name for lat in problem.latents}
    param_names = {p.name for p in problem.params}
    for name in initvals:
        if name in latent_names:
            raise ValueError(
                f"`initvals` sets latent '{name}'. EM starts from parameter values and "
                "computes the latents' distribution itself: remove that entry."
            )
        if name not in param_names:
            raise ValueError(
                f"`initvals` names '{name}', which is not a continuous free variable of the "
                f"model. Continuous free variables: {sorted(param_names)}."
            )
    for name, value in initvals.items():
        expected = tuple(model[name].type.shape)
        got = np.shape(value)
        if len(got) != len(expected) or any(
            e is not None and g != e for g, e in zip(got, expected, strict=False)
        ):
            raise ValueError(
                f"`initvals['{name}']` has shape {got}, but '{name}' has shape "
                f"{tuple(e if e is not None else '?' for e in expected)}. Pass an array of "
                "that shape (constrained values)."
            )
    overrides = {model[k]: np.asarray(v) for k, v in initvals.items()}
    try:
        # issue 12: PyMC's initial-point graph evaluated without compiling it (same values).
        point = initial_point(model, overrides, seed=0)
    except Exception as err:  # pymc raises several types for an unusable initval
        raise ValueError(f"Could not build the starting point from `initvals`: {err}") from err
    x = problem.to_x(point)
    for name in initvals:
        p = next(p for p in problem.params if p.name == name)
        if not np.all(np.isfinite(point[p.value_name])):
            raise ValueError(
                f"`initvals['{name}']` = {initvals[name]!r} lies outside the support of "
                f"'{name}' (its transformed value is not finite). Pass a value inside it."
            )
    return np.where(np.isfinite(x), x, 0.0)


def kmeans(
    features: np.ndarray, n_clusters: int, rng: np.random.Generator, n_iter: int = 100
) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; labels ordered by the first centroid coordinate.

    Parameters
    ----------
    features : ndarray of shape (n_obs, n_features)
    n_clusters : int
    rng : numpy Generator

    Returns
    -------
    labels : ndarray of shape (n_obs,)
    """
    n = features.shape[0]
    centers = [features[rng.integers(n)]]
    for _ in range(1, n_clusters):
        d2 = np.min([((features - c) ** 2).sum(axis=1) for c in centers], axis=0)
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(features[idx])
    centers = np.array(centers, dtype="float64")
    labels = np.full(n, -1)
    for _ in range(n_iter):
        d2 = ((features[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        new = d2.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for k in range(n_clusters):
            members = features[labels == k]
            if len(members):
                centers[k] = members.mean(axis=0)
    # Sorted labels match an ordered transform on the component means, and make the start
    # independent of the seeding order.
    order = np.argsort(centers[:, 0], kind="stable")
    return np.argsort(order)[labels]


def _features(problem: EMProblem, latent: Latent) -> np.ndarray | None:
    """Observed data aligned with the latent's elements: (n_elements, n_features), standardized."""
    n = int(np.prod(latent.shape))
    nz = len(latent.shape)
    cols = []
    for name in latent.observed:
        data = problem.data.get(name)
        if data is None:
            continue
        data = np.asarray(data, dtype="float64")
        if data.shape[:nz] == latent.shape:
            cols.append(data.reshape(n, -1))
        elif nz and data.shape[-nz:] == latent.shape:
            cols.append(np.moveaxis(data.reshape(-1, n), 0, 1))
    if not cols:
        return None
    feats = np.concatenate(cols, axis=1)
    # Missing entries take their column's mean (0 for an empty column): a starting guess.
    finite = np.isfinite(feats)
    col_mean = np.where(finite, feats, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    feats = np.where(finite, feats, col_mean)
    scale = feats.std(axis=0)
    return (feats - feats.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def start_resp(
    problem: EMProblem, at_base: EStepResult, rng: np.random.Generator, method: str
) -> tuple[np.ndarray, ...]:
    """Guess starting responsibilities per latent: k-means on its data, or random (Dirichlet)."""
    resps = []
    for latent, log_resp in zip(problem.latents, at_base.log_resp, strict=True):
        n_support = latent.support.size
        n = int(np.prod(latent.shape))
        feats = _features(problem, latent)
        feasible = np.isfinite(log_resp)  # assignments possible at the base point
        if method == "random":
            resp = rng.dirichlet(np.ones(n_support), size=latent.shape)
        elif feats is not None and 1 < n_support <= min(_MAX_KMEANS_CLUSTERS, n):
            labels = kmeans(feats, n_support, rng).reshape(latent.shape)
            # Soft one-hot: a little mass everywhere keeps every weight off the boundary.
            resp = np.full((*latent.shape, n_support), 0.05 / n_support)
            np.put_along_axis(resp, labels[..., None], 0.95 + 0.05 / n_support, axis=-1)
        else:
            resp = np.exp(log_resp)
        resp = np.where(feasible, resp, 0.0)
        total = resp.sum(axis=-1, keepdims=True)
        fallback = np.exp(log_resp)
        resp = np.where(total > 0, resp / np.where(total > 0, total, 1.0), fallback)
        resps.append(np.ascontiguousarray(resp))
    return tuple(resps)


def initial_x(
    problem: EMProblem,
    *,
    init: InitMethod | Callable,
    initvals: Mapping[str, object] | None,
    run: int,
    rng: np.random.Generator,
    estep: Callable[[np.ndarray], EStepResult],
    mstep: Callable,
) -> np.ndarray:
    """Choose the starting parameter vector of restart number ``run``.

    ``init="auto"``: the first run starts at ``initvals`` when given; otherwise (and for
    every later run) k-means responsibilities followed by one M-step. ``"kmeans"`` always
    does the latter, ``"random"`` uses Dirichlet-random responsibilities, and
    ``"initial_point"`` starts at the model's initial point with ``initvals``. A callable
    ``init(model, rng) -> dict`` returns initvals for each run.
    """
    if callable(init):
        return base_x(problem, {**(initvals or {}), **init(problem.model, rng)})
    if init not in VALID_INIT:
        raise ValueError(f"`init` must be one of {VALID_INIT} or a callable, not {init!r}.")
    x0 = base_x(problem, initvals)
    if init == "initial_point" or not problem.latents:
        return x0
    if init == "auto" and initvals and run == 0:
        return x0
    at_base = estep(x0)
    method = "random" if init == "random" else "kmeans"
    # A chain's soft labels become expectations with transitions between consecutive steps.
    resps = start_resp(problem, at_base.with_log_resp(), rng, method)
    return mstep(x0, start_expectations(problem, resps))
