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
    each, every = max(1.0, min(3.5, (clock.mine() - 10) / (3 * len(sizes)))), (2 if args.dry_run else 0)
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


def section_agreement(args, dev: str, clock: Clock, tmp: Path) -> dict:
    """Same seed, fp32, on the CPU and on the GPU: the pretraining loss and the probe skill must agree to float
    tolerance (the science must not depend on the device)."""
    from envs import build_process
    from models.pretrain import pretrain
    from models.transformer import Transformer
    from rayexp.probes import probe_model, summarize

    cfg, out, hmm = model_cfg(TOY["toy L1 d16"] if args.dry_run else SIZES["d64 L4 ctx10"]), {}, build_process(PROCESS)
    for d in ("cpu", dev):
        steps = 20 if args.dry_run else 60
        pcfg = pretrain_config(steps=steps, batch_size=128, eval_every=20, device=d, precision="fp32", warmup_steps=10)
        res = pretrain(hmm, cfg, pcfg)
        rand = Transformer(cfg, seed=pcfg.seed).to(d).eval()
        table = probe_model(res.model, rand, hmm, n_seq=100 if args.dry_run else 400, seed=0).table
        skill = summarize(table)[f"{res.model.hook_names[-1]}/skill"]
        weights = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
        out[d] = {"loss": res.history[-1]["loss"], "skill": skill, "weights": weights}
    a, b = out["cpu"], out[dev]
    dw = max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])
    row = {"loss_cpu": a["loss"], "loss_gpu": b["loss"], "rel_loss_diff": abs(a["loss"] - b["loss"]) / a["loss"]}
    row.update(skill_cpu=a["skill"], skill_gpu=b["skill"], skill_diff=abs(a["skill"] - b["skill"]), max_weight_diff=dw)
    row["agree"] = row["rel_loss_diff"] < 1e-3 and row["skill_diff"] < 0.01
    print(
        f"  fp32, seed 0, {steps} steps: loss {a['loss']:.5f} (cpu) vs {b['loss']:.5f} ({dev}); last-hook probe skill"
    )
    print(f"  {a['skill']:.4f} vs {b['skill']:.4f}; max |dw| {dw:.1e}: {'agree' if row['agree'] else 'DIFFER'}")
    return row


#: the analyses section's trials, one per analysis, run on the CPU and on the device: (analysis, the sweep file
#: and trial index its config comes from, params, params in a dry run, pretraining checkpoints, PPO checkpoints)
DEVICE_ANALYSES = (
    (
        "composition",
        "quickstart.yaml",
        1,
        {"n_seq": 400, "lookup_k": [1, 2]},
        {"n_seq": 40, "lookup_k": [1]},
        (),
        (1, 2),
    ),
    ("policy_kl", "quickstart.yaml", 1, {"n_seq": 400}, {"n_seq": 20}, (), (1,)),
    ("concept_vectors", "welfare.yaml", 0, {"n_seq": 300, "n_perm": 30}, {"n_seq": 60, "n_perm": 10}, (), (1, 2)),
    ("rare", "rare.yaml", 2, {"n_episodes": 40, "n_seq": 300}, {"n_episodes": 10, "n_seq": 60}, (), (1, 2)),
    ("negation", "objective.yaml", 1, {"lambdas": [1], "n_seq": 300}, {"lambdas": [1], "n_seq": 20}, (), (1,)),
    (
        "llc",
        "development.yaml",
        0,
        {"num_burnin": 20, "num_draws": 40, "n_seq": 64, "batch_size": 32, "reward_episodes": 8},
        {"num_burnin": 2, "num_draws": 8, "n_seq": 16, "batch_size": 16, "reward_episodes": 4},
        (0,),
        (1,),
    ),
)


def stored_study_trial(storage: Path, sweep_file: str, point: int, dry: bool, steps=(), iterations=(1,)):
    """A trial of a study's sweep file in storage, as its pipeline leaves it: its resolved config and env, and
    models of its size (toy in a dry run) with distinct random weights: pretrained, M_A when the task starts
    from one, pretraining checkpoints at ``steps`` and policies. Returns (storage path, sweep name, key)."""
    from models.checkpoint import save_checkpoint
    from models.transformer import Transformer
    from rayexp.artifacts import TrialArtifacts
    from rayexp.config import load_points

    _, points = load_points(str(ROOT / "sweeps" / sweep_file))
    r = points[point].trial
    cfg = r.model.model_copy(update={k: v for k, v in TOY["toy L1 d16"].items() if k != "n_ctx"}) if dry else r.model
    name = sweep_file.removesuffix(".yaml")
    arts = TrialArtifacts(str(storage), name, "k")
    start = "start-k" if r.start is not None else None
    arts.write_meta(r.config.model_dump(), "pk", r.env, {"pretrain_seed": 0}, start_key=start, ppo=r.ppo.model_dump())

    def put(seed: int, rel: str | None = None) -> Path:
        path = save_checkpoint(storage / f"{name}.pt", Transformer(cfg, seed=seed))
        if rel is not None:
            arts.store.put(path, rel, checksum=True)
        return path

    put(0, "pretrain_cache/pk/model.pt")
    if start:
        put(1, f"pretrain_cache/{start}/model.pt")
    for step in steps:
        put(10 + step, f"pretrain_cache/pk/checkpoints/step_{step:07d}.pt")
    for it in iterations:
        arts.put_policy(put(100 + it), it)
    return str(storage), name, "k"


def compare_metrics(a: dict, b: dict, rtol: float = 1e-3, atol: float = 1e-5) -> dict:
    """How two runs' metrics differ: the count beyond ``atol + rtol * |a|`` and the worst few (NaN = NaN;
    wall times such as llc's ``seconds_per_estimate`` are no result and are left out)."""
    import math

    keys = sorted(k for k in set(a) & set(b) if "seconds" not in k)
    beyond, worst_abs = [], 0.0
    for k in keys:
        x, y = float(a[k]), float(b[k])
        if math.isnan(x) and math.isnan(y):
            continue
        d = abs(x - y)
        worst_abs = max(worst_abs, d) if math.isfinite(d) else math.inf
        if not d <= atol + rtol * abs(x):
            beyond.append((d / (abs(x) + atol) if math.isfinite(d) else math.inf, k, x, y))
    beyond.sort(reverse=True)
    return {
        "metrics": len(keys),
        "only_one": len(set(a) ^ set(b)),
        "beyond_tol": len(beyond),
        "max_abs_diff": worst_abs,
        "worst": [{"metric": k, "cpu": x, "device": y} for _, k, x, y in beyond[:3]],
        "agree": not beyond and not set(a) ^ set(b),
    }


def section_analyses(args, dev: str, clock: Clock, tmp: Path) -> dict:
    """Every analysis made device-ready (rayexp.stages.DEVICE_READY) beyond the quickstart's, on one stored
    trial each, its models loaded to the CPU and then to the GPU through the trial's own TrialArtifacts: the
    metrics must agree to float tolerance (the same data, random draws on CPU generators: a perturbation's
    direction, SGLD's noise; episodes sample actions on the CPU from the policy's probabilities, so a
    near-tie can flip one), and the seconds of each. negation's retraining is a copy here (the ppo section
    measures the learner on the GPU): what runs is its scoring of M_A, M_B and the negated models."""
    import contextlib
    from unittest import mock

    from rayexp import registry
    from rayexp.artifacts import TrialArtifacts
    from rayexp.figures import plt

    def copy_retrain(settings, env, start, out, callback=None, gpu=0.0, **kw):
        from models.checkpoint import load_checkpoint, save_checkpoint

        save_checkpoint(out, load_checkpoint(start)[0])

    try:
        import rayexp.ppo  # RLlib; negation imports its train_ppo

        stub = mock.patch.object(rayexp.ppo, "train_ppo", copy_retrain)
    except ImportError:
        stub = None
    rows = []
    for name, sweep, point, params, dry_params, steps, iterations in DEVICE_ANALYSES:
        if clock.mine() < 5:
            print(f"  {name:16s} skipped: out of budget")
            rows.append({"analysis": name, "skipped": "budget"})
            continue
        if name == "negation" and stub is None:
            print(f"  {name:16s} skipped: no RLlib here")
            rows.append({"analysis": name, "skipped": "no RLlib"})
            continue
        where = stored_study_trial(tmp / "analyses", sweep, point, args.dry_run, steps, iterations)
        spec, p = registry.get(name, "trial"), registry.validate_params(name, dry_params if args.dry_run else params)
        metrics, seconds = {}, {}
        for run, d in (("cpu", "cpu"), ("device", dev)):  # in a dry run the "device" is the CPU again
            with stub if name == "negation" else contextlib.nullcontext():
                t0 = time.perf_counter()
                metrics[run] = {k: float(v) for k, v in spec.fn(TrialArtifacts(*where, device=d), p).metrics.items()}
                if d == "cuda":
                    import torch

                    torch.cuda.synchronize()
                seconds[run] = time.perf_counter() - t0
            plt.close("all")
        row = {"analysis": name, "cpu_s": seconds["cpu"], "device_s": seconds["device"]} | compare_metrics(
            metrics["cpu"], metrics["device"]
        )
        rows.append(row)
        worst = row["worst"][0] if row["worst"] else None
        said = f"; worst {worst['metric']} {worst['cpu']:.6g} vs {worst['device']:.6g}" if worst else ""
        print(
            f"  {name:16s} cpu {seconds['cpu']:5.1f} s, {dev} {seconds['device']:5.1f} s: {row['metrics']} metrics, "
            f"{row['beyond_tol']} beyond 1e-3 (max |d| {row['max_abs_diff']:.1e}){said}: "
            f"{'agree' if row['agree'] else 'DIFFER'}"
        )
    ran = [r for r in rows if "skipped" not in r]
    return {"rows": rows, "agree": bool(ran) and all(r["agree"] for r in ran)}


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
