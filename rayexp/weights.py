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


def first_crossing(base: dict[str, np.ndarray], path: list[dict[str, np.ndarray]], norm: float):
    """Where a stored training path first lies ``norm`` away from ``base``: ``(j, t)`` with the point
    ``start_j + t (path[j] - start_j)``, ``start_0 = base`` and ``start_j = path[j - 1]`` (the path's
    saved points joined by straight chords), or None if no point of it gets that far.

    The distance from ``base`` is convex along a chord, so a chord whose two ends are both nearer
    than ``norm`` never reaches it in between: the first chord whose end is ``norm`` or further away
    holds the crossing, at the larger root of ``|a + t d|^2 = norm^2`` (``a = start_j - base``,
    ``d = path[j] - start_j``)."""
    norm = float(norm)
    if not norm > 0:
        raise ValueError(f"norm must be > 0; got {norm}")
    start = base
    for j, end in enumerate(path):
        a = {k: start[k] - base[k] for k in base}
        d = {k: end[k] - start[k] for k in base}
        aa = sum(float((a[k] ** 2).sum()) for k in base)
        ad = sum(float((a[k] * d[k]).sum()) for k in base)
        dd = sum(float((d[k] ** 2).sum()) for k in base)
        if dd > 0 and aa + 2 * ad + dd >= norm**2:
            t = (-ad + np.sqrt(max(ad * ad - dd * (aa - norm**2), 0.0))) / dd
            return j, float(min(max(t, 0.0), 1.0))
        start = end
    return None
