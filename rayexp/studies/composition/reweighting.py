"""Reweighting fit: how well the pre-RL model's full output distribution predicts the post-RL policy.

RL *reweights* when ``pi_post(. | x) ~ g(p_pre(x))`` for one map g (docs/design.md §4.1). We fit g as a ridge
map on features of ``p_pre(x)`` over the whole vocabulary (not only the action set) rich enough to
express the usual reweightings:

- ``log p``: logit shifts and sharpening (``softmax(beta log p_A)`` is linear in it);
- ``p``: mixtures of output probabilities;
- ``p_i p_j`` (i <= j): products, e.g. P((a + b) mod m) = sum p_A(a) p_B(b) when both factors'
  next tokens are in the same output;
- block sums ``sum_{x in factor i} p(x)`` and their logs: how much mass each factor's tokens get;

fitted on training sequences to the post-RL policy's centred log-probabilities and scored by R^2 on
held-out sequences (split by sequence, never by position). R^2 near 1: the post-RL policy is a
fixed function of what the pretrained model already outputs. Well below 1: it uses information the
pre-RL outputs do not carry.

:func:`composed_terms` joins this with :mod:`.interaction`: the interaction between the factors in
what the fitted map leaves unexplained, i.e. the share of the policy that is composed (joint,
non-additive) *and* not a reweighting of the pre-RL outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayexp.probes import Ridge, r2, ridge_fit
from rayexp.studies.composition.interaction import interaction_terms

#: probabilities are floored here before the log, so impossible tokens stay finite
LOG_FLOOR = 1e-8


def features(p: np.ndarray, blocks: list[list[int]] | None = None) -> np.ndarray:
    """Features (..., F) of distributions ``p`` (..., V): [log p, p, p_i p_j (i <= j), block sums, their logs]."""
    p = np.asarray(p, dtype=np.float64)
    V = p.shape[-1]
    iu, ju = np.triu_indices(V)
    parts = [np.log(np.maximum(p, LOG_FLOOR)), p, p[..., iu] * p[..., ju]]
    if blocks:
        sums = np.stack([p[..., b].sum(axis=-1) for b in blocks], axis=-1)  # (..., n_blocks)
        parts += [sums, np.log(np.maximum(sums, LOG_FLOOR))]
    return np.concatenate(parts, axis=-1)


@dataclass(frozen=True)
class ReweightingMap:
    """A fitted g: distributions (..., V) -> predicted centred log-policy (..., A)."""

    blocks: list[list[int]] | None
    mean: np.ndarray  # (F,) training features' mean
    scale: np.ndarray  # (F,) and standard deviation
    ridge: Ridge

    def predict(self, p: np.ndarray) -> np.ndarray:
        X = features(p, self.blocks)  # (..., F)
        out = self.ridge.predict(((X - self.mean) / self.scale).reshape(-1, X.shape[-1]))  # (rows, A)
        return out.reshape(X.shape[:-1] + (-1,))


def fit_map(p: np.ndarray, y: np.ndarray, blocks: list[list[int]] | None = None, alpha: float = 1e-3) -> ReweightingMap:
    """Ridge map from features of ``p`` (..., V) to ``y`` (..., A) on z-scored features."""
    X = features(p, blocks)
    X = X.reshape(-1, X.shape[-1])  # (rows, F)
    mean, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return ReweightingMap(blocks, mean, sd, ridge_fit((X - mean) / sd, y.reshape(-1, y.shape[-1]), alpha))


def reweighting_fit(
    p_pre: np.ndarray,
    y_post: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    blocks: list[list[int]] | None = None,
    alpha: float = 1e-3,
) -> tuple[float, ReweightingMap]:
    """Held-out R^2 of the post-RL centred log-policy ``y_post`` (N, L, A) from ``p_pre`` (N, L, V),
    fitted on sequences ``train`` and scored on ``test``; and the fitted map."""
    fmap = fit_map(p_pre[train], y_post[train], blocks, alpha)
    y_te = np.asarray(y_post[test], dtype=np.float64)  # (n_test, L, A)
    A = y_te.shape[-1]
    return r2(y_te.reshape(-1, A), fmap.predict(p_pre[test]).reshape(-1, A)), fmap


def composed_terms(
    fmap: ReweightingMap, p_cells: list[np.ndarray], f_cells: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Interaction that the pre-RL outputs do not explain, per context (...,): ``|D_r|^2 / 4`` of the
    residuals ``r = f - g(p_pre)`` over the four 2x2 cells, and the policy's own ``|f(a,b) - f(a',b')|^2 / 2``.

    ``p_cells``: the pre-RL distribution (..., V) at the cells (a, b), (a, b'), (a', b), (a', b');
    ``f_cells``: the policy's centred log-probabilities (..., A) there. Their ratio of means is the
    share of the policy's variance that is interaction between the factors *and* not a function of
    the pre-RL outputs: 0 for any reweighting (even one whose output interacts, like a sum of joint
    output probabilities), eta for a policy the pre-RL outputs say nothing about.
    """
    resid = [f - fmap.predict(p) for p, f in zip(p_cells, f_cells)]
    num, _ = interaction_terms(*resid)
    _, den = interaction_terms(*f_cells)
    return num, den
