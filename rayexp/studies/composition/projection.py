"""The direction of what a map of p_pre leaves, and the composed-share bound it gives (pure maths).

The map of p_pre (:func:`.classes.reweighting_fit`) is a mean of training policies chosen by p_pre alone,
so it is linear in the policy it fits: for a mixture ``pi = a J + (1 - a) b`` its held-out residual is
``r_pi = a r_J + (1 - a) r_b``. Projected on ``r_J``,

    proj = <r_pi, r_J> / |r_J|^2 = a + (1 - a) <r_b, r_J> / |r_J|^2,

exactly ``a`` wherever the map resolves the rest (``r_b = 0``). As a *measure* it fails its planted
must-say-no cases (:mod:`.direction`): a drift of the last tokens, which the joint target reads too,
and a leaky model's sharpened p_pre reach as far as a soft quarter composition does.

As a *bound* it needs only a premise on the rest's size, the kind the mass bounds take
(:func:`.resolution.composed_share_max`): a rest whose residual is no larger than ``N`` (L2 over the
held-out set), the planted sharp reweighting's (a rest resolved as well as sharpened p_pre) or the pair's
shuffled null's (a rest that drifts as PPO does without the task's reward). Given the policy and ``J``,
a share ``a`` fixes the rest, ``r_b = (r_pi - a r_J) / (1 - a)``, so ``a`` is possible exactly where

    |r_pi - a r_J| <= (1 - a) N,

a quadratic inequality in ``a``; :func:`share_max` is the largest such ``a`` in [0, 1], and NaN where
there is none: then no mixture of ``J`` and a rest that small gives the policy, and the premise is
refuted by the policy itself (a PPO negative control's residual is 5.6-9.0 times the planted sharp
reweighting's on composition_cpu's Mess3 pair). It holds for any ``J`` fitted on the same model,
sequences and split, the joint target's Bayes probabilities (a soft composition) included. Relaxed by Cauchy-Schwarz it reads
``a <= (proj + rho) / (1 + rho)``, ``rho = N / |r_J|``: it charges the rest only for the part of its
residual that can point against ``J``, and in the high dimension of a held-out set (steps x actions) a
drift is nearly orthogonal to ``r_J``. Norms are over the whole held-out set (a bound on totals does not
linearise per sequence).
"""

from __future__ import annotations

import numpy as np

from rayexp.stats import ratio_values
from rayexp.studies.composition import classes


def residual(p_pre: np.ndarray, pi: np.ndarray, train: np.ndarray, test: np.ndarray, res: float) -> np.ndarray:
    """(n_test, L, A): what the map of ``p_pre`` (N, L, V), fitted as a trial fits it (on ``train``, at
    resolution ``res``), leaves of ``pi`` (N, L, A) on the held-out sequences ``test``."""
    return np.asarray(pi, dtype=np.float64)[test] - classes.reweighting_fit(p_pre, pi, train, test, res)


def projection(r_pi: np.ndarray, r_j: np.ndarray) -> np.ndarray:
    """Per held-out sequence (n_test,), linearised so the mean is the ratio of the sums: the residual
    ``r_pi`` (n_test, L, A) projected on ``r_j`` (n_test, L, A), in units of ``r_j`` itself."""
    r_pi, r_j = np.asarray(r_pi, dtype=np.float64), np.asarray(r_j, dtype=np.float64)
    return ratio_values((r_pi * r_j).sum((-1, -2)), (r_j * r_j).sum((-1, -2)))


def norm(r: np.ndarray) -> float:
    """The residual's L2 norm over the whole held-out set."""
    return float(np.sqrt((np.asarray(r, dtype=np.float64) ** 2).sum()))


def mass(r: np.ndarray) -> float:
    """The probability mass per step a residual (n_test, L, A) is: total variation, averaged over steps."""
    return float(classes.tv(r, 0.0).mean())


def share_max(r_pi: np.ndarray, r_j: np.ndarray, norm_rest: float) -> float:
    """The largest share ``a`` in [0, 1] of a mixture ``a J + (1 - a) b`` with residual ``r_pi`` whose rest
    leaves a residual no larger than ``norm_rest``, ``J`` leaving ``r_j``: the largest ``a`` with
    ``|r_pi - a r_j|^2 <= (1 - a)^2 norm_rest^2``; NaN where no ``a`` satisfies it (the premise is
    refuted) or an input is not finite."""
    r_pi, r_j = np.asarray(r_pi, dtype=np.float64), np.asarray(r_j, dtype=np.float64)
    return share_max_of((r_pi * r_pi).sum(), (r_pi * r_j).sum(), (r_j * r_j).sum(), norm_rest)


def share_max_of(pp: float, pj: float, jj: float, norm_rest: float) -> float:
    """:func:`share_max` from the residuals' inner products: ``pp = |r_pi|^2``, ``pj = <r_pi, r_j>``,
    ``jj = |r_j|^2`` (what a stored trial keeps, so a rest's size can come from another trial)."""
    nn = float(norm_rest) ** 2
    if not np.isfinite([pp, pj, jj, nn]).all():
        return float("nan")
    # f(a) = |r_pi - a r_j|^2 - (1 - a)^2 N^2 = A a^2 + B a + C; the largest a in [0, 1] with f(a) <= 0 is
    # 1, 0, a root, or (where the rest is exactly as large as the premise and f only touches 0) the vertex
    A, B, C = jj - nn, -2.0 * (pj - nn), pp - nn
    scale = max(pp, jj, nn, 1e-300)
    candidates = [0.0, 1.0]
    if abs(A) > 1e-12 * scale:
        disc = B * B - 4.0 * A * C
        candidates.append(-B / (2.0 * A))
        if disc >= 0:
            candidates += [(-B + np.sqrt(disc)) / (2.0 * A), (-B - np.sqrt(disc)) / (2.0 * A)]
    elif abs(B) > 1e-12 * scale:
        candidates.append(-C / B)
    # rounding in the three sums is ~1e-16 of the largest; 1e-9 of it decides a touching root
    feasible = [a for a in candidates if 0.0 <= a <= 1.0 and A * a * a + B * a + C <= 1e-9 * scale]
    return float(max(feasible)) if feasible else float("nan")


def rest_mass_min(r_pi: np.ndarray, r_j: np.ndarray) -> float:
    """The least probability mass per step the rest of a mixture ``a J + (1 - a) b`` leaves to the map, over
    every share ``a`` in [0, 1). The rest's residual is ``(r_pi - a r_j) / (1 - a) = r_pi + t (r_pi - r_j)``
    with ``t = a / (1 - a)`` in [0, inf): affine in ``t``, so its mass is a sum of ``|c_i + t d_i|``, convex
    and piecewise linear, least at the median of the breakpoints ``-c_i / d_i`` weighted by ``|d_i|`` (a grid
    over ``a`` misses a share between its points, and then reads a premise that holds as refuted). The mass
    bound's premise (a rest leaving no more than ``m``) is refuted by the policy where this exceeds ``m``."""
    c = np.asarray(r_pi, dtype=np.float64)
    d = c - np.asarray(r_j, dtype=np.float64)
    moves = d != 0
    t = 0.0
    if moves.any():
        x, w = -c[moves] / d[moves], np.abs(d[moves])
        order = np.argsort(x, kind="stable")
        cum = np.cumsum(w[order])
        t = max(0.0, float(x[order][np.searchsorted(cum, 0.5 * cum[-1])]))
    return mass(c + t * d)


def trial_bounds(r_pi: np.ndarray, planted: dict[str, np.ndarray]) -> dict[str, float]:
    """What one policy's residual ``r_pi`` (n_test, L, A) gives the bounds, against the planted residuals of
    :func:`.resolution.planted_values` (``r_sharp``, ``r_composed``, ``r_soft``): its squared norm and inner
    products with ``J`` = the Bayes argmax (``composed``) and probabilities (``soft``), per held-out sequence
    (so a rest's size can come from another trial on the same sequences: the verdict's drifting rest), the
    residual bound for a rest no larger than the planted sharp reweighting's (``share_max_{j}``, NaN where
    the policy refutes that premise), and :func:`rest_mass_min` against the Bayes argmax."""
    n, norm_sharp = len(r_pi), norm(planted["r_sharp"])
    out = {}
    for j in ("composed", "soft"):
        pp, pj, jj = products(r_pi, planted[f"r_{j}"])
        out["sq"], out[f"dot_{j}"] = pp / n, pj / n
        out[f"share_max_{j}"] = share_max_of(pp, pj, jj, norm_sharp)
    out["rest_min"] = rest_mass_min(r_pi, planted["r_composed"])
    return out


def products(r_pi: np.ndarray, r_j: np.ndarray) -> tuple[float, float, float]:
    """(``|r_pi|^2``, ``<r_pi, r_j>``, ``|r_j|^2``) over the held-out set: what :func:`share_max_of` takes."""
    r_pi, r_j = np.asarray(r_pi, dtype=np.float64), np.asarray(r_j, dtype=np.float64)
    return float((r_pi * r_pi).sum()), float((r_pi * r_j).sum()), float((r_j * r_j).sum())
