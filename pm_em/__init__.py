"""pm_em: Expectation-Maximization for PyMC models.

Declare a mixture or missing-data model the ordinary PyMC way and `fit` returns its posterior
mode as an ArviZ `xarray.DataTree` that sits beside a NUTS result.

Compilation: pm_em compiles its graphs with PyTensor's ``"CVM"`` (C) mode by default, whose
on-disk cache is keyed on the operations rather than the data, so a new data set of the same
model costs about a second instead of a fresh Numba compile. The per-iteration E-step of a
closed-form model (``lean_mode``) uses Numba from 250,000 latent elements on, where it runs
faster, and CVM below (`pm_em.fit.default_compile_kwargs`). Pass e.g.
``compile_kwargs={"mode": "NUMBA", "lean_mode": "NUMBA"}`` to `fit` for another backend;
``./dev bench`` measures them.
"""

from pm_em.compare import align_components, compare
from pm_em.criteria import information_criteria
from pm_em.exceptions import (
    DegenerateFitError,
    DegenerateRunWarning,
    EMConvergenceWarning,
    EmptyComponentWarning,
    EMWarning,
    LabelSwitchingWarning,
    LaplaceWarning,
    MissingMomentWarning,
    NonMonotoneWarning,
)
from pm_em.fit import ConvergenceMonitor, fit
from pm_em.laplace import laplace
from pm_em.marginal import marginalize, sample_marginal
from pm_em.plots import plot_convergence, plot_em_posterior, plot_mixture
from pm_em.problem import EMProblem, build_problem

__version__ = "0.1.0"

__all__ = [
    # Errors and warnings
    "DegenerateFitError",
    "DegenerateRunWarning",
    "EMConvergenceWarning",
    "EMWarning",
    "EmptyComponentWarning",
    "MissingMomentWarning",
    "NonMonotoneWarning",
    # Low-level pieces
    "ConvergenceMonitor",
    "EMProblem",
    "build_problem",
    # Estimation
    "fit",
    # EM beside the full posterior
    "LabelSwitchingWarning",
    "LaplaceWarning",
    "align_components",
    "compare",
    "information_criteria",
    "laplace",
    "marginalize",
    "plot_convergence",
    "plot_em_posterior",
    "plot_mixture",
    "sample_marginal",
]
