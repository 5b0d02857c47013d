"""MLflow tracking: one parent run per sweep, one nested run per trial.

Trials run in Ray worker processes, so they log with an ``MlflowClient`` pointed at an explicit
tracking URI rather than through mlflow's process-global active run. A trial's run is found
again by its deterministic ``rayexp.trial_key`` tag, so a retried or resumed trial continues
its run instead of creating a second one.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` with artifacts
in ``<cwd>/mlartifacts``. One SQLite file shared by many processes on one machine works
(MLflow sets a busy timeout); clusters should use a tracking server.

What researchers read first in the UI is the run list and a run's overview, so a trial's name starts
with what tells it apart (:func:`trial_run_name`), and an across-trial result that judges trials (the
verdict) is copied onto them as tags and a description, and onto the parent run as a markdown table
(:func:`annotate_from_table`), instead of living only in metrics and figures folders deep.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rayexp.console import OneLineError

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "rayexp.trial_key"
SWEEP_TAG = "rayexp.sweep"
#: a run's description: the UI shows it on the run's overview (markdown) and in the run list
DESCRIPTION_TAG = "mlflow.note.content"
_RETRIES = 5


def trial_run_name(task: str, seed: Any, process: str) -> str:
    """``{task} s{seed} {process}``, e.g. ``positive_control s3 interleave(mess3,mess3)``.

    MLflow's run list shows about the first 20 characters of a name. Within one sweep the process is
    mostly shared and the task and seed are what differ, so they come first (a name led by the
    process read ``interleave(mess…`` for every trial). Names need not be unique: the run is found
    again by its ``rayexp.trial_key`` tag, and its start time is a column of its own.
    """
    return f"{task} s{seed} {process}"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _default_artifact_location(uri: str) -> str | None:
    """Artifacts next to a local SQLite file; a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """Commit SHA and dirty flag of the working tree (empty where not a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.sha": sha, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": sha}


def client(uri: str):
    from mlflow.tracking import MlflowClient

    try:
        os.getcwd()
    except FileNotFoundError:
        # a reused Ray worker can sit in a deleted directory (an earlier job's working dir), and
        # mlflow resolves its default artifact root against the cwd
        os.chdir(tempfile.gettempdir())

    return MlflowClient(tracking_uri=uri)


def _retry(fn, *args, **kwargs):
    """SQLite under concurrent writers occasionally reports 'database is locked' past its timeout."""
    for attempt in range(_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(err).lower() or attempt == _RETRIES - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    return None


# MLflow 3 opens an experiment on its GenAI overview unless the experiment says it holds training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(uri: str, name: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = c.create_experiment(name, artifact_location=_default_artifact_location(uri), tags=EXPERIMENT_KIND)
        except Exception:
            exp = c.get_experiment_by_name(name)  # created concurrently by another driver
            if exp is None:
                raise
        else:
            return exp_id
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            c.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def start_parent_run(uri: str, exp_id: str, sweep_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    c = client(uri)
    run = c.create_run(
        exp_id,
        run_name=f"{sweep_name}__{time.strftime('%Y%m%d-%H%M%S')}",
        tags={SWEEP_TAG: sweep_name, "rayexp.kind": "sweep", **tags},
    )
    _log_params(c, run.info.run_id, params)
    return run.info.run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _retry(client(uri).set_terminated, run_id, status)


def _log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        _retry(c.log_batch, run_id, params=items[i : i + 100])


def trial_key(parent_run_id: str, trial: dict[str, Any]) -> str:
    blob = json.dumps({"parent": parent_run_id, "trial": trial}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Run:
    """Logging into one existing MLflow run (a trial's, or a sweep's parent run)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.client, self.run_id = uri, client(uri), run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _is_number(v)]
        for i in range(0, len(items), 1000):
            _retry(self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def metric_keys(self) -> set[str]:
        """Names of the metrics this run holds already."""
        return set(_retry(self.client.get_run, self.run_id).data.metrics)

    def last_step(self, key: str) -> int | None:
        """The highest step logged for metric ``key`` in this run (None if never logged)."""
        history = _retry(self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=None)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_table(self, name: str, table, artifact_dir: str = "tables") -> None:
        import pyarrow.parquet as pq

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.parquet"
            pq.write_table(table, path)
            _retry(self.client.log_artifact, self.run_id, str(path), artifact_dir)

    def log_figure(self, name: str, figure, artifact_dir: str = "") -> None:
        """A PNG at ``{artifact_dir}/{name}.png``, by default at the run's artifact root: MLflow's
        compare view lists only the files at the root of each run (its folders are skipped), so a
        trial's figures in a folder made it say "No common artifacts" for any set of trials."""
        import matplotlib.pyplot as plt

        _retry(
            self.client.log_figure, self.run_id, figure, f"{artifact_dir}/{name}.png" if artifact_dir else f"{name}.png"
        )
        plt.close(figure)

    def log_artifact(self, path: str | Path, artifact_dir: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_dir)

    def describe(self, text: str, section: str | None = None) -> None:
        """Set the run's description (markdown); with ``section``, only that block of it (:func:`with_section`)."""
        if section is not None:
            current = _retry(self.client.get_run, self.run_id).data.tags.get(DESCRIPTION_TAG, "")
            text = with_section(current, section, text)
        self.set_tags({DESCRIPTION_TAG: text})

    def finish(self, status: str = "FINISHED") -> None:
        _retry(self.client.set_terminated, self.run_id, status)


class TrialRun(Run):
    """The MLflow run of one trial, created once and found again on retry."""

    def __init__(
        self,
        uri: str,
        exp_id: str,
        parent_run_id: str,
        key: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
    ):
        self.uri, self.client = uri, client(uri)
        found = _retry(
            self.client.search_runs,
            [exp_id],
            filter_string=f"tags.`{TRIAL_KEY_TAG}` = '{key}'",
            max_results=1,
        )
        if found:
            self.run_id = found[0].info.run_id
            self.resumed = True
            _retry(self.client.update_run, self.run_id, status="RUNNING")
        else:
            run = _retry(
                self.client.create_run,
                exp_id,
                run_name=run_name,
                tags={PARENT_TAG: parent_run_id, TRIAL_KEY_TAG: key, "rayexp.kind": "trial", **tags},
            )
            self.run_id = run.info.run_id
            self.resumed = False
            _log_params(self.client, self.run_id, params)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------------
# results on the runs they judge: tags, descriptions, the parent's table


def with_section(description: str, section: str, block: str) -> str:
    """``description`` with its ``section`` block replaced by ``block`` (appended when absent).

    A block is a paragraph led by ``**{section}`` (``**verdict: composition** (...)`` on a trial,
    ``**verdict**`` and a table on the parent) and runs to the next such bold lead or the end, so
    the run list's one-line preview of a trial's description is the verdict itself. What else the
    description holds stays (the parent's starts with the sweep file's own description), and
    writing the same section again replaces it rather than adding one.
    """
    if not block.startswith(f"**{section}"):
        raise ValueError(f"a {section!r} block starts with '**{section}'")
    block = block.strip() + "\n"
    lead = rf"^\*\*{re.escape(section)}(?:\*\*|:)"
    pattern = re.compile(rf"{lead}.*?(?=^\*\*[^\s*]|\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(description):
        return pattern.sub(lambda _: block + "\n", description, count=1).rstrip() + "\n"
    return f"{description.rstrip()}\n\n{block}" if description.strip() else block


def _fmt(value: Any) -> str:
    """A table cell or tag value: numbers to 3 significant digits, the rest as text on one line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return " ".join(str(value).split())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns`` (cells as :func:`_fmt`, pipes escaped)."""

    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def is_null_run(run) -> bool:
    """A trial run of a shuffled-reward null task (its logged ``task.shuffle_reward`` param)."""
    return run.data.params.get("task.shuffle_reward") == "True"


def runs_by_seed(runs: list, what: str) -> dict[str, Any]:
    """{seed: run} of one group's runs of one kind (``what`` names it). Two runs holding one seed (the same
    settings run twice among the reported parents) are refused with one line naming both: a dict would keep
    whichever came last, and pairing by seed would silently read one of them."""
    out: dict[str, Any] = {}
    for r in runs:
        seed = str(r.data.params.get("seed"))
        if seed in out:
            raise OneLineError(
                f"--parent: {what}, seed {seed}: runs {out[seed].info.run_id} and {r.info.run_id} both hold it "
                "(the same settings run twice): report one of them",
                2,
            )
        out[seed] = r
    return out


def trial_runs_of(uri: str, parent_run_id: str) -> list:
    """The trial runs (mlflow.entities.Run) nested under a sweep's parent run."""
    c = client(uri)
    exp_id = _retry(c.get_run, parent_run_id).info.experiment_id
    found, token = [], None
    while True:
        page = _retry(
            c.search_runs,
            [exp_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        found += list(page)
        token = page.token
        if not token:
            return found


def run_tables(runs: list, name: str, uri: str | None = None) -> dict[str, dict[str, list]]:
    """Each run's stored table ``tables/{name}.parquet`` as columns, by run id (the runs must hold it)."""
    import pyarrow.parquet as pq

    if not runs:
        return {}
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per table otherwise
    c = client(uri or tracking_uri())
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            path = _retry(c.download_artifacts, r.info.run_id, f"tables/{name}.parquet", tmp)
            out[r.info.run_id] = pq.read_table(path).to_pydict()
    return out


def annotate_from_table(
    uri: str,
    parent_run_id: str,
    section: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    match: tuple[str, ...] = ("process", "task"),
) -> int:
    """Put an across-trial result where the run list and the overview show it; returns the trial runs set.

    ``rows``: the result's table (e.g. the verdict table's ``to_pylist()``, one row per process and
    task); ``columns``: what to show, the label first (e.g. ``verdict``, then the numbers that decide
    it); ``match``: the columns that pick a trial's row, compared with the trial run's ``rayexp.{column}``
    tags (``rayexp.process``, ``rayexp.task`` and ``rayexp.seed`` are on every trial run). Each trial
    run under the parent whose row is found gets the tag ``rayexp.{section}`` (the label),
    ``rayexp.{section}.{column}`` for the others, and a ``**{section}: ...**`` block in its description;
    the parent's description gets a block with the table. Writing them again replaces them, so
    running the analysis twice changes nothing.
    """
    done = 0
    for run in trial_runs_of(uri, parent_run_id):
        tags = run.data.tags
        row = next((r for r in rows if all(_fmt(r.get(k)) == tags.get(f"rayexp.{k}") for k in match)), None)
        if row is None:
            continue
        label, rest = columns[0], columns[1:]
        target = Run(uri, run.info.run_id)
        target.set_tags(
            {f"rayexp.{section}": _fmt(row.get(label))} | {f"rayexp.{section}.{c}": _fmt(row.get(c)) for c in rest}
        )
        summary = ", ".join(f"{c} {_fmt(row.get(c))}" for c in rest)
        target.describe(f"**{section}: {_fmt(row.get(label))}**" + (f" ({summary})" if summary else ""), section)
        done += 1
    table = markdown_table(rows, list(match) + [c for c in columns if c not in match])
    Run(uri, parent_run_id).describe(f"**{section}**\n\n{table}", section)
    return done
