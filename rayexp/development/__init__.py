"""Development over training: the local learning coefficient (LLC) of checkpoints, and transitions.

DESIGN.md ("Development (003)") defines the question; each module here is maths on a model and a
fixed loss, never on a trial's files, so each has a unit test on a constructed case with a known
answer (tests/test_llc.py):

- :mod:`.llc`: the LLC by SGLD (devinterp), its diagnostics, a calibration rule over a grid of step
  size and localization, and a rule that locates transitions in a curve over training;
- :mod:`.losses`: the losses the LLC is taken of: next-token cross-entropy on fixed sequences of the
  pretraining process, and, for RL checkpoints, losses built from a fixed rollout buffer.

The adapter is :mod:`rayexp.analyses.llc`. Nothing here imports torch or devinterp at module level.
"""
