"""The E- and M-steps of a chunked fit, and its health checks, over an executor.

`ChunkedEngine` plays for a chunked fit the part `CompiledProblem` plays in memory: each
E-step maps the ``"estep"`` kernel over the chunks and adds the results in a fixed order
(`ChunkedEStep`); the M-step runs here, on the client, with the same classes as in memory
(`ClosedFormMStep`, `NumericMStep`), their Q and gradient each one map of the ``"q"`` kernel.
Nothing of size n leaves a chunk: the collapse and start checks work from each chunk's
maximum, first non-finite elements and evenly spaced sample of log marginals, which give the
same decisions as `pm_em.engine.health` on the whole array.
"""

from dataclasses import dataclass

import numpy as np

from pm_em.engine.accel import EMMap
from pm_em.engine.chunked import tree_sum
from pm_em.engine.chunked_model import ChunkedModel
from pm_em.engine.health import _COLLAPSE_NATS, zero_density_error
from pm_em.engine.mstep import ClosedFormMStep, NumericMStep

__all__ = ["ChunkedEStep", "ChunkedEngine"]


@dataclass(frozen=True, eq=False)
class ChunkedEStep:
    """An E-step over all chunks, reduced: what the loop, the M-step and the checks need.

    Attributes
    ----------
    log_posterior, log_prior : float
    stats : tuple of ndarray
        The closed-form statistics summed over chunks (empty without a plan).
    top : ndarray of shape (n_latents,)
        Each latent's largest log marginal, at flat element ``arg``.
    arg : ndarray of int
    sample : tuple of ndarray
        Each latent's evenly spaced log marginals (`pm_em.engine.chunked.COLLAPSE_SAMPLE`).
    bad : tuple of ndarray
        Each latent's first elements of zero density.
    finite_terms : dict of {str: bool}
        Whether each per-row term is finite.
    """

    log_posterior: float
    log_prior: float
    stats: tuple
    top: np.ndarray
    arg: np.ndarray
    sample: tuple
    bad: tuple
    finite_terms: dict

    @property
    def chains(self) -> tuple:
        """No chain latents: a chunked fit refuses them (`pm_em.engine.rows`)."""
        return ()

    @property
    def log_likelihood(self) -> float:
        """Observed-data log likelihood: the log posterior less the log prior."""
        return self.log_posterior - self.log_prior


def _finite_or_inf(value: float, grad: np.ndarray) -> tuple[float, np.ndarray]:
    if not np.isfinite(value):
        # Outside the support: tell the line search to step back.
        return np.inf, np.zeros_like(grad)
    return float(value), np.asarray(grad, dtype="float64")


class ChunkedEngine:
    """The E-step, M-step and checks of one chunked fit.

    Parameters
    ----------
    cm : ChunkedModel
    executor : InProcessExecutor or DaskExecutor
    """

    def __init__(self, cm: ChunkedModel, executor):
        self.cm = cm
        self.executor = executor
        self.problem = cm.problem
        self.n_rows = executor.layout.n_rows
        per_row = [int(np.prod(lat.shape[1:], dtype=np.int64)) for lat in self.problem.latents]
        self.n_elements = [self.n_rows * p for p in per_row]
        self._estep = cm.kernel("estep", n_elements=sum(self.n_elements))
        plan = cm.graphs.plan
        self.plan = plan
        self.mstep_impl = (
            ClosedFormMStep(plan, self.neg_q, stats_from_resp=None)
            if plan is not None
            else NumericMStep(self.neg_q)
        )
        self.em_map = EMMap(estep=self.estep, mstep=self.mstep, lean=True)
        self.n_estep = 0

    # ---------------------------------------------------------------- E-step
    def estep(self, x: np.ndarray) -> ChunkedEStep:
        """One E-step over every chunk at ``x``."""
        x = np.asarray(x, dtype="float64")
        parts = self.executor.map(self._estep, [x])
        self.n_estep += 1
        sums = tree_sum([p["sums"] for p in parts])
        n_lat = len(self.problem.latents)
        terms = dict(zip(self.cm.graphs.row_terms, sums[0][n_lat:], strict=True))
        global_prior, global_lik, _ = self.cm.global_terms(x)
        row_prior = sum(v for k, v in terms.items() if k not in self.problem.log_lik_rest)
        log_prior = global_prior + row_prior
        log_post = global_prior + global_lik + float(np.sum(sums[0]))
        tops = np.stack([p["top"] for p in parts])  # (n_chunks, n_latents)
        args = np.stack([p["arg"] for p in parts])
        best = np.argmax(tops, axis=0) if n_lat else np.zeros(0, dtype=int)
        return ChunkedEStep(
            log_posterior=float(log_post),
            log_prior=float(log_prior),
            stats=tuple(sums[1:]),
            top=tops[best, np.arange(n_lat)] if n_lat else np.zeros(0),
            arg=args[best, np.arange(n_lat)] if n_lat else np.zeros(0, dtype=int),
            sample=tuple(np.concatenate([p["sample"][j] for p in parts]) for j in range(n_lat)),
            bad=tuple(np.concatenate([p["bad"][j] for p in parts])[:5] for j in range(n_lat)),
            finite_terms={k: bool(np.isfinite(v)) for k, v in terms.items()},
        )

    # ---------------------------------------------------------------- M-step
    def neg_q(self, x: np.ndarray, x_old: np.ndarray) -> tuple[float, np.ndarray]:
        """-Q(x) with the responsibilities at ``x_old``, and its gradient: one map.

        The signature of `pm_em.engine.mstep.compile_q`'s function with ``x_old`` in the
        place of the responsibilities (which each chunk recomputes from it).
        """
        x = np.asarray(x, dtype="float64")
        neg_q, grad, _ = tree_sum(self.executor.map(self.cm.kernel("q"), [x, x_old]))
        prior, lik, g_grad = self.cm.global_terms(x)
        return _finite_or_inf(neg_q - prior - lik, grad - g_grad)

    def mstep(self, x: np.ndarray, e: ChunkedEStep) -> np.ndarray:
        """Take the M-step from the E-step ``e`` at ``x``."""
        if self.plan is None:
            return self.mstep_impl(x, (x,))
        stats = (*e.stats, *self.cm.reads(x))
        return self.mstep_impl.step(x, stats, lambda: (x,))

    def neg_log_posterior(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Minus the observed-data log posterior and its gradient (the polish): one map."""
        x = np.asarray(x, dtype="float64")
        ll, grad = tree_sum(self.executor.map(self.cm.kernel("grad"), [x]))
        prior, lik, g_grad = self.cm.global_terms(x)
        return _finite_or_inf(-(ll + prior + lik), -(grad + g_grad))

    # ---------------------------------------------------------------- checks
    def collapse(self, e: ChunkedEStep) -> str | None:
        """Describe a collapse at ``e`` as `pm_em.engine.health.collapse` does, or None."""
        if not np.isfinite(e.log_posterior):
            return f"the log posterior became {e.log_posterior}"
        for j, lat in enumerate(self.problem.latents):
            if self.n_elements[j] < 3:
                continue
            spike = e.top[j] - np.median(e.sample[j])
            if spike > _COLLAPSE_NATS * lat.values_per_element:
                return (
                    f"element {int(e.arg[j])} of {list(lat.observed)} (latent '{lat.name}') has "
                    f"a log likelihood {spike:.0f} nats above the median: a component "
                    "collapsed onto it"
                )
        return None

    def check_start(self, e: ChunkedEStep, x: np.ndarray, run: int) -> None:
        """Refuse a start of zero density as `pm_em.engine.health.check_start` does."""
        if np.isfinite(e.log_posterior):
            return
        problem = self.problem
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
        for lat, bad in zip(problem.latents, e.bad, strict=True):
            if bad.size:
                raise zero_density_error(lat, bad, run)
        for name, finite in e.finite_terms.items():
            if not finite:
                raise ValueError(
                    f"Observed variable '{name}' has zero density at the starting point (run "
                    f"{run}); check its data against the model's support, or pass `initvals`."
                )
        raise ValueError(
            f"The log posterior is {e.log_posterior} at the starting point (run {run})."
        )
