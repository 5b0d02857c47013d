"""A model's weights as plain arrays, the size of an update, and the null of moving them as far at
random (docs/design.md §6 rule 6): shared by every study that asks "is this more than any update of
that size would do?" (the detector's perturbed readouts, the welfare vectors' rotation)."""

from __future__ import annotations

import numpy as np


def param_arrays(model) -> dict[str, np.ndarray]:
    """``{name: float64 numpy copy}`` of a torch module's parameters."""
    return {k: v.detach().double().cpu().numpy() for k, v in model.named_parameters()}


def update_norm(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
    """Frobenius norm of the whole update, over every parameter both hold."""
    return float(np.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before if k in after)))


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


def interpolate(before, after, scale: float):
    """A deep copy of ``before`` with every parameter at ``before + scale * (after - before)``
    (parameters matched by name; the originals are untouched): ``scale`` 1 is ``after``, 0 ``before``,
    and ``scale`` = n / update_norm(before, after) is ``after``'s direction at norm n."""
    import copy

    import torch

    out = copy.deepcopy(before)
    target = dict(after.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.add_(float(scale) * (target[name].to(p.device) - p))
    return out
