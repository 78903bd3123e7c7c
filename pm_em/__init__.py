"""pm_em: Expectation-Maximization for PyMC models.

Declare a mixture, missing-data or hidden Markov model (`MarkovChain`) the ordinary PyMC way
and `fit` returns its posterior mode as an ArviZ `xarray.DataTree` that sits beside a NUTS
result.

Layout (data flow one way; docs/architecture.md has one line per module and how to extend):
`pm_em.distributions` adds `MarkovChain` to PyMC, with the numerics of its marginals
(forward–backward, Viterbi); `pm_em.reading` turns a model into an `EMProblem` (latent
readers in `reading.build.READERS`);
`pm_em.closed_form` recognizes closed-form M-steps (one module per family, registered in
`closed_form.registry.COMPONENTS`); `pm_em.engine` runs the E- and M-steps, restarts and the
polish; `pm_em.fitting` is `fit`; `pm_em.results` packages the DataTree and puts EM beside the
full posterior (`sample_marginal`, `compare`, `laplace`, `loo`, `information_criteria`, plots).

Compilation (`pm_em.compiling.default_compile_kwargs`, ``mode="auto"``): small problems run
PyTensor's rewritten graphs with Python-linked operations (no C compile at all, so a first
fit on a fresh machine takes about a second), larger ones C ("CVM"), whose on-disk cache is
keyed on the operations rather than the data; the per-iteration E-step of a closed-form
model (``lean_mode``) uses Numba from 250,000 latent elements on. Every compiled function is
kept by the structure of its graph, with the data as inputs (`pm_em.compile_cache`), so a
new model of the same structure compiles nothing. Pass e.g.
``compile_kwargs={"mode": "NUMBA", "lean_mode": "NUMBA"}`` to `fit` for another backend;
``./dev bench`` measures them, and ``pm_em.timing.record()`` shows where a fit's time goes.

Scaling out: ``fit(..., data=, chunk_size=, client=, store=)`` runs the E-step by chunks of
rows, in this process or on a Dask cluster (`pm_em.chunked_fit`; the ``dask`` extra).
"""

from pm_em.distributions import MarkovChain, stationary_distribution
from pm_em.engine.monitor import ConvergenceMonitor
from pm_em.exceptions import (
    BoundaryPriorWarning,
    ChunkError,
    ClusterConnectionError,
    DegenerateFitError,
    DegenerateRunWarning,
    EMConvergenceWarning,
    EmptyComponentWarning,
    EMWarning,
    LabelSwitchingWarning,
    LaplaceWarning,
    MissingMomentWarning,
    MultipleOptimaWarning,
    NoLatentWarning,
    NonMonotoneWarning,
)
from pm_em.fitting import fit
from pm_em.reading.build import build_problem
from pm_em.reading.problem import EMProblem
from pm_em.results.compare import align_components, compare
from pm_em.results.criteria import information_criteria
from pm_em.results.forest import plot_em_forest
from pm_em.results.laplace import laplace
from pm_em.results.loo import loo
from pm_em.results.marginal import marginalize, sample_marginal
from pm_em.results.mixture_plot import plot_mixture
from pm_em.results.plot_states import plot_states
from pm_em.results.plots import plot_convergence, plot_em_posterior

__version__ = "0.1.0"

__all__ = [
    # Errors and warnings
    "BoundaryPriorWarning",
    "ChunkError",
    "ClusterConnectionError",
    "DegenerateFitError",
    "DegenerateRunWarning",
    "EMConvergenceWarning",
    "EMWarning",
    "EmptyComponentWarning",
    "MissingMomentWarning",
    "MultipleOptimaWarning",
    "NoLatentWarning",
    "NonMonotoneWarning",
    # Low-level pieces
    "ConvergenceMonitor",
    "EMProblem",
    "build_problem",
    # Distributions
    "MarkovChain",
    "stationary_distribution",
    # Estimation
    "fit",
    # EM beside the full posterior
    "LabelSwitchingWarning",
    "LaplaceWarning",
    "align_components",
    "compare",
    "information_criteria",
    "laplace",
    "loo",
    "marginalize",
    "plot_convergence",
    "plot_em_forest",
    "plot_em_posterior",
    "plot_mixture",
    "plot_states",
    "sample_marginal",
]
