"""`rayexp analyze EXPERIMENT --analysis NAME`: an across-trial analysis over a finished sweep.

The sweep's parent MLflow run names where its trials stored their artifacts (tags
``rayexp.storage`` and ``rayexp.sweep``). Trials are grouped by config fields (``--group-by
task,model.d_model``; ``task`` means the task's name, ``process`` the process label), each group
runs as one Ray task (on a cluster it runs where Ray puts it, next to shared storage), and the
driver logs each group's result to the parent run: metrics ``sweep/{analysis}/{group}/{key}``,
tables ``sweep/{analysis}/{group}__{table}.parquet`` and figures as PNG. Metrics the parent run
already holds are not logged again and artifacts overwrite their own paths, so running the same
analysis twice adds nothing new.

``--pool OTHER`` adds another sweep's finished trials (a replication on new seeds, say) to the
groups. Pooled trials must differ only in their seed: the same (process, task) with another
setting, or a seed both sweeps ran, is refused. The result is logged on the first sweep's parent
run under ``sweep/{analysis}_pooled_{OTHER}/...`` so it never mixes with the sweep's own.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rayexp import registry as analyses
from rayexp import tracking
from rayexp.artifacts import find_trials
from rayexp.config import SweepError
from rayexp.console import OneLineError
from rayexp.ray_local import connect
from rayexp.report import latest_sweep_run
from rayexp.specs import metric_segment, process_label


def group_value(config: dict[str, Any], field: str) -> Any:
    """A trial config's value at a dotted path; ``task`` is the task name, ``process`` its label."""
    if field == "task":
        return config["task"]["name"]
    if field == "process":
        return process_label(config["process"])
    node: Any = config
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(field)
        node = node[part]
    return process_label(node) if isinstance(node, dict) and "name" in node else node


def group_label(values: tuple) -> str:
    """A metric-name-safe label of one group's values (MLflow keys allow [\\w./ :-])."""
    return metric_segment("__".join(str(v) for v in values)) or "all"


def group_trials(trials: list, group_by: list[str]) -> dict[str, list]:
    groups: dict[str, list] = {}
    for t in trials:
        try:
            key = tuple(group_value(t.config, f) for f in group_by)
        except KeyError as err:
            raise SweepError("--group-by", str(err.args[0]), "not a field of the trial config") from None
        groups.setdefault(group_label(key), []).append(t)
    return dict(sorted(groups.items()))


def _run_group(name: str, params: dict[str, Any], trials: list) -> dict[str, Any]:
    """One group's analysis (in a Ray task); figures come back as PNG bytes."""
    import io

    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    spec = analyses.get(name, "sweep")
    result = spec.fn(trials, analyses.validate_params(name, params, scope="sweep"))
    pngs = {}
    for fname, fig in result.figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        pngs[fname] = buf.getvalue()
    return {"metrics": {k: float(v) for k, v in result.metrics.items()}, "tables": result.tables, "figures": pngs}


def _without_seed(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def check_poolable(trials: list) -> None:
    """Refuse a pool of trials that are not one experiment on more seeds (one line, exit 2)."""
    settings: dict[tuple, str] = {}
    seen: set[tuple] = set()
    for t in trials:
        cell = (process_label(t.config["process"]), t.config["task"]["name"])
        key = _without_seed(t.config)
        if settings.setdefault(cell, key) != key:
            raise SweepError(
                "--pool", f"{cell[0]} {cell[1]}", "the pooled sweeps ran it with different settings (not only seeds)"
            )
        seed = (*cell, t.config.get("seed"))
        if seed in seen:
            raise SweepError("--pool", f"{cell[0]} {cell[1]} seed {seed[2]}", "both pooled sweeps ran this seed")
        seen.add(seed)


def of_run(trials: list, keys: set[str]) -> list:
    """The stored trials whose key a sweep run's trial runs logged (``rayexp.trial_key``). A sweep run again
    into the same storage keeps the earlier run's trials beside its own under the same sweep name, and
    an analysis of one run must not read the other's (found when a rerun of composition_cpu into its
    old storage gave the verdict two trials per seed). Without keys (runs logged before the tag): all."""
    return [t for t in trials if t.key in keys] if keys else trials


def sweep_trials(uri: str, experiment: str, parent: str | None = None) -> tuple[Any, list]:
    """(parent run, finished trials) of a sweep."""
    run = parent_run(uri, experiment, parent)
    tags = run.data.tags
    if "rayexp.storage" not in tags:
        raise SweepError(uri, "experiment", f"sweep run {run.info.run_id} does not say where its trials are stored")
    logged = {r.data.tags.get("rayexp.trial_key") for r in tracking.trial_runs_of(uri, run.info.run_id)}
    trials = of_run(find_trials(tags["rayexp.storage"], tags[tracking.SWEEP_TAG]), logged - {None})
    if not trials:
        raise SweepError(tags["rayexp.storage"], tags[tracking.SWEEP_TAG], "no finished trials stored for this sweep")
    return run, trials


def parent_run(uri: str, experiment: str, parent: str | None = None):
    """The sweep's parent run (the latest of the experiment unless ``parent`` names one)."""

    return tracking.client(uri).get_run(parent or latest_sweep_run(uri, experiment))


def sweep_file_entry(run, name: str) -> dict[str, Any] | None:
    """The sweep file's own ``sweep_analyses`` entry for ``name`` (its params and group_by), from the
    parent run's params; None when the file did not list it."""
    try:
        entries = json.loads(run.data.params.get("sweep_analyses", "[]"))
    except ValueError:
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)


def _missing(params, group_by, declared: dict) -> str:
    said = [] if group_by is not None else [f"group_by {declared.get('group_by', ['task'])}"]
    return ", ".join(said + ([] if params is not None else [f"params {declared.get('params', {})}"]))


def run_analysis(
    experiment: str,
    name: str,
    params: dict[str, Any] | None = None,
    group_by: list[str] | None = None,
    parent: str | None = None,
    address: str | None = None,
    file=sys.stdout,
    pool: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Run across-trial analysis ``name`` over a sweep's finished trials (and those of the sweeps in
    ``pool``, latest run of each); returns {group: metrics}."""

    try:
        analyses.get(name, scope="sweep")
    except ValueError as err:  # names the valid ones
        raise SweepError("--analysis", name, str(err)) from None
    uri = tracking.tracking_uri()
    run, trials = sweep_trials(uri, experiment, parent)
    declared = sweep_file_entry(run, name)
    if declared is not None and (params is None or group_by is None):
        print(f"analysis {name!r}: as the sweep file declares it, {_missing(params, group_by, declared)}", file=file)
    params = dict(params if params is not None else (declared or {}).get("params", {}))
    group_by = list(group_by if group_by is not None else (declared or {}).get("group_by", ["task"]))
    try:
        analyses.validate_params(name, params, scope="sweep")
    except ValueError as err:  # pydantic's ValidationError is a ValueError too
        raise SweepError("--params", name, str(err).splitlines()[0]) from None
    log_name = name
    if pool:
        for other in pool:
            trials = trials + sweep_trials(uri, other)[1]
        check_poolable(trials)
        log_name = group_label((f"{name}_pooled_{'_'.join(pool)}",))
    groups = group_trials(trials, group_by)

    import ray

    started = not ray.is_initialized()
    if started:
        connect(address)
    try:
        task = ray.remote(num_cpus=1)(_run_group)
        refs = {g: task.remote(name, params, members) for g, members in groups.items()}
        try:
            results = {g: ray.get(ref) for g, ref in refs.items()}
        except ray.exceptions.RayTaskError as err:  # an analysis's own one-line refusal, without Ray's wrapping
            if isinstance(err.cause, (SweepError, OneLineError)):
                raise err.cause from None
            raise
    finally:
        if started:
            ray.shutdown()
    return _log(uri, run.info.run_id, log_name, params, group_by, results, groups, file, annotate=not pool)


def _log(uri, run_id, name, params, group_by, results, groups, file, annotate=True) -> dict[str, dict[str, float]]:
    import tempfile
    from pathlib import Path

    out = tracking.Run(uri, run_id)
    have = out.metric_keys()
    new = {f"sweep/{name}/{g}/{k}": v for g, r in results.items() for k, v in r["metrics"].items()}
    fresh = {k: v for k, v in new.items() if k not in have}
    if fresh:
        out.log_metrics(fresh, step=0)
    out.set_tags({f"rayexp.sweep_analysis.{name}": json.dumps({"params": params, "group_by": group_by})})
    with tempfile.TemporaryDirectory() as tmp:
        for g, r in results.items():
            for tname, table in r["tables"].items():
                out.log_table(f"{g}__{tname}", table, artifact_dir=f"sweep/{name}")
            for fname, png in r["figures"].items():
                path = Path(tmp) / f"{g}__{fname}.png"
                path.write_bytes(png)
                out.log_artifact(path, f"figures/sweep/{name}")
    for study in analyses.STUDIES.values():  # e.g. the verdict, onto the trial runs it judges
        if annotate and name in study.run_annotations:
            table, columns = study.run_annotations[name]
            rows = [row for r in results.values() if table in r["tables"] for row in r["tables"][table].to_pylist()]
            tracking.annotate_from_table(uri, run_id, name, rows, list(columns))

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    members = ", ".join(f"{g}: {n(len(m), 'trial')}" for g, m in groups.items())
    print(f"analysis {name!r}: {n(len(groups), 'group')} ({members})", file=file)
    print(f"  {n(len(fresh), 'new metric')} on parent run {run_id} ({len(new) - len(fresh)} already there)", file=file)
    return {g: r["metrics"] for g, r in results.items()}
