"""The composition detector's known-answer battery: planted policies whose right verdict is known
(sharp and drifting reweightings, graded composed mixtures, imperfect and leaky models, replicate
draws) must come out as planted, at the operating point of the PPO nulls."""

import numpy as np
import pytest
from seed_draws import seeds

from rayexp.studies.composition import battery, battery_cases
from rayexp.studies.composition.verdict import (
    ELICITATION,
    INCONCLUSIVE,
    REWEIGHTING,
    Interval,
    Thresholds,
    decide,
)


@pytest.mark.parametrize(
    ("stream", "model_error", "draw"),
    [
        ("interleave(mess3,mess3)", 0.0, 0),
        ("interleave(mess3,mess3)", 0.03, 1),
        ("interleave(mess3,z1r)", 0.03, 2),
        # an exact model's p_pre nearly pins the tokens the drift reads: the search's old bound, 64, left
        # 0.52 here (0.50 on seed 0), so the Z1R pair's nulls were lighter than the PPO nulls
        ("interleave(z1r,z1r)", 0.0, 0),
    ],
)
def test_the_batterys_drift_null_sits_where_the_ppo_nulls_do(stream, model_error, draw):
    # README's PPO nulls leave 0.55-0.77 of the policy unexplained by a map of p_pre; `--null drift`
    # must judge "explained" at that operating point, not at the pretrained policy's ~0, on every draw
    # and model error: its scale is searched on seed 0's sequences, and holds on another seed's
    s = battery.sample(stream, 300, 1, model_error, draw)
    drift = battery.signals(s, battery.NULLS["drift"](s, stream, model_error), control=False)
    pretrained = battery.signals(s, battery.NULLS["pretrained"](s, stream, model_error), control=False)
    assert abs(np.nanmean(drift["u_rw"]) - battery.DRIFT_NULL_LEVEL) < 0.06
    assert np.nanmean(pretrained["u_rw"]) < 0.05 + model_error * 5
    if (stream, model_error, draw) == ("interleave(mess3,z1r)", 0.03, 2):  # the fixed scale left 0.23 here
        fixed = battery.signals(s, battery._drift_null(s, battery.DRIFT_NULL_SCALE), control=False)
        assert np.nanmean(fixed["u_rw"]) < 0.4


def test_a_reweighting_verdict_needs_the_policy_clearly_below_its_resolution_bar():
    null_rw, null_el = seeds(0.6, seed=10), seeds(0.6, seed=11)  # a drift-heavy null, as the PPO nulls'
    u_rw, u_el, margin = seeds(0.2), seeds(0.45, seed=1), seeds(np.nan, seed=2)  # a readout leaves too much
    visible = seeds(0.9, seed=4)  # what a map leaves of the joint-target policy: composition is visible
    # nearer a planted sharp reweighting than a planted quarter-composed policy: reweighting, said so
    v = decide(u_rw, u_el, margin, null_rw, null_el, below_bar=seeds(0.1, seed=3), u_composed=visible)
    assert v.code == REWEIGHTING and "below the resolution bar" in v.reason and v.below_bar.lo > 0
    # explained by the null and the cap, but no nearer a reweighting than a quarter composition: not shown
    v = decide(u_rw, u_el, margin, null_rw, null_el, below_bar=seeds(0.0, seed=3), u_composed=visible)
    assert v.code == INCONCLUSIVE and "quarter of the time" in v.reason and v.below_bar.lo < 0
    # the readout may still explain it (the larger class)
    v = decide(u_rw, seeds(0.1, seed=1), margin, null_rw, null_el, below_bar=seeds(0.0, seed=3), u_composed=visible)
    assert v.code == ELICITATION
    # a readout that random-init features nearly match: neither class shown, and the reason names both
    v = decide(
        u_rw, seeds(0.1, seed=1), margin, null_rw, null_el, below_bar=seeds(0.0, seed=3), u_composed=visible,
        u_el_random=seeds(0.13, seed=5),
    )  # fmt: skip
    assert v.code == INCONCLUSIVE and "resolution bar" in v.reason and "random-init" in v.reason
    # where the joint-target policy is itself nearly a map of p_pre (a product stream), the bar does not apply
    v = decide(u_rw, u_el, margin, null_rw, null_el, below_bar=seeds(0.0, seed=3), u_composed=seeds(0.05, seed=4))
    assert v.code == REWEIGHTING and "not visible" in v.reason
    # trials logged before the bar: the rule as it was, and the reason says the bar was not tested
    v = decide(u_rw, u_el, margin, null_rw, null_el)
    assert v.code == REWEIGHTING and "not tested" in v.reason and "no resolution bar logged" in v.reason
    # a stream with no joint target (a mixture): no bar can exist, and the reason says that, not "not logged"
    v = decide(u_rw, u_el, margin, null_rw, null_el, planted_defined=np.zeros(5))
    assert v.code == REWEIGHTING and "no joint target" in v.reason and "not logged" not in v.reason
    # one seed: the bar's interval over held-out contexts decides
    ctx = {"u_rw": Interval(0.2, 0.18, 0.22), "u_el": Interval(0.45, 0.43, 0.47), "margin": Interval()}
    one = {
        "u_rw": [0.2],
        "u_el": [0.45],
        "margin": [np.nan],
        "u_rw_null": [0.6],
        "u_el_null": [0.6],
        "u_composed": [0.9],
    }
    assert decide(**one, context=ctx | {"below_bar": Interval(0.1, 0.05, 0.15)}).code == REWEIGHTING
    assert decide(**one, context=ctx | {"below_bar": Interval(0.02, -0.01, 0.05)}).code == INCONCLUSIVE


@pytest.mark.parametrize(
    ("case_name", "stream", "model_error", "draw"),
    [
        # the battery's miss at its stated null level: u 0.331 against the cap 0.35, called reweighting
        ("graded alpha=0.25", "interleave(mess3,z1r)", 0.03, 2),
        # a quarter composed over argmax p_pre on the Z1R pair leaves 0.32 with an exact model
        ("quarter-composed over argmax p_pre", "interleave(z1r,z1r)", 0.0, 0),
    ],
)
def test_a_quarter_composed_policy_under_the_cap_is_not_called_reweighting(case_name, stream, model_error, draw):
    # planted must-say-no cases that the cap and the drift null alone called reweighting
    case = next(c for c in battery.CASES if c.name == case_name)
    kw = {"seeds": 5, "n_seq": 600, "null": "drift", "model_error": model_error, "draw": draw}
    r = battery.run_case(case, stream, **kw)
    assert r["without bar"] == "reweighting" and float(r["u map"]) < Thresholds().u_max, r
    assert r["verdict"] in case.expect and r["verdict"] != "reweighting", r
    # and a planted sharp reweighting on the same model stays one
    sharp = next(c for c in battery.CASES if c.name == "sharpen beta=10")
    assert battery.run_case(sharp, stream, **kw)["verdict"] == "reweighting"


def test_a_sharp_reweighting_with_near_ties_is_not_composition():
    # the planted argmax of group sums on product(Mess3(0.05, 0.85), Z1R) is the Bayes policy and a
    # reweighting; a map fitted at the model's resolution misses its near-ties, and before the reward
    # shortfall test the rule called it composition
    case = next(c for c in battery.CASES if c.name == "argmax of group sums")
    r = battery.run_case(case, "product(mess3,z1r)", seeds=5, n_seq=600)
    assert r["verdict"] in ("reweighting", "inconclusive") and float(r["shortfall"]) < 0.25, r


def test_a_quarter_composed_policy_is_not_a_reweighting_at_the_ppo_nulls_drift():
    # against a null that leaves 0.6 of its deviation unexplained by a map of p_pre (the PPO nulls'
    # 0.55-0.77), a policy composed a quarter of the time leaves less than its null; with u_max 0.5
    # the rule called it reweighting
    case = next(c for c in battery.CASES if c.name == "graded alpha=0.25")
    r = battery.run_case(case, "interleave(mess3,mess3)", seeds=5, n_seq=600, null="drift")
    assert float(r["null u map"]) > 0.5 and float(r["u map"]) > Thresholds().u_max, r
    assert r["verdict"] in case.expect and r["verdict"] != "reweighting", r


def test_a_softly_composed_quarter_is_not_a_reweighting_and_its_own_bound_holds():
    # a quarter of the joint-target policy at temperature 1 (its Bayes probabilities) over sharpened p_pre:
    # the rule before the reward test called it reweighting on the Mess3 interleaves. It is the bar's own
    # planted soft quarter now, so it sits at or above its bar by construction; the reward test still sees it
    case = next(c for c in battery.CASES if c.name == "soft beta=1 alpha=0.25")
    r = battery.run_case(case, "interleave(mess3,mess3)", seeds=5, n_seq=600, null="drift")
    assert float(r["u map"]) >= float(r["bar"]) and float(r["shortfall"]) > 0.25, r
    assert r["verdict"] == "inconclusive" and r["ok"] == "ok", r
    # bounded with its own composed policy as J it is exact; with the Bayes policy it counts too little
    assert r["bound_broken"] == 0 and r["share_max"] >= 0.25 - 1e-9 and r["share_max_bayes"] < 0.15, r


@pytest.mark.parametrize("stream", ["interleave(mess3,mess3)", "interleave(mess3,z1r)"])
def test_on_a_redraw_with_a_leaky_model_a_soft_quarter_is_not_a_reweighting(stream):
    """Redraw 1 with a model erring by 0.03 (c136ccb's predictions): the soft quarter's greedy choices are
    sharpened p_pre's (shortfall about 0), so the reward test cannot see it, and with the bar built from the
    sharp quarter alone it was called reweighting on both Mess3 pairs (u 0.217 against a bar of 0.289 and
    0.326 against 0.348 here). The bar now goes halfway to the Bayes probabilities' quarter, which is this
    very policy: the test holds that the bar plants it, not that the bar generalises (the battery's redraws
    and its temperature-1/2 quarters do that). The sharp reweighting must stay one under the lower bar."""
    kw = {"seeds": 5, "n_seq": 600, "null": "drift", "model_error": 0.03, "draw": 1}
    soft = next(c for c in battery.CASES if c.name == "soft beta=1 alpha=0.25")
    r = battery.run_case(soft, stream, **kw)
    assert r["verdict"] == "inconclusive" and r["without bar"] == "reweighting", r  # only the bar stops it
    assert float(r["shortfall"]) < 0.25 and float(r["u map"]) > float(r["bar"]), r
    sharp = next(c for c in battery.CASES if c.name == "sharpen beta=10")
    assert battery.run_case(sharp, stream, **kw)["verdict"] == "reweighting"


def test_an_imperfect_model_errs_by_the_stated_amount_and_is_fitted_at_twice_it():
    from rayexp.studies.composition import battery_streams

    exact = battery_streams.sample("interleave(mess3,mess3)", 200, 0)
    s = battery_streams.sample("interleave(mess3,mess3)", 200, 0, 0.03)
    assert np.abs(s.p_pre - exact.p_pre).sum(-1).mean() == pytest.approx(0.03)
    assert np.allclose(s.p_pre.sum(-1), 1) and s.resolution == pytest.approx(0.06) and exact.resolution == 0.005
    assert np.array_equal(s.tokens, exact.tokens) and np.array_equal(s.P, exact.P)  # only the model errs
    # the error reads both factors: their beliefs explain much of what p_exact leaves of it
    err = (s.p_pre - exact.p_pre).reshape(-1, s.p_pre.shape[-1])

    def r2(x):
        x = np.c_[x.reshape(len(err), -1), np.ones(len(err))]
        resid = err - x @ np.linalg.lstsq(x, err, rcond=None)[0]
        return 1 - (resid**2).sum() / ((err - err.mean(0)) ** 2).sum()

    assert r2(np.concatenate([exact.p_pre, s.feats], -1)) > r2(exact.p_pre) + 0.15  # 0.89 against 0.68


def test_a_leaky_model_neither_explains_composition_away_nor_loses_a_reweighting():
    # a pretrained model whose error (0.03, as real ones on interleaves) carries both factors' beliefs:
    # a map reading that leak could call the Bayes joint target a reweighting; fitted at twice the
    # error, it does not, and sharpening the model's own output stays a reweighting
    for name, want in (("Bayes joint target", "composition"), ("sharpen beta=10", "reweighting")):
        case = next(c for c in battery.CASES if c.name == name)
        r = battery.run_case(case, "interleave(mess3,mess3)", seeds=5, n_seq=600, model_error=0.03)
        assert r["verdict"] == want, r


def test_a_replicate_draw_is_new_everywhere_and_draw_0_is_the_battery_itself():
    from rayexp.studies.composition import battery_streams

    stream = "interleave(mess3,mess3)"
    base, again = battery_streams.sample(stream, 100, 0, 0.03), battery_streams.sample(stream, 100, 0, 0.03, 0)
    new = battery_streams.sample(stream, 100, 0, 0.03, 1)
    assert np.array_equal(base.p_pre, again.p_pre) and base.draw == 0 and new.draw == 1
    assert not np.array_equal(new.tokens, base.tokens) and not np.allclose(new.feats_random[:1], base.feats_random[:1])
    # the same process and model error, a new leak map: the error is as stated
    exact = battery_streams.sample(stream, 100, 0, 0.0, 1)
    assert np.array_equal(exact.tokens, new.tokens)
    assert np.abs(new.p_pre - exact.p_pre).sum(-1).mean() == pytest.approx(0.03)
    assert not np.allclose(
        battery.NULLS["drift"](new, stream, 0.03),
        battery.NULLS["drift"](battery_streams.sample(stream, 100, 0, 0.03, 2), stream, 0.03),
    )


def test_the_rule_holds_on_a_replicate_draw_at_the_ppo_nulls_drift():
    # thresholds were set on draw 0; on new sequences, maps, leak and null the composed policy stays
    # composition and the sharpened one reweighting
    for name, want in (("Bayes joint target", "composition"), ("sharpen beta=10", "reweighting")):
        case = next(c for c in battery.CASES if c.name == name)
        r = battery.run_case(case, "interleave(mess3,z1r)", seeds=4, n_seq=600, null="drift", model_error=0.03, draw=1)
        assert r["verdict"] == want, r


@pytest.mark.slow
def test_known_answer_battery_on_two_streams():
    streams = ("interleave(mess3,mess3)", "product(mess3,mess3)")
    rows = battery.run(seeds=10, n_seq=600, streams=streams)
    wrong = [(r["stream"], r["planted"], r["verdict"]) for r in rows if r["right"] is False]
    # the known misses are inconclusive; nothing else is wrong, and no planted case is a confident error
    assert {(s, p) for s, p, _ in wrong} <= battery_cases.KNOWN_MISSES, wrong
    assert all(v == "inconclusive" for _, _, v in wrong), wrong
    assert all(
        r["one_seed_right"] >= 9
        for r in rows
        if r["right"] is not None and (r["stream"], r["planted"]) not in battery_cases.KNOWN_MISSES
    )
    assert battery.graded_spearman(rows, "interleave(mess3,mess3)") >= 0.9
    assert {r["planted"] for r in rows} >= {"argmax of group sums", "Bayes joint target", "readout of features"}
