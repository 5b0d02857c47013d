"""The local learning coefficient (LLC) by SGLD, its convergence and the study's one setting.

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

Where a curve of these estimates jumps is :mod:`.transitions`'s business. torch is imported inside the
sampler, so the analysis registry stays torch-free.
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
