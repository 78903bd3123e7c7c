"""Reading a PyMC model into an EM problem: every piece of PyMC graph knowledge lives here.

- `problem`: the `EMProblem` contract (latents, parameters, missing values, graphs of one flat
  parameter vector) that everything downstream reads;
- `build`: `build_problem`, the sequence of steps that fills it, and `READERS`, the registry of
  latent readers;
- `latents`: the reader of explicit latents (discrete free variables), `separable` its check
  that the latent's elements are independent, `enumerate` the enumeration helpers, `support`
  the finite supports (a registry keyed on the Op);
- `missing`: PyMC's imputed variables, integrated out; `observed`: the data and its checks.

A new kind of latent is one reader module returning `latents.LatentDraft`s, plus one entry in
`build.READERS`.
"""

from pm_em.reading.build import READERS, build_problem
from pm_em.reading.problem import EMProblem, Latent, MissingValues, Parameter

__all__ = ["READERS", "EMProblem", "Latent", "MissingValues", "Parameter", "build_problem"]
