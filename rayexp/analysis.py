"""The analysis contract: typed, declared, and fed a trial's stored artifacts.

An analysis is a function registered with :func:`analysis`. It declares

- ``params``: a pydantic model (unknown keys are an error), validated by ``rayexp validate``;
- ``needs``: which stored artifacts it reads (:data:`NEEDS`), so the trial stores them (rollouts
  only when someone asks) and refuses clearly when they are missing;
- ``scope``: ``"trial"`` (runs inside one trial, after PPO, as its own resumable stage) or
  ``"sweep"`` (runs over a finished sweep's trials, grouped by config fields, through
  ``rayexp analyze`` or a sweep file's ``sweep_analyses``).

Per-trial: ``fn(artifacts: rayexp.artifacts.TrialArtifacts, params) -> AnalysisResult``.
Across trials: ``fn(group: list[TrialArtifacts], params) -> AnalysisResult``, once per group.
The pipeline logs whatever comes back: ``metrics`` as MLflow metrics ``analysis/{name}/{key}``
(across trials: ``sweep/{name}/{group}/{key}`` on the parent run), ``tables`` as parquet,
``figures`` as PNG. The maths of each analysis lives in a small pure function beside it, with a
unit test on a constructed case; the registered function is the thin adapter.

Generic analyses live in :mod:`rayexp.analyses`, a study's in its folder under :mod:`rayexp.studies`;
:mod:`rayexp.registry` loads them all and looks them up. This module and every analysis module
import without torch (they import it inside functions), so the driver validates sweep files without
loading torch or RLlib.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from models.config import STRICT

#: What an analysis may ask for; each maps to one accessor of ``rayexp.artifacts.TrialArtifacts``.
NEEDS = (
    "model_before",  # the pretrained model
    "model_after",  # the post-RL policy's transformer
    "random_init",  # the same architecture at its initialisation (probe control)
    "pretrain_checkpoints",  # log-spaced checkpoints over pretraining
    "ppo_checkpoints",  # policy checkpoints every ppo.save_every iterations
    "probe_tables",  # probe tables before / after RL
    "rollouts",  # episodes of the final policy (stored only when an analysis needs them)
    "env",  # the RL env config and its stream's process spec
)
SCOPES = ("trial", "sweep")


#: where a running analysis reports how far it is; set by the trial's stage around the call
_PROGRESS: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar("progress", default=None)


def progress(done: int, total: int) -> None:
    """An analysis says it has done ``done`` of ``total`` units of work (LLC estimates, say). Inside a
    trial this is the driver's progress line and ETA, and a heartbeat for its stall watchdog (an
    analysis that runs longer than ``--stall-timeout`` without one stops the sweep); elsewhere a no-op."""
    if (report := _PROGRESS.get()) is not None:
        report(done, total)


@contextlib.contextmanager
def reporting_progress(report: Callable[[int, int], None]) -> Iterator[None]:
    """Route :func:`progress` calls made inside the block to ``report(done, total)``."""
    token = _PROGRESS.set(report)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class Params(BaseModel):
    """Base of every analysis's parameters, as strict as the sweep file's sections (``STRICT``):
    unknown keys are an error, ``true`` is no integer, inf and nan no number."""

    model_config = ConfigDict(**STRICT)

    def rewards(self) -> dict[str, dict[str, Any]]:
        """Rewards the analysis scores besides the task's, ``{name: {reward, reward_params}}``: the
        trial check builds each on the task's stream, so a bad one fails validation, not the analysis."""
        return {}


@dataclass
class AnalysisResult:
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow.Table
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    # name -> numpy array a sweep analysis reads again (stored with the trial, not in MLflow): what a
    # metric cannot carry, such as a residual another trial's premise is checked against
    arrays: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnalysisDef:
    name: str
    fn: Callable[..., AnalysisResult]
    params: type[Params]
    needs: tuple[str, ...]
    scope: Literal["trial", "sweep"]
    description: str


ANALYSES: dict[str, AnalysisDef] = {}


def analysis(
    name: str,
    *,
    params: type[Params] = Params,
    needs: tuple[str, ...] = (),
    scope: Literal["trial", "sweep"] = "trial",
) -> Callable[[Callable[..., AnalysisResult]], Callable[..., AnalysisResult]]:
    """Register ``fn`` under ``name``; its docstring's first line is the description."""
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"analysis {name!r}: unknown needs {bad}; valid: {list(NEEDS)}")
    if scope not in SCOPES:
        raise ValueError(f"analysis {name!r}: scope must be one of {SCOPES}")

    def deco(fn: Callable[..., AnalysisResult]) -> Callable[..., AnalysisResult]:
        if name in ANALYSES:
            raise ValueError(f"analysis {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        ANALYSES[name] = AnalysisDef(name, fn, params, tuple(needs), scope, doc[0] if doc else "")
        return fn

    return deco
