"""Analyses that compare the model before and after RL post-training.

An analysis is a function ``f(model_before, model_after, process_spec, context) -> AnalysisResult``
registered under a name; sweep files list names in ``base.analyses``. The trial logs whatever
an analysis returns: ``metrics`` as MLflow metrics ``analysis/{name}/{key}``, ``tables`` as
parquet artifacts, ``figures`` as PNG artifacts. Adding an analysis = one module here that
calls :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class AnalysisContext:
    """What an analysis may need besides the two models."""

    trial: dict[str, Any]  # the resolved trial config (TrialConfig.model_dump())
    task: str
    seed: int
    out_dir: str  # a scratch directory for the analysis


@dataclass
class AnalysisResult:
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure


Analysis = Callable[[Any, Any, dict, AnalysisContext], AnalysisResult]
ANALYSES: dict[str, Analysis] = {}


def register(name: str) -> Callable[[Analysis], Analysis]:
    def deco(fn: Analysis) -> Analysis:
        if name in ANALYSES:
            raise ValueError(f"analysis {name!r} registered twice")
        ANALYSES[name] = fn
        return fn

    return deco


def run_analysis(name: str, model_before, model_after, process_spec: dict, context: AnalysisContext) -> AnalysisResult:
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; valid: {sorted(ANALYSES)}")
    return ANALYSES[name](model_before, model_after, process_spec, context)


from rayexp.analyses import weight_diff  # noqa: F401  (registers itself)
