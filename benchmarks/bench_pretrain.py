"""Pretraining throughput in fp32 and bf16 against the machine's matmul bounds and a plain nn.MultiheadAttention loop.

How to run::

    python benchmarks/bench_pretrain.py                 # 2 threads, 3 interleaved rounds, fp32 and bf16
    python benchmarks/bench_pretrain.py --rounds 3 --batch 512 --compile
    python benchmarks/bench_pretrain.py --rounds 1 --tokens 20000 --batch 64    # smoke run, well under a minute

What to expect: a table with the measured fp32 and bf16 matmul peaks, the bound each implies
(peak / (6 x matmul parameters) tokens/s: training costs ~6 FLOPs per weight per token),
``models.pretrain`` tokens/s in each precision (``PretrainConfig.precision``) with its share of
that precision's bound, the bf16 / fp32 speed-up, a plain fp32 loop's tokens/s, and the
ceilings: the same step's matrix products run alone on the model's shapes (d_model 64 products
do not reach the 1024^3 peak, so no implementation on the same BLAS reaches share 1). On a CPU
with bf16 matrix units (Intel AMX) bf16 should train >= 1.7x faster than fp32; elsewhere the
bf16 row says whether ``auto`` (which keeps those machines on fp32) leaves speed unused. The
machine is shared, so each timing window is paired with matmul probes of its precision run just
before and after it, and the shares of the bound (median over windows) and their ratios matter
more than the absolute numbers.

The model is the Mess3 model of the brief: 4 layers, d_model 64, context 10, d_mlp 256, with
4 heads x 16 so that nn.MultiheadAttention (which needs d_head = d_model / n_heads) builds
exactly the same sizes.
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.processes import mess3
from models.pretrain import PretrainConfig, has_bf16_matmul_units, pretrain, resolve_precision
from models.transformer import Transformer, TransformerConfig

MODEL = TransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=10, d_vocab=3)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak_gflops(n: int = 1024, reps: int = 5, tries: int = 3, dtype=torch.float32, device="cpu") -> float:
    """Best-of-``tries`` throughput of an n x n x n matrix product, GFLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    a @ b
    for _ in range(tries):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


class PlainLM(nn.Module):
    """What one writes first: nn.TransformerEncoderLayer (pre-LN) blocks with a causal mask."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.n_ctx, cfg.d_model)
        layer = {"d_model": cfg.d_model, "nhead": cfg.n_heads, "dim_feedforward": cfg.d_mlp, "dropout": 0.0}
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(**layer, activation=cfg.act, batch_first=True, norm_first=True)
            for _ in range(cfg.n_layers)
        )
        self.ln = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)  # (T, T) -inf above the diagonal
        x = self.embed(tokens) + self.pos(torch.arange(T))  # (B, T, D)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)  # (B, T, D)
        return self.out(self.ln(x))  # (B, T, V)


def paired_shares(windows: list[float], peaks: list[float], n_params: int) -> list[float]:
    """Share of the bound per window, each against the better of the peaks measured just before and after it.

    Other jobs on a shared machine slow the matmul probe and the training alike, so pairing each
    window with its neighbouring probes cancels most of the load; best-of-run figures would not.
    """
    return [w * 6 * n_params / (max(peaks[i], peaks[i + 1]) * 1e9) for i, w in enumerate(windows)]


def timed_windows(
    step, tokens_per_step: int, steps: int, windows: int, peaks: list[float], dtype=torch.float32
) -> list[float]:
    """Tokens/s of ``steps`` calls of ``step`` per window; window 0 warms up and is dropped.

    A ``dtype`` matmul peak probe runs before window 1 and after every timed window, so ``peaks[i]``
    and ``peaks[i + 1]`` bracket window i (see :func:`paired_shares`).
    """
    out = []
    for w in range(windows + 1):
        if w == 1:
            peaks.append(matmul_peak_gflops(dtype=dtype))
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if w >= 1:
            out.append(tokens_per_step * steps / (time.perf_counter() - t0))
            peaks.append(matmul_peak_gflops(dtype=dtype))
    return out


def matmul_only_windows(batch: int, steps: int, windows: int, peaks: list[float], dtype=torch.float32) -> list[float]:
    """The matrix products of one training step in ``dtype`` and nothing else: tokens/s per window.

    Forward ``addmm`` (bias included) and the two backward products (input and weight gradients)
    of every ``nn.Linear`` of the model, on distinct buffers of the real shapes (already in
    ``dtype``: no autocast casts). No implementation that calls the same BLAS can do better, so
    this is the practical ceiling that the share of the bound should be read against.
    """
    model, n = Transformer(MODEL), batch * MODEL.n_ctx
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    layers = [
        tuple(t.to(dtype) for t in (torch.randn(o, i) * 0.05, torch.zeros(o), torch.randn(n, i), torch.randn(n, o)))
        for i, o in shapes
    ]  # weight, bias, input, output gradient

    def step() -> None:
        for w, b, x, _ in layers:
            torch.addmm(b, x, w.t())
        for w, _, x, dy in reversed(layers):
            dy.t() @ x  # weight gradient
            dy @ w  # input gradient

    return timed_windows(step, n, steps, windows, peaks, dtype)


def plain_windows(process, batch: int, steps: int, windows: int, peaks: list[float], seed: int = 0) -> list[float]:
    """A plain training loop (sample, forward, loss, backward, AdamW, loss.item() every step): tokens/s per window."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PlainLM(MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    T = MODEL.n_ctx

    def step() -> None:
        tokens = torch.from_numpy(process.sample(batch, T + 1, rng)[0])  # (B, T+1)
        logits = model(tokens[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, MODEL.d_vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    return timed_windows(step, batch * T, steps, windows, peaks)


def ours_windows(
    process, batch, steps, windows, peaks, compile=False, device="cpu", threads=2, precision="fp32"
) -> list[float]:
    """Tokens/s per reporting window of a real ``pretrain`` run; a matmul probe (its precision) runs between windows."""
    cfg = PretrainConfig(
        steps=steps * (windows + 1),
        batch_size=batch,
        eval_every=steps,
        progress=False,
        compile=compile,
        device=device,
        num_threads=threads,
        optimal_loss_samples=1000,
        precision=precision,
    )
    dtype = DTYPES[precision]
    probe = (lambda: None) if device == "cuda" else (lambda: peaks.append(matmul_peak_gflops(dtype=dtype)))
    res = pretrain(process, MODEL, cfg, callback=lambda metrics, step: probe())  # callbacks run between windows
    return [h["tokens_per_s"] for h in res.history[1:]]  # window 0 pays for warm-up; peaks[i] follows window i


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=PretrainConfig().batch_size)
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens per timing window (3 windows per round)")
    ap.add_argument("--compile", action="store_true", help="benchmark models.pretrain with compile=True")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated PretrainConfig.precision values")
    args = ap.parse_args(argv)
    precisions = args.precisions.split(",")
    if unknown := set(precisions) - set(DTYPES):
        ap.error(f"unknown precisions {sorted(unknown)}; valid: {sorted(DTYPES)}")

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # the plain loop gets the same denormal handling as ours
    process = mess3(0.05, 0.85)
    n_mm = Transformer(MODEL).num_params(matmul_only=True)
    n_all = Transformer(MODEL).num_params()
    n_plain = sum(p.numel() for p in PlainLM(MODEL).parameters())
    assert n_plain == n_all, (n_plain, n_all)  # same sizes, so the same bound applies to both
    steps = max(4, args.tokens // (args.batch * MODEL.n_ctx))  # per window
    ours = {p: [] for p in precisions}  # tokens/s per window
    ours_share = {p: [] for p in precisions}  # share of that precision's bound per window
    ceil_share = {p: [] for p in precisions}
    plain, plain_share = [], []
    for r in range(args.rounds):  # interleaved rounds: load from other jobs hits every contender alike
        for prec in precisions:
            peaks: list[float] = []
            w = ours_windows(process, args.batch, steps, 3, peaks, args.compile, threads=args.threads, precision=prec)
            ours[prec] += w
            ours_share[prec] += paired_shares(w, peaks, n_mm)
        peaks = []
        w = plain_windows(process, args.batch, steps, 3, peaks)
        plain += w
        plain_share += paired_shares(w, peaks, n_mm)
        for prec in precisions:
            peaks = []
            ceil_share[prec] += paired_shares(
                matmul_only_windows(args.batch, steps, 3, peaks, DTYPES[prec]), peaks, n_mm
            )
        line = ", ".join(f"ours {p} {max(ours[p]):,.0f} tok/s (median share {median(ours_share[p]):.2f})" for p in ours)
        print(f"round {r + 1}/{args.rounds}: {line}, plain {max(plain):,.0f} tok/s (share {median(plain_share):.2f})")

    sp = median(plain_share)
    rows = []
    for prec in precisions:
        peak = matmul_peak_gflops(reps=20, dtype=DTYPES[prec])
        bound = peak * 1e9 / (6 * n_mm)
        so, sc = median(ours_share[prec]), median(ceil_share[prec])
        if prec == "fp32":  # same bound as the plain loop: compare the load-paired shares
            versus_plain = f"{so / sp:.2f}x plain (median shares)"
        else:
            versus_plain = f"{median(ours[prec]) / median(plain):.2f}x plain (median tok/s)"
        rows += [
            (f"{prec} matmul peak (1024^3 torch.mm, now)", f"{peak:,.1f} GFLOP/s", ""),
            (f"{prec} bound = peak / (6 x matmul params)", f"{bound:,.0f} tok/s", f"params {n_mm:,} (all {n_all:,})"),
            (
                f"models.pretrain {prec} (best window)",
                f"{max(ours[prec]):,.0f} tok/s",
                f"share of {prec} bound {so:.2f} median / {max(ours_share[prec]):.2f} best; {versus_plain}",
            ),
            (
                f"{prec}: the step's matmuls alone (ceiling)",
                f"{sc * bound:,.0f} tok/s",
                f"share of {prec} bound {sc:.2f} median / {max(ceil_share[prec]):.2f} best; ours reaches {so / sc:.2f}",
            ),
        ]
    if {"fp32", "bf16"} <= set(precisions):
        speedup = median(ours["bf16"]) / median(ours["fp32"])
        rows.append(("models.pretrain bf16 / fp32", f"{speedup:.2f}x", "median tok/s over the interleaved windows"))
    rows.append(
        (
            "plain nn.MultiheadAttention fp32 (best window)",
            f"{max(plain):,.0f} tok/s",
            f"share of fp32 bound {sp:.2f} median / {max(plain_share):.2f} best",
        )
    )
    auto = resolve_precision(PretrainConfig(device="cpu"))
    units = "bf16 matrix units detected" if has_bf16_matmul_units(torch.device("cpu")) else "no bf16 matrix units"
    rows.append(("precision auto on this CPU", auto, units))
    if torch.cuda.is_available():
        bf16 = matmul_peak_gflops(n=8192, reps=20, dtype=torch.bfloat16, device="cuda")
        gpu_batch = 8192
        gpu = max(
            ours_windows(process, gpu_batch, 100, 3, [], args.compile, device="cuda", threads=None, precision="bf16")
        )
        share = gpu * 6 * n_mm / (bf16 * 1e9)
        rows += [
            ("GPU bf16 matmul peak (8192^3)", f"{bf16:,.0f} GFLOP/s", ""),
            (f"models.pretrain on GPU, bf16 (batch {gpu_batch})", f"{gpu:,.0f} tok/s", f"{share:.3f} of bf16 peak"),
        ]
    print(
        f"\nMess3 model {MODEL.n_layers}L d{MODEL.d_model} {MODEL.n_heads}x{MODEL.d_head} ctx {MODEL.n_ctx}, "
        f"batch {args.batch}, {args.threads} threads, {args.rounds} rounds x 3 windows, compile={args.compile}"
    )
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


if __name__ == "__main__":
    main()
