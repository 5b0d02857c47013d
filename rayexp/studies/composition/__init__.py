"""Composition vs reweighting (docs/design.md §4): does RL compose the factors' belief states into
something new, or reweight what the pretrained model already output?

The maths, each module a signal computed from arrays (policies, exact target distributions,
features), never from a model, so each has a unit test on a constructed case with a known answer
(tests/test_composition*.py, tests/test_representation.py):

- :mod:`.interaction`: the share of the policy's variance that is interaction between two factors
  (2x2 resampling of each factor's history);
- :mod:`.reweighting`: how well the post-RL policy is predicted from the pre-RL full distribution,
  and kappa, the interaction left in what that prediction misses (the verdict's score);
- :mod:`.readout`: reward reachable by a linear readout of frozen features;
- :mod:`.update`: update sparsity by depth and the equal-norm random perturbation (the null);
- :mod:`.representation`: factor and joint belief probes, dimensionality, subspace overlap, CKA;
- :mod:`.classes` / :mod:`.support`: the policy classes (map of p_pre, readout of frozen features) and
  the LLM literature's support proxies, exact;
- :mod:`.geometry`: the joint-only part of the joint belief, linear erasure of a belief subspace;
- :mod:`.verdict`: reweighting / elicitation / composition / inconclusive over seeds, and why;
  :mod:`.battery` checks it on planted policies.

Exact targets and ceilings are shared with other studies (:mod:`rayexp.exact`). The adapters are the
analyses ``composition`` (:mod:`.composition_analysis`), ``representation``
(:mod:`.representation_analysis`), ``geometry`` (:mod:`.geometry_analysis`) and, across seeds,
``verdict`` (:mod:`.verdict_analysis`) and ``geometry_summary`` (:mod:`.geometry_summary`);
:mod:`.report` prints the verdict table (and :mod:`.geometry_report` the geometry summary).
"""

from rayexp.studies.composition import (  # noqa: F401
    composition_analysis,
    geometry_analysis,
    geometry_summary,
    representation_analysis,
    verdict_analysis,
)
from rayexp.studies.composition.report import after_sweep, report_section
from rayexp.study import Study

STUDY = Study(
    name="composition",
    description="composition vs reweighting: the detector's signals and its verdict over seeds",
    summary_columns=(
        ("analysis/composition/reward/post/greedy", "greedy reward"),
        ("analysis/composition/ceiling/optimum", "optimum"),
        ("analysis/composition/classes/reweighting/unexplained/post", "u map"),
        ("analysis/composition/classes/elicitation/unexplained/post", "u readout"),
        ("analysis/composition/margin_phase_greedy/post", "margin"),
    ),
    report=report_section,
    after_sweep=after_sweep,
    # the verdict on each trial run (tags rayexp.verdict, rayexp.verdict.score, ...) and the sweep's
    # verdict table on the parent: the label, then the numbers the rule decides by, and its reason
    run_annotations={
        "verdict": (
            "verdict",
            (
                "verdict",
                "score",
                "score_ci_low",
                "score_ci_high",
                "u_rw",
                "u_el",
                "spec",
                "margin",
                "shortfall",
                "below_bar",
                "share_max_hi",
                "share_max_drift_hi",
                "share_max_learned_hi",
                "share_max_learned_l2_hi",
                "share_max_soft_drift_hi",
                "beyond_lookup",
                # beside each bound, on how many seeds its policy refutes the premise (the reason then withholds it)
                "refuted_sharp",
                "refuted_drift",
                "refuted_soft",
                "refuted_learned_sharp",
                "refuted_learned_drift",
                "refuted_learned_l2",
                "n_seeds",
                "reason",
            ),
        )
    },
)
