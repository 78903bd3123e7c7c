"""The closed-form plan of a model: what is recognized, the statistics, and the update."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.basic import CategoricalRV

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.components import explicit_components, mixture_components
from pm_em.closed_form.graph import NoMatch
from pm_em.closed_form.registry import COMPONENTS
from pm_em.closed_form.transforms import to_unconstrained
from pm_em.closed_form.transitions import emission_weights, match_chain
from pm_em.closed_form.weights import match_mixture_weights, match_weights
from pm_em.compile_cache import no_c_compiler
from pm_em.reading.mixture_graph import as_mixture
from pm_em.reading.problem import ChainExpectations, EMProblem

__all__ = ["ClosedFormPlan", "match_closed_form"]

# Mode for the one-off evaluation of constrained shapes: no backend compile.
_CHECK_MODE = "FAST_COMPILE"


@dataclass(frozen=True)
class _ParamSlot:
    name: str
    index: slice
    value_shape: tuple[int, ...]
    transform: object


@dataclass
class _LatentPlan:
    latent_index: int
    weights: Block | None
    components: list[Block | None]

    @property
    def blocks(self) -> list[Block]:
        return [b for b in [self.weights, *self.components] if b is not None]

    @property
    def complete(self) -> bool:
        """Whether every term of this latent's joint density was recognized."""
        return self.weights is not None and all(b is not None for b in self.components)


@dataclass
class ClosedFormPlan:
    """The closed-form part of a model's M-step.

    Attributes
    ----------
    problem : EMProblem
    claimed : tuple of str
        Free variables updated in closed form.
    unclaimed : tuple of str
        Free variables left to the numeric M-step.
    complete : bool
        Every parameter is claimed and every latent's joint density was recognized: the
        lean E-step (statistics only, no responsibilities) suffices.
    """

    problem: EMProblem
    latents: list[_LatentPlan]
    slots: dict[str, _ParamSlot]
    claimed: tuple[str, ...]
    unclaimed: tuple[str, ...]
    reads: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """Whether the closed form covers every parameter and latent."""
        return (
            not self.unclaimed
            and len(self.latents) == len(self.problem.latents)
            and all(lp.complete for lp in self.latents)
        )

    def log_joint(self, latent_index: int) -> Variable:
        """Return the latent's joint log density, (n, K), from broadcasts, not gathers."""
        (lp,) = [lp for lp in self.latents if lp.latent_index == latent_index]
        values = self.problem.constrained
        if any(b.stack_joint for b in lp.blocks) and all(b.unrolled for b in lp.blocks):
            n_support = self.problem.latents[latent_index].support.size
            n = self.problem.latents[latent_index].shape[0]
            columns = [self._log_density_k(lp, values, k) for k in range(n_support)]
            return pt.stack([pt.broadcast_to(c, (n,)) for c in columns], axis=-1)
        terms = [b.log_density(values) for b in lp.blocks]
        return pt.add(*(pt.as_tensor(t).astype("float64") for t in terms))

    @staticmethod
    def _log_density_k(lp: _LatentPlan, values, k: int) -> Variable:
        terms = (pt.as_tensor(b.log_density_k(values, k)).astype("float64") for b in lp.blocks)
        return pt.add(*terms)

    def emission_log_joint(self, latent_index: int) -> Variable | None:
        """Return a chain latent's emissions, (*shape, K), from broadcasts; None if unmatched.

        Every dependent must have been recognized (the blocks after P's, see
        `closed_form.transitions.match_chain`).
        """
        lat = self.problem.latents[latent_index]
        matches = [lp for lp in self.latents if lp.latent_index == latent_index]
        if lat.coupling != "chain" or not matches:
            return None
        emissions = matches[0].components[1:]
        if not emissions or any(b is None for b in emissions):
            return None
        values = self.problem.constrained
        n_support = lat.support.size
        total = pt.add(*(pt.as_tensor(b.log_density(values)).astype("float64") for b in emissions))
        n = int(np.prod(lat.shape))
        return pt.broadcast_to(total, (n, n_support)).reshape((*lat.shape, n_support))

    def unrolled_terms(self, latent_index: int) -> tuple[Variable, list[Variable]] | None:
        """Return the log marginal (n,) and the statistics, computed component by component.

        None unless every block of the latent writes its terms one component at a time.
        The statistics are in the order of `stat_graphs` (without the values read).
        """
        matches = [lp for lp in self.latents if lp.latent_index == latent_index]
        if not matches or not all(b.unrolled for b in matches[0].blocks):
            return None
        (lp,) = matches
        values = self.problem.constrained
        n_support = self.problem.latents[latent_index].support.size
        logs = [self._log_density_k(lp, values, k) for k in range(n_support)]  # K of (n,)
        top = logs[0]
        for log_k in logs[1:]:
            top = pt.maximum(top, log_k)
        top = pt.switch(pt.isinf(top), 0.0, top)  # no possible value: lse = log 0 = -inf
        # One exp per (i, k), the E-step's main cost: r_ik = e_ik / Σ_k e_ik. Terms below the
        # smallest normal double are flushed to zero: an exp with a subnormal result costs
        # several times a normal one, and such terms change no sum that holds the top term 1.
        scaled = [_flushed_exp(log_k - top) for log_k in logs]
        total = pt.add(*scaled)
        lse = top + pt.log(total)
        inv = pt.switch(total > 0.0, 1.0 / total, 0.0)  # total = 0: no possible value
        resps = [e_k * inv for e_k in scaled]
        stats = []
        for block in lp.blocks:
            per_k = [block.stats_k(resps[k], values, k) for k in range(n_support)]
            stats.extend(
                pt.stack([per_k[k][i] for k in range(n_support)]) for i in range(block.n_stats)
            )
        return lse, stats

    def stat_graphs(
        self, resps: Sequence[Variable], unrolled: dict[int, list[Variable]] | None = None
    ) -> list[Variable]:
        """Statistics of every block, then the current values of every variable read.

        ``resps`` holds the (n, K) responsibilities of every latent of the problem (a
        `ChainExpectations` for a chain: its blocks of P and p0 take it whole, its emission
        blocks the smoothed marginals as (n, K) responsibilities); ``unrolled`` the
        statistics already computed by `unrolled_terms`, per latent index.
        """
        values = self.problem.constrained
        unrolled = unrolled or {}
        out = []
        for lp in self.latents:
            if lp.latent_index in unrolled:
                out.extend(unrolled[lp.latent_index])
                continue
            resp = resps[lp.latent_index]
            for block in lp.blocks:
                weights = resp
                if isinstance(resp, ChainExpectations) and not block.takes_chain:
                    n_support = self.problem.latents[lp.latent_index].support.size
                    weights = emission_weights(resp, n_support)
                out.extend(block.stats(weights, values))
        out.extend(pt.as_tensor(values[name]).astype("float64") for name in self.reads)
        return out

    def update(self, x: np.ndarray, stats: Sequence[np.ndarray]) -> np.ndarray | None:
        """Return the flat vector with claimed variables updated; None if a form fails."""
        stats = list(stats)
        current = dict(zip(self.reads, stats[len(stats) - len(self.reads) :], strict=True))
        new_values: dict[str, np.ndarray] = {}
        i = 0
        for lp in self.latents:
            for block in lp.blocks:
                block_stats = stats[i : i + block.n_stats]
                i += block.n_stats
                if not block.claims:
                    continue
                # Conditional maximization: later blocks see earlier blocks' new values.
                seen = {**current, **new_values}
                if block.uses_x:  # a numeric step on statistics needs the vector itself
                    result = block.update(block_stats, seen, x=x)
                else:
                    result = block.update(block_stats, seen)
                if result is None:
                    return None
                new_values.update(result)
        x_new = np.array(x, dtype="float64", copy=True)
        for name, value in new_values.items():
            slot = self.slots[name]
            u = to_unconstrained(slot.transform, value)
            if u is None or u.size != slot.index.stop - slot.index.start:
                return None
            x_new[slot.index] = u.ravel()
        return x_new


# log of the smallest normal double: exp below it is subnormal (slow) or zero.
_LOG_TINY = float(np.log(np.finfo("float64").tiny))


def _flushed_exp(v: Variable) -> Variable:
    """exp(v), with results below the smallest normal double set to 0."""
    return pt.switch(v < _LOG_TINY, 0.0, pt.exp(v))


def _children(model: pm.Model, free: list[Variable]) -> dict[Variable, set[Variable]]:
    """For each free variable: the model variables and potentials whose density it enters."""
    basic = set(model.basic_RVs)
    out: dict[Variable, set[Variable]] = {rv: set() for rv in free}
    for var in [*model.basic_RVs, *model.potentials]:
        inputs = var.owner.inputs if var in basic else [var]
        for parent in ancestors(inputs, blockers=basic - {var}):
            if parent in out and parent is not var:
                out[parent].add(var)
    return out


def _constrained_shapes(problem: EMProblem) -> dict[str, tuple[int, ...]]:
    model = problem.model
    static = {name: model[name].type.shape for name in problem.constrained}
    if all(None not in shape for shape in static.values()):
        return static  # the usual case: no need to evaluate anything
    names = list(problem.constrained)
    with no_c_compiler(_CHECK_MODE):
        fn = pytensor.function(
            [problem.x],
            [problem.constrained[k] for k in names],
            mode=_CHECK_MODE,
            on_unused_input="ignore",
        )
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    return {k: np.shape(v) for k, v in zip(names, fn(start), strict=True)}


def _latent_plan(ctx: Context, j: int, lat) -> _LatentPlan | None:
    """Match latent ``j``'s weights and components; None for a latent no form applies to."""
    n_support = lat.support.size
    if len(lat.shape) != 1 or not np.array_equal(lat.support, np.arange(n_support)):
        return None
    structure = _structure(ctx, lat, n_support)
    if structure is None:
        return None
    weights, sources = structure
    components = []
    for comps in sources:
        block = None
        match = COMPONENTS.get(type(comps.op)) if comps is not None else None
        if match is not None and tuple(comps.y.type.shape[:1]) in ((lat.shape[0],), (None,)):
            try:
                block = match(ctx, comps)
            except NoMatch:
                block = None
        components.append(block)
    return _LatentPlan(j, weights, components)


def _structure(ctx: Context, lat, n_support: int):
    """Return the latent's weights block and the components of each dependent, in either form.

    An explicit latent ``z`` (a Categorical free variable) has its prior as weights and one
    `Components` per observed dependent; a mixture's latent has the mixture's weights and
    its one list or batch of components. Returns None for other latents.
    """
    model = ctx.problem.model
    if lat.mixture_of is not None:
        mixture = as_mixture(model, model[lat.mixture_of])
        if mixture is None:
            return None
        return match_mixture_weights(ctx, mixture), [mixture_components(ctx, mixture, n_support)]
    z = model[lat.name]
    if not isinstance(z.owner.op, CategoricalRV):
        return None
    sources = [
        explicit_components(ctx, model[name], z, n_support)
        if model[name] in model.observed_RVs
        else None
        for name in lat.dependents
    ]
    return match_weights(ctx, z), sources


def match_closed_form(problem: EMProblem) -> ClosedFormPlan | None:
    """Recognize the closed-form updates of ``problem``'s M-step.

    Parameters
    ----------
    problem : EMProblem

    Returns
    -------
    ClosedFormPlan or None
        None when no parameter has a closed-form update.
    """
    if getattr(problem, "missing", ()):
        # Missing entries are integrated out of the likelihood (pm_em.missing); the closed
        # forms here assume fully observed data.
        return None
    model = problem.model
    if not problem.latents or not problem.params:
        return None
    free = [model[p.name] for p in problem.params]
    ctx = Context(
        problem=problem,
        free=set(free),
        children=_children(model, free),
        shapes=_constrained_shapes(problem),
    )
    latents = []
    for j, lat in enumerate(problem.latents):
        if lat.coupling == "chain":  # p0, P and the emissions: closed_form.transitions
            latents.append(_LatentPlan(j, *match_chain(ctx, lat, model[lat.name])))
        elif (lp := _latent_plan(ctx, j, lat)) is not None:
            latents.append(lp)
    # A variable is claimed by exactly one block.
    owners: dict[str, int] = {}
    for lp in latents:
        for block in lp.blocks:
            for name in block.claims:
                owners[name] = owners.get(name, 0) + 1
    claimed = tuple(p.name for p in problem.params if owners.get(p.name) == 1)
    if not claimed:
        return None
    for lp in latents:
        for block in lp.blocks:
            if any(owners[name] != 1 for name in block.claims):
                return None
    slots, i = {}, 0
    for p in problem.params:
        slots[p.name] = _ParamSlot(
            p.name, slice(i, i + p.size), p.shape, model.rvs_to_transforms.get(model[p.name])
        )
        i += p.size
    reads = tuple(
        dict.fromkeys(name for lp in latents for block in lp.blocks for name in block.reads)
    )
    unclaimed = tuple(p.name for p in problem.params if p.name not in claimed)
    return ClosedFormPlan(
        problem=problem,
        latents=latents,
        slots=slots,
        claimed=claimed,
        unclaimed=unclaimed,
        reads=reads,
    )
