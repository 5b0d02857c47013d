"""The composed-share bounds over seeds, each stated only where the policy allows its premise.

Every bound on how often a policy can act as a composition ``J`` takes a premise on the rest ``b`` of a
mixture ``a J + (1 - a) b``: that the map of p_pre leaves of ``b`` no more than some reference does. Two
references: the planted sharp reweighting (a rest resolved as well as sharpened p_pre) and the pair's
shuffled-reward null (a rest that drifts as PPO does without the task's reward). Two measures of what the
map leaves: probability mass (:func:`.resolution.composed_share_max`, ``J`` the Bayes argmax) and the
residual's L2 norm (:func:`.projection.share_max`, here ``J`` the Bayes probabilities: a soft composition,
which spends too little mass for a mass bound to see).

A premise can be refuted by the policy itself: where no share of ``J`` leaves a rest that small, no
mixture the premise allows gives the policy, and a bound derived from it describes some other policy.
Every stored PPO negative control refutes the sharp rest's (its residual is 5.6-9.0 times the planted
sharp reweighting's on composition_cpu's Mess3 pair; docs/results/composition.md), so the verdict states
each bound only where no seed's policy refutes its premise and says on how many one does:
:func:`refuted` for the mass premise (the least mass any share of the Bayes argmax leaves the rest, exact:
:func:`.projection.rest_mass_min`), NaN from :func:`.projection.share_max_of` for the L2 one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayexp.stats import t_ci
from rayexp.studies.composition import resolution
from rayexp.studies.composition.projection import share_max_of

NAN = float("nan")
L2_REST = "a rest whose residual is no larger than the null's"  # the residual bounds' premise, in a reason
REL_TOL, ABS_TOL = 1e-9, 1e-12  # rounding in a mass summed over ~1e5 entries is ~1e-13 of it


@dataclass(frozen=True)
class Interval:
    mean: float = NAN
    lo: float = NAN
    hi: float = NAN

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


@dataclass(frozen=True)
class Residuals:
    """Per seed (n,), from each trial's composition analysis: the policy's residual ``sq`` (``|r_pi|^2`` per
    held-out sequence) and its inner product ``dot_soft`` with the Bayes probabilities' residual, whose own
    is ``sq_soft``; ``rest_min``, the least mass any share of the Bayes argmax leaves the rest; the planted
    sharp reweighting's mass ``tv_sharp``; and the pair's null's ``sq_null`` and ``tv_null`` paired by seed
    (None without a null)."""

    sq: np.ndarray
    dot_soft: np.ndarray
    sq_soft: np.ndarray
    rest_min: np.ndarray
    tv_sharp: np.ndarray
    sq_null: np.ndarray | None = None
    tv_null: np.ndarray | None = None


def _arr(x) -> np.ndarray:
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


def share_bound(m_pi, m_rest, m_composed, min_seeds: int = 2, ci: float = 0.95) -> Interval:
    """The composed-share bound (:func:`.resolution.composed_share_max`) of each seed,
    ``(m_pi + m_rest) / (m_J + m_rest)`` capped at 1, over the seeds where all three masses are finite, as
    a Student-t interval of their mean capped at 1; NaN with fewer than ``min_seeds``. Each seed's policy
    has its own share, so the mean share is bounded by the mean of the seeds' bounds; the ratio of the sums
    over seeds would weight each by its ``m_J + m_rest`` (a learned J's mass moves with its PPO run) and
    can fall below that mean."""
    if m_rest is None or m_composed is None:
        return Interval()
    m_pi, m_rest, m_composed = _arr(m_pi), _arr(m_rest), _arr(m_composed)
    ok = np.isfinite(m_pi) & np.isfinite(m_rest) & np.isfinite(m_composed) & (m_composed + m_rest > 0)
    if ok.sum() < min_seeds:
        return Interval()
    each = resolution.capped((m_pi[ok] + m_rest[ok]) / (m_composed[ok] + m_rest[ok]))  # a share is at most 1
    return Interval(*resolution.capped(t_ci(each, ci)).tolist())


def refuted(rest_min, m_rest) -> tuple[int, int]:
    """(seeds whose policy refutes the mass premise ``m_b <= m_rest``, seeds where it could be checked)."""
    if rest_min is None or m_rest is None:
        return 0, 0
    rest_min, m_rest = _arr(rest_min), _arr(m_rest)
    ok = np.isfinite(rest_min) & np.isfinite(m_rest)
    # a premise that holds exactly (the rest is the reference) must not be refuted by rounding in the sums
    over = rest_min[ok] > m_rest[ok] * (1.0 + REL_TOL) + ABS_TOL
    return int(over.sum()), int(ok.sum())


def residual_bound(sq, dot, sq_j, sq_rest, min_seeds: int = 2, ci: float = 0.95) -> tuple[Interval, int, int]:
    """The residual bound (:func:`.projection.share_max_of`) per seed, for a rest whose residual is no larger
    than ``sqrt(sq_rest)``: (its Student-t interval over the seeds whose policy allows the premise, capped at
    1, NaN with fewer than ``min_seeds`` of them; the seeds refuting it; the seeds checked). The interval is
    kept for the table beside the count; :func:`clauses` states it only where no seed refutes the premise."""
    if sq_rest is None:
        return Interval(), 0, 0
    cols = [_arr(x) for x in (sq, dot, sq_j, sq_rest)]
    ok = np.logical_and.reduce([np.isfinite(c) for c in cols])
    share = np.array([share_max_of(p, d, j, np.sqrt(r)) for p, d, j, r in zip(*(c[ok] for c in cols))])
    allowed = share[np.isfinite(share)]
    n_refuted = int(len(share) - len(allowed))
    if len(allowed) < min_seeds:
        return Interval(), n_refuted, int(ok.sum())
    return Interval(*resolution.capped(t_ci(allowed, ci)).tolist()), n_refuted, int(ok.sum())


def _refuted_text(k: int, n: int, rest: str) -> str:
    why = "at no share of the joint-target policy is the rest that small"
    return f"the policy refutes the premise of {rest} on {k}/{n} seeds ({why})"


def clauses(
    most: Interval,
    drifting: Interval,
    soft: Interval,
    counts: dict[str, tuple[int, int]],
    visible: bool,
    n_seeds: int = 0,
) -> str:
    """What a verdict other than composition adds about how often the policy can be composed: the mass bounds
    (``most``: a rest resolved as sharpened p_pre, ``drifting``: one that drifts as the null's) where the first
    bounds anything, and the residual bound on the Bayes probabilities (``soft``, a drifting rest); each only
    where no seed's policy refutes its premise (``counts``: (refuted, checked) per ``sharp``, ``drift``,
    ``soft``), else saying so; the drifting bound on its own where the sharp premise is refuted. Nothing where
    the joint-target policy is not ``visible`` to the fit (a product, whose joint target is nearly a map of
    p_pre): acting as it is no composition there, and the residual bound then only says how much of the policy's
    residual the rest must carry. A mass bound stated where its premise was checked on fewer than ``n_seeds``
    seeds (none: no ``rest_min`` logged) says so, as the learned bounds do."""
    if not visible:
        return ""
    out = ""
    sharp_k, sharp_n = counts.get("sharp", (0, 0))
    drift_k, drift_n = counts.get("drift", (0, 0))
    sharp, drifts = "a rest this map resolves as well as a sharpened p_pre", "a rest that drifts as the null's does"
    drift_refuted = "; " + _refuted_text(drift_k, drift_n, drifts) if drift_k else ""
    drift_stated = drifting.hi < 1 and not drift_k  # (NaN compares False: nothing said)
    if sharp_k:  # the drifting bound is the reason's only mass bound: said in full, on its own
        out += "; " + _refuted_text(sharp_k, sharp_n, sharp) + ", so that bound is not stated" + drift_refuted
        if drift_stated:
            out += f"; it holds the joint-target policy at most {drifting.hi:.2f} of the time for {drifts} ({drifting})"
    elif most.hi < 1:  # the drifting bound beside the sharp one, as its weaker premise
        drift = f"; at most {drifting.hi:.2f} for {drifts} ({drifting})" if drift_stated else drift_refuted
        out += (
            f"; it holds the joint-target policy at most {most.hi:.2f} of the time (high end of {most}, for "
            f"{sharp}{drift}){_unchecked(sharp_n, n_seeds)}"
        )
    soft_k, soft_n = counts.get("soft", (0, 0))
    return out + l2_clause(
        soft, soft_k, soft_n, "the Bayes probabilities", "the Bayes probabilities (a soft composition)"
    )


def _unchecked(checked: int, n_seeds: int) -> str:
    """The sharp premise's coverage (the bound stated first); the drifting one is read from the same rest_min."""
    if checked == 0:
        return "; that premise not checked on any seed (no rest_min or planted mass logged)"
    return f"; that premise checked on {checked}/{n_seeds} seeds" if checked < n_seeds else ""


def l2_clause(bound: Interval, k: int, n: int, j: str, called: str | None = None, note: str = "") -> str:
    """The residual bound's clause, for a rest no larger than the null's and the composition ``j`` (``called``
    where the bound is stated): where ``k`` of ``n`` seeds' policies refute its premise, that, and no bound (as
    the mass bounds: a premise some seed refutes states no bound over the others); else the bound where it
    bounds anything (``note`` inside its parentheses); else nothing (NaN compares False)."""
    if k:
        return f"; no mixture of {j} and {L2_REST} gives this policy on {k}/{n} seeds, so that bound is not stated"
    if bound.hi < 1:
        return f"; it acts as {called or j} at most {bound.hi:.2f} of the time, for {L2_REST} ({bound}{note})"
    return ""
