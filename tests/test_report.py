"""`rayexp report` on a small MLflow store made here: the trial table, and the verdict table and
figure from what the across-trial verdict analysis logged on the parent run."""

import csv
import io

import pyarrow as pa

from rayexp import tracking
from rayexp.report import report


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
