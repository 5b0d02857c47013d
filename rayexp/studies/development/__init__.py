"""Development over training (research note 003, docs/design.md §5): the local learning coefficient
(LLC) of pretraining and PPO checkpoints, and transitions.

Each module is maths on a model and a fixed loss, never on a trial's files, so each has a unit test
on a constructed case with a known answer (tests/test_llc.py):

- :mod:`.llc`: the LLC by SGLD (devinterp), its diagnostics, a calibration rule over a grid of step
  size and localization, and a rule that locates transitions in a curve over training;
- :mod:`.losses`: the losses the LLC is taken of: next-token cross-entropy on fixed sequences of the
  pretraining process, and, for RL checkpoints, losses built from a fixed rollout buffer.

The adapter is the ``llc`` analysis (:mod:`.llc_analysis`). Nothing here imports torch or devinterp
at module level.
"""

from rayexp.studies.development import llc_analysis  # noqa: F401  (registers the analysis)
from rayexp.study import Study

STUDY = Study(name="development", description="the LLC over pretraining and PPO checkpoints, transitions located")
