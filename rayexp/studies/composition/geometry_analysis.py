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
noise has the real target's distribution rather than a Gaussian's. Real and re-paired targets are
both the training half's own product part (:func:`joint_only_on`). For each: the
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
factor, last-k lookups) come from :func:`.composition_analysis.ceiling_values`.

Figures: ``belief_simplex`` (each factor's belief, true and as the final layer's probe predicts it
before and after RL) and ``geometry_curve`` (skills, dimension and overlap over checkpoints).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from envs.rewards import make_reward
from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.probes import collect_activations, residual_layers
from rayexp.ridge import fit_probes, ridge_fit
from rayexp.studies.composition import geometry as geo
from rayexp.studies.composition import representation as rep
from rayexp.studies.composition.composition_analysis import ceiling_values, make_setup, policy_values

FINAL = "ln_final.hook_normalized"
TARGETS = ("factor0", "factor1", "joint", "joint_only")
CHECKED = ("factor0", "factor1", "joint_only")  # probes refitted after each non-random erasure


class GeometryParams(Params):
    n_seq: int = Field(1000, ge=20, le=1_000_000, description="fresh sequences of the RL stream")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seeds the sequences, the split, the 2x2 partners and the random subspaces"
    )
    alpha: float = Field(1e-3, gt=0, description="ridge penalty of the probes (relative to the features' scale)")
    n_random: int = Field(2, ge=1, le=50, description="random subspaces per control condition")
    lookup_k: list[Annotated[int, Field(ge=1, le=8)]] = Field(
        default_factory=lambda: [2, 4, 6], description="last-k-token lookup ceilings reported beside the geometry"
    )
    checkpoints: bool = Field(True, description="probe every stored PPO checkpoint, not only pre and post")
    ablate: bool = Field(True, description="run the causal ablations (pre and post, every residual layer)")


def layer_name(hook: str) -> str:
    if hook == FINAL:
        return "final"
    if hook.endswith("hook_resid_pre"):
        return "embed"
    return f"block{hook.split('.')[1]}"


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


def hooked_forward(model, hook: str | None, Q: np.ndarray | None, mu: np.ndarray | None, batch_size: int = 4096):
    """A :data:`.composition_analysis.Forward` of ``model`` with span(Q) mean-replaced at ``hook``."""
    import torch

    device = next(model.parameters()).device
    hooks = {}
    if hook is not None and Q is not None and Q.shape[1] > 0:
        Qt = torch.as_tensor(Q, dtype=torch.float32, device=device)
        mut = torch.as_tensor(mu, dtype=torch.float32, device=device)

        def erase(x: torch.Tensor) -> torch.Tensor:
            return x - ((x.float() - mut) @ Qt @ Qt.T).to(x.dtype)

        hooks[hook] = erase

    def run(tokens: np.ndarray, with_features: bool):
        out = []
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                x = torch.as_tensor(tokens[start : start + batch_size], dtype=torch.long, device=device)
                out.append(model.run_with_hooks(x, hooks) if hooks else model(x))
        return torch.cat(out).double().cpu().numpy(), {}

    return run


def _policy_summary(s, forward, floor: float) -> dict[str, float]:
    v = policy_values(s, forward)
    out = {"expected": float(v["expected"].mean()), "greedy": float(v["greedy"].mean())}
    # the erasures are fitted on the training half: the same reward on the held-out half alone
    out["expected_test"] = float(v["expected"][s.test].mean())
    if "ia_num" in v:
        den = float(v["ia_den"].sum())
        out["interaction"] = float(v["ia_num"].sum()) / den if den > 0 else float("nan")
    out["floor"] = floor
    return out


def erased_probes(x: np.ndarray, Q: np.ndarray, mu: np.ndarray, y: dict, s, alpha: float) -> dict[str, float]:
    """Held-out R^2 of each :data:`CHECKED` target's probe refitted on features with span(Q) erased.
    The joint-only target here is ``y["joint_only"]`` (fitted on all sequences), not the training half's
    own (:func:`joint_only_on`) the bases were fitted to: they differ by an affine part of the factors
    that a refitted probe reads through the factors left in place, about 0.002 of its variance."""
    xe = geo.erase(x, Q, mu)
    ytr, yte = {t: y[t][s.train] for t in CHECKED}, {t: y[t][s.test] for t in CHECKED}
    fits = fit_probes(xe[s.train], ytr, xe[s.test], yte, alpha)
    return {f"left_{t}": geo.held_out_r2(yte[t], fits[t].pred) for t in CHECKED}


def joint_only_on(y: dict, rows) -> np.ndarray:
    """The joint-only target of ``rows`` (their sequences), its affine map of the factors fitted on
    those rows alone: what the ablations' bases are fitted to, built as the re-paired control's is.
    ``y["joint_only"]`` is fitted on every sequence, so on half of them it keeps a small affine part of
    the factor beliefs (4.3 % of its norm on the Mess3 interleave at n_seq 1000, a 500-sequence
    training half), which a basis fitted there would erase beside the joint-only part."""
    return geo.product_part([y["factor0"][rows], y["factor1"][rows]], y["joint"][rows])


def factor_probe_weights(xt: np.ndarray, y: dict, train, alpha: float) -> np.ndarray:
    """(D, S0 + S1): both factor probes' ridge weights, fitted on the training half's features ``xt``
    (the probes whose outputs the ``beyond_factors`` erasure leaves unchanged)."""
    rows = xt.reshape(-1, xt.shape[-1])
    target = np.concatenate([y["factor0"][train], y["factor1"][train]], axis=-1)
    return ridge_fit(rows, target.reshape(len(rows), -1), alpha).coef


def ablations(
    model,
    acts: dict[str, np.ndarray],
    y: dict,
    s,
    floor: float,
    n_random: int,
    seed: int,
    alpha: float = 1e-3,
    floor_test: float | None = None,
) -> dict:
    """``{layer}/{cond}/{expected,greedy,interaction,removed,drop,dim}``, ``{layer}/{cond}/left_*`` for
    the non-random conditions, and ``none/...`` for one model. ``expected_test`` and ``removed_test``:
    the same on the held-out half of the sequences only (``floor_test`` its uniform floor; default
    ``floor``), where no basis was fitted."""
    floor_test = floor if floor_test is None else floor_test
    rng = np.random.default_rng(seed)
    # the joint conditions draw from their own stream, so that adding them left the factor
    # conditions' random subspaces, and every number reported before, as they were
    rng_joint = np.random.default_rng([seed, 1])
    rng_beyond = np.random.default_rng([seed, 2])
    rng_placebo = np.random.default_rng([seed, 3])
    rng_repair = np.random.default_rng([seed, 4])
    none = _policy_summary(s, hooked_forward(model, None, None, None), floor)
    out = {f"none/{k}": v for k, v in none.items() if k != "floor"}
    target = joint_only_on(y, s.train)  # a property of the stream: the same at every layer
    for hook, x in acts.items():
        if hook == FINAL:  # ln_final re-normalises: erase in the residual stream it reads instead
            continue
        xt = x[s.train]
        mu = xt.reshape(-1, xt.shape[-1]).mean(0)
        q = [geo.erasure_basis(xt, y[f"factor{i}"][s.train]) for i in (0, 1)]
        both = np.linalg.qr(np.concatenate(q, axis=1))[0]
        jo = geo.joint_only_basis(xt, target, both)
        joint = np.concatenate([both, jo], axis=1)  # orthonormal: jo is orthogonal to span(both)
        W = factor_probe_weights(xt, y, s.train, alpha)
        beyond = geo.beyond_probes_basis(xt, target, W)
        d = x.shape[-1]
        bases = {"factor0": [q[0]], "factor1": [q[1]], "both": [both], "joint_only": [jo], "joint": [joint]}
        bases["beyond_factors"] = [beyond]
        for name, k in (("random0", q[0]), ("random1", q[1]), ("random_both", both)):
            bases[name] = [geo.random_basis(d, k.shape[1], rng) for _ in range(n_random)]
        for name, k in (("random_joint_only", jo), ("random_joint", joint)):
            bases[name] = [geo.random_basis(d, k.shape[1], rng_joint) for _ in range(n_random)]
        k = beyond.shape[1]
        bases["random_beyond_factors"] = [geo.random_basis_outside(d, k, W, rng_beyond) for _ in range(n_random)]
        # placebo targets: the same construction fed noise, whose covariance with the features leans on
        # their high-variance directions just as a target the features do not hold does
        rows = len(xt.reshape(-1, d))
        noise = [rng_placebo.standard_normal((rows, max(jo.shape[1], beyond.shape[1], 1))) for _ in range(n_random)]
        bases["placebo_joint_only"] = [geo.joint_only_basis(xt, g[:, : jo.shape[1]], both) for g in noise]
        bases["placebo_beyond_factors"] = [geo.beyond_probes_basis(xt, g[:, : beyond.shape[1]], W) for g in noise]
        # re-paired targets: the real joint-only part with the factors' pairing broken, each draw
        # re-pairing the other factor in turn (the margins, heavy tails and position structure stay)
        fbs = [y["factor0"][s.train], y["factor1"][s.train]]
        repaired = [
            geo.repaired_product_part(fbs, r % 2, geo.derangement(len(xt), rng_repair)).reshape(rows, -1)
            for r in range(n_random)
        ]
        bases["repaired_joint_only"] = [geo.joint_only_basis(xt, z, both) for z in repaired]
        bases["repaired_beyond_factors"] = [geo.beyond_probes_basis(xt, z, W) for z in repaired]
        layer = layer_name(hook)
        for cond, qs in bases.items():
            runs = [_policy_summary(s, hooked_forward(model, hook, Q, mu), floor) for Q in qs]
            for k in ("expected", "greedy", "interaction"):
                vals = [r.get(k, float("nan")) for r in runs]
                out[f"{layer}/{cond}/{k}"] = float(np.mean(vals))
            out[f"{layer}/{cond}/removed"] = geo.removed_share(none["expected"], out[f"{layer}/{cond}/expected"], floor)
            out[f"{layer}/{cond}/drop"] = none["expected"] - out[f"{layer}/{cond}/expected"]
            out[f"{layer}/{cond}/expected_test"] = float(np.mean([r["expected_test"] for r in runs]))
            out[f"{layer}/{cond}/removed_test"] = geo.removed_share(
                none["expected_test"], out[f"{layer}/{cond}/expected_test"], floor_test
            )
            out[f"{layer}/{cond}/dim"] = float(qs[0].shape[1])
            if not cond.startswith("random"):
                left = erased_probes(x, qs[0], mu, y, s, alpha)
                out |= {f"{layer}/{cond}/{k}": v for k, v in left.items()}
    return out


@analysis(
    "geometry", params=GeometryParams, needs=("model_before", "model_after", "random_init", "env", "ppo_checkpoints")
)
def geometry(artifacts, params: GeometryParams) -> AnalysisResult:
    """Belief geometry over PPO checkpoints (factor/joint probes, dimension, overlap) and causal ablations."""
    env = artifacts.env_config
    hmm = artifacts.stream()
    reward = make_reward(env["reward"], hmm, env.get("reward_params") or {}, env.get("action_tokens"))
    pre = artifacts.model_before()
    length = min(int(env["context"]), int(env.get("episode_len") or env["context"]), int(pre.cfg.n_ctx))
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
            ab = ablations(model, acts, y, s, floor, params.n_random, params.seed * 7919 + j, params.alpha, floor_test)
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
