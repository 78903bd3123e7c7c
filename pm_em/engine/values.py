"""Values at a parameter point that the results report: parameters, Deterministics, imputations."""

from collections.abc import Callable, Sequence

import numpy as np

from pm_em.compiling import compile_with_data
from pm_em.reading.missing import mix_conditionals
from pm_em.reading.problem import EMProblem

__all__ = ["compile_missing", "compile_point_values"]


def compile_point_values(
    problem: EMProblem, **compile_kwargs
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Compile ``x -> {name: value}`` for the parameters (constrained) and Deterministics."""
    names = [*problem.constrained, *problem.deterministics]
    graphs = [*problem.constrained.values(), *problem.deterministics.values()]
    if not graphs:
        return lambda x: {}
    fn = compile_with_data(
        problem.model, [problem.x], graphs, name="point values", **compile_kwargs
    )

    def values(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, (np.asarray(v) for v in fn(x)), strict=True))

    return values


def compile_missing(
    problem: EMProblem, **compile_kwargs
) -> Callable[[np.ndarray, Sequence[np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Compile ``(x, resp) -> {name: (conditional mean, sd)}`` of the missing entries."""
    if not problem.missing:
        return lambda x, resp: {}
    graphs = [g for spec in problem.missing for g in (spec.mean, spec.var)]
    fn = compile_with_data(problem.model, [problem.x], graphs, name="imputations", **compile_kwargs)
    latent_index = {lat.name: i for i, lat in enumerate(problem.latents)}

    def impute(x, resp):
        out = fn(x)
        result = {}
        for i, spec in enumerate(problem.missing):
            r = resp[latent_index[spec.latent]] if spec.latent is not None else None
            result[spec.name] = mix_conditionals(spec, out[2 * i], out[2 * i + 1], r)
        return result

    return impute
