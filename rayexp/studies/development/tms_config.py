"""The TMS sweep file's schema (pydantic, unknown keys refused) and its one-line validation errors.

Torch-free and Ray-free: ``python -m rayexp.studies.development.tms --validate FILE`` and the tests
read a sweep file through this module alone. ``sweeps/tms.yaml`` states every value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.config import MAX_SEED, STRICT
from rayexp import safe_yaml
from rayexp.studies.development.llc import SGLDSettings, default_nbeta
from rayexp.studies.development.tms_llc import LLC_BATCH, N_LLC, TMS_SGLD
from rayexp.studies.development.transitions import ALPHA, refuse_transition_k


class _Section(BaseModel):
    model_config = ConfigDict(**STRICT, frozen=True)


PosInt = Annotated[int, Field(strict=True, ge=1)]


class Data(_Section):
    n_features: int = Field(6, strict=True, ge=2, le=64, description="F: features (and action dimensions)")
    mode: Literal["one_hot", "independent"] = Field("one_hot", description="one_hot: Chen et al.'s limit")
    p: float = Field(1 / 6, gt=0, le=1, description="P(x_i != 0) in independent mode")


class Model(_Section):
    n_hidden: int = Field(2, strict=True, ge=1, le=64, description="m: hidden dimensions")
    init_scale: float = Field(0.1, gt=0, le=10, description="W ~ N(0, init_scale^2), b = 0")


class Supervised(_Section):
    steps: int = Field(4000, strict=True, ge=1, le=1_000_000)
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    batch_size: int = Field(256, strict=True, ge=1, le=65536, description="fresh inputs per step")
    checkpoint_every: int = Field(200, strict=True, ge=1, description="steps between checkpoints")

    def save_at(self) -> list[int]:
        return sorted({*range(0, self.steps + 1, self.checkpoint_every), self.steps})


class PPO(_Section):
    iterations: int = Field(120, strict=True, ge=1, le=100_000)
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the learner")
    train_batch_size: int = Field(1024, strict=True, ge=1, le=1_000_000, description="episodes per iteration")
    minibatch_size: int = Field(256, strict=True, ge=1, le=1_000_000)
    num_epochs: int = Field(4, strict=True, ge=1, le=100)
    clip_param: float = Field(0.2, gt=0, le=10)
    vf_loss_coeff: float = Field(1.0, ge=0)
    entropy_coeff: float = Field(0.0, ge=0)
    log_std: float = Field(-2.0, ge=-10, le=2, description="initial log standard deviation of the Gaussian")
    learn_std: bool = Field(False, description="learn the log-std (else it stays fixed)")
    value_hidden: int = Field(64, strict=True, ge=1, le=4096, description="width of the value MLP on x")
    num_envs_per_env_runner: int = Field(256, strict=True, ge=1, le=65536)
    save_every: int = Field(6, strict=True, ge=1, description="iterations between checkpoints")

    @model_validator(mode="after")
    def _minibatch(self):
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} exceeds train_batch_size {self.train_batch_size}")
        return self


class LLC(_Section):
    lr: float = Field(TMS_SGLD.lr, gt=0, le=1, description="SGLD step size eps")
    localization: float = Field(TMS_SGLD.localization, ge=0, le=1e6, description="gamma")
    n: int = Field(N_LLC, strict=True, ge=2, le=10_000_000, description="inputs in the LLC's fixed data set")
    nbeta: float | None = Field(None, gt=0, le=1e9, description="n * beta; default n / ln n")
    batch_size: int = Field(LLC_BATCH, strict=True, ge=1, le=1_000_000)
    preconditioner: Literal["rmsprop", "identity"] = TMS_SGLD.preconditioner
    rms_alpha: float = Field(TMS_SGLD.rms_alpha, gt=0, lt=1)
    rms_delta: float = Field(TMS_SGLD.rms_delta, gt=0, le=1)
    num_chains: int = Field(TMS_SGLD.num_chains, strict=True, ge=4, le=64)
    num_burnin: int = Field(TMS_SGLD.num_burnin, strict=True, ge=1, le=100_000)
    num_draws: int = Field(TMS_SGLD.num_draws, strict=True, ge=8, le=100_000)
    transition_alpha: float = Field(
        ALPHA, gt=0, le=0.5, description="the chance of marking a transition on a curve without one (line + noise)"
    )
    _k_is_gone = model_validator(mode="before")(refuse_transition_k)
    seed: int = Field(
        0, strict=True, ge=0, le=MAX_SEED, description="seed of the LLC's data set and chains (every trial)"
    )

    def settings(self) -> SGLDSettings:
        return SGLDSettings.from_params(self, nbeta=self.nbeta if self.nbeta is not None else default_nbeta(self.n))


class Resources(_Section):
    cpu: float = Field(1, gt=0, le=1024, description="CPUs per trial")


class TMSSweep(_Section):
    study: Literal["tms"] = Field("tms", description="marks the file for `rayexp run` / `rayexp validate`")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    experiment: str = Field("tms", min_length=1, max_length=256, description="MLflow experiment")
    storage_path: str = Field("rayexp_results", min_length=1)
    figures_dir: str | None = Field(None, description="also write the figure here (e.g. docs/results)")
    seeds: list[Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]] = Field(min_length=1, max_length=1000)
    arms: list[Literal["supervised", "ppo"]] = Field(["supervised", "ppo"], min_length=1)
    max_concurrent: int = Field(0, strict=True, ge=0, description="trials at once (0: as many as fit)")
    data: Data = Data()
    model: Model = Model()
    supervised: Supervised = Supervised()
    ppo: PPO = PPO()
    llc: LLC = LLC()
    resources: Resources = Resources()

    @field_validator("seeds", "arms")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"repeated values in {v}")
        return v


class SweepFileError(ValueError):
    """One line: ``FILE: field.path: what is wrong``."""


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load(path: str | Path) -> TMSSweep:
    """Read and validate a TMS sweep file; :class:`SweepFileError` with one line on any bad input."""
    path = Path(path)
    try:
        data = safe_yaml.loads(safe_yaml.read_text(path))
    except safe_yaml.YamlRefused as err:  # the same guard as every sweep file: size, UTF-8, depth, aliases
        raise SweepFileError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise SweepFileError(f"{path}: a sweep file is a mapping of sections, got {type(data).__name__}")
    return validate(data, str(path))


_STUDY_LINE = re.compile(r"""^study:[ \t]*(tms|'tms'|"tms")[ \t]*(#.*)?$""", re.MULTILINE)


def is_tms_file(path: str | Path) -> bool:
    """True when ``path`` has the top-level line ``study: tms`` (the CLI's dispatch). A text check, not a
    parse: the project's loader guards hostile YAML (alias bombs, deep nesting) before parsing, and
    anything that is not a TMS file, unreadable ones included, goes to it unparsed."""
    try:
        return _STUDY_LINE.search(safe_yaml.read_text(path)) is not None
    except safe_yaml.YamlRefused:
        return False


def validate(data: dict[str, Any], where: str = "sweep") -> TMSSweep:
    try:
        spec = TMSSweep.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise SweepFileError(f"{where}: {_where(first['loc'])}: {msg}{more}") from None
    return spec


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": leaf}; lists as JSON (MLflow params are one value each)."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(config) if isinstance(config, (list, tuple)) else config}
