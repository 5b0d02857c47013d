"""How often a policy can act as the composition PPO learns on its pair, not only as the Bayes policy.

:func:`.resolution.composed_share_max` bounds the share ``a`` of a mixture ``a J + (1 - a) b`` from what
the map of p_pre leaves of the policy, of ``J`` and of the rest ``b``. Each trial takes ``J`` to be the
Bayes joint-target policy (its argmax), the sharpest composition its stream has. A policy that composes
some other way, softer or drifting as PPO's own composing policy does, can leave less to the map per step
spent composed, and the Bayes bound could then count too little of it.

The map is a mean of training policies chosen by p_pre alone, so it is linear in whatever policy it fits,
and the same bound holds with ``J`` any policy fitted on the same pretrained model, sequences and split:
here the pair's composing task's post-RL policy (its verdict composition), paired by seed. The composition
analysis draws its sequences and split from its own seed, the same for every trial of a sweep, so the
masses of two trials on one pretrained model are on the same sequences; :func:`same_fit` checks it by
the model's key, the analysis's sample (its n_seq and seed) and the resolution the fit used.

That policy's actions may be fewer than the policy's (the m joint targets among a next-token task's V
tokens). Placed on m of its actions it leaves the map the same mass (a fixed placement commutes with a
mean, and total variation is unchanged by it), so the bound needs only that the reference has no more
actions; with more, merging them would shrink what it leaves, and the bound is not stated.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rayexp.studies.composition.bounds import share_bound
from rayexp.studies.composition.verdict import COMPOSITION, Thresholds, Verdict


def same_fit(a: tuple, b: tuple) -> bool:
    """Whether two trials' maps of p_pre were fitted on one pretrained model and one sample, from their
    ``(model key, sample, resolution, n_actions)`` (the sample: what drew the analysis's sequences and
    split), and ``a``'s policy can be placed on ``b``'s actions."""
    (key_a, sample_a, res_a, n_a), (key_b, sample_b, res_b, n_b) = a, b
    if key_a is None or key_a != key_b or sample_a != sample_b or n_a is None or n_b is None:
        return False
    return bool(np.isfinite(res_a) and res_a == res_b and n_a <= n_b)


def learned_bound(
    v: Verdict, tv_policy, tv_sharp, tv_null, tv_learned, learned_from: str, th: Thresholds | None = None
) -> Verdict:
    """``v`` with the composed-share bounds against ``learned_from``'s learned policy (per seed, what the
    map leaves of it: ``tv_learned``, NaN where a seed has no such trial on the same fit), for a rest
    resolved as sharpened p_pre (``tv_sharp``) and one that drifts as the null's policy (``tv_null``, None
    without a null); a verdict other than composition states the first's high end in its reason (only the
    second's where its policy refutes the sharp rest's premise against the Bayes J on some seed, and neither
    premise where it refutes it so: they are not checked against the learned J, whose residual is another
    trial's). Like the Bayes bound it decides nothing."""
    th = th or Thresholds()
    learned = share_bound(tv_policy, tv_sharp, tv_learned, th.min_seeds, th.ci)
    drift = share_bound(tv_policy, tv_null, tv_learned, th.min_seeds, th.ci)
    if not np.isfinite(learned.mean):
        return v
    reason = v.reason
    # a premise refuted against the Bayes J on some seed is not stated against the learned J either (there it
    # is unchecked: the learned J's residual is another trial's), as the Bayes bounds beside it are not
    drift_ok = np.isfinite(drift.hi) and not v.refuted_drift > 0
    if v.code != COMPOSITION and v.refuted_sharp > 0:  # (NaN, not checked, compares False)
        if drift_ok:
            reason += (
                f"; it acts as {learned_from}'s learned composition at most {drift.hi:.2f} of the time for a drifting "
                f"rest ({drift}; for a sharp rest, a premise this policy refutes against the Bayes J, not stated)"
            )
    elif v.code != COMPOSITION:
        also = f"; {drift.hi:.2f} for a drifting rest" if drift_ok else ""
        reason += (
            f"; it acts as {learned_from}'s learned composition at most {learned.hi:.2f} of the time ({learned}{also})"
        )
    return dataclasses.replace(v, reason=reason, share_max_learned=learned, share_max_learned_drift=drift)
