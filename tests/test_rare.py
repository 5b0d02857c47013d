"""The rare-capability study's process and bookkeeping on constructed cases."""

import numpy as np
import pytest
from streams import MESS3

from envs.processes import build_process
from rayexp.studies.rare.positions import rare_positions, trigger_rate


def test_rare_token_emits_its_token_at_rate_eps_without_moving():
    base = build_process(MESS3)
    hmm = build_process({"name": "rare_token", "base": MESS3, "eps": 0.01})
    assert hmm.vocab_size == 4 and hmm.family == "rare_token" and hmm.params["eps"] == 0.01
    np.testing.assert_allclose(hmm.T[:3], 0.99 * base.T, atol=1e-15)
    np.testing.assert_allclose(hmm.T[3], 0.01 * np.eye(3), atol=1e-15)
    # the share of L-token sequences holding the token is 1 - (1 - eps)^L, whatever the state
    L = 10
    np.testing.assert_allclose(hmm.init @ np.linalg.matrix_power(hmm.T[:3].sum(0), L) @ np.ones(3), 0.99**L)
    tokens, _, _ = hmm.sample_with_beliefs(20000, L, np.random.default_rng(0))
    assert abs((tokens == 3).any(1).mean() - (1 - 0.99**L)) < 0.01
    # the token carries no news about the state: the belief does not move when it is seen
    b = hmm.beliefs(np.array([[0, 3]]))[0]
    np.testing.assert_allclose(b[1], b[0], atol=1e-12)
    never = build_process({"name": "rare_token", "base": MESS3, "eps": 0.0})
    assert (never.T[3] == 0).all()
    with pytest.raises(ValueError, match="eps"):
        build_process({"name": "rare_token", "base": MESS3, "eps": 0.7})
    with pytest.raises(ValueError, match="base"):
        build_process({"name": "rare_token", "base": {"name": "nope"}})


def test_rare_positions_and_trigger_rate_by_hand():
    # A: 0-2, trigger 3, B: 4-6
    tokens = np.array([[0, 3, 4, 1, 2, 3, 5, 0], [1, 1, 3, 6, 3, 4, 2, 2]])
    pos = rare_positions(tokens, 3, np.array([4, 5, 6]))
    got = {k: list(zip(*(a.tolist() for a in v))) for k, v in pos.items()}
    assert got["seen"] == [(0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7)]
    assert got["before"] == [(0, 4), (1, 3)]
    assert got["at"] == [(0, 5), (1, 4)]
    action_tokens = np.array([0, 1, 2, 3, 4, 5, 6])
    assert trigger_rate(np.array([[3, 0], [3, 3]]), action_tokens, 3) == 0.75


# --- the capability: B predicted at the trigger, against its exact ceiling and chance --------------


def test_b_prediction_and_normalised_score_by_hand():
    from rayexp.studies.rare.capability import b_prediction, normalised

    # vocabulary: A 0-2, trigger 3, B 4-6; actions claim tokens 0..6
    acts, b = np.arange(7), np.array([4, 5, 6])
    p = np.zeros((2, 7))
    p[0, 4:] = [0.6, 0.3, 0.1]  # B's state known well
    p[1, 4:] = [1 / 3, 1 / 3, 1 / 3]  # B's prior: nothing to know
    bayes = np.zeros((2, 7))
    bayes[0, 4], bayes[1, 5] = 1.0, 1.0
    guess = np.zeros((2, 7))
    guess[:, 4:] = 1 / 3
    wrong = np.zeros((2, 7))
    wrong[:, 0] = 1.0  # predicts an A token: B never says it
    half = 0.5 * bayes + 0.5 * guess
    got = b_prediction(bayes, p, acts, b)
    np.testing.assert_allclose(got["ceiling"], [0.6, 1 / 3])
    np.testing.assert_allclose(got["chance"], [1 / 3, 1 / 3])
    np.testing.assert_allclose(got["accuracy"], [0.6, 1 / 3])
    # ceiling - chance = (0.6 - 1/3) / 2 per position on average
    assert normalised(got["accuracy"], got["ceiling"], got["chance"]) == pytest.approx(1.0)
    g = b_prediction(guess, p, acts, b)
    assert normalised(g["accuracy"], g["ceiling"], g["chance"]) == pytest.approx(0.0, abs=1e-12)
    w = b_prediction(wrong, p, acts, b)
    assert w["accuracy"].tolist() == [0.0, 0.0]
    assert normalised(w["accuracy"], w["ceiling"], w["chance"]) == pytest.approx(-(2 / 3) / (0.6 - 1 / 3))
    h = b_prediction(half, p, acts, b)  # the expected hit rate is linear in the policy
    assert normalised(h["accuracy"], h["ceiling"], h["chance"]) == pytest.approx(0.5)
    assert normalised(h["greedy"], h["ceiling"], h["chance"]) == pytest.approx(1.0)  # its argmax is Bayes'
    # no position where B's state is knowable: nothing to be skilled at
    assert np.isnan(normalised([1 / 3], [1 / 3], [1 / 3]))
    assert np.isnan(normalised([], [], []))
    with pytest.raises(ValueError, match="align"):
        b_prediction(bayes[:, :3], p, acts, b)


def test_bayes_policy_scores_one_and_a_blind_one_zero_on_the_real_gated_stream():
    from rayexp.studies.rare.capability import b_prediction, normalised

    hmm = build_process(
        {"name": "gated", "a": {"name": "rare_token", "base": MESS3, "eps": 0.2}, "b": MESS3, "trigger": 3}
    )
    tokens, _, beliefs = hmm.sample_with_beliefs(400, 10, np.random.default_rng(0))
    s, t = rare_positions(tokens, 3, np.array([4, 5, 6]))["at"]
    nxt = hmm.next_token_probs(beliefs[s, t])  # (n, 7)
    np.testing.assert_allclose(nxt[:, 4:].sum(1), 1.0, atol=1e-12)  # after a trigger, B always speaks
    acts = np.arange(7)
    bayes = np.eye(7)[np.argmax(nxt, axis=1)]
    blind = np.tile(np.r_[np.zeros(4), np.ones(3) / 3], (len(s), 1))  # knows B speaks, not B's state
    got, ref = b_prediction(bayes, nxt, acts, [4, 5, 6]), b_prediction(blind, nxt, acts, [4, 5, 6])
    assert 0.6 < got["ceiling"].mean() < 0.75  # what the README's ~0.69 ceiling is
    assert normalised(got["accuracy"], got["ceiling"], got["chance"]) == pytest.approx(1.0)
    assert normalised(ref["accuracy"], ref["ceiling"], ref["chance"]) == pytest.approx(0.0, abs=1e-12)


def test_tracking_says_no_for_a_policy_blind_to_b_whatever_mass_it_puts_on_bs_tokens():
    from rayexp.studies.rare.capability import b_prediction, normalised, tracking

    hmm = build_process(
        {"name": "gated", "a": {"name": "rare_token", "base": MESS3, "eps": 0.2}, "b": MESS3, "trigger": 3}
    )
    tokens, _, beliefs = hmm.sample_with_beliefs(400, 10, np.random.default_rng(0))
    s, t = rare_positions(tokens, 3, np.array([4, 5, 6]))["at"]
    nxt, acts, b = hmm.next_token_probs(beliefs[s, t]), np.arange(7), [4, 5, 6]
    rng = np.random.default_rng(1)

    def score(pi):
        r = b_prediction(pi, nxt, acts, b)
        return normalised(r["accuracy"], r["ceiling"], r["chance"]), tracking(
            r["accuracy"], r["mass"], r["ceiling"], r["chance"]
        )

    # the planted no: blind to B, 60 % of its mass spread evenly over B's tokens (the rest on A's), against a
    # null with none there. capability reads +0.59 beyond that null; tracking reads 0
    blind = np.tile(np.r_[np.full(4, 0.1), np.full(3, 0.2)], (len(s), 1))
    blind_cap, blind_track = score(blind)
    null_cap, null_track = score(np.tile(np.r_[np.full(4, 0.25), np.zeros(3)], (len(s), 1)))
    assert blind_cap - null_cap > 0.5 and np.isnan(null_track)
    assert blind_track == pytest.approx(0.0, abs=1e-12)
    # blind with a mass that moves from position to position: still 0, the weighting is by that mass
    m = rng.uniform(0.05, 1.0, size=len(s))[:, None]
    assert score(np.c_[(1 - m) / 4 * np.ones((1, 4)), m / 3 * np.ones((1, 3))])[1] == pytest.approx(0.0, abs=1e-12)
    # the yes: the Bayes argmax among B's tokens at a fifth of the mass is the ceiling, whatever the mass
    bayes_b = 0.2 * np.eye(7)[np.argmax(nxt, axis=1)] + 0.8 * np.r_[np.full(4, 0.25), np.zeros(3)]
    cap, track = score(bayes_b)
    assert track == pytest.approx(1.0) and cap < 0  # below chance as a whole policy: most of it is on A


# --- the across-seed summary: Student-t, paired changes, Welch between exposures ------------------


def test_welch_interval_matches_scipy_and_a_hand_case():
    from scipy import stats

    from rayexp.studies.rare.summary import welch_ci

    a, b = [0.10, 0.12, 0.09, 0.15, 0.11], [0.30, 0.41, 0.35, 0.28, 0.50]
    d, lo, hi = welch_ci(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(b) - np.mean(a))
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert welch_ci([1.0, 1.0], [2.0, 2.0]) == (1.0, 1.0, 1.0)  # no spread: a point
    assert np.isnan(welch_ci([1.0], [2.0, 3.0])[1])  # one value has no variance to estimate


def _groups():
    def g(skill_pre, skill_post, probe_pre):
        return {
            "pre/capability": skill_pre,
            "post/capability": skill_post,
            "delta/capability": [b - a for a, b in zip(skill_pre, skill_post)],
            "pre/trigger_rate": [0.0] * len(skill_pre),
            "post/trigger_rate": [0.3, 0.4, 0.5],
            "delta/trigger_rate": [0.3, 0.4, 0.5],
            "pre/skill_B/at": probe_pre,
            "pre/r2_B/at": [0.5, 0.5, 0.5],
            "r2_B_random_init/at": [0.91, 0.91, 0.91],
            "b_ceiling": [0.69] * 3,
            "b_chance": [1 / 3] * 3,
        }

    return {
        "process.a.eps=0.0": g([-0.5, -0.4, -0.6], [0.2, 0.3, 0.1], [-4.0, -5.0, -6.0]),
        "process.a.eps=0.001": g([0.2, 0.3, 0.4], [0.6, 0.7, 0.8], [-2.0, -2.5, -3.0]),
    }


def test_capability_seeking_and_exposure_rows_use_t_intervals():
    from scipy import stats

    from rayexp.studies.rare import summary

    groups = _groups()
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # sd 0.1 over 3 seeds
    cap = summary.capability_rows(groups)
    assert cap[0]["group"] == "process.a.eps=0.0" and cap[0]["seeds"] == 3
    assert cap[0]["post"] == f"+0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}]"
    assert cap[0]["post - pre (paired)"] == "+0.700 [+0.700, +0.700]"  # the same change in every seed
    assert cap[1]["ceiling / chance"] == "0.690 / 0.333"
    seek = summary.seeking_rows(groups)
    assert seek[0]["trigger rate post"] == f"+0.400 [{0.4 - half:+.3f}, {0.4 + half:+.3f}]"
    assert "B skill at trigger pre" not in seek[0]  # seeking is never the definition of "found"
    exp = summary.exposure_rows(groups)
    assert exp[0]["minus process.a.eps=0.0"] == "(reference)"
    d, lo, hi = summary.welch_ci([-0.5, -0.4, -0.6], [0.2, 0.3, 0.4])
    assert exp[1]["minus process.a.eps=0.0"] == f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" and d == pytest.approx(0.8)
    assert exp[1]["R2 pre / random init"] == "0.50 / 0.91"


def test_probe_reading_says_plainly_when_the_probe_cannot_show_exposure():
    from rayexp.studies.rare import summary

    groups = _groups()
    assert summary.probe_reading(groups).startswith("probe: cannot show an exposure effect")
    groups["process.a.eps=0.001"]["pre/skill_B/at"] = [0.2, 0.3, 0.25]  # beats random init: readable
    assert "cannot" not in summary.probe_reading(groups)
    for g in groups.values():  # a low random-init R2 leaves room: read skill per group
        g["r2_B_random_init/at"] = [0.4] * 3
        g["pre/skill_B/at"] = [-0.1, -0.2, -0.3]
    assert "cannot" not in summary.probe_reading(groups)
    assert summary.probe_reading({}) == "probe: no probe metrics to read."


def test_report_groups_seeds_by_exposure_in_numeric_order():
    from types import SimpleNamespace

    from rayexp.studies.rare.report import seed_values

    def run(eps, seed, cap):
        metrics = {"analysis/rare/post/capability": cap, "other/metric": 1.0}
        return SimpleNamespace(data=SimpleNamespace(metrics=metrics, params={"process.a.eps": eps, "seed": seed}))

    runs = [run("0.0105", "0", 0.9), run("0.001", "0", 0.5), run("0.0", "0", 0.1), run("0.0", "1", 0.3)]
    got = seed_values(runs + [SimpleNamespace(data=SimpleNamespace(metrics={}, params={}))])
    assert list(got) == ["process.a.eps=0.0", "process.a.eps=0.001", "process.a.eps=0.0105"]  # not string order
    assert got["process.a.eps=0.0"] == {"post/capability": [0.1, 0.3]}


def test_the_task_is_set_against_its_shuffled_null_seed_by_seed():
    from types import SimpleNamespace

    from rayexp.studies.rare import summary
    from rayexp.studies.rare.report import by_seed, is_null

    def run(eps, seed, null, cap):
        metrics = {"analysis/rare/post/capability": cap, "analysis/rare/post/trigger_rate": 0.5}
        params = {"process.a.eps": eps, "seed": seed, "task.shuffle_reward": str(null)}
        return SimpleNamespace(data=SimpleNamespace(metrics=metrics, params=params))

    task = [run("0.0", s, False, c) for s, c in (("0", 0.3), ("1", 0.5), ("2", 0.4))]
    # the null's seeds in another order, one seed missing from the task: pairing is by seed
    null = [run("0.0", s, True, c) for s, c in (("2", 0.1), ("0", 0.2), ("3", 9.0))]
    task.append(run("0.001", "0", False, 0.6))  # another exposure, whose null never ran: not a row
    assert [is_null(r) for r in task + null] == [False] * 4 + [True] * 3
    rows = summary.null_rows(*by_seed(task + null))
    (row,) = rows
    assert row["group"] == "process.a.eps=0.0" and row["seeds paired"] == 2
    from rayexp.stats import t_ci

    diffs = [0.3 - 0.2, 0.4 - 0.1]  # seeds 0 and 2
    assert row["B skill post: task - null (paired)"] == summary.cell(t_ci(diffs))
    assert row["B skill post: null"] == summary.cell(t_ci([0.2, 0.1]))
    assert row["trigger rate post: task - null (paired)"] == "+0.000 [+0.000, +0.000]"
    assert row["B skill change: null"] == "-"  # a metric neither trial logged
    assert row["B skill post: beyond the null"] == summary.beyond_null(diffs) == "not shown"  # 2 seeds: wide
    assert row["B skill post: sign-flip p"] == "0.500"  # 2 seeds, both positive: 2 of 4 sign patterns
    assert row["B skill post: task - null by seed"] == "s0 +0.10, s2 +0.30"
    assert summary.null_rows(*by_seed(task)) == []


def test_the_exposures_are_compared_on_the_tasks_excess_over_its_null():
    from rayexp.studies.rare import summary

    def seeds(caps):
        return {str(i): {"post/capability": c} for i, c in enumerate(caps)}

    task = {"e0": seeds([0.1, 0.2, 0.0]), "e1": seeds([0.6, 0.5, 0.7]), "e2": seeds([0.9, 0.8])}
    null = {"e0": seeds([0.1, 0.1, 0.1]), "e1": seeds([0.0, 0.1, 0.0]), "e2": seeds([0.1, 0.1, 0.5])}
    task["e3"] = seeds([0.5])  # no null: not a row
    rows = summary.null_exposure_rows(task, null)
    assert [r["group"] for r in rows] == ["e0", "e1", "e2"] and [r["seeds paired"] for r in rows] == [3, 3, 2]
    ex = {"e0": [0.0, 0.1, -0.1], "e1": [0.6, 0.4, 0.7], "e2": [0.8, 0.7]}  # task - null, seed by seed
    assert rows[1]["post/capability: task - null"] == summary.cell(summary.t_ci(ex["e1"]))
    welch = lambda a, b: summary.cell(summary.welch_ci(ex[a], ex[b])) + " (Welch)"
    assert rows[1]["minus the previous group"] == welch("e0", "e1")
    assert rows[2]["minus the previous group"] == welch("e1", "e2")
    assert rows[2]["minus e0"] == welch("e0", "e2") and rows[2]["minus e0"].startswith("+0.750 [")
    assert rows[0]["minus e0"] == "(reference)" and rows[0]["minus the previous group"] == "-"
    # e0 and e1 on one pretrained model per seed (one run read at 40 and at 120 iterations): paired by seed.
    # e2 on other models stays Welch; a seed without the metric is no pair
    lineage = {"e0": {"0": "m0", "1": "m1", "2": "m2"}, "e1": {"0": "m0", "1": "m1", "2": "m2"}, "e2": {"0": "x"}}
    task["e1"]["1"] = {}
    rows = summary.null_exposure_rows(task, null, lineage=lineage)
    # e1 lost seed 1, so its seeds differ from e0's: Welch
    assert rows[1]["seeds paired"] == 2
    assert rows[1]["minus e0"] == summary.cell(summary.welch_ci(ex["e0"], [0.6, 0.7])) + " (Welch)"
    del task["e0"]["1"]
    rows = summary.null_exposure_rows(task, null, lineage=lineage)
    assert rows[1]["minus e0"] == summary.cell(summary.t_ci([0.6 - 0.0, 0.7 - -0.1])) + " (paired)"
    assert rows[2]["minus e0"].endswith("(Welch)")


def test_rare_figure_draws_each_trial_with_its_null_dashed(tmp_path):
    from types import SimpleNamespace

    from rayexp.studies.rare.report import rare_figure

    def run(i, eps, null):
        params = {"process.a.eps": eps, "seed": str(i), "task.shuffle_reward": str(null)}
        return SimpleNamespace(
            info=SimpleNamespace(run_id=f"r{i}{null}"), data=SimpleNamespace(params=params, metrics={})
        )

    runs = [run(i, eps, null) for i, eps in enumerate(("0.0", "0.001")) for null in (False, True)]
    curves = {r.info.run_id: {"iteration": [0, 10], "trigger_rate": [0.0, 0.3], "reward": [0.0, 0.1]} for r in runs}
    import matplotlib.pyplot as plt

    drawn = []
    orig = plt.Axes.plot
    plt.Axes.plot = lambda self, *a, **k: drawn.append((a[2], k["color"], k.get("label"))) or orig(self, *a, **k)
    try:
        path = rare_figure(runs, curves, tmp_path / "rare_curves.png")
    finally:
        plt.Axes.plot = orig
    assert path.stat().st_size > 0
    assert len(drawn) == 8  # 4 trials x 2 panels
    styles = {(label, style, color) for style, color, label in drawn if label}
    assert styles == {
        ("process.a.eps=0.0", "o-", "C0"),
        ("process.a.eps=0.0, shuffled-reward null", "o--", "C0"),
        ("process.a.eps=0.001", "o-", "C1"),
        ("process.a.eps=0.001, shuffled-reward null", "o--", "C1"),
    }


def test_the_new_seeds_sweep_is_the_study_but_for_its_name_and_seeds():
    from pathlib import Path

    import yaml

    sweeps = Path(__file__).resolve().parents[1] / "sweeps"
    full = yaml.safe_load((sweeps / "rare.yaml").read_text())
    more = yaml.safe_load((sweeps / "rare_seeds.yaml").read_text())
    assert more["axes"]["grid"].pop("seed") == [5, 6, 7, 8, 9]
    assert not set(full["axes"]["grid"].pop("seed")) & {5, 6, 7, 8, 9}  # independent seeds
    assert more["experiment"] == full["experiment"]  # one MLflow experiment: `report --parent A --parent B` pools them
    for key in ("name", "description"):
        more.pop(key), full.pop(key)
    assert more == full


def test_beyond_the_null_says_no_on_a_task_exchangeable_with_its_null_and_yes_on_a_planted_gain():
    """Task and null drawn alike, per seed either "found B" (0.6) or not (0), as the study's trials fall:
    "above" must come out no more than the t-interval's one-sided 2.5 %, at 5 and at 10 seeds."""
    from rayexp.studies.rare.summary import beyond_null

    rng = np.random.default_rng(5)

    def skill(n, p_found):
        return np.where(rng.random(n) < p_found, 0.6, 0.0) + rng.normal(0, 0.1, n)

    for n in (5, 10):
        readings = [beyond_null(skill(n, 0.5) - skill(n, 0.5)) for _ in range(4000)]
        above = readings.count("above") / len(readings)
        assert above < 0.035, (n, above)  # binomial SD at 0.025: 0.0025
        assert readings.count("below") / len(readings) < 0.035
    found_more = [beyond_null(skill(10, 0.9) - skill(10, 0.1)) for _ in range(1000)]
    assert found_more.count("above") / len(found_more) > 0.9
    assert beyond_null([0.3]) == "not shown" and beyond_null([]) == "not shown"


def test_the_long_sweep_is_the_study_but_for_iterations_exposure_and_seeds():
    from pathlib import Path

    import yaml

    sweeps = Path(__file__).resolve().parents[1] / "sweeps"
    full = yaml.safe_load((sweeps / "rare.yaml").read_text())
    long = yaml.safe_load((sweeps / "rare_long.yaml").read_text())
    assert long["base"]["ppo"].pop("iterations") == 120 and full["base"]["ppo"].pop("iterations") == 40
    assert long["axes"]["grid"] == {"process.a.eps": [0.0], "seed": list(range(10))}
    assert long["experiment"] == full["experiment"]  # pooled with the 40-iteration runs by `report --parent`
    for key in ("name", "description", "axes"):
        long.pop(key), full.pop(key)
    assert long == full  # pretraining, saving every 10, the tasks and the null are the study's


def test_the_exposed_long_sweep_is_the_long_one_but_for_its_exposure():
    from pathlib import Path

    import yaml

    sweeps = Path(__file__).resolve().parents[1] / "sweeps"
    long = yaml.safe_load((sweeps / "rare_long.yaml").read_text())
    exposed = yaml.safe_load((sweeps / "rare_long_exposed.yaml").read_text())
    assert exposed["axes"]["grid"].pop("process.a.eps") == [0.0105] and long["axes"]["grid"].pop("process.a.eps") == [
        0.0
    ]
    for key in ("name", "description"):
        exposed.pop(key), long.pop(key)
    assert exposed == long


def test_the_tracking_sweep_is_the_study_but_for_its_exposed_arms():
    from pathlib import Path

    import yaml

    sweeps = Path(__file__).resolve().parents[1] / "sweeps"
    full = yaml.safe_load((sweeps / "rare.yaml").read_text())
    tracking = yaml.safe_load((sweeps / "rare_tracking.yaml").read_text())
    assert tracking["axes"]["grid"].pop("process.a.eps") == [0.001, 0.0105]
    assert full["axes"]["grid"].pop("process.a.eps") == [0.0, 0.001, 0.0105]
    for key in ("name", "description"):
        tracking.pop(key), full.pop(key)
    assert tracking == full  # seeds 0-4, pretraining, 40 iterations, the tasks and the null: rare.yaml's draws


def test_a_report_of_two_runs_holding_one_seed_is_refused_not_paired_on_one_of_them():
    from types import SimpleNamespace

    from rayexp.console import OneLineError
    from rayexp.studies.rare.report import by_seed, seed_values

    def run(run_id, seed, null, cap):
        metrics = {"analysis/rare/post/capability": cap}
        params = {"process.a.eps": "0.0", "seed": seed, "task.shuffle_reward": str(null)}
        return SimpleNamespace(
            data=SimpleNamespace(metrics=metrics, params=params), info=SimpleNamespace(run_id=run_id)
        )

    first = [run("a1", "0", False, 0.3), run("a2", "0", True, 0.1), run("a3", "1", False, 0.5)]
    task, null = by_seed(first)  # one task and one null per seed: paired
    assert task["all"] == {"0": {"post/capability": 0.3}, "1": {"post/capability": 0.5}}
    assert null["all"] == {"0": {"post/capability": 0.1}}
    rerun = run("b1", "0", False, 0.9)  # the same settings' seed 0 again, from another parent
    with pytest.raises(OneLineError, match=r"all \(task\), seed 0: runs a1 and b1 both hold it") as err:
        by_seed([*first, rerun])  # it kept whichever came last
    assert err.value.code == 2
    tasks = [r for r in first if r.data.params["task.shuffle_reward"] == "False"]
    assert seed_values(tasks)["all"]["post/capability"] == [0.3, 0.5]
    with pytest.raises(OneLineError, match="seed 0: runs a1 and b1"):
        seed_values([*tasks, rerun])  # it counted seed 0 twice
