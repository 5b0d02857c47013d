"""Sampling and belief kernels (reference numpy version; to be replaced by a compiled kernel)."""

from __future__ import annotations

import numpy as np


def sample(hmm, batch, length, rng):
    V, S, _ = hmm.T.shape
    # joint (token, next state) distribution per state, flattened as x * S + j
    joint = hmm.T.transpose(1, 0, 2).reshape(S, V * S)
    cdf = np.cumsum(joint, axis=1)
    cdf[:, -1] = 1.0
    states = np.empty((batch, length + 1), dtype=np.int64)
    tokens = np.empty((batch, length), dtype=np.int64)
    states[:, 0] = rng.choice(S, size=batch, p=hmm.init)
    u = rng.random((batch, length))
    for t in range(length):
        k = (u[:, t, None] > cdf[states[:, t]]).sum(axis=1)
        k = np.minimum(k, V * S - 1)
        tokens[:, t] = k // S
        states[:, t + 1] = k % S
    return tokens, states


def beliefs(hmm, tokens):
    shape = tokens.shape
    tok = tokens.reshape(-1, shape[-1])
    B, L = tok.shape
    out = np.empty((B, L, hmm.n_states))
    eta = np.broadcast_to(hmm.init, (B, hmm.n_states))
    for t in range(L):
        eta = np.einsum("bi,bij->bj", eta, hmm.T[tok[:, t]])
        eta = eta / eta.sum(axis=1, keepdims=True)
        out[:, t] = eta
    return out.reshape(shape + (hmm.n_states,))


def sample_with_beliefs(hmm, batch, length, rng):
    tokens, states = sample(hmm, batch, length, rng)
    return tokens, states, beliefs(hmm, tokens)
