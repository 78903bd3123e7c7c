"""Distributions pm_em adds to PyMC: `MarkovChain`, and the graphs of its marginals.

- `pm_em.distributions.markov_chain`: `MarkovChain` and `stationary_distribution`;
- `pm_em.distributions.forward`: a hidden Markov model's observed-data log likelihood as
  graphs: the forward algorithm as a scan (any derivative: the Laplace Hessian) and an Op
  whose gradient comes from forward–backward (NUTS);
- `pm_em.distributions.forward_backward`: forward–backward and Viterbi compiled with Numba
  (the E-step of chain latents);
- `pm_em.distributions.step`: the Gibbs step ``pm.sample`` uses for a chain (registered on
  import).
"""

# Imported for its side effect: registers MarkovChainGibbsMetropolis in pm.STEP_METHODS.
import pm_em.distributions.step
from pm_em.distributions.forward import forward_log_likelihood, hmm_log_likelihood
from pm_em.distributions.markov_chain import MarkovChain, MarkovChainRV, stationary_distribution

__all__ = [
    "MarkovChain",
    "MarkovChainRV",
    "forward_log_likelihood",
    "hmm_log_likelihood",
    "stationary_distribution",
]
