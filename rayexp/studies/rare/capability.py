"""What "RL found the rare capability" means, pure numpy (issue 22; research note 000 §1.5.3).

The capability is *predicting B where B speaks*: at a trigger, the next token is B's, and a model
that tracks B's hidden state can name it better than a guess. Seeking the trigger is a different
thing (a policy can trigger often and still guess), so it is measured apart (the trigger rate).

At each trigger position, from the exact belief, ``p`` = P(next token = b) over B's tokens, and a
policy's probabilities ``pi`` over its action tokens:

- ``accuracy``: sum over actions of pi(a) * p(a), the exact expected hit rate of the policy as it
  samples (what ``rare_next_token`` pays), and ``greedy``: the hit rate of its argmax;
- ``ceiling``: max_b p(b), the Bayes-optimal hit rate (no policy seeing the context does better);
- ``chance``: mean_b p(b), a uniform guess among B's tokens: knows that B speaks, not what it says.

:func:`normalised` turns these into ``(accuracy - chance) / (ceiling - chance)`` (ratio of means over
positions): 0 = a guess among B's tokens, 1 = the Bayes ceiling, below 0 = worse than guessing
(e.g. predicting tokens B never emits). A score against its ceiling and chance, not a raw rate,
so runs and exposures compare on one scale (docs/design.md §6 rule 7).

``capability`` mixes two things: how much of the policy's mass sits on B's tokens (``mass``), and
which of B's tokens it names. A policy that never looks at B, with some mass spread evenly over B's
tokens, scores above one with none there (0.6 of its mass: -0.39 against -0.98), so an excess over a
null that puts no mass on B is no evidence of tracking B. :func:`tracking` scores the policy's choice
among B's tokens alone: 0 for any such policy, whatever its mass, 1 at the ceiling.
"""

from __future__ import annotations

import numpy as np


def b_prediction(
    policy: np.ndarray, next_probs: np.ndarray, action_tokens: np.ndarray, b_tokens: np.ndarray
) -> dict[str, np.ndarray]:
    """Per trigger position (n,): exact ``accuracy``, ``greedy``, ``ceiling`` and ``chance``.

    ``policy`` (n, A) action probabilities, ``next_probs`` (n, V) exact next-token probabilities,
    ``action_tokens`` (A,) the token each action claims, ``b_tokens`` the rare factor's tokens."""
    pi = np.asarray(policy, dtype=np.float64)
    p = np.asarray(next_probs, dtype=np.float64)
    acts, b = np.asarray(action_tokens), np.asarray(b_tokens)
    if pi.ndim != 2 or p.ndim != 2 or len(pi) != len(p) or pi.shape[1] != len(acts):
        raise ValueError(f"policy (n, A={len(acts)}) and next_probs (n, V) must align; got {pi.shape} and {p.shape}")
    hit = p[:, acts]  # (n, A) P(next token = the token action a claims)
    greedy_hit = np.take_along_axis(hit, np.argmax(pi, axis=1)[:, None], axis=1)[:, 0]
    return {
        "accuracy": np.einsum("na,na->n", pi, hit),
        "greedy": greedy_hit,
        "ceiling": p[:, b].max(axis=1),
        "chance": p[:, b].mean(axis=1),
        "mass": pi[:, np.isin(acts, b)].sum(axis=1),  # on the actions that claim one of B's tokens
    }


def tracking(accuracy, mass, ceiling, chance, eps: float = 1e-9) -> float:
    """The policy's choice among B's tokens, as :func:`normalised` scores a whole policy: its accuracy
    given that it names one of B's tokens, against the ceiling and chance, each position weighted by the
    mass the policy puts on B's tokens there (ratios of sums, so a position it hardly sends to B counts
    little): ``(sum accuracy / sum mass - chance_m) / (ceiling_m - chance_m)`` with ``x_m = sum(mass * x) /
    sum(mass)``. Exactly 0 for a policy spreading any mass evenly over B's tokens; NaN where it puts none
    there or the ceiling does not rise above chance."""
    acc, m, ceil, ch = (np.asarray(x, dtype=np.float64) for x in (accuracy, mass, ceiling, chance))
    total = float(m.sum())
    if not total > eps:
        return float("nan")
    return normalised(acc.sum() / total, (m * ceil).sum() / total, (m * ch).sum() / total, eps)


def normalised(accuracy, ceiling, chance, eps: float = 1e-9) -> float:
    """``(mean accuracy - mean chance) / (mean ceiling - mean chance)``; NaN when the ceiling does not
    rise above chance (no position where B's state is knowable: nothing to be skilled at)."""
    acc, ceil, ch = (float(np.mean(x)) if np.size(x) else float("nan") for x in (accuracy, ceiling, chance))
    gap = ceil - ch
    return (acc - ch) / gap if np.isfinite(gap) and gap > eps else float("nan")
