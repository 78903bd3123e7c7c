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
from pm_em.engine.profile import latent_rows
from pm_em.reading.initial_point import initial_point
from pm_em.reading.problem import EMProblem, Latent

__all__ = ["InitMethod", "initial_x", "kmeans", "kmeans_solutions", "start_resps"]

InitMethod = Literal["auto", "kmeans", "random", "initial_point"]
VALID_INIT = get_args(InitMethod)

# k-means on more clusters than this is a poor guess of a latent's states (e.g. a Binomial
# with large n); such latents start from the E-step at the model's initial point instead.
_MAX_KMEANS_CLUSTERS = 50
# k-means++ seeds per start; the solution with the lowest within-cluster sum of squares wins.
N_KMEANS = 10
# k-means runs on at most this many rows (drawn at random); every row is then assigned to
# the nearest centre.
KMEANS_SAMPLE = 20_000
# Multivariate data: up to this many distinct k-means solutions, each within this factor of
# the best sum of squares, are each followed by `SHORT_EM_ITER` EM iterations, and the
# highest log posterior is the start (short EM runs, as mclust and flexmix choose starts).
SHORT_EM_CANDIDATES = 3
CANDIDATE_INERTIA = 1.5
SHORT_EM_ITER = 5


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
    # The shapes the variables have in this model, dims included (a variable declared with
    # `dims` has no static shape): evaluated, not read from the type.
    shapes = model.eval_rv_shapes() if initvals else {}
    for name, value in initvals.items():
        expected = tuple(int(d) for d in shapes[name])
        got = np.shape(value)
        if got != expected:
            raise ValueError(
                f"`initvals['{name}']` has shape {got}, but '{name}' has shape {expected} in "
                "the model. Pass an array of that shape (constrained values)."
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


def _kmeanspp(features: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability ∝ squared distance."""
    n = features.shape[0]
    centers = [features[rng.integers(n)]]
    for _ in range(1, n_clusters):
        d2 = np.min([((features - c) ** 2).sum(axis=1) for c in centers], axis=0)
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(features[idx])
    return np.array(centers, dtype="float64")


def _nearest(features: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, float]:
    """Label of each row's nearest centre, and the within-cluster sum of squares."""
    d2 = ((features[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)  # (n, K)
    labels = d2.argmin(axis=1)
    return labels, float(np.take_along_axis(d2, labels[:, None], axis=1).sum())


def _lloyd(features: np.ndarray, centers: np.ndarray, n_iter: int) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from ``centers``; returns the centres and their sum of squares."""
    labels = np.full(features.shape[0], -1)
    for _ in range(n_iter):
        new, _ = _nearest(features, centers)
        if np.array_equal(new, labels):
            break
        labels = new
        for k in range(centers.shape[0]):
            members = features[labels == k]
            if len(members):
                centers[k] = members.mean(axis=0)
    return centers, _nearest(features, centers)[1]


def kmeans_solutions(
    features: np.ndarray, n_clusters: int, rng: np.random.Generator, n_seeds: int = N_KMEANS
) -> list[tuple[float, np.ndarray]]:
    """Distinct k-means solutions from ``n_seeds`` k-means++ seeds, best first.

    Parameters
    ----------
    features : ndarray of shape (n_obs, n_features)
    n_clusters : int
    rng : numpy Generator
    n_seeds : int, default `N_KMEANS`

    Returns
    -------
    list of (inertia, centers)
        Within-cluster sum of squares and centres of shape (n_clusters, n_features), sorted
        by inertia, those with a cluster of fewer than d + 2 rows last; solutions with the
        same centres (to 1e-8) appear once. Computed on at most `KMEANS_SAMPLE` rows drawn
        at random.
    """
    n = features.shape[0]
    sample = features
    if n > KMEANS_SAMPLE:
        sample = features[np.sort(rng.choice(n, KMEANS_SAMPLE, replace=False))]
    found: list[tuple[float, np.ndarray]] = []
    tiny: list[bool] = []
    min_size = min(features.shape[1] + 2, max(sample.shape[0] // n_clusters, 1))
    for _ in range(n_seeds):
        centers, inertia = _lloyd(sample, _kmeanspp(sample, n_clusters, rng), 100)
        centers = centers[np.lexsort(centers.T[::-1])]
        if not any(np.allclose(centers, c, rtol=0, atol=1e-8) for _, c in found):
            found.append((inertia, centers))
            labels, _ = _nearest(sample, centers)
            tiny.append(bool(np.bincount(labels, minlength=n_clusters).min() < min_size))
    # A cluster of a point or two (an outlier of heavy-tailed data) starts a component of
    # zero scale, which collapses at once: such solutions come after all the others.
    order = sorted(range(len(found)), key=lambda i: (tiny[i], found[i][0]))
    return [found[i] for i in order]


def kmeans_labels(features: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest-centre labels, numbered by the centres' first coordinate.

    Sorted labels match an ordered transform on the component means, and make the start
    independent of the seeding order.
    """
    labels, _ = _nearest(features, centers)
    order = np.argsort(centers[:, 0], kind="stable")
    return np.argsort(order)[labels]


def kmeans(
    features: np.ndarray, n_clusters: int, rng: np.random.Generator, n_iter: int = 100
) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (the best of `N_KMEANS` seeds).

    Parameters
    ----------
    features : ndarray of shape (n_obs, n_features)
    n_clusters : int
    rng : numpy Generator

    Returns
    -------
    labels : ndarray of shape (n_obs,)
        Numbered by the first centroid coordinate.
    """
    return kmeans_labels(features, kmeans_solutions(features, n_clusters, rng)[0][1])


def _features(problem: EMProblem, latent: Latent) -> np.ndarray | None:
    """Observed data aligned with the latent's elements: (n_elements, n_features), standardized."""
    feats = latent_rows(problem, latent)
    if feats is None:
        return None
    # Missing entries take their column's mean (0 for an empty column): a starting guess.
    finite = np.isfinite(feats)
    col_mean = np.where(finite, feats, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    feats = np.where(finite, feats, col_mean)
    scale = feats.std(axis=0)
    return (feats - feats.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _one_hot(labels: np.ndarray, shape: tuple, n_support: int) -> np.ndarray:
    """Soft one-hot: a little mass everywhere keeps every weight off the boundary."""
    resp = np.full((*shape, n_support), 0.05 / n_support)
    np.put_along_axis(resp, labels.reshape(shape)[..., None], 0.95 + 0.05 / n_support, axis=-1)
    return resp


def _feasible(resp: np.ndarray, log_resp: np.ndarray) -> np.ndarray:
    """Zero out assignments impossible at the base point and renormalize."""
    resp = np.where(np.isfinite(log_resp), resp, 0.0)
    total = resp.sum(axis=-1, keepdims=True)
    fallback = np.exp(log_resp)
    resp = np.where(total > 0, resp / np.where(total > 0, total, 1.0), fallback)
    return np.ascontiguousarray(resp)


def start_resps(
    problem: EMProblem, at_base: EStepResult, rng: np.random.Generator, method: str
) -> list[tuple[np.ndarray, ...]]:
    """Candidate starting responsibilities (one tuple per candidate, one array per latent).

    ``"kmeans"``: the best k-means solution (of `N_KMEANS` seeds) on each latent's data;
    for a latent with multivariate data also the next distinct solutions whose sum of
    squares is within `CANDIDATE_INERTIA` of the best (at most `SHORT_EM_CANDIDATES`), for
    short EM runs to choose from. ``"random"``: Dirichlet-random responsibilities.
    """
    per_latent = []
    for latent, log_resp in zip(problem.latents, at_base.log_resp, strict=True):
        n_support = latent.support.size
        n = int(np.prod(latent.shape))
        feats = None if method == "random" else _features(problem, latent)
        if method == "random":
            options = [rng.dirichlet(np.ones(n_support), size=latent.shape)]
        elif feats is not None and 1 < n_support <= min(_MAX_KMEANS_CLUSTERS, n):
            solutions = kmeans_solutions(feats, n_support, rng)
            best = solutions[0][0]
            keep = 1 if feats.shape[1] == 1 else SHORT_EM_CANDIDATES
            options = [
                _one_hot(kmeans_labels(feats, centers), latent.shape, n_support)
                for inertia, centers in solutions[:keep]
                if inertia <= CANDIDATE_INERTIA * best
            ]
        else:
            options = [np.exp(log_resp)]
        per_latent.append([_feasible(r, log_resp) for r in options])
    n_candidates = max(len(options) for options in per_latent) if per_latent else 1
    return [
        tuple(options[min(i, len(options) - 1)] for options in per_latent)
        for i in range(n_candidates)
    ]


def initial_x(
    problem: EMProblem,
    *,
    init: InitMethod | Callable,
    initvals: Mapping[str, object] | None,
    run: int,
    rng: np.random.Generator,
    estep: Callable[[np.ndarray], EStepResult],
    mstep: Callable,
    short_em: Callable[[np.ndarray], tuple[np.ndarray, float]] | None = None,
) -> np.ndarray:
    """Choose the starting parameter vector of restart number ``run``.

    ``init="auto"``: the first run starts at ``initvals`` when given; otherwise (and for
    every later run) k-means responsibilities followed by one M-step (see `start_resps`:
    the best of several k-means++ seeds; with multivariate data, the best of a few short EM
    runs from the best k-means solutions). ``"kmeans"`` always does the latter,
    ``"random"`` uses Dirichlet-random responsibilities, and ``"initial_point"`` starts at
    the model's initial point with ``initvals``. A callable ``init(model, rng) -> dict``
    returns initvals for each run.

    ``short_em(x) -> (x_new, log posterior)`` runs `SHORT_EM_ITER` EM iterations from ``x``
    (log posterior ``-inf`` for a start that fails); without it the first candidate is used.
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
    starts = [
        mstep(x0, start_expectations(problem, resps))
        for resps in start_resps(problem, at_base.with_log_resp(), rng, method)
    ]
    if len(starts) == 1 or short_em is None:
        return starts[0]
    ran = [short_em(x) for x in starts]
    return max(ran, key=lambda item: item[1])[0]
