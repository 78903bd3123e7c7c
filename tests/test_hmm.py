"""Hidden Markov models through pm_em.fit: layout, padding, restarts, NUTS and Laplace beside EM."""

import numpy as np
import pymc as pm
import pytest

import pm_em
from pm_em.engine.compiled import compile_model
from pm_em.results.marginal import compile_to_x
from tests.oracles import make_rng
from tests.test_hmm_oracles import assert_monotone

TRANS = np.array([[0.95, 0.05], [0.1, 0.9]])


def _series(rng, shape, means=(-1.0, 1.5), sd=0.6):
    init = pm.Categorical.dist(p=[0.5, 0.5])
    z = pm.draw(pm_em.MarkovChain.dist(P=TRANS, init_dist=init, shape=shape), 1, rng)
    return z, rng.normal(np.asarray(means)[z], sd)


def _model(y, coords=None, dims=("time",)):
    with pm.Model(coords=coords) as model:
        trans = pm.Dirichlet("P", a=np.ones((2, 2)), dims=("state_from", "state"))
        p0 = pm.Dirichlet("p0", a=np.ones(2), dims="state")
        mu = pm.Normal("mu", 0, 10, dims="state")
        sigma = pm.HalfNormal("sigma", 5)
        z = pm_em.MarkovChain("z", P=trans, init_dist=pm.Categorical.dist(p=p0), dims=dims)
        pm.Normal("y", mu=mu[z], sigma=sigma, observed=y, dims=dims)
    return model


def _coords(*shape):
    names = ("sequence", "time")[-len(shape) :]
    coords = {"state": ["calm", "turbulent"], "state_from": ["calm", "turbulent"]}
    return {**coords, **{n: range(s) for n, s in zip(names, shape, strict=True)}}, names


@pytest.fixture(scope="module")
def batch_fit():
    rng = make_rng(50)
    z, y = _series(rng, (3, 80))
    coords, dims = _coords(3, 80)
    model = _model(y, coords, dims)
    return model, z, y, pm_em.fit(model, random_seed=1, progressbar=False)


def test_result_layout_for_a_batch_of_sequences(batch_fit):
    _, z, _, idata = batch_fit
    lat = idata.latent_posterior
    assert lat["z"].dims == ("sequence", "time", "z_support")
    assert lat["z_viterbi"].dims == ("sequence", "time")
    np.testing.assert_allclose(lat["z"].sum("z_support"), 1.0, rtol=0, atol=1e-12)
    stats = idata.em_stats
    assert stats["z_transitions"].dims == ("z_support_from", "z_support")
    # Expected transitions: one fewer than the time steps, per sequence.
    assert float(stats["z_transitions"].sum()) == pytest.approx(3 * 79, rel=1e-10)
    assert float(stats["z_count"].sum()) == pytest.approx(3 * 80, rel=1e-10)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "sequence", "time")
    assert float(idata.log_likelihood["y"].sum()) == pytest.approx(
        float(stats["final_log_likelihood"]), rel=1e-12
    )
    assert idata.posterior["P"].dims == ("chain", "draw", "state_from", "state")
    assert_monotone(idata)
    # Well separated states: the Viterbi path recovers the truth up to a relabelling.
    path = lat["z_viterbi"].values
    agree = max(np.mean(path == z), np.mean(path == 1 - z))
    assert agree > 0.95


def test_nan_padded_sequences_sum_separate_log_likelihoods():
    rng = make_rng(51)
    lengths = [40, 65, 90]
    _, full = _series(rng, (3, 90))
    padded = full.copy()
    for s, n in enumerate(lengths):
        padded[s, n:] = np.nan
    values = {
        "P": np.array([[0.8, 0.2], [0.3, 0.7]]),
        "p0": np.array([0.4, 0.6]),
        "mu": np.array([-0.8, 1.2]),
        "sigma": np.array(0.7),
    }
    coords, dims = _coords(3, 90)
    batch = compile_model(_model(padded, coords, dims), None)
    x = compile_to_x(batch.problem)(*(values[p.name] for p in batch.problem.params))
    e = batch.estep(x)
    separate = 0.0
    for s, n in enumerate(lengths):
        one = compile_model(_model(full[s, :n], _coords(n)[0]), None)
        x1 = compile_to_x(one.problem)(*(values[p.name] for p in one.problem.params))
        separate += one.estep(x1).log_likelihood
    # The same sums of log densities, grouped differently: round-off only.
    assert e.log_likelihood == pytest.approx(separate, abs=1e-9)
    steps = e.log_marginal[0]
    # A padded step contributes log 1 = 0 (to round-off: the normalizer is 1 - 1e-16).
    np.testing.assert_allclose(steps[0, 40:], 0.0, atol=1e-12)
    np.testing.assert_allclose(steps[1, 65:], 0.0, atol=1e-12)
    # The chain carries on through the padding: the marginals there are predictions,
    # p(z_t) = p(z_{n-1} | y) P^(t - n + 1).
    resp = e.resp[0]
    np.testing.assert_allclose(resp[0, 40], resp[0, 39] @ values["P"], rtol=0, atol=1e-12)
    idata = pm_em.fit(_model(padded, coords, dims), random_seed=2, progressbar=False)
    assert_monotone(idata)
    assert idata.latent_posterior["y_unobserved"].shape == (np.isnan(padded).sum(),)


def test_restarts_and_squarem_reach_the_same_mode(batch_fit):
    model, _, _, idata = batch_fit
    faster = pm_em.fit(model, random_seed=3, n_init=3, accelerate=True, progressbar=False)
    assert_monotone(faster)
    # Label switching: compare the log posterior and the sorted means.
    assert float(faster.em_stats["final_log_posterior"]) == pytest.approx(
        float(idata.em_stats["final_log_posterior"]), abs=1e-7
    )
    np.testing.assert_allclose(
        np.sort(faster.posterior["mu"].values.ravel()),
        np.sort(idata.posterior["mu"].values.ravel()),
        atol=1e-5,
    )


def test_marginal_model_density_is_the_em_log_posterior(batch_fit):
    model, _, _, idata = batch_fit
    marginal = pm_em.marginalize(model)
    assert [p.name for p in marginal.potentials] == ["z_marginal"]
    point = {}
    for rv in marginal.free_RVs:
        value = idata.posterior[rv.name].values[0, 0]
        transform = marginal.rvs_to_transforms.get(rv)
        point[marginal.rvs_to_values[rv].name] = (
            value if transform is None else transform.forward(value, *rv.owner.inputs).eval()
        )
    logp = marginal.compile_logp(jacobian=False)(point)
    # The forward-algorithm scan and the Numba forward–backward: round-off only.
    assert logp == pytest.approx(float(idata.em_stats["final_log_posterior"]), abs=1e-8)


def test_laplace_and_information_criteria(batch_fit):
    model, _, _, idata = batch_fit
    approx = pm_em.laplace(idata, model=model, random_seed=1, draws=200)
    se = approx["standard_error"]
    assert np.all(se["mu"].values > 0) and np.all(se["mu"].values < 0.2)
    ic = pm_em.information_criteria(idata, model=model)
    assert int(ic["n_obs"]) == 240 and int(ic["n_params"]) == 6  # P 2, p0 1, mu 2, sigma 1
    # ICL's entropy is over whole paths, which never exceeds the steps' entropies summed.
    r = idata.latent_posterior["z"].values
    marginal_entropy = -np.sum(np.where(r > 0, r * np.log(np.where(r > 0, r, 1)), 0))
    assert 0 <= ic["entropy"] <= marginal_entropy + 1e-9


def test_plot_states(batch_fit):
    _, _, _, idata = batch_fit
    fig = pm_em.plot_states(idata, sequence=2)
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match=r"`sequence` must lie in \[0, 3\)"):
        pm_em.plot_states(idata, sequence=3)
    with pytest.raises(ValueError, match="'w' is not a Markov chain latent"):
        pm_em.plot_states(idata, latent="w")


def test_plot_states_refuses_a_mixture():
    rng = make_rng(52)
    y = rng.normal(size=50)
    with pm.Model():
        z = pm.Categorical("z", p=[0.5, 0.5], shape=50)
        mu = pm.Normal("mu", 0, 5, shape=2)
        pm.Normal("y", mu=mu[z], sigma=1.0, observed=y)
        idata = pm_em.fit(random_seed=1, progressbar=False)
    with pytest.raises(ValueError, match="no Markov chain latent"):
        pm_em.plot_states(idata)


def test_compare_aligns_all_state_dims_together():
    import arviz as az

    em = az.from_dict(
        {
            "posterior": {
                "mu": np.array([[[2.0, -1.0]]]),
                "P": np.array([[[[0.9, 0.1], [0.2, 0.8]]]]),
            }
        },
        dims={"mu": ["state"], "P": ["state_from", "state"]},
    )
    em["latent_posterior"] = az.from_dict(
        {"lp": {"z": np.full((5, 2), 0.5), "z_viterbi": np.zeros(5, dtype=int)}},
        dims={"z": ["time", "z_support"], "z_viterbi": ["time"]},
        sample_dims=[],
    )["lp"]
    rng = np.random.default_rng(0)
    mu = rng.normal([-1.0, 2.0], 0.05, size=(2, 50, 2))
    trans = np.broadcast_to([[0.8, 0.2], [0.1, 0.9]], (2, 50, 2, 2))
    post = az.from_dict(
        {"posterior": {"mu": mu, "P": trans}}, dims={"mu": ["state"], "P": ["state_from", "state"]}
    )
    table = pm_em.compare(em, post)
    assert table.attrs["alignment"] == {"state": [1, 0], "state_from": [1, 0]}
    assert table.loc["P[0, 0]", "em"] == pytest.approx(0.8)  # EM's P[1, 1]


@pytest.mark.slow
def test_sample_marginal_agrees_with_em_at_t500():
    rng = make_rng(53)
    _, y = _series(rng, (500,), means=(-1.0, 1.0), sd=0.7)
    coords, dims = _coords(500)
    model = _model(y, coords, dims)
    em = pm_em.fit(model, random_seed=1, progressbar=False)
    order = np.argsort(em.posterior["mu"].values.ravel())
    initvals = {
        "mu": em.posterior["mu"].values.ravel()[order],
        "P": em.posterior["P"].values[0, 0][np.ix_(order, order)],
        "p0": np.full(2, 0.5),
        "sigma": float(em.posterior["sigma"].values[0, 0]),
    }
    post = pm_em.sample_marginal(
        model,
        draws=500,
        tune=500,
        chains=2,
        cores=1,
        random_seed=2,
        progressbar=False,
        initvals=initvals,
    )
    table = pm_em.compare(em, post, var_names=["mu", "sigma", "P"])
    # T = 500: the posterior is close to Gaussian, so the mode lies within about one sd of
    # the mean (the mode of the skewed P rows sits ~0.3 sd off); 1.5 sd leaves Monte Carlo
    # room with 1000 draws.
    assert np.all(np.abs(table["std_diff"]) < 1.5), table
    assert table["in_hdi"].all()
    # The posterior-mean smoothed marginals against EM's, aligned.
    r_em = em.latent_posterior["z"].values[:, order]
    assert np.mean(np.abs(post.latent_posterior["z"].values - r_em)) < 0.05


def test_the_broadcast_emissions_are_checked_against_the_model(batch_fit):
    from pm_em.engine.mstep import CheckedLeanEStep

    model, _, _, _ = batch_fit
    estep = compile_model(model).estep
    # The emissions come from the closed-form plan's broadcasts, verified once against the
    # model's own graph (a disagreement would warn and hand over to the model's graph).
    assert isinstance(estep, CheckedLeanEStep)
    assert estep.verified and not estep.failed
