"""Development over training (research note 003, docs/design.md §5): the local learning coefficient
(LLC) of pretraining and PPO checkpoints, and transitions.

Each module is maths on a model and a fixed loss, never on a trial's files, so each has a unit test
on a constructed case with a known answer (tests/test_llc.py, tests/test_transitions.py):

- :mod:`.sgld`: SGLD chains (RMSprop-preconditioned, adapted in the burn-in and then frozen);
- :mod:`.convergence`: split R-hat across chains, and the threshold above which an estimate is unsettled;
- :mod:`.llc`: the estimate, its diagnostics and the study's one SGLD setting;
- :mod:`.transitions`: where a curve over training jumps, at a stated false-alarm rate;
- :mod:`.rlct`: learning coefficients known in closed form (Aoyagi's deep linear networks,
  normal-crossing potentials), the tests' known answers;
- :mod:`.losses`: the loss the LLC is taken of: the self-KL on the pretraining stream, the same
  for every trial and checkpoint.

:mod:`.growth` is how far RL moved the LLC and the paired comparison with the shuffled-reward null;
:mod:`.report` its section of ``rayexp report``.

The adapter is the ``llc`` analysis (:mod:`.llc_analysis`, figure in :mod:`.llc_figure`). Nothing
here imports torch at module level.
"""

from rayexp.studies.development import llc_analysis  # noqa: F401  (registers the analysis)
from rayexp.studies.development.report import after_sweep, report_section
from rayexp.study import Study

STUDY = Study(
    name="development",
    description="the LLC over pretraining and PPO checkpoints, transitions located, growth against the null",
    report=report_section,
    after_sweep=after_sweep,
)
