"""The local learning coefficient (LLC) by SGLD, its convergence, the study's one setting, and transitions.

At a point w* of a loss L (Lau et al. 2023) the LLC is estimated as

    llc = nbeta * (E_w[L(w)] - L(w*)),   w ~ exp(-nbeta L(w) - gamma/2 |w - w*|^2)

with w drawn by several SGLD chains started at w* (:mod:`.sgld`); each chain's estimate is nbeta
times the mean over its post-burn-in draws of L(w) - L(w*) on the same batch, and the estimate is
their mean, with their spread as its error bar. For a regular model it is d/2; for a singular one
the RLCT (:mod:`.rlct` has the known answers the tests hold it to).

**One setting for the study (:data:`STUDY_SGLD`).** The estimate depends on eps, gamma, nbeta and
the preconditioner, so values compare only under the same ones. They are fixed once for the whole
study (sweeps/development.yaml states them; tests/test_llc_analysis.py checks they are these), never chosen
per trial or per checkpoint: a per-trial calibration made the same weights read 6 in one trial and
73 in the other (issue 22). They were chosen on the known answers (deep linear networks by Aoyagi's
formula, normal-crossing potentials), which they reproduce within 15 % (tests/test_llc.py), and
checked on the quickstart transformer (five checkpoints, pretraining and PPO: R-hat 1.01-1.06).

**Convergence (:mod:`.convergence`).** Every estimate carries the rank-normalised split R-hat of
its chains' excess-loss traces; above :data:`~.convergence.RHAT_MAX` it is *unsettled*, and tables,
metrics and figures say so instead of using it as a number like the others.

torch is imported inside the sampler, so the analysis registry stays torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rayexp.studies.development.convergence import RHAT_MAX, rhat, settled
from rayexp.studies.development.sgld import LossFn, SGLDSettings, sample

__all__ = [
    "STUDY_SGLD",
    "LLCResult",
    "SGLDSettings",
    "default_nbeta",
    "diagnose",
    "estimate_llc",
    "locate_transitions",
    "phase_transitions",
]

#: The study's SGLD setting (why each value: the module docstring, README and tests/test_llc.py).
#: - nbeta 1000 ~ n / ln n for the ~10^4 tokens of the evaluation sequences;
#: - gamma 1: at nbeta 1000 it moves the tempered answer of the normal-crossing potentials 11-12 %
#:   below lambda (quadrature), and lets their prior-bound directions mix within the burn-in;
#: - eps 2e-6 with the RMSprop preconditioner (delta 1e-4, so the gain is at most 10^4): the largest
#:   step whose discretisation bias stays within a few % on the deep linear networks (at 3e-6 the
#:   10-10-10-10 network read +12 %);
#: - 4 chains, 500 burn-in steps (the preconditioner adapts there), 1000 draws: fewer draws left the
#:   reduced-rank regressions' R-hat above 1.1 for some seeds.
STUDY_SGLD = SGLDSettings(
    lr=2e-6,
    localization=1.0,
    nbeta=1000.0,
    num_chains=4,
    num_burnin=500,
    num_draws=1000,
    preconditioner="rmsprop",
    rms_alpha=0.99,
    rms_delta=1e-4,
)


def default_nbeta(n: int) -> float:
    """n / ln n: Watanabe's inverse temperature beta = 1 / ln n times ``n`` samples."""
    return n / math.log(n) if n > 1 else 1.0


@dataclass
class LLCResult:
    mean: float  # mean over chains of the per-chain LLC
    std: float  # standard deviation over chains (ddof=1): the chain spread
    per_chain: np.ndarray  # (C,) nbeta * mean over the chain's draws of (loss - loss at w*), same batch
    loss_traces: np.ndarray  # (C, D) the loss at each draw, on the batch that step used
    init_trace: np.ndarray  # (D,) the loss at w* on the same batches
    settings: SGLDSettings
    rhat: float  # rank-normalised split R-hat of the excess traces (NaN: could not be computed)

    @property
    def excess_traces(self) -> np.ndarray:
        """(C, D) loss above the starting point's on the same batch; nbeta times its mean is the LLC."""
        return self.loss_traces - self.init_trace

    @property
    def init_loss(self) -> float:
        return float(self.init_trace.mean())

    def settled(self, threshold: float = RHAT_MAX) -> bool:
        return settled(self.rhat, threshold)


def estimate_llc(model, loss_fn: LossFn, batches: Sequence, settings: SGLDSettings) -> LLCResult:
    """The LLC of ``loss_fn`` at ``model``'s weights; the model is not modified.

    A chain whose loss becomes non-finite leaves +inf draws (a diverging setting gives an infinite,
    unsettled estimate that :func:`diagnose` flags, not an exception).
    """
    traces, init_trace = sample(model, loss_fn, batches, settings)
    excess = traces - init_trace
    with np.errstate(invalid="ignore"):  # a diverged chain's +inf draws
        per_chain = settings.nbeta * excess.mean(axis=1)
        std = float(per_chain.std(ddof=1)) if len(per_chain) > 1 else math.nan
    return LLCResult(float(per_chain.mean()), std, per_chain, traces, init_trace, settings, rhat(excess))


def diagnose(
    result: LLCResult, ceiling: float | None = None, rhat_max: float = RHAT_MAX, z: float = 2.0
) -> dict[str, float | bool]:
    """Health of one estimate.

    - ``rhat``, ``settled``: the chains' R-hat, and whether it is finite and <= ``rhat_max``;
    - ``diverged``: a non-finite loss, or a draw above ``ceiling`` (for a KL from a distribution over
      V tokens the caller passes log V: a chain that far from w* has left the model behind);
    - ``below_init``: the mean excess is below 0 by more than ``z`` standard errors over chains: the
      chains found lower loss, so w* is not a local minimum and the number is not an LLC.

    ``healthy`` = settled and neither diverged nor below_init. Also ``llc_mean``, ``llc_std``.
    """
    tr = np.asarray(result.loss_traces, dtype=np.float64)
    out: dict[str, float | bool] = {"llc_mean": result.mean, "llc_std": result.std, "rhat": result.rhat}
    if not np.isfinite(tr).all():
        return {**out, "settled": False, "diverged": True, "below_init": False, "healthy": False}
    diverged = bool(ceiling is not None and tr.max() > ceiling)
    excess = result.excess_traces.mean(axis=1)  # (C,)
    se = float(excess.std(ddof=1)) / math.sqrt(len(excess)) if len(excess) > 1 else 0.0
    below = bool(excess.mean() < -z * se)
    ok = result.settled(rhat_max)
    return {
        **out,
        "settled": ok,
        "diverged": diverged,
        "below_init": below,
        "healthy": bool(ok and not diverged and not below),
    }


# ---------------------------------------------------------------------------------------------
# transitions

CURVES = {"pretrain": "loss", "rl": "reward"}  # the curve beside the LLC in each phase


def phase_transitions(phases: dict[str, list[dict]], k: float = 3.0) -> dict[str, dict[str, list[int]]]:
    """phase -> curve -> transition checkpoints, for the LLC and the phase's loss or reward curve.

    ``phases`` maps "pretrain" / "rl" to rows with ``checkpoint``, ``llc_mean``, ``healthy`` and the
    phase's curve (:data:`CURVES`). The LLC's transitions are looked for among healthy estimates only
    (settled, not diverged, not below init: an unsettled one is not a value to take a slope of);
    pretraining's checkpoints are log-spaced, PPO's evenly spaced (:func:`locate_transitions`).
    """
    out: dict[str, dict[str, list[int]]] = {}
    for phase, rows in phases.items():
        log_steps = phase == "pretrain"
        ok = [r for r in rows if r["healthy"]]
        llc = locate_transitions([r["checkpoint"] for r in ok], [r["llc_mean"] for r in ok], k, log_steps)
        curve = CURVES[phase]
        other = locate_transitions([r["checkpoint"] for r in rows], [r[curve] for r in rows], k, log_steps)
        out[phase] = {"llc": llc, curve: other}
    return out


def locate_transitions(
    steps: Sequence[float], values: Sequence[float], k: float = 3.0, log_steps: bool = True
) -> list[int]:
    """Steps where a curve over training jumps, by a robust outlier rule on its slope.

    For consecutive checkpoints the discrete derivative is ``d_i = (v[i+1] - v[i]) / (x[i+1] - x[i])``
    with ``x = log(1 + step)`` (``log_steps``, for log-spaced checkpoints such as pretraining's; 1 +
    so that step 0 counts) or ``x = step`` (evenly spaced ones, such as PPO's). Interval i is a
    transition when ``|d_i - median(d)| > k * 1.4826 * MAD(d)`` (MAD: median absolute deviation;
    1.4826 * MAD estimates the standard deviation of normal noise): a slope k robust standard
    deviations away from the typical one. A run of consecutive flagged intervals is one transition,
    placed at the end of its steepest interval (the first checkpoint after the jump). Non-finite
    values are dropped first; fewer than 4 checkpoints give no transitions, and with few more the
    MAD rests on a handful of slopes, so read single marks with care.
    """
    s, v = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v) & np.isfinite(s)
    s, v = s[keep], v[keep]
    order = np.argsort(s)
    s, v = s[order], v[order]
    if len(s) < 4:
        return []
    x = np.log1p(s) if log_steps else s
    d = np.diff(v) / np.diff(x)  # (n - 1,)
    dev = np.abs(d - np.median(d))
    scale = max(1.4826 * float(np.median(dev)), 1e-9 * float(np.abs(d).max()))  # floor: exact plateaus, rounding
    flagged = dev > k * scale
    out: list[int] = []
    i = 0
    while i < len(d):
        if not flagged[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(d) and flagged[j + 1]:
            j += 1
        steepest = i + int(np.argmax(dev[i : j + 1]))
        out.append(int(s[steepest + 1]))
        i = j + 1
    return out
