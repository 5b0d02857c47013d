"""A causal decoder-only transformer with TransformerLens-style hook points.

Pre-LayerNorm blocks, learned positional embeddings, fused QKV projection and causal attention
(numba kernels on CPU, see ``models/_attention.py``; ``F.scaled_dot_product_attention`` elsewhere).
Hook names follow TransformerLens (``hook_embed``, ``blocks.{i}.hook_resid_pre/mid/post``, ``ln_final.hook_normalized``) so
probes and analyses speak the field's vocabulary, but hooks are plain dictionary look-ups on
the forward path rather than modules: an un-hooked forward pays nothing for them.

Shapes: B batch, T positions, D d_model, H heads, E d_head, F d_mlp, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models._attention import causal_attention
from models.config import TransformerConfig

HookFn = Callable[[torch.Tensor], torch.Tensor | None]


def hook_names_for(cfg: TransformerConfig) -> list[str]:
    """All hook names of a model with this config, in forward order."""
    names = ["hook_embed"]
    for i in range(cfg.n_layers):
        names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_mid", f"blocks.{i}.hook_resid_post"]
    return names + ["ln_final.hook_normalized"]


def _norm(cfg: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model) if cfg.ln else nn.Identity()


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.n_heads * cfg.d_head)
        self.out = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = causal_attention(self.qkv(x), self.n_heads, self.d_head)  # (B, T, 3*H*E) -> (B, T, H*E)
        return self.out(z)  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = F.relu if cfg.act == "relu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))  # (B, T, F) -> (B, T, D)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1, self.attn = _norm(cfg), Attention(cfg)
        self.ln2, self.mlp = _norm(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, D)
        return x + self.mlp(self.ln2(x))  # (B, T, D)


class Transformer(nn.Module):
    """``forward(tokens (B, T) long) -> logits (B, T, V)``; position t predicts token t + 1.

    ``seed`` makes the initialisation independent of the global RNG (for random-init controls
    that must match a trained model's starting point); without it the global RNG is used.
    """

    def __init__(self, cfg: TransformerConfig, seed: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = _norm(cfg)
        self.unembed_proj = nn.Linear(cfg.d_model, cfg.d_vocab)
        self.hook_names = hook_names_for(cfg)
        self._init_weights(None if seed is None else torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def _init_weights(self, gen: torch.Generator | None) -> None:
        # GPT-2 init: the projections that write into the residual stream are scaled down by
        # sqrt(2 * n_layers) so the stream's variance does not grow with depth.
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                std = resid_std if name.endswith(("attn.out", "mlp.fc_out")) else 0.02
                m.weight.normal_(0.0, std, generator=gen)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()  # LayerNorms keep their default weight 1, bias 0

    def _run(
        self,
        tokens: torch.Tensor,
        cache: dict[str, torch.Tensor] | None = None,
        hooks: dict[str, HookFn] | None = None,
    ) -> torch.Tensor:
        """Final normed residual stream (B, T, D); records ``cache`` entries and applies ``hooks`` by name."""
        T = tokens.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T} exceeds n_ctx={self.cfg.n_ctx}")
        if cache is None and not hooks:  # fast path: no dictionary look-ups
            x = self.embed(tokens) + self.pos_embed.weight[:T]  # (B, T, D)
            for block in self.blocks:
                x = block(x)  # (B, T, D)
            return self.ln_final(x)  # (B, T, D)

        def hook(name: str, x: torch.Tensor) -> torch.Tensor:
            if hooks and name in hooks:
                y = hooks[name](x)
                x = x if y is None else y
            if cache is not None and name in cache:
                cache[name] = x
            return x

        x = hook("hook_embed", self.embed(tokens))  # (B, T, D)
        x = x + self.pos_embed.weight[:T]  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = hook(f"blocks.{i}.hook_resid_pre", x)  # (B, T, D)
            x = hook(f"blocks.{i}.hook_resid_mid", x + block.attn(block.ln1(x)))  # (B, T, D)
            x = hook(f"blocks.{i}.hook_resid_post", x + block.mlp(block.ln2(x)))  # (B, T, D)
        return hook("ln_final.hook_normalized", self.ln_final(x))  # (B, T, D)

    def trunk(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normed residual stream (B, T, D), the input of :meth:`unembed` (and of value heads)."""
        return self._run(tokens)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.unembed_proj(resid)  # (..., D) -> (..., V)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.unembed(self._run(tokens))  # (B, T, V)

    def _check_names(self, names) -> list[str]:
        names = list(self.hook_names if names is None else names)
        unknown = [n for n in names if n not in self.hook_names]
        if unknown:
            raise ValueError(f"unknown hook names {unknown}; valid: {self.hook_names}")
        return names

    def run_with_cache(
        self, tokens: torch.Tensor, names: list[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits (B, T, V), {name: activation (B, T, D)})`` from one forward pass.

        ``names=None`` caches every hook. Activations are not detached: wrap the call in
        ``torch.no_grad()`` when only reading them.
        """
        cache: dict[str, torch.Tensor] = dict.fromkeys(self._check_names(names))
        logits = self.unembed(self._run(tokens, cache=cache))  # (B, T, V)
        return logits, cache

    def run_with_hooks(
        self, tokens: torch.Tensor, hooks: dict[str, HookFn], cache: dict[str, torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """Logits (B, T, V) with ``hooks[name](activation)`` applied at each named point.

        A hook returning a tensor replaces the activation (steering, ablation); returning None keeps it.
        ``cache`` (``{name: None}``) is filled in place with the activations as they flow on, after the hooks.
        """
        self._check_names(hooks)
        if cache is not None:
            self._check_names(cache)
        return self.unembed(self._run(tokens, cache=cache, hooks=hooks))  # (B, T, V)

    def num_params(self, matmul_only: bool = False) -> int:
        """Parameter count; ``matmul_only`` counts only weights used in matrix products (the 6N FLOP rule)."""
        if not matmul_only:
            return sum(p.numel() for p in self.parameters())
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))


def add_vector(vector: torch.Tensor, alpha: float) -> HookFn:
    """A hook adding ``alpha * vector`` (D,) to the activation at every position (activation steering)."""

    def hook(x: torch.Tensor) -> torch.Tensor:
        return x + alpha * vector.to(x.dtype)

    return hook
