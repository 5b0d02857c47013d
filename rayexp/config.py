"""Sweep files: YAML -> validated pydantic models (rayexp.settings) -> resolved trials, before Ray starts.

A sweep file holds one base trial, the tasks (one Tune trial per task and grid point), the
axes to vary, resources per trial, where results live, the MLflow experiment name and the
across-trial analyses. Each section's fields are declared once, in :mod:`rayexp.settings` and
:mod:`models.config`; this module reads a file, expands its axes, checks every trial once
(:mod:`rayexp.checks`: what spans sections) and resolves it (:mod:`rayexp.resolved`), mapping each
problem back to where the file wrote it. Nothing here imports torch or RLlib.

`load_sweep(path)` raises `SweepError` whose message is ONE line:
``FILE: FIELD.PATH: what is wrong``. The file is read through :mod:`rayexp.safe_yaml` (UTF-8, size,
depth, alias expansion and repeated keys capped); a sweep has at most
:data:`~rayexp.axes.MAX_TRIALS` trials, counted before any is built.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from rayexp import safe_yaml
from rayexp.axes import MAX_TRIALS
from rayexp.checks import (
    check_analyses,
    check_lr,
    check_memory,
    check_placement,
    check_process,
    check_storage,
    check_trial,
    memory_budget_gb,
    trial_bundles,
)
from rayexp.registry import get as get_analysis
from rayexp.resolved import FieldError, ResolvedTrial, first_error, resolve
from rayexp.settings import (
    SweepConfig,
    TrialConfig,
)

#: episodes stored when an analysis needs rollouts and the sweep file asks for fewer
MIN_ROLLOUTS = 256


class SweepError(ValueError):
    """A sweep file problem: `str(err)` is one line ``file: field.path: message``."""

    def __init__(self, file: str, path: str, message: str):
        self.file, self.path = file, path
        self.message = " ".join(str(message).split())
        super().__init__(f"{file}: {path}: {self.message}" if path else f"{file}: {self.message}")


# ---------------------------------------------------------------------------------------------
# Resolving trials


def set_path(config: dict, dotted: str, value: Any) -> None:
    """Set `config["a"]["b"] = value` for dotted "a.b", creating dicts on the way."""
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted}: {key} is not a mapping")  # noqa: TRY004  (reported as bad input)
    node[leaf] = value


def resolve_trial(base: dict, task: dict, overrides: dict[str, Any]) -> TrialConfig:
    """Base trial dict + axis values + task -> validated TrialConfig (pydantic checks only)."""
    raw = copy.deepcopy(base)
    for dotted, value in overrides.items():
        set_path(raw, dotted, copy.deepcopy(value))
    raw["task"] = task
    return TrialConfig.model_validate(raw)


def grid_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of grid axes (sampled axes excluded), as {dotted: value}."""
    keys = list(sweep.axes.grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep.axes.grid[k] for k in keys))]


def _check_count(sweep: SweepConfig, file: str, repeats: list[int], what: str) -> None:
    """Refuse more than MAX_TRIALS rows from the axes' sizes alone, before a single row is built."""
    sizes = [len(v) for v in sweep.axes.grid.values()] + [r for r in repeats if r != 1] + [len(sweep.tasks)]
    if math.prod(sizes) > MAX_TRIALS:
        raise SweepError(
            file,
            "axes",
            f"{' x '.join(map(str, sizes))} = {math.prod(sizes):_} {what} exceed the cap of {MAX_TRIALS:_}",
        )


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}; lists become JSON so MLflow params stay one value each."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not config and prefix:
            out[prefix[:-1]] = "{}"
    elif isinstance(config, (list, tuple)):
        out[prefix[:-1]] = json.dumps(config)
    else:
        out[prefix[:-1]] = config
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _where(path: str, overrides: dict[str, Any], sweep: SweepConfig, task_index: int) -> str:
    """Map a trial-relative field path to where the user wrote it in the file."""
    if path.startswith("task"):
        return f"tasks[{task_index}]{path[len('task') :]}"
    for dotted, value in overrides.items():
        if path == dotted or path.startswith((dotted + ".", dotted + "[")):
            if dotted in sweep.axes.grid:
                # the override is the axis's own object: identity also finds a nan, which equals nothing
                i = next(i for i, v in enumerate(sweep.axes.grid[dotted]) if v is value or v == value)
                return f"axes.grid.{dotted}[{i}]{path[len(dotted) :]}"
            return f"axes.sample.{dotted}{path[len(dotted) :]}"
    return f"base.{path}"


def config_values(trial: TrialConfig) -> dict[str, Any]:
    """The trial's config with every section's effective values (defaults included), as group_by reads it."""
    values = trial.model_dump()
    for section in ("model", "pretrain", "ppo"):
        values[section] = getattr(trial, section).model_dump()
    return values


def _has_path(values: Any, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def _check_sweep_analyses(sweep: SweepConfig, trials: list[TrialConfig]) -> None:
    check_analyses(sweep.sweep_analyses, "sweep", "sweep_analyses")
    values = [config_values(t) for t in trials]
    for i, ref in enumerate(sweep.sweep_analyses):
        for j, key in enumerate(ref.group_by):
            if not any(_has_path(v, key) for v in values):
                raise FieldError(
                    f"sweep_analyses[{i}].group_by[{j}]",
                    f"{key!r} is not a trial config path; e.g. task, seed, process, model.d_model, task.reward",
                )


@dataclass(frozen=True)
class Point:
    """One trial of a sweep: its axis values (for labels) and its resolved trial."""

    axes: dict[str, Any]
    trial: ResolvedTrial


def _rollouts(trial: TrialConfig) -> int:
    """Episodes of the final policy to store: ``artifacts.rollouts``, raised when an analysis needs them."""
    needed = any("rollouts" in get_analysis(a.name, "trial").needs for a in trial.analyses)
    return max(trial.artifacts.rollouts, MIN_ROLLOUTS if needed else 0)


def _resolve_points(sweep: SweepConfig, file: str, overrides_list: list[dict[str, Any]]) -> list[Point]:
    """Resolve and check every (axis values x task): the one place a trial is derived and checked."""
    base = sweep.base.model_dump()
    try:
        budget = memory_budget_gb()
    except FieldError as err:
        raise SweepError(err.path, "", err.message) from None  # the environment's fault, not the file's
    points = []
    for overrides in overrides_list:
        for t, task in enumerate(sweep.tasks):
            try:
                trial = resolve_trial(base, task.model_dump(), overrides)
            except ValidationError as err:
                path, msg = first_error(err)
                raise SweepError(file, _where(path, overrides, sweep, t), msg) from None
            except ValueError as err:
                raise SweepError(file, "axes", str(err)) from None
            try:
                facts = check_trial(trial)
                check_memory(trial, facts, budget)
                resolved = resolve(trial, facts, sweep.resources.cpu, _rollouts(trial))
            except FieldError as err:
                raise SweepError(file, _where(err.path, overrides, sweep, t), err.message) from None
            except ValidationError as err:  # a section rebuilt with the trial's values (its CPUs as threads)
                path, msg = first_error(err)
                section = {"PretrainConfig": "pretrain.", "TransformerConfig": "model."}.get(err.title, "")
                raise SweepError(file, _where(section + path, overrides, sweep, t), msg) from None
            points.append(Point(dict(overrides), resolved))
    try:
        _check_sweep_analyses(sweep, [p.trial.config for p in points])
    except FieldError as err:
        raise SweepError(file, err.path, err.message) from None
    return points


def _check_base(sweep: SweepConfig, file: str) -> None:
    """A base value that every axis point replaces is never part of a trial, but it is still read by
    whoever edits the file: the free-form parts the schema cannot type (the process spec, analysis
    params) are checked on their own, so a nan or typo there is refused rather than left to mislead.
    Not the cross-section checks: a placeholder base process (a leaf under a grid of compositions)
    is fine."""
    keys = [*sweep.axes.grid, *sweep.axes.sample]
    try:
        if any(k == "process" or k.startswith("process.") for k in keys):
            check_process(sweep.base.process, "process")
        if any(k == "analyses" or k.startswith("analyses.") for k in keys):
            check_analyses(sweep.base.analyses, "trial", "analyses")
    except FieldError as err:
        raise SweepError(file, f"base.{err.path}", err.message) from None


def validate_sweep(sweep: SweepConfig, file: str) -> list[TrialConfig]:
    """Resolve and check every grid point x task, sampled axes at their endpoints."""
    _check_base(sweep, file)
    _check_count(sweep, file, [sweep.axes.num_samples], "trials (grid axes x samples x tasks)")
    sampled = [[(k, v) for v in dist.endpoints()] for k, dist in sweep.axes.sample.items()]
    ends = [len(values) for values in sampled]
    _check_count(sweep, file, ends, "rows to validate (grid axes x sampled axes' end points and choices x tasks)")
    overrides = [{**point, **dict(combo)} for point in grid_points(sweep) for combo in itertools.product(*sampled)]
    return [p.trial.config for p in _resolve_points(sweep, file, overrides)]


def sweep_points(sweep: SweepConfig, file: str) -> list[Point]:
    """The sweep's trials as they will run: each grid point ``axes.num_samples`` times, sampled axes
    drawn here (a generator seeded by ``base.seed``, so a sweep file names its trials exactly)."""
    _check_base(sweep, file)
    _check_count(sweep, file, [sweep.axes.num_samples], "trials (grid axes x samples x tasks)")
    rng = np.random.default_rng(sweep.base.seed)
    overrides = [
        {**point, **{k: dist.draw(rng) for k, dist in sweep.axes.sample.items()}}
        for point in grid_points(sweep)
        for _ in range(sweep.axes.num_samples)
    ]
    return _resolve_points(sweep, file, overrides)


def parse_sweep(text: str, file: str) -> SweepConfig:
    try:
        raw = safe_yaml.loads(text)
    except safe_yaml.YamlRefused as err:
        raise SweepError(file, err.where, err.message) from None
    if not isinstance(raw, dict):
        raise SweepError(file, "", f"a sweep file is a YAML mapping, got {type(raw).__name__}")
    base = raw.get("base") if isinstance(raw.get("base"), dict) else {}
    tasks = raw.get("tasks") if isinstance(raw.get("tasks"), list) else []
    try:
        for section in ("pretrain", "ppo"):
            check_lr(base.get(section), f"base.{section}")
        for i, task in enumerate(tasks):
            check_lr(task.get("ppo") if isinstance(task, dict) else None, f"tasks[{i}].ppo")
    except FieldError as err:
        raise SweepError(file, err.path, err.message) from None
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        path, msg = first_error(err)
        raise SweepError(file, path, msg) from None


def _read(path: str | Path) -> SweepConfig:
    try:
        text = safe_yaml.read_text(path)
    except safe_yaml.YamlRefused as err:
        raise SweepError(str(path), err.where, err.message) from None
    return parse_sweep(text, str(path))


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[TrialConfig]]:
    """Read, parse and fully validate a sweep file. Raises SweepError (one line)."""
    sweep = _read(path)
    try:
        check_storage(sweep.storage_path)
    except FieldError as err:
        raise SweepError(str(path), err.path, err.message) from None
    return sweep, validate_sweep(sweep, str(path))


def load_points(path: str | Path) -> tuple[SweepConfig, list[Point]]:
    """Read and fully validate a sweep file, then resolve the trials it runs (what the driver hands
    the workers). Raises SweepError (one line)."""
    sweep, _ = load_sweep(path)  # sampled axes' whole ranges checked, not only the draws
    return sweep, sweep_points(sweep, str(path))


def env_runners(sweep: SweepConfig, points: list[Point]) -> tuple[int, str]:
    """The most remote env runners any trial starts (every trial reserves that many: rayexp.sweep),
    and where the sweep file sets that number."""
    if not points:
        return 0, "base.ppo.num_env_runners"
    point = max(points, key=lambda p: p.trial.ppo.num_env_runners)
    task = point.trial.config.task
    path = "task.ppo.num_env_runners" if "num_env_runners" in task.ppo.model_fields_set else "ppo.num_env_runners"
    index = [t.name for t in sweep.tasks].index(task.name)
    return point.trial.ppo.num_env_runners, _where(path, point.axes, sweep, index)


def check_cluster(
    sweep: SweepConfig, file: str, nodes: list[dict[str, float]], points: list[Point] | None = None
) -> None:
    """Checks that need a connected cluster (run after ray.init, before any trial starts): every
    resource a trial holds (its own, and its env runners' CPUs) placeable on the alive ``nodes``
    (each node's total resources, as ``ray.nodes()`` lists them)."""
    runners, where = env_runners(sweep, points or [])
    try:
        check_placement(trial_bundles(sweep.resources, runners), nodes, where)
    except FieldError as err:
        raise SweepError(file, err.path, err.message) from None
