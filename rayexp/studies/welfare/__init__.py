"""Reward and punishment concept vectors (research note 004, docs/design.md §5): difference-of-means
vectors per layer, antiparallel or not, present before RL or not, and whether they steer against
norm-matched controls off the activation manifold (random, orthogonal) and on it (shuffled-label
vectors, random-group mean differences). The maths in :mod:`.concepts` and, across seeds,
:mod:`.summary`; the trial adapter is the ``concept_vectors`` analysis (:mod:`.concept_vectors_analysis`);
:mod:`.report` its summary; ``matched_null`` (:mod:`.matched_null_analysis`, sweep scope) sets RL's
rotation of the vectors against the shuffled-reward null's update scaled to RL's norm."""

from rayexp.studies.welfare import concept_vectors_analysis, matched_null_analysis  # noqa: F401  (register them)
from rayexp.studies.welfare.report import report_section
from rayexp.study import Study

STUDY = Study(
    name="welfare",
    description="reward and punishment concept vectors before and after RL, and steering",
    report=report_section,
)
