"""Where a curve over training jumps: the project's transition rule, calibrated to a stated false-alarm rate.

A curve is a value per checkpoint (a loss, a reward, the LLC). Between consecutive checkpoints i and
i + 1 it moves by ``dv_i`` over ``dx_i``, with ``x = log(1 + step)`` for log-spaced checkpoints
(pretraining's; 1 + so that step 0 counts) or ``x = step`` for evenly spaced ones (PPO's). The
curve's trend is its median slope ``b = median(dv / dx)``, and each interval's residual jump is
``r_i = dv_i - b dx_i``: what the interval moved beyond the trend. Interval i is flagged when

    |r_i - median(r)| > k * 1.4826 * MAD(r)

(MAD: median absolute deviation; 1.4826 MAD estimates the standard deviation of normal noise). A run
of consecutive flagged intervals is one transition, placed at the end of its largest jump (the first
checkpoint after it).

**Why jumps, not slopes.** Noise of one size on every value gives every jump the same spread, but a
slope over a short interval (log-spaced checkpoints are short at the start) the spread of its
1 / dx: a slope rule flags the short intervals of a flat noisy curve.

**Why k is computed, not chosen (the must-say-no case).** With 9-10 checkpoints, MAD rests on 8-9
jumps and is often small by chance, so a fixed k = 3 flagged a transition on about one curve in five
that had none (a straight line plus independent normal noise; ``tests/test_transitions.py``
measures it). Here k is the (1 - alpha) quantile of the statistic's largest value on that null, at
the curve's own checkpoints, by a seeded Monte Carlo (:func:`threshold`). The statistic does not
change under a shift or tilt of the line or a rescaling of the noise, so this one null covers every
straight line at every noise level: on a curve with no transition the rule marks one with probability
alpha, whatever the curve's scale. What it does not cover: noise that is heavier-tailed than normal
or correlated from checkpoint to checkpoint, and curvature. A smooth rise that is steep and then flat
(a reward under PPO) departs from every straight line and is flagged at its steep part; the rule finds
where a curve departs from a line, and whether that is a "phase" is for the reader.

Power is what the sample allows: at 9 checkpoints a step of 12 noise SDs is found about 9 times in
10 at alpha 0.05, one of 5 SDs about 1 time in 4 (the tests hold a lower bound on the first).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = [
    "ALPHA",
    "CURVES",
    "MIN_CHECKPOINTS",
    "locate_transitions",
    "phase_tested",
    "phase_transitions",
    "refuse_transition_k",
    "threshold",
]

ALPHA = 0.05  # the chance of marking a transition on a curve that has none
MIN_CHECKPOINTS = 5  # fewer: too few jumps for a MAD (4 jumps' MAD is half of them)
NULL_DRAWS = 20_000  # Monte Carlo draws of the null per checkpoint layout: the quantile to ~0.5 %
NULL_SEED = 20261206  # one fixed generator: the same threshold for the same layout, run after run
CURVES = {"pretrain": "loss", "rl": "reward"}  # the curve beside the LLC in each phase
K_IS_GONE = (
    "transition_k is gone: the rule's threshold is now calibrated to a false-alarm rate; "
    "give transition_alpha (default 0.05, the chance of a mark on a curve without a transition) instead"
)


def refuse_transition_k(data):
    """For a params section's ``model_validator(mode="before")``: a file from before the calibrated rule
    gets one line saying what replaced its key, not pydantic's "extra inputs are not permitted"."""
    if isinstance(data, dict) and "transition_k" in data:
        raise ValueError(K_IS_GONE)
    return data


def _deviations(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(..., n - 1) |r_i - median(r)| / (1.4826 MAD(r)) for the residual jumps of each row of ``v``."""
    dx, dv = np.diff(x), np.diff(v, axis=-1)
    b = np.median(dv / dx, axis=-1, keepdims=True)
    r = dv - b * dx
    dev = np.abs(r - np.median(r, axis=-1, keepdims=True))
    scale = 1.4826 * np.median(dev, axis=-1, keepdims=True)
    # An exact curve (a staircase, a line) has MAD 0 or rounding: the floor keeps its real jumps finite.
    floor = 1e-9 * np.maximum(np.abs(dv).max(axis=-1, keepdims=True), 1e-300)
    return dev / np.maximum(scale, floor)


@lru_cache(maxsize=256)
def _threshold(gaps: tuple[float, ...], alpha: float) -> float:
    x = np.concatenate([[0.0], np.cumsum(gaps)])
    null = np.random.default_rng(NULL_SEED).standard_normal((NULL_DRAWS, len(x)))
    return float(np.quantile(_deviations(x, null).max(axis=-1), 1.0 - alpha))


def threshold(x: Sequence[float], alpha: float = ALPHA) -> float:
    """k for checkpoints at ``x`` (already log-transformed where they are log-spaced): the (1 - alpha)
    quantile of the largest standardised residual jump of a straight line plus independent normal
    noise at these ``x``. The statistic is invariant to x's scale, so the layout is keyed by its gaps'
    proportions (rounded, so float noise in the steps does not miss the cache)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    gaps = np.diff(np.asarray(x, dtype=np.float64))
    if len(gaps) < MIN_CHECKPOINTS - 1 or not (gaps > 0).all():
        raise ValueError(f"threshold needs >= {MIN_CHECKPOINTS} increasing checkpoints, got {len(gaps) + 1}")
    return _threshold(tuple(np.round(gaps / gaps.sum(), 9)), float(alpha))


def _points(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve's finite points, sorted by step; a repeated step keeps its first value."""
    s, v = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v) & np.isfinite(s)
    s, first = np.unique(s[keep], return_index=True)
    return s, v[keep][first]


def tested(steps: Sequence[float], values: Sequence[float]) -> bool:
    """Whether :func:`locate_transitions` judges the curve: :data:`MIN_CHECKPOINTS` or more finite
    points. Where not, its ``[]`` means "not tested", not "no transition"."""
    return len(_points(steps, values)[0]) >= MIN_CHECKPOINTS


def locate_transitions(
    steps: Sequence[float], values: Sequence[float], alpha: float = ALPHA, log_steps: bool = True
) -> list[int]:
    """Checkpoints where the curve ``values`` over ``steps`` jumps beyond its trend (module docstring).

    Non-finite values are dropped first (and repeated steps keep their first value); with fewer than
    :data:`MIN_CHECKPOINTS` left there are no transitions (and the curve is not :func:`tested`). On a
    straight line plus normal noise the chance of any mark is ``alpha``.
    """
    s, v = _points(steps, values)
    if len(s) < MIN_CHECKPOINTS:
        return []
    x = np.log1p(s) if log_steps else s
    dev = _deviations(x, v)
    flagged = dev > threshold(x, alpha)
    out: list[int] = []
    i = 0
    while i < len(dev):
        if not flagged[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(dev) and flagged[j + 1]:
            j += 1
        largest = i + int(np.argmax(dev[i : j + 1]))
        out.append(int(s[largest + 1]))
        i = j + 1
    return out


def phase_transitions(phases: dict[str, list[dict]], alpha: float = ALPHA) -> dict[str, dict[str, list[int]]]:
    """phase -> curve -> transition checkpoints, for the LLC and the phase's loss or reward curve.

    ``phases`` maps "pretrain" / "rl" to rows with ``checkpoint``, ``llc_mean``, ``healthy`` and the
    phase's curve (:data:`CURVES`). The LLC's transitions are looked for among healthy estimates only
    (settled, not diverged, not below init: an unsettled one is not a value to take a jump of);
    pretraining's checkpoints are log-spaced, PPO's evenly spaced.
    """
    return {
        phase: {c: locate_transitions(s, v, alpha, phase == "pretrain") for c, (s, v) in _curves(phase, rows).items()}
        for phase, rows in phases.items()
    }


def phase_tested(phases: dict[str, list[dict]]) -> dict[str, dict[str, bool]]:
    """phase -> curve -> whether :func:`phase_transitions` judged it (:func:`tested`), on the same points."""
    return {phase: {c: tested(s, v) for c, (s, v) in _curves(phase, rows).items()} for phase, rows in phases.items()}


def _curves(phase: str, rows: list[dict]) -> dict[str, tuple[list, list]]:
    """curve -> (checkpoints, values): the LLC over healthy rows, the phase's :data:`CURVES` over all."""
    ok = [r for r in rows if r["healthy"]]
    curve = CURVES[phase]
    return {
        "llc": ([r["checkpoint"] for r in ok], [r["llc_mean"] for r in ok]),
        curve: ([r["checkpoint"] for r in rows], [r[curve] for r in rows]),
    }
