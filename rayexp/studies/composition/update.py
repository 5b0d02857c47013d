"""Where RL moved the weights, above float noise, and the null of moving them as far at random.

- :func:`update_sparsity`: share of parameters with ``|dW| > tol * RMS(W_before)`` (per tensor RMS,
  as :mod:`rayexp.analyses.weight_diff`), overall and per depth (``embed``, ``block{i}``,
  ``unembed``), with each depth's share of the update's squared norm;
- :func:`random_perturbation` (from :mod:`rayexp.weights`, which every study shares): a copy of a
  model moved by an isotropic Gaussian direction of a given total norm, so any signal can be
  compared with "moved this much at random" (docs/design.md §6 rule 6).

:func:`update_sparsity` works on ``{name: numpy array}`` (:func:`param_arrays` makes one from a model).
"""

from __future__ import annotations

import re

import numpy as np

from rayexp.weights import param_arrays, random_perturbation, update_norm

__all__ = ["depth_of", "param_arrays", "random_perturbation", "update_norm", "update_sparsity"]


def depth_of(name: str) -> str:
    """'blocks.2.mlp.fc_in.weight' -> 'block2'; embeddings -> 'embed'; final norm and unembedding -> 'unembed'."""
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return f"block{int(m.group(1))}"
    return "embed" if name.startswith(("embed", "pos_embed")) else "unembed"


def update_sparsity(before: dict[str, np.ndarray], after: dict[str, np.ndarray], tol: float = 1e-3) -> dict[str, float]:
    """``{"frac_changed": share of all entries changed, "frac_changed/{depth}": the same per depth,
    "norm_share/{depth}": that depth's share of |dW|^2}``; an entry counts as changed when
    ``|dW| > tol * RMS(W_before)`` of its tensor."""
    changed: dict[str, float] = {}
    total: dict[str, float] = {}
    sq: dict[str, float] = {}
    for name, w0 in before.items():
        if name not in after:
            continue
        w0 = np.asarray(w0, dtype=np.float64)
        delta = np.asarray(after[name], dtype=np.float64) - w0
        rms = float(np.sqrt(np.mean(w0**2))) if w0.size else 0.0
        d = depth_of(name)
        changed[d] = changed.get(d, 0.0) + float((np.abs(delta) > tol * max(rms, 1e-12)).sum())
        total[d] = total.get(d, 0.0) + w0.size
        sq[d] = sq.get(d, 0.0) + float((delta**2).sum())
    all_sq = sum(sq.values())
    out = {"frac_changed": sum(changed.values()) / max(sum(total.values()), 1.0)}
    for d in sorted(total, key=_depth_order):
        out[f"frac_changed/{d}"] = changed[d] / max(total[d], 1.0)
        out[f"norm_share/{d}"] = sq[d] / all_sq if all_sq > 0 else float("nan")
    return out


def _depth_order(d: str) -> tuple[int, int]:
    return (0, 0) if d == "embed" else (2, 0) if d == "unembed" else (1, int(d[5:]))
