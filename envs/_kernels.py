"""Sampling and exact-belief kernels.

The compiled kernels (numba, float64; parallel over the batch for big batches, serial for small
ones) are what :class:`envs.process.HMM` uses. Every uniform random number is drawn up front from
the caller's numpy Generator, one row per sequence, so a seed gives the same tokens, states and
beliefs whatever the thread count.
``sample`` and ``sample_with_beliefs`` consume the same draws, so they agree token for token.

Sampling inverts the CDF of the joint (token, next state) distribution of the current state
(``P(x, j | i) = T[x][i, j]``): the next state is drawn from the true generative model, never
as an argmax (Mess3 is non-unifilar). Beliefs use the normalized forward algorithm,
``eta_t = eta_{t-1} T[x_t] / (eta_{t-1} T[x_t] 1)``, which only multiplies and adds
non-negative numbers, so exact zeros stay zero and no cancellation can occur.

The pure-numpy functions at the bottom are the plain batch-vectorised loop (one matrix product
per time step) that the benchmark measures against, and an independent cross-check in tests.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from numba import njit, prange
from numba.np.ufunc import parallel as _numba_parallel

# numba's default OpenMP layer leaves its threads spinning after each parallel kernel; in a process
# that also runs torch (pretraining, RLlib env runners and learners) the two OpenMP runtimes then
# fight over 2 cores and every small torch op costs ~20x more (measured: 3.6 ms instead of 0.17 ms
# for a (320, 64) @ (64, 256) linear). The workqueue layer does not spin. It must be chosen before
# numba's first parallel launch, so it is chosen here, unless the user picked a layer.
if "NUMBA_THREADING_LAYER" not in os.environ and not _numba_parallel._is_initialized:
    numba.config.THREADING_LAYER = "workqueue"

# The workqueue layer aborts the process on concurrent launches from two Python threads (e.g. a
# background sampler thread and the main thread), so kernels launch one at a time.
_LAUNCH_LOCK = threading.Lock()


def launch(kernel, *args):
    """Run a parallel numba kernel; every numba kernel of the project (envs and models) goes through here."""
    with _LAUNCH_LOCK:
        return kernel(*args)


def joint_cdf(T: np.ndarray) -> np.ndarray:
    """Per-state CDF over (token, next state) pairs, flattened as ``x * S + j``: (S, V*S).

    Each row is renormalized (rows may be off by the validation tolerance) and set to exactly 1
    from its last positive entry on, so zero-probability pairs at the end can never be drawn.
    """
    V, S, _ = T.shape
    joint = T.transpose(1, 0, 2).reshape(S, V * S)  # (S, V*S)
    return _cdf_rows(joint)


def init_cdf(init: np.ndarray) -> np.ndarray:
    return _cdf_rows(init[None, :])[0]  # (S,)


def _cdf_rows(p: np.ndarray) -> np.ndarray:
    p = p / p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)  # (R, K)
    for r in range(p.shape[0]):
        last = np.flatnonzero(p[r] > 0)[-1]
        cdf[r, last:] = 1.0
    return np.ascontiguousarray(cdf)


def draw_uniforms(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Column 0 picks the initial state, column t+1 the (token t, state t+1) pair: (B, L+1)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); got {type(rng)}")
    if batch < 0 or length < 0:
        raise ValueError(f"batch and length must be >= 0; got batch={batch}, length={length}")
    return rng.random((batch, length + 1))


@njit(cache=True, inline="always")
def _pick(cdf_row, u):
    k = 0
    n = cdf_row.shape[0]
    while k < n - 1 and u >= cdf_row[k]:
        k += 1
    return k


@njit(cache=True, inline="always")
def _sample_seq(b, cdf, icdf, u, S, tokens, states):
    s = _pick(icdf, u[b, 0])
    states[b, 0] = s
    for t in range(tokens.shape[1]):
        k = _pick(cdf[s], u[b, t + 1])
        x = k // S
        s = k - x * S
        tokens[b, t] = x
        states[b, t + 1] = s


# Two variants of the forward step: dense for small dense processes (Mess3: the sums stay in
# registers, ~2x faster per entry) and sparse for compositions (entries of token x at
# ptr[x]:ptr[x+1], ordered by source state, so a composition pays for its non-zeros, not S^2).
# Each cur[j] sums over i in increasing order in both, so they give bit-identical beliefs. The
# belief is carried in per-sequence buffers and normalized while it is written out: reading it
# back from the output array or copying it made the kernel 1.5-1.7x slower.


@njit(cache=True, inline="always")
def _unnormalized_dense(T, x, prev, cur):
    S = prev.shape[0]
    total = 0.0
    for j in range(S):
        acc = 0.0
        for i in range(S):
            acc += prev[i] * T[x, i, j]
        cur[j] = acc
        total += acc
    return total


@njit(cache=True, inline="always")
def _unnormalized_sparse(ptr, src, dst, val, x, prev, cur):
    S = prev.shape[0]
    for j in range(S):
        cur[j] = 0.0
    for e in range(ptr[x], ptr[x + 1]):
        cur[dst[e]] += prev[src[e]] * val[e]
    total = 0.0
    for j in range(S):
        total += cur[j]
    return total


@njit(cache=True, inline="always")
def _write_normalized(cur, total, prev, out):
    for j in range(cur.shape[0]):
        v = cur[j] / total
        prev[j] = v
        out[j] = v


@njit(cache=True, inline="always")
def _update(dense, T, ptr, src, dst, val, x, prev, cur, out):
    """One forward-algorithm step on token x into prev and out; False if the belief underflowed to zero."""
    if dense:
        total = _unnormalized_dense(T, x, prev, cur)
    else:
        total = _unnormalized_sparse(ptr, src, dst, val, x, prev, cur)
    if total <= 0.0:
        return False
    _write_normalized(cur, total, prev, out)
    return True


@njit(cache=True, inline="always")
def _sample_beliefs_seq(b, dense, T, ptr, src, dst, val, cdf, icdf, init, u, tokens, states, beliefs, failed_at):
    S = init.shape[0]
    K = cdf.shape[1]
    prev = init.copy()
    cur = np.empty(S)
    s = _pick(icdf, u[b, 0])
    states[b, 0] = s
    for t in range(tokens.shape[1]):
        uu = u[b, t + 1]
        k = 0
        while k < K - 1 and uu >= cdf[s, k]:
            k += 1
        x = k // S
        s = k - x * S
        tokens[b, t] = x
        states[b, t + 1] = s
        if not _update(dense, T, ptr, src, dst, val, x, prev, cur, beliefs[b, t]):
            # only reachable through underflow: the sampled token had exact probability > 0
            failed_at[b] = t
            return


@njit(cache=True, inline="always")
def _beliefs_seq(b, dense, T, ptr, src, dst, val, init, tokens, beliefs, failed_at):
    prev = init.copy()
    cur = np.empty(init.shape[0])
    for t in range(tokens.shape[1]):
        if not _update(dense, T, ptr, src, dst, val, tokens[b, t], prev, cur, beliefs[b, t]):
            failed_at[b] = t
            return


# Batch loops: parallel over sequences for big batches; serial for small ones (a gym reset samples
# one sequence), where waking the thread pool costs more than the work.


@njit(cache=True, parallel=True)
def _sample_par(cdf, icdf, u, S, tokens, states):
    for b in prange(tokens.shape[0]):
        _sample_seq(b, cdf, icdf, u, S, tokens, states)


@njit(cache=True)
def _sample_ser(cdf, icdf, u, S, tokens, states):
    for b in range(tokens.shape[0]):
        _sample_seq(b, cdf, icdf, u, S, tokens, states)


@njit(cache=True, parallel=True)
def _sample_beliefs_par(dense, T, ptr, src, dst, val, cdf, icdf, init, u, tokens, states, beliefs, failed_at):
    for b in prange(tokens.shape[0]):
        _sample_beliefs_seq(b, dense, T, ptr, src, dst, val, cdf, icdf, init, u, tokens, states, beliefs, failed_at)


@njit(cache=True)
def _sample_beliefs_ser(dense, T, ptr, src, dst, val, cdf, icdf, init, u, tokens, states, beliefs, failed_at):
    for b in range(tokens.shape[0]):
        _sample_beliefs_seq(b, dense, T, ptr, src, dst, val, cdf, icdf, init, u, tokens, states, beliefs, failed_at)


@njit(cache=True, parallel=True)
def _beliefs_par(dense, T, ptr, src, dst, val, init, tokens, beliefs, failed_at):
    for b in prange(tokens.shape[0]):
        _beliefs_seq(b, dense, T, ptr, src, dst, val, init, tokens, beliefs, failed_at)


@njit(cache=True)
def _beliefs_ser(dense, T, ptr, src, dst, val, init, tokens, beliefs, failed_at):
    for b in range(tokens.shape[0]):
        _beliefs_seq(b, dense, T, ptr, src, dst, val, init, tokens, beliefs, failed_at)


PARALLEL_MIN_TOKENS = 1 << 14


def sparse_tokens(T: np.ndarray):
    """Per-token lists of non-zero entries: ptr (V+1,), src, dst (nnz,) int64, val (nnz,) float64."""
    x, i, j = np.nonzero(T)  # row-major: ordered by token, then source, then destination
    ptr = np.searchsorted(x, np.arange(T.shape[0] + 1)).astype(np.int64)
    return ptr, i.astype(np.int64), j.astype(np.int64), np.ascontiguousarray(T[x, i, j])


def _tables(hmm):
    """Dense and sparse T with the faster one flagged, CDFs and init, cached on the (immutable) HMM."""
    cache = hmm._cache
    if "cdf" not in cache:
        V, S, _ = hmm.T.shape
        sparse = sparse_tokens(hmm.T)
        # the sparse loop costs ~2x per entry, so it wins below ~half density
        dense = bool(len(sparse[3]) > 0.4 * V * S * S)
        cache["mats"] = (dense, np.ascontiguousarray(hmm.T), *sparse)
        cache["cdf"] = joint_cdf(hmm.T)
        cache["icdf"] = init_cdf(hmm.init)
        cache["init"] = np.ascontiguousarray(hmm.init)
    return cache["mats"], cache["init"], cache["cdf"], cache["icdf"]


def sample(hmm, batch: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    _, _, cdf, icdf = _tables(hmm)
    u = draw_uniforms(rng, batch, length)
    tokens = np.empty((batch, length), dtype=np.int64)
    states = np.empty((batch, length + 1), dtype=np.int64)
    kernel = _sample_par if batch * length >= PARALLEL_MIN_TOKENS else _sample_ser
    launch(kernel, cdf, icdf, u, hmm.n_states, tokens, states)
    return tokens, states


def sample_with_beliefs(hmm, batch: int, length: int, rng: np.random.Generator):
    mats, init, cdf, icdf = _tables(hmm)
    u = draw_uniforms(rng, batch, length)
    tokens = np.empty((batch, length), dtype=np.int64)
    states = np.empty((batch, length + 1), dtype=np.int64)
    beliefs = np.empty((batch, length, hmm.n_states), dtype=np.float64)
    failed_at = np.full(batch, -1, dtype=np.int64)
    kernel = _sample_beliefs_par if batch * length >= PARALLEL_MIN_TOKENS else _sample_beliefs_ser
    launch(kernel, *mats, cdf, icdf, init, u, tokens, states, beliefs, failed_at)
    if (failed_at >= 0).any():
        b = int(np.argmax(failed_at >= 0))
        raise FloatingPointError(
            f"{hmm.name}: belief underflowed to all zeros in sequence {b} at position {failed_at[b]}"
        )
    return tokens, states, beliefs


def beliefs(hmm, tokens: np.ndarray) -> np.ndarray:
    mats, init, _, _ = _tables(hmm)
    tokens = np.asarray(tokens)
    if tokens.ndim == 0:
        raise ValueError("tokens must have at least one dimension (..., L)")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integers; got dtype {tokens.dtype}")
    shape = tokens.shape
    tok = np.ascontiguousarray(tokens.reshape(int(np.prod(shape[:-1])), shape[-1]), dtype=np.int64)  # (B, L)
    if tok.size and (tok.min() < 0 or tok.max() >= hmm.vocab_size):
        raise ValueError(f"{hmm.name}: tokens must lie in [0, {hmm.vocab_size}); got range [{tok.min()}, {tok.max()}]")
    out = np.empty(tok.shape + (hmm.n_states,), dtype=np.float64)  # (B, L, S)
    failed_at = np.full(tok.shape[0], -1, dtype=np.int64)
    kernel = _beliefs_par if tok.size >= PARALLEL_MIN_TOKENS else _beliefs_ser
    launch(kernel, *mats, init, tok, out, failed_at)
    if (failed_at >= 0).any():
        b = int(np.argmax(failed_at >= 0))
        t = int(failed_at[b])
        raise ValueError(
            f"{hmm.name}: token sequence {b} has probability zero at position {t} "
            f"(token {tok[b, t]} cannot follow {tok[b, :t].tolist()[-8:]})"
        )
    return out.reshape(shape + (hmm.n_states,))


# ---------------------------------------------------------------------------------------------
# Plain batch-vectorised numpy: the benchmark baseline and an independent cross-check.


def sample_with_beliefs_numpy(hmm, batch: int, length: int, rng: np.random.Generator):
    """Same draws and same results as :func:`sample_with_beliefs`, one matrix product per step."""
    V, S, _ = hmm.T.shape
    cdf = joint_cdf(hmm.T)  # (S, V*S)
    flat = hmm.T.transpose(1, 0, 2).reshape(S, V * S)  # (S, V*S): eta @ flat = all V updates at once
    u = draw_uniforms(rng, batch, length)
    rows = np.arange(batch)
    tokens = np.empty((batch, length), dtype=np.int64)
    states = np.empty((batch, length + 1), dtype=np.int64)
    beliefs = np.empty((batch, length, S))
    states[:, 0] = (u[:, 0, None] >= init_cdf(hmm.init)[None, :-1]).sum(axis=1)
    eta = np.broadcast_to(hmm.init, (batch, S))
    for t in range(length):
        k = (u[:, t + 1, None] >= cdf[states[:, t], :-1]).sum(axis=1)  # (B,)
        tokens[:, t], states[:, t + 1] = np.divmod(k, S)
        nxt = (eta @ flat).reshape(batch, V, S)[rows, tokens[:, t]]  # (B, S)
        eta = nxt / nxt.sum(axis=1, keepdims=True)
        beliefs[:, t] = eta
    return tokens, states, beliefs


def beliefs_numpy(hmm, tokens: np.ndarray) -> np.ndarray:
    shape = tokens.shape
    tok = tokens.reshape(-1, shape[-1])
    B, L = tok.shape
    out = np.empty((B, L, hmm.n_states))
    eta = np.broadcast_to(hmm.init, (B, hmm.n_states))
    for t in range(L):
        eta = np.einsum("bi,bij->bj", eta, hmm.T[tok[:, t]])  # (B, S)
        eta = eta / eta.sum(axis=1, keepdims=True)
        out[:, t] = eta
    return out.reshape(shape + (hmm.n_states,))
