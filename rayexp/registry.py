"""Every analysis and study, loaded: the one place generic code looks them up.

Generic analyses (:mod:`rayexp.analyses`) are imported by name; studies are found as folders of
:mod:`rayexp.studies`, each exporting a :class:`rayexp.study.Study` named ``STUDY``, so adding a
study needs no line here. Torch-free: the driver validates sweep files through this module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import rayexp.studies
from rayexp.analyses import policy_kl, seed_spread, weight_diff  # noqa: F401  (each registers itself)
from rayexp.analysis import ANALYSES, AnalysisDef, Params
from rayexp.study import Study


def _discover() -> dict[str, Study]:
    found = {}
    for info in sorted(pkgutil.iter_modules(rayexp.studies.__path__), key=lambda i: i.name):
        if info.ispkg:
            study = importlib.import_module(f"rayexp.studies.{info.name}").STUDY  # registers its analyses
            found[study.name] = study
    return found


#: name -> Study, in name order (the order of report sections)
STUDIES: dict[str, Study] = _discover()

#: (metric, label) pairs of the trial table (console summary and `rayexp report`): what every trial
#: logs, with each study's columns in between; ``{task}`` is the task's name
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pretrain/loss_gap", "pretrain gap"),
    ("ppo/reward_per_step", "reward/step"),
    *(column for study in STUDIES.values() for column in study.summary_columns),
    ("ppo/approx_kl", "approx_kl"),
    ("analysis/weight_diff/rel_frobenius", "|dW|/|W|"),
)


def get(name: str, scope: str | None = None) -> AnalysisDef:
    """The registered analysis; ValueError naming the valid ones (of that scope) otherwise."""
    found = ANALYSES.get(name)
    if found is None or (scope is not None and found.scope != scope):
        valid = sorted(n for n, a in ANALYSES.items() if scope is None or a.scope == scope)
        what = f"{scope}-level analysis" if scope else "analysis"
        raise ValueError(f"unknown {what} {name!r}; valid: {valid}")
    return found


def validate_params(name: str, params: dict[str, Any] | None, scope: str = "trial") -> Params:
    """Validated params of analysis ``name``: ValueError for an unknown name, pydantic's
    ValidationError for bad params (callers turn both into one line)."""
    return get(name, scope).params.model_validate(dict(params or {}))
