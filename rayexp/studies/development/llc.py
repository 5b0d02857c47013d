"""The local learning coefficient (LLC) by SGLD through devinterp, its diagnostics, and transitions.

At a point w* of a loss L_n (Lau et al. 2023; devinterp's estimator) the LLC is estimated as

    llc = nbeta * (E_w[L_n(w)] - L_n(w*)),   w ~ exp(-nbeta * L_n(w) - localization/2 * |w - w*|^2)

with w drawn by SGLD chains started at w*. For a regular model (full-rank linear regression with d
parameters) it is d/2; for singular ones it is smaller (the RLCT). The estimate depends on the
sampler settings, so only values taken with the same frozen settings compare: :func:`calibrate`
chooses them once, on one checkpoint, and every checkpoint of a run is then measured with them.

The loss is any ``loss_fn(model, batch) -> scalar tensor`` over a fixed list of batches, which SGLD
visits in order (cycling); devinterp (pinned 1.3.2) does the sampling. torch and devinterp are
imported inside functions, so the analysis registry stays torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

LossFn = Callable[[Any, Any], Any]  # (model, batch) -> scalar torch tensor


@dataclass(frozen=True)
class SGLDSettings:
    """What devinterp's SGLD is run with; frozen across the checkpoints of a run once calibrated."""

    lr: float  # SGLD step size epsilon
    localization: float  # gamma: strength of the pull back to w*
    nbeta: float  # n * beta, the inverse temperature (default_nbeta)
    num_chains: int = 4
    num_draws: int = 100
    num_burnin: int = 0  # steps before the first draw (not part of the estimate)
    seed: int = 0  # chain i is seeded from SeedSequence(seed), so a setting is reproducible

    def replace(self, **changes) -> SGLDSettings:
        return dataclasses.replace(self, **changes)


@dataclass
class LLCResult:
    mean: float  # mean over chains of the per-chain LLC
    std: float  # standard deviation over chains (ddof=1): the chain spread
    per_chain: np.ndarray  # (C,) nbeta * (mean of the chain's draws - init_loss)
    loss_traces: np.ndarray  # (C, D) the loss at each draw (on the batch that step used)
    init_loss: float  # L_n(w*), over the batches the draws visit, weighted as they visit them
    settings: SGLDSettings
    init_trace: np.ndarray  # (D,) L(w*) on the batch each draw used: traces - init_trace pairs the batches

    @property
    def excess_traces(self) -> np.ndarray:
        """(C, D) loss above the starting point's on the same batch; its mean times nbeta is the LLC."""
        return self.loss_traces - self.init_trace


def default_nbeta(n: int) -> float:
    """n / ln n: the inverse temperature n * beta with Watanabe's beta = 1 / ln n for ``n`` samples.

    devinterp's own default puts the batch size in for n; here n is the number of terms of the
    fixed loss (every batch together), which is the data set the local posterior is over.
    """
    return n / math.log(n) if n > 1 else 1.0


def init_losses(model, loss_fn: LossFn, batches: Sequence, settings: SGLDSettings) -> np.ndarray:
    """(D,) L(w*) on the batch each draw uses: SGLD step i uses batch i mod len(batches), and draw j
    is the loss at step num_burnin + j.

    Their mean is the init loss handed to devinterp, so the LLC is nbeta times a paired difference
    (same batches at w and at w*): the noise of which batches the draws happened to visit cancels.
    """
    import torch

    which = (settings.num_burnin + np.arange(settings.num_draws)) % len(batches)  # (D,)
    with torch.no_grad():
        per_batch = {int(i): float(loss_fn(model, batches[i])) for i in np.unique(which)}
    return np.array([per_batch[int(i)] for i in which])


def _only(items: list) -> Any:
    return items[0]


def estimate_llc(model, loss_fn: LossFn, batches: Sequence, settings: SGLDSettings) -> LLCResult:
    """The LLC of ``loss_fn`` at ``model``'s weights, by devinterp's SGLD with ``settings``.

    ``batches`` is a fixed list (the data of the loss); the model is not modified. A NaN loss is
    recorded as +inf (devinterp would abort), so a diverging setting yields a result that
    :func:`diagnose` flags rather than an exception.
    """
    import torch
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader

    batches = list(batches)
    if not batches:
        raise ValueError("estimate_llc needs at least one batch")
    was_training = model.training
    init_trace = init_losses(model, loss_fn, batches, settings)
    init_loss = float(init_trace.mean())

    def evaluate(m, batch):
        loss = loss_fn(m, batch)
        return torch.where(torch.isnan(loss), torch.full_like(loss, math.inf), loss)

    # yields the fixed batches in order; batch_size must be an int (devinterp reads it for a default nbeta)
    loader = DataLoader(batches, batch_size=1, shuffle=False, collate_fn=_only)
    device = next(model.parameters()).device
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # devinterp warns on every call: SGLD's deprecation, "seeded runs", draws vs burn-in, nbeta passed
        warnings.simplefilter("ignore")
        out = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": settings.lr, "localization": settings.localization, "nbeta": settings.nbeta},
            num_chains=settings.num_chains,
            num_draws=settings.num_draws,
            num_burnin_steps=settings.num_burnin,
            num_steps_bw_draws=1,
            init_loss=init_loss or 1e-30,  # devinterp takes a falsy init_loss as "compute it"
            seed=settings.seed,
            device=device,
            verbose=False,
            online=False,
        )
    model.train(was_training)
    traces = np.asarray(out["loss/trace"], dtype=np.float64)  # (C, D)
    per_chain = np.array([out[f"llc-chain/{i}"] for i in range(settings.num_chains)], dtype=np.float64)
    return LLCResult(float(out["llc/mean"]), float(out["llc/std"]), per_chain, traces, init_loss, settings, init_trace)


# ---------------------------------------------------------------------------------------------
# diagnostics and calibration


def diagnose(
    result: LLCResult,
    ceiling: float | None = None,
    diverge_factor: float = 10.0,
    spike_factor: float = 5.0,
    settle_frac: float = 0.2,
    z: float = 2.0,
) -> dict[str, float | bool]:
    """Health of a set of chains, by rules on the loss traces (C chains x D draws). The excess of a
    draw is its loss minus the starting point's loss on the same batch; its mean times nbeta is the LLC.

    - ``diverged``: a non-finite loss, or any draw above ``ceiling`` (default ``diverge_factor *
      init_loss``; for a cross-entropy the caller passes init_loss + log(number of classes): an
      excess beyond the loss of a uniform guess means the chain left the model behind);
    - ``spiked``: the chain-mean excess peaks above its level over the last half of draws by more
      than ``spike_factor`` times that level (or times its draw-to-draw spread there, if larger): a
      step size at the edge of stability kicks the chains far out before they return, and the
      excursion inflates the estimate;
    - ``settled``: the drift of the excess from the third to the last quarter of draws (difference
      of their means, averaged over chains) is within ``settle_frac`` of the last quarter's mean
      excess, or within ``z`` standard errors (over chains) of zero;
    - ``below_init``: the mean excess (all draws) is below 0 by more than ``z`` standard errors over
      chains (over draws when there is one chain): the chains found lower loss, so the point is not
      a local minimum at this localization and the LLC is negative.

    ``healthy`` = none of diverged, spiked, below_init, and settled. Also returned: ``drift``,
    ``excess`` (mean), ``rel_spread`` (chain std / |mean| of the LLC), ``llc_mean``, ``llc_std``.
    """
    tr = np.asarray(result.loss_traces, dtype=np.float64)  # (C, D)
    ex = np.asarray(result.excess_traces, dtype=np.float64)  # (C, D)
    n_chains, n_draws = tr.shape
    finite_mean = result.mean != 0 and np.isfinite(result.mean)
    out: dict[str, float | bool] = {
        "llc_mean": result.mean,
        "llc_std": result.std,
        "rel_spread": result.std / abs(result.mean) if finite_mean else math.nan,
    }
    if not np.isfinite(tr).all():
        flags = {"diverged": True, "spiked": False, "settled": False, "below_init": False, "healthy": False}
        return {**out, **flags, "drift": math.nan, "excess": math.nan}
    limit = diverge_factor * result.init_loss if ceiling is None else ceiling
    diverged = bool(tr.max() > limit)

    mean_ex = ex.mean(0)  # (D,) chain-mean excess
    half = mean_ex[n_draws // 2 :]
    level, spread = float(half.mean()), float(half.std())
    spiked = bool(mean_ex.max() - level > spike_factor * max(abs(level), spread))

    q = max(n_draws // 4, 1)
    last, before = ex[:, -q:].mean(1), ex[:, -2 * q : -q].mean(1)  # (C,) mean excess of the last two quarters
    drifts = last - before  # (C,)
    drift = float(drifts.mean())
    if n_chains > 1:  # chains are independent, so their spread carries SGLD's autocorrelation
        se_drift = float(drifts.std(ddof=1)) / math.sqrt(n_chains)
    else:  # one chain: treats draws as independent (optimistic)
        se_drift = float(ex[0, -2 * q :].std(ddof=1)) * math.sqrt(2 / q) if q > 1 else 0.0
    settled = abs(drift) <= max(settle_frac * abs(float(last.mean())), z * se_drift)

    excess = ex.mean(1)  # (C,)
    if n_chains > 1:
        se = float(excess.std(ddof=1)) / math.sqrt(n_chains)
    else:
        se = float(ex[0].std(ddof=1)) / math.sqrt(n_draws) if n_draws > 1 else 0.0
    below = bool(excess.mean() < -z * se)
    return {
        **out,
        "diverged": diverged,
        "spiked": spiked,
        "settled": bool(settled),
        "below_init": below,
        "healthy": bool(not diverged and not spiked and settled and not below),
        "drift": drift,
        "excess": float(excess.mean()),
    }


class Calibration(NamedTuple):
    settings: SGLDSettings  # the chosen setting, to be frozen for every checkpoint of the run
    table: list[dict]  # one row per grid point: lr, localization, nbeta, diagnostics, chosen
    results: dict[tuple[float, float], LLCResult]  # (lr, localization) -> the chains


def choose(rows: list[dict]) -> int:
    """Index of the chosen grid point; the rule of :func:`calibrate`."""
    unstable = {r["lr"] for r in rows if r["diverged"] or r["spiked"]}
    tiers = (
        lambda r: r["healthy"] and r["lr"] not in unstable,
        lambda r: r["healthy"],
        lambda r: not r["diverged"] and not r["spiked"],
        lambda r: not r["diverged"],
    )
    for ok in tiers:
        pool = [i for i, r in enumerate(rows) if ok(r)]
        if pool:
            return min(pool, key=lambda i: (rows[i]["localization"], -rows[i]["lr"]))
    return min(range(len(rows)), key=lambda i: (rows[i]["lr"], -rows[i]["localization"]))  # all diverged


def calibrate(
    model,
    loss_fn: LossFn,
    batches: Sequence,
    base: SGLDSettings,
    lrs: Sequence[float],
    localizations: Sequence[float],
    **diagnose_kwargs,
) -> Calibration:
    """Run every (lr, localization) of the grid from ``base`` and choose one.

    Rule: among the healthy grid points (:func:`diagnose`) whose lr neither diverged nor spiked at
    any localization, the smallest localization that has one, and at it the largest lr. Why:
    localization biases the LLC down (its curvature adds to the loss's), so use the least that
    keeps chains healthy; among healthy step sizes the largest mixes fastest, and a step too small
    to move the chains passes every check with an LLC near 0; but a step that blew up at some
    localization is at the edge of stability (its instability hardly depends on the pull back), and
    frozen for every checkpoint it would blow up at some of them. If no point qualifies, the same
    order over the healthy points, then those that neither diverged nor spiked, then those that did
    not diverge (the table says which: ``healthy`` per row); if all diverged, the smallest lr at
    the largest localization.
    """
    rows, results = [], {}
    for loc in localizations:
        for lr in lrs:
            s = base.replace(lr=float(lr), localization=float(loc))
            res = estimate_llc(model, loss_fn, batches, s)
            results[(s.lr, s.localization)] = res
            rows.append(
                {"lr": s.lr, "localization": s.localization, "nbeta": s.nbeta, **diagnose(res, **diagnose_kwargs)}
            )
    best = choose(rows)
    for i, r in enumerate(rows):
        r["chosen"] = i == best
    return Calibration(base.replace(lr=rows[best]["lr"], localization=rows[best]["localization"]), rows, results)


# ---------------------------------------------------------------------------------------------
# transitions


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
