"""Objectives in weight diffs (research note 002, docs/design.md §5): task vectors of PPO on several
rewards from one M_A; can the reward be read from the weights, do updates superpose, does negation
work beyond its null? The maths: :mod:`.task_vectors` (arithmetic, cosines by pair kind, the
leave-one-seed-out classifier and its permutation null, superposition), :mod:`.inference` (seed
jackknife intervals for pair statistics, Holm over modules) and :mod:`.returns` (exact returns of
any policy under any reward); the adapters: ``negation`` (:mod:`.negation_analysis`, one
trial), ``task_vectors`` (:mod:`.task_vectors_analysis`, across trials) and ``matched_negation``
(:mod:`.matched_negation_analysis`, across trials: negation against the null's update at each reward's
norm), which share :mod:`.exact_returns`; :mod:`.report` prints the summary."""

from rayexp.studies.objective import (  # noqa: F401  (register)
    matched_negation_analysis,
    negation_analysis,
    task_vectors_analysis,
)
from rayexp.studies.objective.report import report_section
from rayexp.study import Study

STUDY = Study(
    name="objective",
    description="task vectors: the reward named from the weights, superposition, negation",
    report=report_section,
)
