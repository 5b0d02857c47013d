"""What the verdict rule (:mod:`.verdict`) returns and the thresholds it decides by: the labels, one
:class:`Verdict` per (pair, task) with every interval the rule read and every bound its reason states,
and :class:`Thresholds` (their defaults are the ones README's "Reading a verdict" gives)."""

from __future__ import annotations

from dataclasses import dataclass

from rayexp.studies.composition.bounds import Interval

REWEIGHTING, INCONCLUSIVE, COMPOSITION, ELICITATION = -1, 0, 1, 2
LABELS = {
    REWEIGHTING: "reweighting",
    INCONCLUSIVE: "inconclusive",
    COMPOSITION: "composition",
    ELICITATION: "elicitation",
}
NAN = float("nan")


@dataclass(frozen=True)
class Verdict:
    code: int
    reason: str
    n_seeds: int
    score: Interval
    u_rw: Interval
    u_el: Interval
    d_rw: Interval
    d_el: Interval
    margin: Interval
    reference: str  # "null" | "absolute"
    spec: Interval = Interval()  # u_el_random - u_el: how much better pretrained features explain than random-init
    excess: Interval = Interval()  # score - the null's score, paired by seed (no null: NaN)
    shortfall: Interval = Interval()  # the policy's reward margin beyond the fitted map of p_pre's
    below_bar: Interval = Interval()  # the resolution bar minus u_rw: > 0 where nearer a planted reweighting
    share_max: Interval = Interval()  # the largest composed share a mixture can hold and leave what it leaves
    share_max_drift: Interval = Interval()  # the same for a rest that drifts as the null's policy does
    # the same two with the pair's learned composition as J (:mod:`.learned_bound`)
    share_max_learned: Interval = Interval()
    share_max_learned_drift: Interval = Interval()
    share_max_learned_l2: Interval = Interval()  # the residual bound with it, for a rest no larger than the null's
    # the residual bound on the Bayes probabilities for a rest no larger than the null's (:mod:`.bounds`),
    # over the seeds whose policy allows that premise
    share_max_soft_drift: Interval = Interval()
    beyond_lookup: Interval = Interval()  # the greedy reward beyond the best last-k-token lookup's (:mod:`.caveats`)
    # per premise (sharp rest, drifting rest in mass, drifting rest in L2): the seeds whose policy refutes it
    refuted_sharp: float = NAN
    refuted_drift: float = NAN
    refuted_soft: float = NAN
    # the same for the learned bounds' premises, against the pair's learned J (NaN: not checked, or no
    # learned bound: fewer than min_seeds paired, or no composition on the pair)
    refuted_learned_sharp: float = NAN
    refuted_learned_drift: float = NAN
    refuted_learned_l2: float = NAN

    @property
    def label(self) -> str:
        return LABELS[self.code]


@dataclass(frozen=True)
class Thresholds:
    tol: float = 0.05
    u_max: float = 0.35
    u_abs: float = 0.25
    margin_min: float = 0.5
    shortfall_min: float = 0.25
    min_seeds: int = 2
    kl_still: float = 0.05  # nats per step: below it the policy barely leaves its position-only one
    ci: float = 0.95
