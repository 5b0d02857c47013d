"""How much of a policy is interaction between two factors: a 2x2 resampling design.

Write the policy's centred log-probabilities at a context as ``f(a, b)``, where ``a`` and ``b`` are
factor A's and factor B's token histories, and decompose (two-way ANOVA over independent factors)
``f = mu + g(a) + h(b) + i(a, b)`` with ``E_a i = E_b i = 0``. A policy that adds evidence from
each factor (``log pi = g(a) + h(b)``, any reweighting of two single-factor predictions) has
``i = 0``; a policy that needs both at once, like ``(a + b) mod m``, does not.

Design: for context (a, b) of sequence i, draw a' from another sequence j and b' from another
sequence k, independently, at the same position (for an interleave every factor's positions are
fixed by the phase, so a history transplants onto another sequence's slots exactly), rebuild the
sequences (a, b'), (a', b), (a', b') and read f at the last position. With a, a', b, b'
independent (the factors are independent processes),

    D = f(a, b) - f(a, b') - f(a', b) + f(a', b') = i(a,b) - i(a,b') - i(a',b) + i(a',b')
    E |D|^2 / 4 = Var(i),    E |f(a, b) - f(a', b')|^2 / 2 = Var(f),

so eta = (E|D|^2 / 4) / (E|f(a,b) - f(a',b')|^2 / 2) is the interaction's share of the variance,
0 for an additive policy, 1 for a pure interaction. Both cells of each difference sit at the same
position, so variance from the position itself (the interleave's phase) never enters.
Norms are over the action axis; the estimator is unbiased for numerator and denominator.
"""

from __future__ import annotations

import numpy as np


def centred(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities up to their normaliser, centred over the last (action) axis."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits - logits.mean(axis=-1, keepdims=True)


def centred_log(p: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """Centred log of probabilities (..., A), floored so impossible actions stay finite."""
    return centred(np.log(np.maximum(np.asarray(p, dtype=np.float64), floor)))


def partners(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two independent draws (n,) of *another* sequence for each sequence: sources of a' and of b'."""
    if n < 2:
        raise ValueError(f"the 2x2 design needs at least 2 sequences; got {n}")
    return (np.arange(n) + rng.integers(1, n, size=n)) % n, (np.arange(n) + rng.integers(1, n, size=n)) % n


def swap_histories(layout, tokens: np.ndarray, a_from: np.ndarray, b_from: np.ndarray, factors=(0, 1)) -> np.ndarray:
    """(N, L) sequences whose factor A tokens come from rows ``a_from`` and factor B tokens from rows
    ``b_from`` (other factors keep row i's own); ``layout`` is the composition's :mod:`envs.layout`.

    Needs a composition in which every factor's positions are the same in every sequence (product,
    interleave); ValueError otherwise (mixture, gated: a history has no fixed slots to move into).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    fa, fb = factors
    split = layout.split_tokens(tokens)  # per factor (N, L), -1 where silent
    parts = list(split)
    parts[fa], parts[fb] = split[fa][a_from], split[fb][b_from]
    if not layout.disjoint:  # product: every position carries one token of every factor
        return np.ravel_multi_index(tuple(parts), layout.token_shape).astype(np.int64)
    slots = [s >= 0 for s in split]
    if any((m != m[:1]).any() for m in slots):
        raise ValueError(
            f"{layout.kind}: the factors' positions differ between sequences, so a factor's history cannot be "
            "moved onto another sequence; the 2x2 design needs product or interleave"
        )
    out = tokens.copy()
    for f in (fa, fb):
        mine = slots[f][0]  # (L,) the positions factor f emits at, in every sequence
        out[:, mine] = parts[f][:, mine] + layout.token_offsets[f]
    return out


def interaction_terms(
    f_ab: np.ndarray, f_ab2: np.ndarray, f_a2b: np.ndarray, f_a2b2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-context ``|D|^2 / 4`` and ``|f(a,b) - f(a',b')|^2 / 2`` (...,) from the four cells (..., A)."""
    D = f_ab - f_ab2 - f_a2b + f_a2b2  # (..., A)
    return (D**2).sum(axis=-1) / 4.0, ((f_ab - f_a2b2) ** 2).sum(axis=-1) / 2.0


def interaction_share(f_ab, f_ab2, f_a2b, f_a2b2) -> float:
    """eta: the interaction's share of the policy's variance (see the module docstring); NaN if f is constant."""
    num, den = interaction_terms(f_ab, f_ab2, f_a2b, f_a2b2)
    total = float(den.mean())
    return float(num.mean()) / total if total > 0 else float("nan")
