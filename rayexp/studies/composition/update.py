"""Where RL moved the weights, above float noise, and the null of moving them as far at random.

- :func:`update_sparsity`: share of parameters with ``|dW| > tol * RMS(W_before)`` (per tensor RMS,
  as :mod:`rayexp.analyses.weight_diff`), overall and per depth (``embed``, ``block{i}``,
  ``unembed``), with each depth's share of the update's squared norm;
- :func:`random_perturbation`: a copy of a model moved by an isotropic Gaussian direction of a
  given total norm, so any signal can be compared with "moved this much at random" (docs/design.md §6 rule 6).

:func:`update_sparsity` works on ``{name: numpy array}`` (:func:`param_arrays` makes one from a model).
"""

from __future__ import annotations

import re

import numpy as np


def depth_of(name: str) -> str:
    """'blocks.2.mlp.fc_in.weight' -> 'block2'; embeddings -> 'embed'; final norm and unembedding -> 'unembed'."""
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return f"block{int(m.group(1))}"
    return "embed" if name.startswith(("embed", "pos_embed")) else "unembed"


def update_norm(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
    """Frobenius norm of the whole update, over every parameter both hold."""
    return float(np.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before if k in after)))


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


def param_arrays(model) -> dict[str, np.ndarray]:
    """``{name: float64 numpy copy}`` of a torch module's parameters."""
    return {k: v.detach().double().cpu().numpy() for k, v in model.named_parameters()}


def random_perturbation(model, norm: float, seed: int = 0):
    """A deep copy of ``model`` with every parameter moved along one isotropic Gaussian direction of
    total Frobenius norm ``norm`` (seeded; the original is untouched). The copy stays on ``model``'s
    device; the direction is drawn and scaled on the CPU (float64) and moved there, so it is the same
    direction on every device."""
    import copy

    import torch

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    params = list(out.parameters())
    noise = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    scale = float(norm) / max(float(torch.sqrt(sum((n**2).sum() for n in noise))), 1e-300)
    with torch.no_grad():
        for p, n in zip(params, noise):
            p.add_((n * scale).to(p.dtype).to(p.device))
    return out
