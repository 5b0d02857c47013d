"""Where RL changed the weights: per parameter tensor, how much, how widely, in how many directions.

For each tensor W with update Δ = W_after − W_before:
- ``rel_frobenius`` = ‖Δ‖_F / ‖W_before‖_F,
- ``frac_changed`` = share of entries with |Δ| > tol · RMS(W_before) (RL is reported to touch
  5–30% of parameters; Adam moves nearly all of them a little, so tol matters and is logged),
- ``effective_rank`` of Δ for matrices = exp(entropy of its normalised singular values)
  (Roy & Vetterli 2007), next to ``max_rank`` = min(shape): a "nearly full-rank" update has
  effective_rank close to max_rank.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayexp.analysis import AnalysisResult, Params, analysis

TOL = 1e-3


class WeightDiffParams(Params):
    tol: float = Field(TOL, gt=0, description="an entry counts as changed when |dW| > tol * RMS(W_before)")


def effective_rank(delta) -> float:
    import torch

    s = torch.linalg.svdvals(delta.double())  # (min(m, n),)
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def weight_diff_table(model_before, model_after, tol: float = TOL) -> pa.Table:
    """One row per parameter tensor of two ``torch.nn.Module``s with the same parameter names."""
    before = dict(model_before.named_parameters())
    rows: dict[str, list] = {
        k: [] for k in ("module", "shape", "numel", "rel_frobenius", "frac_changed", "effective_rank", "max_rank")
    }
    for name, w_after in model_after.named_parameters():
        if name not in before:
            continue
        w0, w1 = before[name].detach().float().cpu(), w_after.detach().float().cpu()
        delta = w1 - w0
        norm0 = float(w0.norm())
        rms0 = norm0 / math.sqrt(w0.numel()) if w0.numel() else 0.0
        rows["module"].append(name)
        rows["shape"].append("x".join(map(str, w0.shape)))
        rows["numel"].append(w0.numel())
        rows["rel_frobenius"].append(float(delta.norm()) / norm0 if norm0 > 0 else float(delta.norm()))
        rows["frac_changed"].append(float((delta.abs() > tol * max(rms0, 1e-12)).float().mean()))
        if delta.ndim == 2:
            rows["effective_rank"].append(effective_rank(delta))
            rows["max_rank"].append(min(delta.shape))
        else:
            rows["effective_rank"].append(float("nan"))
            rows["max_rank"].append(0)
    split = [_layer_component(n) for n in rows["module"]]
    rows["layer"] = [layer for layer, _ in split]
    rows["component"] = [comp for _, comp in split]
    return pa.table(rows)


def _layer_component(name: str) -> tuple[str, str]:
    """'blocks.1.attn.qkv.weight' -> ('1', 'attn.qkv.weight'); parameters outside blocks -> ('-', name)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2:
        return parts[1], ".".join(parts[2:])
    return "-", name


@analysis("weight_diff", params=WeightDiffParams, needs=("model_before", "model_after"))
def weight_diff(artifacts, params: WeightDiffParams) -> AnalysisResult:
    """Where RL changed the weights: relative norm, share changed and effective rank per tensor."""
    import torch

    model_before, model_after = artifacts.model_before(), artifacts.model_after()
    table = weight_diff_table(model_before, model_after, params.tol)
    numel = np.asarray(table.column("numel").to_pylist(), dtype=float)
    frac = np.asarray(table.column("frac_changed").to_pylist())
    before = torch.cat([p.detach().flatten().float() for p in model_before.parameters()])
    after = torch.cat([p.detach().flatten().float() for p in model_after.parameters()])
    ranks = [
        (e / m)
        for e, m in zip(table.column("effective_rank").to_pylist(), table.column("max_rank").to_pylist())
        if m > 0
    ]
    metrics = {
        "rel_frobenius": float((after - before).norm() / before.norm()),
        "frac_changed": float((frac * numel).sum() / numel.sum()),
        "effective_rank_ratio_mean": float(np.mean(ranks)) if ranks else float("nan"),
    }
    return AnalysisResult(
        metrics=metrics, tables={"weight_diff": table}, figures={"weight_diff_heatmap": heatmap(table)}
    )


def heatmap(table: pa.Table):
    from rayexp.figures import weight_diff_heatmap

    return weight_diff_heatmap(
        table,
        row="component",
        col="layer",
        value="rel_frobenius",
        title="relative weight change ||dW||/||W|| by module",
    )
