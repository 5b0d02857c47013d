"""`rayexp report` on a small MLflow store made here: the trial table, and the verdict table and
figure from what the across-trial verdict analysis logged on the parent run."""

import csv
import io

import pyarrow as pa

from rayexp import tracking
from rayexp.report import report
from rayexp.tables import format_table


def test_report_writes_the_verdict_table(workdir):
    uri = tracking.tracking_uri()
    exp = tracking.experiment_id(uri, "small")
    parent = tracking.start_parent_run(uri, exp, "small", {}, {})
    c = tracking.client(uri)
    assert c.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    for task, kappa in (("negative_control", 0.02), ("positive_control", 0.7)):
        for seed in range(2):
            run = tracking.TrialRun(
                uri,
                exp,
                parent,
                f"{task}{seed}",
                f"p__{task}__{seed}",
                {},
                {"rayexp.task": task, "rayexp.process": "interleave(mess3,mess3)", "rayexp.seed": str(seed)},
            )
            run.log_metrics({"analysis/composition/composed/post": kappa + 0.01 * seed}, step=0)
            run.finish()
        row = {
            "process": ["interleave(mess3,mess3)"],
            "task": [task],
            "n_seeds": [2],
            "score": [kappa],
            "score_ci_low": [kappa - 0.01],
            "score_ci_high": [kappa + 0.01],
            "verdict": ["composition" if kappa > 0.1 else "reweighting"],
            "reason": ["..."],
            "kappa_post": [kappa],
        }
        tracking.Run(uri, parent).log_table(f"g_{task}__verdict", pa.table(row), artifact_dir="sweep/verdict")
    buf = io.StringIO()
    assert report("small", out_dir=str(workdir / "rep"), file=buf) == 0
    out = buf.getvalue()
    assert "positive_control" in out and "composition" in out and "reweighting" in out
    with open(workdir / "rep" / "verdict.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["negative_control", "positive_control"]
    need = ["process", "task", "n_seeds", "score", "score_ci_low", "score_ci_high", "verdict"]
    assert list(rows[0])[: len(need)] == need and "kappa_post" in rows[0]
    assert (workdir / "rep" / "verdict_signals.png").stat().st_size > 0
    assert (workdir / "rep" / "report.csv").exists()


def test_study_summaries_from_metrics(tmp_path):
    from types import SimpleNamespace

    from rayexp.registry import STUDIES
    from rayexp.studies.objective.report import objective_rows
    from rayexp.studies.welfare.report import welfare_rows
    from rayexp.study import ReportInput

    cv = "analysis/concept_vectors/"
    h = "blocks.1.hook_resid_post"

    def run(cos_post):
        m = {f"{cv}cos/{model}/{h}": v for model, v in (("random_init", 0.5), ("pre", -0.2), ("post", cos_post))}
        m |= {f"{cv}null/post/{h}/q025": 0.1, f"{cv}null/post/{h}/q975": 0.7, f"{cv}steer/post/v_P/punish_slope": 0.03}
        m |= {f"{cv}align_random/{h}/P": 0.4, f"{cv}split_half/pre/{h}/P": 0.98, f"{cv}split_half/post/{h}/P": 1.0}
        return SimpleNamespace(data=SimpleNamespace(metrics=m, params={}))

    layers, steering = welfare_rows([run(-0.9), run(-0.7), SimpleNamespace(data=SimpleNamespace(metrics={}))])
    assert layers == [
        {
            "hook": h,
            "cos random_init": "+0.500 [+0.500, +0.500]",
            "cos pre": "-0.200 [-0.200, -0.200]",
            "cos post": "-0.800 [-0.900, -0.700]",
            "null post (95%)": "[+0.10, +0.70]",
            "align P pre/post": "-",
            "align P pre/random move": "+0.400 [+0.400, +0.400]",
            "split-half P pre / post": "+0.980 [+0.980, +0.980] / +1.000 [+1.000, +1.000]",
        }
    ]
    assert steering[4] == {
        "model": "post",
        "vector": "v_P",
        "d P(punished)/d alpha": "+0.030 [+0.030, +0.030]",
        "d reward/d alpha": "-",
    }
    tv = "sweep/task_vectors/all/"
    parent = {
        tv + "classifier/accuracy": 0.8,
        tv + "classifier/module/embed/accuracy": 0.4,
        tv + "cos/null/mean": 0.2,
        tv + "cos/null/ci_low": 0.1,
        tv + "cos/null/ci_high": 0.3,
        tv + "cos/null/n": 3.0,
        tv + "negation/anti/lam0/lean_B/mean": 0.0,
    }
    assert objective_rows(parent) == [
        {"group": "all", "metric": "classifier/accuracy", "value": 0.8, "95% CI": ""},
        {"group": "all", "metric": "cos/null/mean", "value": 0.2, "95% CI": "[+0.100, +0.300]"},
    ]
    import io

    buf = io.StringIO()
    inp = ReportInput("sqlite:///unused.db", "parent", [run(-0.9)], parent, tmp_path, buf)
    for name in ("welfare", "objective"):  # the sections `rayexp report` prints for these studies
        STUDIES[name].report(inp)
    assert (tmp_path / "concept_layers.png").exists() and (tmp_path / "task_vectors.csv").exists()
    assert "welfare" in buf.getvalue() and "objectives" in buf.getvalue()


def test_welfare_rotation_pairs_rl_with_its_random_move_and_its_shuffled_null_by_seed(tmp_path):
    import io
    from types import SimpleNamespace

    from rayexp.registry import STUDIES
    from rayexp.stats import t_ci
    from rayexp.studies.welfare.report import rotation_rows
    from rayexp.study import ReportInput

    cv, h = "analysis/concept_vectors/", "blocks.1.hook_resid_post"

    def run(seed, align, null=False):
        m = {f"{cv}align/{h}/R": align, f"{cv}align/{h}/P": align + 0.1, f"{cv}align_random/{h}/R": 0.5}
        m |= {f"{cv}align_random/{h}/P": 0.5, f"{cv}split_half/post/{h}/R": 0.99, f"{cv}split_half/post/{h}/P": 0.98}
        m |= {f"{cv}cos/{model}/{h}": -0.5 if null else 0.3 for model in ("random_init", "pre", "post")}
        params = {"seed": str(seed), "task.shuffle_reward": str(null)}
        return SimpleNamespace(data=SimpleNamespace(metrics=m, params=params))

    task = [run(0, 0.0), run(1, 0.2), run(2, 0.1)]
    null = [run(2, 0.6, True), run(0, 0.3, True), run(7, 0.9, True)]  # seed 7 has no task trial to pair with
    rows = rotation_rows(task, null)
    assert [(r["hook"], r["vector"]) for r in rows] == [(h, "v_R"), (h, "v_P")]
    r = rows[0]
    m, lo, hi = t_ci([0.0 - 0.5, 0.2 - 0.5, 0.1 - 0.5])
    assert r["RL - random"] == f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" and r["RL cos(pre, post)"].startswith("+0.10 ")
    m, lo, hi = t_ci([0.0 - 0.3, 0.1 - 0.6])  # seeds 0 and 2, each with its own null
    assert r["RL - null"] == f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" and r["seeds paired"] == 2
    assert r["null cos(pre, post)"].startswith("+0.45 ") and r["split-half post"].startswith("+0.99 ")
    assert "RL - null" not in rotation_rows(task)[0]  # without a null, no null columns
    # the report's other tables read the task's trials only: the nulls' cosines would move them
    buf = io.StringIO()
    STUDIES["welfare"].report(ReportInput("sqlite:///unused.db", "parent", task + null, {}, tmp_path, buf))
    assert "RL - null" in buf.getvalue() and (tmp_path / "rotation.csv").exists()
    import csv

    with open(tmp_path / "rotation.csv") as f:
        assert [row["RL - null"] for row in csv.DictReader(f)] == [rows[0]["RL - null"], rows[1]["RL - null"]]
    with open(tmp_path / "concept_layers.csv") as f:
        assert next(csv.DictReader(f))["cos post"] == "+0.300 [+0.300, +0.300]"


def test_rare_summary_groups_by_what_varies_besides_the_seed():
    from types import SimpleNamespace

    from rayexp.studies.rare.report import rare_rows

    def run(rid, eps, seed, trig):
        metrics = {"analysis/rare/post/trigger_rate": trig, "analysis/rare/post/reward": trig / 2}
        return SimpleNamespace(
            info=SimpleNamespace(run_id=rid),
            data=SimpleNamespace(metrics=metrics, params={"process.a.eps": eps, "seed": seed, "model.n_layers": "4"}),
        )

    runs = [run("a", "0.0", "0", 0.2), run("b", "0.0", "1", 0.4), run("c", "0.01", "0", 0.5)]
    curves = {rid: {"iteration": [0, 10], "trigger_rate": [0.0, v]} for rid, v in (("a", 0.1), ("b", 0.3), ("c", 0.5))}
    rows = rare_rows(runs, curves)
    assert [r["group"] for r in rows] == ["process.a.eps=0.0", "process.a.eps=0.01"]
    assert rows[0]["seeds"] == 2 and rows[0]["trigger rate post"] == "+0.300 [+0.200, +0.400]"
    assert rows[0]["trigger rate at iterations 0/10"] == "0.00/0.20"
    assert rows[1]["reward post"] == "+0.250 [+0.250, +0.250]"


def test_a_wide_table_fits_120_columns_and_keeps_every_value():
    reason = "1 seed: intervals over held-out contexts, not seeds; a map of p_pre leaves 0.08 [0.07, 0.08] unexplained"
    rows = [
        {"process": "interleave(mess3,mess3)", "task": task, **{f"metric_{i:02d}": 0.123456 * i for i in range(14)}}
        | {"reason": f"{task}: {reason}"}
        for task in ("negative_control", "positive_control")
    ]
    text = format_table(rows)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120, text
    headers = [line for line in lines if line.startswith("process")]
    assert len(headers) >= 2  # split into blocks, each repeating the first two columns
    assert all("task" in h for h in headers)
    for i in range(14):
        assert f"metric_{i:02d}" in text and f"{0.123456 * i:.4g}" in text
    assert "[1]" in text and "[2]" in text
    notes = " ".join(line.strip() for line in lines if line.startswith(("[", "    ")))
    assert f"[2] reason: positive_control: {reason}" in notes
    assert format_table(rows[:1], width=10**6).count("\n") == 4  # header, rule, row, blank, note


def test_report_of_two_sweeps_pairs_an_arm_run_later_with_the_first(workdir):
    """`rayexp report EXP --parent A --parent B`: the controls of one sweep and a null arm run later
    (sweeps/development_null.yaml) reported together, the development section pairing them by seed."""
    uri = tracking.tracking_uri()
    exp = tracking.experiment_id(uri, "dev")
    arms = {"controls": {"positive_control": (470.0, 525.0, 512.0)}, "null": {"shuffled_null": (256.0, 269.0, 347.0)}}
    parents = {}
    for sweep, tasks in arms.items():
        parents[sweep] = tracking.start_parent_run(uri, exp, sweep, {}, {})
        for task, ends in tasks.items():
            for seed, end in enumerate(ends):
                run = tracking.TrialRun(
                    uri,
                    exp,
                    parents[sweep],
                    f"{task}{seed}",
                    f"p__{task}__{seed}",
                    {"seed": seed, "task.shuffle_reward": task == "shuffled_null"},
                    {"rayexp.task": task, "rayexp.process": "interleave(mess3,mess3)", "rayexp.seed": str(seed)},
                )
                run.log_metrics({"analysis/llc/seconds_per_estimate": 1.0}, step=0)
                rows = {"iteration": [0, 40], "llc_mean": [140.0 + seed, end], "healthy": [True, True]}
                run.log_table("llc_rl", pa.table({**rows, "reward": [0.3, 0.4]}))
                run.finish()
    one = io.StringIO()
    assert report("dev", out_dir=str(workdir / "one"), parent=parents["null"], file=one) == 0
    assert "3 trials" in one.getvalue() and "shuffled_null (null)" in one.getvalue()
    assert "iteration-0 LLC" not in one.getvalue()  # one arm per seed: nothing to check
    both = io.StringIO()
    assert report("dev", out_dir=str(workdir / "both"), parent=[parents["controls"], parents["null"]], file=both) == 0
    out = both.getvalue()
    assert f"sweep runs {parents['controls']}, {parents['null']}, 6 trials" in out
    assert "is one number across the arms of each seed" in out
    with open(workdir / "both" / "development_growth.csv") as f:
        growth = {r["task"]: r for r in csv.DictReader(f)}
    assert growth["positive_control"]["moved beyond the null"] == "yes" and growth["positive_control"]["pairs"] == "3"
    assert (workdir / "both" / "development_llc_rl.png").stat().st_size > 0
    # and what `rayexp run` prints after each sweep: its own arms, here the null alone
    from rayexp.studies.development.report import after_sweep
    from rayexp.study import ReportInput

    after = io.StringIO()
    after_sweep(ReportInput(uri, parents["controls"], [], file=after))
    assert "LLC growth" in after.getvalue() and "positive_control" in after.getvalue()
    assert "shuffled_null" not in after.getvalue() and "no null" in after.getvalue()
