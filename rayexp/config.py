"""Sweep files: YAML -> validated pydantic models, checked entirely before Ray starts.

A sweep file holds one base trial, the tasks (one Tune trial per task and grid point), the
axes to vary, resources per trial, where results live and the MLflow experiment name.
The sections owned by other modules (model, pretrain, probe, ppo) are validated against
those modules' own pydantic models, so each field is declared and documented once.

`load_sweep(path)` raises `SweepError` whose message is ONE line:
``FILE: FIELD.PATH: what is wrong``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Keys that name a sequence length in a pretrain section; all must fit in the model's n_ctx.
_CONTEXT_KEYS = ("seq_len", "context", "context_len", "seq_length", "n_ctx")
_LR_KEYS = ("lr", "learning_rate")


class SweepError(ValueError):
    """A sweep file problem: `str(err)` is one line ``file: field.path: message``."""

    def __init__(self, file: str, path: str, message: str):
        self.file, self.path = file, path
        self.message = " ".join(str(message).split())
        super().__init__(f"{file}: {path}: {self.message}" if path else f"{file}: {self.message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    """One RL post-training task: an environment over a process stream and a reward."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_\-]+$",
        description="Short name; appears in run names and metric names (ppo/{name}/...).",
    )
    reward: str = Field(description="Reward name in envs.rewards.REWARDS, e.g. next_token or joint_target.")
    reward_params: dict[str, Any] = Field(default_factory=dict, description="Keyword parameters of the reward.")
    stream: Literal["pretrain", "interleave", "product"] = Field(
        default="pretrain",
        description="RL stream when `process` is null: the pretraining process itself, or its components "
        "(of a mixture / composition) interleaved or taken as a product, so a grid over base.process "
        "carries the positive control along.",
    )
    process: dict[str, Any] | None = Field(
        default=None,
        description="Explicit process spec of the RL stream (envs.build_process); overrides `stream`.",
    )
    context: int | None = Field(
        default=None, gt=0, description="Observation window K of the env; null = the model's n_ctx. Must be <= n_ctx."
    )
    episode_len: int | None = Field(default=None, gt=0, description="Steps per episode; null = context.")
    action_tokens: list[int] | None = Field(
        default=None, description="Token ids the policy may emit; null = the RL stream's whole vocabulary."
    )
    ppo: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the base ppo settings for this task only."
    )


class ProbeSettings(_Strict):
    """Belief probes run before and after RL (rayexp.probes.probe_model)."""

    n_seq: int = Field(default=3000, ge=10, description="Fresh sequences sampled for probing (split by sequence).")
    seq_len: int | None = Field(default=None, gt=0, description="Probe sequence length; null = model n_ctx.")
    test_frac: float = Field(default=0.2, gt=0, lt=1, description="Share of sequences held out for scoring.")
    alpha: float = Field(default=1e-6, ge=0, description="Ridge penalty.")
    hooks: list[str] | None = Field(default=None, description="Hook names to probe; null = all residual hooks.")
    figures: bool = Field(default=True, description="Log belief-simplex and skill-by-layer figures.")


class BaseTrial(_Strict):
    """Everything one trial needs except its task."""

    process: dict[str, Any] = Field(
        description="Pretraining process spec for envs.build_process, e.g. {name: mess3, x: 0.05, a: 0.85}."
    )
    model: dict[str, Any] = Field(
        description="models.transformer.TransformerConfig fields; d_vocab defaults to the process vocabulary."
    )
    pretrain: dict[str, Any] = Field(default_factory=dict, description="models.pretrain.PretrainConfig fields.")
    probe: ProbeSettings = Field(default_factory=ProbeSettings, description="Belief probe settings.")
    ppo: dict[str, Any] = Field(default_factory=dict, description="rayexp.ppo.PPOSettings fields, shared by tasks.")
    analyses: list[str] = Field(
        default_factory=lambda: ["weight_diff"], description="Names in rayexp.analyses.ANALYSES run after PPO."
    )
    seed: int = Field(default=0, ge=0, description="Seed of every stochastic step (pretrain, probes, PPO).")


class TrialConfig(BaseTrial):
    """A fully resolved trial: the base with axis values applied, plus its task."""

    task: TaskConfig = Field(description="The RL task of this trial.")


class Distribution(_Strict):
    """A sampled axis: exactly one of the keys."""

    uniform: tuple[float, float] | None = Field(default=None, description="[low, high], uniform.")
    loguniform: tuple[float, float] | None = Field(default=None, description="[low, high], log-uniform, low > 0.")
    randint: tuple[int, int] | None = Field(default=None, description="[low, high), integers.")
    choice: list[Any] | None = Field(default=None, min_length=1, description="Values drawn uniformly.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        set_keys = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice")
        lo_hi = getattr(self, set_keys[0])
        if set_keys[0] != "choice" and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"{set_keys[0]} needs low < high, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    def endpoints(self) -> list[Any]:
        """Values that bound what the distribution can produce, for validation."""
        if self.choice is not None:
            return list(self.choice)
        if self.randint is not None:
            return [self.randint[0], self.randint[1] - 1]
        return list(self.uniform or self.loguniform)  # type: ignore[arg-type]

    def to_tune(self) -> Any:
        from ray import tune

        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.randint is not None:
            return tune.randint(*self.randint)
        return tune.choice(self.choice)


class Axes(_Strict):
    """What varies between trials. Keys are dotted paths into the base trial, e.g. model.d_model."""

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Every combination is run.")
    sample: dict[str, Distribution] = Field(default_factory=dict, description="Drawn num_samples times.")
    num_samples: int = Field(default=1, ge=1, description="Repeats of the grid (each with fresh samples).")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return grid


class Resources(_Strict):
    """Resources of one trial (one Tune trial = one Ray actor holding them)."""

    cpu: float = Field(default=1.0, gt=0, description="CPUs per trial.")
    gpu: float = Field(default=0.0, ge=0, description="GPUs per trial; fractions share a device.")
    custom: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per trial, e.g. {node_a: 0.01} to pin trials."
    )


class SweepConfig(_Strict):
    """A whole sweep file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="Sweep name; Tune experiment dir under storage_path.")
    description: str = Field(default="", description="What the sweep asks; logged on the parent MLflow run.")
    experiment: str | None = Field(default=None, description="MLflow experiment name; null = the sweep name.")
    storage_path: str = Field(
        default="rayexp_results",
        description="Results, checkpoints and the pretrain cache: a local dir, an NFS mount or s3://bucket/prefix.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per-trial resources.")
    max_concurrent: int | None = Field(default=None, ge=1, description="Cap on trials running at once.")
    max_failures: int = Field(default=2, ge=0, description="Retries of a failed trial, from its last checkpoint.")
    base: BaseTrial = Field(description="The base trial config.")
    tasks: list[TaskConfig] = Field(min_length=1, description="RL tasks; each is an implicit grid axis.")
    axes: Axes = Field(default_factory=Axes, description="Grid and sampled axes over the base trial.")

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks


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


def _validate_with(model_cls: type[BaseModel] | None, data: dict[str, Any], path: str) -> Any:
    if model_cls is None:
        return data
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        sub, msg = _first_error(err)
        raise _FieldError(f"{path}.{sub}" if sub else path, msg) from None


def _owner_models() -> dict[str, type[BaseModel] | None]:
    """The pydantic models of the sections other modules own (None where not importable)."""
    found: dict[str, type[BaseModel] | None] = {}
    for section, module, attr in (
        ("model", "models.transformer", "TransformerConfig"),
        ("pretrain", "models.pretrain", "PretrainConfig"),
        ("ppo", "rayexp.ppo", "PPOSettings"),
    ):
        try:
            found[section] = getattr(__import__(module, fromlist=[attr]), attr)
        except (ImportError, AttributeError):
            found[section] = None
    return found


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


def check_trial(trial: TrialConfig) -> dict[str, Any]:
    """Semantic checks of one resolved trial; raises _FieldError(path relative to the trial).

    Returns facts the runner needs (vocab sizes, context), so callers do not rebuild processes.
    """
    owners = _owner_models()
    hmm = _build_at(trial.process, "process")
    vocab = hmm.vocab_size

    model = dict(trial.model)
    d_vocab = model.setdefault("d_vocab", vocab)
    if isinstance(d_vocab, int) and d_vocab < vocab:
        raise _FieldError("model.d_vocab", f"{d_vocab} is smaller than the process vocabulary {vocab}")
    model_cfg = _validate_with(owners["model"], model, "model")
    n_ctx = model["n_ctx"] if owners["model"] is None else model_cfg.n_ctx
    if not isinstance(n_ctx, int):
        raise _FieldError("model.n_ctx", "missing or not an integer")

    for section in ("pretrain", "ppo"):
        _check_lr(getattr(trial, section), section)
    for key in _CONTEXT_KEYS:
        length = trial.pretrain.get(key)
        if isinstance(length, int) and length > n_ctx:
            raise _FieldError(f"pretrain.{key}", f"context length {length} exceeds model.n_ctx {n_ctx}")
    _validate_with(owners["pretrain"], trial.pretrain, "pretrain")
    if trial.probe.seq_len is not None and trial.probe.seq_len > n_ctx:
        raise _FieldError("probe.seq_len", f"context length {trial.probe.seq_len} exceeds model.n_ctx {n_ctx}")

    task = trial.task
    ppo = {**trial.ppo, **task.ppo}
    _check_lr(task.ppo, "task.ppo")
    _validate_with(owners["ppo"], ppo, "task.ppo" if task.ppo else "ppo")
    stream = task_process(trial)
    task_hmm = hmm if stream is trial.process else _build_at(stream, "task.process" if task.process else "task.stream")
    if task_hmm.vocab_size > model["d_vocab"]:
        raise _FieldError(
            "task.process", f"vocabulary {task_hmm.vocab_size} exceeds the model's d_vocab {model['d_vocab']}"
        )
    context = task.context or n_ctx
    if context > n_ctx:
        raise _FieldError("task.context", f"context length {context} exceeds model.n_ctx {n_ctx}")
    if task.action_tokens is not None:
        bad = [t for t in task.action_tokens if not 0 <= t < task_hmm.vocab_size]
        if bad or not task.action_tokens:
            raise _FieldError("task.action_tokens", f"must be non-empty token ids < {task_hmm.vocab_size}, got {bad}")
    from envs.rewards import REWARDS, make_reward

    if task.reward not in REWARDS:
        raise _FieldError("task.reward", f"unknown reward {task.reward!r}; valid: {sorted(REWARDS)}")
    try:
        make_reward(task.reward, task_hmm, task.reward_params, task.action_tokens)
    except (ValueError, TypeError, KeyError) as err:
        raise _FieldError("task.reward_params", str(err)) from None
    from rayexp.analyses import ANALYSES

    for i, name in enumerate(trial.analyses):
        if name not in ANALYSES:
            raise _FieldError(f"analyses[{i}]", f"unknown analysis {name!r}; valid: {sorted(ANALYSES)}")
    return {"vocab": vocab, "d_vocab": model["d_vocab"], "n_ctx": n_ctx, "context": context}


def _check_lr(section: dict[str, Any], path: str) -> None:
    for key, value in section.items():
        if isinstance(value, dict):
            _check_lr(value, f"{path}.{key}")
        elif (
            (key in _LR_KEYS or key.endswith("_lr"))
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


def validate_sweep(sweep: SweepConfig, file: str) -> list[TrialConfig]:
    """Resolve and check every grid point x task (sampled axes at their endpoints)."""
    base = sweep.base.model_dump()
    sampled = [[(k, v) for v in dist.endpoints()] for k, dist in sweep.axes.sample.items()]
    overrides_list = [{**point, **dict(combo)} for point in grid_points(sweep) for combo in itertools.product(*sampled)]
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
                check_trial(trial)
            except _FieldError as err:
                raise SweepError(file, _where(err.path, overrides, sweep, t), err.message) from None
            trials.append(trial)
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
