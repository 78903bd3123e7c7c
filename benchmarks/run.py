"""pm_em against scikit-learn's GaussianMixture: time per iteration, first fit, memory, accuracy.

Run with ``./dev bench`` (``./dev bench --help`` for options). Not part of the test run.

Every comparison uses the same data, the same starting point and maximum likelihood (flat
priors: ``Dirichlet(1)`` weights, ``Flat`` means, ``HalfFlat`` scales or a ``Flat``
covariance; scikit-learn with ``reg_covar=0``), and is measured in the same run, so that the
ratios mean something on a shared machine. The time per iteration is the difference of two
fits of different lengths (``tol=0``) divided by the difference in iterations, so that compile
time, start-up and result packaging cancel; each fit is repeated and the fastest kept.

Sections:

1. time per EM iteration at n = 1e4, 1e5, 1e6, k = 3, 1-D, and a 2-D full-covariance case,
   for each compile backend, against scikit-learn and a plain vectorized numpy EM;
2. the first fit of a new model: cold compile cache, warm cache, a new data set of the same
   model, a second fit of the same model (each in a fresh process where it matters);
3. peak memory of a fit at n = 1e6, relative to the responsibilities array (n · k · 8 bytes);
4. final log likelihood against scikit-learn's from the same start (both run to convergence);
5. SQUAREM: iterations and time to convergence, plain against accelerated EM;
6. scaling (only with ``--only scaling``: it writes ~1 GB of zarr stores and takes about
   20 minutes): chunked and distributed EM up to n = 1e8, see benchmarks/scaling.py.

``--hmm`` runs the hidden Markov model benchmark against hmmlearn instead (benchmarks/hmm.py;
the other arguments go to it).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np

K = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- data, models
def data_1d(n, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=n, p=[0.3, 0.5, 0.2])
    return rng.normal(np.array([-3.0, 0.0, 4.0])[z], np.array([1.0, 0.7, 1.5])[z])


def data_2d(n, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=n, p=[0.3, 0.5, 0.2])
    means = np.array([[-3.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    chols = np.array(
        [[[1.0, 0.0], [0.5, 0.8]], [[0.7, 0.0], [-0.3, 0.6]], [[1.2, 0.0], [0.0, 0.9]]]
    )
    noise = np.einsum("nij,nj->ni", chols[z], rng.normal(size=(n, 2)))
    return means[z] + noise


def start_1d(y):
    """Deterministic start: quantile means, a common scale, equal weights."""
    mu = np.quantile(y, (np.arange(K) + 0.5) / K)
    return {"w": np.full(K, 1.0 / K), "mu": mu, "sigma": np.full(K, y.std() / K)}


def start_2d(x):
    order = np.argsort(x[:, 0])
    mu = np.array([x[part].mean(axis=0) for part in np.array_split(order, K)])
    cov = np.repeat(np.cov(x.T)[None] / K, K, axis=0)
    return {"w": np.full(K, 1.0 / K), "mu": mu, "cov": cov}


def model_1d(y):
    import pymc as pm

    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Flat("mu", shape=K)
        sigma = pm.HalfFlat("sigma", shape=K)
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
    return model


def model_2d(x):
    import pymc as pm

    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Flat("mu", shape=(K, 2))
        # An initval inside the support: problem.py's separability check evaluates the
        # model's initial point (perturbed), where a Flat covariance of zeros has no density.
        cov = pm.Flat("cov", shape=(K, 2, 2), initval=np.repeat(4 * np.eye(2)[None], K, axis=0))
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.MvNormal("y", mu=mu[z], cov=cov[z], observed=x)
    return model


CASES = {
    "1d": (data_1d, start_1d, model_1d),
    "2d": (data_2d, start_2d, model_2d),
}


# --------------------------------------------------------------------------- the fitters
def sklearn_fit(x, start, max_iter, tol=0.0):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = x.reshape(len(x), -1)
    cov = start["sigma"][:, None, None] ** 2 if "sigma" in start else start["cov"]
    gm = GaussianMixture(
        K,
        covariance_type="full",
        tol=tol,
        max_iter=max_iter,
        reg_covar=0.0,
        init_params="random_from_data",
        weights_init=start["w"],
        means_init=start["mu"].reshape(K, -1),
        precisions_init=np.linalg.inv(cov),
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(x)
    return gm


def compile_options(mode):
    """``"CVM"`` -> all functions in CVM; ``"CVM+NUMBA"`` -> CVM, lean E-step in Numba."""
    mode, _, lean = mode.partition("+")
    return {"mode": mode, "lean_mode": lean} if lean else {"mode": mode}


def pm_em_fit(model, start, max_iter, mode=None, tol=0.0, polish=False, accelerate=False):
    import pm_em

    kwargs = {"compile_kwargs": compile_options(mode)} if mode else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm_em.EMConvergenceWarning)
        return pm_em.fit(
            model,
            initvals=start,
            max_iter=max_iter,
            tol=tol,
            polish=polish,
            accelerate=accelerate,
            progressbar=False,
            **kwargs,
        )


def pm_em_loop_seconds(model, start, max_iter, mode=None):
    """Seconds ``pm_em.fit`` spent in its EM runs (stage "EM runs" of `pm_em.timing`).

    The whole call's time is not the loop's: the check of the estimate after the loop (its
    curvature, the search for a saddle) costs more or less depending on where EM stopped, so
    a difference of whole fits of two lengths would not cancel it.
    """
    from pm_em import timing

    with timing.record() as timings:
        pm_em_fit(model, start, max_iter, mode)
    return timings.total("EM runs")


def numpy_em(y, start, max_iter):
    """Plain vectorized numpy EM for a 1-D Gaussian mixture, (n, k) layout."""
    w, mu, var = start["w"].copy(), start["mu"].copy(), start["sigma"].copy() ** 2
    for _ in range(max_iter):
        log_p = np.log(w) - 0.5 * (np.log(2 * np.pi * var) + (y[:, None] - mu) ** 2 / var)
        log_norm = np.logaddexp.reduce(log_p, axis=1)
        resp = np.exp(log_p - log_norm[:, None])
        nk = resp.sum(axis=0)
        w = nk / len(y)
        mu = resp.T @ y / nk
        var = (resp * (y[:, None] - mu) ** 2).sum(axis=0) / nk
    return w, mu, var


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def per_iteration(fitters, short, long, repeats):
    """Seconds per iteration for each fitter, from the fastest of ``repeats`` fits of each length.

    The fitters are measured in turn within each repeat so that they share the machine's load.
    A fitter that returns a float has measured its own loop (`pm_em_loop_seconds`): that time
    is used instead of the whole call's.
    """
    best = {name: {short: np.inf, long: np.inf} for name in fitters}
    for fit in fitters.values():
        fit(short)  # warm-up: imports, compile, first-touch of memory
    for _ in range(repeats):
        for name, fit in fitters.items():
            for m in (short, long):
                t, out = timed(lambda fit=fit, m=m: fit(m))
                t = out if isinstance(out, float) else t
                best[name][m] = min(best[name][m], t)
    return {name: (b[long] - b[short]) / (long - short) for name, b in best.items()}


# --------------------------------------------------------------------------- sections
def section_per_iteration(args, modes):
    rows = []
    cases = [("1d", n) for n in args.sizes] + [("2d", n) for n in args.sizes_2d]
    for case, n in cases:
        make_data, make_start, make_model = CASES[case]
        x = make_data(n)
        start = make_start(x)
        fitters = {"sklearn": lambda m, x=x, start=start: sklearn_fit(x, start, m)}
        if case == "1d":
            fitters["numpy"] = lambda m, x=x, start=start: numpy_em(x, start, m)
        for mode in modes:
            model = make_model(x)
            t_first, _ = timed(lambda model=model, mode=mode: pm_em_fit(model, start, 2, mode))
            fitters[f"pm_em[{mode}]"] = lambda m, model=model, mode=mode: pm_em_loop_seconds(
                model, start, m, mode
            )
            print(f"  {case} n={n:.0e} {mode}: first fit (compile) {t_first:.1f} s", flush=True)
        short, long = (2, 12) if n >= 10**6 else (5, 45)
        times = per_iteration(fitters, short, long, args.repeats)
        row = {"case": case, "n": n, **{k: v * 1e3 for k, v in times.items()}}
        rows.append(row)
        ms = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items())
        print(f"  {case} n={n:.0e}: {ms}", flush=True)
    return rows


_CHILD = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
sys.path.insert(0, {root!r} + "/benchmarks")
import run as bench
import pm_em
t_import = time.perf_counter() - t0
mode = {mode!r}
out = {{"import": t_import}}
y = bench.data_1d(10_000, seed=1)
model = bench.model_1d(y)
out["first_fit"], _ = bench.timed(lambda: bench.pm_em_fit(model, bench.start_1d(y), 50, mode))
out["second_fit_same_model"], _ = bench.timed(
    lambda: bench.pm_em_fit(model, bench.start_1d(y), 50, mode))
y2 = bench.data_1d(20_000, seed=2)
model2 = bench.model_1d(y2)
out["new_dataset_fit"], _ = bench.timed(
    lambda: bench.pm_em_fit(model2, bench.start_1d(y2), 50, mode))
print("RESULT" + json.dumps(out))
"""


def _child(mode, env):
    code = _CHILD.format(root=ROOT, mode=mode)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")


def section_first_fit(args, modes):
    rows = []
    for mode in modes:
        env = dict(os.environ)
        warm = _child(mode, env)
        row = {"mode": mode, "warm": warm}
        if not args.no_cold:
            with tempfile.TemporaryDirectory() as cache:
                flags = env.get("PYTENSOR_FLAGS", "")
                cold_env = {**env, "PYTENSOR_FLAGS": f"{flags},base_compiledir={cache}".strip(",")}
                row["cold"] = _child(mode, cold_env)
        rows.append(row)
        print(f"  {mode}: {json.dumps(row)}", flush=True)
    return rows


def section_memory(args, mode):
    n = max(args.sizes)
    y = data_1d(n)
    start = start_1d(y)
    resp_bytes = n * K * 8
    model = model_1d(y)
    pm_em_fit(model, start, 2, mode)  # compile outside the measurement
    out = {"n": n, "resp_MB": resp_bytes / 2**20}
    for name, fit in [
        ("pm_em", lambda: pm_em_fit(model, start, 10, mode)),
        ("sklearn", lambda: sklearn_fit(y, start, 10)),
    ]:
        tracemalloc.start()
        fit()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[f"{name}_peak_MB"] = peak / 2**20
        out[f"{name}_peak_over_resp"] = peak / resp_bytes
    print(f"  {json.dumps(out)}", flush=True)
    return out


def section_accuracy(args, mode):
    rows = []
    for n in args.sizes:
        y = data_1d(n)
        start = start_1d(y)
        gm = sklearn_fit(y, start, 5000, tol=1e-12)
        ll_sklearn = gm.score(y[:, None]) * n
        fit = pm_em_fit(model_1d(y), start, 5000, mode, tol=1e-13, polish=True)
        ll_pm_em = float(fit.em_stats.final_log_likelihood)
        row = {
            "n": n,
            "sklearn_ll": ll_sklearn,
            "pm_em_ll": ll_pm_em,
            "rel_diff": abs(ll_pm_em - ll_sklearn) / abs(ll_sklearn),
            "sklearn_iter": int(gm.n_iter_),
            "pm_em_iter": int(fit.em_stats.n_iter),
        }
        rows.append(row)
        print(f"  {json.dumps(row)}", flush=True)
    return rows


def section_squarem(args, mode):
    rows = []
    for n in args.sizes:
        y = data_1d(n)
        start = start_1d(y)
        row = {"n": n}
        for accelerate in (False, True):
            model = model_1d(y)
            pm_em_fit(model, start, 2, mode)
            t, fit = timed(
                lambda model=model, a=accelerate: pm_em_fit(
                    model, start, 10_000, mode, tol=1e-10, accelerate=a
                )
            )
            key = "squarem" if accelerate else "plain"
            row[f"{key}_iter"] = int(fit.em_stats.n_iter)
            row[f"{key}_s"] = t
            row[f"{key}_ll"] = float(fit.em_stats.final_log_likelihood)
        rows.append(row)
        print(f"  {json.dumps(row)}", flush=True)
    return rows


def print_tables(results, modes):
    print("\n=== time per EM iteration (ms) and ratios to scikit-learn ===")
    head = ["case", "n", "sklearn", "numpy"] + [f"pm_em[{m}]" for m in modes]
    head += [f"ratio[{m}]" for m in modes]
    print(" | ".join(f"{h:>14}" for h in head))
    for row in results.get("per_iteration", []):
        cells = [row["case"], f"{row['n']:.0e}", f"{row['sklearn']:.2f}"]
        cells.append(f"{row['numpy']:.2f}" if "numpy" in row else "-")
        cells += [f"{row[f'pm_em[{m}]']:.2f}" for m in modes]
        cells += [f"{row[f'pm_em[{m}]'] / row['sklearn']:.3f}" for m in modes]
        print(" | ".join(f"{c:>14}" for c in cells))
    if results.get("first_fit"):
        print("\n=== first fit, n = 1e4, 50 iterations (s) ===")
        for row in results["first_fit"]:
            for cache in ("warm", "cold"):
                if cache in row:
                    r = row[cache]
                    print(
                        f"{row['mode']:>6} {cache} cache: import {r['import']:.1f}, "
                        f"first fit {r['first_fit']:.2f}, new data set (n = 2e4) "
                        f"{r['new_dataset_fit']:.2f}, second fit {r['second_fit_same_model']:.2f}"
                    )
    mem = results.get("memory")
    if mem:
        print(f"\n=== peak memory of a 10-iteration fit, n = {mem['n']:.0e} ===")
        print(
            f"responsibilities {mem['resp_MB']:.1f} MB; pm_em {mem['pm_em_peak_MB']:.1f} MB "
            f"({mem['pm_em_peak_over_resp']:.2f}x); sklearn {mem['sklearn_peak_MB']:.1f} MB "
            f"({mem['sklearn_peak_over_resp']:.2f}x)"
        )
    if results.get("accuracy"):
        print("\n=== final log likelihood against scikit-learn, same start ===")
        for row in results["accuracy"]:
            print(
                f"n={row['n']:.0e}: pm_em {row['pm_em_ll']:.10f}, sklearn "
                f"{row['sklearn_ll']:.10f}, relative difference {row['rel_diff']:.1e}"
            )
    if results.get("squarem"):
        print("\n=== SQUAREM: to tol=1e-10 (relative change of the log posterior) ===")
        for row in results["squarem"]:
            print(
                f"n={row['n']:.0e}: plain {row['plain_iter']} iterations {row['plain_s']:.2f} s;"
                f" SQUAREM {row['squarem_iter']} iterations {row['squarem_s']:.2f} s "
                f"(iterations /{row['plain_iter'] / row['squarem_iter']:.1f}, "
                f"time /{row['plain_s'] / row['squarem_s']:.1f})"
            )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--hmm" in argv:  # the HMM benchmark is its own script, with its own options
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import hmm

        return hmm.main([a for a in argv if a != "--hmm"])
    if "--speed" in argv:  # issue 12's targets: its own script, with its own options
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import speed

        return speed.main([a for a in argv if a != "--speed"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    jax = importlib.util.find_spec("jax") is not None
    parser.add_argument(
        "--modes",
        default="CVM,NUMBA,CVM+NUMBA,CVM+auto" + (",CVM+JAX" if jax else ""),
        help="compile backends, comma-separated; A+B compiles the lean E-step with B "
        "(CVM+auto is pm_em's default) "
        "(CVM+JAX is included when jax is importable; it is not a dependency of pm_em)",
    )
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="n for the 1-D cases")
    parser.add_argument("--sizes-2d", default="1e5", help="n for the 2-D case ('' for none)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per length (fastest kept)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache first fit")
    parser.add_argument(
        "--only",
        default="per_iteration,first_fit,memory,accuracy,squarem,speed",
        help="sections to run, comma-separated (also: scaling)",
    )
    parser.add_argument(
        "--scaling-sizes", default="1e5,1e6,1e7,1e8", help="n for the scaling section"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    args.sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    args.sizes_2d = [int(float(s)) for s in args.sizes_2d.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    only = set(args.only.split(","))
    from pm_em.compiling import default_compile_kwargs

    # Sections 3-5 use pm_em's defaults (mode=None: no compile_kwargs).
    default_mode = None
    results = {"modes": modes, "defaults": default_compile_kwargs()}
    sections = [
        ("per_iteration", lambda: section_per_iteration(args, modes)),
        ("first_fit", lambda: section_first_fit(args, modes)),
        ("memory", lambda: section_memory(args, default_mode)),
        ("accuracy", lambda: section_accuracy(args, default_mode)),
        ("squarem", lambda: section_squarem(args, default_mode)),
    ]
    for name, run in sections:
        if name in only:
            print(f"--- {name}", flush=True)
            results[name] = run()
    if only - {"scaling", "speed"}:
        print_tables(results, modes)
    if "speed" in only:
        # Its own script (fresh processes for the cold cache); it prints its own table.
        print("--- speed (issue 12)", flush=True)
        script = os.path.join(ROOT, "benchmarks", "speed.py")
        subprocess.run([sys.executable, script], check=True)
    if "scaling" in only:
        # Its own script (fresh processes, zarr stores on disk); it prints its own table.
        print("--- scaling", flush=True)
        script = os.path.join(ROOT, "benchmarks", "scaling.py")
        subprocess.run([sys.executable, script, "--sizes", args.scaling_sizes], check=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
