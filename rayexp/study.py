"""The study contract: what a study folder (``rayexp/studies/<name>/``) tells the generic code.

A study is one research question (docs/design.md §4-5): its maths in small pure modules, its
analyses (registered with :func:`rayexp.analysis.analysis` when the folder is imported), and a
:class:`Study` entry named ``STUDY`` in the folder's ``__init__.py``. :mod:`rayexp.registry` finds
every folder; the trial loop, the sweep driver, ``rayexp report`` and ``rayexp analyze`` name no
study. Adding a study touches its folder, a sweep file, README and its results file in docs/results/.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class ReportInput:
    """What a study's report section reads: a finished sweep's MLflow runs and where to write."""

    uri: str  # MLflow tracking URI
    parent: str  # the sweep's parent run id
    runs: list[Any]  # the sweep's trial runs (mlflow.entities.Run), oldest first
    parent_metrics: dict[str, float] = field(default_factory=dict)
    out: Path | None = None  # folder for tables and figures (None: print only)
    file: TextIO = sys.stdout


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    #: (metric, label) columns this study adds to the trial table (``{task}`` is the task's name)
    summary_columns: tuple[tuple[str, str], ...] = ()
    #: its section of ``rayexp report``: prints tables, writes CSVs and figures under ``out``
    report: Callable[[ReportInput], None] | None = None
    #: what ``rayexp run`` prints after the trial table (e.g. the verdicts)
    after_sweep: Callable[[ReportInput], None] | None = None
    #: across-trial results shown where researchers look, ``{analysis: (table, columns)}``: each
    #: row of that table (one per process and task) goes onto the trial runs it judges as tags and a
    #: description, ``columns`` the label first, and the whole table into the parent run's
    #: description (``rayexp analyze`` calls tracking.annotate_from_table after logging the result)
    run_annotations: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
