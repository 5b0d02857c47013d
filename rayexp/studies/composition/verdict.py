"""The verdict over seeds: reweighting, elicitation, composition or inconclusive (docs/design.md §4).

Inputs, one value per seed (per trial) of one task on one process pair, from the per-trial
``composition`` analysis (:mod:`.classes`), each measured on held-out sequences, within position:

- ``u_rw``: the share of the post-RL policy's deviation from its position-only policy (total
  variation) that no fixed map of the pretrained model's full next-token distribution explains
  (``classes/reweighting/unexplained/post``, a k-NN map per position, sharp maps included);
- ``u_el``: the same for a linear readout of the frozen pretrained residual stream, all layers
  (``classes/elicitation/unexplained/post``);
- ``margin``: where the post-RL policy's *greedy* reward sits between the best per-phase
  single-factor policy (0) and the Bayes optimum (1) (``margin_phase_greedy/post``);
- the same pair's shuffled-reward null (same seeds), ``u_rw_null`` and ``u_el_null``: what PPO's own
  drift leaves unexplained. ``d = u - u_null`` is paired by seed;
- ``u_el_random``: what the same readout leaves unexplained from a *random-init* network's features
  (``classes/elicitation_random_init/unexplained/post``). ``spec = u_el_random - u_el``, paired by seed,
  is how much better the pretrained features explain the policy than features any network has;
- ``shortfall``: the post-RL policy's greedy reward minus the greedy reward of the fitted map of p_pre
  itself, over the gap between the best per-phase single factor and the optimum
  (``classes/reweighting/shortfall/post``), on the held-out sequences: how much of its reward no map of
  the pretrained outputs earns (above 1 where the map earns less than the per-phase single factor).
- ``below_bar``: the trial's resolution bar minus ``u_rw``, paired over held-out sequences
  (``classes/reweighting/below_bar/post``): the bar is halfway between what the same map leaves of a
  planted sharp reweighting and the lesser of what it leaves of a policy composed a quarter of the time
  sharply (the joint target's argmax) or softly (its Bayes probabilities), on the trial's own model
  (:mod:`.resolution`); ``u_composed``: what it leaves of the joint-target policy itself
  (``classes/planted/composed/unexplained``).

Rule (``tol`` 0.05, ``u_max`` 0.35, ``margin_min`` 0.5, ``shortfall_min`` 0.25; intervals are Student-t
over seeds, 95 %)::

    explained(class)    = CI_high(d) < tol  and  CI_high(u) < u_max
    unexplained(class)  = CI_low(d) > tol
    from_pretraining    = CI_low(spec) > tol        generic = CI_high(spec) < tol
    resolved            = CI_low(below_bar) > 0  or  CI_high(u_composed) < u_max
    earned              = not CI_high(shortfall) >= shortfall_min   (the map earns the policy's reward)
    reweighting    if explained(reweighting) and earned and resolved
    elicitation    elif explained(elicitation) and from_pretraining
    composition    elif unexplained(reweighting) and (unexplained(elicitation) or generic)
                        and CI_low(margin) > margin_min and CI_low(shortfall) > shortfall_min
    inconclusive   otherwise (the reason says which test failed)

Without ``shortfall`` (trials that logged none) that test is skipped, and a composition reason says so; a
shortfall finite on one seed of several has no interval and shows no composition. ``resolved`` is skipped
without ``below_bar`` (trials logged before it), and the reason says so; a bar (or ``u_composed``)
finite on one seed of several has no interval and resolves nothing (inconclusive unless the readout
explains the policy). ``shortfall`` is also NaN where one factor per phase is optimal (a next-token
task), where composing earns nothing and ``earned`` holds. A policy explained but not ``earned`` or not
``resolved`` is inconclusive unless the readout explains it (elicitation). ``earned`` exists because the
bar and the map's share count probability mass: a policy that acts as a *soft* joint-target policy (the
Bayes probabilities themselves) a quarter of the time leaves a map of p_pre little more than a sharp
reweighting does, and the battery's Mess3 interleaves called it reweighting, though its choices earned
0.45 of the composing margin beyond the map's. Where its choices are sharpened p_pre's (the battery's
redraws with a leaky model) ``earned`` cannot see it, and since 1fa7798 the bar itself goes halfway to
that soft quarter (:mod:`.resolution`).

What a reason adds without changing the label (a policy that barely moved, a null on fewer seeds, a
composition a lookup of the last tokens matches): :mod:`.caveats`.

Without ``u_el_random`` the readout is taken as from pretraining and never as generic (the rule
before the control, kept for callers that lack it). A control finite on one seed only (a group mixing
trials logged before and after it) has no interval: the readout is then neither credited to
pretraining nor called generic, and the reason says so.

score = mean over seeds of min over the classes of the probability mass per step (total variation)
the class leaves unexplained: it grows in proportion to a policy's composed part, and it is in the
same units for every task, the null included, so the positive control's interval can be set against
the negative control's and the null's. ``excess`` = score - the null's score, paired by seed: what
neither class explains beyond PPO's own drift.

Without a null for the pair (or for the null task itself) the reference is absolute: explained is
``CI_high(u) < u_abs`` and unexplained ``CI_low(u) > u_abs`` (``u_abs`` 0.25), and the reason says so.
With one seed the same rule runs on that trial's intervals over held-out contexts (the null, if
any, at its point value), and the reason says so: it tells how sure the signals are for this model,
not across training runs.

Why each test, and what the battery or a PPO run showed before it was added: docs/design.md §4. The
thresholds are parameters, checked on the known-answer battery (:mod:`.battery`) and on the PPO
controls (docs/results/composition.md).
"""

from __future__ import annotations

import numpy as np

from rayexp.stats import t_ci
from rayexp.studies.composition import bounds, caveats, resolution
from rayexp.studies.composition.bounds import Interval, Residuals
from rayexp.studies.composition.verdict_types import (  # the rule's names, also imported from here
    COMPOSITION,
    ELICITATION,
    INCONCLUSIVE,
    NAN,
    REWEIGHTING,
    Thresholds,
    Verdict,
)


def _arr(x) -> np.ndarray:
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


def _null_values(u_rw_null, u_el_null, tv, in_mass: bool) -> np.ndarray | None:
    """The null's score per seed in the unit of the task's (mass per step from ``tv``, else shares); None
    where the null has no value in that unit: an excess is taken in one unit only."""
    if not in_mass:
        return np.minimum(_arr(u_rw_null), _arr(u_el_null))
    return None if tv is None or tv[2] is None else np.minimum(_arr(tv[2]), _arr(tv[3]))


def decide(
    u_rw,
    u_el,
    margin,
    u_rw_null=None,
    u_el_null=None,
    th: Thresholds | None = None,
    context: dict[str, Interval] | None = None,
    tv: tuple | None = None,
    u_el_random=None,
    shortfall=None,
    kl_position=None,
    below_bar=None,
    u_composed=None,
    planted_defined=None,
    share_max=None,
    tv_composed=None,
    residuals: Residuals | None = None,
    beyond_lookup=None,
) -> Verdict:
    """The verdict of the rule in the module docstring from per-seed values (n,); the null's (n,)
    are paired with them by position (NaN where a seed has no null). ``context``: one trial's
    intervals over held-out contexts for ``u_rw``, ``u_el`` and ``margin``, used below ``min_seeds``.
    ``tv``: (tv_rw, tv_el, tv_rw_null, tv_el_null) per seed, the unexplained probability mass per step;
    with it the score is in those units (it grows in proportion to a policy's composed part), else in
    shares; below ``min_seeds`` ``context["tv_rw"]``/``context["tv_el"]`` are its intervals over
    held-out contexts. ``u_el_random`` (n,): the readout of random-init features, per seed (below ``min_seeds``,
    ``context["spec"]`` is its paired interval over held-out contexts). ``shortfall`` (n,): the reward
    margin no map of p_pre earns, per seed (below ``min_seeds``, ``context["shortfall"]``). ``kl_position``
    (n,): the policy's KL from its position-only policy per step, per seed; a mean below ``kl_still``
    adds to a reweighting or elicitation reason that there was little to explain. ``below_bar`` (n,): the
    trial's resolution bar minus its ``u_rw``, per seed (below ``min_seeds``, ``context["below_bar"]``), and
    ``u_composed`` (n,): what a map of p_pre leaves of the joint-target policy itself (:mod:`.resolution`);
    without them the bar is not tested, and a reweighting reason says so, and says why where
    ``planted_defined`` (n,) is 0 on every seed: the stream has no joint target to plant. ``share_max``
    (n,): the largest share of the joint-target policy a mixture can hold and leave what the policy
    leaves (:func:`.resolution.composed_share_max`, per seed; below ``min_seeds``, ``context["share_max"]``);
    it decides nothing, and a verdict other than composition states its high end where the joint-target
    policy is visible to the fit (the high end of ``u_composed`` >= ``u_max``). ``tv_composed`` (n,): what the
    map leaves of the joint-target policy, mass per step; with it and the null's ``tv`` the same bound is stated for a
    rest that drifts as the null's policy does (``share_max_drift``, paired by seed; not below ``min_seeds``).
    ``residuals`` (:class:`.bounds.Residuals`): with it each bound is stated only where no seed's policy
    refutes its premise, and the residual bound on the Bayes probabilities is stated too (:mod:`.bounds`).
    ``beyond_lookup`` (n,): the greedy reward beyond the best last-k-token lookup's, per seed; a composition
    reason says whether it is shown (:func:`.caveats.lookup_note`)."""
    th = th or Thresholds()
    u_rw, u_el, margin = _arr(u_rw), _arr(u_el), _arr(margin)
    have_null = u_rw_null is not None and u_el_null is not None and np.isfinite(_arr(u_rw_null)).any()
    n = int((np.isfinite(u_rw) & np.isfinite(u_el)).sum())
    prefix = ""
    excess = Interval()
    if n == 0:
        empty = Interval()
        return Verdict(INCONCLUSIVE, "no seed has both fits", 0, empty, empty, empty, empty, empty, empty, "-")
    if n < th.min_seeds:
        if context is None:
            empty = Interval()
            reason = f"{n} seed(s) < {th.min_seeds}: no interval over seeds"
            return Verdict(INCONCLUSIVE, reason, n, empty, empty, empty, empty, empty, empty, "-")
        i_rw, i_el, i_m = context["u_rw"], context["u_el"], context["margin"]
        nrw = float(np.nanmean(_arr(u_rw_null))) if have_null else 0.0
        nel = float(np.nanmean(_arr(u_el_null))) if have_null else 0.0
        d_rw = Interval(i_rw.mean - nrw, i_rw.lo - nrw, i_rw.hi - nrw)
        d_el = Interval(i_el.mean - nel, i_el.lo - nel, i_el.hi - nel)
        s_rw, s_el = (context["tv_rw"], context["tv_el"]) if "tv_rw" in context else (i_rw, i_el)
        score = Interval(min(s_rw.mean, s_el.mean), min(s_rw.lo, s_el.lo), min(s_rw.hi, s_el.hi))
        null_values = _null_values(u_rw_null, u_el_null, tv, "tv_rw" in context) if have_null else None
        if null_values is not None:  # the null at its point value
            null = float(np.nanmean(null_values))
            excess = Interval(score.mean - null, score.lo - null, score.hi - null)
        prefix = "1 seed: intervals over held-out contexts, not seeds; "
    else:
        i_rw, i_el, i_m = Interval(*t_ci(u_rw, th.ci)), Interval(*t_ci(u_el, th.ci)), Interval(*t_ci(margin, th.ci))
        if have_null:
            drw, del_ = u_rw - _arr(u_rw_null), u_el - _arr(u_el_null)
        else:
            drw, del_ = u_rw, u_el
        d_rw, d_el = Interval(*t_ci(drw, th.ci)), Interval(*t_ci(del_, th.ci))
        prefix = caveats.few_note(n)
        if have_null:
            prefix += caveats.null_note((u_rw, u_el, u_rw_null, u_el_null), n)
        # the score in probability mass where the trials give it, else in shares; absolute either way
        mass = tv is not None and np.isfinite(_arr(tv[0])).any()
        own = np.minimum(_arr(tv[0]), _arr(tv[1])) if mass else np.minimum(u_rw, u_el)
        score = Interval(*t_ci(own, th.ci))
        null_values = _null_values(u_rw_null, u_el_null, tv, mass) if have_null else None
        if null_values is not None:
            excess = Interval(*t_ci(own - null_values, th.ci))
    ref = "null" if have_null else "absolute"
    if not have_null and n < th.min_seeds:
        d_rw, d_el = i_rw, i_el
    spec = Interval()
    if n < th.min_seeds:
        spec = context.get("spec", Interval())
    elif u_el_random is not None and np.isfinite(_arr(u_el_random)).any():
        spec = Interval(*t_ci(_arr(u_el_random) - u_el, th.ci))

    def over_seeds(values, key: str) -> Interval:
        """An optional per-seed signal's interval over seeds (one finite seed: its value, no bounds);
        below ``min_seeds`` the trial's own interval ``context[key]``; absent: NaN."""
        if n < th.min_seeds:
            return context.get(key, Interval())
        if values is not None and np.isfinite(_arr(values)).any():
            return Interval(*t_ci(_arr(values), th.ci))
        return Interval()

    def thin(iv: Interval) -> bool:
        """A value with no interval: a signal finite on one seed of several (a group mixing trials logged
        before and after it), or one trial's point value. It neither shows nor refutes what it measures."""
        return bool(np.isfinite(iv.mean)) and not np.isfinite(iv.lo)

    short = over_seeds(shortfall, "shortfall")
    bar = over_seeds(below_bar, "below_bar")
    thin_bar = n >= th.min_seeds and thin(bar)
    lookup = over_seeds(beyond_lookup, "beyond_lookup")
    most = over_seeds(share_max, "share_max")
    most = Interval(*resolution.capped((most.mean, most.lo, most.hi)).tolist())
    # a rest that leaves as much as the null's policy: PPO's drift, not a planted map (paired by seed)
    drifting = Interval()
    if n >= th.min_seeds and tv is not None and have_null:
        drifting = bounds.share_bound(tv[0], tv[2], tv_composed, th.min_seeds, th.ci)
    soft, counts = Interval(), {}
    if residuals is not None:
        r = residuals
        soft, k_soft, n_soft = bounds.residual_bound(r.sq, r.dot_soft, r.sq_soft, r.sq_null, th.min_seeds, th.ci)
        counts["soft"] = (k_soft, n_soft)
        counts |= {"sharp": bounds.refuted(r.rest_min, r.tv_sharp), "drift": bounds.refuted(r.rest_min, r.tv_null)}
    # the joint-target policy's own share, and the high end the "not visible" shortcut needs (one seed: its value)
    composed, composed_hi = NAN, NAN
    if u_composed is not None and np.isfinite(_arr(u_composed)).any():
        each = _arr(u_composed)
        composed = float(np.nanmean(each))
        # one finite value among several seeds has no high end (as a thin bar): the shortcut is not taken
        if n < th.min_seeds:
            composed_hi = composed
        elif np.isfinite(each).sum() >= 2:
            composed_hi = t_ci(each, th.ci)[2]
    visible = (composed_hi if np.isfinite(composed_hi) else composed) >= th.u_max
    has_control = bool(np.isfinite(spec.lo))
    # a control logged for one seed only has no interval: it neither credits pretraining nor refutes it
    thin_control = thin(spec)
    from_pretraining = spec.lo > th.tol if has_control else not thin_control
    generic = has_control and spec.hi < th.tol

    def explained(d: Interval, u: Interval) -> bool:
        if have_null:
            return d.hi < th.tol and u.hi < th.u_max
        return u.hi < th.u_abs

    def unexplained(d: Interval, u: Interval) -> bool:
        return d.lo > th.tol if have_null else u.lo > th.u_abs

    still = NAN if kl_position is None or not np.isfinite(_arr(kl_position)).any() else np.nanmean(_arr(kl_position))

    def out(code: int, why: str) -> Verdict:
        if code in (REWEIGHTING, ELICITATION):
            why += caveats.still_note(still, th.kl_still)
        # where the joint-target policy is itself nearly a map (a product), holding it is no composition
        if code != COMPOSITION:
            why += bounds.clauses(most, drifting, soft, counts, visible=visible, n_seeds=n)
        k = {f"refuted_{p}": float(c[0]) if c[1] else NAN for p, c in counts.items()}
        return Verdict(
            code, prefix + why, n, score, i_rw, i_el, d_rw, d_el, i_m, ref, spec, excess, short, bar, most, drifting,
            share_max_soft_drift=soft, beyond_lookup=lookup, **k,
        )  # fmt: skip

    against = "beyond the null" if have_null else "absolute, no null for this pair"
    # what is left, said against the null where there is one (else as an absolute share, saying so)
    beyond = "beyond the null" if have_null else "unexplained (absolute, no null for this pair)"
    near_bar = ""  # why a map that explains the policy is not enough: it leaves too much to tell, or earns too little
    # without bounds (one trial that logged no interval over its contexts) the point value decides; a
    # shortfall finite on one seed of several (a group mixing trials logged before and after it) shows no
    # composition
    bounded = np.isfinite(short.lo)
    short_lo, short_hi = (short.lo, short.hi) if bounded else (short.mean, short.mean)
    if explained(d_rw, i_rw):
        why_rw = f"a map of p_pre leaves {i_rw} unexplained ({against}: {d_rw})"
        if short_hi >= th.shortfall_min:  # (NaN: one factor per phase is optimal, composing earns nothing)
            near_bar = (
                why_rw + f", but the fitted map does not earn the policy's reward (shortfall {short}, not shown "
                f"below {th.shortfall_min:g}): a policy composed part of the time, softly, leaves little mass"
            )
        elif composed_hi < th.u_max:  # a product's joint target is a map of p_pre: composition is not visible
            return out(
                REWEIGHTING,
                why_rw + f"; the joint-target policy itself leaves {composed:.2f} to such a map here (high end "
                f"{composed_hi:.2f} < u_max {th.u_max:g}): composition is not visible to the fit, the resolution "
                "bar does not apply",
            )
        elif thin_bar:  # as a thin random-init control: one seed's bar does not resolve five
            near_bar = (
                why_rw + f", but its resolution bar is logged on one seed only (bar - u {bar.mean:.2f}, no interval)"
            )
        elif not (np.isfinite(bar.lo) and np.isfinite(composed)):
            no_target = planted_defined is not None and bool(np.all(_arr(planted_defined) == 0))
            why_not = (
                "this stream has no joint target (one factor, or a mixture), so no resolution bar can be planted"
                if no_target
                else "no resolution bar logged"
            )
            return out(REWEIGHTING, why_rw + f"; {why_not}, not tested")
        elif bar.lo > 0:
            return out(REWEIGHTING, why_rw + f"; below the resolution bar by {bar}")
        else:
            near_bar = (
                why_rw + f", but not clearly below this model's resolution bar (bar - u {bar}): it is no nearer a "
                f"planted sharp reweighting than a policy composed a quarter of the time (sharply or softly)"
            )
    readout = f"a readout of the frozen features leaves {i_el} unexplained ({against}: {d_el})"
    if explained(d_el, i_el) and from_pretraining:
        control = f"; random-init features leave {spec} more" if has_control else ""
        return out(ELICITATION, readout + control)
    el_gone = unexplained(d_el, i_el) or generic
    if unexplained(d_rw, i_rw) and el_gone:
        why_el = (
            f"random-init features explain it as well (excess {spec}): not from pretraining"
            if generic and not unexplained(d_el, i_el)
            else (f"{d_el} beyond the null for a readout" if have_null else f"a readout leaves {d_el} {beyond}")
        )
        if np.isfinite(i_m.lo) and i_m.lo > th.margin_min:
            if n >= th.min_seeds and thin(short):  # as a thin random-init control
                return out(
                    INCONCLUSIVE,
                    f"neither class explains it ({why_el}), but its reward shortfall is finite on one seed only "
                    f"({short.mean:.2f}, no interval): its reward beyond the map of p_pre is not shown",
                )
            if not np.isfinite(short_lo):
                why_short = "; no reward shortfall logged, not tested"
            elif short_lo > th.shortfall_min:
                why_short = (
                    f"; reward beyond the map of p_pre {short if bounded else f'{short.mean:.2f} (no interval)'}"
                )
            elif short_hi < th.shortfall_min:
                return out(
                    INCONCLUSIVE,
                    f"neither class explains it ({why_el}), but the fitted map of p_pre earns its reward "
                    f"(shortfall {short}, needs > {th.shortfall_min:g}): the unexplained mass earns nothing",
                )
            else:
                return out(
                    INCONCLUSIVE,
                    f"neither class explains it ({why_el}), but its reward beyond the fitted map of p_pre is not "
                    f"shown above {th.shortfall_min:g} (shortfall {short})",
                )
            return out(
                COMPOSITION,
                f"a map of p_pre leaves {d_rw} {beyond}; {why_el}; margin {i_m}{why_short}"
                + caveats.lookup_note(lookup, th.tol),
            )
        why = "undefined (one factor at a time suffices)" if not np.isfinite(i_m.mean) else str(i_m)
        return out(INCONCLUSIVE, f"neither class explains it ({why_el}), but the per-phase margin is {why}")
    if explained(d_el, i_el):
        first = near_bar + "; and " if near_bar else ""  # both classes fit, neither is shown: say both
        if thin_control:
            return out(
                INCONCLUSIVE,
                first + readout + f", but the random-init control has one finite seed ({spec.mean:.2f}, no "
                "interval): pretraining is not credited",
            )
        return out(
            INCONCLUSIVE, first + readout + f", but pretrained features beat random-init ones by {spec}: between"
        )
    if near_bar:
        return out(INCONCLUSIVE, near_bar)
    return out(INCONCLUSIVE, f"unexplained by p_pre map {d_rw}, by readout {d_el} ({against}): between the thresholds")
