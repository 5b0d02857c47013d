"""The verdict over seeds: composition, reweighting or inconclusive, by a rule written down here.

Inputs, one value per seed (per trial) of a group (one process, one task), from the per-trial
``composition`` analysis:

- ``composed`` = kappa_post (``composed/post``): the share of the post-RL policy's variance that is
  interaction between the two factors *and* not predicted from the pre-RL model's full output
  distribution (:func:`.reweighting.composed_terms`: the 2x2 interaction of the residual of the
  reweighting fit, on held-out sequences);
- ``reweighting_r2`` = R^2_post (``reweighting_r2/post``): the share a fixed map g of the pre-RL
  outputs predicts on held-out sequences (:mod:`.reweighting`);
- ``margin`` = the post-RL policy's *greedy* composition margin (``margin_greedy/post``,
  :mod:`.ceilings`): where its choice sits between the best single-factor policy (0) and the Bayes
  optimum (1). Greedy, because the expected-reward margin also rises with mere sharpening (a
  next-token policy sharpened by RL goes from margin ~0 to ~1 without composing anything), while a
  composing policy that PPO's entropy bonus keeps stochastic still chooses right.

Rule (defaults ``threshold`` tau = 0.1, ``r2_min`` = 0.8, ``margin_min`` = 0.5; CIs are 95%
percentile bootstraps of the mean over seeds)::

    score = mean over seeds of kappa_post, with its CI [lo, hi]
    reweighting   if CI_low(R^2_post) > r2_min
    composition   elif lo > tau  and  CI_low(margin) > margin_min
    inconclusive  otherwise

Where kappa is undefined for every seed (a mixture, whose components never run together, so there is
no factor pair to interact), R^2 alone decides: reweighting if its CI low > r2_min, else inconclusive.

With fewer than ``min_seeds`` = 2 seeds the same rule runs on the one trial's intervals over its
held-out contexts when they are given (``context_ci``; the quickstart's one-seed verdict, labelled as
such in its reason: it says how sure the signals are for this model, not across training runs);
without them the verdict is inconclusive and the score is reported with NaN bounds.

Why. docs/design.md §4.1 defines reweighting as pi_post ~ g(p_pre) for one map g: that is R^2_post near 1,
whatever else holds, so it is decided on R^2 alone, and first. Composition is a policy that depends
jointly and non-additively on both factors in a way no such g gives: exactly kappa, the interaction
left in what g cannot explain. Neither signal alone would do: eta (the policy's own interaction
share) is 0.99 for the ``(a + b) mod 3`` target on a *product* stream, whose joint tokens carry
both factors so the answer is a fixed sum of the pretrained outputs (R^2 1.00, kappa 0.00:
reweighting); and 1 - R^2 is large for any new single-factor computation, which is not composition
(kappa ~ 0: inconclusive). The margin guards the remaining side: composition must also earn reward,
its choice at least half the way from the best single factor to the optimum, across seeds.

An earlier candidate, score = eta_post - R^2_post (a lower bound on kappa), failed here: on
interleave(mess3, rrxor), where mess3 alone already reaches 0.432 of the optimum 0.488, the
Bayes-optimal joint policy has eta 0.12 and R^2 0.44 (score -0.32) while kappa = 0.12 is its whole
interaction.

Validated on stand-ins for the controls on interleave(mess3(0.05, 0.85) x 2), context 10: a 4-layer
d64 transformer pretrained to 0.005 nats of optimal, then 300 steps of gradient ascent on the exact
expected reward (PPO's expected update), 3 seeds each, n_seq 1000:

- positive (joint_target m=3): kappa 0.82-0.83 (eta 0.91-0.93), R^2 0.07-0.08, greedy margin 1.00:
  composition;
- negative (next_token): kappa 0.0009, R^2 0.95: reweighting;
- null (the joint-target rewards permuted across contexts, so they say nothing about the action):
  kappa 0.006-0.03, R^2 0.84-0.86, greedy margin 0.01: reweighting (R^2's CI low 0.835 is near
  r2_min, so with PPO's sampling noise it may come out inconclusive), never composition;
- the pre-RL model moved at random by RL's update norm: kappa 0.0003, R^2 0.99: reweighting;
- exact (oracle) policies: Bayes-optimal joint policy kappa 0.98, eta 1.00 (for symmetric Mess3
  factors the cyclic symmetry makes both main effects vanish), R^2 0.00; sharpened next-token
  policy kappa 0.000, R^2 1.00; on interleave(mess3, rrxor) the optimum's kappa is only 0.12, so
  that stream's positive control can at best just clear tau: symmetric factor pairs give verdicts.

Noise: at n_seq 1000 kappa's sd over evaluation sets is ~0.03 at 0.85 and ~0.003 at 0.03; R^2's
~0.006. The stand-ins are not PPO runs and share one pretrained model (so their CIs over seeds are
narrow): tau, r2_min and margin_min are parameters, to be rechecked on the composition sweep's
controls (>= 5 seeds each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayexp.stats import bootstrap_ci

COMPOSITION, REWEIGHTING, INCONCLUSIVE = 1, -1, 0
LABELS = {COMPOSITION: "composition", REWEIGHTING: "reweighting", INCONCLUSIVE: "inconclusive"}


@dataclass(frozen=True)
class Verdict:
    score: float  # mean kappa_post over seeds
    ci_low: float
    ci_high: float
    r2_ci_low: float
    margin_ci_low: float
    n_seeds: int
    code: int  # +1 composition, -1 reweighting, 0 inconclusive
    reason: str

    @property
    def label(self) -> str:
        return LABELS[self.code]


def decide(
    composed,
    reweighting_r2,
    margin,
    threshold: float = 0.1,
    r2_min: float = 0.8,
    margin_min: float = 0.5,
    min_seeds: int = 2,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    context_ci: dict[str, float] | None = None,
) -> Verdict:
    """The verdict of the rule in the module docstring, from per-seed values (n,) of kappa_post,
    R^2_post and the greedy margin."""
    kappa = np.asarray(composed, dtype=np.float64)
    r2 = np.asarray(reweighting_r2, dtype=np.float64)
    ok = np.isfinite(kappa) & np.isfinite(r2)
    n = int(ok.sum())
    nan = float("nan")
    if n == 0 and np.isfinite(r2).sum() >= min_seeds:
        # no factor pair to interact (a mixture's components never run together): R^2 alone decides
        r2_ok = r2[np.isfinite(r2)]
        r2_lo = bootstrap_ci(r2_ok, n_boot=n_boot, ci=ci, seed=seed)[1]
        code = REWEIGHTING if r2_lo > r2_min else INCONCLUSIVE
        why = "a fixed map of the pre-RL outputs" if code == REWEIGHTING else "kappa undefined, so no composition test"
        reason = (
            f"no factor pair (kappa undefined); R^2_post CI low {r2_lo:.2f} {'>' if code else '<='} {r2_min}: {why}"
        )
        return Verdict(nan, nan, nan, r2_lo, nan, len(r2_ok), code, reason)
    if n == 0:
        return Verdict(nan, nan, nan, nan, nan, 0, INCONCLUSIVE, "no seed has both kappa and R^2")
    point, lo, hi = bootstrap_ci(kappa[ok], n_boot=n_boot, ci=ci, seed=seed)
    prefix = ""
    if n < min_seeds:
        keys = ("composed_ci_low", "composed_ci_high", "r2_ci_low", "margin_ci_low")
        if not context_ci or not all(np.isfinite(context_ci.get(k, nan)) for k in keys[:3]):
            return Verdict(point, nan, nan, nan, nan, n, INCONCLUSIVE, f"{n} seed(s) < {min_seeds}: no CI over seeds")
        lo, hi, r2_lo, m_lo = (float(context_ci.get(k, nan)) for k in keys)
        prefix = f"{n} seed: CIs over held-out contexts, not seeds; "
    else:
        r2_lo = bootstrap_ci(r2[ok], n_boot=n_boot, ci=ci, seed=seed)[1]
        m_lo = bootstrap_ci(np.asarray(margin, dtype=np.float64), n_boot=n_boot, ci=ci, seed=seed)[1]

    def out(code: int, reason: str) -> Verdict:
        return Verdict(point, lo, hi, r2_lo, m_lo, n, code, prefix + reason)

    if r2_lo > r2_min:
        return out(REWEIGHTING, f"R^2_post CI low {r2_lo:.2f} > {r2_min}: a fixed map of the pre-RL outputs")
    if lo > threshold:
        if np.isfinite(m_lo) and m_lo > margin_min:
            return out(
                COMPOSITION, f"kappa CI low {lo:.2f} > {threshold}, greedy margin CI low {m_lo:.2f} > {margin_min}"
            )
        why = "undefined" if not np.isfinite(m_lo) else f"CI low {m_lo:.2f} <= {margin_min}"
        return out(INCONCLUSIVE, f"kappa CI low {lo:.2f} > {threshold} but greedy margin {why}")
    return out(
        INCONCLUSIVE, f"kappa CI [{lo:.2f}, {hi:.2f}] not above {threshold}; R^2_post CI low {r2_lo:.2f} <= {r2_min}"
    )
