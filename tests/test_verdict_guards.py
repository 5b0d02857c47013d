"""Where the verdict had a confident label or a quiet reason on thin evidence (an outside read of the rule,
2026-12-07): two trials for one seed, a resolution bar logged on one seed, the "not visible" shortcut on a
mean, a mass bound whose premise nobody checked, a null on fewer seeds than the task, and a composition a
lookup of the last tokens matches. Each case is set against the same input with full evidence, so the test
fails if the guard does nothing."""

from types import SimpleNamespace

import numpy as np
import pytest
from seed_draws import seeds

from rayexp.console import OneLineError
from rayexp.exact import ceilings
from rayexp.stats import t_ci
from rayexp.studies.composition import battery, caveats, resolution
from rayexp.studies.composition.battery_streams import sample
from rayexp.studies.composition.bounds import Interval, Residuals
from rayexp.studies.composition.verdict import COMPOSITION, INCONCLUSIVE, REWEIGHTING, decide
from rayexp.studies.composition.verdict_analysis import VerdictParams, verdicts

NULL = seeds(0.6, seed=10), seeds(0.6, seed=11)
# a policy a map of p_pre explains, on a stream whose joint-target policy is visible to the map
EXPLAINED = (seeds(0.2), seeds(0.45, seed=1), seeds(np.nan, seed=2), *NULL)
VISIBLE = seeds(0.9, seed=4)
# a policy neither class explains, whose reward needs both factors and beats the map of p_pre
COMPOSED = (seeds(0.8), seeds(0.7, seed=1), seeds(0.9, seed=2), seeds(0.2, seed=10), seeds(0.15, seed=11))


# ------------------------------------------------------------------------------ two trials, one seed


def _trial(seed, d_model=64, task="positive_control", null=False, u=0.9):
    m = {"classes/reweighting/unexplained/post": u, "classes/elicitation/unexplained/post": u}
    m |= {"margin_phase_greedy/post": 0.9}
    return SimpleNamespace(
        metrics=lambda: {f"analysis/composition/{k}": v for k, v in m.items()},
        config={"process": {"name": "mess3"}, "task": {"name": task}, "seed": seed, "model": {"d_model": d_model}},
        env_config={"shuffle_reward": True} if null else {},
    )


def test_two_trials_for_one_seed_of_a_cell_are_refused_naming_what_tells_them_apart():
    """Grouped by process alone, a sweep with a size axis has two trials per seed; the rule pairs by seed,
    and before this one silently replaced the other (five d64 trials vanished behind five d128 ones)."""
    sizes = [_trial(s, 64, u=0.9) for s in range(5)] + [_trial(s, 128, u=0.1) for s in range(5)]
    with pytest.raises(OneLineError, match=r"seed 0; they differ in model\.d_model \(64 vs 128\)") as err:
        verdicts(sizes, VerdictParams())
    assert "--group-by process,model.d_model" in str(err.value) and err.value.code == 2
    # two null tasks of one pair would replace each other's seeds as well
    nulls = [_trial(0, task="shuffled_a", null=True), _trial(0, task="shuffled_b", null=True)]
    with pytest.raises(
        OneLineError, match="mess3 null: two trials of this group ran seed 0; they differ in task.name"
    ) as err:
        verdicts(nulls, VerdictParams())
    # grouping by the task would take the null out of every group: the message says what to do instead
    assert "keep one null task per pair, or give them distinct seeds" in str(err.value)
    assert "--group-by" not in str(err.value)
    # one trial per seed goes through (the same cell, grouped by size)
    ((_, _, v, _),) = verdicts([_trial(s, 64) for s in range(5)], VerdictParams())
    assert v.n_seeds == 5


# ------------------------------------------------------------------------------ the resolution bar


def test_a_resolution_bar_logged_on_one_seed_of_several_resolves_nothing():
    full = decide(*EXPLAINED, below_bar=seeds(0.1, seed=3), u_composed=VISIBLE)
    assert full.code == REWEIGHTING and "below the resolution bar" in full.reason
    for lone in (-0.1, 0.1):  # the one seed that logged it above its bar, and below it (what the guard is for)
        thin = np.full(5, np.nan)
        thin[0] = lone
        v = decide(*EXPLAINED, below_bar=thin, u_composed=VISIBLE)
        assert v.code == INCONCLUSIVE and f"logged on one seed only (bar - u {lone:.2f}, no interval)" in v.reason
        assert "no resolution bar logged" not in v.reason
    # on a product the bar does not apply, thin or not: the joint-target policy is itself nearly a map
    v = decide(*EXPLAINED, below_bar=thin, u_composed=seeds(0.05, seed=4))
    assert v.code == REWEIGHTING and "not visible" in v.reason


def test_the_not_visible_shortcut_needs_the_joint_target_policys_high_end_below_u_max():
    """A product's joint target is nearly a map of p_pre, so the bar does not apply there; the shortcut took
    the mean over seeds, so seeds that straddle u_max skipped the bar on a point value."""
    low = seeds(0.05, seed=4)
    tight = decide(*EXPLAINED, below_bar=seeds(-0.05, seed=3), u_composed=low)
    hi = t_ci(low)[2]
    assert (
        tight.code == REWEIGHTING and f"leaves {low.mean():.2f} to such a map here (high end {hi:.2f}" in tight.reason
    )
    straddling = [0.05, 0.6, 0.1, 0.55, 0.2]  # mean 0.30 < 0.35, interval high end above it
    v = decide(*EXPLAINED, below_bar=seeds(-0.05, seed=3), u_composed=straddling)
    assert v.code == INCONCLUSIVE and "not clearly below this model's resolution bar" in v.reason
    # one finite value among five has no high end: the shortcut is not taken on it
    one = np.full(5, np.nan)
    one[0] = 0.05
    v = decide(*EXPLAINED, below_bar=seeds(-0.05, seed=3), u_composed=one)
    assert v.code == INCONCLUSIVE and "not visible" not in v.reason


# ------------------------------------------------------------------------------ premises and coverage


def _residuals(rest_min):
    return Residuals(
        sq=np.full(5, np.nan), dot_soft=np.full(5, np.nan), sq_soft=np.full(5, np.nan),
        rest_min=np.asarray(rest_min, float), tv_sharp=np.full(5, 0.3),
    )  # fmt: skip


def test_a_mass_bound_says_when_its_premise_was_not_checked_or_checked_on_some_seeds():
    kw = {"below_bar": seeds(0.1, seed=3), "u_composed": VISIBLE, "share_max": seeds(0.12, seed=5)}
    checked = decide(*EXPLAINED, **kw, residuals=_residuals(np.full(5, 0.1)))
    assert checked.code == REWEIGHTING and "of the time" in checked.reason and "premise" not in checked.reason
    unchecked = decide(*EXPLAINED, **kw)  # no rest_min logged at all
    assert unchecked.reason.startswith(checked.reason)
    assert unchecked.reason.endswith("; that premise not checked on any seed (no rest_min or planted mass logged)")
    some = decide(*EXPLAINED, **kw, residuals=_residuals([0.1, 0.1, np.nan, np.nan, np.nan]))
    assert some.reason.endswith("; that premise checked on 2/5 seeds")


def test_a_null_on_fewer_seeds_than_the_task_and_fewer_seeds_than_the_design_asks_for_are_said():
    full = decide(*COMPOSED, shortfall=seeds(0.85, seed=3))
    assert full.code == COMPOSITION and "null covers" not in full.reason
    u_rw_null, u_el_null = COMPOSED[3].copy(), COMPOSED[4].copy()
    u_rw_null[2:], u_el_null[2:] = np.nan, np.nan
    v = decide(*COMPOSED[:3], u_rw_null, u_el_null, shortfall=seeds(0.85, seed=3))
    assert v.reason.startswith("the null covers 2 of 5 seeds (d and the excess run over those); ")
    assert v.n_seeds == 5
    # the readout's null alone missing on three seeds: d for the readout runs over two, and that is said too
    u_el_null = COMPOSED[4].copy()
    u_el_null[2:] = np.nan
    v = decide(*COMPOSED[:4], u_el_null, shortfall=seeds(0.85, seed=3))
    assert v.reason.startswith("the null covers 2 of 5 seeds")
    # three seeds: the rule runs, and says the interval is over fewer seeds than the design asks for
    three = decide(*(x[:3] for x in COMPOSED), shortfall=seeds(0.85, seed=3)[:3])
    assert three.code == COMPOSITION and three.reason.startswith("3 seeds, fewer than the 5 the design asks for; ")


# ------------------------------------------------------------------------------ beyond a lookup


def test_beyond_lookup_is_the_reward_over_the_best_logged_lookup_in_the_margins_unit():
    got = caveats.beyond_lookup([0.48, 0.45], [[0.33, 0.33], [0.49, 0.40], [np.nan, 0.41]], [0.5, 0.5], [1 / 3] * 2)
    assert got == pytest.approx([(0.48 - 0.49) / (0.5 - 1 / 3), (0.45 - 0.41) / (0.5 - 1 / 3)])
    assert np.isnan(caveats.beyond_lookup([0.48], [[np.nan]], [0.5], [1 / 3])[0])  # no lookup logged
    assert np.isnan(caveats.beyond_lookup([0.48], [[0.4]], [0.5], [0.5])[0])  # no gap: no unit
    assert np.isnan(caveats.beyond_lookup([0.48], [[0.4]], [0.5], [0.5 - 1e-12])[0])  # nor below MARGIN_EPS


def test_a_composition_that_a_lookup_of_the_last_tokens_matches_says_so_and_keeps_its_label():
    """docs/design.md's composition: no map of p_pre and no readout of pretrained features explains the
    policy, and both factors pay. On the Mess3 pairs a last-2-token lookup reaches 0.490 of the optimum 0.499
    (stored composition_cpu: the positives' greedy reward is 0.09 [0.07, 0.12] of the margin below the best
    lookup), so what such a policy composes need not be more than recent tokens."""
    kw = {"shortfall": seeds(0.85, seed=3)}
    matched = decide(*COMPOSED, **kw, beyond_lookup=seeds(-0.09, seed=6))
    assert matched.code == COMPOSITION and matched.beyond_lookup.hi < 0
    assert "a lookup of the last tokens earns as much" in matched.reason
    beyond = decide(*COMPOSED, **kw, beyond_lookup=seeds(0.3, seed=6))
    assert beyond.code == COMPOSITION and "beyond the best lookup of the last tokens by 0.3" in beyond.reason
    assert "earns as much" not in beyond.reason
    bare = decide(*COMPOSED, **kw)  # not logged: nothing said, nothing claimed
    assert "lookup" not in bare.reason and np.isnan(bare.beyond_lookup.mean)
    assert caveats.lookup_note(Interval(0.2), 0.05).endswith("+0.20 (no interval)")
    # an interval that reaches past the tolerance on both sides is neither matched nor beyond
    note = caveats.lookup_note(Interval(0.3, 0.02, 0.58), 0.05)
    assert "not shown beyond the best lookup" in note and "earns as much" not in note


def test_the_verdict_table_reads_beyond_lookup_from_the_trials_ceilings():
    def trial(seed, greedy):
        m = {
            "classes/reweighting/unexplained/post": 0.8 + 0.01 * seed,
            "classes/elicitation/unexplained/post": 0.7 + 0.01 * seed,
            "margin_phase_greedy/post": 0.9 + 0.01 * seed,
            "classes/reweighting/shortfall/post": 0.85 + 0.01 * seed,
            "reward/post/greedy": greedy,
            "ceiling/optimum": 0.5,
            "ceiling/single_per_phase": 1 / 3,
            "ceiling/lookup_k1": 0.33,
            "ceiling/lookup_k2": 0.49,
        }
        return SimpleNamespace(
            metrics=lambda: {f"analysis/composition/{k}": v for k, v in m.items()},
            config={"process": {"name": "mess3"}, "task": {"name": "pos"}, "seed": seed},
            env_config={},
        )

    greedy = [0.475, 0.48, 0.477, 0.483, 0.47]
    ((_, _, v, col),) = verdicts([trial(s, g) for s, g in enumerate(greedy)], VerdictParams())
    each = (np.array(greedy) - 0.49) / (0.5 - 1 / 3)
    assert col["reward_beyond_lookup"] == pytest.approx(each)
    assert v.beyond_lookup.mean == pytest.approx(each.mean())
    assert v.code == COMPOSITION and "earns as much" in v.reason
    # one trial: its point value, no interval
    ((_, _, one, _),) = verdicts([trial(0, greedy[0])], VerdictParams())
    assert one.beyond_lookup.mean == pytest.approx(each[0]) and np.isnan(one.beyond_lookup.lo)


def _on_battery_stream(stream: str, policy) -> object:
    """The verdict over 5 seeds of a planted policy on one of the battery's exact streams (its pretrained
    policy as the null), with ``beyond_lookup`` against lookups of the last 1, 2, 4 and 6 tokens, as the
    stored composition_cpu trials log them."""
    per: dict[str, list[float]] = {k: [] for k in ("u_rw", "u_el", "margin", "n_rw", "n_el", "u_rand", "short", "bl")}
    for seed in range(5):
        s = sample(stream, 400, seed)
        pi = policy(s)
        v, ref = battery.signals(s, pi), battery.signals(s, battery.NULLS["pretrained"](s, stream, 0.0), control=False)
        for k, key in (
            ("u_rw", "u_rw"),
            ("u_el", "u_el"),
            ("margin", "margin"),
            ("u_rand", "u_rand"),
            ("short", "shortfall"),
        ):
            per[k].append(float(np.nanmean(v[key])))
        per["n_rw"].append(float(np.mean(ref["u_rw"])))
        per["n_el"].append(float(np.mean(ref["u_el"])))
        keys = [ceilings.lookup_keys(s.tokens, k, pad=s.p_pre.shape[-1]) for k in (1, 2, 4, 6)]
        looks = [[ceilings.lookup_reward(x, s.P, s.train, s.test).mean()] for x in keys]
        greedy = ceilings.greedy_reward(pi[s.test], s.P[s.test]).mean()  # held out, as the lookups are
        per["bl"] += caveats.beyond_lookup(
            [greedy], looks, s.ceil["optimum"].mean(), s.ceil["per_phase"].mean()
        ).tolist()
    return decide(
        per["u_rw"], per["u_el"], per["margin"], per["n_rw"], per["n_el"],
        u_el_random=per["u_rand"], shortfall=per["short"], beyond_lookup=per["bl"],
    )  # fmt: skip


def test_a_planted_last_two_token_lookup_is_composition_that_says_a_lookup_earns_as_much():
    """The outside read's planted case: on the Mess3 interleave a policy that picks the joint target from a
    table of the last 2 tokens is no map of p_pre, random-init features read it better than beliefs do, and
    both factors pay, so it is composition by the definition; its reason must say a lookup earns as much.
    The Bayes joint-target policy beats every lookup there (by 0.06 of the margin) and is not flagged. On the
    Z1R pair at the battery's context of 10 a 6-token lookup matches even the Bayes policy, and it is flagged:
    the note measures the stream's lookups, not the policy's mechanism."""
    mess3, z1r = "interleave(mess3,mess3)", "interleave(z1r,z1r)"

    def lookup2(s):
        keys = ceilings.lookup_keys(s.tokens, 2, pad=s.p_pre.shape[-1])
        return np.eye(s.P.shape[-1])[ceilings.lookup_actions(keys, s.P, s.train)]

    v = _on_battery_stream(mess3, lookup2)
    assert v.code == COMPOSITION and v.beyond_lookup.hi < 0.05
    assert "but a lookup of the last tokens earns as much" in v.reason
    bayes = _on_battery_stream(mess3, lambda s: resolution.onehot_argmax(s.P))
    assert bayes.code == COMPOSITION and "earns as much" not in bayes.reason
    assert bayes.beyond_lookup.lo > v.beyond_lookup.hi  # the Bayes policy beats the lookups; the planted one is one
    on_z1r = _on_battery_stream(z1r, lambda s: resolution.onehot_argmax(s.P))
    assert on_z1r.code == COMPOSITION and "earns as much" in on_z1r.reason
