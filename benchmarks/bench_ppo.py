"""Env steps/s through RLlib PPO (sampling + learning) with the transformer policy.

How to run::

    OMP_NUM_THREADS=1 python benchmarks/bench_ppo.py            # ~2-4 min on 2 quiet cores
    python benchmarks/bench_ppo.py --iterations 3 --repeats 2   # alternate runs against noise

What to expect: three rows measured in the same run, so the ratios survive a noisy machine (and
CPU-time rates of this process, which also survive other agents' load when env runners are 0):
raw numpy-vectorised env stepping (random actions), PPO with the 4-layer d_model-64 transformer
policy over a 10-token window on Mess3, and RLlib PPO with its default MLP on CartPole-v1 under the
*same* PPO settings (envs per runner, batch sizes, epochs). Target: transformer PPO >= 0.5x CartPole.
Timing starts after a warm-up iteration; each PPO rate is env steps sampled / wall time of
``algo.train()`` over the timed iterations.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray.rllib.algorithms.ppo import PPOConfig

from models.checkpoint import save_checkpoint
from models.transformer import Transformer, TransformerConfig
from rayexp.ppo import PPOSettings, build_ppo_config
from rayexp.ray_local import start_local_ray

ENV_CONFIG = {"process": {"name": "mess3", "x": 0.05, "a": 0.85}, "context": 10, "reward": "next_token"}


def raw_env_rate(num_envs: int, seconds: float = 2.0) -> tuple[float, float]:
    from envs.gym_env import SequenceVectorEnv

    env = SequenceVectorEnv(num_envs, ENV_CONFIG)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        env.step(rng.integers(0, env.single_action_space.n, num_envs))
        steps += num_envs
    return steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)


def ppo_rate(config: PPOConfig, iterations: int) -> tuple[float, float]:
    """(env steps per wall second, per CPU second of this process); the second is robust to other
    load on the machine but counts only this process, so it is meaningful with 0 env runners."""
    algo = config.build_algo()
    try:
        steps0 = _steps(algo.train())  # warm-up: actor start, first weight sync, lazy imports
        t0, c0, steps = time.perf_counter(), time.process_time(), steps0
        for _ in range(iterations):
            steps = _steps(algo.train())
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    finally:
        algo.stop()
    return (steps - steps0) / dt, (steps - steps0) / dc


def _steps(result: dict) -> int:
    return int(result["env_runners"]["num_env_steps_sampled_lifetime"])


def cartpole_config(settings: PPOSettings) -> PPOConfig:
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=settings.num_env_runners, num_envs_per_env_runner=settings.num_envs_per_env_runner)
        .learners(num_learners=0)
        .training(
            lr=settings.lr,
            num_epochs=settings.num_epochs,
            minibatch_size=settings.minibatch_size,
            train_batch_size_per_learner=settings.train_batch_size,
            shuffle_batch_per_epoch=settings.shuffle_batch_per_epoch,
        )
        .debugging(seed=settings.seed)
    )


def main(argv: list[str] | None = None) -> list[tuple[str, tuple[float, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each PPO variant")
    parser.add_argument("--num-env-runners", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=32, help="envs per env runner")
    parser.add_argument("--train-batch", type=int, default=2000)
    args = parser.parse_args(argv)
    settings = PPOSettings(
        num_env_runners=args.num_env_runners,
        num_envs_per_env_runner=args.num_envs,
        train_batch_size=args.train_batch,
        minibatch_size=args.train_batch // 4,
    )
    model_cfg = TransformerConfig(n_layers=4, d_model=64, n_heads=1, d_head=8, d_mlp=256, n_ctx=10, d_vocab=3)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "policy.pt"
        save_checkpoint(ckpt, Transformer(model_cfg, seed=0))  # speed does not depend on the weights
        start_local_ray(num_cpus=2)  # loopback only, no cloud-metadata probes
        try:
            raw = raw_env_rate(args.num_envs)
            tf_rates, cp_rates = [], []
            for _ in range(args.repeats):
                cp_rates.append(ppo_rate(cartpole_config(settings), args.iterations))
                tf_rates.append(ppo_rate(build_ppo_config(settings, ENV_CONFIG, ckpt), args.iterations))
        finally:
            ray.shutdown()
    cartpole, transformer = np.median(cp_rates, axis=0), np.median(tf_rates, axis=0)
    rows = [
        ("raw SequenceVectorEnv stepping (random actions)", raw),
        ("PPO, transformer policy (4L d64, K=10, Mess3)", tuple(transformer)),
        ("PPO, RLlib default MLP on CartPole-v1", tuple(cartpole)),
    ]
    print(f"\nsettings: {settings.model_dump()}")
    print(f"{'':50s} {'steps/wall s':>12s} {'ratio':>7s} {'steps/CPU s':>12s} {'ratio':>7s}")
    for name, (wall, cpu) in rows:
        print(f"{name:50s} {wall:12.0f} {wall / cartpole[0]:7.2f} {cpu:12.0f} {cpu / cartpole[1]:7.2f}")
    ratio = transformer / cartpole
    print(f"transformer / CartPole PPO: wall {ratio[0]:.2f}, CPU {ratio[1]:.2f} (target >= 0.5)")
    return rows


if __name__ == "__main__":
    main()
