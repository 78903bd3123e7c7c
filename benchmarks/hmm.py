"""pm_em's Baum–Welch against hmmlearn: time per EM iteration and peak memory.

Run with ``./dev bench --hmm`` (or ``python benchmarks/hmm.py``; ``--help`` for options).
Not part of the test run.

A Gaussian HMM with K = 4 states and one variance per state, by maximum likelihood
(Dirichlet(1) rows of P and p0, Flat means, HalfFlat scales; hmmlearn's ``GaussianHMM`` with
``covariance_type="diag"`` and ``covars_prior=0``), from the same start, on the same data:

1. **time per EM iteration** on one sequence of T = 1e5 and on 100 sequences of 1e3: the
   difference of two fits of different lengths (``tol=0``; hmmlearn ``tol=-inf``) over the
   difference in iterations, fastest of ``--repeats``, so compile time and packaging cancel.
   hmmlearn is timed with both of its implementations (``"log"``, its default, and
   ``"scaling"``); the ratios are pm_em's time over each;
2. **peak memory** (tracemalloc) of a 10-iteration pm_em fit on the long sequence (compiled
   beforehand), over the size of the (T, K) smoothed marginals, T · K · 8 bytes.
"""

import argparse
import json
import time
import tracemalloc
import warnings

import numpy as np

K = 4
MEANS = np.array([-3.0, -1.0, 1.0, 3.0])
SDS = np.array([0.7, 0.5, 0.6, 0.8])


def data(n_seq, n_steps, seed=0):
    rng = np.random.default_rng(seed)
    trans = np.full((K, K), 0.03) + np.eye(K) * (1 - 0.03 * K)
    z = np.empty((n_seq, n_steps), dtype=int)
    z[:, 0] = rng.integers(0, K, n_seq)
    u = rng.uniform(size=(n_seq, n_steps))
    cum = np.cumsum(trans, axis=1)
    for t in range(1, n_steps):
        z[:, t] = (u[:, t, None] > cum[z[:, t - 1]]).sum(axis=1)
    return rng.normal(MEANS[z], SDS[z])


def start(y):
    trans = np.full((K, K), 0.1 / (K - 1)) + np.eye(K) * (0.9 - 0.1 / (K - 1))
    mu = np.quantile(y, (np.arange(K) + 0.5) / K)
    return {"P": trans, "p0": np.full(K, 1.0 / K), "mu": mu, "sigma": np.full(K, y.std() / K)}


def model(y):
    import pymc as pm

    import pm_em

    with pm.Model() as m:
        trans = pm.Dirichlet("P", a=np.ones((K, K)))
        p0 = pm.Dirichlet("p0", a=np.ones(K))
        mu = pm.Flat("mu", shape=K)
        sigma = pm.HalfFlat("sigma", shape=K)
        z = pm_em.MarkovChain("z", P=trans, init_dist=pm.Categorical.dist(p=p0), shape=y.shape)
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
    return m


def pm_em_fit(m, init, n_iter):
    import pm_em

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm_em.EMConvergenceWarning)
        return pm_em.fit(
            m, initvals=init, max_iter=n_iter, tol=0.0, polish=False, progressbar=False
        )


def hmmlearn_fit(y, init, n_iter, implementation):
    from hmmlearn import hmm

    h = hmm.GaussianHMM(
        K,
        covariance_type="diag",
        covars_prior=0.0,
        init_params="",
        n_iter=n_iter,
        tol=-np.inf,
        implementation=implementation,
    )
    h.startprob_, h.transmat_ = init["p0"], init["P"]
    h.means_, h.covars_ = init["mu"][:, None], (init["sigma"] ** 2)[:, None]
    h.fit(y.reshape(-1, 1), [y.shape[1]] * y.shape[0])
    return h


def per_iteration(fitters, short, long, repeats):
    best = {name: {short: np.inf, long: np.inf} for name in fitters}
    for fit in fitters.values():
        fit(short)  # warm-up: imports, compile, first touch of memory
    for _ in range(repeats):
        for name, fit in fitters.items():  # interleaved: they share the machine's load
            for n in (short, long):
                t0 = time.perf_counter()
                fit(n)
                best[name][n] = min(best[name][n], time.perf_counter() - t0)
    return {name: 1e3 * (b[long] - b[short]) / (long - short) for name, b in best.items()}


def section_time(args):
    rows = []
    for n_seq, n_steps in [(1, 100_000), (100, 1_000)]:
        y = data(n_seq, n_steps)
        init = start(y)
        m = model(y)
        fitters = {
            "pm_em": lambda n, m=m, init=init: pm_em_fit(m, init, n),
            "hmmlearn_log": lambda n, y=y, init=init: hmmlearn_fit(y, init, n, "log"),
            "hmmlearn_scaling": lambda n, y=y, init=init: hmmlearn_fit(y, init, n, "scaling"),
        }
        ms = per_iteration(fitters, args.short, args.long, args.repeats)
        row = {"sequences": n_seq, "T": n_steps, **{f"{k}_ms": v for k, v in ms.items()}}
        row["ratio_log"] = ms["pm_em"] / ms["hmmlearn_log"]
        row["ratio_scaling"] = ms["pm_em"] / ms["hmmlearn_scaling"]
        print(f"  {json.dumps(row)}", flush=True)
        rows.append(row)
    return rows


def section_memory(args):
    y = data(1, 100_000)
    init = start(y)
    m = model(y)
    pm_em_fit(m, init, 2)  # compile outside the measurement
    marginals = y.size * K * 8
    tracemalloc.start()
    pm_em_fit(m, init, 10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = {"T": y.size, "marginals_MB": marginals / 2**20, "peak_MB": peak / 2**20}
    out["peak_over_marginals"] = peak / marginals
    print(f"  {json.dumps(out)}", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fits per length (fastest kept)")
    parser.add_argument("--short", type=int, default=3, help="iterations of the short fit")
    parser.add_argument("--long", type=int, default=13, help="iterations of the long fit")
    parser.add_argument("--only", default="time,memory", help="sections, comma-separated")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    results = {}
    if "time" in only:
        print("--- time per EM iteration", flush=True)
        results["time"] = section_time(args)
    if "memory" in only:
        print("--- peak memory", flush=True)
        results["memory"] = section_memory(args)
    print("\n=== Gaussian HMM, K = 4: ms per EM iteration, pm_em / hmmlearn ===")
    for row in results.get("time", []):
        print(
            f"{row['sequences']:>3} x {row['T']:>6}: pm_em {row['pm_em_ms']:7.2f}  hmmlearn "
            f"log {row['hmmlearn_log_ms']:7.2f} (ratio {row['ratio_log']:.2f})  scaling "
            f"{row['hmmlearn_scaling_ms']:7.2f} (ratio {row['ratio_scaling']:.2f})"
        )
    mem = results.get("memory")
    if mem:
        print(
            f"peak memory of a 10-iteration fit, T = {mem['T']:.0e}: {mem['peak_MB']:.1f} MB, "
            f"{mem['peak_over_marginals']:.2f}x the (T, K) marginals ({mem['marginals_MB']:.1f} MB)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
