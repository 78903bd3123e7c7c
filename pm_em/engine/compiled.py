"""Compile a model's EM once: the problem, the E- and M-steps and the result functions.

`compile_model` keeps one `CompiledProblem` per model and options (in a weak dictionary, so a model
that goes away takes its functions with it), so restarts, repeated fits, `sample_marginal`,
`laplace` and `information_criteria` reuse the same compiled functions.
"""

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pymc as pm

from pm_em.compiling import (
    CHECK_MODE,
    LazyFunction,
    default_compile_kwargs,
    graph_building,
    resolve_mode,
)
from pm_em.engine.accel import EMMap
from pm_em.engine.estep import EStepResult, compile_estep
from pm_em.engine.mstep import build_mstep, compile_q
from pm_em.engine.values import compile_missing, compile_point_values
from pm_em.reading.build import build_problem
from pm_em.reading.problem import EMProblem
from pm_em.timing import stage

__all__ = ["CompiledProblem", "compile_model"]


@dataclass(frozen=True)
class CompiledProblem:
    """A model's EM problem with every function EM and its results call.

    Attributes
    ----------
    problem : EMProblem
    estep : callable
        ``estep(x) -> EStepResult``, with responsibilities.
    neg_q : callable
        ``neg_q(x, *resp) -> (-Q, -dQ/dx)``, compiled on first use.
    mstep : callable
        ``mstep(x, resp) -> x_new``: closed form where recognized, else numeric.
    point_values : callable
        ``point_values(x) -> {name: value}`` of the parameters and Deterministics.
    impute : callable
        ``impute(x, resp) -> {name: (conditional mean, sd)}`` of the missing entries.
    signature : tuple
        The model's variable names when compiled (a model changed since must be re-read).
    em_map : EMMap
        One EM iteration, with the lean E-step when the M-step is closed form.
    neg_log_post : callable
        ``neg_log_post(x) -> (-log posterior, gradient)``, the polish's objective.
    """

    problem: EMProblem
    estep: Callable[[np.ndarray], EStepResult]
    neg_q: Callable
    mstep: Callable
    point_values: Callable[[np.ndarray], dict]
    impute: Callable
    signature: tuple
    em_map: EMMap
    neg_log_post: Callable


# Compile once per model: {model: {(latent, compile options): CompiledProblem}}.
_CACHE: "weakref.WeakKeyDictionary[pm.Model, dict]" = weakref.WeakKeyDictionary()


def compile_model(
    model: pm.Model, latent: Sequence[str] | None = None, compile_kwargs: Mapping | None = None
) -> CompiledProblem:
    """Return the compiled EM problem of ``model``, from the cache when it is there.

    Parameters
    ----------
    model : pm.Model
    latent : sequence of str, optional
        As in `pm_em.fit`.
    compile_kwargs : dict, optional
        As in `pm_em.fit`; default `pm_em.compiling.default_compile_kwargs`.
    """
    if compile_kwargs is None:
        compile_kwargs = default_compile_kwargs()
    key = (tuple(latent) if latent is not None else None, tuple(sorted(compile_kwargs.items())))
    signature = tuple(model.named_vars)  # a model changed since caching must be re-read
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(key)
    if hit is not None and hit.signature == signature:
        return hit
    with graph_building():
        with stage("build_problem"):
            problem = build_problem(model, latent)
        with stage("compile_model"):
            result = _compile(problem, dict(compile_kwargs), signature)
    per_model[key] = result
    return result


def _size(problem: EMProblem) -> int:
    """Values a fit computes with: latent elements times support values, other observations."""
    size = sum(int(np.prod(lat.shape)) * lat.support.size for lat in problem.latents)
    return size + sum(int(np.size(v)) for v in problem.data.values())


def _compile(problem: EMProblem, compile_kwargs: dict, signature: tuple) -> CompiledProblem:
    # "lean_mode" is ours, not pytensor's: the backend of the lean E-step alone.
    lean_mode = compile_kwargs.pop("lean_mode", None)
    compile_kwargs["mode"] = resolve_mode(compile_kwargs.get("mode", "auto"), _size(problem))
    # The model's own E-step; a closed-form model replaces it (build_mstep) and compiles it
    # only to check its lean E-step once.
    estep = LazyFunction(lambda: compile_estep(problem, **compile_kwargs))
    # Q and its gradient compile on first use: a closed-form fit may never need them.
    neg_q = LazyFunction(lambda: compile_q(problem, **compile_kwargs))
    # Evaluated once per fit: no full rewrite, no backend compile.
    values = LazyFunction(lambda: compile_point_values(problem, mode=CHECK_MODE))
    impute = LazyFunction(lambda: compile_missing(problem, mode=CHECK_MODE))
    steps = build_mstep(problem, estep, neg_q, lean_mode=lean_mode, **compile_kwargs)
    return CompiledProblem(
        problem,
        steps.estep,
        neg_q,
        steps.mstep,
        values,
        impute,
        signature,
        steps.em_map,
        steps.neg_log_post,
    )
