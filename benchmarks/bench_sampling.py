"""Tokens/s for sampling with exact beliefs (float64), compiled kernel vs a plain numpy loop.

How to run:   python benchmarks/bench_sampling.py [--repeats 5] [--threads N]
What to expect: a table with one row per (process, batch x length): the fused numba kernel
(sample + belief update, parallel over the batch), the plain batch-vectorised numpy loop (one
matrix product per time step for sample + belief update, same random draws, same results), and
their ratio, per wall-clock second and per CPU-second (summed over threads: what the work costs,
which a busy shared machine distorts much less than wall time). Both run in the same process, so
the ratios hold on a busy machine even when absolute numbers do not. Best of ``--repeats`` runs.

On an oversubscribed machine the default OpenMP threading layer spin-waits for a descheduled
thread and 2 threads can be slower than 1; ``NUMBA_THREADING_LAYER=workqueue`` does not (but
must not be called from several Python threads at once). Compare with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np

from envs import _kernels
from envs.processes import mess3, rrxor

SHAPES = [(8192, 64), (1024, 512)]


def best_tokens_per_s(fn, hmm, batch: int, length: int, repeats: int) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second summed over threads), best of ``repeats``."""
    wall = cpu = float("inf")
    for r in range(repeats):
        rng = np.random.default_rng(r)
        w0, c0 = time.perf_counter(), time.process_time()
        fn(hmm, batch, length, rng)
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return batch * length / wall, batch * length / max(cpu, 1e-9)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS, help="numba threads")
    args = parser.parse_args(argv)
    numba.set_num_threads(args.threads)
    procs = {"mess3(0.05,0.85)": mess3(0.05, 0.85), "rrxor": rrxor()}
    for hmm in procs.values():  # compile (or load the cache) outside the timings
        hmm.sample_with_beliefs(2, 2, np.random.default_rng(0))
    print(
        f"numba threads: {numba.get_num_threads()} ({numba.threading_layer()} layer), cpus: {os.cpu_count()}, "
        f"load avg: {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'process':<18} {'batch x length':>15} {'numba M tok/s':>14} {'numpy M tok/s':>14} {'ratio':>6}"
        f" {'numba M tok/cpu-s':>18} {'numpy M tok/cpu-s':>18} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name, hmm in procs.items():
        for batch, length in SHAPES:
            fast = best_tokens_per_s(_kernels.sample_with_beliefs, hmm, batch, length, args.repeats)
            slow = best_tokens_per_s(_kernels.sample_with_beliefs_numpy, hmm, batch, length, max(1, args.repeats // 2))
            rows.append({"process": name, "batch": batch, "length": length, "numba": fast, "numpy": slow})
            print(
                f"{name:<18} {f'{batch} x {length}':>15} {fast[0] / 1e6:>14.1f} {slow[0] / 1e6:>14.1f}"
                f" {fast[0] / slow[0]:>5.1f}x {fast[1] / 1e6:>18.1f} {slow[1] / 1e6:>18.1f} {fast[1] / slow[1]:>5.1f}x"
            )
    print("wall: tokens per second of elapsed time; cpu-s: per CPU-second summed over threads (robust to load)")
    return rows


if __name__ == "__main__":
    main()
