"""The policy a transformer defines: its next-token distribution restricted to the action tokens.

One definition for every analysis that scores a model as a policy (exact returns, policy KL,
steering, rollouts, the LLC's RL losses), so they all read the same thing PPO trained: the LM
head's logits at the action tokens, softmaxed over those alone, in float64. torch is imported inside
the functions so that modules naming these stay importable by the torch-free driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def model_device(model):
    """The device of ``model``'s parameters: where its inputs are built and its forward pass runs."""
    return next(model.parameters()).device


def action_logits(model, x, last, action_tokens):
    """(B, A) logits at each window's last real position ``last`` (B,), action tokens only (with grad);
    ``x``, ``last`` and ``action_tokens`` on the model's device."""
    import torch

    logits = model(x)
    logits = logits[torch.arange(len(last), device=logits.device), last]  # (B, V)
    return logits[:, action_tokens]  # (B, A)


def action_probs(
    model, tokens: np.ndarray, action_tokens: Sequence[int], log: bool = False, forward: Callable | None = None
) -> np.ndarray:
    """(N, L, A) float64 probabilities (``log``: log-probabilities) of the action tokens after every
    prefix of ``tokens`` (N, L); ``forward`` replaces ``model``'s own call (e.g. with steering hooks)."""
    import torch

    device = model_device(model)
    with torch.no_grad():
        x = torch.as_tensor(tokens, dtype=torch.long, device=device)
        idx = torch.as_tensor(np.asarray(action_tokens), device=device)
        logits = (forward or model)(x)[..., idx].cpu().double()  # (N, L, A), float64 on the CPU
        return (torch.log_softmax(logits, -1) if log else torch.softmax(logits, -1)).numpy()


def window_probs(model, obs: np.ndarray, pad: int, action_tokens: Sequence[int]) -> np.ndarray:
    """(N, A) action probabilities at windows ``obs`` (N, K) right-padded with ``pad`` (an env's observations)."""
    import torch

    device = model_device(model)
    n = (obs != pad).sum(axis=1)  # (N,) real lengths, >= 1 after reset
    x = torch.as_tensor(np.where(obs == pad, 0, obs), dtype=torch.long, device=device)  # (N, K)
    last = torch.as_tensor(n - 1, device=device)
    with torch.no_grad():
        logits = action_logits(model, x, last, torch.as_tensor(np.asarray(action_tokens), device=device))
        return torch.softmax(logits.cpu().double(), -1).numpy()
