"""Chunked and distributed EM up to n = 1e8: time per iteration, client memory, scaling in n.

Run with ``./dev bench --only scaling`` (or ``python benchmarks/scaling.py --help``). Not part
of the test run.

A 1-D mixture of K = 3 normals (flat priors, maximum likelihood), declared on 1000 rows of
``pm.Data`` and fitted to n = 1e5, 1e6, 1e7, 1e8 rows given in ``data=`` as a zarr array
written by blocks to a temporary directory (the 1e8 store is ~740 MB on disk; the script
removes it at the end). For each n, in a fresh process each:

- ``in-process``: ``chunk_size`` = the zarr chunks, read from disk at every iteration;
- ``cluster``: a `LocalCluster` of 2 single-threaded worker processes (the chunks read once
  and kept on the workers);
- ``scikit-learn``: ``GaussianMixture`` on the same rows as a numpy array, at the largest n
  of the list that fits under ``--sklearn-cap-gb`` of address space (tried from the largest
  down, in a child process limited with ``RLIMIT_AS``).

Time per iteration is the median interval between the ends of consecutive E-steps of EM's
loop (each interval is one M-step and one E-step over all chunks), in a fit of
``ITERATIONS`` iterations (``tol=0``, no polish) after a first fit that compiles; scikit-
learn's is the difference of two fits of different lengths over the difference in
iterations. The peak RSS is the fitting process's own (``ru_maxrss``: the client, with the
LocalCluster's scheduler; not the workers). The scaling exponent is the least-squares slope
of log(time per iteration) on log(n).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

K = 3
HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS, MEANS, SDS = [0.3, 0.5, 0.2], [-3.0, 0.0, 4.0], [1.0, 0.7, 1.5]
START = {"mu": np.array([-2.5, 0.5, 3.5]), "sigma": np.ones(K), "w": np.full(K, 1.0 / K)}
ITERATIONS = 8  # EM iterations of the timed fit
SHORT, LONG = 2, 8  # iterations of scikit-learn's two fits whose difference is timed


def rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=n, p=WEIGHTS)
    return rng.normal(np.array(MEANS)[z], np.array(SDS)[z])


def chunk_rows(n: int) -> int:
    """Rows per chunk: a tenth of the data, at most 1e6 (100 chunks at n = 1e8)."""
    return int(min(max(n // 10, 1), 1_000_000))


def write_zarr(path: str, n: int) -> None:
    """Write n rows by blocks of at most 1e7 (never the whole array in memory)."""
    import zarr

    chunk = chunk_rows(n)
    z = zarr.create_array(store=path, shape=(n,), chunks=(chunk,), dtype="f8", overwrite=True)
    block = 10_000_000
    for i, start in enumerate(range(0, n, block)):
        stop = min(n, start + block)
        z[start:stop] = rows(stop - start, seed=1000 + i)


def model_template():
    import pymc as pm

    with pm.Model() as model:
        y_data = pm.Data("y_data", rows(1000, seed=1))
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Flat("mu", shape=K)
        sigma = pm.HalfFlat("sigma", shape=K)
        z = pm.Categorical("z", p=w, shape=y_data.shape[0])
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y_data)
    return model


# --------------------------------------------------------------------------- child runs
def child_pm_em(path: str, mode: str) -> dict:
    import warnings

    import zarr

    import pm_em
    from pm_em.engine.chunked_steps import ChunkedEngine

    warnings.simplefilter("ignore")  # EMConvergenceWarning: tol=0 runs to max_iter
    ends = []
    estep = ChunkedEngine.estep

    def timed_estep(self, x):  # record when each E-step over all chunks ends
        out = estep(self, x)
        ends.append(time.perf_counter())
        return out

    ChunkedEngine.estep = timed_estep
    model = model_template()
    data = {"y_data": zarr.open_array(path, mode="r")}
    kwargs = {"progressbar": False, "tol": 0.0, "polish": False, "initvals": START}
    client = cluster = None
    if mode == "cluster":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
        kwargs["client"] = client
    pm_em.fit(model, data=data, max_iter=1, **kwargs)  # compiles; workers build the kernels
    ends.clear()
    start = time.perf_counter()
    fit = pm_em.fit(model, data=data, max_iter=ITERATIONS, **kwargs)
    fit_seconds = time.perf_counter() - start
    assert int(fit.em_stats.n_iter) == ITERATIONS and len(ends) == ITERATIONS + 1
    out = {
        "per_iteration": float(np.median(np.diff(ends))),
        "fit_seconds": fit_seconds,
        "mu": np.sort(fit.posterior["mu"].values.ravel()).tolist(),
        "log_likelihood": float(fit.em_stats["final_log_likelihood"]),
    }
    if client is not None:
        import psutil

        rss = client.run(lambda: psutil.Process().memory_info().rss)
        out["worker_rss_mb"] = max(rss.values()) / 2**20
        client.close()
        cluster.close()
    return out


def child_sklearn(path: str, cap_gb: float) -> dict:
    import zarr
    from sklearn.mixture import GaussianMixture

    limit = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    x = np.asarray(zarr.open_array(path, mode="r")[:])[:, None]
    times = {}
    for n_iter in (SHORT, LONG, SHORT, LONG):
        gm = GaussianMixture(
            K,
            covariance_type="full",
            tol=0.0,
            reg_covar=0.0,
            max_iter=n_iter,
            weights_init=START["w"],
            means_init=START["mu"][:, None],
            precisions_init=(1.0 / START["sigma"] ** 2)[:, None, None],
        )
        start = time.perf_counter()
        gm.fit(x)
        times[n_iter] = min(times.get(n_iter, np.inf), time.perf_counter() - start)
    return {
        "per_iteration": (times[LONG] - times[SHORT]) / (LONG - SHORT),
        "mu": np.sort(gm.means_.ravel()).tolist(),
    }


def child(argv) -> None:
    what, path = argv[0], argv[1]
    if what == "sklearn":
        try:
            result = child_sklearn(path, float(argv[2]))
        except MemoryError:
            result = {"memory_error": True}
    else:
        result = child_pm_em(path, what)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_child(*args) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *map(str, args)],
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    if args[0] == "sklearn":  # killed for memory, not a MemoryError
        return {"memory_error": True}
    raise RuntimeError(f"child {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------- the run
def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def measure(sizes, workdir, modes, cap_gb) -> dict:
    results = {"sizes": sizes, "load_before": load(), "runs": {}}
    paths = {}
    for n in sizes:
        path = os.path.join(workdir, f"rows_{n}.zarr")
        start = time.perf_counter()
        write_zarr(path, n)
        paths[n] = path
        print(f"n={n:.0e}: zarr written in {time.perf_counter() - start:.1f} s", flush=True)
        for mode in modes:
            result = run_child(mode, path)
            result["load"] = load()
            results["runs"][f"{mode} {n}"] = result
            print(f"  {mode}: {result}", flush=True)
    for n in sorted(sizes, reverse=True):  # scikit-learn at the largest n that fits
        result = run_child("sklearn", paths[n], cap_gb)
        print(f"  scikit-learn n={n:.0e}: {result}", flush=True)
        if not result.get("memory_error"):
            results["sklearn"] = {"n": n, **result}
            break
        results.setdefault("sklearn_failed", []).append(n)
    results["load_after"] = load()
    return results


def exponent(sizes, times) -> float:
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


def print_table(results, modes) -> None:
    sizes, runs = results["sizes"], results["runs"]
    print("\nTime per EM iteration (s), peak RSS of the fitting process (MB)")
    header = "| n | " + " | ".join(f"{m} s/iter | {m} RSS MB" for m in modes) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(modes)))
    for n in sizes:
        cells = []
        for m in modes:
            r = runs[f"{m} {n}"]
            cells += [f"{r['per_iteration']:.3f}", f"{r['peak_rss_mb']:.0f}"]
        print(f"| {n:.0e} | " + " | ".join(cells) + " |")
    for m in modes if len(sizes) > 1 else ():
        times = [runs[f"{m} {n}"]["per_iteration"] for n in sizes]
        last = np.log(times[-1] / times[-2]) / np.log(sizes[-1] / sizes[-2])
        print(
            f"{m}: scaling exponent of time per iteration in n: {exponent(sizes, times):.2f} "
            f"(least squares over all n), {last:.2f} (between the two largest n)"
        )
    sk = results.get("sklearn")
    if sk:
        ours = {m: runs[f"{m} {sk['n']}"]["per_iteration"] for m in modes}
        ratios = ", ".join(f"{m} {ours[m] / sk['per_iteration']:.2f}x" for m in modes)
        print(
            f"scikit-learn at n={sk['n']:.0e}: {sk['per_iteration']:.3f} s/iter, peak RSS "
            f"{sk['peak_rss_mb']:.0f} MB; pm_em / scikit-learn: {ratios}"
        )
        gap = max(
            float(np.max(np.abs(np.subtract(runs[f"{m} {sk['n']}"]["mu"], sk["mu"]))))
            for m in modes
        )
        print(
            f"means after {ITERATIONS} iterations from the same start: max |pm_em - "
            f"scikit-learn| = {gap:.1e}"
        )
    if results.get("sklearn_failed"):
        print(f"scikit-learn did not fit in memory at n = {results['sklearn_failed']}")
    print(
        f"load average (1/5/15 min) before {results['load_before']}, after {results['load_after']}"
    )


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7,1e8")
    parser.add_argument("--modes", default="in-process,cluster")
    parser.add_argument("--workdir", default=None, help="where the zarr stores go (removed)")
    parser.add_argument("--sklearn-cap-gb", type=float, default=8.0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    base = args.workdir or ("/work/scratch" if os.path.isdir("/work/scratch") else None)
    workdir = tempfile.mkdtemp(prefix="pm_em_scaling_", dir=base)
    try:
        results = measure(sizes, workdir, modes, args.sklearn_cap_gb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, modes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
