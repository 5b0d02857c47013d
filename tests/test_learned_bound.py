"""The composed-share bound against a pair's learned composition: which trials it pairs, its value, and
the planted case it exists for (a soft composition the Bayes bound counts too little of)."""

import dataclasses

import numpy as np
import pytest
from seed_draws import seeds

from rayexp.studies.composition import projection, resolution
from rayexp.studies.composition.battery import map_mass
from rayexp.studies.composition.battery_cases import CASES, sharpen
from rayexp.studies.composition.battery_streams import sample
from rayexp.studies.composition.bounds import residual_bound
from rayexp.studies.composition.direction import sample_residual
from rayexp.studies.composition.learned_bound import inner_products, learned_bound, rest_min, same_fit
from rayexp.studies.composition.verdict import COMPOSITION, decide


def test_trials_pair_only_on_one_model_one_sample_and_room_for_the_actions():
    one = (2000, 0)  # the composition analysis's (n_seq, seed)
    mine = ("model-a", one, 0.031, 6)  # (model key, sample, resolution the fit used, actions)
    assert same_fit(("model-a", one, 0.031, 3), mine)  # 3 joint targets placed on 6 next tokens
    assert not same_fit(("model-b", one, 0.031, 3), mine)  # another pretrained model
    assert not same_fit(("model-a", one, 0.029, 3), mine)  # another sample (or model) moves the resolution
    assert not same_fit(("model-a", one, 0.031, 7), mine)  # merging actions would shrink what the map leaves
    assert not same_fit((None, one, 0.031, 3), (None, one, 0.031, 6))  # unknown model: no claim
    assert not same_fit(("model-a", one, np.nan, 3), ("model-a", one, np.nan, 6))
    # a near-exact model's resolution sits at its floor (0.005) on any sample: the sample itself must match
    assert not same_fit(("model-a", (2000, 1), 0.005, 3), ("model-a", one, 0.005, 6))
    assert not same_fit(("model-a", (1000, 0), 0.005, 3), ("model-a", one, 0.005, 6))


def _reweighting():
    return decide(
        seeds(0.1), seeds(0.45, seed=1), seeds(np.nan, seed=2), seeds(0.6, seed=10), seeds(0.6, seed=11),
        below_bar=seeds(0.1, seed=3), u_composed=seeds(0.9, seed=4),
    )  # fmt: skip


def test_the_bound_against_the_learned_policy_is_stated_and_decides_nothing():
    v = _reweighting()
    m_pi, m_sharp, m_null, m_learned = (
        seeds(0.06, 0.01),
        seeds(0.01, 0.002, seed=1),
        seeds(0.24, seed=2),
        seeds(0.56, seed=3),
    )
    out = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "positive_control")
    # each seed's bound, (m_pi + m_rest) / (m_J + m_rest) capped at 1, and their mean over seeds
    each = np.minimum(1, (m_pi + m_sharp) / (m_learned + m_sharp))
    assert out.code == v.code and out.share_max_learned.mean == pytest.approx(each.mean())
    assert out.share_max_learned_drift.mean == pytest.approx(
        np.mean(np.minimum(1, (m_pi + m_null) / (m_learned + m_null)))
    )
    assert out.reason.startswith(v.reason)
    assert f"positive_control's learned composition at most {out.share_max_learned.hi:.2f}" in out.reason
    # without a paired learned policy on enough seeds: the verdict as it was
    assert learned_bound(v, m_pi, m_sharp, m_null, [np.nan] * 4 + [0.5], "positive_control") == v
    # a composition verdict keeps its reason (its share is its claim), with the numbers on the record
    comp = learned_bound(dataclasses.replace(v, code=COMPOSITION), m_pi, m_sharp, m_null, m_learned, "p")
    assert comp.reason == v.reason and np.isfinite(comp.share_max_learned.mean)
    # where the policy refutes the sharp rest's premise against the Bayes J, only the drifting bound is stated
    refuting = learned_bound(dataclasses.replace(v, refuted_sharp=5.0), m_pi, m_sharp, m_null, m_learned, "pc")
    assert f"at most {refuting.share_max_learned.hi:.2f}" not in refuting.reason
    assert f"pc's learned composition at most {refuting.share_max_learned_drift.hi:.2f} of the time for a drifting" in (
        refuting.reason
    )
    assert refuting.share_max_learned == out.share_max_learned  # on the record, not in the reason
    # and where it refutes the drifting rest's too, neither is stated: no bound beside "refutes" for one premise
    both = learned_bound(dataclasses.replace(v, refuted_sharp=5.0, refuted_drift=2.0), m_pi, m_sharp, m_null,
                         m_learned, "pc")  # fmt: skip
    assert both.reason == v.reason and both.share_max_learned_drift == out.share_max_learned_drift
    drift_only = learned_bound(dataclasses.replace(v, refuted_drift=2.0), m_pi, m_sharp, m_null, m_learned, "pc")
    assert f"at most {out.share_max_learned.hi:.2f}" in drift_only.reason and "drifting rest" not in drift_only.reason


def test_a_soft_composition_is_bounded_by_its_own_mass_and_not_by_the_bayes_policys():
    # the planted case: a quarter of the joint-target policy at temperature 1 over sharpened p_pre, on
    # the battery's Mess3 interleave with an exact model
    s = sample("interleave(mess3,mess3)", 400, 0)
    sharp, bayes, soft = (
        resolution.sharpen(s.p_pre[..., s.act], 10.0),
        resolution.onehot_argmax(s.P),
        resolution.sharpen(s.P, 1.0),
    )

    m_pi, m_sharp, m_soft, m_bayes = (map_mass(s, pi) for pi in (0.25 * soft + 0.75 * sharp, sharp, soft, bayes))
    own = resolution.composed_share_max(m_pi, m_sharp, m_soft).mean()
    assert own >= 0.25 - 1e-9  # exact: the map is linear in the policy
    assert resolution.composed_share_max(m_pi, m_sharp, m_bayes).mean() < 0.15  # the Bayes J counts too little


def test_the_learned_premise_refuted_on_one_seed_is_stated_for_none():
    v = _reweighting()
    m_pi, m_sharp, m_null, m_learned = (seeds(0.06, 0.01), seeds(0.01, 0.002, seed=1), seeds(0.24, seed=2),
                                        seeds(0.56, seed=3))  # fmt: skip
    holds = np.minimum(m_sharp, m_null)  # the least rest no larger than either reference: both premises hold
    out = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "pc", least_rest=holds)
    assert out.refuted_learned_sharp == 0 and out.refuted_learned_drift == 0
    assert f"pc's learned composition at most {out.share_max_learned.hi:.2f}" in out.reason
    assert "not checked" not in out.reason and "refutes" not in out.reason
    # one seed whose rest leaves more than its planted sharp reweighting at any share of the learned J, less
    # than its null: the sharp bound goes, the drifting one stays, and the reason says against which J
    one = holds.copy()
    one[2] = m_sharp[2] * 1.01
    out = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "pc", least_rest=one)
    assert out.refuted_learned_sharp == 1 and out.refuted_learned_drift == 0
    assert f"at most {out.share_max_learned.hi:.2f} of the time (" not in out.reason
    assert f"pc's learned composition at most {out.share_max_learned_drift.hi:.2f} of the time for a drifting" in (
        out.reason
    )
    assert "a premise this policy refutes against that policy on 1/5 seeds, not stated)" in out.reason
    assert out.reason.count("refutes") == 1  # said once, beside the bound that is stated
    both = learned_bound(dataclasses.replace(v, refuted_sharp=2.0), m_pi, m_sharp, m_null, m_learned, "pc",
                         least_rest=one)  # fmt: skip
    assert "refutes against the Bayes J and against that policy on 1/5 seeds, not stated)" in both.reason
    # more than its null too: neither bound is stated
    one[2] = m_null[2] + 0.01
    out = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "pc", least_rest=one)
    assert out.refuted_learned_drift == 1 and "at most" not in out.reason[len(v.reason) :]
    assert "refutes the premise of a sharp rest on 1/5 seeds and of a drifting rest on 1/5 seeds" in out.reason
    # a premise exactly met is not refuted by rounding; seeds without a stored residual are said unchecked
    met = m_sharp.copy()
    met[:2] = np.nan
    out = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "pc", least_rest=met)
    assert out.refuted_learned_sharp == 0 and "(that premise not checked on 2/5 seeds: no residual kept" in out.reason
    unchecked = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "pc")
    assert np.isnan(unchecked.refuted_learned_sharp) and "not checked on 5/5 seeds" in unchecked.reason


def test_the_learned_premise_on_planted_residuals_holds_for_a_mixture_and_fails_for_a_drift():
    # the learned J a soft composition (the Bayes probabilities at temperature 1); a quarter of it over the
    # planted sharp reweighting meets the sharp premise exactly (at share 1/4 the rest is that reweighting),
    # and a drift of the last tokens (a rest no map of p_pre resolves) refutes it
    drift = next(c for c in CASES if c.name.startswith("drift") and "interleave(mess3,mess3)" in c.streams)
    tv = {k: [] for k in ("mix", "drift", "sharp", "learned")}
    least = {"mix": [], "drift": []}
    for seed in range(3):
        s = sample("interleave(mess3,mess3)", 400, seed)
        sharp, soft = sharpen(s, 10.0), resolution.sharpen(s.P, 1.0)
        policies = {"mix": 0.25 * soft + 0.75 * sharp, "drift": drift.policy(s, np.random.default_rng(seed)),
                    "sharp": sharp, "learned": soft}  # fmt: skip
        r = {k: sample_residual(s, pi) for k, pi in policies.items()}
        for k, vals in tv.items():
            vals.append(projection.mass(r[k]))
        for k, vals in least.items():
            vals.append(rest_min(r[k], s.act, r["learned"], s.act))
    assert np.all(np.array(least["mix"]) <= np.array(tv["sharp"]) * (1 + 1e-9))
    assert np.all(np.array(least["drift"]) > 1.5 * np.array(tv["sharp"]))
    v = _reweighting()
    mix = learned_bound(v, tv["mix"], tv["sharp"], None, tv["learned"], "pc", least_rest=least["mix"])
    assert mix.refuted_learned_sharp == 0 and mix.share_max_learned.mean >= 0.25 - 1e-9
    assert f"pc's learned composition at most {mix.share_max_learned.hi:.2f}" in mix.reason
    refuted = learned_bound(v, tv["drift"], tv["sharp"], None, tv["learned"], "pc", least_rest=least["drift"])
    assert refuted.refuted_learned_sharp == 3 and "at most" not in refuted.reason[len(v.reason) :]


def test_the_residual_bound_against_the_learned_policy_holds_for_a_mixture_and_is_refuted_by_a_drift():
    # the planted case of the L2 bound: the learned J a soft composition, a quarter of it over the planted
    # sharp reweighting, and a rest no larger (in L2) than that reweighting's residual. At share 1/4 the
    # rest is that reweighting, so the premise is met exactly and the bound is at least 1/4 on every seed;
    # a drift of the last tokens leaves a residual no share of J brings down to that size
    drift = next(c for c in CASES if c.name.startswith("drift") and "interleave(mess3,mess3)" in c.streams)
    products = {"mix": [], "drift": []}
    sq_sharp, tv_sharp, tv_learned, tv = [], [], [], {"mix": [], "drift": []}
    for seed in range(3):
        s = sample("interleave(mess3,mess3)", 400, seed)
        sharp, soft = sharpen(s, 10.0), resolution.sharpen(s.P, 1.0)
        r_sharp, r_soft = sample_residual(s, sharp), sample_residual(s, soft)
        sq_sharp.append(float((r_sharp**2).sum()) / len(r_sharp))
        tv_sharp.append(projection.mass(r_sharp))
        tv_learned.append(projection.mass(r_soft))
        for k, pi in (("mix", 0.25 * soft + 0.75 * sharp), ("drift", drift.policy(s, np.random.default_rng(seed)))):
            r = sample_residual(s, pi)
            products[k].append(inner_products(r, s.act, r_soft, s.act))
            tv[k].append(projection.mass(r))
            if k == "mix":  # the learned J is the Bayes probabilities: the bound is the verdict's soft one
                planted = {"r_sharp": r_sharp, "r_composed": r_soft, "r_soft": r_soft}
                b = projection.trial_bounds(r, planted)
                assert products[k][-1] == pytest.approx((b["sq"], b["dot_soft"], float((r_soft**2).sum()) / len(r)))
    mix, drifts = (np.array(products[k]).T for k in ("mix", "drift"))
    each, k, n = residual_bound(*mix, sq_sharp)
    # a bound, so at least 1/4; and tight here, since the rest's residual has no part along J's to spare
    assert (k, n) == (0, 3) and each.lo >= 0.25 - 1e-9 and each.hi == pytest.approx(0.25, abs=1e-9)
    assert residual_bound(*drifts, sq_sharp)[1:] == (3, 3)
    v = _reweighting()
    # (the "null" here is the planted sharp reweighting: the reference rest the premise is written against)
    out = learned_bound(v, tv["mix"], tv_sharp, tv_sharp, tv_learned, "pc", l2=(*mix, sq_sharp))
    assert out.refuted_learned_l2 == 0 and out.share_max_learned_l2 == each
    assert (
        "it acts as pc's learned composition at most 0.25 of the time, for a rest whose residual is no larger "
        "than the null's (0.25 [0.25, 0.25])" in out.reason
    )
    refuted = learned_bound(v, tv["drift"], tv_sharp, tv_sharp, tv_learned, "pc", l2=(*drifts, sq_sharp))
    assert refuted.refuted_learned_l2 == 3
    assert (
        "no mixture of pc's learned composition and a rest whose residual is no larger than the null's gives "
        "this policy on 3/3 seeds, so that bound is not stated" in refuted.reason
    )
    # seeds without kept residuals drop out of the L2 bound, and the reason says over how many it holds
    fewer = [np.append(x[:2], np.nan) for x in mix]
    some = learned_bound(v, tv["mix"], tv_sharp, tv_sharp, tv_learned, "pc", l2=(*fewer, sq_sharp))
    assert some.share_max_learned_l2 == residual_bound(*fewer, sq_sharp)[0]
    assert (
        "(0.25 [0.25, 0.25]; checked on 2/3 seeds, the others having a residual, the policy's, the learned one's "
        "or the null's, not kept or not on one held-out set)" in some.reason
    )
    # too few checked to state it: said not checked, unless the mass bound's note already says which seeds
    one = [np.append(x[:1], [np.nan, np.nan]) for x in mix]
    few = learned_bound(v, tv["mix"], tv_sharp, tv_sharp, tv_learned, "pc", least_rest=tv_sharp, l2=(*one, sq_sharp))
    assert few.reason.endswith("; the residual bound against pc's learned composition not checked (a residual, the "
                               "policy's, the learned one's or the null's, not kept or not on one held-out set)")  # fmt: skip
    assert (
        "not checked"
        not in learned_bound(
            v, tv["mix"], tv_sharp, tv_sharp, tv_learned, "pc", least_rest=[np.nan] * 3, l2=(*one, sq_sharp)
        ).reason.split("(that premise not checked on 3/3 seeds")[1]
    )
    # without a null there is no reference rest: no L2 bound, and the verdict's other bounds as they were
    none = learned_bound(v, tv["mix"], tv_sharp, None, tv_learned, "pc", l2=(*mix, None))
    assert np.isnan(none.share_max_learned_l2.mean) and np.isnan(none.refuted_learned_l2)


def test_a_learned_policy_on_fewer_actions_is_placed_by_its_tokens():
    # the map fits each action apart from p_pre alone: the residual of a policy placed on some of another's
    # actions is its residual placed there, so the premise can be checked from the two stored residuals
    rng = np.random.default_rng(0)
    p_pre = rng.dirichlet(np.ones(5), size=(60, 4))
    pi = rng.dirichlet(np.ones(2), size=(60, 4))
    train, test = np.arange(30), np.arange(30, 60)
    placed = np.zeros((60, 4, 5))
    placed[..., [3, 1]] = pi
    r_placed = projection.residual(p_pre, placed, train, test, 0.05)
    r = projection.residual(p_pre, pi, train, test, 0.05)
    np.testing.assert_allclose(r_placed[..., [3, 1]], r, atol=1e-12)
    np.testing.assert_allclose(np.delete(r_placed, [3, 1], -1), 0.0, atol=1e-12)
    mine = projection.residual(p_pre, rng.dirichlet(np.ones(5), size=(60, 4)), train, test, 0.05)
    tokens = [10, 11, 12, 13, 14]
    assert rest_min(mine, tokens, r, [13, 11]) == projection.rest_mass_min(mine, r_placed)
    n = len(mine)
    assert inner_products(mine, tokens, r, [13, 11]) == pytest.approx(
        ((mine * mine).sum() / n, (mine * r_placed).sum() / n, (r * r).sum() / n), rel=1e-12
    )
    assert np.isnan(inner_products(mine, tokens, r, [13, 15])).all()
    assert np.isnan(rest_min(mine, tokens, r, [13, 15]))  # a learned action the policy lacks
    assert np.isnan(rest_min(mine[:10], tokens, r, [13, 11]))  # another sample
