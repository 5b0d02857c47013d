"""Every metric a tiny sweep logs to MLflow, as comparable data: the guard that a refactor left
behaviour unchanged (tests/test_behaviour.py).

The sweeps in ``tests/goldens/behaviour/*.yaml`` cover every study at toy scale, in fp32 on one
thread so that a rerun on the same machine gives the same numbers. Their metrics, captured on the
tree before a redesign, are kept beside them as JSON; ``python tests/behaviour.py --write`` runs
them again and rewrites the JSON (do that only for a change that is *meant* to change numbers, and
say so in the commit). It also records the machine (``machine.json``): on a machine like it the
numbers must match to 1e-6, on another to the float noise measured between two (``OTHER_MACHINE``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDENS = Path(__file__).resolve().parent / "goldens" / "behaviour"
ROOT = GOLDENS.parents[2]

#: metrics that measure the machine, not the science (seconds, throughput, where a trial ran)
VOLATILE = re.compile(r"(^time/|wall_s$|_per_s$|per_sec|throughput|seconds|_s$)")

#: (rel_tol, abs_tol) on the machine the goldens were captured on: a rerun gives the same numbers
SAME_MACHINE = (1e-6, 1e-9)
#: ... and on another: CPU kernels and library builds move floats. Measured, one tree on two machines
#: (2026-12-05): trained quantities moved by at most 1.9e-5 (a probe R² difference), LLC estimates by
#: 1.1e-4 relative, and the SGLD chains' own diagnostics (R-hat, spread over 4 short chains) by 1.1 %
OTHER_MACHINE = (1e-3, 1e-4)
CHAIN_DIAGNOSTICS = re.compile(r"llc/.*(rhat|_std)$")
CHAIN_DIAGNOSTICS_TOL = (0.05, 1e-4)
#: where the machine the goldens were captured on is described (written by ``--write``)
MACHINE_FILE = GOLDENS / "machine.json"


def fingerprint() -> dict[str, str]:
    """What decides the floats a golden sweep logs: CPU model and instruction set, the numeric libraries."""
    import hashlib
    import platform

    import numpy
    import torch

    cpu, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu.strip():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_flags_sha1": hashlib.sha1(flags.encode()).hexdigest(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def same_machine() -> bool:
    """True where the goldens were captured on a machine like this one (then they must match to 1e-6)."""
    return MACHINE_FILE.exists() and json.loads(MACHINE_FILE.read_text()) == fingerprint()


def sweep_files() -> list[Path]:
    return sorted(GOLDENS.glob("*.yaml"))


def _run_key(run) -> str:
    tags = run.data.tags
    if tags.get("rayexp.kind") == "trial":
        return f"trial/{tags.get('rayexp.process')}/{tags.get('rayexp.task')}/{tags.get('rayexp.seed')}"
    return "parent"


def collect(uri: str, experiment: str) -> dict[str, dict[str, list[list[float]]]]:
    """{run key: {metric: [[step, value], ...]}} of every run of ``experiment``, volatile metrics left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, dict[str, list[list[float]]]] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        metrics = {}
        for key in sorted(run.data.metrics):
            if VOLATILE.search(key):
                continue
            history = client.get_metric_history(run.info.run_id, key)
            metrics[key] = sorted([int(m.step), float(m.value)] for m in history)
        key = _run_key(run)
        if key in out:
            raise ValueError(f"two runs map to {key!r}: tag the trials apart")
        out[key] = metrics
    return out


def run(sweep: Path, workdir: Path) -> dict:
    """Run one golden sweep through the real CLI in ``workdir`` and collect its metrics."""
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "rayexp", "run", str(sweep)],
        check=False,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{sweep.name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import yaml

    experiment = yaml.safe_load(sweep.read_text())["experiment"]
    return collect(env["MLFLOW_TRACKING_URI"], experiment)


def differences(want: dict, got: dict, same: bool = True) -> list[str]:
    """What differs between two collections, one line each (empty: the same behaviour). ``same``: the
    two ran on machines alike (:func:`fingerprint`), else float noise between machines is allowed."""
    lines = []
    for run_key in sorted(set(want) | set(got)):
        a, b = want.get(run_key), got.get(run_key)
        if a is None or b is None:
            lines.append(f"{run_key}: {'missing' if b is None else 'new'} run")
            continue
        for key in sorted(set(a) | set(b)):
            if key not in b or key not in a:
                lines.append(f"{run_key} {key}: {'missing' if key not in b else 'new'} metric")
                continue
            sa, sb = a[key], b[key]
            if [s for s, _ in sa] != [s for s, _ in sb]:
                lines.append(f"{run_key} {key}: steps {[s for s, _ in sa]} -> {[s for s, _ in sb]}")
                continue
            rtol, atol = (
                SAME_MACHINE if same else CHAIN_DIAGNOSTICS_TOL if CHAIN_DIAGNOSTICS.search(key) else OTHER_MACHINE
            )
            for (step, x), (_, y) in zip(sa, sb):
                close = (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rtol, abs_tol=atol)
                if not close:
                    lines.append(f"{run_key} {key} @ {step}: {x!r} -> {y!r}")
                    break
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the golden JSON files")
    parser.add_argument("names", nargs="*", help="golden sweeps to run (default: all)")
    args = parser.parse_args(argv)
    bad, same = 0, same_machine()
    for sweep in sweep_files():
        if args.names and sweep.stem not in args.names:
            continue
        with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
            got = run(sweep, Path(tmp))
        golden = sweep.with_suffix(".json")
        if args.write:
            golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
            print(f"{golden.name}: {sum(len(m) for m in got.values())} metrics in {len(got)} runs written")
            continue
        diff = differences(json.loads(golden.read_text()), got, same)
        bad += bool(diff)
        print(f"{sweep.stem}: {'same' if not diff else f'{len(diff)} differences'}")
        for line in diff[:30]:
            print("  " + line)
    if args.write:
        # machine.json vouches for every golden: written once, and only where all of them come from here
        if not args.names:
            MACHINE_FILE.write_text(json.dumps(fingerprint(), indent=1, sort_keys=True) + "\n")
        elif not same_machine():
            MACHINE_FILE.unlink(missing_ok=True)  # goldens from two machines: compare at the cross-machine tolerance
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
