"""Where the answer lives: the reward a linear readout of frozen features reaches.

For features ``H`` (N, L, D) of a model at every position (its final residual stream, or the
concatenation of all layers), fit a ridge map H -> P(target | context) on training sequences,
act greedily on its prediction on held-out sequences and score that choice with the true P. If the
pretrained model's features already support near-optimal reward, RL only has to learn a new
readout; if not, the composition has to be built inside. The same readout on the random-init
model's features is the control: how much any features of the tokens give.
"""

from __future__ import annotations

import numpy as np

from rayexp.exact.ceilings import greedy_reward
from rayexp.probes import ridge_fit


def readout_reward(
    H: np.ndarray, P: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float = 1e-3
) -> np.ndarray:
    """Held-out greedy reward (n_test, L) of a ridge readout from features ``H`` (N, L, D) to ``P`` (N, L, A)."""
    D, A = H.shape[-1], P.shape[-1]
    fit = ridge_fit(H[train].reshape(-1, D), P[train].reshape(-1, A), alpha)
    pred = fit.predict(H[test].reshape(-1, D)).reshape(P[test].shape)  # (n_test, L, A)
    return greedy_reward(pred, P[test])
