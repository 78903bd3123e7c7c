"""Compile a model's EM once: the problem, the E- and M-steps and the result functions.

`compile_model` keeps one `CompiledProblem` per model and options (in a weak dictionary, so a model
that goes away takes its functions with it), so restarts, repeated fits, `sample_marginal`,
`laplace` and `information_criteria` reuse the same compiled functions.

The cache notices `pm.set_data`: an entry is keyed on the model's variable names and the
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
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.sharedvar import TensorSharedVariable

from pm_em.compiling import LazyFunction, compile_with_data, default_compile_kwargs
from pm_em.engine.accel import EMMap
from pm_em.engine.estep import EStepResult, compile_estep
from pm_em.engine.mstep import ClosedFormMStep, build_mstep, compile_q
from pm_em.engine.values import compile_missing, compile_point_values
from pm_em.reading.build import build_problem
from pm_em.reading.observed import check_observed, observed_data
from pm_em.reading.problem import EMProblem

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
        posterior, for the polish and the checks of the estimate (see `_value_and_grad`).
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
    result = _compile(build_problem(model, latent), dict(compile_kwargs), signature)
    result = replace(result, data_digest=digest)
    per_model[key] = result
    return result


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
    # The model's own E-step; a closed-form model replaces it (build_mstep) and compiles it
    # only to check its lean E-step once.
    estep = LazyFunction(lambda: compile_estep(problem, **compile_kwargs))
    # Q and its gradient compile on first use: a closed-form fit may never need them.
    neg_q = LazyFunction(lambda: compile_q(problem, **compile_kwargs))
    values = compile_point_values(problem, **compile_kwargs)
    impute = compile_missing(problem, **compile_kwargs)
    estep, mstep, em_map = build_mstep(problem, estep, neg_q, lean_mode=lean_mode, **compile_kwargs)
    return CompiledProblem(
        problem,
        estep,
        neg_q,
        mstep,
        values,
        impute,
        signature,
        em_map,
        value_and_grad=_value_and_grad(problem, estep, neg_q, mstep, compile_kwargs),
    )


def _value_and_grad(problem: EMProblem, estep, neg_q, mstep, compile_kwargs: dict) -> Callable:
    """``x -> (log posterior, gradient)`` of the observed-data log posterior.

    A closed-form model whose plan covers everything compiles it (on first use) from the
    plan's broadcasts: no (n, K) responsibilities leave the function, and an MvNormal
    mixture needs K Cholesky factors instead of one per row. Any other model, or a gradient
    that is not finite there (e.g. through impossible assignments), takes the E-step's
    responsibilities and the gradient of Q (Fisher's identity), functions EM compiles anyway.
    The gradient is None where the log posterior is not finite.
    """

    def via_q(x):
        e = estep(x)
        if not np.isfinite(e.log_posterior):
            return e.log_posterior, None
        value, neg_grad = neg_q(x, *e.expectations)  # a chain's: ChainExpectations
        return e.log_posterior, (-neg_grad if np.isfinite(value) else None)

    chain = any(lat.coupling == "chain" for lat in problem.latents)
    if chain or not (isinstance(mstep, ClosedFormMStep) and mstep.plan.complete):
        return via_q
    plan = mstep.plan

    def build():
        joints = [plan.log_joint(j) for j in range(len(problem.latents))]
        log_post = problem.log_prior + pt.add(
            pt.constant(0.0, dtype="float64"),
            *(pt.logsumexp(lj, axis=-1).sum() for lj in joints),
            *(t.sum() for t in problem.log_lik_rest.values()),
        )
        grad = pytensor.grad(log_post, problem.x)
        return compile_with_data(problem.model, [problem.x], [log_post, grad], **compile_kwargs)

    fused = LazyFunction(build)

    def value_and_grad(x):
        x = np.asarray(x, dtype="float64")
        value, grad = fused(x)
        value = float(value)
        if not np.isfinite(value):
            return value, None
        grad = np.asarray(grad, dtype="float64")
        return (value, grad) if np.all(np.isfinite(grad)) else via_q(x)

    return value_and_grad
