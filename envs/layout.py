"""How a composed process's joint tokens and states map back to its factors: one object per composition.

Every operator in :mod:`envs.compose` builds the joint (V, S, S) matrix and attaches a :class:`Layout`
to the result as ``hmm.layout`` (``None`` for a primitive process). Rewards, envs, probes and the
entropy formulas ask the layout, never a ``kind`` string, so a new composition is one new subclass.

- :class:`ProductLayout`: every step each factor emits; joint token = row-major index of the factor
  tokens (``token_shape``), joint state = row-major index into ``state_shape = (S_A, S_B, ...)``.
- :class:`InterleaveLayout`: factors take turns; ``state_shape = (n, S_A, S_B, ...)``, the first axis
  is the phase (whose turn it is).
- :class:`MixtureLayout`: each sequence comes from one component; states are the concatenated
  component blocks (at ``state_offsets``), ``weights`` the prior over components.
- :class:`GatedLayout`: A runs, B speaks once right after A's ``trigger``; ``state_shape = (2, S_A, S_B)``,
  the first axis says whose turn it is.

All but the product give each factor a disjoint block of global token ids: factor i's local token x
is global ``token_offsets[i] + x``. Layouts hold only their factors and a few ints, so they pickle
with the HMM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from envs._numerics import entropy

if TYPE_CHECKING:
    from envs.process import HMM


def _offsets(sizes) -> tuple[int, ...]:
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))


class Layout:
    """Base class: the factor-facing view of one composed process."""

    #: name of the composition, for display and ``hmm.meta`` (never switch on it: ask the layout)
    kind: ClassVar[str] = ""
    #: each global token is emitted by exactly one factor (all compositions but the product)
    disjoint: ClassVar[bool] = True
    #: each sequence comes from one factor only, so a factor's belief is conditional on that, and
    #: ``factor_beliefs`` carries one extra last entry: the posterior over factors (the mixture)
    exclusive: ClassVar[bool] = False
    #: leading axes of ``state_shape`` that are not factors (whose turn it is)
    phase_axes: ClassVar[int] = 0

    def __init__(self, factors):
        self.factors: tuple[HMM, ...] = tuple(factors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f.name for f in self.factors)})"

    @property
    def n_factors(self) -> int:
        return len(self.factors)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The joint state index is the row-major index into this shape."""
        raise NotImplementedError

    @property
    def n_states(self) -> int:
        return int(np.prod(self.state_shape))

    @property
    def vocab_size(self) -> int:
        return sum(f.vocab_size for f in self.factors)

    # -- tokens ------------------------------------------------------------------------------------

    @property
    def token_offsets(self) -> tuple[int, ...]:
        """Global id of each factor's local token 0 (disjoint layouts)."""
        self._need_disjoint("token_offsets")
        return _offsets([f.vocab_size for f in self.factors])

    @property
    def factor_tokens(self) -> list[list[int]]:
        """Per factor, the global token ids it owns, in local-id order (disjoint layouts)."""
        return [list(range(o, o + f.vocab_size)) for o, f in zip(self.token_offsets, self.factors)]

    @property
    def token_owner(self) -> np.ndarray:
        """(V,) int64: the factor that emits each global token (disjoint layouts)."""
        self._need_disjoint("token_owner")
        return np.repeat(np.arange(self.n_factors), [f.vocab_size for f in self.factors])

    def global_token(self, factor: int, local: int) -> int:
        """Global id of factor ``factor``'s local token ``local`` (disjoint layouts)."""
        return self.token_offsets[factor] + int(local)

    def split_tokens(self, tokens: np.ndarray) -> list[np.ndarray]:
        """Factor-local tokens, one int64 array per factor shaped like ``tokens``; -1 where it emitted nothing."""
        tokens = np.asarray(tokens)
        out = []
        for f, off in zip(self.factors, self.token_offsets):
            mine = (tokens >= off) & (tokens < off + f.vocab_size)  # tokens.shape
            out.append(np.where(mine, tokens - off, -1).astype(np.int64))
        return out

    def owns(self, factor: int) -> np.ndarray:
        """(V,) bool: which global tokens carry a token of ``factor``."""
        return self.split_tokens(np.arange(self.vocab_size))[factor] >= 0

    def _need_disjoint(self, what: str) -> None:
        if not self.disjoint:
            raise ValueError(
                f"{self.kind}: every joint token carries one token of every factor, so it has no {what}; "
                "use split_tokens"
            )

    # -- states and beliefs ------------------------------------------------------------------------

    def factor_states(self, states: np.ndarray) -> list[np.ndarray]:
        """Joint hidden states (...) -> per factor, its own state (...) int64 (-1: not in that factor)."""
        idx = np.unravel_index(np.asarray(states), self.state_shape)
        return [np.asarray(idx[self.phase_axes + i], dtype=np.int64) for i in range(self.n_factors)]

    def factor_beliefs(self, beliefs: np.ndarray) -> list[np.ndarray]:
        """Per-factor beliefs from joint beliefs (..., S), in factor order: the marginal over factor
        i's states (..., S_i). The joint belief is exactly their outer product (times the known phase
        for interleave / gated), since the factors evolve independently given the tokens."""
        beliefs = np.asarray(beliefs)
        lead = beliefs.ndim - 1
        joint = beliefs.reshape(beliefs.shape[:-1] + self.state_shape)  # (..., *state_shape)
        axes = range(lead, lead + len(self.state_shape))
        keep = [lead + self.phase_axes + i for i in range(self.n_factors)]
        return [joint.sum(axis=tuple(a for a in axes if a != k)) for k in keep]

    # -- closed-form entropies (None: no closed form, enumerate or sample the joint process) -------

    def conditional_entropies(self, length: int, **sub) -> np.ndarray | None:
        """``H(X_t | X_0..X_{t-1})`` for t < length from the factors' own, or None."""
        return None

    def entropy_rate(self, **sub) -> float | None:
        """Entropy rate from the factors' own, or None."""
        return None

    def meta(self) -> dict:
        """A plain (JSON-able) description, exposed as ``hmm.meta`` for display and serialisation."""
        return {
            "kind": self.kind,
            "state_shape": self.state_shape,
            "token_offsets": list(self.token_offsets),
            "factor_tokens": self.factor_tokens,
        }


class ProductLayout(Layout):
    """Independent factors, each emitting one token per step, combined into one joint token."""

    kind = "product"
    disjoint = False

    @property
    def state_shape(self):
        return tuple(f.n_states for f in self.factors)

    @property
    def token_shape(self) -> tuple[int, ...]:
        """The joint token is the row-major index into this shape."""
        return tuple(f.vocab_size for f in self.factors)

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.token_shape))

    def split_tokens(self, tokens):
        return [np.asarray(t, dtype=np.int64) for t in np.unravel_index(np.asarray(tokens), self.token_shape)]

    def conditional_entropies(self, length, **sub):
        return sum(f.conditional_entropies(length, **sub) for f in self.factors)

    def entropy_rate(self, **sub):
        return float(sum(f.entropy_rate(**sub) for f in self.factors))

    def meta(self):
        return {"kind": self.kind, "state_shape": self.state_shape, "token_shape": self.token_shape}


class InterleaveLayout(Layout):
    """Factors take turns emitting one token each, in factor order, starting with the first."""

    kind = "interleave"
    phase_axes = 1

    @property
    def state_shape(self):
        return (self.n_factors, *(f.n_states for f in self.factors))

    def conditional_entropies(self, length, **sub):
        # factor t % n speaks at position t, its own position t // n
        n = self.n_factors
        per = [f.conditional_entropies(-(-length // n), **sub) for f in self.factors]
        return np.array([per[t % n][t // n] for t in range(length)])

    def entropy_rate(self, **sub):
        return float(np.mean([f.entropy_rate(**sub) for f in self.factors]))


class MixtureLayout(Layout):
    """Each sequence comes from one component, drawn with ``weights``; block-diagonal joint states."""

    kind = "mixture"
    exclusive = True

    def __init__(self, components, weights):
        super().__init__(components)
        self.weights = np.array(weights, dtype=np.float64)  # (n,)
        self.weights.setflags(write=False)

    @property
    def state_shape(self):
        return (sum(f.n_states for f in self.factors),)

    @property
    def state_offsets(self) -> tuple[int, ...]:
        """First joint state of each component's block."""
        return _offsets([f.n_states for f in self.factors])

    def factor_states(self, states):
        states = np.asarray(states)
        out = []
        for f, off in zip(self.factors, self.state_offsets):
            inside = (states >= off) & (states < off + f.n_states)
            out.append(np.where(inside, states - off, -1).astype(np.int64))
        return out

    def factor_beliefs(self, beliefs):
        """Entry i is component i's belief conditional on the sequence coming from it (all zeros where
        the tokens rule component i out); one extra last entry holds the component posterior
        (..., n_components), so ``zip(hmm.factors, fb)`` still pairs up."""
        beliefs = np.asarray(beliefs)
        conds, posts = [], []
        for f, off in zip(self.factors, self.state_offsets):
            block = beliefs[..., off : off + f.n_states]  # (..., S_i)
            post = block.sum(axis=-1, keepdims=True)  # (..., 1)
            conds.append(np.divide(block, post, out=np.zeros_like(block), where=post > 0))
            posts.append(post[..., 0])
        return [*conds, np.stack(posts, axis=-1)]

    def conditional_entropies(self, length, **sub):
        # disjoint tokens: the first token reveals the component, which costs H(weights) once
        out = sum(w * f.conditional_entropies(length, **sub) for w, f in zip(self.weights, self.factors))
        if length:
            out[0] += entropy(self.weights)
        return out

    def entropy_rate(self, **sub):
        return float(sum(w * f.entropy_rate(**sub) for w, f in zip(self.weights, self.factors)))

    def meta(self):
        return {**super().meta(), "state_offsets": list(self.state_offsets), "weights": self.weights.tolist()}


class GatedLayout(Layout):
    """A runs; right after A emits its local token ``trigger``, B emits one token, then A resumes."""

    kind = "gated"
    phase_axes = 1

    def __init__(self, a, b, trigger: int):
        super().__init__((a, b))
        self.trigger = int(trigger)

    @property
    def state_shape(self):
        return (2, self.factors[0].n_states, self.factors[1].n_states)

    @property
    def trigger_token(self) -> int:
        """Global id of the token that hands the next step to B."""
        return self.global_token(0, self.trigger)

    def meta(self):
        return {**super().meta(), "trigger": self.trigger}


def max_wait(hmm: HMM, factor: int) -> int | None:
    """Most steps until ``factor`` of the composition ``hmm`` next emits a token, from any reachable
    state; None if it can stay silent for arbitrarily long (mixture, gated B).

    Read off the joint process's support graph rather than the layout's kind, so it is exact for
    every composition and every nesting (a trigger that A always emits does bound B's wait).
    """
    owned = hmm.layout.owns(factor)  # (V,)
    support = hmm.T > 0  # (V, S, S)
    step = support.any(axis=0)  # (S, S)
    reach = hmm.init > 0
    for _ in range(hmm.n_states):
        reach = reach | (reach[:, None] & step).any(axis=0)
    silent = support[~owned].any(axis=0) & reach[:, None]  # (S, S) moves that emit no owned token
    alive = reach.copy()  # states from which a silent path of k moves exists
    for k in range(hmm.n_states + 1):
        alive = (silent & alive[None, :]).any(axis=1)
        if not alive.any():
            return k + 1
    return None
