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

Its premise (the rest leaves the map no more than the planted sharp reweighting does, or than the null's
policy) is checked as the Bayes bound's is, with the learned policy as J: :func:`rest_min` is the least
mass any share of it leaves the rest, from the two trials' held-out residuals (each composition analysis
keeps its own; placing the learned policy places its residual, by the same linearity). A premise any seed
refutes is stated for none; trials stored without their residual leave it unchecked, and the reason says so.

The same residuals give the residual (L2) bound with the learned J (:func:`inner_products`,
:func:`.bounds.residual_bound`): for a rest whose residual is no larger than the null's, as the Bayes
probabilities' bound takes it. A mass bound charges the rest all the mass it leaves; the L2 bound charges
it only the part of its residual that can point against J's, so it can bound a composition that spends too
little mass to be seen, and the policy refutes its premise where no share of J leaves a rest that small.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rayexp.studies.composition.bounds import NAN, l2_clause, refuted, residual_bound, share_bound
from rayexp.studies.composition.projection import products, rest_mass_min
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
    v: Verdict,
    tv_policy,
    tv_sharp,
    tv_null,
    tv_learned,
    learned_from: str,
    th: Thresholds | None = None,
    least_rest=None,
    l2=None,
) -> Verdict:
    """``v`` with the composed-share bounds against ``learned_from``'s learned policy (per seed, what the
    map leaves of it: ``tv_learned``, NaN where a seed has no such trial on the same fit), for a rest
    resolved as sharpened p_pre (``tv_sharp``) and one that drifts as the null's policy (``tv_null``, None
    without a null); a verdict other than composition states each in its reason only where no seed refutes
    its premise, against the Bayes J (``v.refuted_*``) or against the learned J (``least_rest``: per seed the
    least mass any share of the learned policy leaves the rest, :func:`rest_min`; NaN or None: unchecked).
    ``l2``: per seed (``sq``, ``dot``, ``sq_learned``, ``sq_null``), the policy's squared residual, its inner
    product with the learned policy's, that one's own (:func:`inner_products`) and the null's, for the
    residual bound with a rest no larger than the null's, stated where no seed refutes its premise. Like the
    Bayes bound it decides nothing."""
    th = th or Thresholds()
    learned = share_bound(tv_policy, tv_sharp, tv_learned, th.min_seeds, th.ci)
    drift = share_bound(tv_policy, tv_null, tv_learned, th.min_seeds, th.ci)
    if not np.isfinite(learned.mean):  # fewer than min_seeds paired: no bound of either measure
        return v
    paired = np.isfinite(np.asarray(tv_learned, dtype=np.float64))
    least = np.full(paired.shape, np.nan) if least_rest is None else np.asarray(least_rest, dtype=np.float64)
    unchecked = int((paired & ~np.isfinite(least)).sum())
    k_sharp, n_sharp = refuted(least, tv_sharp)
    k_drift, n_drift = refuted(least, tv_null)
    l2_bound, k_l2, n_l2 = residual_bound(*l2, th.min_seeds, th.ci) if l2 is not None else (None, 0, 0)
    # a premise refuted against either J on some seed is stated for none (NaN, not checked, compares False)
    sharp_ok = not v.refuted_sharp > 0 and not k_sharp
    drift_ok = np.isfinite(drift.hi) and not v.refuted_drift > 0 and not k_drift
    reason = v.reason
    if v.code != COMPOSITION:
        against = f"{learned_from}'s learned composition"
        if sharp_ok:
            also = f"; {drift.hi:.2f} for a drifting rest" if drift_ok else ""
            reason += f"; it acts as {against} at most {learned.hi:.2f} of the time ({learned}{also})"
        elif drift_ok:
            why = ["the Bayes J"] if v.refuted_sharp > 0 else []
            why += [f"that policy on {k_sharp}/{n_sharp} seeds"] if k_sharp else []
            reason += (
                f"; it acts as {against} at most {drift.hi:.2f} of the time for a drifting rest ({drift}; for a "
                f"sharp rest, a premise this policy refutes against {' and against '.join(why)}, not stated)"
            )
        if (sharp_ok or drift_ok) and unchecked:
            reason += (
                f" (that premise not checked on {unchecked}/{int(paired.sum())} seeds: no residual kept, or not on one"
                " held-out set)"
            )
        # what no clause above has said: a premise refuted against the learned J (the sharp one is said
        # beside the drifting bound where that is stated)
        which = [
            f"{rest} rest on {k}/{n} seeds"
            for rest, k, n in (("a sharp", 0 if drift_ok else k_sharp, n_sharp), ("a drifting", k_drift, n_drift))
            if k
        ]
        if which:
            reason += f"; against {against} this policy refutes the premise of {' and of '.join(which)}"
        noted = (sharp_ok or drift_ok) and unchecked  # the note above said which seeds lack residuals
        reason += _l2_clause(l2_bound, k_l2, n_l2, int(paired.sum()), against, th.min_seeds, noted)
    return dataclasses.replace(
        v,
        reason=reason,
        share_max_learned=learned,
        share_max_learned_drift=drift,
        refuted_learned_sharp=float(k_sharp) if n_sharp else float("nan"),
        refuted_learned_drift=float(k_drift) if n_drift else float("nan"),
        share_max_learned_l2=v.share_max_learned_l2 if l2_bound is None else l2_bound,
        refuted_learned_l2=float(k_l2) if n_l2 else NAN,
    )


def _l2_clause(bound, k: int, n: int, paired: int, against: str, min_seeds: int, noted: bool) -> str:
    """The residual bound against the learned J (:func:`.bounds.l2_clause`), saying on how many of the ``paired``
    seeds it was checked where not all (``n``); where too few were to state it, that it was not checked,
    unless the mass bounds' note already said so (``noted``). Nothing without a null (``bound`` None)."""
    if bound is None:
        return ""
    why = "a residual, the policy's, the learned one's or the null's, not kept or not on one held-out set"
    if not k and n < min_seeds:
        return "" if noted or not paired else f"; the residual bound against {against} not checked ({why})"
    note = f"; checked on {n}/{paired} seeds, the others having {why}" if n < paired else ""
    return l2_clause(bound, k, n, against, note=note)


def rest_min(residual: np.ndarray, actions, learned_residual: np.ndarray, learned_actions) -> float:
    """The least mass per step any share of the learned policy leaves the rest of a policy (the learned bound's
    premise, :func:`.projection.rest_mass_min`), from each trial's held-out residual (n_test, L, A) and the
    tokens its actions are; the learned policy's placed on the tokens its actions claim among the policy's.
    NaN where they cannot be set side by side (another shape, or a learned action the policy lacks)."""
    r_j = placed(residual, actions, learned_residual, learned_actions)
    return NAN if r_j is None else rest_mass_min(np.asarray(residual, dtype=np.float64), r_j)


def inner_products(residual, actions, learned_residual, learned_actions) -> tuple[float, float, float]:
    """(``|r_pi|^2``, ``<r_pi, r_J>``, ``|r_J|^2``) per held-out sequence, the learned policy's residual
    ``r_J`` placed as :func:`rest_min` places it (the policy's own is its analysis's ``residual_sq``): what the
    residual bound takes. NaN where the two cannot be set side by side."""
    r_j = placed(residual, actions, learned_residual, learned_actions)
    return (NAN,) * 3 if r_j is None else tuple(x / len(r_j) for x in products(residual, r_j))


def placed(residual, actions, learned_residual, learned_actions) -> np.ndarray | None:
    """The learned policy's residual (n_test, L, A') on the policy's actions (n_test, L, A), each of its
    columns at the token its action is (the map commutes with the placement); None where another shape or
    a learned action the policy lacks keeps them apart."""
    actions, learned_actions = [int(x) for x in actions], [int(x) for x in learned_actions]
    residual, learned_residual = np.asarray(residual), np.asarray(learned_residual)
    if residual.shape[:-1] != learned_residual.shape[:-1] or not set(learned_actions) <= set(actions):
        return None
    out = np.zeros(residual.shape, dtype=np.float64)
    out[..., [actions.index(x) for x in learned_actions]] = learned_residual
    return out
