"""The losses whose LLC is taken: fixed data, so every checkpoint of a run is measured on the same loss.

Pretraining checkpoints: next-token cross-entropy (the pretraining loss) on ``n_seq`` sequences of the
pretraining process, sampled once (seeded) and split into fixed batches.

RL checkpoints: the LLC needs a loss with data; RL has environment interaction instead. The choice
here is a fixed rollout buffer (the trial's stored episodes of the final policy) and
:func:`action_nll`, the policy's negative log-likelihood of the actions taken in it: one dataset
for every RL checkpoint (iteration 0 = the pretrained model), so the LLC curve over RL iterations
is read off one loss landscape, as the pretraining curve is; and the final policy is near a
stationary point of it, since the expected gradient of log pi(a|s) under a ~ pi is zero. PPO's own
loss would add value error, but the value head is not part of the stored checkpoints (they hold the
transformer only), so it is unavailable. The alternative, :func:`self_distill_kl`, is the KL from a
checkpoint's own (frozen) action distribution on the same windows: every checkpoint sits exactly at
its minimum (KL 0), at the price of a different loss per checkpoint.

The policy reads the logits at the last real position of a right-padded window, restricted to the
env's action tokens (rayexp.policy). torch is imported inside functions.
"""

from __future__ import annotations

import numpy as np

from rayexp.policy import action_logits


def _split(n: int, batch_size: int) -> list[slice]:
    """Slices of ``batch_size`` over ``n`` rows; a last, smaller batch only if nothing else is left."""
    if n < batch_size:
        return [slice(0, n)]
    return [slice(i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]


def next_token_batches(process, n_seq: int, n_ctx: int, batch_size: int, seed: int) -> list:
    """Fixed batches (B, n_ctx + 1) of sequences of ``process``, seeded; the model reads the first n_ctx."""
    import torch

    tokens, _ = process.sample(n_seq, n_ctx + 1, np.random.default_rng(seed))  # (N, n_ctx + 1)
    t = torch.as_tensor(np.ascontiguousarray(tokens, dtype=np.int64))
    return [t[s] for s in _split(len(t), batch_size)]


def next_token_loss(model, batch):
    """Mean next-token cross-entropy of ``model`` on ``batch`` (B, T + 1): position t predicts token t + 1."""
    import torch.nn.functional as F

    logits = model(batch[:, :-1])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def rollout_windows(rollouts: dict, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every step of stored episodes as one row: windows (M, K) with pad -> 0, the last real
    position (M,), and the action index taken (M,). Rows without a real token are dropped."""
    obs = np.asarray(rollouts["obs"])  # (N, L, K)
    actions = np.asarray(rollouts["actions"])  # (N, L)
    obs, actions = obs.reshape(-1, obs.shape[-1]), actions.reshape(-1)  # (M, K), (M,)
    n = (obs != pad).sum(axis=1)  # (M,) real lengths
    keep = n > 0
    return np.where(obs == pad, 0, obs)[keep], (n - 1)[keep], actions[keep].astype(np.int64)


def action_batches(rollouts: dict, pad: int, action_tokens, batch_size: int) -> list[tuple]:
    """Fixed batches (windows (B, K), last (B,), action (B,), action tokens (A,)) of a rollout buffer."""
    import torch

    x, last, a = rollout_windows(rollouts, pad)
    x, last, a = (torch.as_tensor(v, dtype=torch.long) for v in (x, last, a))
    tok = torch.as_tensor(np.asarray(action_tokens), dtype=torch.long)
    return [(x[s], last[s], a[s], tok) for s in _split(len(x), batch_size)]


def action_nll(model, batch):
    """Mean negative log-likelihood of the taken actions under ``model``'s policy."""
    import torch.nn.functional as F

    x, last, a, tok = batch
    return F.cross_entropy(action_logits(model, x, last, tok), a)


def distill_batches(reference, batches: list[tuple]) -> list[tuple]:
    """``action_batches`` with the reference policy's log-probabilities appended (the distillation targets)."""
    import torch

    out = []
    with torch.no_grad():
        for x, last, a, tok in batches:
            logp = torch.log_softmax(action_logits(reference, x, last, tok).double(), -1).float()  # (B, A)
            out.append((x, last, a, tok, logp))
    return out


def self_distill_kl(model, batch):
    """Mean KL(reference policy || ``model``'s policy) over the batch's windows; 0 at the reference."""
    import torch

    x, last, _, tok, ref_logp = batch
    logp = torch.log_softmax(action_logits(model, x, last, tok), -1)  # (B, A)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
