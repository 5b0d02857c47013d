"""The rare-capability study's bookkeeping (research note 000 §1.5.3), pure numpy.

A gated process: A runs, and right after A's trigger token the rare factor B emits one token. In
the active env the agent can emit the trigger itself. These functions say, for token arrays
(N, L), where B's belief is worth reading and how often a policy sought B:

- :func:`rare_positions`: positions where B has emitted at least once (its belief is no
  longer its prior), split into those right *before* a trigger (x_{t+1} is the trigger: would the
  model know what B will say before asking?) and those *at* a trigger (x_t is the trigger: B speaks
  next);
- :func:`trigger_rate`: the share of a policy's actions that were the trigger.
"""

from __future__ import annotations

import numpy as np


def rare_positions(tokens: np.ndarray, trigger: int, b_tokens: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(N, L) tokens -> {"seen": (seq idx, pos idx), "before": (...), "at": (...)}: positions t where B
    has emitted at or before t (``seen``), and of those, where x_{t+1} is the trigger (``before``) or
    x_t is (``at``)."""
    tokens = np.asarray(tokens)
    is_b = np.isin(tokens, b_tokens)  # (N, L)
    seen = np.cumsum(is_b, axis=1) > 0  # B emitted at or before t: the belief after x_t is no longer B's prior
    nxt = np.zeros_like(seen)
    nxt[:, :-1] = tokens[:, 1:] == trigger
    return {
        "seen": np.nonzero(seen),
        "before": np.nonzero(seen & nxt),
        "at": np.nonzero(seen & (tokens == trigger)),
    }


def trigger_rate(actions: np.ndarray, action_tokens: np.ndarray, trigger: int) -> float:
    """Share of actions (indices into ``action_tokens``) that emitted the trigger."""
    return float(np.mean(np.asarray(action_tokens)[np.asarray(actions)] == trigger))
