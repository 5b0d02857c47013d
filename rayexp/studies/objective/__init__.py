"""Objectives in weight diffs (research note 002, docs/design.md §5): task vectors of PPO on several
rewards from one M_A; can the reward be read from the weights, do updates superpose, does negation
work beyond its null? The maths: :mod:`.task_vectors` (arithmetic, cosines by pair kind, the
leave-one-seed-out classifier and its permutation null, superposition), :mod:`.inference` (seed
jackknife intervals for pair statistics, Holm over modules) and :mod:`.returns` (exact returns of
any policy under any reward); the adapters: ``negation`` (:mod:`.negation_analysis`, one
trial) and ``task_vectors`` (:mod:`.task_vectors_analysis`, across trials), which share
:mod:`.exact_returns`; :mod:`.report` prints the summary."""

from rayexp.studies.objective import negation_analysis, task_vectors_analysis  # noqa: F401  (register)
from rayexp.studies.objective.report import report_section
from rayexp.study import Study

STUDY = Study(
    name="objective",
    description="task vectors: the reward named from the weights, superposition, negation",
    report=report_section,
)
