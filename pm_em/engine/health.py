"""Health checks of a point: a usable start, a collapsed component, an empty one.

A collapse is an unbounded likelihood: under flat priors on scales a component can sit on one
observation, and the log posterior grows without bound. EM would follow it; the loop asks
`collapse` after every iteration and abandons the run. An empty component has (almost) no
responsibility left: its parameters are not informed by the data.
"""

import numpy as np

from pm_em.engine.estep import EStepResult
from pm_em.reading.problem import EMProblem

__all__ = ["EMPTY_COUNT", "check_start", "collapse", "empty_components"]

# A single observation whose marginal log likelihood stands this many nats (per observed
# value of its latent element) above the median one is a component collapsing onto it: no
# non-degenerate fit makes one point e^25 (10^11) times likelier than the typical one.
_COLLAPSE_NATS = 25.0
# Below this expected count a categorical component is reported as empty.
EMPTY_COUNT = 1e-3


def check_start(problem: EMProblem, e: EStepResult, x: np.ndarray, run: int) -> None:
    """Refuse a starting point of zero density, naming the parameter or data that cause it."""
    if np.isfinite(e.log_posterior):
        return
    values = problem.from_x(x)
    for p in problem.params:
        if not np.all(np.isfinite(values[p.value_name])):
            raise ValueError(f"The starting value of '{p.name}' is not finite (run {run}).")
    if not np.isfinite(e.log_prior):
        raise ValueError(
            "The log prior is not finite at the starting point (run "
            f"{run}): check the priors and `initvals` of the model's parameters "
            f"{[p.name for p in problem.params]}; every starting value must lie in its "
            "prior's support."
        )
    for lat, lm in zip(problem.latents, e.log_marginal, strict=True):
        bad = np.flatnonzero(~np.isfinite(lm.ravel()))
        if bad.size:
            raise ValueError(
                f"At the starting point (run {run}) no value of latent '{lat.name}' can "
                f"explain element(s) {bad[:5].tolist()} of {list(lat.observed)}: every "
                "assignment has zero density. Check the data against the model's support, "
                "or start elsewhere with `initvals`."
            )
    names = list(problem.log_lik_rest)
    for name, ll in zip(names, e.log_lik_rest, strict=True):
        if not np.all(np.isfinite(ll)):
            raise ValueError(
                f"Observed variable '{name}' has zero density at the starting point (run "
                f"{run}); check its data against the model's support, or pass `initvals`."
            )
    raise ValueError(f"The log posterior is {e.log_posterior} at the starting point (run {run}).")


def collapse(problem: EMProblem, e: EStepResult) -> str | None:
    """Describe a collapse (unbounded likelihood) at this E-step, or None."""
    if not np.isfinite(e.log_posterior):
        return f"the log posterior became {e.log_posterior}"
    for lat, lm in zip(problem.latents, e.log_marginal, strict=True):
        if lm.size < 3:
            continue
        flat = lm.ravel()
        top = int(np.argmax(flat))
        # The typical value from an evenly spaced subsample: the median of all n values costs
        # ~10 ms per iteration at n = 1e6, and the threshold is far from the median's noise.
        stride = max(1, flat.size // 10_000)
        spike = flat[top] - np.median(flat[::stride])
        if spike > _COLLAPSE_NATS * lat.values_per_element:
            return (
                f"element {top} of {list(lat.observed)} (latent '{lat.name}') has a log "
                f"likelihood {spike:.0f} nats above the median: a component collapsed onto it"
            )
    return None


def empty_components(problem: EMProblem, e: EStepResult) -> dict[str, list]:
    """Return ``{latent: support values}`` whose expected count is below `EMPTY_COUNT`."""
    empty = {}
    for lat, resp in zip(problem.latents, e.resp, strict=True):
        if lat.kind not in ("Categorical", "Mixture"):  # not a Bernoulli's or a hurdle's zeros
            continue
        counts = resp.reshape(-1, lat.support.size).sum(axis=0)
        ks = lat.support[counts < EMPTY_COUNT].tolist()
        if ks:
            empty[lat.name] = ks
    return empty
