"""bench_gpu.py's agreement sections: the same seed on the CPU and on the GPU must give the same
science to float tolerance, for pretraining and probes (``section_agreement``) and for every
device-ready analysis on a stored trial of its study (``section_analyses``)."""

from __future__ import annotations

import time
from pathlib import Path

from gpu_common import PROCESS, ROOT, SIZES, TOY, Clock, model_cfg, pretrain_config


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
