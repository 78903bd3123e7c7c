"""pm_em demo: the classic EM examples, fit on generated data and checked against the truth.

Run with ``./dev demo`` (or ``python examples/demo.py``). Each section declares an ordinary
PyMC model and calls `pm_em.fit`; nothing else is needed.

1. Two Gaussians with known sigma and equal weights: only the means are estimated.
2. A full two-component mixture: weights, means and sigmas, with its log-likelihood curve.
3. A 1-D series with missing values: EM, not "fill NaN with the mean of means".
4. A bivariate normal with entries missing in one column: imputations with their sd.
5. EM beside NUTS on the same mixture (examples/em_vs_nuts.py): the comparison table and
   plots, written to the folder given by ``--output`` (default ``em_demo_output/``).
6. A hidden Markov model on the federal funds rate (examples/hmm_fedfunds.py): two regimes
   of the mean, against statsmodels' reference log likelihoods; the states plot goes to
   ``--output`` too.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor.tensor as pt

import pm_em


def _row(label, estimate, truth):
    est = np.atleast_1d(np.asarray(estimate, dtype=float)).round(3)
    tru = np.atleast_1d(np.asarray(truth, dtype=float)).round(3)
    print(f"  {label:<10} EM {est!s:<28} truth {tru!s}")


def _header(title):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def two_gaussians_known_sigma(rng):
    _header("1. Two Gaussians, sigma = 2 known, equal weights")
    truth = np.array([1.0, 9.0])
    x = np.concatenate([rng.normal(truth[0], 2, 1000), rng.normal(truth[1], 2, 1000)])
    with pm.Model(coords={"component": ["a", "b"]}) as model:
        mu = pm.Normal("mu", 0, 10, dims="component")
        z = pm.Categorical("z", p=[0.5, 0.5], shape=len(x))
        pm.Normal("y", mu=mu[z], sigma=2.0, observed=x)
    start = time.perf_counter()
    idata = pm_em.fit(model, initvals={"mu": np.array([0.0, 1.0])}, progressbar=False)
    elapsed = time.perf_counter() - start
    _row("mu", idata.posterior["mu"].values.ravel(), truth)
    n_iter = int(idata.em_stats["n_iter"])
    print(f"  {n_iter} EM iterations from mu = (0, 1); {elapsed:.2f} s including compilation")


def full_mixture(rng):
    _header("2. Full two-component mixture (weights, means, sigmas)")
    w, mu, sigma = np.array([0.3, 0.7]), np.array([-2.0, 3.0]), np.array([1.0, 1.5])
    z_true = rng.choice(2, size=2000, p=w)
    x = rng.normal(mu[z_true], sigma[z_true])
    with pm.Model(coords={"component": ["a", "b"], "obs": range(len(x))}) as model:
        weights = pm.Dirichlet("w", a=np.ones(2), dims="component")
        means = pm.Normal("mu", 0, 10, dims="component")
        sds = pm.HalfNormal("sigma", 5, dims="component")
        z = pm.Categorical("z", p=weights, dims="obs")
        pm.Normal("y", mu=means[z], sigma=sds[z], observed=x, dims="obs")
    idata = pm_em.fit(model, random_seed=1, progressbar=False)
    # Components come back in the order EM found them: sort by mean to compare.
    order = np.argsort(idata.posterior["mu"].values.ravel())
    for name, truth in (("w", w), ("mu", mu), ("sigma", sigma)):
        _row(name, idata.posterior[name].values.ravel()[order], truth)
    curve = idata.em_stats["log_likelihood"].values
    n_iter = int(idata.em_stats["n_iter"])
    print(f"  {n_iter} EM iterations, no start values; log likelihood per iteration:")
    shown = np.unique(np.r_[0, np.geomspace(1, len(curve) - 1, 6).astype(int)])
    print("   " + "  ".join(f"[{i}] {curve[i]:.2f}" for i in shown))
    assert np.all(np.diff(curve) > -1e-8 * np.abs(curve[1:])), "EM decreased the likelihood"
    agree = (idata.latent_posterior["z"].values.argmax(-1) == np.argsort(order)[z_true]).mean()
    print(f"  hard assignments agree with the true labels for {agree:.1%} of the points")


def series_with_missing_values():
    _header("3. A series with missing values")
    x = np.array([2, np.nan, 6, 8, np.nan, 10, 12, 14, np.nan, 18.0])
    print(f"  data {x}")
    with pm.Model(coords={"t": range(len(x))}):
        mu = pm.Flat("mu")
        sigma = pm.HalfFlat("sigma")
        pm.Normal("y", mu, sigma, observed=x, dims="t")
        idata = pm_em.fit(progressbar=False)
    obs = x[~np.isnan(x)]
    _row("mu", idata.posterior["mu"].item(), obs.mean())
    _row("sigma", idata.posterior["sigma"].item(), obs.std())
    lat = idata.latent_posterior
    for m, s in zip(lat["y_unobserved"].values, lat["y_unobserved_sd"].values, strict=True):
        print(f"  imputed    {m:.3f} ± {s:.3f}")
    print("  (the truth column is the MLE in closed form: the observed mean and sd)")


def bivariate_with_missing_values(rng):
    _header("4. Bivariate normal, 30% of the second column missing")
    cov = np.array([[2.0, 1.2], [1.2, 1.5]])
    data = rng.multivariate_normal([1.0, -2.0], cov, size=400)
    missing = rng.random(400) < 0.3
    data[missing, 1] = np.nan
    with pm.Model():
        mu = pm.Flat("mu", shape=2)
        sd = pm.HalfFlat("sd", shape=2)
        rho = pm.Uniform("rho", -1, 1)
        off = rho * sd[0] * sd[1]
        cov_rv = pt.stack([pt.stack([sd[0] ** 2, off]), pt.stack([off, sd[1] ** 2])])
        pm.MvNormal("y", mu, cov=cov_rv, observed=data)
        idata = pm_em.fit(progressbar=False)
    _row("mu", idata.posterior["mu"].values.ravel(), [1.0, -2.0])
    _row("sd", idata.posterior["sd"].values.ravel(), np.sqrt(np.diag(cov)))
    _row("rho", idata.posterior["rho"].item(), cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    lat = idata.latent_posterior
    print("  first imputations (conditional mean ± sd given the first column):")
    for i, (m, s) in enumerate(zip(lat["y_unobserved"].values, lat["y_unobserved_sd"].values)):
        if i == 4:
            break
        print(f"    y1 = {data[missing][i, 0]:6.3f}  ->  y2 ≈ {m:.3f} ± {s:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026, help="seed of the generated data")
    parser.add_argument(
        "--output", type=Path, default=Path("em_demo_output"), help="folder for the plots"
    )
    parser.add_argument("--no-nuts", action="store_true", help="skip the NUTS comparison")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.exceptions.ImputationWarning)
        two_gaussians_known_sigma(rng)
        full_mixture(rng)
        series_with_missing_values()
        bivariate_with_missing_values(rng)
    if not args.no_nuts:
        _header("5. EM beside NUTS on the same model")
        sys.path.insert(0, str(Path(__file__).parent))
        import em_vs_nuts  # the example script next to this one

        em_vs_nuts.main(args.output)
    _header("6. Hidden Markov model: regimes of the federal funds rate")
    sys.path.insert(0, str(Path(__file__).parent))
    import hmm_fedfunds  # the example script next to this one

    hmm_fedfunds.main([], output=args.output)


if __name__ == "__main__":
    main()
