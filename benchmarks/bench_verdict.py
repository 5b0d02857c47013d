"""Time to a verdict: the wall time of a verdict sweep and the share of each trial spent in analyses.

How to run::

    python benchmarks/bench_verdict.py                             # runs sweeps/composition_cpu.yaml (~20 min)
    python benchmarks/bench_verdict.py --sweep sweeps/quickstart.yaml
    python benchmarks/bench_verdict.py --experiment composition_cpu  # read a finished sweep from MLflow

What to expect: one row per trial with its stage times (from the trial's ``time/{stage}_s``
metrics) and the analyses' share of the trial (rollouts and every ``analysis:*`` stage over the
sum of stage times; target < 15 %), then the sweep's wall time (``sweep/wall_s`` on the parent
run: Tune's fit plus the across-trial analyses, Ray start-up excluded) and the share of the
whole sweep's trial time spent in analyses. The machine is shared: shares are the figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayexp import tracking
from rayexp.report import latest_sweep_run


def stage_times(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len("time/") : -len("_s")]: v for k, v in metrics.items() if k.startswith("time/") and k.endswith("_s")}


def analysis_share(times: dict[str, float]) -> float:
    """Share of a trial's stage time spent in analyses (and the rollouts they need)."""
    total = sum(times.values())
    spent = sum(v for k, v in times.items() if k.startswith(("analysis_", "rollouts")))
    return spent / total if total > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "composition_cpu.yaml"))
    ap.add_argument("--experiment", default=None, help="read this finished sweep instead of running one")
    args = ap.parse_args(argv)
    uri = tracking.tracking_uri()
    if args.experiment is None:
        from rayexp.config import load_sweep
        from rayexp.sweep import run_sweep

        load_sweep(args.sweep)  # bad input fails here, before Ray starts
        t0 = time.time()
        outcome = run_sweep(args.sweep, progress=False)
        print(f"rayexp run {args.sweep}: {time.time() - t0:.0f} s including Ray start-up; {outcome.errors} failed")
        parent = outcome.parent_run_id
    else:
        parent = latest_sweep_run(uri, args.experiment)
    c = tracking.client(uri)
    runs = c.search_runs(
        [c.get_run(parent).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    shares, spent, total = [], 0.0, 0.0
    print(f"{'trial':50s} {'stages (s)':>10s} {'analyses (s)':>12s} {'share':>6s}")
    for run in sorted(runs, key=lambda r: r.info.run_name):
        times = stage_times(run.data.metrics)
        a = sum(v for k, v in times.items() if k.startswith(("analysis_", "rollouts")))
        shares.append(analysis_share(times))
        spent, total = spent + a, total + sum(times.values())
        print(f"{run.info.run_name:50s} {sum(times.values()):10.1f} {a:12.1f} {shares[-1]:6.1%}")
    wall = c.get_run(parent).data.metrics.get("sweep/wall_s", float("nan"))
    print(
        f"\n{len(runs)} trials; sweep wall {wall:.0f} s; analyses: median share {statistics.median(shares):.1%}, "
        f"max {max(shares):.1%}, whole sweep {spent / total:.1%} of trial time (target < 15 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
