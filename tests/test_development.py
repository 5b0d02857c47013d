"""The development study's growth maths (how far PPO moved the LLC, against the shuffled null, paired by
seed), its report section on stand-in runs, and the null-arm sweep file kept equal to the study's."""

import math
import types
from pathlib import Path

import pytest
import yaml

from rayexp.studies.development import report
from rayexp.studies.development.growth import matched_ratio, paired_growth, rl_growth

ROOT = Path(__file__).resolve().parents[1]


def _rows(llc, healthy, reward=None, iterations=None):
    n = len(llc)
    return {
        "iteration": iterations or [5 * i for i in range(n)],
        "llc_mean": llc,
        "healthy": healthy,
        "reward": reward or [0.1 * i for i in range(n)],
    }


def test_growth_is_the_last_healthy_estimate_over_the_start():
    g = rl_growth(_rows([100.0, 150.0, 300.0, 900.0], [True, True, True, False]))
    assert g["start"] == 100.0 and g["last"] == 300.0 and g["last_iteration"] == 10.0
    assert g["growth"] == pytest.approx(3.0)
    assert g["healthy"] == 2 and g["estimates"] == 3
    assert g["reward_start"] == 0.0 and g["reward_final"] == pytest.approx(0.3)
    # rows in any order: the start is iteration 0, not the first row
    shuffled = rl_growth(_rows([300.0, 100.0, 150.0], [True, True, True], iterations=[10, 0, 5]))
    assert shuffled["start"] == 100.0 and shuffled["last"] == 300.0 and shuffled["last_iteration"] == 10


def test_growth_is_nan_without_a_healthy_start_or_a_healthy_later_estimate():
    assert math.isnan(rl_growth(_rows([100.0, 150.0], [False, True]))["growth"])
    g = rl_growth(_rows([100.0, 150.0, 170.0], [True, False, False]))
    assert math.isnan(g["growth"]) and math.isnan(g["last"]) and g["healthy"] == 0
    with pytest.raises(ValueError, match="iteration 0"):
        rl_growth(_rows([100.0, 150.0], [True, True], iterations=[5, 10]))


def test_a_task_is_compared_with_its_null_at_the_same_iteration():
    # the task's late estimates diverge (a sharpened policy): compared at 10, the last both are healthy
    task = _rows([100.0, 150.0, 200.0, 900.0], [True, True, True, False], iterations=[0, 5, 10, 15])
    null = _rows([100.0, 120.0, 125.0, 300.0], [True, True, True, True], iterations=[0, 5, 10, 15])
    m = matched_ratio(task, null)
    assert m["iteration"] == 10 and m["ratio"] == pytest.approx((200 / 100) / (125 / 100))
    # each against its own start
    m = matched_ratio(_rows([50.0, 100.0], [True, True]), _rows([100.0, 150.0], [True, True]))
    assert m["ratio"] == pytest.approx(2.0 / 1.5) and m["iteration"] == 5
    # no healthy iteration in common, or an unhealthy start: no ratio
    assert math.isnan(matched_ratio(_rows([1.0, 2.0], [True, False]), _rows([1.0, 2.0], [True, True]))["ratio"])
    assert math.isnan(matched_ratio(_rows([1.0, 2.0], [False, True]), _rows([1.0, 2.0], [True, True]))["ratio"])


def test_paired_growth_against_the_null():
    ratios = {0: 3.3 / 1.1, 1: 3.7 / 1.2, 2: 3.65 / 1.05}
    p = paired_growth(ratios)
    logs = [math.log(r) for r in ratios.values()]
    assert p["ratio"] == pytest.approx(math.exp(sum(logs) / 3))
    assert 1 < p["low"] < p["ratio"] < p["high"] and p["above"] == 1.0 and p["seeds"] == 3
    assert p["p"] == pytest.approx(0.25)  # every log above 0: the sign-flip floor with 3 seeds
    # the same growth as the null, up to noise: not above
    same = paired_growth({0: 1.2 / 1.1, 1: 1.0 / 1.15, 2: 1.1 / 1.05})
    assert same["low"] < 1 < same["high"] and same["above"] == 0.0 and same["p"] > 0.5
    # non-finite ratios are left out; one seed gives no interval
    one = paired_growth({0: 2.0, 1: math.nan})
    assert one["ratio"] == pytest.approx(2.0) and math.isnan(one["low"]) and math.isnan(one["above"])
    assert math.isnan(one["p"])


def _run(task, seed, null=False):
    return types.SimpleNamespace(
        info=types.SimpleNamespace(run_id=f"{task}{seed}"),
        data=types.SimpleNamespace(
            tags={"rayexp.process": "p", "rayexp.task": task},
            params={"seed": str(seed), "task.shuffle_reward": str(null)},
            metrics={"analysis/llc/seconds_per_estimate": 1.0},
        ),
    )


def test_report_rows_pair_each_task_with_the_null_by_seed(tmp_path):
    starts = {0: 140.0, 1: 142.0, 2: 141.0}
    ends = {"positive": (470, 525, 512), "negative": (190, 193, 174), "shuffled_null": (150, 170, 160)}
    runs, tables = [], {}
    for task, finals in ends.items():
        for seed, end in enumerate(finals):
            run = _run(task, seed, null=task == "shuffled_null")
            runs.append(run)
            tables[run.info.run_id] = _rows([starts[seed], end], [True, True])
    trials = report.trial_rows(runs, tables)
    assert [t["task"] for t in trials][-3:] == ["shuffled_null"] * 3  # the null last
    assert "is one number" in report.start_check(trials) and not report.repeated(trials)
    rows = {r["task"]: r for r in report.growth_rows(trials, tables)}
    assert rows["positive"]["moved beyond the null"] == "yes" and rows["positive"]["iterations compared"] == "5/5/5"
    assert (
        rows["negative"]["moved beyond the null"] == "not shown"
    )  # 1.23-1.36 against the null's 1.07-1.20: CI spans 1
    assert rows["shuffled_null (null)"]["vs null at the same iteration (ratio [95% CI])"] == "-"
    assert rows["positive"]["pairs"] == "3"
    # the two tasks against each other: positive's growth over negative's, seed by seed
    (pair,) = report.between_tasks(trials, tables)
    assert pair["growth of / over"] == "negative / positive" and pair["differ"] == "yes" and pair["pairs"] == "3"
    want = math.exp(
        sum(math.log((n / s_) / (p / s_)) for n, p, s_ in zip(ends["negative"], ends["positive"], starts.values())) / 3
    )
    assert pair["ratio [95% CI]"].startswith(f"{want:.2f} [")
    # a seed whose arms start from different numbers: not one pretrained model, said so
    tables["positive1"] = _rows([150.0, 525.0], [True, True])
    assert "DIFFERS" in report.start_check(report.trial_rows(runs, tables))
    tables["positive1"] = _rows([142.0 * (1 + 1e-9), 525.0], [True, True])  # float noise is one number
    assert "is one number" in report.start_check(report.trial_rows(runs, tables))
    tables["positive1"] = _rows([math.nan, 525.0], [False, True])
    assert "missing" in report.start_check(report.trial_rows(runs, tables))
    # one arm per seed: nothing to check, and no null to pair with
    alone = [r for r in runs if r.data.tags["rayexp.task"] == "positive"]
    assert report.start_check(report.trial_rows(alone, tables)) is None
    no_null = report.growth_rows(report.trial_rows(alone, tables), tables)
    assert no_null[0]["moved beyond the null"] == "no null"
    assert report.llc_rl_figure(runs, tables, tmp_path / "f.png").stat().st_size > 0


def test_seeds_count_those_the_growth_rests_on():
    runs, tables = [], {}
    for task in ("positive", "shuffled_null"):
        for seed in range(3):
            run = _run(task, seed, null=task == "shuffled_null")
            runs.append(run)
            # seed 2's positive control has no healthy start (redraw seed 3): no growth, no ratio
            start_ok = not (task == "positive" and seed == 2)
            tables[run.info.run_id] = _rows([140.0, 400.0 + seed], [start_ok, True])
    rows = {r["task"]: r for r in report.growth_rows(report.trial_rows(runs, tables), tables)}
    pos = rows["positive"]
    assert pos["seeds"] == 2 and pos["pairs"] == "2"  # 3 trials, 2 with a growth
    assert pos["growth"].startswith(f"{(400 + 401) / 2 / 140:.2f} [")
    assert rows["shuffled_null (null)"]["seeds"] == 3


def test_an_arm_in_two_sweeps_is_named_and_counted_once():
    tables = {}
    runs = []
    for i, (task, end) in enumerate((("positive", 470.0), ("positive", 300.0), ("shuffled_null", 250.0))):
        run = _run(task, 0, null=task == "shuffled_null")
        run.info.run_id = f"r{i}"
        runs.append(run)
        tables[run.info.run_id] = _rows([140.0, end], [True, True])
    trials = report.trial_rows(runs, tables)
    assert report.repeated(trials) == ["positive seed 0 (p) x2"]
    (pos, _) = report.growth_rows(trials, tables)
    assert pos["seeds"] == 1 and pos["growth"].startswith(f"{470 / 140:.2f}")  # the first sweep's


def _sweep(name: str) -> dict:
    return yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text())


def _drop_pretraining_estimates(sweep: dict) -> None:
    """Pops the llc analysis's ``pretraining: false``: an arm added to a study estimates its PPO checkpoints only."""
    llc = next(a for a in sweep["base"]["analyses"] if isinstance(a, dict) and a["name"] == "llc")
    assert llc["params"].pop("pretraining") is False


def _equal_but_names(a: dict, b: dict) -> bool:
    """The two sweep files say the same but for their name and description."""
    return {k: v for k, v in a.items() if k not in ("name", "description")} == {
        k: v for k, v in b.items() if k not in ("name", "description")
    }


def test_the_null_arm_sweep_is_the_study_but_for_its_tasks_and_pretraining():
    full = _sweep("development")
    null = _sweep("development_null")
    assert null["experiment"] == full["experiment"]
    assert null.pop("tasks") == [t for t in full.pop("tasks") if t.get("shuffle_reward")]
    _drop_pretraining_estimates(null)
    assert _equal_but_names(null, full)


def test_the_new_seeds_sweep_is_the_study_but_for_its_seeds_and_pretraining():
    full = _sweep("development")
    more = _sweep("development_seeds")
    assert more["axes"].pop("grid") == {"seed": [3, 4]}
    assert not set(full["axes"].pop("grid")["seed"]) & {3, 4}  # independent seeds
    _drop_pretraining_estimates(more)
    assert _equal_but_names(more, full)


def test_the_pretraining_sweep_is_the_study_but_for_its_task_ppo_and_analyses():
    full = _sweep("development")
    pre = _sweep("development_pretrain")
    assert pre["experiment"] != full["experiment"]  # its one-iteration trials never enter the study's report
    assert pre["tasks"] == full["tasks"][:1]
    assert [a["name"] for a in pre["base"]["analyses"]] == ["llc"]
    assert pre["base"]["analyses"][0] == next(a for a in full["base"]["analyses"] if a["name"] == "llc")
    assert pre["base"]["ppo"].pop("iterations") == 1 and pre["base"]["ppo"].pop("save_every") == 1
    for f in (pre, full):
        for key in ("name", "description", "experiment", "tasks"):
            f.pop(key)
        f["base"].pop("analyses")
        f["base"]["ppo"].pop("iterations", None), f["base"]["ppo"].pop("save_every", None)
    assert pre == full  # pretraining, model, process, seeds and the SGLD setting are the study's


def test_the_redraw_sweep_is_the_study_but_for_its_tasks_seeds_and_pretraining():
    full = _sweep("development")
    redraw = _sweep("development_redraw")
    assert redraw.pop("experiment") != full.pop("experiment")  # its report pairs its own trials only
    assert redraw.pop("tasks") == [t for t in full.pop("tasks") if t["reward"] == "joint_target"]
    assert redraw["axes"].pop("grid") == {"seed": [0, 1, 2, 3, 4]}
    full["axes"].pop("grid")
    _drop_pretraining_estimates(redraw)
    assert _equal_but_names(redraw, full)


def test_the_redraws_negative_arm_is_the_redraw_but_for_its_task():
    redraw = _sweep("development_redraw")
    negative = _sweep("development_redraw_negative")
    full = _sweep("development")
    assert negative.pop("tasks") == [t for t in full["tasks"] if t["reward"] == "next_token"]
    redraw.pop("tasks")
    assert _equal_but_names(negative, redraw)  # the same experiment, seeds, pretraining and SGLD setting
