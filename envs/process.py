"""Hidden Markov processes with exact belief states.

Convention (as in the computational-mechanics literature):
``T[x][i, j] = P(emit x, go to j | in state i)``; ``sum_x T[x]`` is row-stochastic.
The belief after observing tokens ``x_0..x_t`` is ``eta_t = eta_{t-1} T[x_t] / (eta_{t-1} T[x_t] 1)``,
starting from ``init`` (the stationary distribution unless given).

Tokens carry only what the process emits; hidden states are returned separately and never
mixed into the token stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ATOL = 1e-9


@dataclass(frozen=True, eq=False)
class HMM:
    """An edge-emitting hidden Markov process.

    ``T`` has shape (V, S, S); ``init`` shape (S,). Use :func:`from_matrices` (validated) to build one.
    ``token_names`` label tokens for figures; ``factors`` holds the factor processes of a composition
    (empty for a primitive process), and ``meta`` whatever a composition needs to map tokens and
    states back to its factors.
    """

    T: np.ndarray
    init: np.ndarray
    name: str = "hmm"
    token_names: tuple[str, ...] = ()
    factors: tuple["HMM", ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def n_states(self) -> int:
        return self.T.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.T.shape[0]

    @property
    def transition(self) -> np.ndarray:
        """State-to-state matrix ``sum_x T[x]`` (S, S)."""
        return self.T.sum(axis=0)

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``batch`` sequences of ``length`` tokens.

        Returns ``tokens`` (batch, length) int64 and ``states`` (batch, length + 1) int64, where
        ``states[:, t]`` is the hidden state before token t is emitted.
        """
        from envs import _kernels

        return _kernels.sample(self, batch, length, rng)

    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """Exact beliefs (float64, shape tokens.shape + (S,)): entry t is P(state | tokens[..., :t+1])."""
        from envs import _kernels

        return _kernels.beliefs(self, np.asarray(tokens))

    def sample_with_beliefs(
        self, batch: int, length: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens, states, beliefs)`` in one pass."""
        from envs import _kernels

        return _kernels.sample_with_beliefs(self, batch, length, rng)

    def next_token_probs(self, beliefs: np.ndarray) -> np.ndarray:
        """P(next token | belief): ``beliefs`` (..., S) -> (..., V)."""
        return np.einsum("...i,xij->...x", beliefs, self.T)


def stationary(transition: np.ndarray) -> np.ndarray:
    """The unique stationary distribution of a row-stochastic matrix; ValueError if not unique."""
    s = transition.shape[0]
    w, v = np.linalg.eig(transition.T)
    ones = np.isclose(w, 1.0, atol=1e-8)
    if ones.sum() != 1:
        raise ValueError(
            f"stationary distribution: the chain has {int(ones.sum())} eigenvalues equal to 1, so no unique "
            "stationary distribution exists; pass init= explicitly"
        )
    pi = np.real(v[:, np.argmax(ones)])
    pi = pi / pi.sum()
    if np.any(pi < -ATOL) or s == 0:
        raise ValueError("stationary distribution: eigenvector has negative entries")
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def from_matrices(
    T,
    init=None,
    *,
    name: str = "from_matrices",
    token_names=(),
    factors=(),
    meta=None,
    atol: float = 1e-8,
) -> HMM:
    """Build a validated :class:`HMM`. Every failed check raises ValueError saying which and where."""
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 3 or T.shape[1] != T.shape[2]:
        raise ValueError(f"{name}: T must have shape (V, S, S); got {T.shape}")
    if T.shape[0] < 1 or T.shape[1] < 1:
        raise ValueError(f"{name}: T must have at least one token and one state; got {T.shape}")
    bad = ~np.isfinite(T)
    if bad.any():
        x, i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}: T[{x}][{i}, {j}] is {T[x, i, j]} (NaN or inf)")
    if (T < 0).any():
        x, i, j = np.argwhere(T < 0)[0]
        raise ValueError(f"{name}: T[{x}][{i}, {j}] = {T[x, i, j]} is negative")
    rows = T.sum(axis=(0, 2))
    off = np.abs(rows - 1.0) > atol
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"{name}: row {i} of sum_x T[x] sums to {rows[i]:.12g}, not 1 (tolerance {atol})")
    if init is None:
        init = stationary(T.sum(axis=0))
    else:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != (T.shape[1],):
            raise ValueError(f"{name}: init must have shape ({T.shape[1]},); got {init.shape}")
        if not np.all(np.isfinite(init)) or (init < 0).any() or abs(init.sum() - 1.0) > atol:
            raise ValueError(f"{name}: init must be a probability vector (finite, >= 0, sums to 1); got {init}")
    if token_names and len(token_names) != T.shape[0]:
        raise ValueError(f"{name}: {len(token_names)} token_names for {T.shape[0]} tokens")
    T.setflags(write=False)
    init = np.ascontiguousarray(init)
    init.setflags(write=False)
    return HMM(T=T, init=init, name=name, token_names=tuple(token_names), factors=tuple(factors), meta=dict(meta or {}))
