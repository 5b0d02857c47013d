"""Next-token pretraining on freshly sampled sequences from a hidden Markov process.

How to run::

    from envs.processes import mess3
    from models.pretrain import PretrainConfig, pretrain
    from models.transformer import TransformerConfig
    res = pretrain(mess3(0.05, 0.85), TransformerConfig(), PretrainConfig(steps=2000), out_dir="runs/m")

What to expect: on 2 CPU cores the 4-layer d_model 64 Mess3 model trains at ~0.4 of the machine's
fp32 matmul bound, where the step's matrix products alone reach ~0.65 (benchmarks/bench_pretrain.py);
a d_model 128 model spends more of its step in large products (~100 GFLOP/s, 0.55-0.6 of the bound,
for the RRXOR reproduction). That is fp32; ``precision`` (default ``auto``) runs the matrix products
in bf16 where the device has bf16 matrix units (GPUs; Intel AMX, where the step's products run
3-4x faster than in fp32) and keeps the weights, optimizer state, LayerNorm, softmax and loss in fp32. The loss approaches
the process's optimal loss (the mean conditional entropy of the next token given the exact
belief), and ``history[-1]["loss_gap"]`` says how far it still is, in nats per token.

Every batch is a fresh sample (no fixed dataset), drawn in large chunks ahead of the training
steps from a generator seeded by ``seed``, so the data stream, the initialisation and
therefore the final weights depend only on ``seed`` (bit-identical on CPU for a fixed thread count).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import save_checkpoint
from models.config import PretrainConfig
from models.transformer import Transformer, TransformerConfig


@dataclass
class PretrainResult:
    model: Transformer
    # {step, loss, optimal_loss, loss_gap, tokens_per_s, lr, precision}
    history: list[dict] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    optimal_loss: float = float("nan")  # nats/token, averaged over predicted positions
    tokens_per_s: float = 0.0  # whole run, wall clock, including compilation and the first steps
    wall_s: float = 0.0
    precision: str = "fp32"  # the resolved PretrainConfig.precision: "fp32" or "bf16"


def optimal_loss_by_position(process, seq_len: int, samples: int = 20000, seed: int = 0) -> np.ndarray:
    """(seq_len,) nats: the least achievable loss at each input position t, H(X_{t+1} | X_0..X_t).

    Uses the process's exact ``conditional_entropies`` when it has them, else a Monte-Carlo mean
    of the next-token entropy under exact beliefs (unbiased; standard error ~1e-3 nats at 20k samples).
    """
    if hasattr(process, "conditional_entropies"):
        return np.asarray(process.conditional_entropies(seq_len + 1), dtype=np.float64)[1:]
    tokens, _ = process.sample(samples, seq_len, np.random.default_rng(seed))
    p = process.next_token_probs(process.beliefs(tokens))  # (N, L, V): next-token law after token t
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)  # (N, L)
    return h.mean(0)


class _Sampler:
    """Samples ``chunk`` batches at a time (about a million tokens) and hands them out in order.

    Sampling a chunk takes ~0.1 s per ~200 training steps. A background sampling thread was
    measured 2-3x slower on 2 shared cores: its kernel launches fight torch's intra-op threads.
    """

    def __init__(self, process, batch: int, length: int, seed: int, chunk: int, pin: bool):
        self._args = (process, batch, length, np.random.default_rng(seed), chunk, pin)
        self._buf: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self._buf:
            process, batch, length, rng, chunk, pin = self._args
            tokens, _ = process.sample(batch * chunk, length, rng)  # (chunk*B, L+1)
            t = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).view(chunk, batch, length)
            self._buf = list((t.pin_memory() if pin else t).unbind(0))[::-1]
        return self._buf.pop()  # (B, L+1)


def _keep_freed_memory() -> None:
    """Stop glibc from returning freed activation buffers to the OS after every step.

    By default buffers above ~128 KiB are mmap-ed fresh and unmapped on free, so each training
    step page-faults its activations in again (measured: ~2,900 faults, ~7% of step time, for the
    Mess3 model). Process-wide and harmless: memory stays reserved at its peak instead.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: serve buffers up to 32 MiB from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@contextmanager
def _cpu_settings(num_threads: int | None):
    """Thread count and denormal flushing for the run, restored afterwards.

    Flushing denormals matters: Adam's second-moment estimates of rarely-used parameters decay
    into the denormal range, where x86 arithmetic is ~100x slower.
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(False)


def has_bf16_matmul_units(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware, well above its fp32 rate.

    CUDA: compute capability >= 8 (tensor cores with bf16). CPU: x86 AMX-BF16 (Intel Xeon since
    Sapphire Rapids: 565-743 GFLOP/s on the step's shapes in bf16 against 141-212 in fp32, 2
    threads) or the AVX-512 bf16 dot product (AMD Zen 4: benchmarks/bench_pretrain.py measured the
    Mess3 model's whole training step 1.43x faster in bf16 than in fp32 on 2 cores, bf16 1024^3 peak
    416 GFLOP/s against 186). Other CPUs (AVX2 only) would emulate bf16 and stay on fp32. Tests
    monkeypatch this function.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.9
    if capabilities is not None:
        found = capabilities()
        return bool(found.get("amx_bf16", False) or found.get("avx512_bf16", False))
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(cfg: PretrainConfig) -> torch.device:
    """The device ``pretrain`` trains on: ``cfg.device``, with ``auto`` = cuda when available, else cpu.

    A trial never passes ``auto``: rayexp.context.trial_device decides from the trial's GPU share too,
    so that a trial without one never asks torch about CUDA. ``auto`` is for direct calls (reproduce,
    benchmarks, notebooks). ``cpu`` touches nothing of torch.cuda.
    """
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # else torch fails later, deep in the first .to(), naming no setting
        raise RuntimeError("pretrain.device is cuda but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(cfg.device)


def resolve_precision(cfg: PretrainConfig) -> str:
    """``"fp32"`` or ``"bf16"``: ``cfg.precision``, with ``auto`` resolved for the device the run trains on.

    The resolved value, not ``auto``, belongs in logs and cache keys: ``auto`` trains differently on
    machines with and without bf16 matrix units.
    """
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if has_bf16_matmul_units(resolve_device(cfg)) else "fp32"


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def _process_meta(process) -> dict:
    name = getattr(process, "name", type(process).__name__)
    return {"name": str(name), "vocab_size": int(process.vocab_size)}


def pretrain(
    process,
    model_cfg: TransformerConfig,
    cfg: PretrainConfig,
    out_dir: str | os.PathLike | None = None,
    callback: Callable[[dict, int], None] | None = None,
    process_spec: dict | None = None,
) -> PretrainResult:
    """Train a fresh :class:`Transformer` on ``process`` by next-token loss.

    ``process`` is an ``envs`` HMM (anything with ``sample``, ``vocab_size``, and either
    ``conditional_entropies`` or ``beliefs`` + ``next_token_probs``). ``callback(metrics, step)``
    receives each history entry. ``process_spec`` (the dict it was built from) is stored in checkpoints.
    """
    seq_len = cfg.seq_len or model_cfg.n_ctx
    if seq_len > model_cfg.n_ctx:
        raise ValueError(f"seq_len={seq_len} exceeds the model's n_ctx={model_cfg.n_ctx}")
    if process.vocab_size > model_cfg.d_vocab:
        raise ValueError(f"process emits {process.vocab_size} tokens but d_vocab={model_cfg.d_vocab}")
    if cfg.checkpoint_steps and out_dir is None:
        raise ValueError("checkpoint_steps needs out_dir")
    device = resolve_device(cfg)
    cuda = device.type == "cuda"
    precision = resolve_precision(cfg)
    cfg = cfg.model_copy(update={"precision": precision})  # checkpoints log the resolved setting

    opt_by_pos = optimal_loss_by_position(process, seq_len, cfg.optimal_loss_samples, seed=cfg.seed + 1)
    optimal = float(opt_by_pos.mean())
    meta = {"process": _process_meta(process), "process_spec": process_spec, "pretrain": cfg.model_dump()}
    out = Path(out_dir) if out_dir is not None else None
    result = PretrainResult(model=None, optimal_loss=optimal, precision=precision)  # type: ignore[arg-type]

    if not cuda:
        _keep_freed_memory()
    with _cpu_settings(cfg.num_threads):
        model = Transformer(model_cfg, seed=cfg.seed).to(device)
        result.model = model
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        params = list(model.parameters())

        def compute_loss(batch: torch.Tensor) -> torch.Tensor:
            # bf16 autocasts only the matrix products: the residual stream stays fp32 (a bf16 product
            # added to it promotes), so LayerNorm sees fp32 and returns fp32, and the CPU attention
            # kernel takes its input back to fp32 (models/_attention.py). Parameters, their accumulated
            # gradients and the optimizer state stay fp32.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(batch[:, :-1])  # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())

        # inductor could fuse the element-wise ops of forward and backward, but on 2 CPU cores it
        # measured ~25% slower than eager for the Mess3 model (and compiling takes minutes), so opt-in
        loss_fn = torch.compile(compute_loss) if cfg.compile else compute_loss

        def step_fn(batch: torch.Tensor) -> torch.Tensor:
            loss = loss_fn(batch)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        def save(step: int, loss: float | None) -> None:
            extra = {"step": step, "loss": loss, "optimal_loss": optimal, **meta}
            result.checkpoints.append(save_checkpoint(out / f"step_{step:07d}.pt", model, extra))

        if out is not None and 0 in cfg.checkpoint_steps:
            save(0, None)
        chunk = max(1, min(cfg.steps, (1 << 20) // (cfg.batch_size * (seq_len + 1))))
        sampler = _Sampler(process, cfg.batch_size, seq_len + 1, cfg.seed, chunk, pin=cuda)
        show = cfg.progress if cfg.progress is not None else (sys.stderr.isatty() and cfg.steps >= 500)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, desc=f"pretrain {meta['process']['name']}", unit="step")
        loss_sum = torch.zeros((), device=device)
        window_start, window_steps, t0 = time.perf_counter(), 0, time.perf_counter()
        try:
            for step in range(1, cfg.steps + 1):
                lr = _lr_at(step - 1, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                batch = sampler.next().to(device, non_blocking=True)  # (B, L+1)
                loss_sum += step_fn(batch)  # accumulated on device: no per-step sync
                window_steps += 1
                if bar is not None:
                    bar.update(1)
                if step % cfg.eval_every == 0 or step == cfg.steps or step in cfg.checkpoint_steps:
                    loss = float(loss_sum) / window_steps  # the one sync per window
                    now = time.perf_counter()
                    metrics = {
                        "step": step,
                        "loss": loss,
                        "optimal_loss": optimal,
                        "loss_gap": loss - optimal,
                        "tokens_per_s": window_steps * cfg.batch_size * seq_len / (now - window_start),
                        "lr": lr,
                        "precision": precision,
                    }
                    result.history.append(metrics)
                    if callback is not None:
                        callback(dict(metrics), step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", gap=f"{loss - optimal:.4f}")
                    if out is not None and step in cfg.checkpoint_steps:
                        save(step, loss)
                    loss_sum.zero_()
                    window_start, window_steps = time.perf_counter(), 0
        finally:
            if bar is not None:
                bar.close()
        result.wall_s = time.perf_counter() - t0
        result.tokens_per_s = cfg.steps * cfg.batch_size * seq_len / max(result.wall_s, 1e-9)
        if out is not None:
            last = result.history[-1]["loss"] if result.history else None
            path = save_checkpoint(
                out / "final.pt", model, {"step": cfg.steps, "loss": last, "optimal_loss": optimal, **meta}
            )
            result.checkpoints.append(path)
    model.eval()
    return result
