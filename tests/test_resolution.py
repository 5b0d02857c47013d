"""The resolution bar (rayexp/studies/composition/resolution.py): planted policies scored by the same
map of p_pre as a trial's policy, on exact streams where what each must leave is known."""

import numpy as np
import pytest

from rayexp.studies.composition import battery, classes, resolution
from rayexp.studies.composition.battery_cases import drift


def test_onehot_breaks_exact_ties_by_index_and_ignores_rounding_noise():
    scores = np.array([[0.2, 0.4, 0.4 - 1e-17], [0.5, 0.1, 0.4], [0.3, 0.3 + 1e-12, 0.4 - 1e-12]])
    assert resolution.onehot_argmax(scores).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]


def test_sharpen_keeps_order_and_beta_one_is_the_distribution():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(20, 4))
    assert np.allclose(resolution.sharpen(p, 1.0), p, atol=1e-9)
    sharp = resolution.sharpen(p, 10.0)
    assert np.allclose(sharp.sum(-1), 1) and (sharp.argmax(-1) == p.argmax(-1)).all()
    assert (sharp.max(-1) >= p.max(-1) - 1e-12).all()


def test_the_quarter_mixture_is_the_joint_policy_a_quarter_of_the_time():
    rng = np.random.default_rng(1)
    p_act, P = rng.dirichlet(np.ones(3), size=(10, 5)), rng.dirichlet(np.ones(3), size=(10, 5))
    pol = resolution.planted_policies(p_act, P)
    assert np.allclose(pol["quarter"], 0.25 * pol["composed"] + 0.75 * pol["sharp"])
    assert np.allclose(pol["soft_quarter"], 0.25 * P + 0.75 * pol["sharp"])  # the Bayes probabilities a quarter
    assert np.array_equal(pol["composed"].argmax(-1), P.argmax(-1)) and set(np.unique(pol["composed"])) == {0, 1}


@pytest.mark.parametrize("stream", ["interleave(mess3,z1r)", "interleave(z1r,z1r)"])
def test_on_an_exact_interleave_the_bar_separates_a_sharp_reweighting_from_a_quarter_composed_policy(stream):
    s = battery.sample(stream, 400, 0)
    v = resolution.planted_values(s.p_pre, s.p_pre[..., s.act], s.P, s.train, s.test, s.resolution)
    u = {k: float(np.mean(v[f"u_{k}"])) for k in resolution.PLANTED}
    assert u["sharp"] < 0.01  # an exact model: the map reproduces a sharpening of its own outputs
    assert 0.3 < u["quarter"] < 0.6 and u["composed"] > 0.7  # the silent factor is in no map of p_pre
    # halfway to the less visible quarter composition, sequence by sequence: the soft one spends less mass
    assert np.allclose(v["bar"], 0.5 * (v["u_sharp"] + np.minimum(v["u_quarter"], v["u_soft_quarter"])))
    assert u["soft_quarter"] < u["quarter"] and np.mean(v["bar"]) < (u["sharp"] + u["quarter"]) / 2
    # in probability mass a quarter mixture leaves a quarter of what the joint policy does, whatever
    # the reweighting it is mixed with: the share differs with the base, so the bar sits halfway down
    pol = resolution.planted_policies(s.p_pre[..., s.act], s.P)
    other = 0.25 * pol["composed"] + 0.75 * resolution.onehot_argmax(s.p_pre[..., s.act])
    mass = {}
    for name, pi in (("composed", pol["composed"]), ("quarter", pol["quarter"]), ("other", other)):
        fit = classes.reweighting_fit(s.p_pre, pi, s.train, s.test, s.resolution)
        mass[name] = float(classes.tv(pi[s.test], fit).mean())
    assert mass["quarter"] == pytest.approx(0.25 * mass["composed"], rel=0.05)
    assert mass["other"] == pytest.approx(mass["quarter"], rel=0.05)


def test_on_a_product_the_joint_policy_is_nearly_a_map_of_p_pre():
    # the joint target is read off the joint token's distribution: composition is not visible to the
    # fit, and the verdict does not apply the bar there
    s = battery.sample("product(mess3,mess3)", 400, 0)
    v = resolution.planted_values(s.p_pre, s.p_pre[..., s.act], s.P, s.train, s.test, s.resolution)
    assert float(np.mean(v["u_composed"])) < 0.2


def _mass(s, pi) -> np.ndarray:
    """(n_test,) what the map of p_pre leaves of ``pi`` per step, per held-out sequence."""
    fit = classes.reweighting_fit(s.p_pre, pi, s.train, s.test, s.resolution)
    return classes.tv(pi[s.test], fit).mean(-1)


def test_the_map_of_p_pre_is_linear_in_the_policy_it_fits():
    # what makes the share bound exact: a mixture's fit is the mixture of the fits (a leaky model, so
    # some held-out contexts have no training context within the radius and take their nearest one)
    s = battery.sample("interleave(mess3,z1r)", 400, 0, model_error=0.03)
    pol = resolution.planted_policies(s.p_pre[..., s.act], s.P)
    J, b = pol["composed"], resolution.onehot_argmax(s.p_pre[..., s.act])
    fit = lambda pi: classes.reweighting_fit(s.p_pre, pi, s.train, s.test, s.resolution)
    assert np.allclose(fit(0.3 * J + 0.7 * b), 0.3 * fit(J) + 0.7 * fit(b), atol=1e-12)
    radius = classes.reweighting_fit(s.p_pre, J, s.train, s.test, 1e-9)  # every context alone: nearest
    assert not np.allclose(radius, fit(J))  # (both paths differ, so both were exercised above)


def test_the_share_bound_is_the_ratio_of_the_summed_masses():
    t_pi, t_s, t_j = np.array([0.1, 0.3]), np.array([0.02, 0.0]), np.array([0.5, 0.7])
    v = resolution.composed_share_max(t_pi, t_s, t_j)
    assert np.mean(v) == pytest.approx((0.1 + 0.3 + 0.02) / (0.5 + 0.7 + 0.02), abs=1e-15)


@pytest.mark.parametrize(("stream", "model_error"), [("interleave(mess3,z1r)", 0.03), ("interleave(z1r,z1r)", 0.03)])
@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("rest", ["sharp", "argmax"])
def test_the_share_bound_never_excludes_a_planted_mixtures_share(stream, model_error, alpha, rest):
    # must say no: a policy that acts as the joint-target policy alpha of the time is never said to hold
    # less, with a leaky model (maps fitted at its resolution), over the bar's own reweighting or argmax
    s = battery.sample(stream, 400, 0, model_error=model_error)
    v = resolution.planted_values(s.p_pre, s.p_pre[..., s.act], s.P, s.train, s.test, s.resolution)
    pol = resolution.planted_policies(s.p_pre[..., s.act], s.P)
    b = pol["sharp"] if rest == "sharp" else resolution.onehot_argmax(s.p_pre[..., s.act])
    assert _mass(s, b).mean() <= v["tv_sharp"].mean() * 1.15  # (the premise, near enough: argmax is as sharp)
    pi = alpha * pol["composed"] + (1 - alpha) * b
    most = float(np.mean(resolution.composed_share_max(_mass(s, pi), v["tv_sharp"], v["tv_composed"])))
    assert most >= alpha


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25])
def test_with_an_exact_model_the_share_bound_is_tight(alpha):
    # the map reproduces any sharpening of an exact model's outputs: all it leaves is the composed part
    s = battery.sample("interleave(mess3,mess3)", 400, 0)
    v = resolution.planted_values(s.p_pre, s.p_pre[..., s.act], s.P, s.train, s.test, s.resolution)
    pol = resolution.planted_policies(s.p_pre[..., s.act], s.P)
    pi = alpha * pol["composed"] + (1 - alpha) * pol["sharp"]
    most = float(np.mean(resolution.composed_share_max(_mass(s, pi), v["tv_sharp"], v["tv_composed"])))
    assert alpha <= most < alpha + 0.01


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_against_a_drifting_rest_the_bound_with_the_nulls_mass_never_excludes_the_share(alpha):
    # PPO's rest is no planted map: a drift the map resolves far worse than sharpened p_pre. Against a
    # null that drifts alike (another draw of the same kind and size), the bound with the null's mass
    # as the rest's must still hold, and it is the looser of the two
    s = battery.sample("interleave(mess3,z1r)", 400, 0, model_error=0.03)
    v = resolution.planted_values(s.p_pre, s.p_pre[..., s.act], s.P, s.train, s.test, s.resolution)
    J = resolution.planted_policies(s.p_pre[..., s.act], s.P)["composed"]
    null, rest = (drift(s, np.random.default_rng(k), scale=16.0) for k in (1, 2))
    pi = alpha * J + (1 - alpha) * rest
    drifting = float(np.mean(resolution.composed_share_max(_mass(s, pi), _mass(s, null), v["tv_composed"])))
    sharp = float(np.mean(resolution.composed_share_max(_mass(s, pi), v["tv_sharp"], v["tv_composed"])))
    assert _mass(s, rest).mean() > 3 * v["tv_sharp"].mean()  # (the sharp bound's premise fails here)
    assert drifting >= alpha and drifting > sharp
