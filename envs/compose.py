"""Composition operators: each builds the joint (V, S, S) matrix, so the result is itself an HMM
with exact beliefs, and records in ``meta`` how tokens and states map back to the factors.

``meta`` keys (all compositions): ``kind``, ``state_shape`` (the joint state index is the
row-major index into this shape), and, except for ``product``, ``token_offsets`` and
``factor_tokens`` (per factor, the global token ids it owns: ``offset_i + local``, disjoint
blocks in factor order). ``product`` has ``token_shape`` instead (joint token = row-major index).

- product(A, B, ...): independent factors each emit one token per step; state_shape (S_A, S_B, ...).
- interleave(A, B, ...): tokens alternate A, B, ..., A, B, ... starting with A; state_shape
  (n_factors, S_A, S_B, ...) whose first axis is the phase (whose turn it is).
- mixture([A, B, ...], weights): each sequence comes from one component; block-diagonal T over the
  concatenated states (state blocks at ``state_offsets``); ``init = concat(w_i * init_i)``.
- gated(A, B, trigger): A runs; right after A emits its local token ``trigger``, B advances one
  step and emits one token, then A continues; state_shape (2, S_A, S_B), first axis = whose turn.
"""

from __future__ import annotations

import numpy as np

from envs.process import HMM, from_matrices


def _check_factors(op: str, factors) -> tuple[HMM, ...]:
    factors = tuple(factors)
    if len(factors) < 1:
        raise ValueError(f"{op}: needs at least one factor")
    for i, f in enumerate(factors):
        if not isinstance(f, HMM):
            raise ValueError(f"{op}: factor {i} is a {type(f).__name__}, not an HMM")  # noqa: TRY004 (spec errors are ValueErrors by contract)
    return factors


def _kron_all(mats) -> np.ndarray:
    out = np.ones((1, 1))
    for m in mats:
        out = np.kron(out, m)
    return out


def _offsets(sizes) -> list[int]:
    return [int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]])]


def _names(f: HMM, prefix: str) -> list[str]:
    return [f"{prefix}{n}" for n in f.token_names]


def product(*factors: HMM) -> HMM:
    """Independent factors emitting one joint token per step (row-major joint token id)."""
    factors = _check_factors("product", factors)
    T, init, names = np.ones((1, 1, 1)), np.ones(1), [""]
    for f in factors:
        V, S = T.shape[0] * f.vocab_size, T.shape[1] * f.n_states
        T = np.einsum("xij,ykl->xyikjl", T, f.T).reshape(V, S, S)  # (V, S, S)
        init = np.kron(init, f.init)
        names = [f"{a}|{b}" if a else b for a in names for b in f.token_names]
    meta = {
        "kind": "product",
        "state_shape": tuple(f.n_states for f in factors),
        "token_shape": tuple(f.vocab_size for f in factors),
    }
    name = f"product({', '.join(f.name for f in factors)})"
    return from_matrices(T, init, name=name, token_names=names, factors=factors, meta=meta)


def interleave(*factors: HMM) -> HMM:
    """Factors take turns emitting one token each, in order, starting with the first."""
    factors = _check_factors("interleave", factors)
    n = len(factors)
    sizes = [f.n_states for f in factors]
    P = int(np.prod(sizes))
    offs = _offsets([f.vocab_size for f in factors])
    V = offs[-1] + factors[-1].vocab_size
    T = np.zeros((V, n * P, n * P))
    for p, f in enumerate(factors):
        q = (p + 1) % n
        for x in range(f.vocab_size):
            # only factor p moves; the others hold their state
            blocks = [f.T[x] if k == p else np.eye(s) for k, s in enumerate(sizes)]
            T[offs[p] + x, p * P : (p + 1) * P, q * P : (q + 1) * P] = _kron_all(blocks)
    init = np.zeros(n * P)
    init[:P] = _kron_all([f.init[None, :] for f in factors])[0]
    meta = {
        "kind": "interleave",
        "state_shape": (n, *sizes),
        "token_offsets": offs,
        "factor_tokens": [list(range(o, o + f.vocab_size)) for o, f in zip(offs, factors)],
    }
    names = [t for i, f in enumerate(factors) for t in _names(f, f"{i}:")]
    name = f"interleave({', '.join(f.name for f in factors)})"
    return from_matrices(T, init, name=name, token_names=names, factors=factors, meta=meta)


def mixture(components, weights=None) -> HMM:
    """Each sequence comes from one component (drawn with ``weights``, uniform by default)."""
    components = _check_factors("mixture", components)
    n = len(components)
    if weights is None:
        weights = np.full(n, 1.0 / n)
    try:
        weights = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"mixture: weights must be {n} numbers; got {weights!r}") from None
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise ValueError(f"mixture: weights must be {n} finite non-negative numbers; got {weights.tolist()}")
    if abs(weights.sum() - 1.0) > 1e-8:
        raise ValueError(f"mixture: weights must sum to 1; got {weights.tolist()} (sum {weights.sum():.12g})")
    s_off = _offsets([c.n_states for c in components])
    t_off = _offsets([c.vocab_size for c in components])
    S = s_off[-1] + components[-1].n_states
    V = t_off[-1] + components[-1].vocab_size
    T = np.zeros((V, S, S))
    init = np.zeros(S)
    for c, so, to, w in zip(components, s_off, t_off, weights):
        T[to : to + c.vocab_size, so : so + c.n_states, so : so + c.n_states] = c.T
        init[so : so + c.n_states] = w * c.init
    meta = {
        "kind": "mixture",
        "state_shape": (S,),
        "state_offsets": s_off,
        "token_offsets": t_off,
        "factor_tokens": [list(range(o, o + c.vocab_size)) for o, c in zip(t_off, components)],
        "weights": weights.tolist(),
    }
    names = [t for i, c in enumerate(components) for t in _names(c, f"{i}:")]
    name = f"mixture({', '.join(c.name for c in components)}; weights={[round(w, 6) for w in weights.tolist()]})"
    # the chain is not ergodic (one closed class per component), so init must be explicit
    return from_matrices(T, init, name=name, token_names=names, factors=components, meta=meta)


def gated(a: HMM, b: HMM, trigger: int) -> HMM:
    """A runs; right after A emits local token ``trigger``, B emits one token, then A resumes."""
    _check_factors("gated", (a, b))
    if isinstance(trigger, bool) or not isinstance(trigger, (int, np.integer)) or not 0 <= trigger < a.vocab_size:
        raise ValueError(f"gated: trigger must be a token id of factor a in [0, {a.vocab_size}); got {trigger!r}")
    trigger = int(trigger)
    Sa, Sb = a.n_states, b.n_states
    P = Sa * Sb
    V = a.vocab_size + b.vocab_size
    T = np.zeros((V, 2 * P, 2 * P))
    for x in range(a.vocab_size):
        to = 1 if x == trigger else 0
        T[x, :P, to * P : (to + 1) * P] = np.kron(a.T[x], np.eye(Sb))
    for y in range(b.vocab_size):
        T[a.vocab_size + y, P:, :P] = np.kron(np.eye(Sa), b.T[y])
    init = np.zeros(2 * P)
    init[:P] = np.kron(a.init, b.init)
    meta = {
        "kind": "gated",
        "state_shape": (2, Sa, Sb),
        "token_offsets": [0, a.vocab_size],
        "factor_tokens": [list(range(a.vocab_size)), list(range(a.vocab_size, V))],
        "trigger": trigger,
    }
    names = _names(a, "0:") + _names(b, "1:")
    name = f"gated({a.name}, {b.name}, trigger={trigger})"
    return from_matrices(T, init, name=name, token_names=names, factors=(a, b), meta=meta)


def factor_beliefs(hmm: HMM, beliefs: np.ndarray) -> list[np.ndarray]:
    """Per-factor beliefs from joint beliefs (..., S); one entry per factor, in factor order.

    product / interleave / gated: the marginal over factor i's states, (..., S_i) (the joint
    belief is exactly their outer product, times the known phase for interleave / gated).
    mixture: entry i is component i's belief conditional on the sequence coming from it
    (all zeros where the tokens rule component i out); one extra last entry holds the
    component posterior (..., n_components), so ``zip(hmm.factors, fb)`` still pairs up.
    """
    beliefs = np.asarray(beliefs)
    kind = hmm.meta.get("kind")
    lead = beliefs.shape[:-1]
    if kind == "mixture":
        conds, posts = [], []
        for c, so in zip(hmm.factors, hmm.meta["state_offsets"]):
            block = beliefs[..., so : so + c.n_states]  # (..., S_i)
            post = block.sum(axis=-1, keepdims=True)  # (..., 1)
            conds.append(np.divide(block, post, out=np.zeros_like(block), where=post > 0))
            posts.append(post[..., 0])
        return conds + [np.stack(posts, axis=-1)]
    if kind not in ("product", "interleave", "gated"):
        raise ValueError(f"{hmm.name}: no factor layout (meta kind {kind!r})")
    shape = hmm.meta["state_shape"]
    joint = beliefs.reshape(lead + tuple(shape))
    state_axes = range(len(lead), len(lead) + len(shape))
    skip = 0 if kind == "product" else 1  # interleave / gated: the first state axis is the phase
    return [joint.sum(axis=tuple(a for a in state_axes if a != len(lead) + skip + i)) for i in range(len(hmm.factors))]


def split_tokens(hmm: HMM, tokens: np.ndarray) -> list[np.ndarray]:
    """Factor-local tokens, one array per factor shaped like ``tokens``; -1 where it emitted nothing."""
    tokens = np.asarray(tokens)
    kind = hmm.meta.get("kind")
    if kind == "product":
        return [np.asarray(t, dtype=np.int64) for t in np.unravel_index(tokens, hmm.meta["token_shape"])]
    if "factor_tokens" not in hmm.meta:
        raise ValueError(f"{hmm.name}: not a composition (meta kind {kind!r})")
    out = []
    for off, owned in zip(hmm.meta["token_offsets"], hmm.meta["factor_tokens"]):
        mine = (tokens >= owned[0]) & (tokens <= owned[-1])
        out.append(np.where(mine, tokens - off, -1).astype(np.int64))
    return out
