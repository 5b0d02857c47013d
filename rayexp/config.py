"""Sweep files: YAML -> validated pydantic models (rayexp.settings), checked entirely before Ray starts.

A sweep file holds one base trial, the tasks (one Tune trial per task and grid point), the
axes to vary, resources per trial, where results live, the MLflow experiment name and the
across-trial analyses. Each section's fields are declared once, in :mod:`rayexp.settings` and
:mod:`models.config`; this module resolves the trials and checks what spans sections: context
lengths against ``model.n_ctx``, process vocabularies, rewards, env kinds, analysis parameters
and the estimated memory of a training step against a budget (``RAYEXP_MEMORY_GB``, default 64).
Nothing here imports torch or RLlib.

`load_sweep(path)` raises `SweepError` whose message is ONE line:
``FILE: FIELD.PATH: what is wrong``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.config import TransformerConfig, param_count, train_memory_bytes
from rayexp.settings import (  # noqa: F401  (the schema names, importable from here as before)
    AnalysisRef,
    Axes,
    BaseTrial,
    Distribution,
    PPOSettings,
    ProbeSettings,
    Resources,
    SweepConfig,
    TaskConfig,
    TrialConfig,
)

_LR_KEYS = ("lr", "learning_rate")
#: Memory one trial may plan for, in GB (10^9 bytes): a large GPU's share, or a node's RAM.
#: ``RAYEXP_MEMORY_GB`` overrides it (e.g. 140 on an H200, 8 on a laptop).
MEMORY_ENV = "RAYEXP_MEMORY_GB"
DEFAULT_MEMORY_GB = 64.0
_GB = 1e9


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


def process_label(spec: dict[str, Any]) -> str:
    """Short readable name of a process spec, e.g. mixture(mess3,rrxor)."""
    name = spec.get("name", "?")
    parts = spec.get("components") or spec.get("factors")
    if parts:
        return f"{name}({','.join(process_label(p) for p in parts)})"
    if name == "gated":
        return f"gated({process_label(spec.get('a', {}))},{process_label(spec.get('b', {}))})"
    return str(name)


# ---------------------------------------------------------------------------------------------
# Validation


def _loc(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _first_error(err: ValidationError) -> tuple[str, str]:
    e = err.errors()[0]
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
        msg = f"{msg} (got {e['input']!r})"
    return _loc(tuple(e["loc"])), msg


@lru_cache(maxsize=256)
def _build_process_cached(spec_json: str):
    from envs import build_process

    return build_process(json.loads(spec_json))


def build_process(spec: dict[str, Any]):
    """envs.build_process, memoised by spec (validation builds the same spec for every grid point)."""
    return _build_process_cached(json.dumps(spec, sort_keys=True))


class _FieldError(Exception):
    def __init__(self, path: str, message: str):
        self.path, self.message = path, message


def task_process(trial: TrialConfig) -> dict[str, Any]:
    """Process spec of the trial's RL stream (see TaskConfig.stream)."""
    task = trial.task
    if task.process is not None:
        return task.process
    if task.stream == "pretrain":
        return trial.process
    parts = trial.process.get("components") or trial.process.get("factors")
    if not parts:
        raise _FieldError(
            "task.stream",
            f"{task.stream!r} needs a pretraining process with components or factors, "
            f"got {process_label(trial.process)!r}",
        )
    return {"name": task.stream, "factors": parts}


def ppo_settings(trial: TrialConfig) -> PPOSettings:
    """The task's PPO settings: the base ppo section, the task's overrides on top, and the trial's
    seed unless either sets one. Raises _FieldError at ``task.ppo.KEY`` for a bad override."""
    task_ppo = trial.task.ppo
    raw = {"seed": trial.seed, **trial.ppo.model_dump(exclude_unset=True), **task_ppo}
    try:
        return PPOSettings.model_validate(raw)
    except ValidationError as err:
        sub, msg = _first_error(err)
        if sub.split(".")[0] in task_ppo or (not sub and task_ppo):
            raise _FieldError(f"task.ppo.{sub}" if sub else "task.ppo", msg) from None
        raise _FieldError(f"ppo.{sub}" if sub else "ppo", msg) from None


def memory_budget_gb() -> float:
    """The memory budget of one trial's training step, in GB: ``RAYEXP_MEMORY_GB`` or 64."""
    raw = os.environ.get(MEMORY_ENV, "")
    try:
        budget = float(raw) if raw.strip() else DEFAULT_MEMORY_GB
    except ValueError:
        budget = float("nan")
    if not (budget > 0 and math.isfinite(budget)):
        raise _FieldError(MEMORY_ENV, f"must be a positive number of GB, got {raw!r}")
    return budget


def check_memory(trial: TrialConfig, facts: dict[str, Any], budget_gb: float) -> None:
    """The estimated memory of the trial's largest training steps (a pretraining batch, a PPO
    minibatch) against the budget; _FieldError naming the batch field. Run by the driver only, so
    the budget is the one the sweep was validated with."""
    model = trial.model.resolve(facts["d_vocab"])
    pre = trial.pretrain
    seq_len = pre.seq_len or facts["n_ctx"]
    _check_memory(model, pre.batch_size, seq_len, pre.optimizer_states, budget_gb, "pretrain.batch_size")
    where = "task.ppo.minibatch_size" if "minibatch_size" in trial.task.ppo else "ppo.minibatch_size"
    minibatch = ppo_settings(trial).minibatch_size
    _check_memory(model, minibatch, facts["context"], 2, budget_gb, where)  # PPO's learner runs Adam


def _check_memory(model: TransformerConfig, batch: int, seq_len: int, states: int, budget: float, path: str) -> None:
    need = train_memory_bytes(model, batch, seq_len, states) / _GB
    if need > budget:
        raise _FieldError(
            path,
            f"estimated training memory {need:.1f} GB ({batch} x {seq_len} positions, "
            f"{param_count(model) / 1e6:.1f}M parameters) exceeds the budget of {budget:g} GB "
            f"(set {MEMORY_ENV} to change it)",
        )


def _build_at(spec: dict[str, Any], path: str):
    """Build a process spec; its error's own "process.components[0]: ..." prefix joins the path."""
    try:
        return build_process(spec)
    except (ValueError, TypeError, KeyError) as err:
        msg = str(err)
        head, sep, rest = msg.partition(": ")
        if sep and head.startswith("process") and " " not in head:
            return_path = path + head[len("process") :]
            raise _FieldError(return_path, rest) from None
        raise _FieldError(path, msg) from None


def _is_gated(hmm) -> bool:
    from envs.layout import GatedLayout

    return isinstance(hmm.layout, GatedLayout)


def _env_kinds() -> tuple[str, ...]:
    from envs.env_config import ENV_KINDS

    return ENV_KINDS


def _check_analysis(ref: AnalysisRef, scope: str, path: str) -> None:
    from rayexp.analyses import validate_params

    try:
        validate_params(ref.name, ref.params, scope=scope)
    except ValidationError as err:  # before ValueError: pydantic's error is one
        sub, msg = _first_error(err)
        raise _FieldError(f"{path}.params.{sub}" if sub else f"{path}.params", msg) from None
    except ValueError as err:
        raise _FieldError(f"{path}.name", str(err)) from None


def _check_analyses(refs: list, scope: str, path: str) -> None:
    seen: set[str] = set()
    for i, ref in enumerate(refs):
        if ref.name in seen:
            raise _FieldError(f"{path}[{i}].name", f"analysis {ref.name!r} is listed twice")
        seen.add(ref.name)
        _check_analysis(ref, scope, f"{path}[{i}]")


def check_trial(trial: TrialConfig) -> dict[str, Any]:
    """Semantic checks of one resolved trial; raises _FieldError(path relative to the trial).

    Returns facts the runner needs (vocab sizes, context), so callers do not rebuild processes.
    """
    hmm = _build_at(trial.process, "process")
    vocab = hmm.vocab_size
    if trial.model.d_vocab is not None and trial.model.d_vocab < vocab:
        raise _FieldError("model.d_vocab", f"{trial.model.d_vocab} is smaller than the process vocabulary {vocab}")
    model = trial.model.resolve(vocab)
    n_ctx = model.n_ctx
    for path, length in (("pretrain.seq_len", trial.pretrain.seq_len), ("probe.seq_len", trial.probe.seq_len)):
        if length is not None and length > n_ctx:
            raise _FieldError(path, f"context length {length} exceeds model.n_ctx {n_ctx}")

    task = trial.task
    _check_lr(task.ppo, "task.ppo")
    ppo_settings(trial)  # the task's overrides, checked merged into the base section
    stream = task_process(trial)
    task_hmm = hmm if stream is trial.process else _build_at(stream, "task.process" if task.process else "task.stream")
    if task_hmm.vocab_size > model.d_vocab:
        raise _FieldError(
            "task.process", f"vocabulary {task_hmm.vocab_size} exceeds the model's d_vocab {model.d_vocab}"
        )
    context = task.context or n_ctx
    if context > n_ctx:
        raise _FieldError("task.context", f"context length {context} exceeds model.n_ctx {n_ctx}")
    kinds = _env_kinds()
    if task.env not in kinds:
        raise _FieldError("task.env", f"unknown env {task.env!r}; valid: {list(kinds)}")
    if task.env == "active_gated" and not _is_gated(task_hmm):
        raise _FieldError(
            "task.env", f"active_gated needs a gated RL stream, got {process_label(stream)!r} (set task.process)"
        )
    if task.env == "outcome" and task_hmm.family != "outcome":
        raise _FieldError(
            "task.env", f"outcome needs an outcome RL stream, got {process_label(stream)!r} (set task.process)"
        )
    if task.env != "sequence" and task.shuffle_reward:
        raise _FieldError("task.shuffle_reward", "needs a stream the agent cannot steer (env: sequence)")
    if task.env == "active_gated" and task.shuffle_reward:
        raise _FieldError("task.shuffle_reward", "needs a stream the agent cannot steer (env: sequence)")
    if task.action_tokens is not None:
        bad = [t for t in task.action_tokens if not 0 <= t < task_hmm.vocab_size]
        if bad or not task.action_tokens:
            raise _FieldError("task.action_tokens", f"must be non-empty token ids < {task_hmm.vocab_size}, got {bad}")
    from envs.rewards import REWARDS, make_reward

    if task.reward not in REWARDS:
        raise _FieldError("task.reward", f"unknown reward {task.reward!r}; valid: {sorted(REWARDS)}")
    wants = REWARDS[task.reward].ENV
    if wants is not None and wants != task.env:
        raise _FieldError("task.env", f"reward {task.reward!r} runs in env {wants!r}; got env {task.env!r}")
    if task.env == "outcome" and wants != "outcome":
        raise _FieldError(
            "task.reward", f"env 'outcome' pays by the outcome tokens: use reward 'outcome', not {task.reward!r}"
        )
    try:
        make_reward(task.reward, task_hmm, task.reward_params, task.action_tokens)
    except (ValueError, TypeError, KeyError) as err:
        raise _FieldError("task.reward_params", str(err)) from None
    if task.start_from is not None:
        start = task.start_from
        if start.reward not in REWARDS:
            raise _FieldError("task.start_from.reward", f"unknown reward {start.reward!r}; valid: {sorted(REWARDS)}")
        try:
            first = make_reward(start.reward, task_hmm, start.reward_params, task.action_tokens)
        except (ValueError, TypeError, KeyError) as err:
            raise _FieldError("task.start_from.reward_params", str(err)) from None
        this = make_reward(task.reward, task_hmm, task.reward_params, task.action_tokens)
        if first.action_tokens.tolist() != this.action_tokens.tolist():
            raise _FieldError(
                "task.start_from.reward",
                f"M_A's reward acts on tokens {first.action_tokens.tolist()} but the task's on "
                f"{this.action_tokens.tolist()}; the policy head must be the same (set task.action_tokens)",
            )

    _check_analyses(trial.analyses, "trial", "analyses")
    return {"vocab": vocab, "d_vocab": model.d_vocab, "n_ctx": n_ctx, "context": context}


def _check_lr(section: Any, path: str) -> None:
    """A negative or non-finite learning rate, named as such (before the section's own checks)."""
    if not isinstance(section, dict):
        return
    for key, value in section.items():
        if (
            isinstance(key, str)
            and (key in _LR_KEYS or key.endswith("_lr"))
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not (value >= 0 and math.isfinite(value))
        ):
            raise _FieldError(f"{path}.{key}", f"learning rate must be >= 0 (got {value!r})")


def _where(path: str, overrides: dict[str, Any], sweep: SweepConfig, task_index: int) -> str:
    """Map a trial-relative field path to where the user wrote it in the file."""
    if path.startswith("task"):
        return f"tasks[{task_index}]{path[len('task') :]}"
    for dotted, value in overrides.items():
        if path == dotted or path.startswith((dotted + ".", dotted + "[")):
            if dotted in sweep.axes.grid:
                i = next(i for i, v in enumerate(sweep.axes.grid[dotted]) if v == value)
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
    _check_analyses(sweep.sweep_analyses, "sweep", "sweep_analyses")
    values = [config_values(t) for t in trials]
    for i, ref in enumerate(sweep.sweep_analyses):
        for j, key in enumerate(ref.group_by):
            if not any(_has_path(v, key) for v in values):
                raise _FieldError(
                    f"sweep_analyses[{i}].group_by[{j}]",
                    f"{key!r} is not a trial config path; e.g. task, seed, process, model.d_model, task.reward",
                )


def validate_sweep(sweep: SweepConfig, file: str) -> list[TrialConfig]:
    """Resolve and check every grid point x task (sampled axes at their endpoints)."""
    base = sweep.base.model_dump()
    sampled = [[(k, v) for v in dist.endpoints()] for k, dist in sweep.axes.sample.items()]
    overrides_list = [{**point, **dict(combo)} for point in grid_points(sweep) for combo in itertools.product(*sampled)]
    try:
        budget = memory_budget_gb()
    except _FieldError as err:
        raise SweepError(err.path, "", err.message) from None  # the environment's fault, not the file's
    trials = []
    for overrides in overrides_list:
        for t, task in enumerate(sweep.tasks):
            try:
                trial = resolve_trial(base, task.model_dump(), overrides)
            except ValidationError as err:
                path, msg = _first_error(err)
                raise SweepError(file, _where(path, overrides, sweep, t), msg) from None
            except ValueError as err:
                raise SweepError(file, "axes", str(err)) from None
            try:
                check_memory(trial, check_trial(trial), budget)
            except _FieldError as err:
                raise SweepError(file, _where(err.path, overrides, sweep, t), err.message) from None
            trials.append(trial)
    try:
        _check_sweep_analyses(sweep, trials)
    except _FieldError as err:
        raise SweepError(file, err.path, err.message) from None
    return trials


def parse_sweep(text: str, file: str) -> SweepConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise SweepError(file, where, f"not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise SweepError(file, "", f"a sweep file is a YAML mapping, got {type(raw).__name__}")
    base = raw.get("base") if isinstance(raw.get("base"), dict) else {}
    tasks = raw.get("tasks") if isinstance(raw.get("tasks"), list) else []
    try:
        for section in ("pretrain", "ppo"):
            _check_lr(base.get(section), f"base.{section}")
        for i, task in enumerate(tasks):
            _check_lr(task.get("ppo") if isinstance(task, dict) else None, f"tasks[{i}].ppo")
    except _FieldError as err:
        raise SweepError(file, err.path, err.message) from None
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        path, msg = _first_error(err)
        raise SweepError(file, path, msg) from None


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[TrialConfig]]:
    """Read, parse and fully validate a sweep file. Raises SweepError (one line)."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SweepError(file, "", f"cannot read: {err.strerror or err}") from None
    sweep = parse_sweep(text, file)
    return sweep, validate_sweep(sweep, file)


def check_cluster(sweep: SweepConfig, file: str, cluster: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Checks that need a connected cluster (run after ray.init, before any trial starts)."""
    res = sweep.resources
    if res.gpu > 0 and cluster.get("GPU", 0) <= 0:
        raise SweepError(file, "resources.gpu", f"{res.gpu} GPU per trial requested but the cluster has no GPU")
    fits = [n for n in nodes if n.get("CPU", 0) >= res.cpu and n.get("GPU", 0) >= res.gpu]
    if not fits:
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        raise SweepError(file, "resources.cpu", f"{res.cpu} CPUs per trial but the largest node has {most}")
    for name, amount in res.custom.items():
        if cluster.get(name, 0) < amount:
            raise SweepError(file, f"resources.custom.{name}", f"resource {name!r} is not on the cluster")
