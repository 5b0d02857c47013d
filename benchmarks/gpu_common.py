"""What bench_gpu.py's sections share: the model-size axis, the PPO settings, the run's clock, and
pretraining's tokens/s measured through models.pretrain's own reporting windows."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # importable from any working directory, as on the device

PROCESS = {"name": "interleave", "factors": [{"name": "mess3", "x": 0.05, "a": 0.85}] * 2}  # the quickstart's
SIZES = {  # the model-size axis: the quickstart's model, then where a GPU should start to pay
    "d64 L4 ctx10": {"n_layers": 4, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256, "n_ctx": 10},
    "d256 L8 ctx10": {"n_layers": 8, "d_model": 256, "n_heads": 8, "d_head": 32, "d_mlp": 1024, "n_ctx": 10},
    "d256 L8 ctx64": {"n_layers": 8, "d_model": 256, "n_heads": 8, "d_head": 32, "d_mlp": 1024, "n_ctx": 64},
}
TOY = {"toy L1 d16": {"n_layers": 1, "d_model": 16, "n_heads": 1, "d_head": 8, "d_mlp": 16, "n_ctx": 6}}
PEAKS_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0))
PPO_GRID = {"train_batch_size": 4000, "minibatch_size": 1000, "num_epochs": 4, "lr": 5e-4}  # composition.yaml
PPO_TRIAL = {"train_batch_size": 1000, "minibatch_size": 250, "num_epochs": 4, "lr": 1e-3}  # quickstart.yaml
PPO_TOY = {"train_batch_size": 100, "minibatch_size": 100, "num_epochs": 1, "num_envs_per_env_runner": 4}
NOMINAL_S = {"pretrain": 35, "agreement": 10, "analyses": 30, "quickstart": 150, "ppo": 45, "packing": 80}  # = budget


class Clock:
    """The run's deadline, and the seconds owed to the sections still to come (``later``)."""

    def __init__(self, budget_s: float):
        self.end, self.later = time.time() + budget_s, 0.0

    def left(self) -> float:
        return self.end - time.time()

    def mine(self) -> float:
        return self.left() - self.later


class _Enough(Exception):
    """Raised from pretrain's callback once a measurement has had its seconds."""


def model_cfg(size: dict):
    from models.transformer import TransformerConfig

    return TransformerConfig(d_vocab=6, **size)


def flops_per_token(cfg) -> float:
    from models.transformer import Transformer

    attention = cfg.n_layers * cfg.n_ctx * cfg.n_heads * cfg.d_head
    return 6.0 * Transformer(cfg).num_params(matmul_only=True) + 6.0 * attention


def pretrain_config(**kw):
    from models.pretrain import PretrainConfig

    return PretrainConfig(**{"progress": False, "optimal_loss_samples": 200, **kw})  # a cheap Monte-Carlo optimum


def pretrain_rate(cfg, batch: int, device: str, precision: str, threads: int | None, seconds: float, every=0) -> float:
    """Median tokens/s of ``models.pretrain``'s reporting windows (the first, warm-up, dropped) for ``seconds``
    (at least 3 windows of ``every`` steps; 0: about half a second each)."""
    from envs import build_process
    from models.pretrain import pretrain

    # steps/s, rough: 20 TFLOP/s on a GPU, 50 GFLOP/s on 2 cores, and small models launch-bound (~3 / ~10 ms a step)
    flops, launch = (2e13, 300) if device == "cuda" else (5e10, 100)
    guess = min(launch, flops / flops_per_token(cfg) / (batch * cfg.n_ctx))
    every = every or int(min(100, max(1, guess * 0.5)))  # ~0.5 s windows, each ending in one sync
    rates, t0 = [], time.perf_counter()

    def callback(metrics: dict, step: int) -> None:
        rates.append(metrics["tokens_per_s"])
        if time.perf_counter() - t0 > seconds and len(rates) >= 3:
            raise _Enough

    pcfg = pretrain_config(steps=10**6, batch_size=batch, eval_every=every, device=device, precision=precision)
    try:
        pretrain(build_process(PROCESS), cfg, pcfg.model_copy(update={"num_threads": threads}), callback=callback)
    except _Enough:
        pass
    return median(rates[1:] or rates)
