"""The composition analysis's readout fits: one BLAS thread against the BLAS libraries' own threads.

How to run:   python benchmarks/bench_readout.py [--repeats 3] [--d 320] [--positions 10]
What to expect: one row per BLAS setting with the wall and CPU seconds of one ``readout_fit``
(softmax regression per position by L-BFGS, the elicitation class's fit) on features of a
quickstart trial's shape (1000 training and 1000 held-out sequences, all residual layers of the
d_model-64 model concatenated, 6 actions), and the ratio to ``blas_threads=1``, the default. Both
settings run in the same process on the same data; best of ``--repeats``. The two fits are not the
same to float tolerance (the largest and mean difference in probability are printed): L-BFGS stops
after ``iters`` steps on a path that the pools' summation order moves, so one setting everywhere is
also what makes a fit outside a trial give the trial's numbers.

Why it exists: numpy and scipy each load an OpenBLAS with its own thread pool, and L-BFGS calls one
then the other thousands of times; each pool's idle threads spin on the cores the other needs. On
the 2-core machine the composition analysis of one quickstart trial took 141-147 s outside a Ray
worker and 23 s with one BLAS thread (or under Ray, whose workers run on ``OMP_NUM_THREADS=1``).
Run it without ``OMP_NUM_THREADS`` set, or the baseline is already single-threaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayexp.studies.composition.classes import readout_fit, softmax


def features(n: int, positions: int, d: int, actions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features (a few loud directions, as a residual stream has) and a policy that is a
    noisy softmax readout of them, so L-BFGS runs its full course as on a trial."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, d)) * np.linspace(3, 0.3, 16)[:, None]
    h = rng.normal(size=(n, positions, 16)) @ basis + 0.3 * rng.normal(size=(n, positions, d))
    logits = h @ rng.normal(size=(d, actions)) / np.sqrt(d) + 0.5 * rng.normal(size=(n, positions, actions))
    return h, softmax(logits)


def timed(fn, repeats: int) -> tuple[float, float, np.ndarray]:
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="sequences (half train, half held out)")
    ap.add_argument("--positions", type=int, default=10)
    ap.add_argument("--d", type=int, default=320, help="feature width (5 residual layers x d_model 64)")
    ap.add_argument("--actions", type=int, default=6)
    args = ap.parse_args()
    h, pi = features(args.n, args.positions, args.d, args.actions)
    train, test = np.arange(args.n // 2), np.arange(args.n // 2, args.n)
    import scipy.optimize  # noqa: F401  (so the pools listed below include scipy's)

    pools = ", ".join(f"{i['filepath'].rsplit('/', 1)[-1]}: {i['num_threads']}" for i in threadpool_info())
    print(f"BLAS pools and their threads: {pools}")
    rows = []
    for label, threads in (("blas_threads=1 (default)", 1), ("blas_threads=None (the libraries' own)", None)):
        wall, cpu, out = timed(lambda t=threads: readout_fit(h, pi, train, test, blas_threads=t), args.repeats)
        rows.append((label, wall, cpu, out))
    base = rows[0][1]
    print(f"{'setting':<40} {'wall s':>8} {'CPU s':>8} {'wall / default':>15}")
    for label, wall, cpu, _ in rows:
        print(f"{label:<40} {wall:8.2f} {cpu:8.2f} {wall / base:15.2f}")
    gap = np.abs(rows[0][3] - rows[1][3])
    print(f"difference between the two fits, in probability: largest {gap.max():.1e}, mean {gap.mean():.1e}")


if __name__ == "__main__":
    main()
