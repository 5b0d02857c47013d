"""What a GPU buys a sweep, in one command: pretraining tokens/s and its share of the bf16 peak, where
the GPU beats a CPU trial (model-size axis), CPU/GPU agreement (pretraining and probes; then every
device-ready analysis beyond the quickstart's, composition, policy_kl, concept_vectors, rare, negation's
scoring and llc, metric by metric, with their seconds on each), PPO learner updates/s on the GPU against
the CPU, the packing curve (1, 4, 8, 16 trials per GPU), and a 2-seed quickstart on the GPU with its
verdict (its trials' probes, rollouts and analyses on their GPU share). It is what a device check runs
(issue 24).

How to run it on the device machine (no network, no Ray/MLflow/gymnasium/pydantic: the GPU kit in
../shared/tools/gpu/ carries them; its README explains)::

    bash ../shared/tools/gpu/make_bundle.sh           # here, from the repository root: builds .dev/
    run(command="set -o pipefail; GPUKIT_TIMEOUT=420 bash .dev/on_device.sh python3 benchmarks/bench_gpu.py "
                "--out $OUT 2>&1 | tee $OUT/bench_gpu_log.txt | tail -n 150", carry=[".dev"], timeout_s=480)

and here, without a GPU::

    python benchmarks/bench_gpu.py --dry-run          # every code path on the CPU at toy sizes (~2 min)
    python benchmarks/bench_gpu.py                    # exits 2 at once with one line: no GPU here

What to expect: one block per section, then ``bench_gpu.json`` and the quickstart's log in ``--out``.
The run keeps to ``--budget-s`` (350 s): each section is owed a nominal share (NOMINAL_S), and what no
longer fits is skipped and says so. The bf16 peak assumed is NVIDIA's dense (no sparsity) tensor-core
figure: H200 SXM 989.4 TFLOP/s, H200 NVL 835 (``--peak-tflops`` overrides); an 8192^3 bf16 matmul
measured in the same run is the practical ceiling beside it. FLOPs per token: 6 x matmul weights +
6 x layers x context x d_attn (Kaplan et al. 2020; causal attention counted in full). A failed section
prints its traceback and the others go on; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from statistics import mean, median

from gpu_agreement import section_agreement, section_analyses
from gpu_common import (
    NOMINAL_S,
    PEAKS_TFLOPS,
    PPO_GRID,
    PPO_TOY,
    PPO_TRIAL,
    PROCESS,
    ROOT,
    SIZES,
    TOY,
    Clock,
    flops_per_token,
    model_cfg,
    pretrain_config,
    pretrain_rate,
)


def bf16_peak(args, dev: str) -> tuple[float | None, str, float]:
    """(assumed dense bf16 peak TFLOP/s or None, device name, measured 8192^3 bf16 matmul TFLOP/s)."""
    import torch

    if dev != "cuda":
        return None, "cpu (dry run)", float("nan")
    name = torch.cuda.get_device_name()
    assumed = args.peak_tflops or next((p for key, p in PEAKS_TFLOPS if key in name), None)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    return assumed, name, 2 * 8192**3 * 20 / (time.perf_counter() - t) / 1e12


def section_pretrain(args, dev: str, clock: Clock, tmp: Path) -> dict:
    """Per model size: bf16 tokens/s at a GPU-sized batch (share of the peak), and a trial's batch 256 on the GPU
    against a CPU trial (2 cores, precision auto; a smaller batch for the big models, tokens/s is flat there)."""
    assumed, name, measured = bf16_peak(args, dev)
    print(f"  {name}: bf16 peak assumed {assumed} TFLOP/s (dense), an 8192^3 matmul here {measured:.0f}")
    sizes, rows = (TOY if args.dry_run else SIZES), []
    # a dry run checks code paths, not rates: its timing windows need only be long enough to close three
    each = 0.5 if args.dry_run else max(1.0, min(3.5, (clock.mine() - 10) / (3 * len(sizes))))
    every = 2 if args.dry_run else 0
    for label, size in sizes.items():
        cfg = model_cfg(size)
        big = 64 if args.dry_run else (4096 if cfg.n_ctx <= 16 else 1024)
        gpu_big = pretrain_rate(cfg, big, dev, "bf16", None, each, every)
        gpu_trial = pretrain_rate(cfg, 32 if args.dry_run else 256, dev, "bf16", 2, each, every)
        cpu_batch = 32 if args.dry_run else max(16, min(256, 256 * 64 * 10 // (cfg.d_model * cfg.n_ctx)))
        cpu = pretrain_rate(cfg, cpu_batch, "cpu", "auto", 2, each, every)
        tf = gpu_big * flops_per_token(cfg) / 1e12
        share = tf / assumed if assumed else float("nan")
        rows.append({"model": label, "batch": big, "gpu_tok_s": gpu_big, "tflops": tf, "share_assumed_peak": share})
        rows[-1].update(share_measured_peak=tf / measured, gpu_trial_batch_tok_s=gpu_trial, cpu_trial_tok_s=cpu)
        rows[-1].update(cpu_batch=cpu_batch, gpu_over_cpu_trial=gpu_trial / cpu)
        print(f"  {label:14s} GPU bf16 b{big}: {gpu_big:12,.0f} tok/s = {tf:6.1f} TFLOP/s, {share:.3f} of the assumed")
        print(f"  {'':14s} peak, {tf / measured:.3f} of the measured; a trial's batch 256 on the GPU {gpu_trial:,.0f}")
        print(f"  {'':14s} tok/s, a CPU trial (2 cores, b{cpu_batch}) {cpu:,.0f} tok/s: GPU x{gpu_trial / cpu:.2f}")
    return {"device": name, "peak_assumed_tflops": assumed, "peak_measured_tflops": measured, "rows": rows}


def _ray(args) -> None:
    import ray

    from rayexp.ray_local import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2 if args.dry_run else os.cpu_count())


def section_ppo(args, dev: str, clock: Clock, tmp: Path) -> dict:
    """Learner minibatch updates/s on the GPU and on the CPU: same checkpoint, seed and settings (composition.yaml's),
    env runners on the CPU. The first iteration samples the same batch on both, so its learner statistics agree."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.transformer import Transformer
    from rayexp.ppo import PPOSettings, _metrics, build_ppo_config, check_learner_device

    _ray(args)
    sizes = TOY if args.dry_run else {k: v for k, v in SIZES.items() if v["n_ctx"] == 10}
    grid, rows = ({"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 2} if args.dry_run else PPO_GRID), []
    for label, size in sizes.items():
        cfg = model_cfg(size)
        env = {"process": PROCESS, "context": cfg.n_ctx, "reward": "next_token"}
        ckpt = save_checkpoint(tmp / f"{label.replace(' ', '_')}.pt", Transformer(cfg, seed=0))
        # many envs per runner: sampling is not what this measures, and it is most of an iteration's time
        settings = PPOSettings(iterations=3, num_envs_per_env_runner=10 if args.dry_run else 100, **grid)
        updates, first = settings.num_epochs * -(-settings.train_batch_size // settings.minibatch_size), {}
        for d, gpu in ((dev, 1.0 if dev == "cuda" else 0.0), ("cpu", 0.0)):
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            algo = build_ppo_config(settings, env, ckpt, gpu=gpu).build_algo()
            try:
                where, times = check_learner_device(algo, gpu), []
                for it in range(2 if args.dry_run else 3):  # the first pays for start-up
                    res = algo.train()
                    first.setdefault(d, _metrics(res, 0, 1.0)[0])
                    times += [float(res.get("timers", {}).get("learner_update_timer", "nan"))] if it else []
            finally:
                algo.stop()
            mem = torch.cuda.max_memory_allocated() / 2**20 if d == "cuda" else None  # ray-project/ray#58679
            rows.append({"model": label, "device": where, "updates_per_iter": updates, "gpu_mib": mem})
            rows[-1].update(learner_s_per_iter=median(times), updates_per_s=updates / median(times))
            peak = f", peak {mem:,.0f} MiB" if mem else ""
            print(f"  {label:14s} learner on {where:7s}: {updates / median(times):7.1f} minibatch updates/s{peak}")
        keys = [k for k in ("policy_loss", "vf_loss", "entropy", "approx_kl") if k in first[dev] and k in first["cpu"]]
        diff = {k: abs(first[dev][k] - first["cpu"][k]) / max(abs(first["cpu"][k]), 1e-6) for k in keys}
        rows[-1]["first_update_rel_diff"] = diff
        print(
            f"  {label:14s} first update, {dev} vs cpu, relative: {', '.join(f'{k} {v:.1e}' for k, v in diff.items())}"
        )
    return {"settings": grid, "rows": rows}


def unit(spec: dict) -> dict:
    """One packed mini trial: pretrain on the device, then PPO (when RLlib is here) with its learner on the share."""
    from envs import build_process
    from models.pretrain import pretrain

    t0, cfg, steps, seed = time.time(), model_cfg(spec["size"]), spec["steps"], spec["seed"]
    pcfg = pretrain_config(steps=steps, batch_size=256, eval_every=steps, device=spec["device"], seed=seed)
    pcfg = pcfg.model_copy(update={"num_threads": 1})  # the trial's one CPU
    result = pretrain(build_process(PROCESS), cfg, pcfg)
    if spec["ppo"]:
        from models.checkpoint import save_checkpoint
        from rayexp.ppo import PPOSettings, train_ppo

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / "pre.pt", result.model)
            env = {"process": PROCESS, "context": cfg.n_ctx, "reward": "next_token", "seed": seed}
            settings = PPOSettings(iterations=spec["ppo"], seed=seed, **spec["ppo_settings"])
            train_ppo(settings, env, ckpt, Path(tmp) / "post.pt", gpu=spec["gpu"])
    return {"wall_s": time.time() - t0}


class GpuSampler:
    """GPU utilisation (%) and memory (MiB) from ``nvidia-smi`` every 250 ms while the block runs."""

    def __enter__(self):
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "250"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) if shutil.which("nvidia-smi") else None
        return self

    def __exit__(self, *exc):
        self.samples = []
        if self.proc is not None:
            self.proc.terminate()
            lines = self.proc.communicate(timeout=10)[0].splitlines()
            self.samples = [tuple(float(x) for x in ln.split(",")[:2]) for ln in lines if ln.count(",") == 1]

    def summary(self) -> dict:
        util, mem = [u for u, _ in self.samples], [m for _, m in self.samples]
        if not util:
            return {"util_mean": None, "util_max": None, "mem_max_mib": None}
        return {"util_mean": mean(util), "util_max": max(util), "mem_max_mib": max(mem)}


def section_packing(args, dev: str, clock: Clock, tmp: Path) -> dict:
    """N mini trials at once on one GPU, each holding 1/N of it (Ray's fractional GPUs, a fresh worker process
    each, as a Tune trial) and one CPU; without Ray, N processes that pretrain only."""
    try:
        import ray
        import ray.rllib  # the mini trial's PPO
    except ImportError:
        ray = None
    levels = (2,) if args.dry_run else tuple(n for n in (1, 4, 8, 16) if n <= (os.cpu_count() or 1))
    size = TOY["toy L1 d16"] if args.dry_run else SIZES["d64 L4 ctx10"]
    ppo = PPO_TOY if args.dry_run else PPO_TRIAL | {"num_envs_per_env_runner": 20}
    unit_spec = {"steps": 20 if args.dry_run else 300, "ppo": 0 if ray is None else 1 + 2 * (not args.dry_run)}
    rows, last = [], 0.0
    for n in levels:
        if last and clock.mine() < 1.5 * last + 10:
            print(f"  {n:2d} trials/GPU: skipped, {clock.mine():.0f} s of budget left")
            rows.append({"trials": n, "skipped": "budget"})
            continue
        share = 0.0 if dev == "cpu" else 1.0 / n
        specs = [
            unit_spec | {"size": size, "device": dev, "seed": i, "gpu": share, "ppo_settings": ppo} for i in range(n)
        ]
        with GpuSampler() as gpu:
            t0 = time.time()
            if ray is not None:
                _ray(args)
                task = ray.remote(num_cpus=1, num_gpus=share, max_calls=1)(unit)
                done = ray.get([task.remote(s) for s in specs])
            else:
                argv = [[sys.executable, __file__, "--unit", json.dumps(s)] for s in specs]
                procs = [subprocess.Popen(a, stdout=subprocess.PIPE, text=True) for a in argv]
                done = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            last = time.time() - t0
        row = {"trials": n, "gpu_share": share, "wall_s": last, "trials_per_hour": n * 3600 / last}
        rows.append(row := row | {"trial_wall_s_mean": mean(d["wall_s"] for d in done)} | gpu.summary())
        util = "n/a" if row["util_mean"] is None else f"{row['util_mean']:.0f}% mean, {row['util_max']:.0f}% max"
        mem = "" if row["mem_max_mib"] is None else f", {row['mem_max_mib']:,.0f} MiB max"
        how = "Ray fractional GPUs" if ray else "processes, no PPO"
        print(f"  {n:2d} trials/GPU ({how}): {row['trials_per_hour']:6.0f} trials/hour, each")
        print(f"     {row['trial_wall_s_mean']:.1f} s; GPU {util}{mem}")
    return {"ray": ray is not None, "unit": unit_spec, "rows": rows}


def section_quickstart(args, dev: str, clock: Clock, tmp: Path) -> dict:
    """sweeps/quickstart.yaml with seeds 0 and 1 through `rayexp run`, every trial on a share of the GPU
    (pretrain.device: cuda, so a trial that cannot have the GPU fails rather than runs on the CPU)."""
    import yaml

    spec = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    spec.update(name="bench_gpu_quickstart", experiment="bench_gpu_quickstart", storage_path=str(tmp / "results"))
    spec["resources"] = {"cpu": 2, "gpu": 0.16} if dev == "cuda" else {"cpu": 1, "gpu": 0}  # all 6 trials at once
    spec["base"]["pretrain"]["device"] = dev
    spec["axes"] = {"grid": {"seed": [0, 1]}}
    (path := tmp / "bench_gpu_quickstart.yaml").write_text(yaml.safe_dump(spec))
    db, verb = tmp / "mlflow.db", "validate" if args.dry_run else "run"  # the CPU smoke only checks the file
    paths = os.pathsep.join([*filter(None, [os.environ.get("PYTHONPATH")]), str(ROOT)])  # the kit's site first
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": paths}
    t0, cmd = time.time(), [sys.executable, "-m", "rayexp", verb, str(path)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, text=True, start_new_session=True, **pipes)  # its Ray: one group
    try:
        log = proc.communicate(timeout=max(30.0, clock.mine()))[0]
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as err:
        os.killpg(proc.pid, signal.SIGINT)  # rayexp's Ctrl-C path first: its summary, Ray shut down, exit 130
        try:
            log = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log = proc.communicate()[0]
        log += "\nbench_gpu: the quickstart ran out of its time\n"
        if isinstance(err, KeyboardInterrupt):
            print(log[-3000:])
            raise
    rc = proc.returncode
    if args.out is not None:
        (args.out / "quickstart_log.txt").write_text(log)
    row = {"command": f"rayexp {verb}", "rc": rc, "wall_s": time.time() - t0, "trials": verdicts(db)}
    print(f"  rayexp {verb} (2 seeds x 3 tasks, resources {spec['resources']}): rc {rc}, {row['wall_s']:.0f} s")
    for t in row["trials"]:
        print(f"    {t['task']:18s} seed {t['seed']}  device {t['device']:5s}  verdict {t['verdict']}")
    print("    " + "\n    ".join(log.strip().splitlines()[-(40 if rc else 12) :]))  # the verdict table, or the error
    return row


def verdicts(db: Path) -> list[dict]:
    """Each trial run's task, seed, device and verdict tags, from the sweep's MLflow store."""
    if not db.exists():
        return []
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name("bench_gpu_quickstart")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`rayexp.kind` = 'trial'") if exp else []
    keys = ("rayexp.task", "rayexp.seed", "rayexp.device", "rayexp.verdict")
    rows = [dict(zip(("task", "seed", "device", "verdict"), (r.data.tags.get(k, "-") for k in keys))) for r in runs]
    return sorted(rows, key=lambda t: (t["task"], t["seed"]))


SECTIONS = {
    "pretrain": section_pretrain,
    "agreement": section_agreement,
    "analyses": section_analyses,
    "quickstart": section_quickstart,
    "ppo": section_ppo,
    "packing": section_packing,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for bench_gpu.json and the quickstart's log (the run tool's $OUT)")
    ap.add_argument("--budget-s", type=float, default=350.0, help="the whole run's wall-clock budget")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections to run, in this order")
    ap.add_argument("--dry-run", action="store_true", help="every code path on the CPU at toy sizes")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when its name is not in the table")
    ap.add_argument("--unit", help=argparse.SUPPRESS)  # one packed trial, as a process when Ray is absent
    args = ap.parse_args(argv)
    if args.unit:
        print(json.dumps(unit(json.loads(args.unit))))
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False): run it on a GPU machine (see the "
            "docstring), or --dry-run for the CPU smoke",
            file=sys.stderr,
        )
        return 2
    dev, clock, sections = ("cpu" if args.dry_run else "cuda"), Clock(args.budget_s), args.only.split(",")
    if unknown := [s for s in sections if s not in SECTIONS]:
        ap.error(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    results, failed = {"dry_run": args.dry_run, "torch": torch.__version__, "cpus": os.cpu_count()}, []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for i, name in enumerate(sections):
            results["failed"] = failed
            if args.out is not None:  # after every section: a run cut short keeps what it measured
                (args.out / "bench_gpu.json").write_text(json.dumps(results, indent=1, default=str))
            clock.later = 0 if args.dry_run else sum(NOMINAL_S[s] for s in sections[i + 1 :])
            print(f"\n== {name} ({clock.left():.0f} s of the budget left)", flush=True)
            if clock.mine() < 10:
                print("  skipped: out of budget")
                results[name] = {"skipped": "budget"}
                continue
            if name == "quickstart":
                _shutdown_ray()  # `rayexp run` starts its own Ray, which must see the whole GPU
            t0 = time.time()
            try:
                results[name] = SECTIONS[name](args, dev, clock, Path(tmp))
                failed += [name] if results[name].get("rc") else []
            except Exception as err:  # noqa: BLE001  (one failed section must not cost the others' figures)
                traceback.print_exc()
                results[name], failed = {"error": f"{type(err).__name__}: {err}"}, [*failed, name]
            except KeyboardInterrupt:  # GPUKIT_TIMEOUT's SIGINT: keep what was measured
                results[name], failed = {"error": "interrupted"}, [*failed, name]
                break
            finally:
                results.setdefault(name, {})["section_s"] = time.time() - t0
    _shutdown_ray()
    results["failed"] = failed
    if args.out is not None:
        (args.out / "bench_gpu.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nbench_gpu: {'dry run; ' if args.dry_run else ''}failed sections: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
