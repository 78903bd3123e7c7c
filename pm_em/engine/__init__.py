"""The EM algorithm on a compiled problem.

- `estep`: responsibilities and the observed-data log posterior (the full E-step), or the
  sufficient statistics only (the lean E-step of a closed-form M-step);
- `mstep`: the numeric M-step (L-BFGS on Q), the closed-form one (`pm_em.closed_form`), and the
  choice between them;
- `accel`: one EM iteration as a map, and SQUAREM;
- `init`: starting points; `monitor`: convergence; `profile`: the data each latent explains;
- `health`: start, degenerate and empty components, components against distinct values,
  priors unbounded on the boundary;
- `curvature`: the second-order check at the estimate; `symmetry`: identical components;
- `run`: one EM run, and finishing the best at a local maximum; `optima`: the distinct optima
  of the restarts;
- `compiled`: every function a model's fit needs, compiled once per model (and data shape);
  `values`: the values at the estimate that the results report.
"""

from pm_em.engine.compiled import CompiledProblem, compile_model
from pm_em.engine.monitor import ConvergenceMonitor
from pm_em.engine.run import EMRun, polish, run_em

__all__ = ["CompiledProblem", "ConvergenceMonitor", "EMRun", "compile_model", "polish", "run_em"]
