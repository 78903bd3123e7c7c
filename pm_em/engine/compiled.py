"""Compile a model's EM once: the problem, the E- and M-steps and the result functions.

`compile_model` keeps one `CompiledProblem` per model and options (in a weak dictionary, so a model
that goes away takes its functions with it), so restarts, repeated fits, `sample_marginal`,
`laplace` and `information_criteria` reuse the same compiled functions.

Two caches, one design: this one per model object (its problem and functions), and below it
`pm_em.compile_cache`, keyed on each graph's structure with the data as inputs, which lets a
new model of the same structure reuse the compiled functions of another.

This cache notices `pm.set_data`: an entry is keyed on the model's variable names and the
shapes of its shared data (``pm.Data``), so data of a new shape read and compile the model
again (its graphs carry the old shapes); new values of the same shapes reach the compiled
functions through the shared variables, and only `EMProblem.data` (the values that starting
points and checks read) is refreshed, after the data checks run again.
"""

import hashlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pymc as pm
from pytensor.tensor.sharedvar import TensorSharedVariable

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
from pm_em.reading.observed import check_observed, observed_data
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
        The model's variable names and the shapes of its shared data when compiled (a model
        changed since, or data of another shape, must be read again).
    em_map : EMMap
        One EM iteration, with the lean E-step when the M-step is closed form.
    data_digest : bytes
        A hash of the shared data's values when ``problem.data`` was read.
    value_and_grad : callable
        ``value_and_grad(x) -> (log posterior, gradient or None)`` of the observed-data log
        posterior, for the polish and the checks of the estimate (`pm_em.engine.objective`:
        one compiled function for a closed-form model, the E-step and Q's gradient else).
    """

    problem: EMProblem
    estep: Callable[[np.ndarray], EStepResult]
    neg_q: Callable
    mstep: Callable
    point_values: Callable[[np.ndarray], dict]
    impute: Callable
    signature: tuple
    em_map: EMMap
    data_digest: bytes = b""
    value_and_grad: Callable | None = None


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
    shapes, digest = _data_state(model)
    signature = (tuple(model.named_vars), shapes)
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(key)
    if hit is not None and hit.signature == signature:
        if hit.data_digest != digest:
            hit = _refresh_data(model, hit, digest)
            per_model[key] = hit
        return hit
    with graph_building():
        with stage("build_problem"):
            problem = build_problem(model, latent)
        with stage("compile_model"):
            result = _compile(problem, dict(compile_kwargs), signature)
    result = replace(result, data_digest=digest)
    per_model[key] = result
    return result


def _size(problem: EMProblem) -> int:
    """Values a fit computes with: latent elements times support values, other observations."""
    size = sum(int(np.prod(lat.shape)) * lat.support.size for lat in problem.latents)
    return size + sum(int(np.size(v)) for v in problem.data.values())


def _shared_data(model: pm.Model) -> list[TensorSharedVariable]:
    observed = [v for v in model.rvs_to_values.values() if isinstance(v, TensorSharedVariable)]
    return list(dict.fromkeys([*model.data_vars, *observed]))


def _data_state(model: pm.Model) -> tuple[tuple, bytes]:
    """Shapes of the model's shared data, and a hash of their values."""
    shared = _shared_data(model)
    digest = hashlib.blake2b(digest_size=16)
    shapes = []
    for var in shared:
        value = np.asarray(var.get_value(borrow=True))
        shapes.append((var.name, value.shape, str(value.dtype)))
        digest.update(np.ascontiguousarray(value).view(np.uint8).reshape(-1).data)
    return tuple(shapes), digest.digest()


def _refresh_data(model: pm.Model, hit: CompiledProblem, digest: bytes) -> CompiledProblem:
    """Return the cached functions with `EMProblem.data` read again (new values, same shapes)."""
    check_observed(model)
    data = dict(hit.problem.data)
    for name in data:
        var = model.named_vars.get(name)
        if var is not None and var in model.observed_RVs:
            value = observed_data(model, var)
            if value is not None:
                data[name] = value
    return replace(hit, problem=replace(hit.problem, data=data), data_digest=digest)


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
        value_and_grad=steps.value_and_grad,
    )
