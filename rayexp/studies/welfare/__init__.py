"""Reward and punishment concept vectors (research note 004, docs/design.md §5): difference-of-means
vectors per layer, antiparallel or not, present before RL or not, and whether they steer against
norm-matched controls off the activation manifold (random, orthogonal) and on it (shuffled-label
vectors, random-group mean differences). The maths in :mod:`.concepts` and, across seeds,
:mod:`.summary`; the trial adapter is the ``concept_vectors`` analysis (:mod:`.concept_vectors_analysis`);
:mod:`.report` its summary."""

from rayexp.studies.welfare import concept_vectors_analysis  # noqa: F401  (registers the analysis)
from rayexp.studies.welfare.report import report_section
from rayexp.study import Study

STUDY = Study(
    name="welfare",
    description="reward and punishment concept vectors before and after RL, and steering",
    report=report_section,
)
