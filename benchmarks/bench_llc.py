"""What one LLC estimate costs per checkpoint, against one forward + backward pass of the same batch.

How to run::

    python benchmarks/bench_llc.py                      # the analysis's defaults, torch's thread count
    python benchmarks/bench_llc.py --threads 1 --repeat 3
    python benchmarks/bench_llc.py --device cuda        # where there is a GPU

What to expect: for each phase's loss (pretraining: next-token cross-entropy on sequences of the
quickstart process; RL: the self-distillation KL on windows of the same length) one row with the
seconds of one estimate (= one checkpoint) at the defaults of ``rayexp.studies.development.llc_analysis.LLCParams``
(4 chains x 100 draws, batch 32), the seconds of one forward + backward pass of a batch, their
ratio, and the ratio divided by the SGLD steps of an estimate (the per-step overhead of devinterp's
sampler over a bare pass: the SGLD update of every parameter, callbacks; ~1.2-1.6 on CPU). Then the
predicted cost of the default analysis on a quickstart trial: 10 pretraining + 5 RL checkpoints +
2 x 6 calibration points, each one estimate. The machine may be shared; the ratio is the figure that
travels, the seconds say what a trial pays here and now.

The model is the flagship Mess3-sized transformer: 4 layers, d_model 64, 4 heads x 16, d_mlp 256,
context 10, vocabulary 6 (interleaved Mess3 x Mess3). Its weights are random: the cost of an
SGLD step does not depend on them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from envs import build_process
from models.transformer import Transformer, TransformerConfig
from rayexp.studies.development import losses
from rayexp.studies.development.llc import SGLDSettings, default_nbeta, estimate_llc
from rayexp.studies.development.llc_analysis import LLCParams

MODEL = TransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=10, d_vocab=6)
PROCESS = {"name": "interleave", "factors": [{"name": "mess3", "x": 0.05, "a": 0.85}] * 2}
ESTIMATES = {"pretrain": 10 + 6, "rl": 5 + 6}  # checkpoints + calibration grid (3 lrs x 2 localizations)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pass_seconds(model, loss_fn, batch, device: str, reps: int = 30) -> float:
    """Median seconds of one forward + backward pass of ``batch``."""
    for _ in range(3):
        loss_fn(model, batch).backward()
    times = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        loss_fn(model, batch).backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return median(times)


def phases(params: LLCParams, device: str):
    """(name, model, loss_fn, batches, nbeta) for each phase, at the analysis's default data sizes."""
    process = build_process(PROCESS)
    model = Transformer(MODEL, seed=0).to(device)
    seqs = losses.next_token_batches(process, params.n_seq, MODEL.n_ctx, params.batch_size, params.seed)
    seqs = [b.to(device) for b in seqs]
    yield "pretrain", model, losses.next_token_loss, seqs, default_nbeta(params.n_seq * MODEL.n_ctx)

    # a rollout buffer of 256 episodes x 10 steps: windows of 1..10 real tokens, right-padded
    rng = np.random.default_rng(0)
    tokens, _ = process.sample(256 * 10, MODEL.n_ctx, rng)  # (M, K)
    length = rng.integers(1, MODEL.n_ctx + 1, len(tokens))
    obs = np.where(np.arange(MODEL.n_ctx) < length[:, None], tokens, process.vocab_size)
    buffer = {"obs": obs[:, None, :], "actions": rng.integers(0, 3, (len(obs), 1))}
    batches = losses.action_batches(buffer, process.vocab_size, [0, 1, 2], params.batch_size)
    batches = [tuple(t.to(device) for t in b) for b in losses.distill_batches(model, batches)]
    yield "rl", model, losses.self_distill_kl, batches, default_nbeta(len(obs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--repeat", type=int, default=2, help="estimates timed per phase (median)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = LLCParams()
    steps = params.num_chains * (params.num_burnin + params.num_draws)
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}; defaults: {params.num_chains} chains x "
        f"{params.num_draws} draws (+{params.num_burnin} burn-in), batch {params.batch_size}: {steps} SGLD steps"
    )
    print(f"{'phase':9s} {'s/estimate':>11s} {'s/pass':>9s} {'ratio':>7s} {'ratio/steps':>12s} {'LLC':>8s}")
    per_estimate = {}
    for name, model, loss_fn, batches, nbeta in phases(params, args.device):
        t_pass = pass_seconds(model, loss_fn, batches[0], args.device)
        s = SGLDSettings(params.lrs[0], params.localizations[0], nbeta, params.num_chains, params.num_draws)
        estimate_llc(model, loss_fn, batches, s.replace(num_draws=4))  # warm-up (imports, kernels)
        times, value = [], math.nan
        for i in range(args.repeat):
            _sync(args.device)
            t0 = time.perf_counter()
            value = estimate_llc(model, loss_fn, batches, s.replace(seed=i)).mean
            _sync(args.device)
            times.append(time.perf_counter() - t0)
        per_estimate[name] = median(times)
        ratio = per_estimate[name] / t_pass
        print(f"{name:9s} {per_estimate[name]:11.2f} {t_pass:9.4f} {ratio:7.0f} {ratio / steps:12.2f} {value:8.2f}")
    total = sum(per_estimate[k] * n for k, n in ESTIMATES.items())
    print(
        f"\ndefault analysis on a quickstart trial ({ESTIMATES['pretrain']} pretraining + {ESTIMATES['rl']} RL "
        f"estimates, calibration included): ~{total:.0f} s (plus ~0.5 s of reward episodes per RL checkpoint)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
