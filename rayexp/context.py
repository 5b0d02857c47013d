"""What a trial's stages share: the resolved trial, its storage, and how it reports.

:class:`TrialContext` is handed to every stage (:mod:`rayexp.stages`) by the trial loop
(:mod:`rayexp.trial`). It holds the :class:`~rayexp.resolved.ResolvedTrial` the driver derived and
adds only what a worker knows: the device (:func:`trial_device`, the one place that decides it), the
pretrain cache key (the precision ``auto`` resolves to here) and M_A's key. :class:`Reporter` sends
metrics to MLflow by step and the summary's to Tune; :class:`StageState` persists which stages are
done in the trial's Tune checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from models.config import PretrainConfig, TransformerConfig
from rayexp.artifacts import TrialArtifacts
from rayexp.cache import pretrain_key
from rayexp.ppo_settings import PPOSettings
from rayexp.registry import SUMMARY_COLUMNS
from rayexp.resolved import ResolvedTrial
from rayexp.settings import TrialConfig
from rayexp.specs import build_process

_SUMMARY_KEYS = frozenset(k for k, _ in SUMMARY_COLUMNS)


class DeviceError(ValueError):
    """A trial's device setting that its resources cannot honour (one line, names both fields)."""


def _torch_sees_cuda() -> bool:
    import torch  # heavy; only reached for a trial that holds a GPU share

    return torch.cuda.is_available()


def trial_device(setting: str, gpu: float, cuda_available: Callable[[], bool] | None = None) -> str:
    """``"cpu"`` or ``"cuda"``: where every torch stage of a trial runs (docs/design.md §2, §8).

    ``setting`` is ``pretrain.device`` (``auto | cpu | cuda``), ``gpu`` the share of a GPU the trial
    holds (``resources.gpu``, as Ray granted it). ``gpu == 0`` never asks torch about CUDA, not even
    ``torch.cuda.is_available()``: a CPU trial on a GPU node must not create a CUDA context (~500 MB of
    the GPU other trials share) or wait on a busy driver. ``auto`` takes the GPU when the trial holds a
    share and this worker's torch sees CUDA; ``cuda`` without both is a DeviceError rather than a
    silent CPU run that the sweep pays GPU time for. ``cuda_available`` stands in for the check (tests).
    """
    if setting not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"pretrain.device must be auto, cpu or cuda, got {setting!r}")
    if setting == "cpu" or (gpu <= 0 and setting == "auto"):
        return "cpu"
    if gpu <= 0:
        raise DeviceError(
            "pretrain.device is cuda but the trial holds no GPU (resources.gpu: 0): give it a share "
            "(e.g. resources.gpu: 0.25) or set pretrain.device: auto"
        )
    if (cuda_available or _torch_sees_cuda)():
        return "cuda"
    if setting == "cuda":
        raise DeviceError(
            f"pretrain.device is cuda and the trial holds {gpu:g} GPU, but torch in this worker sees no CUDA "
            "device (torch.cuda.is_available() is False: a CPU-only torch build, no driver, or an empty "
            "CUDA_VISIBLE_DEVICES)"
        )
    return "cpu"  # auto: the share is unusable here; rayexp.trial warns


def for_tune(key: str) -> bool:
    """What a trial reports to Tune: progress, stage times, PPO curves and the summary's metrics.
    Everything else (hundreds of probe and analysis metrics) goes to MLflow only; sending it to Tune
    at every stage and PPO iteration made each trial's Tune logs ~6 MB."""
    return (
        key in ("stage", "n_stages")
        or key.startswith(("time/", "ppo/", "pretrain/", "progress/"))
        or key in _SUMMARY_KEYS
    )


class Reporter:
    """Sends stage metrics to MLflow (by step) and to Tune (cumulative latest values)."""

    def __init__(self, run, use_tune: bool):
        self.run, self.use_tune = run, use_tune
        self.latest: dict[str, float] = {}

    def metrics(self, metrics: dict[str, Any], step: int, checkpoint_dir: Path | None = None, once=False) -> None:
        """``once``: skip keys this run already holds (a stage re-run after a kill mid-logging)."""
        clean = {k: float(v) for k, v in metrics.items() if _finite_number(v)}
        if once and self.run is not None and clean:
            have = self.run.metric_keys()
            clean_new = {k: v for k, v in clean.items() if k not in have}
        else:
            clean_new = clean
        if self.run is not None and clean_new:
            self.run.log_metrics(clean_new, step)
        self.latest.update(clean)
        if self.use_tune:
            from ray import tune  # Ray's import is heavy; the driver's debug path runs without it

            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
            tune.report({k: v for k, v in self.latest.items() if for_tune(k)}, checkpoint=checkpoint)


def _finite_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class StageState:
    """Which stages are done, persisted in the Tune checkpoint directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        path = directory / "state.json"
        self.data = json.loads(path.read_text()) if path.exists() else {"done": [], "latest": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def finish(self, stage: str, latest: dict[str, float]) -> None:
        self.data["done"].append(stage)
        self.data["latest"] = latest
        (self.dir / "state.json").write_text(json.dumps(self.data))


@dataclass
class TrialContext:
    """What every stage gets: the resolved trial, where it stores things, and how it reports."""

    resolved: ResolvedTrial
    meta: dict[str, Any]
    report: Reporter
    state: StageState
    artifacts: TrialArtifacts
    workdir: Path
    snapshot: Any = None  # () -> None: hand Tune the current state directory
    device: str = "cpu"  # trial_device(...), decided once by rayexp.trial; artifacts load models there
    gpu: float = 0.0  # the GPU share the trial holds

    def __post_init__(self) -> None:
        # an analysis that trains (negation's PPO) gives its learner the trial's learner share
        self.artifacts.learner_gpus = self.learner_gpus

    @property
    def learner_gpus(self) -> float:
        """The GPU share of RLlib's PPO learner, which is local (it trains in the trial's own process, on
        the trial's share): 0 on CPU. Capped at 1: one local learner uses one device, and a trial that
        holds more whole GPUs gains nothing for PPO without several learners (not wired)."""
        return min(self.gpu, 1.0) if self.device == "cuda" else 0.0

    @property
    def trial(self) -> TrialConfig:
        return self.resolved.config

    @property
    def facts(self) -> dict[str, Any]:
        return self.resolved.facts

    @property
    def n_rollouts(self) -> int:
        return self.resolved.rollouts

    @property
    def storage_path(self) -> str:
        return self.meta["storage_path"]

    @property
    def model_cfg(self) -> TransformerConfig:
        return self.resolved.model

    @cached_property
    def pre_cfg(self) -> PretrainConfig:
        # the device decided for the trial, never `auto`: pretraining's own `auto` would ask torch about
        # CUDA even in a gpu-0 trial. The device is not in the cache key (pretrain_determining).
        return self.resolved.pretrain.model_copy(update={"device": self.device})

    @property
    def env_config(self) -> dict[str, Any]:
        return self.resolved.env

    @property
    def ppo_settings(self) -> PPOSettings:
        return self.resolved.ppo

    @property
    def start_env_config(self) -> dict[str, Any] | None:
        return None if self.resolved.start is None else self.resolved.start.env

    @property
    def start_settings(self) -> PPOSettings | None:
        return None if self.resolved.start is None else self.resolved.start.ppo

    @cached_property
    def process(self):
        return build_process(self.trial.process)

    @cached_property
    def pretrain_determining(self) -> dict[str, Any]:
        # Resolved here, on the worker, not by the driver: `auto` means bf16 on one machine and fp32
        # on another (docs/design.md §2), and the precision changes the result, so the cache key
        # holds what this worker resolves it to. Threads, progress bars and the device do not.
        from models.pretrain import resolve_precision  # torch: the driver never imports it

        determining = self.pre_cfg.model_dump(exclude={"num_threads", "progress", "device", "compile"})
        return determining | {"precision": resolve_precision(self.pre_cfg)}

    @cached_property
    def pretrain_key(self) -> str:
        return pretrain_key(
            self.trial.process, self.model_cfg.model_dump(), self.pretrain_determining, self.pre_cfg.seed
        )

    @cached_property
    def start_key(self) -> str | None:
        """Cache key of M_A (None without ``task.start_from``): its pretrained model, env and PPO settings."""
        if self.resolved.start is None:
            return None
        blob = json.dumps(
            {"pretrain": self.pretrain_key, "env": self.start_env_config, "ppo": self.start_settings.model_dump()},
            sort_keys=True,
        )
        return "start-" + hashlib.sha256(blob.encode()).hexdigest()[:24]

    def cached_model_path(self, key: str | None = None) -> str:
        """Local path of a pretrain cache entry's model: ``key``'s, by default the one PPO starts from
        (M_A when the task names one, else the pretrained model)."""
        key = key or self.start_key or self.pretrain_key
        return str(self.artifacts.store.local_file(f"pretrain_cache/{key}/model.pt"))
