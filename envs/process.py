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
from typing import TYPE_CHECKING

import numpy as np

from envs._numerics import entropy

if TYPE_CHECKING:
    from envs.layout import Layout

ATOL = 1e-9
# Beliefs closer than this in every coordinate count as one mixed state. The grid is shifted by
# an irrational fraction of a cell so that beliefs with small denominators (1/2, 1/3, 2/5, ...)
# sit far from cell boundaries and float round-off cannot split them.
MERGE_TOL = 1e-9
_GRID_SHIFT = 0.5 * (np.sqrt(5.0) - 1.0)


@dataclass(frozen=True, eq=False)
class HMM:
    """An edge-emitting hidden Markov process.

    ``T`` has shape (V, S, S); ``init`` shape (S,). Use :func:`from_matrices` (validated) to build one.
    ``token_names`` label tokens for figures. ``layout`` (:mod:`envs.layout`, set by :mod:`envs.compose`)
    maps a composition's tokens and states back to its factors; None for a primitive process.
    ``family`` and ``params`` record which registry factory built the process and with what
    (``{"name": family, **params}`` rebuilds it), so code recognises a process by what it is, not by
    comparing matrices; "" and {} for compositions and for :func:`from_matrices`.
    """

    T: np.ndarray
    init: np.ndarray
    name: str = "hmm"
    token_names: tuple[str, ...] = ()
    layout: Layout | None = None
    family: str = ""
    params: dict = field(default_factory=dict)
    # derived tables and expensive results (CDFs, entropy rate); never part of identity
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_states(self) -> int:
        return self.T.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.T.shape[0]

    @property
    def factors(self) -> tuple[HMM, ...]:
        """The factor processes of a composition, in order; () for a primitive process."""
        return () if self.layout is None else self.layout.factors

    @property
    def meta(self) -> dict:
        """The layout's plain description (``kind``, ``state_shape``, ``factor_tokens``, ...; see
        :meth:`envs.layout.Layout.meta`) for display and serialisation; {} for a primitive process."""
        return {} if self.layout is None else self.layout.meta()

    @property
    def transition(self) -> np.ndarray:
        """State-to-state matrix ``sum_x T[x]`` (S, S)."""
        return self.T.sum(axis=0)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}  # numba-side tables are rebuilt on the other side of a pickle
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- sampling and beliefs (compiled kernels in envs._kernels) ----------------------------

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``batch`` sequences of ``length`` tokens.

        Returns ``tokens`` (batch, length) int64 and ``states`` (batch, length + 1) int64, where
        ``states[:, t]`` is the hidden state before token t is emitted. Uses the same random draws
        as :meth:`sample_with_beliefs`, so both give the same tokens for the same seed.
        """
        from envs import _kernels

        return _kernels.sample(self, batch, length, rng)

    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """Exact beliefs (float64, shape tokens.shape + (S,)): entry t is P(state | tokens[..., :t+1]).

        ValueError if a token is out of range or a sequence has probability zero.
        """
        from envs import _kernels

        return _kernels.beliefs(self, np.asarray(tokens))

    def sample_with_beliefs(
        self, batch: int, length: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens (B,L), states (B,L+1), beliefs (B,L,S))`` in one fused pass."""
        from envs import _kernels

        return _kernels.sample_with_beliefs(self, batch, length, rng)

    def next_token_probs(self, beliefs: np.ndarray) -> np.ndarray:
        """P(next token | belief): ``beliefs`` (..., S) -> (..., V)."""
        return np.asarray(beliefs) @ self.T.sum(axis=2).T  # (..., V)

    def factor_beliefs(self, beliefs: np.ndarray) -> list[np.ndarray]:
        """Beliefs over each factor's states (empty list for a primitive); see :mod:`envs.layout`."""
        return [] if self.layout is None else self.layout.factor_beliefs(beliefs)

    # -- mixed states and entropies -------------------------------------------------------------

    def mixed_states(self, depth: int, max_states: int = 500_000) -> tuple[np.ndarray, np.ndarray]:
        """Distinct beliefs reached after 0..depth tokens, with probabilities.

        Returns ``(beliefs (N, S), probs (N,))``: ``probs`` is the distribution of the belief at a
        position drawn uniformly from 0..depth (so it sums to 1, and the root ``init`` has weight at
        least 1/(depth+1)). Beliefs within ``MERGE_TOL`` of each other are merged; rows are in a
        canonical (sorted) order. ValueError if a level would exceed ``max_states`` beliefs.
        """
        if depth < 0:
            raise ValueError(f"depth must be >= 0; got {depth}")
        levels_b, levels_p = [], []
        b, p = self.init[None, :], np.ones(1)
        for t in range(depth + 1):
            levels_b.append(b)
            levels_p.append(p)
            if t < depth:
                b, p = _expand(self.T, b, p)
                if len(b) > max_states:
                    raise ValueError(
                        f"{self.name}: {len(b)} distinct beliefs at depth {t + 1} exceed max_states={max_states}"
                    )
        return _merge(np.concatenate(levels_b), np.concatenate(levels_p) / (depth + 1))

    def conditional_entropies(
        self,
        length: int,
        max_states: int = 5_000,
        beyond: str = "coarsen",
        n_samples: int = 16_384,
        seed: int = 0,
    ) -> np.ndarray:
        """``H(X_t | X_0..X_{t-1})`` in nats for t = 0..length-1, starting from ``init``.

        The optimal next-token loss of a model at position t is entry t+1. Compositions with a
        closed form use it (exact in terms of their factors' entries): product = sum of factors;
        interleave = factor ``t % n`` at its own position ``t // n``; mixture (disjoint tokens, so
        the first token reveals the component) = ``H(weights) + sum_i w_i H_i[0]`` at t = 0, then
        ``sum_i w_i H_i[t]`` (each in :mod:`envs.layout`). Everything else goes through
        :func:`enumerate_conditional_entropies` (see there for ``max_states``, ``beyond``,
        ``n_samples``, ``seed``).
        """
        key = ("cond_H", length, max_states, beyond, n_samples, seed)
        if key not in self._cache:
            sub = {"max_states": max_states, "beyond": beyond, "n_samples": n_samples, "seed": seed}
            out = None if self.layout is None else self.layout.conditional_entropies(length, **sub)
            if out is None:
                out = enumerate_conditional_entropies(self, length, **sub)
            self._cache[key] = np.asarray(out, dtype=np.float64)
        return self._cache[key].copy()

    def entropy_rate(self, n_samples: int = 8192, length: int = 512, seed: int = 0) -> float:
        """Entropy rate in nats/token: the optimal next-token loss once the context is long.

        Exact where a formula exists: a unifilar presentation with a unique stationary
        distribution (``sum_i pi_i H(X | state i)``: RRXOR, Z1R, noisy NOT/AND); a product (sum of
        factor rates); an interleave (mean of factor rates); a mixture (weighted mean of component
        rates). Otherwise (Mess3, gated) Monte Carlo: the mean entropy of the exact predictive
        distribution over the second half of ``n_samples`` sampled sequences of ``length`` tokens
        (seeded; standard error ~1e-4 nats for Mess3).
        """
        key = ("h", n_samples, length, seed)
        if key in self._cache:
            return self._cache[key]
        sub = {"n_samples": n_samples, "length": length, "seed": seed}
        h = None if self.layout is None else self.layout.entropy_rate(**sub)
        if h is None and _is_unifilar(self.T) and _has_unique_stationary(self.transition):
            h = float(stationary(self.transition) @ entropy(self.T.sum(axis=2).T))
        if h is None:
            emit = self.T.sum(axis=2).T  # (S, V)
            sums = [
                entropy(bel[:, length // 2 :] @ emit).sum(axis=0)  # (L - L//2,)
                for bel in _belief_chunks(self, n_samples, length, np.random.default_rng(seed))
            ]
            h = float(np.sum(sums) / (n_samples * (length - length // 2)))
        self._cache[key] = float(h)
        return float(h)


def enumerate_conditional_entropies(
    hmm: HMM, length: int, max_states: int = 5_000, beyond: str = "coarsen", n_samples: int = 16_384, seed: int = 0
) -> np.ndarray:
    """``H(X_t | X_0..X_{t-1})`` for t < length from the mixed-state tree of any HMM.

    Exact (equal beliefs merged) while a level has at most ``max_states`` beliefs. Past that
    (Mess3 grows like V^t) ``beyond`` decides:

    - ``"coarsen"`` (default, deterministic): each level is merged on a grid coarse enough to keep
      ``max_states`` cells, every cell replaced by its probability-weighted mean belief. That mean
      is the exact posterior of an observer who only knows the cell, so every entry is an upper
      bound on the true value; for Mess3 the excess is <= 2e-5 nats at the default 5k, ~4e-6 at 10k.
    - ``"mc"``: Monte Carlo with exact beliefs: the mean entropy of the exact predictive
      distribution over ``n_samples`` sampled prefixes (seeded, so deterministic), standard error
      about ``std / sqrt(n_samples)`` (~1e-3 nats for Mess3 at the default).
    """
    if beyond not in ("coarsen", "mc"):
        raise ValueError(f"beyond must be 'coarsen' or 'mc'; got {beyond!r}")
    if max_states < 1 or length < 0:
        raise ValueError(f"need max_states >= 1 and length >= 0; got max_states={max_states}, length={length}")
    out = np.empty(length)
    emit = hmm.T.sum(axis=2).T  # (S, V): P(x | state)
    b, p = hmm.init[None, :], np.ones(1)
    t, cell = 0, MERGE_TOL
    while t < length and (len(b) <= max_states or beyond == "coarsen"):
        if len(b) > max_states:
            b, p = _merge(b, p, cell)
        while len(b) > max_states:
            cell *= 2.0  # kept for later levels: the tree only grows
            b, p = _merge(b, p, cell)
        out[t] = p @ entropy(b @ emit)
        t += 1
        if t < length:
            b, p = _expand(hmm.T, b, p)
    if t < length:
        total = np.zeros(length - t)
        for bel in _belief_chunks(hmm, n_samples, length - 1, np.random.default_rng(seed)):  # (n, L-1, S)
            prior = bel[:, t - 1 :]  # belief before token t' is the one after token t'-1; t >= 1 here
            total += entropy(prior @ emit).sum(axis=0)
        out[t:] = total / n_samples
    return out


def _belief_chunks(hmm: HMM, n: int, length: int, rng: np.random.Generator, max_floats: int = 2**24):
    """Beliefs of ``n`` sampled sequences in chunks of at most ~128 MB, drawn from one generator."""
    step = max(1, max_floats // max(1, length * hmm.n_states))
    for start in range(0, n, step):
        yield hmm.sample_with_beliefs(min(step, n - start), length, rng)[2]


def _expand(T: np.ndarray, beliefs: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One level of the mixed-state tree: every belief followed by every possible token, merged."""
    nxt = np.einsum("ni,xij->nxj", beliefs, T)  # (N, V, S)
    px = nxt.sum(axis=2)  # (N, V)
    joint = probs[:, None] * px  # (N, V)
    keep = (px > 0) & (joint > 0)
    return _merge(nxt[keep] / px[keep][:, None], joint[keep])


def _merge(beliefs: np.ndarray, probs: np.ndarray, cell: float = MERGE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Merge beliefs in the same grid cell into their probability-weighted mean.

    The mean is the exact posterior given "the belief is in this cell", so merging only ever
    discards information; with the default cell it merges beliefs that differ by round-off.
    """
    keys = np.floor(beliefs / cell + _GRID_SHIFT).astype(np.int64)  # (N, S)
    # sort one 64-bit hash per row instead of rows (10x faster); collisions are checked below
    mult = np.arange(1, keys.shape[1] + 1, dtype=np.int64) * np.int64(0x9E3779B97F4A7C15 - (1 << 64))
    _, first, inv = np.unique(keys @ mult, return_index=True, return_inverse=True)  # wraps mod 2^64
    inv = inv.ravel()
    if not np.array_equal(keys[first][inv], keys):
        _, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.ravel()
    p = np.bincount(inv, weights=probs)  # (M,)
    mass = np.stack([np.bincount(inv, weights=probs * col, minlength=len(p)) for col in beliefs.T], axis=1)  # (M, S)
    return mass / p[:, None], p


def _is_unifilar(T: np.ndarray) -> bool:
    """Each (state, token) leads to at most one next state."""
    return bool(((T > 0).sum(axis=2) <= 1).all())


def _null_dim(transition: np.ndarray) -> int:
    sv = np.linalg.svd(transition - np.eye(transition.shape[0]), compute_uv=False)
    return int((sv < 1e-10 * max(1, transition.shape[0])).sum())


def _has_unique_stationary(transition: np.ndarray) -> bool:
    return _null_dim(transition) == 1


def stationary(transition: np.ndarray) -> np.ndarray:
    """The unique stationary distribution of a row-stochastic matrix; ValueError if not unique.

    Solved as a linear system (not an eigenvector), which is accurate to round-off even for
    periodic chains such as RRXOR, whose eigenvalues on the unit circle make eigensolvers lose
    ~1e-12 and would split mixed states that are really equal.
    """
    s = transition.shape[0]
    nd = _null_dim(transition)
    if nd != 1:
        raise ValueError(
            f"stationary distribution: sum_x T[x] has {nd} independent stationary vectors (more than one closed "
            "class of states), so no unique stationary distribution exists; pass init= explicitly"
        )
    A = transition.T - np.eye(s)  # pi A^T = 0
    A[-1, :] = 1.0  # replace one (redundant) balance equation by sum(pi) = 1
    rhs = np.zeros(s)
    rhs[-1] = 1.0
    pi = np.linalg.solve(A, rhs)
    if np.any(pi < -1e-9):
        raise ValueError(f"stationary distribution: solution has negative entries {pi}")
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def from_matrices(
    T,
    init=None,
    *,
    name: str = "from_matrices",
    token_names=(),
    layout=None,
    atol: float = 1e-8,
) -> HMM:
    """Build a validated :class:`HMM`. Every failed check raises ValueError saying which and where.

    ``T`` (V, S, S): ``T[x][i, j] = P(emit x, go to j | in i)``. ``init`` (S,) defaults to the
    stationary distribution of ``sum_x T[x]`` and must be given when that is not unique.
    ``layout``: how a composition's tokens and states map to its factors (:mod:`envs.compose` sets it).
    """
    try:
        T = np.array(T, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: T is not a numeric array ({e})") from None
    if T.ndim != 3 or T.shape[1] != T.shape[2]:
        raise ValueError(f"{name}: shape check: T must have shape (V, S, S); got {T.shape}")
    if T.shape[0] < 1 or T.shape[1] < 1:
        raise ValueError(f"{name}: shape check: T needs at least one token and one state; got {T.shape}")
    bad = ~np.isfinite(T)
    if bad.any():
        x, i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}: finite check: T[{x}][{i}, {j}] is {T[x, i, j]}")
    if (T < 0).any():
        x, i, j = np.argwhere(T < 0)[0]
        raise ValueError(f"{name}: non-negative check: T[{x}][{i}, {j}] = {T[x, i, j]} is negative")
    rows = T.sum(axis=(0, 2))
    off = np.abs(rows - 1.0) > atol
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"{name}: stochastic check: row {i} of sum_x T[x] sums to {rows[i]:.12g}, not 1 (atol {atol})")
    if init is None:
        try:
            init = stationary(T.sum(axis=0))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    else:
        try:
            init = np.array(init, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: init is not a numeric array ({e})") from None
        if init.shape != (T.shape[1],):
            raise ValueError(f"{name}: shape check: init must have shape ({T.shape[1]},); got {init.shape}")
        if not np.all(np.isfinite(init)):
            raise ValueError(f"{name}: finite check: init[{int(np.argmax(~np.isfinite(init)))}] is not finite")
        if (init < 0).any():
            raise ValueError(f"{name}: non-negative check: init[{int(np.argmax(init < 0))}] is negative")
        if abs(init.sum() - 1.0) > atol:
            raise ValueError(f"{name}: stochastic check: init sums to {init.sum():.12g}, not 1 (atol {atol})")
    token_names = tuple(str(t) for t in token_names) or tuple(str(x) for x in range(T.shape[0]))
    if len(token_names) != T.shape[0]:
        raise ValueError(f"{name}: shape check: {len(token_names)} token_names for {T.shape[0]} tokens")
    if layout is not None:
        from envs.layout import Layout

        if not isinstance(layout, Layout):
            raise ValueError(f"{name}: layout must be an envs.layout.Layout; got {type(layout).__name__}")
        if (layout.vocab_size, layout.n_states) != T.shape[:2]:
            raise ValueError(
                f"{name}: shape check: layout has {layout.vocab_size} tokens and {layout.n_states} states; "
                f"T has {T.shape[0]} and {T.shape[1]}"
            )
    T.setflags(write=False)
    init = np.ascontiguousarray(init)
    init.setflags(write=False)
    return HMM(T=T, init=init, name=name, token_names=token_names, layout=layout)
