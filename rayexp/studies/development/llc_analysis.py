"""The local learning coefficient over training: pretraining checkpoints and RL checkpoints.

docs/design.md §5 ("Development"). For each phase, one fixed loss (rayexp.studies.development.losses says why):

- pretraining: next-token cross-entropy on ``n_seq`` sequences of the pretraining process (seeded);
- RL (iteration 0 = the pretrained model, then every stored policy): on the trial's stored rollout
  buffer (episodes of the final policy), ``rl_loss``: ``self_distill`` (default), the KL from the
  checkpoint's own action distribution, so every checkpoint sits at the minimum of its loss; or
  ``action_nll``, the NLL of the buffer's actions, one loss for all checkpoints but minimised only
  near the final policy (measured on the quickstart trials: every earlier checkpoint's chains went
  below its starting loss, i.e. a negative "LLC" that measures how far it is from the final policy).

SGLD settings are calibrated once per phase, on its final checkpoint, over the grid ``lrs`` x
``localizations`` (rule: rayexp.studies.development.llc.calibrate), then frozen for every checkpoint of the
phase. Every estimate is diagnosed (diverged, spiked, settled, below_init); transitions are located
by rayexp.studies.development.llc.locate_transitions (slopes in log-step for pretraining's log-spaced
checkpoints, per iteration for RL's evenly spaced ones) on the LLC (healthy checkpoints only) and on
the loss (pretraining) or reward (RL) curve.

Logged: metrics ``pretrain/final``, ``rl/final`` (and ``_std``), ``calibration/{phase}/{lr,
localization,nbeta,healthy_points}``, ``{phase}/unhealthy``, ``{phase}/transitions_{llc,loss|reward}``,
``seconds_per_estimate``; tables ``llc_pretrain`` (step, llc_mean, llc_std, loss, diagnostics),
``llc_rl`` (iteration, llc_mean, llc_std, nll, reward, diagnostics), ``llc_calibration``,
``llc_chains`` (every draw of every chain, calibration included) and ``llc_transitions``; figure
``llc_over_training``.

Cost (benchmarks/bench_llc.py): each estimate is num_chains * (num_burnin + num_draws) SGLD steps,
one forward and backward pass of a batch each; a trial with 10 pretraining and 5 RL checkpoints
makes 10 + 5 + 2 * len(lrs) * len(localizations) estimates (27 at the defaults).
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.rollouts import collect
from rayexp.studies.development import losses
from rayexp.studies.development.llc import (
    SGLDSettings,
    calibrate,
    default_nbeta,
    diagnose,
    estimate_llc,
    locate_transitions,
)

TRANSITIONS = pa.schema([("phase", pa.string()), ("curve", pa.string()), ("checkpoint", pa.int64())])


class LLCParams(Params):
    num_chains: int = Field(4, ge=2, le=64, description="SGLD chains per estimate; their spread is the error bar")
    num_draws: int = Field(100, ge=8, le=100_000, description="draws per chain (one SGLD step each)")
    num_burnin: int = Field(0, ge=0, le=100_000, description="SGLD steps before the first draw")
    lrs: list[float] = Field(
        [1e-5, 3e-5, 1e-4],
        min_length=1,
        description="calibration grid of SGLD step sizes (1e-3 diverged or never settled on the quickstart "
        "model at the default nbeta)",
    )
    localizations: list[float] = Field(
        [1.0, 100.0],
        min_length=1,
        description="calibration grid of the localization gamma (on the quickstart model gamma 1 and 10 gave the "
        "same chains within 2 %: over 100 draws at these step sizes the pull back is too slow to act)",
    )
    nbeta: float | None = Field(
        None,
        gt=0,
        description="inverse temperature n*beta; None: n / ln n with n the loss terms of the fixed data "
        "(tokens of the pretraining sequences; windows of the rollout buffer)",
    )
    batch_size: int = Field(32, ge=1, le=65536, description="sequences (pretraining) or windows (RL) per SGLD step")
    n_seq: int = Field(512, ge=1, le=1_000_000, description="pretraining sequences in the fixed data of the loss")
    rl_loss: Literal["self_distill", "action_nll"] = Field(
        "self_distill", description="loss of RL checkpoints on the rollout buffer (module docstring: why)"
    )
    reward_episodes: int = Field(64, ge=0, le=100_000, description="fresh episodes per RL checkpoint for its reward")
    transition_k: float = Field(
        3.0, gt=0, description="a transition: a slope (in log-step for pretraining) > k robust SDs from the median"
    )
    seed: int = Field(0, ge=0, description="seed of the sampled sequences, the SGLD chains and the reward episodes")


def _mean_loss(model, loss_fn, batches) -> float:
    import torch

    with torch.no_grad():
        return float(np.mean([float(loss_fn(model, b)) for b in batches]))


def _ceiling(init_loss: float, n_classes: int, kl: bool) -> float:
    """Divergence ceiling of a cross-entropy: an excess beyond the loss of a uniform guess."""
    return math.log(n_classes) + (0.0 if kl else init_loss)


class _Phase:
    """One phase's fixed loss, calibration and estimates, with what gets logged."""

    def __init__(self, name: str, params: LLCParams, nbeta: float, n_classes: int, kl: bool = False):

        self.name, self.params, self.n_classes, self.kl = name, params, n_classes, kl
        self.base = SGLDSettings(
            lr=params.lrs[0],
            localization=params.localizations[0],
            nbeta=nbeta,
            num_chains=params.num_chains,
            num_draws=params.num_draws,
            num_burnin=params.num_burnin,
            seed=params.seed,
        )
        self.rows: list[dict] = []
        self.chains: list[dict] = []
        self.calibration: list[dict] = []
        self.seconds: list[float] = []
        self.frozen = self.base  # until calibrate() chooses

    def _chains(self, checkpoint: int, res) -> None:
        c, d = res.loss_traces.shape
        self.chains.append(
            {
                "phase": [self.name] * (c * d),
                "checkpoint": [checkpoint] * (c * d),
                "lr": [res.settings.lr] * (c * d),
                "localization": [res.settings.localization] * (c * d),
                "chain": np.repeat(np.arange(c), d).tolist(),
                "draw": np.tile(np.arange(d), c).tolist(),
                "loss": res.loss_traces.ravel().tolist(),
                "excess": res.excess_traces.ravel().tolist(),
            }
        )

    def calibrate(self, model, loss_fn, batches, checkpoint: int) -> None:

        t0 = time.perf_counter()
        init = _mean_loss(model, loss_fn, batches)
        cal = calibrate(
            model,
            loss_fn,
            batches,
            self.base,
            self.params.lrs,
            self.params.localizations,
            ceiling=_ceiling(init, self.n_classes, self.kl),
        )
        self.seconds.append((time.perf_counter() - t0) / len(cal.table))
        self.frozen = cal.settings
        for row in cal.table:
            self.calibration.append({"phase": self.name, "checkpoint": checkpoint, **row})
        for res in cal.results.values():
            self._chains(checkpoint, res)

    def estimate(self, model, loss_fn, batches, checkpoint: int, extra: dict) -> None:

        t0 = time.perf_counter()
        res = estimate_llc(model, loss_fn, batches, self.frozen)
        self.seconds.append(time.perf_counter() - t0)
        dg = diagnose(res, ceiling=_ceiling(res.init_loss, self.n_classes, self.kl))
        self.rows.append(
            {
                "checkpoint": checkpoint,
                "llc_mean": res.mean,
                "llc_std": res.std,
                **extra,
                **{k: dg[k] for k in ("healthy", "diverged", "spiked", "settled", "below_init")},
            }
        )
        self._chains(checkpoint, res)

    def transitions(self, curve: str) -> list[int]:

        rows = self.rows if curve != "llc" else [r for r in self.rows if r["healthy"]]
        key = "llc_mean" if curve == "llc" else curve
        steps, values = [r["checkpoint"] for r in rows], [r[key] for r in rows]
        return locate_transitions(steps, values, self.params.transition_k, log_steps=self.name == "pretrain")

    def metrics(self) -> dict[str, float]:
        final = self.rows[-1]
        return {
            f"{self.name}/final": final["llc_mean"],
            f"{self.name}/final_std": final["llc_std"],
            f"{self.name}/final_healthy": float(final["healthy"]),
            f"{self.name}/unhealthy": float(sum(not r["healthy"] for r in self.rows)),
            f"calibration/{self.name}/lr": self.frozen.lr,
            f"calibration/{self.name}/localization": self.frozen.localization,
            f"calibration/{self.name}/nbeta": self.frozen.nbeta,
            f"calibration/{self.name}/healthy_points": float(sum(r["healthy"] for r in self.calibration)),
        }


def _pretrain_phase(artifacts, params: LLCParams) -> _Phase:

    steps = artifacts.pretrain_steps()
    if not steps:
        raise FileNotFoundError(f"{artifacts}: no pretraining checkpoints (artifacts.pretrain_checkpoints: 0?)")
    final = artifacts.pretrain_checkpoint(steps[-1])
    process = artifacts.process()
    batches = losses.next_token_batches(process, params.n_seq, final.cfg.n_ctx, params.batch_size, params.seed)
    n_terms = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)  # tokens predicted
    phase = _Phase("pretrain", params, params.nbeta or default_nbeta(n_terms), process.vocab_size)
    phase.calibrate(final, losses.next_token_loss, batches, steps[-1])
    for step in steps:
        model = final if step == steps[-1] else artifacts.pretrain_checkpoint(step)
        loss = _mean_loss(model, losses.next_token_loss, batches)
        phase.estimate(model, losses.next_token_loss, batches, step, {"loss": loss})
    return phase


def _reward(model, env_config: dict, n: int, seed: int) -> float:

    return float(collect(model, env_config, n, seed=seed)["rewards"].mean()) if n else math.nan


def _rl_phase(artifacts, params: LLCParams) -> _Phase:

    env = artifacts.env_config
    tokens = env["action_tokens"]
    buffer = losses.action_batches(artifacts.rollouts(), artifacts.stream().vocab_size, tokens, params.batch_size)
    n_terms = sum(len(b[0]) for b in buffer)  # windows, one action each
    kl = params.rl_loss == "self_distill"
    phase = _Phase("rl", params, params.nbeta or default_nbeta(n_terms), len(tokens), kl=kl)
    loss_fn = losses.self_distill_kl if kl else losses.action_nll

    def data(model):
        return losses.distill_batches(model, buffer) if kl else buffer

    iterations = [0, *artifacts.ppo_iterations()]
    final = artifacts.policy(iterations[-1])
    phase.calibrate(final, loss_fn, data(final), iterations[-1])
    for it in iterations:
        model = final if it == iterations[-1] else artifacts.policy(it)
        nll = _mean_loss(model, losses.action_nll, buffer)
        reward = _reward(model, env, params.reward_episodes, params.seed)  # same episodes' seeds for every checkpoint
        phase.estimate(model, loss_fn, data(model), it, {"nll": nll, "reward": reward})
    return phase


def _table(rows: list[dict], rename: dict[str, str] | None = None) -> pa.Table:
    cols = {(rename or {}).get(k, k): [r[k] for r in rows] for k in rows[0]}
    return pa.table(cols)


@analysis("llc", params=LLCParams, needs=("pretrain_checkpoints", "ppo_checkpoints", "rollouts", "env"))
def llc(artifacts, params: LLCParams) -> AnalysisResult:
    """LLC (SGLD, devinterp) of pretraining and RL checkpoints, calibrated once per phase, transitions marked."""
    import torch

    with torch.enable_grad():  # SGLD needs gradients whatever the caller's mode
        phases = {"pretrain": _pretrain_phase(artifacts, params), "rl": _rl_phase(artifacts, params)}
    curves = {"pretrain": "loss", "rl": "reward"}
    metrics: dict[str, float] = {}
    transitions: list[dict] = []
    marks: dict[str, dict[str, list[int]]] = {}
    for name, phase in phases.items():
        metrics.update(phase.metrics())
        marks[name] = {}
        for curve in ("llc", curves[name]):
            found = phase.transitions(curve)
            marks[name][curve] = found
            metrics[f"{name}/transitions_{curve}"] = float(len(found))
            transitions += [{"phase": name, "curve": curve, "checkpoint": s} for s in found]
    seconds = [s for p in phases.values() for s in p.seconds]
    metrics["seconds_per_estimate"] = float(np.mean(seconds))

    calib = [r for p in phases.values() for r in p.calibration]
    tables = {
        "llc_pretrain": _table(phases["pretrain"].rows, {"checkpoint": "step"}),
        "llc_rl": _table(phases["rl"].rows, {"checkpoint": "iteration"}),
        "llc_calibration": _table(calib),
        "llc_chains": pa.concat_tables([pa.table(c) for p in phases.values() for c in p.chains]),
        "llc_transitions": pa.Table.from_pylist(transitions, schema=TRANSITIONS),
    }
    fig = llc_figure(phases["pretrain"].rows, phases["rl"].rows, marks, params.rl_loss)
    return AnalysisResult(metrics=metrics, tables=tables, figures={"llc_over_training": fig})


def llc_figure(pretrain: list[dict], rl: list[dict], marks: dict[str, dict[str, list[int]]], rl_loss: str):
    """Two columns (pretraining, RL): loss / reward on top, LLC with its chain spread below.

    Hollow markers: estimates whose chains were not healthy. Vertical lines: transitions located
    on the LLC (red, dashed) and on the loss or reward (grey, dotted).
    """
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    fig, axs = plt.subplots(2, 2, figsize=(11, 6), sharex="col")
    panels = (
        (0, pretrain, "loss", "next-token loss (nats)", "pretraining step", "pretrain"),
        (1, rl, "reward", "reward per step", "PPO iteration", "rl"),
    )
    for col, rows, key, label, xlabel, phase in panels:
        x = np.array([r["checkpoint"] for r in rows], dtype=float)
        top, bottom = axs[0, col], axs[1, col]
        top.plot(x, [r[key] for r in rows], "o-", color="C0", ms=4)
        top.set_ylabel(label)
        mean = np.array([r["llc_mean"] for r in rows])
        std = np.array([r["llc_std"] for r in rows])
        ok = np.array([bool(r["healthy"]) for r in rows])
        bottom.plot(x, mean, "-", color="C1", lw=1)
        bottom.fill_between(x, mean - std, mean + std, color="C1", alpha=0.25, lw=0)
        bottom.errorbar(x[ok], mean[ok], std[ok], fmt="o", color="C1", ms=5, capsize=2, label="healthy")
        bottom.errorbar(
            x[~ok], mean[~ok], std[~ok], fmt="o", mfc="white", color="C1", ms=5, capsize=2, label="not healthy"
        )
        bottom.axhline(0, color="0.7", lw=0.8)
        bottom.set_ylabel("LLC (mean ± chain std)" if phase == "pretrain" else f"LLC ({rl_loss})")
        bottom.set_xlabel(xlabel)
        if phase == "pretrain":
            bottom.set_xscale("symlog", linthresh=1)
            bottom.set_xlim(0, 1.5 * max(x.max(), 1))
        if np.nanmin(mean) < 0 < np.nanmax(mean):  # chains below their start: keep the healthy range legible
            bottom.set_yscale("symlog", linthresh=10)
        for ax in (top, bottom):
            for s in marks[phase].get("llc", []):
                ax.axvline(s, color="C3", ls="--", lw=1)
            for s in marks[phase].get(key, []):
                ax.axvline(s, color="0.5", ls=":", lw=1)
        bottom.legend(fontsize=8, loc="best")
    axs[0, 0].set_title("pretraining")
    axs[0, 1].set_title("RL")
    fig.suptitle("LLC over training (red dashed: LLC transitions; grey dotted: loss / reward transitions)", fontsize=10)
    fig.tight_layout()
    return fig
