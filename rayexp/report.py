"""`rayexp report EXPERIMENT`: compare a sweep's trials from what MLflow holds.

Prints one row per trial run (task, process, seed, key metrics), writes it as ``report.csv`` and
draws the comparison figures people ask for first: probe skill before vs after RL per trial, and
the PPO reward curves, into ``--out``. Figures of single trials stay in each run's artifacts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rayexp import machine, tracking
from rayexp.config import SweepError
from rayexp.registry import STUDIES
from rayexp.registry import SUMMARY_COLUMNS as KEY_METRICS
from rayexp.study import ReportInput
from rayexp.tables import format_table, write_csv


def _experiment(uri: str, experiment: str):
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        raise SweepError(uri, "", "no MLflow database here; run a sweep first or set MLFLOW_TRACKING_URI")
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in c.search_experiments()]
        raise SweepError(uri, "experiment", f"no MLflow experiment {experiment!r}; found {names}")
    return c, exp


def latest_sweep_run(uri: str, experiment: str) -> str:
    """Run id of the experiment's most recent sweep (parent) run."""
    c, exp = _experiment(uri, experiment)
    sweeps = c.search_runs(
        [exp.experiment_id],
        filter_string="tags.`rayexp.kind` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not sweeps:
        raise SweepError(uri, "experiment", f"experiment {experiment!r} holds no rayexp sweep run")
    return sweeps[0].info.run_id


def trial_rows(uri: str, experiment: str, parent: str | None = None) -> tuple[str, list[dict], list]:
    c, exp = _experiment(uri, experiment)
    parent = parent or latest_sweep_run(uri, experiment)
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    rows = []
    for run in runs:
        tags, m = run.data.tags, run.data.metrics
        task = tags.get("rayexp.task", "?")
        row = {
            "run": run.info.run_name,
            "task": task,
            "process": tags.get("rayexp.process"),
            "seed": tags.get("rayexp.seed"),
            "status": run.info.status,
        }
        for key, label in KEY_METRICS:
            row[label] = m.get(key.format(task=task))
        rows.append(row)
    return parent, rows, runs


def _figures(uri: str, rows: list[dict], runs: list, out: Path) -> list[Path]:
    import numpy as np

    from rayexp import figures  # matplotlib

    labels = [f"{r['task']}\nseed {r['seed']}" for r in rows]

    def skill(run, phase: str) -> float:
        return run.data.metrics.get(f"probe/{phase}/belief/concat_resid/skill", np.nan)

    pre = np.array([skill(run, "pre") for run in runs], dtype=float)
    post = np.array([skill(run, "post") for run in runs], dtype=float)
    ylabel = "joint-belief probe skill\n(all layers, pretraining process)"
    written = [
        figures.save_png(figures.skill_pre_post(labels, pre, post, ylabel), out / "probe_skill_pre_post.png", 120)
    ]

    c = tracking.client(uri)
    series = []
    for run, row in zip(runs, rows):
        hist = sorted(c.get_metric_history(run.info.run_id, "ppo/reward_per_step"), key=lambda h: h.step)
        if hist:
            series.append((row["run"], [h.step for h in hist], [h.value for h in hist]))
    written.append(figures.save_png(figures.reward_curves(series), out / "ppo_reward.png", 120))
    return written


def report(experiment: str, out_dir: str | None = None, parent: str | list[str] | None = None, file=sys.stdout) -> int:
    """``parent``: one sweep run id, several (their trials reported together; the first is the sweep
    whose own results study sections read), or None for the latest sweep."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per table otherwise
    uri = tracking.tracking_uri()
    parents = [parent] if parent is None or isinstance(parent, str) else list(dict.fromkeys(parent)) or [None]
    rows, runs = [], []
    for i, one in enumerate(parents):
        found, more_rows, more_runs = trial_rows(uri, experiment, one)
        parents[i] = found
        rows, runs = rows + more_rows, runs + more_runs
    parent = parents[0]
    sweeps = f"sweep run {parent}" if len(parents) == 1 else f"sweep runs {', '.join(parents)}"
    print(f"experiment {experiment!r}, {sweeps}, {len(rows)} trials ({uri})", file=file)
    for line in machine.summary([run.data.tags for run in runs]):
        print(line, file=file)
    print(format_table(rows), file=file)
    out = Path(out_dir or f"report_{experiment}")
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        write_csv(rows, out / "report.csv")
        for path in _figures(uri, rows, runs, out):
            print(f"figure: {path}", file=file)
    print(f"table: {out / 'report.csv'}", file=file)
    inp = ReportInput(uri, parent, runs, tracking.client(uri).get_run(parent).data.metrics, out, file)
    for study in STUDIES.values():  # each study prints its own section, if its analyses ran
        if study.report is not None:
            study.report(inp)
    return 0
