"""RLlib policy module around the pretrained transformer (RLlib new API stack).

``TransformerPolicyModule`` wraps :class:`models.transformer.Transformer`, loaded from the
checkpoint path in its ``model_config``; it never redefines the model. The policy is the LM head
at the last real position restricted to ``action_tokens``, so before any RL step the policy *is*
the pretrained predictive distribution over those tokens. A new value head reads the same final
residual stream.

Observations are token windows right-padded with ``pad_token`` (= d_vocab), so with causal
attention the output at position n-1 depends only on the n real tokens. Two consequences make
the module cheap:

- Learning: when episodes are as long as the context, the observations of one episode are the
  prefixes of one sequence. :func:`prefix_heads` finds, exactly, the rows that are not a prefix
  of another row; the trunk runs once per such row and every row reads its output from its head.
  One causal pass per trajectory segment instead of one per env step.
- Acting: the trunk runs only over the longest real prefix in the batch, in inference mode.

model_config keys: ``checkpoint`` (path, required), ``transformer_config`` (its TransformerConfig
as a dict: lets env runners on nodes without the file build the model and receive the Learner's
weights), ``action_tokens`` (token ids, default all),
``pad_token`` (default d_vocab), ``value_hidden`` (hidden width of the value MLP, 0 = linear),
``value_grad_to_trunk`` (default False: the value loss does not move the transformer, so weight
diffs are the policy's alone), ``kl_to_pretrained`` (bool: also output the frozen pretrained
policy's logits under :data:`PRETRAINED_LOGITS` for a KL penalty in the learner).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from models.checkpoint import load_checkpoint, save_checkpoint
from models.transformer import Transformer, TransformerConfig

PRETRAINED_LOGITS = "pretrained_action_logits"


def prefix_heads(obs: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that are not a strict prefix of another row ("heads") and, per row, the head that covers it.

    ``obs`` (B, K) right-padded with a pad id larger than every token, ``n`` (B,) real lengths.
    Returns ``heads`` (H,) row indices and ``head_of`` (B,) indices into ``heads`` such that
    ``obs[heads[head_of[i]], :n[i]] == obs[i, :n[i]]``. Exact and independent of row order.
    """
    B, K = obs.shape
    order = torch.arange(B, device=obs.device)
    # Lexicographic sort by stable argsorts from the last column to the first. Pad sorts last, so
    # every sequence comes after all of its extensions, and rows sharing a prefix are contiguous.
    for j in range(K - 1, -1, -1):
        order = order[torch.argsort(obs[order, j], stable=True)]
    s, ns = obs[order], n[order]  # (B, K), (B,)
    agree = s[1:] == s[:-1]  # (B-1, K)
    compared = torch.arange(K, device=obs.device) < ns[1:, None]  # (B-1, K)
    # A row whose first n tokens equal the previous row's is covered; the previous row is then at
    # least as long, so coverage chains transitively back to the first row of the run.
    covered = (agree | ~compared).all(-1)  # (B-1,)
    is_head = torch.cat([covered.new_ones(1), ~covered])  # (B,)
    head_of = torch.empty_like(order)
    head_of[order] = torch.cumsum(is_head, 0) - 1
    return order[is_head], head_of


class TransformerPolicyModule(TorchRLModule, ValueFunctionAPI):
    """Pretrained transformer as a PPO policy: logits over ``action_tokens``, value head on the trunk."""

    def setup(self):
        cfg = self.model_config
        if self.inference_only and "transformer_config" in cfg and not Path(cfg["checkpoint"]).exists():
            # An env runner on a node without the file: RLlib syncs the Learner's weights into
            # every env runner before the first sample, so only the architecture is needed here.
            self.transformer = Transformer(TransformerConfig(**cfg["transformer_config"])).eval()
        else:
            self.transformer, _ = load_checkpoint(cfg["checkpoint"])
        V, D = self.transformer.cfg.d_vocab, self.transformer.cfg.d_model
        self.pad_token = int(cfg.get("pad_token", V))
        action_tokens = list(cfg.get("action_tokens") or range(V))
        if not all(0 <= t < V for t in action_tokens):
            raise ValueError(f"action_tokens {action_tokens} not in the model's vocabulary 0..{V - 1}")
        if self.action_space is not None and getattr(self.action_space, "n", len(action_tokens)) != len(action_tokens):
            raise ValueError(f"action space {self.action_space} does not match {len(action_tokens)} action_tokens")
        self.register_buffer("action_tokens", torch.tensor(action_tokens, dtype=torch.long), persistent=False)
        hidden = int(cfg.get("value_hidden", 64))
        self.value_head = (
            nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if hidden else nn.Linear(D, 1)
        )
        self.value_grad_to_trunk = bool(cfg.get("value_grad_to_trunk", False))
        # The frozen reference sits in a tuple so it is neither a parameter nor in the state that
        # RLlib syncs to env runners and checkpoints.
        self._reference: tuple[Transformer, ...] = ()
        if cfg.get("kl_to_pretrained", False) and not self.inference_only:
            ref, _ = load_checkpoint(cfg["checkpoint"])
            self._reference = (ref.requires_grad_(False).eval(),)

    def _tokens(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = obs.long()  # (B, K)
        n = (obs != self.pad_token).sum(-1).clamp(min=1)  # (B,) an empty window reads as token 0
        return obs, n

    def _last_resid(
        self, model: Transformer, obs: torch.Tensor, dedup: bool, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final residual stream at each row's last real position (B, D); zeros where ``keep`` is False."""
        if keep is not None and not bool(keep.all()):
            rows = keep.nonzero().squeeze(-1)  # (B',)
            sub = self._last_resid(model, obs[rows], dedup)  # (B', D)
            return sub.new_zeros(obs.shape[0], sub.shape[-1]).index_copy(0, rows, sub)  # (B, D)
        obs, n = self._tokens(obs)
        L = int(n.max())
        if dedup:
            heads, head_of = prefix_heads(obs, n)  # (H,), (B,)
        else:
            heads = head_of = torch.arange(obs.shape[0], device=obs.device)  # (B,)
        # Positions past n never influence position n-1 (causal), so pad can be any valid token.
        tokens = obs[heads, :L].masked_fill(obs[heads, :L] == self.pad_token, 0)  # (H, L)
        resid = model.trunk(tokens)  # (H, L, D)
        return resid[head_of, n - 1]  # (B, D)

    @staticmethod
    def _rows_needed(batch: dict[str, Any]) -> torch.Tensor | None:
        """False for the observation after a terminal step, whose outputs RLlib masks or gates to 0.

        RLlib appends each episode's last observation (loss-masked) for bootstrapping. After a
        termination that observation is the window slid past the sequence, a prefix of nothing
        else in the batch, so computing it would double the learner's causal passes for nothing.
        """
        mask, term = batch.get(Columns.LOSS_MASK), batch.get(Columns.TERMINATEDS)
        if mask is None or term is None or mask.dim() != 1:
            return None
        after_terminal = torch.zeros_like(mask, dtype=torch.bool)  # (B,)
        after_terminal[1:] = term[:-1].bool() & ~mask[1:].bool()
        return ~after_terminal

    def _policy(self, resid: torch.Tensor) -> torch.Tensor:
        return self.transformer.unembed(resid)[:, self.action_tokens]  # (B, A)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        with torch.inference_mode():
            resid = self._last_resid(self.transformer, batch[Columns.OBS], dedup=False)  # (B, D)
            return {Columns.ACTION_DIST_INPUTS: self._policy(resid)}

    # The wrapped model has no dropout or batch norm, so RLlib's eval()/train() toggling around
    # every acting call (~3 ms of module traversal each) changes nothing and is skipped.
    def forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward_inference(batch, **kwargs)

    def forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward_exploration(batch, **kwargs)

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward(batch, **kwargs)

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward(batch, **kwargs)

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        keep = self._rows_needed(batch)
        resid = self._last_resid(self.transformer, batch[Columns.OBS], dedup=True, keep=keep)  # (B, D)
        out = {Columns.ACTION_DIST_INPUTS: self._policy(resid), Columns.EMBEDDINGS: resid}
        if self._reference:
            ref = self._reference[0].to(resid.device)
            with torch.no_grad():
                ref_resid = self._last_resid(ref, batch[Columns.OBS], dedup=True, keep=keep)  # (B, D)
                out[PRETRAINED_LOGITS] = ref.unembed(ref_resid)[:, self.action_tokens]  # (B, A)
        return out

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        keep = self._rows_needed(batch)
        if embeddings is None:
            with torch.set_grad_enabled(self.value_grad_to_trunk and torch.is_grad_enabled()):
                embeddings = self._last_resid(self.transformer, batch[Columns.OBS], dedup=True, keep=keep)  # (B, D)
        if not self.value_grad_to_trunk:
            embeddings = embeddings.detach()
        values = self.value_head(embeddings).squeeze(-1)  # (B,)
        return values if keep is None else values.masked_fill(~keep, 0.0)  # (B,)


def export_checkpoint(module: TransformerPolicyModule, path, extra: dict | None = None) -> None:
    """Write the module's transformer in the :mod:`models.checkpoint` format (value head dropped)."""
    meta = {"source": "rllib", "action_tokens": module.action_tokens.tolist()}
    save_checkpoint(path, module.transformer, extra=meta | (extra or {}))
