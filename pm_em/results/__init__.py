"""What comes after a fit: the DataTree, and EM beside the full posterior.

- `datatree`: `pm_em.fit`'s result, laid out like a PyMC result group for group;
- `marginal`: the model with its latents summed out, and NUTS on it (`sample_marginal`);
- `compare`: the EM estimate against a posterior sample, components aligned;
- `laplace`: the Laplace approximation at the mode; `criteria`: AIC, BIC, ICL;
- `plots`: convergence, the fitted mixture, EM on the posterior.
"""
