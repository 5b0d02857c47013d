"""The TMS study's maths: the LLC of (W, b) "the usual way", one row per checkpoint, transitions and
whether the LLC marks them. No Ray, no MLflow; torch inside functions only.

**The LLC, the usual way** (Lau et al. 2023; Chen et al. 2023 for TMS): SGLD on the supervised loss
L_n(w) = (1/n) sum ||x_hat_w(x) - x||^2 of (W, b) around the checkpoint, over a fixed sample of n
inputs drawn once from the study's seed, with nbeta = n / ln n (Watanabe's beta = 1 / ln n), through
the project's sampler and estimate (:mod:`.sgld`, :mod:`.llc`) and its diagnostics (split R-hat,
below-init, divergence). The same data, nbeta and setting (:data:`TMS_SGLD`) for every checkpoint of
both arms of every seed, so a value is a property of the weights: a PPO checkpoint and a supervised
one with equal (W, b) read the same. The loss is the supervised one for the PPO arm too, since the
question is whether that usual estimate, unchanged, marks the transitions of a PPO run.

This loss is *not* at its minimum at a checkpoint that training later leaves (a plateau is a saddle:
training escapes it), and there SGLD walks downhill and the estimate comes out below init. Such
estimates are marked unhealthy and never join a curve or a transition, as in :mod:`.llc_analysis`.
(The development study's answer to that for PPO is a loss at its minimum at every checkpoint, the
self-KL of :mod:`.losses`; its TMS analogue, the squared distance to the checkpoint's own outputs, is
not offered here: with this setting its chains did not settle near small W, and the question asked
is about the usual estimate.)

**The setting** (:data:`TMS_SGLD`): n = 10,000, batches of 500, nbeta = n / ln n = 1085.7, RMSprop
preconditioner (delta 1e-4, adapted in the burn-in, frozen after), eps 1e-5, gamma 10, 4 chains,
300 burn-in steps, 600 draws. Chosen once on trained 6-gons, which are regular points up to the
rotation of the hidden plane (18 parameters, one flat direction: 17 / 2 = 8.5): 8.7 ± 0.4 (R-hat 1.02)
in the calibration, 9.0 ± 0.5 (R-hat 1.05) on sweeps/tms.yaml's seed 0; tests/test_tms.py holds it to
7-11 and settled. eps 3e-5 read 11.0 and eps 1e-3 diverged; gamma 1 left a 5-gon unsettled (R-hat 1.2).

**Transitions.** The curve of each arm (loss for the supervised arm, exact expected reward for PPO),
and the LLC over healthy estimates, go through the project's rule (:func:`.transitions.locate_transitions`,
evenly spaced checkpoints: a jump beyond the curve's trend, at a threshold calibrated so that a line
plus noise is marked with probability alpha). The ground-truth phase
label is k, the number of columns of W with norm > 0.5 (:func:`models.tms.k_count`): a change of k
between consecutive checkpoints is a phase change. The LLC *marks* a transition when it has one of
its own within one checkpoint of it (:func:`matched`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from rayexp.studies.development.convergence import RHAT_MAX
from rayexp.studies.development.llc import SGLDSettings, default_nbeta, diagnose, estimate_llc
from rayexp.studies.development.transitions import ALPHA, locate_transitions

N_LLC = 10_000  # inputs in the LLC's data set
LLC_BATCH = 500  # inputs per SGLD step
TMS_SGLD = SGLDSettings(
    lr=1e-5,
    localization=10.0,
    nbeta=default_nbeta(N_LLC),
    num_chains=4,
    num_burnin=300,
    num_draws=600,
    preconditioner="rmsprop",
    rms_alpha=0.99,
    rms_delta=1e-4,
)


def llc_batches(x: np.ndarray, batch_size: int = LLC_BATCH) -> list:
    """Fixed (B, F) float32 tensors over the rows of ``x`` (a trailing part smaller than a batch is dropped)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = max(1, len(t) // batch_size)
    return [t[i * batch_size : (i + 1) * batch_size] for i in range(n)] if len(t) >= batch_size else [t]


def mse_loss(model, batch):
    """The supervised loss on a batch: mean over rows of ||x_hat - x||^2."""
    return ((model(batch) - batch) ** 2).sum(-1).mean()


def estimate(W, b, batches: list, settings: SGLDSettings = TMS_SGLD) -> dict:
    """LLC of (W, b) with its diagnostics: ``llc_mean``, ``llc_std``, ``rhat``, ``settled``, ``diverged``,
    ``below_init``, ``healthy``. A draw with loss above 10 (the loss of x_hat = 0 is 1/3 per feature:
    ~2 for F = 6) counts as diverged."""
    import torch

    from models.tms import from_weights

    model = from_weights(W, b)
    with torch.enable_grad():
        res = estimate_llc(model, mse_loss, batches, settings)
    dg = diagnose(res, ceiling=10.0, rhat_max=RHAT_MAX)
    keys = ("llc_mean", "llc_std", "rhat", "settled", "diverged", "below_init", "healthy")
    return {k: (bool(dg[k]) if isinstance(dg[k], (bool, np.bool_)) else float(dg[k])) for k in keys}


def k_changes(rows: Sequence[dict]) -> list[int]:
    """Checkpoints whose k differs from the previous checkpoint's (the ground-truth phase changes)."""
    return [int(b["checkpoint"]) for a, b in itertools.pairwise(rows) if a["k"] != b["k"]]


def transitions(rows: Sequence[dict], curve: str, llc_key: str = "llc", alpha: float = ALPHA) -> dict[str, list[int]]:
    """``{curve: [...], llc_key: [...], "k": [...]}``: transition checkpoints of the curve (all rows),
    of the LLC (healthy rows only, ``{llc_key}_healthy``) and the k changes. Checkpoints are evenly
    spaced, so the trend is per step (``log_steps=False``)."""
    steps = [r["checkpoint"] for r in rows]
    ok = [r for r in rows if r.get(f"{llc_key}_healthy")]
    return {
        curve: locate_transitions(steps, [r[curve] for r in rows], alpha, log_steps=False),
        llc_key: locate_transitions(
            [r["checkpoint"] for r in ok], [r[f"{llc_key}_mean"] for r in ok], alpha, log_steps=False
        ),
        "k": k_changes(rows),
    }


def matched(truth: Sequence[int], marks: Sequence[int], steps: Sequence[int], tol: int = 1) -> list[bool]:
    """For each checkpoint in ``truth``, whether ``marks`` has one within ``tol`` checkpoints of it
    (positions in the sorted ``steps``, so the tolerance is in checkpoints, not in steps)."""
    where = {int(s): i for i, s in enumerate(sorted(steps))}
    have = [where[int(m)] for m in marks if int(m) in where]
    return [any(abs(where[int(t)] - h) <= tol for h in have) for t in truth if int(t) in where]


def summarise(
    arm: str, seed: int, rows: Sequence[dict], curve: str, llc_key: str = "llc", alpha: float = ALPHA
) -> dict:
    """One row of the results table: the transitions of one trial and which of them the LLC marks."""
    marks = transitions(rows, curve, llc_key, alpha)
    steps = [r["checkpoint"] for r in rows]
    on_curve = matched(marks[curve], marks[llc_key], steps)
    on_k = matched(marks["k"], marks[llc_key], steps)
    near_any = matched(marks[llc_key], sorted(set(marks[curve]) | set(marks["k"])), steps)
    healthy = sum(bool(r.get(f"{llc_key}_healthy")) for r in rows)
    return {
        "arm": arm,
        "seed": seed,
        "curve": curve,
        "llc": llc_key,
        f"{curve}_transitions": marks[curve],
        "k_changes": marks["k"],
        "llc_transitions": marks[llc_key],
        "curve_marked": sum(on_curve),
        "curve_total": len(on_curve),
        "k_marked": sum(on_k),
        "k_total": len(on_k),
        "llc_unexplained": sum(not m for m in near_any),
        "healthy": healthy,
        "checkpoints": len(rows),
        "k_path": _k_path(rows),
        "final_phase": rows[-1]["phase"] if rows else "",
        "final_loss": rows[-1]["loss"] if rows else math.nan,
    }


def _k_path(rows: Sequence[dict]) -> str:
    """The k visited, in order, repeats collapsed: e.g. "0>6>5"."""
    path: list[str] = []
    for r in rows:
        if not path or path[-1] != str(r["k"]):
            path.append(str(r["k"]))
    return ">".join(path)
