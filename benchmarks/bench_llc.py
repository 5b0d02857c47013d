"""What one LLC estimate costs per checkpoint, against one forward + backward pass of the same batch.

How to run::

    python benchmarks/bench_llc.py                      # the study's setting (STUDY_SGLD), torch's thread count
    python benchmarks/bench_llc.py --threads 1 --repeat 3
    python benchmarks/bench_llc.py --quick              # 4 chains x 40 draws (+20 burn-in): a smoke test
    python benchmarks/bench_llc.py --device cuda        # where there is a GPU

It calls the analysis's own code path: ``Estimator(process, n_ctx, LLCParams()).estimate(model, phase,
checkpoint)`` of rayexp.studies.development.llc_analysis, i.e. the reference's log-probabilities on the
n_seq sequences, then ``estimate_llc`` with the self-KL loss and the study's SGLD setting (the
defaults of ``LLCParams``: 4 chains x (500 burn-in + 1000 draws) = 6000 SGLD steps, batch 32). One
loss serves every checkpoint, pretraining or RL, so one row covers both.

What to expect: the seconds of one estimate (= one distinct checkpoint; the median of ``--repeat``),
the seconds of one forward + backward pass of one batch of the same loss (median of 30), their ratio,
and the ratio divided by the SGLD steps of an estimate (the sampler's per-step overhead over a bare
pass: the SGLD update of every parameter, plus the reference log-probabilities and the starting
point's trace, computed once per estimate), then the LLC value and R-hat (of random weights: the
cost of an SGLD step does not depend on the weights, the value means nothing). Then the predicted
cost of the ``llc`` analysis on one trial of sweeps/quickstart.yaml (which does not list ``llc``;
this is what adding it would cost) and of sweeps/development.yaml (quickstart-sized, it does):
distinct checkpoints x seconds per estimate. The checkpoints are counted as the analysis sees them:
``artifacts.pretrain_checkpoints`` log-spaced pretraining steps (default 10: 0 and the last step
included), PPO iteration 0 plus every ``ppo.save_every`` and the last; iteration 0 is the final
pretraining checkpoint's weights and is estimated once. Not timed here: the reward episodes of each
RL checkpoint (``reward_episodes``, 64) and the loss of each pretraining checkpoint (32 forward
passes, no gradient). With ``--quick`` the per-estimate seconds are at the cut setting; the
prediction is then extrapolated linearly in SGLD steps and says so (it counts the quick run's fixed
per-estimate costs ~25x over, so it errs high). The machine may be shared; the ratio is the figure
that travels, the seconds say what a trial pays here and now. Measured so far: ``--quick`` only
(about 7 s wall on 2 shared CPU cores, ~11 ms a SGLD step); the full run is not measured yet (by that
per-step time, about a minute per estimate, so a few minutes in all with the warm-up and --repeat 2).

The model is the quickstart's transformer: 4 layers, d_model 64, 4 heads x 16, d_mlp 256, context 10,
vocabulary 6 (interleave of two Mess3(0.05, 0.85)), random weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import yaml

from envs import build_process
from models.transformer import Transformer, TransformerConfig
from rayexp.artifacts import log_spaced_steps
from rayexp.settings import ArtifactSettings
from rayexp.studies.development import losses
from rayexp.studies.development.llc_analysis import Estimator, LLCParams

MODEL = TransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=10, d_vocab=6)
PROCESS = {"name": "interleave", "factors": [{"name": "mess3", "x": 0.05, "a": 0.85}] * 2}
QUICK = {"num_burnin": 20, "num_draws": 40}  # chains stay at 4, the minimum LLCParams allows
SWEEPS = ("quickstart.yaml", "development.yaml")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def pass_seconds(model, batch, device: str, reps: int = 30) -> float:
    """Median seconds of one forward + backward pass of the self-KL on ``batch``, as a SGLD step takes it."""
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(3):
        torch.autograd.grad(losses.self_kl(model, batch), params)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        torch.autograd.grad(losses.self_kl(model, batch), params)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return median(times)


def checkpoints(sweep: Path) -> tuple[int, int, int]:
    """(pretraining checkpoints, RL checkpoints, distinct estimates) of one trial of ``sweep``, as the
    ``llc`` analysis walks them (pretrain_steps(); [0, *ppo_iterations()])."""
    base = yaml.safe_load(sweep.read_text())["base"]
    n = base.get("artifacts", {}).get("pretrain_checkpoints", ArtifactSettings().pretrain_checkpoints)
    steps = log_spaced_steps(base["pretrain"]["steps"], n)
    iters, every = base["ppo"]["iterations"], base["ppo"].get("save_every", 5)
    rl = sorted({0, iters} | ({i for i in range(every, iters, every)} if every else set()))
    shared = 1 if steps and steps[-1] == base["pretrain"]["steps"] else 0  # iteration 0 = the last step's weights
    return len(steps), len(rl), len(steps) + len(rl) - shared


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--repeat", type=int, default=None, help="estimates timed (median; default 2, --quick 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help=f"cut the chains to {QUICK} (a smoke test, < 60 s)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = args.repeat or (1 if args.quick else 2)
    study = LLCParams()
    params = study.model_copy(update=QUICK) if args.quick else study
    steps = params.num_chains * (params.num_burnin + params.num_draws)
    study_steps = study.num_chains * (study.num_burnin + study.num_draws)
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}; "
        f"{'--quick' if args.quick else 'study setting'}: {params.num_chains} chains x {params.num_draws} draws "
        f"(+{params.num_burnin} burn-in) = {steps} SGLD steps, batch {params.batch_size}, n_seq {params.n_seq}, "
        f"eps {params.lr:g}, gamma {params.localization:g}, nbeta {params.nbeta:g}, {params.preconditioner}"
    )
    process = build_process(PROCESS)
    model = Transformer(MODEL, seed=0).to(args.device).eval()

    def estimator(p: LLCParams) -> Estimator:
        est = Estimator(process, MODEL.n_ctx, p)
        # the analysis leaves its sequences on the CPU; a model on the GPU needs them there
        est.sequences = [b.to(args.device) for b in est.sequences]
        return est

    # warm-up (imports, numba kernels, allocator); 20 burn-in steps: with 1 the preconditioner freezes at
    # its first value, 1/delta everywhere (the self-KL's gradient is 0 at w*), and the chains blow up
    warm = estimator(params.model_copy(update={"num_burnin": 20, "num_draws": 8}))
    warm.estimate(model, "pretrain", 0)
    batch = losses.self_kl_batches(model, [warm.sequences[0][:, :-1]])[0]
    t_pass = pass_seconds(model, batch, args.device)

    times, row = [], {}
    for i in range(repeat):
        est = estimator(params.model_copy(update={"seed": i}))  # a fresh one: it reuses estimates of equal weights
        _sync(args.device)
        t0 = time.perf_counter()
        row = est.estimate(model, "pretrain", 0)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    t_est = median(times)
    ratio = t_est / t_pass
    print(f"{'s/estimate':>11s} {'s/pass':>9s} {'ratio':>8s} {'ratio/steps':>12s} {'LLC':>9s} {'R-hat':>6s}")
    print(f"{t_est:11.2f} {t_pass:9.5f} {ratio:8.0f} {ratio / steps:12.2f} {row['llc_mean']:9.3g} {row['rhat']:6.2f}")

    per = t_est * (study_steps / steps)
    if args.quick:
        print(
            f"\n--quick: at the study's {study_steps} steps an estimate would take ~{per:.0f} s "
            f"(extrapolated linearly in steps from this run; errs high)"
        )
    for name in SWEEPS:
        n_pre, n_rl, n_est = checkpoints(ROOT / "sweeps" / name)
        print(
            f"llc analysis on one {name} trial: {n_pre} pretraining + {n_rl} RL checkpoints "
            f"(iteration 0 = the final pretraining one, estimated once) = {n_est} estimates x {per:.2f} s "
            f"= ~{n_est * per:.0f} s{' (extrapolated)' if args.quick else ''}, plus the reward episodes (not timed)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
