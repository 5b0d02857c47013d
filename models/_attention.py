"""Causal self-attention for short contexts on CPU: numba kernels behind a torch autograd Function.

Why: for the models of this project (context ~10, d_head ~16) attention has almost no FLOPs, but
torch's CPU SDPA kernels are built for long sequences; on 2 cores their fixed costs made attention
~40% of a training step of the Mess3 model (10 ms per layer forward + backward for batch 512, where
these kernels take ~4 ms). The kernels read the fused QKV projection (B, T, 3*H*E) in place and
write the heads already merged as (B, T, H*E), so the permutes and copies around SDPA go too.

Exact softmax in float32 with the running-max subtraction, like SDPA's math path; one thread per
sequence, so the result does not depend on the thread count. ``tests/test_transformer.py``
checks values and gradients against ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch.autograd.function import once_differentiable

from envs._kernels import launch


@njit(parallel=True, fastmath=True, cache=True)
def _forward(qkv, z, p, scale):
    # qkv (B, T, 3, H, E) -> z (B, T, H, E); p (B, H, T, T) keeps the attention pattern for backward.
    B, T, _, H, E = qkv.shape
    for b in prange(B):
        for h in range(H):
            for t in range(T):
                m = np.float32(-3.0e38)
                for s in range(t + 1):
                    acc = np.float32(0.0)
                    for e in range(E):
                        acc += qkv[b, t, 0, h, e] * qkv[b, s, 1, h, e]
                    acc *= scale
                    p[b, h, t, s] = acc
                    m = max(m, acc)
                tot = np.float32(0.0)
                for s in range(t + 1):
                    w = np.exp(p[b, h, t, s] - m)
                    p[b, h, t, s] = w
                    tot += w
                inv = np.float32(1.0) / tot
                for e in range(E):
                    z[b, t, h, e] = 0.0
                for s in range(t + 1):
                    w = p[b, h, t, s] * inv
                    p[b, h, t, s] = w
                    for e in range(E):
                        z[b, t, h, e] += w * qkv[b, s, 2, h, e]
                for s in range(t + 1, T):
                    p[b, h, t, s] = 0.0


@njit(parallel=True, fastmath=True, cache=True)
def _backward(qkv, p, dz, dqkv, scale):
    # dS = P * (dP - rowsum(P * dP)) with dP = dZ V^T; dQ = scale dS K, dK = scale dS^T Q, dV = P^T dZ.
    B, T, _, H, E = qkv.shape
    for b in prange(B):
        dp = np.empty(T, np.float32)
        for h in range(H):
            for i in range(3):
                for t in range(T):
                    for e in range(E):
                        dqkv[b, t, i, h, e] = 0.0
            for t in range(T):
                rowdot = np.float32(0.0)
                for s in range(t + 1):
                    acc = np.float32(0.0)
                    for e in range(E):
                        acc += dz[b, t, h, e] * qkv[b, s, 2, h, e]
                    dp[s] = acc
                    rowdot += acc * p[b, h, t, s]
                for s in range(t + 1):
                    w = p[b, h, t, s]
                    g = w * (dp[s] - rowdot) * scale
                    for e in range(E):
                        dqkv[b, s, 2, h, e] += w * dz[b, t, h, e]
                        dqkv[b, t, 0, h, e] += g * qkv[b, s, 1, h, e]
                        dqkv[b, s, 1, h, e] += g * qkv[b, t, 0, h, e]


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
        B, T, _ = qkv.shape
        qkv = qkv.contiguous().view(B, T, 3, n_heads, d_head)
        z = qkv.new_empty(B, T, n_heads, d_head)
        p = qkv.new_empty(B, n_heads, T, T)
        launch(_forward, qkv.detach().numpy(), z.numpy(), p.numpy(), np.float32(d_head**-0.5))
        ctx.save_for_backward(qkv, p)
        return z.view(B, T, n_heads * d_head)

    @staticmethod
    @once_differentiable
    def backward(ctx, dz: torch.Tensor):
        qkv, p = ctx.saved_tensors
        B, T, _, H, E = qkv.shape
        dqkv = torch.empty_like(qkv)
        dz = dz.contiguous().view(B, T, H, E)
        launch(_backward, qkv.numpy(), p.numpy(), dz.numpy(), dqkv.numpy(), np.float32(E**-0.5))
        return dqkv.view(B, T, 3 * H * E), None, None


def causal_attention(qkv: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """``(B, T, 3*H*E)`` fused q, k, v -> ``(B, T, H*E)`` heads merged; differentiable.

    Uses the numba kernels for float32 CPU tensors and ``F.scaled_dot_product_attention``
    otherwise (CUDA, other dtypes, inside torch.compile). The kernels are differentiable once
    (no double backward).
    """
    B, T, _ = qkv.shape
    if qkv.device.type == "cpu" and qkv.dtype == torch.float32 and not torch.compiler.is_compiling():
        return _CausalAttention.apply(qkv, n_heads, d_head)
    q, k, v = qkv.view(B, T, 3, n_heads, d_head).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, E)
    z = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, E)
    return z.transpose(1, 2).reshape(B, T, n_heads * d_head)
