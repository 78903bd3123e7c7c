"""A problem's graphs as functions of a block of rows: what chunked EM evaluates per chunk.

EM's E-step is a sum over independent latent elements (the rows). `bind_rows` reads which
inputs of a problem's graphs hold rows (the ``template``: the model as declared, with its own
data) and returns a `RowBinding` whose `RowBinding.rebind` turns any graph of the problem into
one of ``x`` and symbolic row inputs of any length:

- the data the rows are made of become inputs: ``pm.Data`` containers and observed values
  whose leading axis is the rows, the missingness mask and filled-in data of an MvNormal
  with missing entries (`pm_em.reading.missing.mvnormal_rows` names them), and any other
  constant with one entry per row (its own rows are then the only rows it can have);
- the template's row count, wherever the graph holds it as a shape (``Alloc``, ``Reshape``
  arguments, shape vectors), becomes the length of those inputs.

Nothing here knows which reader built a latent: any graph whose row structure is carried by
its data and shapes rebinds. That the rebound graphs are right is checked numerically, once,
against the template's own E-step (`pm_em.engine.chunked.verify_kernel`): a graph that keeps a
static row count, or a term that is not a sum over rows, is refused there.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors, toposort
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.variable import TensorConstant

from pm_em.data import NumpySource, RowSource, as_source
from pm_em.reading.missing import FILLED_SUFFIX, MASK_SUFFIX
from pm_em.reading.problem import EMProblem

__all__ = ["RowBinding", "RowInput", "bind_rows", "resolve_sources", "row_value"]

# How a row input is made from the raw rows of its source.
VALUES, MISSING_MASK, FILLED = "values", "missing_mask", "filled"

# Shape vectors are short; a longer integer vector holding the row count is data.
_MAX_SHAPE_LEN = 8


@dataclass(frozen=True, eq=False)
class RowInput:
    """One symbolic input of the rebound graphs and how to fill it from a block of rows.

    Attributes
    ----------
    source : str
        The data container the rows come from.
    role : str
        ``"values"`` (the rows themselves), ``"missing_mask"`` (1.0 where NaN) or
        ``"filled"`` (the rows with 0 where NaN).
    variable : TensorVariable of shape (None, *trailing)
    """

    source: str
    role: str
    variable: Variable = field(repr=False)

    @property
    def spec(self) -> tuple[str, str, str]:
        """``(source, role, dtype)``: what a compiled kernel needs to fill the input."""
        return (self.source, self.role, self.variable.dtype)


def row_value(spec: tuple[str, str, str], block: np.ndarray) -> np.ndarray:
    """Return row input ``spec``'s (`RowInput.spec`) value for ``block``, its source's rows."""
    _, role, dtype = spec
    if role == VALUES:
        # Arrays deserialized by Dask may be unaligned views, which C code refuses.
        return np.require(block, dtype=dtype, requirements="CA")
    missing = np.isnan(block)
    if role == MISSING_MASK:
        return np.require(missing, dtype="float64", requirements="CA")
    return np.require(np.where(missing, 0.0, block), dtype="float64", requirements="CA")


@dataclass(frozen=True, eq=False)
class RowBinding:
    """Which graph inputs hold rows, and the map that turns them into row inputs.

    Attributes
    ----------
    n_template : int
        Rows of the template (the model as declared).
    inputs : tuple of RowInput
        The row inputs, in the order every rebound function takes them.
    template : dict of {str: ndarray}
        Each source's rows in the model itself (NaN where missing).
    imputed : frozenset of str
        Sources whose NaN entries are missing values EM integrates out.
    observed_sources : dict of {str: str}
        Each observed variable (the user's name) whose data are rows: its source.
    aliases : dict of {str: str}
        Other names ``data=`` accepts (an observed variable whose value is a ``pm.Data``
        container): the container.
    """

    n_template: int
    inputs: tuple[RowInput, ...]
    template: dict[str, np.ndarray] = field(repr=False)
    imputed: frozenset[str]
    observed_sources: dict[str, str]
    aliases: dict[str, str]
    replace: dict = field(repr=False)

    @property
    def sources(self) -> tuple[str, ...]:
        """The sources, in the order of their first row input."""
        return tuple(dict.fromkeys(i.source for i in self.inputs))

    def rebind(self, graphs: Sequence[Variable]) -> list[Variable]:
        """Return the graphs with the template's rows replaced by the row inputs.

        Shapes built after `bind_rows` are found here too. Composite Ops (``OpFromGraph``,
        e.g. ``pt.logsumexp``) are first expanded into their inner graphs: such an Op keeps
        the static input types it was built for, and would pin the rows to the template's.
        """
        if not graphs:
            return []
        graphs = _inline_ofgs(list(graphs))
        replace = dict(self.replace)
        n_rows = self.inputs[0].variable.shape[0]
        for v in ancestors(list(graphs)):
            if v not in replace and _holds_count(v, self.n_template):
                replace[v] = _shape_replacement(v, self.n_template, n_rows)
        return list(clone_replace(list(graphs), replace=replace, rebuild_strict=False))

    def depends_on_rows(self, graph: Variable) -> bool:
        """Whether ``graph`` (of the problem, not rebound) involves the rows."""
        return any(v in self.replace for v in ancestors([graph]))

    @property
    def specs(self) -> tuple[tuple[str, str, str], ...]:
        """`RowInput.spec` of every row input, in order."""
        return tuple(i.spec for i in self.inputs)


def _template_rows(problem: EMProblem) -> int:
    """Return the number of rows of the model as declared: its latents' leading length."""
    for lat in problem.latents:
        # A Markov chain's elements couple along the rows: it would split into chunks of whole
        # sequences only, which needs chunk boundaries at sequence starts and a forward-backward
        # kernel per chunk; refused until then.
        if lat.coupling != "independent":
            raise ValueError(
                f"Latent '{lat.name}' couples its elements ({lat.coupling}); chunked and "
                "distributed fits split independent elements only. Fit it in memory."
            )
    if problem.latents:
        lengths = {lat.shape[0] if lat.shape else None for lat in problem.latents}
        if None in lengths:
            (name,) = [lat.name for lat in problem.latents if not lat.shape][:1]
            raise ValueError(
                f"Latent '{name}' is a scalar: a chunked fit splits the latent elements into "
                "blocks of rows, so every latent needs one element per row. Fit in memory "
                "(without `data=`, `chunk_size=`, `client=`)."
            )
        if len(lengths) > 1:
            shapes = {lat.name: lat.shape for lat in problem.latents}
            raise ValueError(
                f"The latents have different numbers of rows {shapes}: a chunked fit needs "
                "every latent to have one element per row of the same data. Fit in memory."
            )
        (n,) = lengths
    else:
        rows = {spec.mask.shape[0] for spec in problem.missing}
        if len(rows) != 1:
            raise ValueError(
                "A chunked fit splits the rows of a latent (or of an MvNormal with missing "
                "entries); this model has neither. Fit it in memory (without `data=`, "
                "`chunk_size=`, `client=`)."
            )
        (n,) = rows
    if n < 3:
        raise ValueError(
            f"The model is declared with {n} row(s); a chunked fit checks its per-chunk "
            "E-step on the model's own rows, which needs at least 3. Declare the model with "
            "more rows (e.g. the first 1000 rows of the data) and pass all rows in `data=`."
        )
    return int(n)


def _refuse_elementwise_missing(problem: EMProblem) -> None:
    for spec in problem.missing:
        if not spec.partial:
            raise ValueError(
                f"Observed variable '{spec.name}' has missing entries in an elementwise "
                "likelihood. Chunked and distributed fits integrate out the missing entries "
                "of MvNormal rows only: fit this model in memory (without `data=`, "
                f"`chunk_size=`, `client=`), or drop the incomplete entries of '{spec.name}' "
                "(for a univariate mixture this leaves the estimate unchanged)."
            )


def _problem_graphs(problem: EMProblem) -> list[Variable]:
    return [
        *(lat.log_joint for lat in problem.latents),
        *problem.log_lik_rest.values(),
        *problem.prior_terms.values(),
        *(g for spec in problem.missing for g in (spec.mean, spec.var)),
    ]


class _Finder:
    """Collects the row inputs of a problem's graphs, one per (source, role)."""

    def __init__(self, problem: EMProblem, n: int):
        model = problem.model
        self.n = n
        self.containers = {id(v): name for name, v in model.named_vars.items()}
        self.observed = {
            id(model.rvs_to_values[rv]): rv.name
            for rv in model.observed_RVs
            if isinstance(model.rvs_to_values[rv], TensorConstant)
        }
        self.missing = {spec.name: spec for spec in problem.missing}
        self.inputs: dict[tuple[str, str], RowInput] = {}
        self.template: dict[str, np.ndarray] = {}
        self.replace: dict[Variable, Variable] = {}
        self.shape_constants: list[TensorConstant] = []

    def _input(self, source: str, role: str, like: Variable, template) -> Variable:
        key = (source, role)
        if key not in self.inputs:
            shape = (None, *(1 if s == 1 else None for s in like.type.shape[1:]))
            var = pt.tensor(f"rows_{source}_{role}", dtype=like.type.dtype, shape=shape)
            self.inputs[key] = RowInput(source, role, var)
            self.template.setdefault(source, template)
        return self.inputs[key].variable

    def visit(self, v: Variable) -> None:
        if isinstance(v, TensorSharedVariable):
            value = v.get_value(borrow=True)
            if np.ndim(value) and np.shape(value)[0] == self.n:
                name = self.containers.get(id(v))
                if name is None:
                    raise ValueError(
                        f"A shared variable '{v.name}' with one entry per row is not a data "
                        "container of the model; declare it with `pm.Data`."
                    )
                self.replace[v] = self._input(name, VALUES, v, np.asarray(value))
            return
        if not isinstance(v, TensorConstant) or (v.type.ndim == 0 and v.dtype[:3] != "int"):
            return
        if v.type.ndim >= 1 and v.data.shape[0] == self.n:
            self.replace[v] = self._row_constant(v)
        elif _holds_count(v, self.n):
            self.shape_constants.append(v)

    def _row_constant(self, v: TensorConstant) -> Variable:
        name = v.name or ""
        for suffix, role in ((MASK_SUFFIX, MISSING_MASK), (FILLED_SUFFIX, FILLED)):
            if name.endswith(suffix) and name.removesuffix(suffix) in self.missing:
                source = name.removesuffix(suffix)
                return self._input(source, role, v, self.missing[source].data)
        if id(v) in self.observed:
            source = self.observed[id(v)]
            return self._input(source, VALUES, v, np.asarray(v.data))
        # Another per-row constant (e.g. a covariate passed as a plain array): its own rows.
        source = f"<constant {sum(k[0].startswith('<') for k in self.inputs)}>"
        return self._input(source, VALUES, v, np.asarray(v.data))

    def replace_shapes(self) -> None:
        """Point every shape that holds the row count at the row inputs' length."""
        if not self.inputs:
            raise ValueError(
                "No data with one entry per row was found in the model's graphs, so its "
                "E-step cannot be split into blocks of rows. Fit it in memory."
            )
        n_rows = next(iter(self.inputs.values())).variable.shape[0]
        for c in self.shape_constants:
            self.replace[c] = _shape_replacement(c, self.n, n_rows)


def _inline_ofgs(graphs: list[Variable]) -> list[Variable]:
    """Return ``graphs`` with every ``OpFromGraph`` node replaced by its inner graph."""
    memo: dict[Variable, Variable] = {}
    for node in toposort(graphs):
        is_ofg = isinstance(node.op, OpFromGraph)
        if not is_ofg and not any(i in memo for i in node.inputs):
            continue
        inputs = [memo.get(i, i) for i in node.inputs]
        if is_ofg:
            inner = node.op.fgraph
            outputs = _inline_ofgs(inner.bind(dict(zip(inner.inputs, inputs, strict=True))))
        else:
            outputs = node.clone_with_new_inputs(inputs).outputs
        memo.update(zip(node.outputs, outputs, strict=True))
    return [memo.get(g, g) for g in graphs]


def _holds_count(v: Variable, n: int) -> bool:
    """Whether ``v`` is an integer scalar equal to ``n``, or a short integer vector holding it."""
    if not isinstance(v, TensorConstant) or not v.dtype.startswith(("int", "uint")):
        return False
    if v.type.ndim > 1:
        return False
    data = np.atleast_1d(v.data)
    return data.size <= _MAX_SHAPE_LEN and n in data


def _shape_replacement(c: TensorConstant, n: int, n_rows: Variable) -> Variable:
    if c.type.ndim == 0:
        return pt.cast(n_rows, "int64")
    entries = [n_rows if int(e) == n else pt.constant(int(e), dtype="int64") for e in c.data]
    return pt.stack(entries).astype(c.dtype)


def bind_rows(problem: EMProblem, extra_graphs: Sequence[Variable] = ()) -> RowBinding:
    """Find the row inputs of ``problem``'s graphs (and of ``extra_graphs``).

    Parameters
    ----------
    problem : EMProblem
        The problem of the template (the model as declared).
    extra_graphs : sequence of Variable
        Other graphs of the problem to rebind later (a closed-form plan's).

    Returns
    -------
    RowBinding

    Raises
    ------
    ValueError
        For a model whose E-step cannot be split into rows: a scalar latent, latents of
        different lengths, missing entries of an elementwise likelihood, fewer than 3 rows.
    """
    n = _template_rows(problem)
    _refuse_elementwise_missing(problem)
    finder = _Finder(problem, n)
    for v in ancestors([*_problem_graphs(problem), *extra_graphs]):
        finder.visit(v)
    finder.replace_shapes()
    model = problem.model
    by_variable = {i.variable: i for i in finder.inputs.values()}
    observed_sources, aliases = {}, {}
    for rv in model.observed_RVs:
        row_input = by_variable.get(finder.replace.get(model.rvs_to_values[rv]))
        if row_input is not None:
            observed_sources[rv.name] = row_input.source
            if row_input.source != rv.name:
                aliases[rv.name] = row_input.source
    for spec in problem.missing:
        if spec.name in finder.template:
            observed_sources[spec.name] = spec.name
    return RowBinding(
        n_template=n,
        inputs=tuple(finder.inputs.values()),
        template=finder.template,
        imputed=frozenset(spec.name for spec in problem.missing),
        observed_sources=observed_sources,
        aliases=aliases,
        replace=finder.replace,
    )


def _check_given(binding: RowBinding, key: str, name: str, source: RowSource) -> None:
    expected = binding.template[name]
    if tuple(source.shape[1:]) != tuple(expected.shape[1:]) or len(source.shape) != expected.ndim:
        raise ValueError(
            f"data['{key}'] has shape {source.shape}, but '{name}' has rows of shape "
            f"{expected.shape[1:]} in the model: pass an array of shape "
            f"(n_rows, {', '.join(map(str, expected.shape[1:]))}) (any number of rows).".replace(
                ", )", ")"
            )
        )
    if np.issubdtype(expected.dtype, np.integer) and not np.issubdtype(source.dtype, np.integer):
        raise ValueError(
            f"data['{key}'] has dtype {source.dtype}, but '{name}' holds integers in the "
            "model: pass integer data (e.g. `.astype(int)` after checking the values)."
        )


def resolve_sources(
    binding: RowBinding, data: Mapping[str, object] | None
) -> tuple[dict[str, RowSource], int]:
    """Return the rows of every source for one fit: ``data=``'s values, else the model's own.

    Parameters
    ----------
    binding : RowBinding
    data : dict of {str: array_like} or None
        The ``data=`` of `pm_em.fit`.

    Returns
    -------
    sources : dict of {str: RowSource}
        One per source of ``binding``.
    n_rows : int

    Raises
    ------
    ValueError
        For a name that is no per-row container of the model, a shape or dtype that does not
        match the model's, sources of different lengths, or rows given for some containers
        but not for others.
    """
    named = [s for s in binding.template if not s.startswith("<")]
    given: dict[str, RowSource] = {}
    keys: dict[str, str] = {}
    for key, value in (data or {}).items():
        name = binding.aliases.get(key, key)
        if name not in binding.template:
            raise ValueError(
                f"data= names '{key}', which is not a per-row data container of the model. "
                f"The model's per-row containers and observed variables: {sorted(named)}."
            )
        if name in given:
            raise ValueError(f"data= gives '{name}' twice (as '{keys[name]}' and '{key}').")
        source = as_source(key, value)
        _check_given(binding, key, name, source)
        given[name], keys[name] = source, key
    lengths = {name: s.n_rows for name, s in given.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"The arrays in data= have different numbers of rows {lengths}: every per-row "
            "container needs one row per latent element."
        )
    n_rows = next(iter(lengths.values()), binding.n_template)
    sources = dict(given)
    for name, template in binding.template.items():
        if name in sources:
            continue
        if n_rows != binding.n_template:
            what = (
                f"'{name}'"
                if not name.startswith("<")
                else "a constant array with one entry per row (declare it with `pm.Data`)"
            )
            raise ValueError(
                f"data= gives {n_rows} rows, but not for {what}, which has "
                f"{binding.n_template} rows in the model. Pass every per-row container: "
                f"{sorted(named)}."
            )
        sources[name] = NumpySource(template)
    return sources, n_rows
