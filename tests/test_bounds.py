"""The composed-share bounds over seeds, each stated only where the policy allows its premise
(rayexp/studies/composition/bounds.py), and the per-trial inputs the composition analysis logs for them
(:func:`.projection.trial_bounds`), on exact streams where the mixture's share is known."""

import numpy as np
import pytest

from rayexp.studies.composition import bounds, projection, resolution
from rayexp.studies.composition.battery_streams import sample
from rayexp.studies.composition.bounds import Interval


def _planted(s):
    return resolution.planted_values(s.p_pre, s.p_pre[..., s.act], s.P, s.train, s.test, s.resolution)


def test_refuted_counts_the_seeds_whose_least_rest_exceeds_the_premise():
    assert bounds.refuted([0.1, 0.3, np.nan, 0.2], [0.2, 0.2, 0.2, 0.2]) == (1, 3)  # 0.2 <= 0.2 allows it
    assert bounds.refuted(None, [0.2]) == (0, 0) and bounds.refuted([0.1], None) == (0, 0)
    # a rest exactly the reference, summed in another order: rounding does not refute it, a real excess does
    assert bounds.refuted([0.2 * (1 + 1e-13), 0.2 * (1 + 1e-6)], [0.2, 0.2]) == (1, 2)


def test_the_least_rest_mass_is_the_exact_minimum_over_every_share():
    # the rest's mass is convex and piecewise linear in t = a / (1 - a), so its minimum over t >= 0 is at 0 or
    # at a breakpoint t = -c / d of one entry: enumerate them all
    g = np.random.default_rng(7)
    for _ in range(20):
        r_pi, r_j = g.normal(size=(3, 4, 3)), g.normal(size=(3, 4, 3))
        d = r_pi - r_j
        ts = [0.0, *(t for t in (-r_pi / d).ravel() if t > 0)]
        brute = min(projection.mass(r_pi + t * d) for t in ts)
        assert projection.rest_mass_min(r_pi, r_j) == pytest.approx(brute, rel=1e-12)
    # a share near 1: the rest is tiny only there (t ~ 200), which a grid stopping at 0.99 never reaches
    r_j = g.normal(size=(2, 5, 3))
    r_pi = 0.995 * r_j + 0.005 * 1e-3 * g.normal(size=r_j.shape)
    assert projection.rest_mass_min(r_pi, r_j) < 2e-3 * projection.mass(r_j)
    assert projection.rest_mass_min(r_j, r_j) == pytest.approx(projection.mass(r_j))  # the policy is J itself


def test_the_residual_bound_is_taken_over_the_seeds_that_allow_its_premise():
    g = np.random.default_rng(0)
    r_j = g.normal(size=(5, 40, 6, 3))
    r_b = 0.3 * g.normal(size=(5, 40, 6, 3))
    share = np.array([0.1, 0.2, 0.15, 0.3, 0.25])
    r_pi = share[:, None, None, None] * r_j + (1 - share[:, None, None, None]) * r_b
    per_seq = lambda a, b: (a * b).sum((1, 2, 3)) / 40
    sq, dot, sq_j = per_seq(r_pi, r_pi), per_seq(r_pi, r_j), per_seq(r_j, r_j)
    sq_rest = per_seq(r_b, r_b)  # each seed's rest exactly as large as the premise allows
    iv, k, n = bounds.residual_bound(sq, dot, sq_j, sq_rest)
    each = [projection.share_max(r_pi[i], r_j[i], projection.norm(r_b[i])) for i in range(5)]
    assert (k, n) == (0, 5) and all(e >= a - 1e-9 for e, a in zip(each, share))
    assert iv.mean == pytest.approx(np.mean(each)) and iv.lo < iv.mean < iv.hi
    # a premise far smaller than the rest: the policy refutes it on that seed, which is left out and counted
    small = sq_rest.copy()
    small[3] = 1e-6 * sq_rest[3]
    iv2, k2, n2 = bounds.residual_bound(sq, dot, sq_j, small)
    assert (k2, n2) == (1, 5) and iv2.mean == pytest.approx(np.mean(np.delete(each, 3)))
    assert bounds.residual_bound(sq, dot, sq_j, None) == (Interval(), 0, 0)
    one = bounds.residual_bound(sq[:1], dot[:1], sq_j[:1], sq_rest[:1])
    assert np.isnan(one[0].mean) and one[1:] == (0, 1)  # one seed: no interval


def test_the_mass_bound_over_seeds_bounds_the_mean_of_the_seeds_shares():
    # each seed's policy its own mixture, rest leaving nothing: its mass is exactly a * m_J, and its bound
    # exactly its share. One seed composes often with a J the map nearly resolves (a learned J moves so)
    share, m_j = np.array([0.6, 0.1, 0.1, 0.1, 0.1]), np.array([0.1, 0.9, 0.9, 0.9, 0.9])
    iv = bounds.share_bound(share * m_j, np.zeros(5), m_j)
    assert iv.mean == pytest.approx(share.mean()) and iv.hi >= share.mean()
    # the ratio of the sums over seeds weights each by its m_J: 0.11, below the mean share 0.2
    assert (share * m_j).sum() / m_j.sum() < 0.6 * share.mean()
    capped = bounds.share_bound([0.5, 0.1], [0.0, 0.0], [0.25, 0.5])  # 2 and 0.2: a share is at most 1
    assert capped.mean == pytest.approx(0.6) and np.isnan(bounds.share_bound([0.5], [0.0], [0.25]).mean)


def test_a_refuted_premise_withholds_its_bound_and_says_on_how_many_seeds():
    most, drifting, soft = Interval(0.1, 0.05, 0.14), Interval(0.2, 0.15, 0.25), Interval(0.3, 0.2, 0.4)
    held = bounds.clauses(most, drifting, soft, {"sharp": (0, 5), "drift": (0, 5), "soft": (0, 5)}, visible=True)
    assert "at most 0.14 of the time" in held and "at most 0.25 for a rest that drifts" in held
    assert "Bayes probabilities (a soft composition) at most 0.40" in held
    gone = bounds.clauses(most, drifting, soft, {"sharp": (5, 5), "drift": (0, 5), "soft": (1, 5)}, visible=True)
    assert "0.14" not in gone and "on 5/5 seeds" in gone and "so that bound is not stated" in gone
    assert "joint-target policy at most 0.25 of the time for a rest that drifts" in gone
    # a premise some seed refutes states no bound over the others, in L2 as in mass
    assert "0.40" not in gone and "gives this policy on 1/5 seeds, so that bound is not stated" in gone
    # the sharp premise refuted: the drifting bound stands on its own even where the sharp one excludes nothing
    alone = bounds.clauses(Interval(1.0, 0.9, 1.0), drifting, soft, {"sharp": (5, 5), "drift": (0, 5)}, True)
    assert "on 5/5 seeds" in alone and "joint-target policy at most 0.25 of the time for a rest that drifts" in alone
    both = bounds.clauses(most, drifting, Interval(), {"sharp": (2, 5), "drift": (1, 5), "soft": (5, 5)}, True)
    assert "0.25" not in both and "1/5 seeds" in both and "gives this policy on 5/5 seeds" in both
    # a product (the joint target nearly a map of p_pre): acting as it is no composition, nothing is said. The
    # residual bound there is small only because J leaves so little that the rest must carry the policy's
    # residual (composition_cpu's product negative control: 0.17), which says nothing about composing
    assert bounds.clauses(most, drifting, soft, {}, visible=False) == ""
    assert bounds.clauses(Interval(1.0, 0.9, 1.0), Interval(), Interval(1.0, 1.0, 1.0), {}, True) == ""


def test_a_trials_bound_inputs_hold_its_share_where_the_premise_holds_and_refute_it_where_not():
    s = sample("interleave(mess3,z1r)", 300, 0)  # an exact model: the map resolves sharpened p_pre
    p = _planted(s)
    pol = resolution.planted_policies(s.p_pre[..., s.act], s.P)

    def trial(pi):
        return projection.trial_bounds(_residual(s, pi), p)

    soft_quarter = trial(0.25 * pol["soft"] + 0.75 * pol["sharp"])
    assert soft_quarter["share_max_soft"] >= 0.25 - 1e-9 and soft_quarter["share_max_soft"] < 0.3
    # the residual is a quarter of the soft one's (the map resolves the sharp rest): a sixteenth of its square
    assert soft_quarter["sq"] * len(s.test) == pytest.approx(projection.norm(p["r_soft"]) ** 2 / 16, rel=0.02)
    sharp = trial(pol["sharp"])
    assert sharp["rest_min"] <= float(np.mean(p["tv_sharp"])) + 1e-12  # a = 0: the rest is the policy itself
    # a quarter of the Bayes argmax over it: the policy leaves far more mass than the sharp rest, but at the
    # share 0.25 (on the grid) the rest is sharpened p_pre again, and the premise holds
    quarter = trial(pol["quarter"])
    assert bounds.refuted(quarter["rest_min"], np.mean(p["tv_sharp"])) == (0, 1)
    assert float(np.mean(p["tv_quarter"])) > 10 * float(np.mean(p["tv_sharp"])) + 0.05
    assert 0.25 - 1e-9 <= quarter["share_max_composed"] < 0.26  # never below the share, and near it
    # between a grid's points (0.255) and near 1 (0.995), on an exact model and a leaky one: the premise holds
    # (the rest is sharpened p_pre), and a grid over [0, 0.99] in steps of 0.01 read it as refuted
    for error in (0.0, 0.03):
        s2 = sample("interleave(mess3,z1r)", 300, 0, model_error=error)
        p2, pol2 = _planted(s2), resolution.planted_policies(s2.p_pre[..., s2.act], s2.P)
        for a in (0.255, 0.995):
            r = _residual(s2, a * pol2["composed"] + (1 - a) * pol2["sharp"])
            tv_sharp = np.mean(p2["tv_sharp"])
            assert bounds.refuted(projection.trial_bounds(r, p2)["rest_min"], tv_sharp) == (0, 1), (error, a)
            grid = min(projection.mass((r - b * p2["r_composed"]) / (1 - b)) for b in np.linspace(0, 0.99, 100))
            assert bounds.refuted(grid, tv_sharp) == (1, 1)
    # a policy far from any map (random per step, which p_pre does not read): no share of the joint target
    # leaves a rest as small as the sharp reweighting's, in mass or in L2
    g = np.random.default_rng(3)
    far = g.dirichlet(np.ones(len(s.act)) * 0.3, size=s.P.shape[:2])
    noisy = trial(far)
    assert noisy["rest_min"] > float(np.mean(p["tv_sharp"])) and np.isnan(noisy["share_max_composed"])


def _residual(s, pi):
    return projection.residual(s.p_pre, pi, s.train, s.test, s.resolution)
