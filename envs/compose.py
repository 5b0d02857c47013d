"""Composition operators: each builds the joint (V, S, S) matrix, so the result is itself an HMM
with exact beliefs, and attaches an :mod:`envs.layout` object (``hmm.layout``) that maps tokens and
states back to the factors (``hmm.meta`` is that layout's plain description).

- product(A, B, ...): independent factors each emit one token per step; joint token = row-major
  index of the factor tokens, joint state = row-major index into (S_A, S_B, ...).
- interleave(A, B, ...): tokens alternate A, B, ..., A, B, ... starting with A; state_shape
  (n_factors, S_A, S_B, ...) whose first axis is the phase (whose turn it is).
- mixture([A, B, ...], weights): each sequence comes from one component; block-diagonal T over the
  concatenated states; ``init = concat(w_i * init_i)``.
- gated(A, B, trigger): A runs; right after A emits its local token ``trigger``, B advances one
  step and emits one token, then A continues; state_shape (2, S_A, S_B), first axis = whose turn.

All but product give factor i the disjoint token block ``offset_i + local`` (``layout.token_offsets``).
"""

from __future__ import annotations

import numpy as np

from envs.layout import GatedLayout, InterleaveLayout, Layout, MixtureLayout, ProductLayout
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
    name = f"product({', '.join(f.name for f in factors)})"
    return from_matrices(T, init, name=name, token_names=names, layout=ProductLayout(factors))


def interleave(*factors: HMM) -> HMM:
    """Factors take turns emitting one token each, in order, starting with the first."""
    factors = _check_factors("interleave", factors)
    layout = InterleaveLayout(factors)
    n, sizes, offs, V = len(factors), layout.state_shape[1:], layout.token_offsets, layout.vocab_size
    P = int(np.prod(sizes))
    T = np.zeros((V, n * P, n * P))
    for p, f in enumerate(factors):
        q = (p + 1) % n
        for x in range(f.vocab_size):
            # only factor p moves; the others hold their state
            blocks = [f.T[x] if k == p else np.eye(s) for k, s in enumerate(sizes)]
            T[offs[p] + x, p * P : (p + 1) * P, q * P : (q + 1) * P] = _kron_all(blocks)
    init = np.zeros(n * P)
    init[:P] = _kron_all([f.init[None, :] for f in factors])[0]
    names = [t for i, f in enumerate(factors) for t in _names(f, f"{i}:")]
    name = f"interleave({', '.join(f.name for f in factors)})"
    return from_matrices(T, init, name=name, token_names=names, layout=layout)


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
    layout = MixtureLayout(components, weights)
    s_off, t_off, S, V = layout.state_offsets, layout.token_offsets, layout.n_states, layout.vocab_size
    T = np.zeros((V, S, S))
    init = np.zeros(S)
    for c, so, to, w in zip(components, s_off, t_off, weights):
        T[to : to + c.vocab_size, so : so + c.n_states, so : so + c.n_states] = c.T
        init[so : so + c.n_states] = w * c.init
    names = [t for i, c in enumerate(components) for t in _names(c, f"{i}:")]
    name = f"mixture({', '.join(c.name for c in components)}; weights={[round(w, 6) for w in weights.tolist()]})"
    # the chain is not ergodic (one closed class per component), so init must be explicit
    return from_matrices(T, init, name=name, token_names=names, layout=layout)


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
    names = _names(a, "0:") + _names(b, "1:")
    name = f"gated({a.name}, {b.name}, trigger={trigger})"
    return from_matrices(T, init, name=name, token_names=names, layout=GatedLayout(a, b, trigger))


def _layout(hmm: HMM) -> Layout:
    if hmm.layout is None:
        raise ValueError(f"{hmm.name}: not a composition (it has no layout)")
    return hmm.layout


def factor_beliefs(hmm: HMM, beliefs: np.ndarray) -> list[np.ndarray]:
    """Per-factor beliefs from joint beliefs (..., S): ``hmm.layout.factor_beliefs`` (see there; a
    mixture adds one last entry, the component posterior)."""
    return _layout(hmm).factor_beliefs(beliefs)


def split_tokens(hmm: HMM, tokens: np.ndarray) -> list[np.ndarray]:
    """Factor-local tokens, one array per factor shaped like ``tokens``; -1 where it emitted nothing."""
    return _layout(hmm).split_tokens(tokens)
