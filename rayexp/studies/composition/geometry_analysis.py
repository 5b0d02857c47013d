"""Belief geometry through RL, one trial: probes over PPO checkpoints and causal ablations.

docs/design.md §4.6 (issue 21): does RL build a joint belief representation or read the factored
ones, and does the policy causally use them? This adapter samples ``n_seq`` fresh sequences of the
RL stream (seeded, the same for every trial), their exact beliefs, each factor's belief, the joint
belief (outer product) and its product part (:func:`.geometry.product_part`), and for the pre-RL
model, every stored PPO checkpoint and the post-RL model, at every residual layer:

- ``r2/{factor0,factor1,joint,joint_only}``: held-out R^2 of a ridge probe (fitted on half the
  sequences, scored on the other half); ``joint_only`` is the product part of the joint belief: a
  factored representation predicts none of it linearly;
- ``skill/{...}``: ``1 - MSE / MSE_random_init`` of the same probe (the project's rule: a probe's
  skill is against the same architecture at initialisation);
- ``dim95``: principal components of the joint probe's held-out predictions holding 95 % of their
  variance, against ``dims/factored`` = sum(S_i - 1) and ``dims/joint`` = prod(S_i) - 1;
- ``overlap``: mean squared cosine between the two factors' belief subspaces (each the span of the
  features' covariance with that factor's belief), ``overlap_random``: chance for two random
  subspaces of those dimensions.

Keys ``curve/it{iteration}/{layer}/...`` (iteration 0 is the pretrained model) and the same under
``pre/`` and ``post/``. Layers: ``embed`` (block 0's input), ``block{i}`` (its output), ``final``
(``ln_final``, what the unembedding reads).

Causal use, pre and post, at every residual layer (``ablation/{pre,post}/{layer}/{cond}/...``):
each factor's belief subspace is erased (mean-replaced, :func:`.geometry.erase`; the subspace is the
span of the features' covariance with the factor's belief, so no affine probe reads the factor
afterwards), conditions ``factor0``, ``factor1``, ``both``, and random subspaces of the same
dimensions (``random0``, ``random1``, ``random_both``; mean over ``n_random`` draws). Two more ask
whether the policy reads a *joint* direction: ``joint_only`` erases the subspace through which an
affine probe reads the joint-only part outside the factor subspaces (:func:`.geometry.joint_only_basis`;
the factor subspaces stay), ``joint`` erases that and both factors' subspaces together (everything an
affine probe of the joint belief reads), against ``random_joint_only`` and ``random_joint``.
``beyond_factors`` erases what an affine probe reads of the joint-only part beyond the two factor
probes' outputs, which it leaves unchanged row by row (:func:`.geometry.beyond_probes_basis`; the
factor probes are the ridge probes of this layer's training half), against
``random_beyond_factors``, random subspaces of its dimension orthogonal to those probes.
Both joint erasures also have a *placebo* control (``placebo_joint_only``, ``placebo_beyond_factors``):
the same construction with the target replaced by Gaussian noise of the same rank. The span of the
features' covariance with a target they do not hold leans on their high-variance directions, which
carry what a policy reads; a uniformly random subspace mostly misses those, so it understates what
erasing "a covariance span" costs by itself. And a *re-paired* control (``repaired_joint_only``,
``repaired_beyond_factors``): the same construction fed the real joint-only target recomputed with
one factor's beliefs from another sequence at the same position (:func:`.geometry.repaired_product_part`;
the draws alternate which factor), the interaction null: features that hold the factors separately,
however nonlinearly, have no covariance with it, just as with the real target, and its sampling
noise has the real target's distribution rather than a Gaussian's. ``beyond_factor_poly`` (with
its re-paired control ``repaired_beyond_factor_poly``) is ``beyond_factors`` held to wider factor
probes, of every degree-``poly_degree`` monomial of each factor's belief
(:func:`.geometry_ablation.factor_probe_weights`): it keeps each factor's polynomial read-outs, not
only the linear probe's. ``beyond_factor_emitter`` (and ``repaired_beyond_factor_emitter``) holds it to
probes of each factor's belief within each phase: the belief times the one-hot of the factor that
emitted the current token (:func:`.geometry.gated`, :func:`.geometry_ablation.emitter_gate`), so a
read-out that differs by which factor just spoke is kept; absent where every token carries every
factor (a product stream). Real and re-paired targets are both the training half's own product part
(:func:`.geometry_ablation.joint_only_on`). For each: the
exact expected and greedy reward (from beliefs, on the task's reward), the interaction eta
(:mod:`.interaction`), ``drop`` (expected reward lost) and ``removed`` = the share of the reward above
uniform guessing the ablation removes (NaN for a policy earning < 0.01 above it, e.g. the null). ``ablation/{model}/none/...`` is the unablated policy.
These are scored on all ``n_seq`` sequences, half of which the bases were fitted on;
``expected_test`` / ``removed_test`` score the held-out half alone (the contrast table's
``scored: held_out`` rows), so an erasure that fits its own sample's noise shows up as a difference.
``{layer}/{cond}/left_{factor0,factor1,joint_only}`` (non-random conditions) check that an erasure
did what it says: held-out R^2 of probes refitted on the erased features of that layer (basis and
mean from the training half, as in the ablation; fitted on one half, an erasure need not be perfect
on the other). Ceilings (optimum, per-phase single
factor, last-k lookups) come from :func:`.stream_setup.ceiling_values`.

Figures: ``belief_simplex`` (each factor's belief, true and as the final layer's probe predicts it
before and after RL) and ``geometry_curve`` (skills, dimension and overlap over checkpoints).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.probes import FINAL, collect_activations, layer_name, residual_layers
from rayexp.ridge import fit_probes
from rayexp.studies.composition import geometry as geo
from rayexp.studies.composition import representation as rep
from rayexp.studies.composition.geometry_ablation import ablations
from rayexp.studies.composition.stream_setup import ceiling_values, make_setup, task_of

TARGETS = ("factor0", "factor1", "joint", "joint_only")


class GeometryParams(Params):
    n_seq: int = Field(1000, ge=20, le=1_000_000, description="fresh sequences of the RL stream")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seeds the sequences, the split, the 2x2 partners and the random subspaces"
    )
    alpha: float = Field(1e-3, gt=0, description="ridge penalty of the probes (relative to the features' scale)")
    n_random: int = Field(2, ge=1, le=50, description="random subspaces per control condition")
    poly_degree: int = Field(
        2, ge=2, le=4, description="degree of the per-factor polynomial probes that beyond_factor_poly keeps"
    )
    lookup_k: list[Annotated[int, Field(ge=1, le=8)]] = Field(
        default_factory=lambda: [2, 4, 6], description="last-k-token lookup ceilings reported beside the geometry"
    )
    checkpoints: bool = Field(True, description="probe every stored PPO checkpoint, not only pre and post")
    ablate: bool = Field(True, description="run the causal ablations (pre and post, every residual layer)")


def belief_targets(hmm, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Probe targets (N, L, K): each factor's exact belief, the joint and its product part."""
    layout = hmm.layout
    if layout is None or layout.exclusive or layout.n_factors != 2:
        raise ValueError("geometry needs a stream of exactly two factors that both run (product or interleave)")
    fbs = [np.asarray(b, dtype=np.float64) for b in hmm.factor_beliefs(hmm.beliefs(tokens))]
    joint = rep.outer_beliefs(fbs)
    return {"factor0": fbs[0], "factor1": fbs[1], "joint": joint, "joint_only": geo.product_part(fbs, joint)}


def layer_geometry(
    x: np.ndarray, x_rand: np.ndarray, y: dict, train, test, alpha: float, preds: dict | None = None
) -> dict[str, float]:
    """Probe R^2 and skill per target, dimension and factor overlap from one layer's features (N, L, D);
    ``preds``, if given, receives each target's held-out predictions (the simplex figure draws them)."""
    ytr, yte = {t: v[train] for t, v in y.items()}, {t: v[test] for t, v in y.items()}
    fits = fit_probes(x[train], ytr, x[test], yte, alpha)
    if preds is not None:
        preds.update({t: f.pred for t, f in fits.items()})
    ctrl = fit_probes(x_rand[train], ytr, x_rand[test], yte, alpha)
    out: dict[str, float] = {}
    for t in TARGETS:
        out[f"r2/{t}"] = geo.held_out_r2(yte[t], fits[t].pred)
        c = ctrl[t].errors.sum()
        out[f"skill/{t}"] = float(1.0 - fits[t].errors.sum() / c) if c > 0 else float("nan")
    out["dim95"] = float(rep.components_for(rep.explained_variance(fits["joint"].pred), 0.95))
    q0, q1 = (geo.erasure_basis(x[train], y[f"factor{i}"][train]) for i in (0, 1))
    out["overlap"] = rep.subspace_overlap(q0, q1)
    out["overlap_random"] = rep.random_overlap(x.shape[-1], q0.shape[1], q1.shape[1])
    return out


@analysis(
    "geometry", params=GeometryParams, needs=("model_before", "model_after", "random_init", "env", "ppo_checkpoints")
)
def geometry(artifacts, params: GeometryParams) -> AnalysisResult:
    """Belief geometry over PPO checkpoints (factor/joint probes, dimension, overlap) and causal ablations."""
    env = artifacts.env_config
    hmm = artifacts.stream()
    reward, length = task_of(env, hmm)
    pre = artifacts.model_before()
    length = min(length, int(pre.cfg.n_ctx))
    s = make_setup(hmm, reward, length, params.n_seq, params.seed)
    y = belief_targets(hmm, s.tokens)
    hooks = [*residual_layers(pre.hook_names), FINAL]
    x_rand = collect_activations(artifacts.random_init(), s.tokens, hooks)

    its = artifacts.ppo_iterations() if params.checkpoints else artifacts.ppo_iterations()[-1:]
    models = [(0, pre)] + [(it, artifacts.policy(it)) for it in its]
    metrics: dict[str, float] = {}
    fac, joint = rep.belief_dims([y["factor0"].shape[-1], y["factor1"].shape[-1]])
    metrics |= {"dims/factored": float(fac), "dims/joint": float(joint)}
    metrics["dims/exact_joint_dim95"] = float(rep.components_for(rep.explained_variance(y["joint"][s.test]), 0.95))
    ceil = ceiling_values(s, params.lookup_k)
    metrics |= {f"ceiling/{k}": float(np.nanmean(v)) for k, v in ceil.items()}
    kept_acts, preds = {}, {}
    for i, (it, model) in enumerate(models):
        acts = collect_activations(model, s.tokens, hooks)
        label = "pre" if i == 0 else ("post" if i == len(models) - 1 else None)
        for h in hooks:
            kept = {} if label and h == FINAL else None
            g = layer_geometry(acts[h], x_rand[h], y, s.train, s.test, params.alpha, kept)
            for k, v in g.items():
                metrics[f"curve/it{it}/{layer_name(h)}/{k}"] = v
                if label:
                    metrics[f"{label}/{layer_name(h)}/{k}"] = v
            if kept is not None:  # ridge is separable over targets: these are the factor probes' own predictions
                preds[label] = {f: kept[f] for f in ("factor0", "factor1")}
        if label:
            kept_acts[label] = (model, acts)
    if params.ablate:
        floor = float(np.nanmean(ceil["uniform"]))
        floor_test = float(np.nanmean(ceil["uniform"][s.test]))
        for j, label in enumerate(("pre", "post")):
            model, acts = kept_acts[label]
            ab = ablations(
                model,
                acts,
                y,
                s,
                floor,
                params.n_random,
                params.seed * 7919 + j,
                params.alpha,
                floor_test,
                params.poly_degree,
            )
            metrics |= {f"ablation/{label}/{k}": v for k, v in ab.items()}
    figures = {"geometry_curve": curve_figure(metrics, [it for it, _ in models])}
    if y["factor0"].shape[-1] == 3 and y["factor1"].shape[-1] == 3:
        figures["belief_simplex"] = simplex_figure({f: y[f][s.test] for f in ("factor0", "factor1")}, preds)
    return AnalysisResult(metrics=metrics, figures=figures)


def simplex_figure(true: dict[str, np.ndarray], preds: dict[str, dict[str, np.ndarray]], max_points: int = 4000):
    """Each factor's belief simplex: exact beliefs, and the final layer's probe predictions before and
    after RL, each point coloured by its exact belief (RGB = the three states' probabilities)."""
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    corners = geo.simplex_xy(np.eye(3))
    for r, f in enumerate(("factor0", "factor1")):
        b = true[f].reshape(-1, 3)
        pick = np.random.default_rng(0).permutation(len(b))[:max_points]
        colour = np.clip(b[pick], 0, 1)
        panels = (
            ("exact", b),
            ("pre-RL probe", preds["pre"][f].reshape(-1, 3)),
            ("post-RL probe", preds["post"][f].reshape(-1, 3)),
        )
        for c, (title, pts) in enumerate(panels):
            ax = axes[r, c]
            xy = geo.simplex_xy(pts[pick])
            ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=2, alpha=0.6, linewidths=0)
            ax.plot(*np.vstack([corners, corners[:1]]).T, "k-", lw=0.6)
            ax.set_title(f"{f}: {title}", fontsize=9)
            ax.set_aspect("equal")
            ax.axis("off")
    fig.tight_layout()
    return fig


def curve_figure(metrics: dict[str, float], iterations: list[int], layer: str = "final"):
    """Probe skill (each factor, joint-only R^2), joint dimension and factor overlap over PPO iterations."""
    from rayexp.figures import plt

    def series(key: str) -> list[float]:
        return [metrics.get(f"curve/it{it}/{layer}/{key}", float("nan")) for it in iterations]

    fig, (ax_s, ax_d, ax_o) = plt.subplots(1, 3, figsize=(11, 3.2))
    for key in ("skill/factor0", "skill/factor1", "r2/joint_only"):
        ax_s.plot(iterations, series(key), "o-", label=key)
    ax_s.axhline(0, color="k", lw=0.5)
    ax_s.set(xlabel="PPO iteration", title=f"probes ({layer})")
    ax_s.legend(fontsize=7)
    ax_d.plot(iterations, series("dim95"), "o-", color="k")
    for key, style in (("dims/factored", "--"), ("dims/joint", ":")):
        ax_d.axhline(metrics[key], color="tab:red", ls=style, lw=0.8, label=key.split("/")[1])
    ax_d.set(xlabel="PPO iteration", title="joint probe: components for 95 %")
    ax_d.legend(fontsize=7)
    ax_o.plot(iterations, series("overlap"), "o-", label="factor subspaces")
    ax_o.plot(iterations, series("overlap_random"), "k:", label="random")
    ax_o.set(xlabel="PPO iteration", title="overlap of the factors' subspaces", ylim=(0, 1.05))
    ax_o.legend(fontsize=7)
    fig.tight_layout()
    return fig
