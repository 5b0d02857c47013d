"""Rare capabilities (research note 000 §1.5.3, docs/design.md §5): a gated factor seen only after a
trigger the agent can choose; pretraining exposure to it as an axis. :mod:`.positions` finds the
positions around triggers and the trigger rate; :mod:`.capability` defines the capability itself
(B predicted at the trigger, against its exact ceiling and chance); the trial adapter is the ``rare``
analysis (:mod:`.rare_analysis`); :mod:`.summary` the across-seed maths (Student-t, Welch) and
:mod:`.report` its section per exposure."""

from rayexp.studies.rare import rare_analysis  # noqa: F401  (registers the analysis)
from rayexp.studies.rare.report import report_section
from rayexp.study import Study

STUDY = Study(
    name="rare",
    description="a gated capability RL must find: B skill at the trigger, trigger rate, B's belief",
    report=report_section,
)
