"""The LLM literature's "does RL only reweight?" proxies, computed exactly from beliefs.

Yue et al. 2025 read "RL only reweights" off the base model's pass@k overtaking the RL model's at
large k; Invisible Leash (2025) off support retained and discovered. In an LLM the right answer is
unknown; here P(target = a | context) is exact, so each proxy is an exact expectation and can be set
against the verdict (docs/design.md §4.3). All inputs are per context: policies (N, L, A) and the
exact target distribution ``P`` (N, L, A); outputs are per sequence (N,), averaged over steps.
"""

from __future__ import annotations

import numpy as np

#: a policy's support: actions it gives at least this probability
SUPPORT_EPS = 1e-3
PASS_K = (1, 4, 16, 64, 256, 1024)


def pass_at_k(pi: np.ndarray, P: np.ndarray, k: int) -> np.ndarray:
    """(N,) exact P(at least one of k independent samples from ``pi`` hits the target), per step:
    sum_a P(a) (1 - (1 - pi(a))^k). pass@1 is the expected reward of a 0/1 reward."""
    miss = (1.0 - np.clip(pi, 0.0, 1.0)) ** k
    return (np.asarray(P, dtype=np.float64) * (1.0 - miss)).sum(-1).mean(-1)


def uniform_pass_at_k(P: np.ndarray, k: int) -> np.ndarray:
    """(N,) pass@k of uniform guessing: the floor that a tiny action set puts under every pass@k."""
    A = P.shape[-1]
    return pass_at_k(np.full(P.shape, 1.0 / A), P, k)


def pre_prob_of_post_choice(pi_pre: np.ndarray, pi_post: np.ndarray) -> np.ndarray:
    """(N,) the probability the pretrained policy gives to the post-RL policy's greedy choice."""
    choice = np.argmax(pi_post, -1)[..., None]  # (N, L, 1)
    return np.take_along_axis(pi_pre, choice, -1)[..., 0].mean(-1)


def support_discovered(pi_pre: np.ndarray, pi_post: np.ndarray, eps: float = SUPPORT_EPS) -> np.ndarray:
    """(N,) post-RL probability mass on actions the pretrained policy gave less than ``eps``."""
    return (pi_post * (pi_pre < eps)).sum(-1).mean(-1)


def support_lost(pi_pre: np.ndarray, pi_post: np.ndarray, eps: float = SUPPORT_EPS) -> np.ndarray:
    """(N,) pretrained probability mass on actions the post-RL policy gives less than ``eps``."""
    return (pi_pre * (pi_post < eps)).sum(-1).mean(-1)


def support_metrics(pi_pre: np.ndarray, pi_post: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Every proxy as a mean over sequences: pass@k of pre, post and uniform guessing for k in
    :data:`PASS_K`, the pre probability of post's choice, support discovered and lost."""
    out = {}
    for k in PASS_K:
        out[f"pass_at_{k}/pre"] = float(pass_at_k(pi_pre, P, k).mean())
        out[f"pass_at_{k}/post"] = float(pass_at_k(pi_post, P, k).mean())
        out[f"pass_at_{k}/uniform"] = float(uniform_pass_at_k(P, k).mean())
    out["pre_prob_of_post_choice"] = float(pre_prob_of_post_choice(pi_pre, pi_post).mean())
    out["discovered"] = float(support_discovered(pi_pre, pi_post).mean())
    out["lost"] = float(support_lost(pi_pre, pi_post).mean())
    return out
