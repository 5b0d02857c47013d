"""Sweep parallel efficiency and the pretrain-cache speedup, through `rayexp.sweep.run_sweep`.

How to run::

    python benchmarks/bench_sweep.py                    # N = 1, 2; small trials
    python benchmarks/bench_sweep.py --pretrain-steps 400 --ppo-iterations 4

What to expect: a table of Tune wall times (Ray start-up excluded) and the ratios that matter:

- parallel efficiency E_N = T(1 trial on 1 CPU) / T(N equal trials on N CPUs); 1.0 is perfect
  scaling. Equal trials differ only in seed, so none shares a pretraining.
- cache speedup = pretrain stage time of a trial that trains / of one that finds the cache entry
  (same sweep run twice on the same storage path, as a second sweep over the same pretraining
  would), plus the whole-trial ratio.

The machine is shared: absolute seconds are noise, ratios measured in one run are the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

MIXTURE = {"name": "mixture", "components": [{"name": "mess3", "x": 0.05, "a": 0.85}, {"name": "rrxor"}]}


def sweep(name: str, seeds: list[int], storage: str, pretrain_steps: int, ppo_iterations: int) -> dict:
    return {
        "name": name,
        "experiment": name,
        "storage_path": storage,
        "resources": {"cpu": 1},
        "base": {
            "process": MIXTURE,
            "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64, "n_ctx": 10},
            "pretrain": {"steps": pretrain_steps, "batch_size": 128, "eval_every": 50},
            "probe": {"n_seq": 300, "figures": False},
            "ppo": {"iterations": ppo_iterations, "train_batch_size": 400, "minibatch_size": 200, "num_epochs": 2},
        },
        "tasks": [{"name": "next", "reward": "next_token"}],
        "axes": {"grid": {"seed": seeds}},
    }


def run(directory: Path, spec: dict, num_cpus: int):
    from rayexp.sweep import run_sweep

    path = directory / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    outcome = run_sweep(str(path), num_cpus=num_cpus, progress=False)
    if outcome.errors:
        sys.exit(f"{spec['name']}: {outcome.errors} trials failed")
    return outcome


def stage_seconds(outcome, stage: str) -> list[float]:
    from rayexp import tracking

    c = tracking.client(outcome.tracking_uri)
    runs = c.search_runs(
        [c.get_run(outcome.parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'",
    )
    return [r.data.metrics[f"time/{stage}_s"] for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--ppo-iterations", type=int, default=2)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    walls = {}
    for n in args.n:
        spec = sweep(
            f"par{n}",
            list(range(100 * n, 100 * n + n)),
            str(tmp / f"store{n}"),
            args.pretrain_steps,
            args.ppo_iterations,
        )
        walls[n] = run(tmp, spec, num_cpus=n).wall_s
    base = walls[args.n[0]]
    for n in args.n:
        rows.append((f"{n} trial(s) on {n} CPU(s)", walls[n], base / walls[n] if n > args.n[0] else 1.0))

    store = str(tmp / "cache")
    cold = run(tmp, sweep("cold", [7], store, args.pretrain_steps, args.ppo_iterations), num_cpus=1)
    warm = run(tmp, sweep("warm", [7], store, args.pretrain_steps, args.ppo_iterations), num_cpus=1)
    cold_pre, warm_pre = stage_seconds(cold, "pretrain")[0], stage_seconds(warm, "pretrain")[0]
    rows.append(("pretrain stage, cache miss", cold_pre, 1.0))
    rows.append(("pretrain stage, cache hit", warm_pre, cold_pre / warm_pre))
    rows.append(("whole trial, cache miss", cold.wall_s, 1.0))
    rows.append(("whole trial, cache hit", warm.wall_s, cold.wall_s / warm.wall_s))

    print(f"\n{'measurement':34s} {'seconds':>9s} {'ratio':>8s}")
    for label, seconds, ratio in rows:
        print(f"{label:34s} {seconds:9.2f} {ratio:8.2f}")
    print("\nratio: parallel efficiency T1/TN for the N-trial rows (1.0 = perfect), speedup for the cache rows")


if __name__ == "__main__":
    main()
