"""A hidden Markov model on the federal funds rate: two regimes of the mean, one variance.

Run with ``python examples/hmm_fedfunds.py`` (``./dev demo`` runs it as its section 6). The
model is statsmodels' ``MarkovRegression(fedfunds, k_regimes=2)``: the rate switches between
two means with a shared variance, the regime follows a two-state Markov chain, and the first
regime is drawn from the chain's stationary distribution. Flat priors (``Flat`` means,
``HalfFlat`` scale, ``Dirichlet(1)`` rows of P) make the MAP the maximum-likelihood estimate.

Reference numbers (TECH-NOTES §8): statsmodels' own EM stops at log likelihood −508.658, the
maximum-likelihood estimate is at −508.636, and with a free initial distribution (p0
estimated too) at −508.310. pm_em runs Baum–Welch with the emissions and P in closed form
where they have one (with a stationary start P is updated numerically: log π(P) couples it
to the start), then polishes to the exact mode.
"""

import argparse
from pathlib import Path

import numpy as np
import pymc as pm

import pm_em

DATA = Path(__file__).parent / "data" / "fedfunds.csv"
REFERENCE = {"stationary": -508.636, "free": -508.310}  # maximum-likelihood log likelihoods


def load() -> np.ndarray:
    return np.loadtxt(DATA, delimiter=",", skiprows=1)


def regime_model(rate: np.ndarray, start: str) -> pm.Model:
    coords = {
        "quarter": range(len(rate)),
        "regime": ["low", "high"],
        "regime_from": ["low", "high"],
    }
    with pm.Model(coords=coords) as model:
        P = pm.Dirichlet("P", a=np.ones((2, 2)), dims=("regime_from", "regime"))
        if start == "stationary":
            init = "stationary"
        else:
            init = pm.Categorical.dist(p=pm.Dirichlet("p0", a=np.ones(2), dims="regime"))
        mu = pm.Flat("mu", dims="regime")
        sigma = pm.HalfFlat("sigma")
        z = pm_em.MarkovChain("z", P=P, init_dist=init, dims="quarter")
        pm.Normal("rate", mu=mu[z], sigma=sigma, observed=rate, dims="quarter")
    return model


def main(argv=None, output: Path | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=output, help="folder for the plot")
    args = parser.parse_args(argv)
    rate = load()
    print(
        f"  {len(rate)} quarters of the federal funds rate, {rate.min():.2f}% to {rate.max():.2f}%"
    )
    fits = {}
    for start in ("stationary", "free"):
        idata = pm_em.fit(regime_model(rate, start), random_seed=1, progressbar=False)
        fits[start] = idata
        post, stats = idata.posterior, idata.em_stats
        ll = float(stats["final_log_likelihood"])
        trace = stats["log_posterior"].values
        assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[1:])), "EM decreased"
        note = "; statsmodels' EM stops at -508.658" if start == "stationary" else ""
        print(
            f"  {start:>10} start: log likelihood {ll:.3f} after {int(stats['n_iter'])} EM "
            f"iterations (maximum likelihood {REFERENCE[start]:.3f}{note})"
        )
        mu, sd = post["mu"].values.ravel(), float(post["sigma"].values.ravel()[0])
        stay = np.diag(post["P"].values[0, 0])
        print(f"             means {np.round(mu, 3)}, sd {sd:.3f}, P stays {np.round(stay, 4)}")
        assert abs(ll - REFERENCE[start]) < 5e-3, (start, ll)
    idata = fits["stationary"]
    path = idata.latent_posterior["z_viterbi"].values
    high = int(np.argmax(idata.posterior["mu"].values.ravel()))
    switches = np.flatnonzero(np.diff(path)) + 1
    print(
        f"  Viterbi path: {np.mean(path == high):.0%} of quarters in the high-rate regime, "
        f"{len(switches)} switches"
    )
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        fig = pm_em.plot_states(idata)
        fig.savefig(args.output / "fedfunds_states.png", dpi=110)
        print(f"  plot: {args.output / 'fedfunds_states.png'}")
    return fits


if __name__ == "__main__":
    main()
