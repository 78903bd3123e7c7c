"""The reader of marginal mixtures: the implicit latent of each `pm.Mixture`-like likelihood.

NUTS cannot sample a discrete assignment, so most PyMC users write a mixture in its marginal
form: ``pm.NormalMixture``, ``pm.Mixture`` (components of any families, univariate or
MvNormal, as a list or one batched distribution), or one of the families PyMC builds on it
(``pm.ZeroInflatedPoisson``/``NegativeBinomial``/``Binomial``, ``pm.HurdlePoisson``/
``NegativeBinomial``/``Gamma``/``LogNormal``). Each observed one hides a latent: the component
of each observed element. This reader makes it explicit for EM without touching the model:
the latent ``"<y>_component"`` with joint log density

    L[i, k] = log w_ik + log f_k(y_i),

built from the mixture node's own inputs (``rng, weights, *components``), so that
``logsumexp_k L[i, k]`` is PyMC's mixture log density of ``y_i`` (the same parameter checks
included). Two structures differ from a plain sum: a hurdle's second component has density 0
at y = 0 (PyMC's hurdle density is not a logsumexp), and missing data in ``observed`` (PyMC
then imputes the mixture as one block, `PartialObservedRV`) are integrated out by
`pm_em.reading.mixture_missing`.
"""

from functools import partial

import numpy as np
import pymc as pm
import pytensor
from pymc.logprob.transforms import SimplexTransform
from pytensor.graph.basic import Constant, Variable
from pytensor.tensor.elemwise import DimShuffle

from pm_em.compile_cache import no_c_compiler
from pm_em.compiling import CHECK_MODE
from pm_em.reading.latents import LatentDraft, term_shapes
from pm_em.reading.mixture_graph import MarginalMixture, as_mixture, latent_name, mixture_terms
from pm_em.reading.mixture_missing import missing_log_joint, mixture_missing_values
from pm_em.reading.observed import observed_data
from pm_em.reading.problem import Latent

__all__ = ["latent_name", "read_marginal_mixtures"]


def read_marginal_mixtures(ctx) -> list[LatentDraft]:
    """Find every observed marginal mixture; each becomes a latent ``"<y>_component"``.

    Parameters
    ----------
    ctx : pm_em.reading.build.ReadContext

    Returns
    -------
    list of LatentDraft
        One per observed mixture. It absorbs the observed variable; `latent=` may also name
        it by the mixture's own name (and PyMC's ``<y>_unobserved`` with missing data).

    Raises
    ------
    ValueError
        If the latent's name is already a variable of the model.
    """
    model = ctx.model
    drafts = []
    for rv in model.observed_RVs:
        mixture = as_mixture(model, rv, ctx.all_imputed)
        if mixture is None:
            continue
        name = latent_name(mixture.name)
        if name in model.named_vars:
            raise ValueError(
                f"The model has a variable named '{name}', the name pm_em gives the component "
                f"assignment of mixture '{mixture.name}'. Rename that variable."
            )
        aliases = (mixture.name,)
        if mixture.imputed is not None:
            aliases += (mixture.imputed.unobserved,)
        drafts.append(
            LatentDraft(
                name=name,
                rv=None,
                absorbs=(rv,),
                build=partial(build_mixture, mixture=mixture),
                aliases=aliases,
                missing=partial(mixture_missing_values, mixture=mixture),
            )
        )
    return drafts


def build_mixture(ctx, draft: LatentDraft, *, mixture: MarginalMixture) -> tuple[Latent, list]:
    """Build the latent of ``mixture``: log joint (*shape, K) in value-variable terms."""
    model = ctx.model
    _check_weights(ctx, mixture)
    if mixture.imputed is None:
        log_w, log_f = mixture_terms(mixture, model.rvs_to_values[mixture.rv])
        log_joint, shape_of = log_w + log_f, log_f
    else:
        log_joint, shape_of = missing_log_joint(mixture)
    log_joint, shape_of = model.replace_rvs_by_values([log_joint, shape_of])
    full_shape = term_shapes(model, [shape_of], ctx.point)[0]
    shape, n_support = full_shape[:-1], full_shape[-1]
    name = latent_name(mixture.name)
    spec = Latent(
        name=name,
        support=np.arange(n_support),
        shape=shape,
        dims=_element_dims(model, mixture, len(shape)),
        support_dim=_support_dim(model, mixture, name),
        kind=mixture.kind,
        dependents=(mixture.rv.name,),
        observed=(mixture.name,),
        values_per_element=_values_per_element(mixture, ctx),
        log_joint=log_joint.astype("float64"),
        mixture_of=mixture.rv.name,
    )
    return spec, []


def _values_per_element(mixture: MarginalMixture, ctx) -> int:
    """Observed values per latent element: 1, or the row length of multivariate components."""
    if mixture.ndim_supp == 0:
        return 1
    if mixture.imputed is not None:
        data = mixture.imputed.data
    else:
        data = observed_data(ctx.model, mixture.rv)
    if data is None:  # data PyMC keeps as a graph: the row length from the static type
        return int(mixture.rv.type.shape[-1] or 1)
    return int(np.prod(np.shape(data)[-mixture.ndim_supp :]))


def _element_dims(model: pm.Model, mixture: MarginalMixture, n: int) -> tuple:
    """Dims of the latent's elements: the mixture's own (less its support dims).

    Without dims, ArviZ's names for the observed variable's axes (``"<y>_dim_<i>"``), so that
    the latent lines up with ``observed_data`` and ``log_likelihood``.
    """
    dims = tuple(model.named_vars_to_dims.get(mixture.name) or ())
    dims = dims[:n] if len(dims) >= n else (None,) * n
    return tuple(d if d is not None else f"{mixture.name}_dim_{i}" for i, d in enumerate(dims))


def _support_dim(model: pm.Model, mixture: MarginalMixture, name: str) -> str:
    """Return the weights' component dim if they are a model variable with dims, else a new one."""
    weights = _strip_expand_dims(mixture.weights)
    dims = model.named_vars_to_dims.get(weights.name) if weights.name else None
    if weights.name in model.named_vars and dims and dims[-1] is not None:
        return dims[-1]
    return f"{name}_support"


def _strip_expand_dims(var: Variable) -> Variable:
    while var.owner is not None and isinstance(var.owner.op, DimShuffle):
        if not var.owner.op.is_left_expand_dims:
            break
        var = var.owner.inputs[0]
    return var


def _check_weights(ctx, mixture: MarginalMixture) -> None:
    """Refuse weights that are not a distribution over the components at the initial point.

    PyMC's mixture density is -inf unless the weights lie in [0, 1] and sum to 1; EM's log
    joint carries the same check, but a model that fails it at its start would stop with a
    message about the data. Weights that are a simplex-transformed free variable (e.g.
    `pm.Dirichlet`) always pass; anything else is evaluated once at the initial point.
    """
    model = ctx.model
    weights = _strip_expand_dims(mixture.weights)
    if isinstance(model.rvs_to_transforms.get(weights), SimplexTransform):
        return
    if isinstance(weights, Constant):
        values = np.asarray(weights.data, dtype="float64")
    else:
        (graph,) = model.replace_rvs_by_values([weights])
        inputs = [v for v in model.value_vars if v.name in ctx.point]
        with no_c_compiler(CHECK_MODE):
            fn = pytensor.function(inputs, graph, mode=CHECK_MODE, on_unused_input="ignore")
        values = np.asarray(fn(*(ctx.point[v.name] for v in inputs)), dtype="float64")
    total = values.sum(axis=-1)
    if np.all((values >= 0) & (values <= 1)) and np.allclose(total, 1.0):
        return
    raise ValueError(
        f"The weights of mixture '{mixture.name}' are not probabilities summing to 1 at the "
        f"model's initial point (they sum to {np.round(np.ravel(total)[:3], 6).tolist()}), so "
        "its density is 0 there and PyMC's would be too. Give the weights a `pm.Dirichlet` "
        "prior, or normalize them (e.g. with `pt.special.softmax`)."
    )
