"""Toy model of superposition under supervised training and under PPO: does the usual LLC mark the
same transitions? (research note 003, issue 22; docs/design.md §5.1)

    rayexp run sweeps/tms.yaml                                          # the same (`study: tms` in the file)
    python -m rayexp.studies.development.tms sweeps/tms.yaml            # run (embedded Ray, MLflow)
    python -m rayexp.studies.development.tms sweeps/tms.yaml --validate # check the file, run nothing
    python -m rayexp.studies.development.tms sweeps/tms.yaml --report   # table + figure from stored results

For every seed, two trials (Ray Tune, one CPU each) start from the same (W, b) (models.tms.init_tms):

- ``supervised``: Adam on the MSE on fresh TMS inputs, checkpoints every ``checkpoint_every`` steps;
- ``ppo``: RLlib PPO on the one-step env of envs.tms (reward -||a - x||^2), policy N(x_hat(x), sigma^2)
  (rayexp/studies/development/tms_rl.py), checkpoints every ``save_every`` iterations.

At every checkpoint a trial computes the supervised loss (exact for one_hot data), the exact expected
reward of the Gaussian policy, k and the phase label, and the LLC the usual way with its diagnostics
(tms_llc.py), logs them to its MLflow run (nested under the sweep's parent run; tracking URI from
MLFLOW_TRACKING_URI or ./mlflow.db, rayexp/tracking.py) and stores (W, b) and the rows under
``{storage_path}/{name}/``. The driver then locates transitions per trial (the loss for supervised,
the reward for PPO, the LLC over healthy estimates, the k changes), asks whether the LLC has one
within one checkpoint of each, prints the table and a summary, and logs the table and the figure
(tms_figure.py) to the parent run (and to ``figures_dir`` when set). Bad input: one line on stderr,
exit 2; a failed trial: exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.tms import TMSDataConfig, expected_reward, sample
from rayexp import tracking
from rayexp.ray_local import connect
from rayexp.studies.development.tms_config import SweepFileError, TMSSweep, flatten, load
from rayexp.studies.development.tms_figure import tms_figure
from rayexp.studies.development.tms_llc import estimate, llc_batches, summarise, transitions

CURVE = {"supervised": "loss", "ppo": "reward"}


# ---------------------------------------------------------------------------------------------
# one trial (a Tune worker)


def _eval(spec: TMSSweep):
    """(loss of (W, b), the LLC's batches): exact loss for one_hot data, else the mean over a fixed sample."""
    from models.tms import exact_loss, from_weights, mse

    cfg = TMSDataConfig(**spec.data.model_dump())
    batches = llc_batches(sample(cfg, spec.llc.n, np.random.default_rng(spec.llc.seed)), spec.llc.batch_size)
    if spec.data.mode == "one_hot":
        return exact_loss, batches
    import torch

    held = torch.from_numpy(sample(cfg, 100_000, np.random.default_rng(spec.llc.seed + 1)))

    def loss(W, b) -> float:
        with torch.no_grad():
            return float(mse(from_weights(W, b), held))

    return loss, batches


def train_arm(spec: TMSSweep, arm: str, seed: int) -> list[dict]:
    """Checkpoints ``{"checkpoint", "W", "b", "log_std"}`` of one arm of one seed, from the seed's init."""
    from models.tms import SupervisedSettings, init_tms, train_supervised

    model = init_tms(spec.data.n_features, spec.model.n_hidden, seed, spec.model.init_scale)
    log_std = np.full(spec.data.n_features, spec.ppo.log_std)
    if arm == "supervised":
        cfg = TMSDataConfig(**spec.data.model_dump())
        s = spec.supervised
        out = train_supervised(
            model,
            lambda n, rng: sample(cfg, n, rng),
            SupervisedSettings(s.steps, s.lr, s.batch_size, seed),
            s.save_at(),
        )
        return [{"checkpoint": c["step"], "W": c["W"], "b": c["b"], "log_std": log_std} for c in out]
    from rayexp.studies.development.tms_rl import TMSPPOSettings, train_ppo_tms

    p = spec.ppo.model_dump()
    settings = TMSPPOSettings(**p, seed=seed)
    w = model.weights()
    t0 = time.time()

    def progress(it: int, weights: dict, info: dict) -> None:
        print(f"[tms ppo s{seed}] iteration {it}/{p['iterations']} ({time.time() - t0:.0f} s)", flush=True)

    out = train_ppo_tms(settings, spec.data.model_dump(), w["W"], w["b"], progress)
    return [{"checkpoint": c["iteration"], "W": c["W"], "b": c["b"], "log_std": c["log_std"]} for c in out]


def checkpoint_rows(spec: TMSSweep, arm: str, seed: int, ckpts: list[dict], log=None) -> list[dict]:
    """Loss, exact expected reward, k, phase and the LLC with its diagnostics, per checkpoint."""
    from models.tms import k_count, phase_label

    loss_of, batches = _eval(spec)
    settings = spec.llc.settings()
    rows, t0 = [], time.time()
    for i, c in enumerate(ckpts):
        loss = loss_of(c["W"], c["b"])
        row: dict[str, Any] = {
            "arm": arm,
            "seed": seed,
            "checkpoint": int(c["checkpoint"]),
            "loss": loss,
            "reward": expected_reward(loss, c["log_std"]),
            "k": k_count(c["W"]),
            "phase": phase_label(c["W"], c["b"]),
        }
        est = estimate(c["W"], c["b"], batches, settings)  # llc_mean, llc_std, rhat, settled, ...
        row.update({k if k.startswith("llc_") else f"llc_{k}": v for k, v in est.items()})
        rows.append(row)
        flag = "" if row["llc_healthy"] else (" below init" if row["llc_below_init"] else " unsettled")
        print(
            f"[tms {arm} s{seed}] checkpoint {i + 1}/{len(ckpts)} (step {row['checkpoint']}): loss {loss:.4f} "
            f"k {row['k']} LLC {row['llc_mean']:.2f} ± {row['llc_std']:.2f} R-hat {row['llc_rhat']:.3f}{flag} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )
        if log is not None:
            log.log_metrics({f"tms/{k}": float(v) for k, v in row.items() if _num(v)}, step=row["checkpoint"])
    return rows


def _num(v) -> bool:
    return isinstance(v, (bool, int, float, np.integer, np.floating))


def run_trial(config: dict[str, Any]) -> None:
    """Tune's trainable: one arm of one seed; writes ``{arm}_s{seed}.json`` (rows) and ``.npz`` (W, b)."""
    import torch
    from ray import tune

    spec, arm, seed, meta = TMSSweep.model_validate(config["spec"]), config["arm"], int(config["seed"]), config["meta"]
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    out = Path(meta["out"])
    out.mkdir(parents=True, exist_ok=True)
    run = tracking.TrialRun(
        meta["uri"],
        meta["experiment_id"],
        meta["parent"],
        tracking.trial_key(meta["parent"], {"arm": arm, "seed": seed}),
        f"{arm} s{seed} tms",
        {"arm": arm, "seed": seed},
        {**meta["tags"], "rayexp.arm": arm, "rayexp.seed": str(seed), "rayexp.task": arm, "rayexp.process": "tms"},
    )
    try:
        t0 = time.time()
        ckpts = train_arm(spec, arm, seed)
        train_s = time.time() - t0
        rows = checkpoint_rows(spec, arm, seed, ckpts, run)
        stem = out / f"{arm}_s{seed}"
        np.savez(f"{stem}.npz", **{f"{k}_{c['checkpoint']}": c[k] for c in ckpts for k in ("W", "b", "log_std")})
        Path(f"{stem}.json").write_text(json.dumps({"rows": rows, "train_s": train_s, "total_s": time.time() - t0}))
        import pyarrow as pa

        run.log_table(f"tms_{arm}", pa.Table.from_pylist(rows))
        run.log_artifact(f"{stem}.npz", "checkpoints")
        final = {
            "train_s": train_s,
            "total_s": time.time() - t0,
            "final_loss": rows[-1]["loss"],
            "final_k": rows[-1]["k"],
        }
        run.log_metrics({f"tms/{k}": v for k, v in final.items()}, step=0)
        run.finish()
    except BaseException:
        run.finish("FAILED")
        raise
    tune.report(final)


# ---------------------------------------------------------------------------------------------
# the driver


def results(spec: TMSSweep, out: Path) -> tuple[list[dict], list[dict]]:
    """``(trials, table)``: per trial its rows and marks, and one summary row per trial."""
    trials, table = [], []
    for seed in spec.seeds:
        for arm in spec.arms:
            path = out / f"{arm}_s{seed}.json"
            if not path.exists():
                continue
            rows = json.loads(path.read_text())["rows"]
            table.append(summarise(arm, seed, rows, CURVE[arm], "llc", spec.llc.transition_alpha))
            marks = transitions(rows, CURVE[arm], "llc", spec.llc.transition_alpha)
            trials.append({"arm": arm, "seed": seed, "rows": rows, "marks": marks})
    return trials, table


def verdict(table: list[dict]) -> list[dict]:
    """Per arm and LLC loss: transitions found and marked, summed over seeds."""
    out = []
    for arm, llc in dict.fromkeys((r["arm"], r["llc"]) for r in table):
        rs = [r for r in table if r["arm"] == arm and r["llc"] == llc]
        agg = {k: sum(r[k] for r in rs) for k in ("curve_marked", "curve_total", "k_marked", "k_total")}
        agg |= {k: sum(r[k] for r in rs) for k in ("llc_unexplained", "healthy", "checkpoints")}
        out.append({"arm": arm, "llc": llc, "seeds": len(rs), **agg})
    return out


def print_table(table: list[dict], summary: list[dict], file=None) -> None:
    cols = ("arm", "seed", "llc", "k_path", "curve_transitions", "k_changes", "llc_transitions", "marked", "healthy")
    print("\n" + " | ".join(cols), file=file)
    for r in table:
        cells = [r["arm"], r["seed"], r["llc"], r["k_path"], r[f"{r['curve']}_transitions"], r["k_changes"]]
        cells += [
            r["llc_transitions"],
            f"curve {r['curve_marked']}/{r['curve_total']}, k {r['k_marked']}/{r['k_total']}",
        ]
        cells.append(f"{r['healthy']}/{r['checkpoints']}")
        print(" | ".join(str(c) for c in cells), file=file)
    print("\nDoes the LLC mark the transitions (an LLC transition within one checkpoint)?", file=file)
    for s in summary:
        print(
            f"  {s['arm']:10s} {s['llc']:8s}: curve transitions {s['curve_marked']}/{s['curve_total']}, "
            f"k changes {s['k_marked']}/{s['k_total']}, LLC transitions near neither {s['llc_unexplained']}, "
            f"healthy estimates {s['healthy']}/{s['checkpoints']} ({s['seeds']} seeds)",
            file=file,
        )


def figure_name(name: str) -> str:
    """``tms_llc_transitions.png`` for the sweep named tms, ``tms_{name}_llc_transitions.png`` otherwise."""
    return "tms_llc_transitions.png" if name == "tms" else f"tms_{name}_llc_transitions.png"


def run(spec: TMSSweep, path: str, address: str | None = None, num_cpus: int | None = None) -> int:
    import pyarrow as pa
    import ray
    from ray import tune

    from rayexp.figures import save_png

    storage = Path(spec.storage_path).expanduser().resolve()
    out = storage / spec.name / "results"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune tables: the trials print one line per checkpoint
    t0 = time.time()
    connect(address, num_cpus)
    uri = tracking.tracking_uri()
    exp_id = tracking.experiment_id(uri, spec.experiment)
    tags = tracking.git_tags(Path(__file__).resolve().parent)
    parent = tracking.start_parent_run(
        uri,
        exp_id,
        spec.name,
        flatten(spec.model_dump()),
        {**tags, "rayexp.sweep_file": path, "mlflow.note.content": spec.description},
    )
    status = "FAILED"
    try:
        n = len(spec.seeds) * len(spec.arms)
        print(
            f"tms: {n} trials ({len(spec.seeds)} seeds x {spec.arms}), MLflow {spec.experiment!r} ({uri}), results in {out}",
            flush=True,
        )
        meta = {"uri": uri, "experiment_id": exp_id, "parent": parent, "tags": tags, "out": str(out)}
        tuner = tune.Tuner(
            tune.with_resources(run_trial, {"cpu": spec.resources.cpu}),
            param_space={
                "seed": tune.grid_search(spec.seeds),
                "arm": tune.grid_search(spec.arms),
                "spec": spec.model_dump(),
                "meta": meta,
            },
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent or None),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=str(storage), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
            ),
        )
        grid = tuner.fit()
        errors = sum(1 for r in grid if r.error)
        trials, table = results(spec, out)
        summary = verdict(table)
        print_table(table, summary)
        wall = time.time() - t0
        print(f"\nwall time {wall:.0f} s; {errors} failed trials", flush=True)
        parent_run = tracking.Run(uri, parent)
        if table:
            flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in table]
            parent_run.log_table("tms_transitions", pa.Table.from_pylist(flat))
            parent_run.log_table("tms_checkpoints", pa.Table.from_pylist([r for t in trials for r in t["rows"]]))
            cols = [
                "arm",
                "llc",
                "curve_marked",
                "curve_total",
                "k_marked",
                "k_total",
                "llc_unexplained",
                "healthy",
                "checkpoints",
            ]
            parent_run.describe(f"**tms**\n\n{tracking.markdown_table(summary, cols)}", "tms")
            fig = tms_figure(trials)
            if spec.figures_dir:
                save_png(tms_figure(trials), Path(spec.figures_dir) / figure_name(spec.name))
            parent_run.log_figure("tms_llc_transitions", fig)
        for s in summary:
            parent_run.log_metrics(
                {
                    f"tms/{s['arm']}/{s['llc']}/{k}": s[k]
                    for k in ("curve_marked", "curve_total", "k_marked", "k_total", "healthy")
                },
                step=0,
            )
        parent_run.log_metrics({"sweep/wall_s": wall, "sweep/failed_trials": errors}, step=0)
        status = "FINISHED" if not errors else "FAILED"
        return 0 if not errors else 1
    except KeyboardInterrupt:
        status = "KILLED"
        return 130
    finally:
        tracking.finish_run(uri, parent, status)
        ray.shutdown()


def report(spec: TMSSweep) -> int:
    """The table and summary of a finished sweep from its stored rows, and its figure (to figures_dir); no Ray."""
    from rayexp.figures import save_png

    out = Path(spec.storage_path).expanduser().resolve() / spec.name / "results"
    trials, table = results(spec, out)
    if not table:
        print(f"error: no stored results under {out}", file=sys.stderr)
        return 1
    print_table(table, verdict(table))
    if spec.figures_dir:
        print(f"figure: {save_png(tms_figure(trials), Path(spec.figures_dir) / figure_name(spec.name))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayexp.studies.development.tms", description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="sweep file, e.g. sweeps/tms.yaml")
    ap.add_argument("--validate", action="store_true", help="check the file and exit")
    ap.add_argument("--report", action="store_true", help="print the table and redraw the figure from stored results")
    ap.add_argument("--address", default=None, help="join a running Ray cluster (default: embedded, 127.0.0.1)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray")
    args = ap.parse_args(argv)
    try:
        spec = load(args.sweep)
    except SweepFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.validate:
        print(
            f"{args.sweep}: ok: TMS sweep {spec.name!r}, {len(spec.seeds) * len(spec.arms)} trials "
            f"({len(spec.seeds)} seeds x {len(spec.arms)} arms), {spec.resources.cpu:g} CPU per trial, "
            f"MLflow experiment {spec.experiment!r}"
        )
        return 0
    if args.report:
        return report(spec)
    return run(spec, args.sweep, args.address, args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
