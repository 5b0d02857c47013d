"""The loss whose LLC is taken: one loss for every checkpoint of every trial, set by the weights alone.

**self-KL on the pretraining stream.** ``n_seq`` sequences of the trial's pretraining process,
sampled once from the analysis seed, are the data; at a checkpoint w* the loss of weights w is

    L(w) = mean over sequences and positions of KL( p_w*(. | x_<t) || p_w(. | x_<t) ),

the KL from the checkpoint's own full next-token distribution (all vocabulary, every position).

Why this one (issue 22; the loss of the previous version depended on the task):

- It depends on the weights and on the pretraining process only, never on the task: the reward,
  the action tokens and the rollouts do not enter. The two controls of one seed share their
  pretraining process and seed, so the same weights get the same loss, and the same estimate, in
  either trial; curves of different tasks are read off the same kind of landscape.
- Every checkpoint sits exactly at its minimum (L(w*) = 0), as the LLC's local posterior assumes.
  The next-token cross-entropy would not do for PPO checkpoints: RL moves the weights away from its
  minimum, so SGLD walks downhill and the "LLC" comes out negative (it did, for the old
  action-likelihood loss), measuring a distance to somewhere else.
- Where the model fits the stream (a well-pretrained checkpoint) it is the cross-entropy's own
  excess: CE(w) - CE(w*) = KL(truth || p_w) - KL(truth || p_w*) ~ KL(p_w* || p_w) when p_w* ~ truth,
  the realisable case in which the learning coefficient is defined. So the pretraining curve's late
  checkpoints read as the usual LLC, and iteration 0 of RL equals the final pretraining checkpoint.
- The whole next-token distribution, not only the action tokens, so a policy's change anywhere in
  the network's output counts, and the RL task's action set cannot change the number.

:func:`next_token_loss` (the pretraining loss) stays for training the stand-in models of the tests.
torch is imported inside functions.
"""

from __future__ import annotations

import numpy as np


def _split(n: int, batch_size: int) -> list[slice]:
    """Slices of ``batch_size`` over ``n`` rows; a last, smaller batch only if nothing else is left."""
    if n < batch_size:
        return [slice(0, n)]
    return [slice(i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]


def stream_batches(process, n_seq: int, length: int, batch_size: int, seed: int) -> list:
    """Fixed batches (B, length) of token sequences of ``process``, sampled once from ``seed``."""
    import torch

    tokens, _ = process.sample(n_seq, length, np.random.default_rng(seed))  # (N, length)
    t = torch.as_tensor(np.ascontiguousarray(tokens, dtype=np.int64))
    return [t[s] for s in _split(len(t), batch_size)]


def next_token_batches(process, n_seq: int, n_ctx: int, batch_size: int, seed: int) -> list:
    """Fixed batches (B, n_ctx + 1) for :func:`next_token_loss`: the model reads the first n_ctx."""
    return stream_batches(process, n_seq, n_ctx + 1, batch_size, seed)


def next_token_loss(model, batch):
    """Mean next-token cross-entropy of ``model`` on ``batch`` (B, T + 1): position t predicts token t + 1."""
    import torch.nn.functional as F

    logits = model(batch[:, :-1])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def self_kl_batches(reference, token_batches: list) -> list[tuple]:
    """``(tokens (B, T), log p_ref (B, T, V))`` per batch: the reference's own next-token
    log-probabilities at every position, computed once (float64 softmax, stored as float32)."""
    import torch

    out = []
    with torch.no_grad():
        for x in token_batches:
            out.append((x, torch.log_softmax(reference(x).double(), -1).float()))
    return out


def self_kl(model, batch):
    """Mean over sequences and positions of KL(p_ref || p_model); 0 at the reference's weights."""
    import torch

    x, ref_logp = batch
    logp = torch.log_softmax(model(x), -1)  # (B, T, V)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
