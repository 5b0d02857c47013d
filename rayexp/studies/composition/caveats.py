"""What a verdict's reason adds about the evidence under it, never changing the label (:mod:`.verdict`).

- :func:`still_note`: a reweighting or elicitation of a policy that barely leaves its position-only policy
  (``kl_position``, mean over seeds, below ``kl_still`` 0.05 nats per step) is true and says little: a
  constant or position-only policy is a map of p_pre and a readout of anything. Seen: the logic study's
  shuffled null learnt the constant policy "true" (KL 0.000-0.055 by seed; IMPLIES itself 0.28-0.44);
- :func:`null_note`: the pair's null on fewer seeds than the task: its paired differences run over the
  seeds that have one, and ``n_seeds`` alone would not say so;
- :func:`few_note`: an interval over fewer seeds than docs/design.md §4.4 asks for (:data:`DESIGN_SEEDS`):
  the rule runs from two, and the label would otherwise read like a five-seed one;
- :func:`lookup_note`: a composition whose greedy reward a lookup table of the last tokens matches. The
  label keeps docs/design.md's definition (no map of p_pre and no readout of pretrained features beyond
  random-init ones explains the policy, and both factors pay), but on the Mess3 pairs a last-2-token
  lookup reaches 0.490 of the optimum 0.499, so what such a policy composes need not be more than recent
  tokens. ``beyond_lookup`` per seed is the post-RL greedy reward minus the best logged lookup's, over the
  gap from the best per-phase single factor to the optimum (the margin's unit). A trial's lookups are
  fitted on one half of its sequences and scored on the other; its policy's greedy reward is over all of
  them, which it was not fitted to, so the two differ by sampling noise only.

Pure functions of per-seed values and intervals; each has a unit test (tests/test_verdict_guards.py).
"""

from __future__ import annotations

import numpy as np

from rayexp.exact.ceilings import MARGIN_EPS
from rayexp.studies.composition.bounds import Interval


def still_note(still: float, kl_still: float) -> str:
    """The clause for a reweighting or elicitation verdict whose policy's mean KL from its position-only
    policy (``still``, nats per step; NaN: not logged) is below ``kl_still``; else nothing."""
    if not still < kl_still:
        return ""
    return (
        f"; but the policy barely leaves its position-only policy (KL {still:.3f} nats per step, "
        f"< {kl_still:g}): a constant or position-only policy is a map of anything, so this says little"
    )


#: the seeds a verdict's intervals should run over (docs/design.md §4.4)
DESIGN_SEEDS = 5


def few_note(n_seeds: int) -> str:
    """A prefix for a reason whose intervals run over fewer than :data:`DESIGN_SEEDS` seeds."""
    return f"{n_seeds} seeds, fewer than the {DESIGN_SEEDS} the design asks for; " if n_seeds < DESIGN_SEEDS else ""


def null_note(columns, n_seeds: int) -> str:
    """A prefix for a reason whose null covers fewer of the task's ``n_seeds`` seeds (those with both fits)
    than all: ``columns`` the task's and the null's per-seed shares (u_rw, u_el, u_rw_null, u_el_null); a
    seed counts where all four are finite, as every paired difference needs."""
    finite = np.logical_and.reduce([np.isfinite(np.atleast_1d(np.asarray(c, float))) for c in columns])
    k = int(finite.sum())
    if k >= n_seeds:
        return ""
    return f"the null covers {k} of {n_seeds} seeds (d and the excess run over those); "


def beyond_lookup(reward_greedy, lookups, optimum, single_per_phase) -> np.ndarray:
    """Per seed (n,): the greedy reward beyond the best of ``lookups`` (shape (k, n): one row per lookup
    length, NaN where that k was not logged) in the margin's unit; NaN where none was logged or the gap
    from the per-phase single factor to the optimum is below ``MARGIN_EPS`` (as the margin)."""
    best = np.full(np.shape(reward_greedy), np.nan)
    stack = np.atleast_2d(np.asarray(lookups, float))
    logged = np.isfinite(stack).any(axis=0)
    best[logged] = np.nanmax(stack[:, logged], axis=0)
    gap = np.asarray(optimum, float) - np.asarray(single_per_phase, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap >= MARGIN_EPS, (np.asarray(reward_greedy, float) - best) / gap, np.nan)


def lookup_note(beyond: Interval, tol: float) -> str:
    """A composition reason's last clause: whether the policy's reward is shown beyond a lookup of the last
    tokens (interval low end above ``tol``, the rule's own tolerance, here in the margin's unit), matched by
    one (high end at most ``tol``), or neither; nothing where no lookup was logged."""
    if not np.isfinite(beyond.mean):
        return ""
    if not np.isfinite(beyond.lo):  # one seed, or one finite value: no interval
        return f"; its reward beyond the best lookup of the last tokens: {beyond.mean:+.2f} (no interval)"
    if beyond.lo > tol:
        return f"; its reward is beyond the best lookup of the last tokens by {beyond}"
    if beyond.hi > tol:
        return f"; its reward is not shown beyond the best lookup of the last tokens ({beyond})"
    return (
        f"; but a lookup of the last tokens earns as much (its reward beyond the best one: {beyond}): what it "
        "composes need not be more than recent tokens"
    )
