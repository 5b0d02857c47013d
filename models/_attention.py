"""Causal self-attention for short contexts on CPU: numba kernels behind a torch autograd Function.

Why: for the models of this project (context ~10, d_head ~16) attention has almost no FLOPs, but
torch's CPU SDPA kernels are built for long sequences, and on 2 cores their fixed costs made attention
a large share of a training step of the Mess3 model (README, "Why pretraining stops near 0.4 of the
bound", gives the measured split). They read the fused QKV (B, T, 3*H*E) in place and
write the heads already merged as (B, T, H*E), so the permutes and copies around SDPA go too.

Exact softmax in float32 with the running-max subtraction, like SDPA's math path; one thread per
sequence, so the result does not depend on the thread count. ``tests/test_transformer.py``
checks values and gradients against ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch.autograd.function import once_differentiable

from envs._kernels import launch


# error_model="numpy": a row whose scores are all -inf (weights an SGLD chain drove to inf) gives
# NaN like torch's softmax, which the caller can flag, instead of a ZeroDivisionError mid-sweep.
@njit(fastmath=True, cache=True, error_model="numpy")
def _forward_one(qkv, z, p, scale, b):
    # Sequence b: qkv (B, T, 3, H, E) -> z (B, T, H, E); p (B, H, T, T) keeps the pattern for backward.
    _, T, _, H, E = qkv.shape
    acc = np.empty(E, np.float32)  # outputs are summed in a local row and stored once
    for h in range(H):
        for t in range(T):
            m = np.float32(-3.0e38)
            for s in range(t + 1):
                a = np.float32(0.0)
                for e in range(E):
                    a += qkv[b, t, 0, h, e] * qkv[b, s, 1, h, e]
                a *= scale
                p[b, h, t, s] = a
                m = max(m, a)
            tot = np.float32(0.0)
            for s in range(t + 1):
                w = np.exp(p[b, h, t, s] - m)
                p[b, h, t, s] = w
                tot += w
            inv = np.float32(1.0) / tot
            acc[:] = 0.0
            for s in range(t + 1):
                w = p[b, h, t, s] * inv
                p[b, h, t, s] = w
                for e in range(E):
                    acc[e] += w * qkv[b, s, 2, h, e]
            for e in range(E):
                z[b, t, h, e] = acc[e]
            for s in range(t + 1, T):
                p[b, h, t, s] = 0.0


@njit(fastmath=True, cache=True, error_model="numpy")
def _backward_one(qkv, p, dz, dqkv, scale, b):
    # dS = scale * P * (dP - rowsum(P * dP)) with dP = dZ V^T; then dQ = dS K, dK = dS^T Q, dV = P^T dZ,
    # each output row summed locally and stored once (scattered += into dqkv was ~2x slower).
    _, T, _, H, E = qkv.shape
    ds = np.empty((T, T), np.float32)
    acc = np.empty(E, np.float32)
    for h in range(H):
        for t in range(T):
            rowdot = np.float32(0.0)
            for s in range(t + 1):
                a = np.float32(0.0)
                for e in range(E):
                    a += dz[b, t, h, e] * qkv[b, s, 2, h, e]
                ds[t, s] = a
                rowdot += a * p[b, h, t, s]
            for s in range(t + 1):
                ds[t, s] = p[b, h, t, s] * (ds[t, s] - rowdot) * scale
        for t in range(T):  # dQ[t] = sum_{s <= t} dS[t, s] K[s]
            acc[:] = 0.0
            for s in range(t + 1):
                w = ds[t, s]
                for e in range(E):
                    acc[e] += w * qkv[b, s, 1, h, e]
            for e in range(E):
                dqkv[b, t, 0, h, e] = acc[e]
        for s in range(T):  # dK[s] = sum_{t >= s} dS[t, s] Q[t]; dV[s] = sum_{t >= s} P[t, s] dZ[t]
            acc[:] = 0.0
            for t in range(s, T):
                w = ds[t, s]
                for e in range(E):
                    acc[e] += w * qkv[b, t, 0, h, e]
            for e in range(E):
                dqkv[b, s, 1, h, e] = acc[e]
            acc[:] = 0.0
            for t in range(s, T):
                w = p[b, h, t, s]
                for e in range(E):
                    acc[e] += w * dz[b, t, h, e]
            for e in range(E):
                dqkv[b, s, 2, h, e] = acc[e]


# One thread per sequence. A parallel launch costs ~0.1 ms (waking numba's workqueue threads), more
# than the whole kernel for the small batches of PPO acting and learning, so those run serially.
@njit(parallel=True, fastmath=True, cache=True, error_model="numpy")
def _forward_par(qkv, z, p, scale):
    for b in prange(qkv.shape[0]):
        _forward_one(qkv, z, p, scale, b)


@njit(fastmath=True, cache=True, error_model="numpy")
def _forward_ser(qkv, z, p, scale):
    for b in range(qkv.shape[0]):
        _forward_one(qkv, z, p, scale, b)


@njit(parallel=True, fastmath=True, cache=True, error_model="numpy")
def _backward_par(qkv, p, dz, dqkv, scale):
    for b in prange(qkv.shape[0]):
        _backward_one(qkv, p, dz, dqkv, scale, b)


@njit(fastmath=True, cache=True, error_model="numpy")
def _backward_ser(qkv, p, dz, dqkv, scale):
    for b in range(qkv.shape[0]):
        _backward_one(qkv, p, dz, dqkv, scale, b)


# Below this many multiply-adds per call (B * H * T^2 * E; break-even measured at ~128 sequences of
# 4 heads x 10 positions x 16 dims on 2 cores) a serial kernel beats a parallel launch.
_PARALLEL_MIN_WORK = 1 << 20


def _run(kernels, qkv: torch.Tensor, *args) -> None:
    """Run the (parallel, serial) kernel pair's better member for this size."""
    B, T, _, H, E = qkv.shape
    # As many numba threads as torch may use here (a Tune trial with 1 CPU sets torch to 1 thread),
    # so attention never takes more cores than the rest of the step. numba's setting is per thread.
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if n == 1 or B * H * T * T * E < _PARALLEL_MIN_WORK:
        launch(kernels[1], qkv.numpy(), *args)
        return
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    launch(kernels[0], qkv.numpy(), *args)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
        B, T, _ = qkv.shape
        qkv = qkv.contiguous().view(B, T, 3, n_heads, d_head)
        z = qkv.new_empty(B, T, n_heads, d_head)
        p = qkv.new_empty(B, n_heads, T, T)
        _run((_forward_par, _forward_ser), qkv.detach(), z.numpy(), p.numpy(), np.float32(d_head**-0.5))
        ctx.save_for_backward(qkv, p)
        return z.view(B, T, n_heads * d_head)

    @staticmethod
    @once_differentiable
    def backward(ctx, dz: torch.Tensor):
        qkv, p = ctx.saved_tensors
        B, T, _, H, E = qkv.shape
        dqkv = torch.empty_like(qkv)
        dz = dz.contiguous().view(B, T, H, E)
        _run((_backward_par, _backward_ser), qkv, p.numpy(), dz.numpy(), dqkv.numpy(), np.float32(E**-0.5))
        return dqkv.view(B, T, 3 * H * E), None, None


def causal_attention(qkv: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """``(B, T, 3*H*E)`` fused q, k, v -> ``(B, T, H*E)`` heads merged, in ``qkv``'s dtype; differentiable.

    Uses the numba kernels for float32 and bfloat16 CPU tensors and ``F.scaled_dot_product_attention``
    otherwise (CUDA, other dtypes, inside torch.compile). A bfloat16 qkv (what a bf16-autocast
    product returns) is attended in float32 and the result cast back: mixed precision keeps the
    softmax in float32, and SDPA's fixed costs on short contexts (above) are what the kernels avoid.
    The kernels are differentiable once (no double backward).
    """
    B, T, _ = qkv.shape
    kernel_dtype = qkv.dtype in (torch.float32, torch.bfloat16)
    if qkv.device.type == "cpu" and kernel_dtype and not torch.compiler.is_compiling():
        return _CausalAttention.apply(qkv.float(), n_heads, d_head).to(qkv.dtype)
    q, k, v = qkv.view(B, T, 3, n_heads, d_head).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, E)
    z = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, E)
    return z.transpose(1, 2).reshape(B, T, n_heads * d_head)
