"""What comes after a fit: the DataTree, and EM beside the full posterior.

- `datatree`: `pm_em.fit`'s result, laid out like a PyMC result group for group;
- `marginal`: the model with its latents summed out, and NUTS on it (`sample_marginal`);
- `compare`: the EM estimate against a posterior sample, components aligned;
- `laplace`: the Laplace approximation at the mode, with per-draw log likelihoods;
  `loo`: PSIS-LOO on its draws; `criteria`: AIC, BIC, ICL;
- `density`: the fitted mixture density at any points, from the model's graph;
- `plots`, `mixture_plot`, `forest`: convergence, the fitted mixture, EM on the posterior,
  EM beside the posterior as a forest.
"""
