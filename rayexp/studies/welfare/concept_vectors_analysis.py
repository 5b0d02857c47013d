"""Reward and punishment concept vectors in one trial of the outcome env (research note 004).

The RL stream is an ``outcome`` process (:mod:`envs.outcome`): base token, action, outcome token
(rewarded / punished / neutral), repeated. Contexts come from that process itself, i.e. with
uniformly random actions (off-policy, the same for every model), and are balanced over outcomes
(:func:`rayexp.studies.welfare.concepts.balanced`). The activation read is the one at the outcome token (the
final token of a context that just ended in that outcome), at each residual-stream hook.

Metrics (``{model}``: ``random_init``, ``pre`` (the model PPO started from), ``post``):

- ``cos/{model}/{hook}``: cos(v_R, v_P); ``null/{model}/{hook}/{mean,q025,q975}`` the same with
  outcome labels shuffled, and ``null/{model}/{hook}/p_below``: the share of shuffles at or below
  the observed cosine (small: more antiparallel than labels that carry nothing);
- ``align/{hook}/{R,P}``: cos(v_R pre, v_R post) and cos(v_P pre, v_P post): did RL keep the
  directions it found?; read against ``split_half/{pre,post}/{hook}/{R,P}``, the cosine between
  two estimates of one model's vector from disjoint halves of the sequences (what an unchanged but
  noisily estimated direction gives, at half the data), and ``align_random/{hook}/{R,P}``: the same
  cosine between the pre-RL model and copies of it moved at random as far as RL moved it
  (``update_norm``; mean over ``n_random`` directions; ``reward/perturbed`` their reward rate): what
  any update of that size does to the directions (docs/design.md §6 rule 6);
- over the stored PPO checkpoints (table ``concept_curve``, figure): cos(v_R, v_P) at each hook,
  the cosine of each checkpoint's v_R / v_P with the final ones, and the exact reward rate;
- steering at ``steer_hook``: adding ``alpha * v`` at every position, for v in {v_P, v_R, a random
  vector of v_P's norm (``n_random`` of them, averaged), one orthogonal to v_P of its norm}, on
  the pre and post models: exact probability of a punished action and reward rate at every
  decision point, averaged (table ``steering``, figure ``steering``);
  ``steer/{model}/{vec}/{punish,reward}_slope``: least-squares slope over the alphas, and
  ``steer/{model}/{vec}/dpunish_max``: the change at the largest alpha;
- the post-RL steering effect against controls on the activation manifold as well as off it
  (issue 22): ``effect`` = |change of P(punished)| at the largest alpha, for v in {v_P, v_R}, next to
  the same for controls *of v's norm*: ``random`` and ``orthogonal`` (to v; off the manifold), ``shuffled``
  (v_P with the outcome labels shuffled: the cosine null's own vectors) and ``group`` (differences
  of means between random groups of activations at the steering hook, any position), each the mean
  of ``n_random`` draws. ``steer/post/{v}/effect``, ``steer/post/{v}/control/{kind}``,
  ``steer/post/{v}/vs_{kind}/{ratio,diff}`` (table ``steering_controls``); the report takes them
  over seeds (geometric-mean ratio and paired difference, Student-t).

``null/{model}/{hook}/p_above``: the share of shuffles at or above the observed cosine (small: more
same-signed than the null), the other side of ``p_below``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from envs.outcome import OutcomeTokens, outcome_probs
from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.policy import action_probs, model_device
from rayexp.probes import residual_layers
from rayexp.studies.welfare import concepts as cv
from rayexp.studies.welfare.figures import curve_figure, layer_figure, steer_figure
from rayexp.weights import param_arrays, random_perturbation, update_norm


class ConceptParams(Params):
    n_seq: int = Field(2000, ge=50, le=1_000_000, description="sequences of the outcome process (random actions)")
    n_perm: int = Field(200, ge=10, le=100_000, description="label shuffles of the null, per model and hook")
    steer_hook: str | None = Field(None, description="hook to steer at; default: the middle residual stream")
    alphas: list[float] = Field(
        default_factory=lambda: [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0],
        min_length=2,
        description="steering strengths, in units of the vector (alpha = 1 adds the whole mean difference)",
    )
    n_random: int = Field(
        5, ge=1, le=100, description="draws of each norm-matched control (random, shuffled-label, random-group)"
    )
    group_size: int | None = Field(
        None, ge=1, description="rows per random group of the group-difference control; default: per-outcome count"
    )
    checkpoints: bool = Field(True, description="also the curve over stored PPO checkpoints")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the sequences, the balancing and the shuffles")


def _hooks(model) -> list[str]:

    return residual_layers(model.hook_names)


class OutcomeContexts:
    """The sampled contexts: outcome positions with labels, decision positions with exact outcome
    probabilities, both from one sample of the outcome process."""

    def __init__(self, hmm, context: int, n_seq: int, seed: int):

        lay = OutcomeTokens.of(hmm)
        rng = np.random.default_rng(seed)
        tokens, _, beliefs = hmm.sample_with_beliefs(n_seq, context, rng)  # (N, K), _, (N, K, S)
        self.tokens = tokens
        out = np.isin(tokens, lay.outcome_tokens)
        self.out_idx = np.nonzero(out)
        labels = lay.outcome_index(tokens[out])
        keep = cv.balanced(labels, rng)
        self.out_idx = (self.out_idx[0][keep], self.out_idx[1][keep])
        self.labels = labels[keep]
        dec = np.isin(tokens, lay.base_tokens)
        self.dec_idx = np.nonzero(dec)
        self.outcome_p = outcome_probs(hmm, beliefs[dec])  # (n_dec, A, 3)
        self.action_tokens = lay.action_tokens

    def acts(self, model, hooks: list[str]) -> dict[str, np.ndarray]:
        """{hook: (n_out, d) float64 activations at the outcome tokens}; the forward pass on the model's device."""
        import torch

        with torch.no_grad():
            x = torch.as_tensor(self.tokens, dtype=torch.long, device=model_device(model))
            _, cache = model.run_with_cache(x, names=hooks)
        return {h: cache[h][self.out_idx].cpu().double().numpy() for h in hooks}

    def all_acts(self, model, hook: str) -> np.ndarray:
        """(N * L, d) activations at ``hook`` at every position of every context."""
        import torch

        with torch.no_grad():
            x = torch.as_tensor(self.tokens, dtype=torch.long, device=model_device(model))
            _, cache = model.run_with_cache(x, names=[hook])
        return cache[hook].reshape(-1, cache[hook].shape[-1]).cpu().double().numpy()

    def rates(self, model, hooks=None) -> tuple[float, float]:
        """Exact (reward rate, punishment probability) over decisions, with optional steering hooks."""
        forward = (lambda x: model.run_with_hooks(x, hooks)) if hooks else None
        pi = action_probs(model, self.tokens, self.action_tokens, forward=forward)[self.dec_idx]  # (n_dec, A)
        reward, punish = cv.outcome_rates(pi, self.outcome_p)
        return float(reward.mean()), float(punish.mean())


@analysis("concept_vectors", params=ConceptParams, needs=("model_before", "model_after", "random_init", "env"))
def concept_vectors(artifacts, params: ConceptParams) -> AnalysisResult:
    """Difference-of-means reward / punishment vectors per layer, their nulls, rotation over RL, steering."""
    import torch

    from models.transformer import add_vector

    hmm = artifacts.stream()
    if hmm.family != "outcome":
        raise ValueError(f"concept_vectors needs an outcome RL stream (task.env: outcome); got {hmm.name!r}")
    data = OutcomeContexts(hmm, int(artifacts.env_config["context"]), params.n_seq, params.seed)
    models = {"random_init": artifacts.random_init(), "pre": artifacts.model_before(), "post": artifacts.model_after()}
    hooks = _hooks(models["post"])
    steer_hook = params.steer_hook or hooks[len(hooks) // 2]
    if steer_hook not in models["post"].hook_names:
        raise ValueError(f"steer_hook {steer_hook!r} is not a hook; valid: {models['post'].hook_names}")
    metrics: dict[str, float] = {}
    vecs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    steer_acts: dict[str, np.ndarray] = {}  # outcome-token activations at the steering hook, per model
    layer_rows: dict[str, list] = {"model": [], "hook": [], "cos": [], "null_q025": [], "null_q975": [], "p_below": []}
    acts_by: dict[str, dict[str, np.ndarray]] = {}
    for name, model in models.items():
        acts = acts_by[name] = data.acts(model, hooks)
        steer_acts[name] = acts[steer_hook]
        vecs[name] = {}
        for h in hooks:
            v_r, v_p = cv.concept_vectors(acts[h], data.labels)
            vecs[name][h] = (v_r, v_p)
            c = cv.cosine(v_r, v_p)
            null = cv.shuffled_cosines(acts[h], data.labels, params.n_perm, seed=params.seed)
            q025, q975 = np.quantile(null, [0.025, 0.975])
            p_below = float((1 + np.sum(null <= c)) / (1 + len(null)))
            metrics[f"null/{name}/{h}/p_above"] = float((1 + np.sum(null >= c)) / (1 + len(null)))
            metrics |= {
                f"cos/{name}/{h}": c,
                f"null/{name}/{h}/mean": float(null.mean()),
                f"null/{name}/{h}/q025": float(q025),
                f"null/{name}/{h}/q975": float(q975),
                f"null/{name}/{h}/p_below": p_below,
            }
            for k, v in zip(layer_rows, (name, h, c, float(q025), float(q975), p_below)):
                layer_rows[k].append(v)
    for h in hooks:
        metrics[f"align/{h}/R"] = cv.cosine(vecs["pre"][h][0], vecs["post"][h][0])
        metrics[f"align/{h}/P"] = cv.cosine(vecs["pre"][h][1], vecs["post"][h][1])
    # rule 6's null for the rotation: the pre-RL model moved as far as RL moved it, at random
    norm = update_norm(param_arrays(models["pre"]), param_arrays(models["post"]))
    base_seed = params.seed * 1_000_003 + int(artifacts.config.get("seed", 0))  # its own directions per trial
    moved = [random_perturbation(models["pre"], norm, seed=base_seed + i) for i in range(params.n_random)]
    moved_acts = [data.acts(m, hooks) for m in moved]
    for h in hooks:
        for k, vec in (("R", 0), ("P", 1)):
            cos = [cv.cosine(vecs["pre"][h][vec], cv.concept_vectors(a[h], data.labels)[vec]) for a in moved_acts]
            metrics[f"align_random/{h}/{k}"] = float(np.mean(cos))
    metrics["reward/perturbed"] = float(np.mean([data.rates(m)[0] for m in moved]))
    metrics["update_norm"] = norm
    for name in ("pre", "post"):  # one split of the sequences for every model and hook
        for h in hooks:
            rng_split = np.random.default_rng(params.seed + 7)
            r, p = cv.split_half_cosines(acts_by[name][h], data.labels, data.out_idx[0], rng_split)
            metrics[f"split_half/{name}/{h}/R"], metrics[f"split_half/{name}/{h}/P"] = r, p
    reward_pre, punish_pre = data.rates(models["pre"])
    reward_post, punish_post = data.rates(models["post"])
    metrics |= {
        "reward/pre": reward_pre,
        "reward/post": reward_post,
        "punish/pre": punish_pre,
        "punish/post": punish_post,
    }

    # steering
    rng = np.random.default_rng(params.seed + 1)
    steer_rows: dict[str, list] = {"model": [], "vector": [], "alpha": [], "reward": [], "punish": []}
    for name in ("pre", "post"):
        v_r, v_p = vecs[name][steer_hook]
        candidates = {"v_P": v_p, "v_R": v_r, "orthogonal": cv.orthogonal_like(v_p, rng)}
        candidates |= {f"random{i}": cv.random_like(v_p, rng) for i in range(params.n_random)}
        curves: dict[str, dict[str, list[float]]] = {}
        for vec_name, v in candidates.items():
            vt = torch.as_tensor(v, dtype=torch.float32, device=model_device(models[name]))  # steering, on its device
            rp = [data.rates(models[name], {steer_hook: add_vector(vt, a)}) for a in params.alphas]
            curves[vec_name] = {"reward": [r for r, _ in rp], "punish": [p for _, p in rp], "vector": v}
            for a, (r, p) in zip(params.alphas, rp):
                for k, val in zip(steer_rows, (name, vec_name, a, r, p)):
                    steer_rows[k].append(val)
        curves["random"] = {
            k: list(np.mean([curves[f"random{i}"][k] for i in range(params.n_random)], axis=0))
            for k in ("reward", "punish")
        }
        i_max = int(np.argmax(params.alphas))
        i_zero = int(np.argmin(np.abs(params.alphas)))
        for vec_name in ("v_P", "v_R", "orthogonal", "random"):
            c = curves[vec_name]
            metrics[f"steer/{name}/{vec_name}/punish_slope"] = cv.slope(params.alphas, c["punish"])
            metrics[f"steer/{name}/{vec_name}/reward_slope"] = cv.slope(params.alphas, c["reward"])
            metrics[f"steer/{name}/{vec_name}/dpunish_max"] = c["punish"][i_max] - c["punish"][i_zero]
        metrics[f"steer/{name}/random/punish_slope_absmax"] = max(
            abs(cv.slope(params.alphas, curves[f"random{i}"]["punish"])) for i in range(params.n_random)
        )
        if name == "post":
            post_curves = curves
    metrics["steer/hook_index"] = float(models["post"].hook_names.index(steer_hook))
    metrics["steer/v_P_norm_post"] = float(np.linalg.norm(vecs["post"][steer_hook][1]))
    metrics["steer/v_R_norm_post"] = float(np.linalg.norm(vecs["post"][steer_hook][0]))
    control_metrics, control_rows = _control_effects(
        data, models["post"], steer_hook, vecs["post"][steer_hook], steer_acts["post"], post_curves, punish_post, params
    )
    metrics |= control_metrics

    tables = {
        "concept_layers": pa.table(layer_rows),
        "steering": pa.table(steer_rows),
        "steering_controls": pa.table(control_rows),
    }
    figures = {"concept_layers": layer_figure(layer_rows), "steering": steer_figure(steer_rows, steer_hook)}
    if params.checkpoints and artifacts.ppo_iterations():
        curve = _curve(artifacts, data, hooks, vecs["post"])
        tables["concept_curve"] = pa.table(curve)
        figures["concept_curve"] = curve_figure(curve, steer_hook)
    return AnalysisResult(metrics=metrics, tables=tables, figures=figures)


def _control_effects(
    data: OutcomeContexts, model, hook: str, v_rp, acts_out, curves, p0: float, params
) -> tuple[dict, dict]:
    """The post-RL steering effect of v_P and v_R against norm-matched controls, off and on the manifold.

    Effect = |P(punished) steered at the largest alpha - unsteered|. A control matched to v's norm at
    alpha is a v_P-norm control at alpha * |v| / |v_P|, so the random draws of the dose-response (v_P's
    norm) are reused for v_P and rescaled by alpha for v_R, and so is its orthogonal draw for v_P; v_R's
    orthogonal control is drawn orthogonal to v_R. The on-manifold draws and v_R's orthogonal one are
    new (their own seeds, so the other controls' draws are unchanged)."""
    import torch

    from models.transformer import add_vector

    v_r, v_p = v_rp
    norm_p = float(np.linalg.norm(v_p))
    a_max = float(max(params.alphas))
    rng = np.random.default_rng(params.seed + 2)
    k = params.group_size or int(np.sum(data.labels == cv.NEUTRAL))
    all_acts = data.all_acts(model, hook)
    on = {
        "shuffled": cv.norm_matched(cv.shuffled_vectors(acts_out, data.labels, params.n_random, rng), norm_p),
        "group": cv.norm_matched(
            cv.group_differences(all_acts, min(k, len(all_acts) // 2), params.n_random, rng), norm_p
        ),
    }
    # the dose-response's orthogonal draw is orthogonal to v_P only, so it is no control for v_R
    orth_r = cv.norm_matched(cv.orthogonal_like(v_r, np.random.default_rng(params.seed + 3)), norm_p)
    randoms = [f"random{i}" for i in range(params.n_random)]
    i_max = int(np.argmax(params.alphas))
    rows: dict[str, list] = {"target": [], "control": [], "draw": [], "alpha": [], "punish": [], "effect": []}
    metrics: dict[str, float] = {}

    def steered(v: np.ndarray, alpha: float) -> float:
        vt = torch.as_tensor(v, dtype=torch.float32, device=model_device(model))
        return data.rates(model, {hook: add_vector(vt, alpha)})[1]

    for target, v in (("v_P", v_p), ("v_R", v_r)):
        alpha = a_max * float(np.linalg.norm(v)) / norm_p if norm_p > 0 else float("nan")
        effect = abs(curves[target]["punish"][i_max] - p0)
        metrics[f"steer/post/{target}/effect"] = effect
        if target == "v_P":  # its own dose-response already holds these draws at its norm
            off = {"random": [curves[d]["punish"][i_max] for d in randoms]}
            off["orthogonal"] = [curves["orthogonal"]["punish"][i_max]]
        else:
            off = {"random": [steered(curves[d]["vector"], alpha) for d in randoms]}
            off["orthogonal"] = [steered(orth_r, alpha)]
        for kind, punish in off.items():
            _record(rows, target, kind, punish, alpha, p0)
            metrics |= _versus(target, kind, effect, np.mean(np.abs(np.asarray(punish) - p0)))
        for kind, draws in on.items():
            punish = [steered(c, alpha) for c in draws]
            _record(rows, target, kind, punish, alpha, p0)
            metrics |= _versus(target, kind, effect, np.mean(np.abs(np.asarray(punish) - p0)))
    return metrics, rows


def _record(rows: dict, target: str, kind: str, punish: list[float], alpha: float, p0: float) -> None:
    for i, p in enumerate(punish):
        for key, val in zip(rows, (target, kind, i, alpha, p, abs(p - p0))):
            rows[key].append(val)


def _versus(target: str, kind: str, effect: float, control: float) -> dict[str, float]:
    pre = f"steer/post/{target}"
    return {
        f"{pre}/control/{kind}": float(control),
        f"{pre}/vs_{kind}/ratio": float(effect / control) if control > 0 else float("nan"),
        f"{pre}/vs_{kind}/diff": float(effect - control),
    }


def _curve(artifacts, data: OutcomeContexts, hooks: list[str], final: dict) -> dict[str, list]:
    rows: dict[str, list] = {
        "iteration": [],
        "hook": [],
        "cos_RP": [],
        "cos_R_final": [],
        "cos_P_final": [],
        "reward": [],
    }
    for it in [0, *artifacts.ppo_iterations()]:
        model = artifacts.policy(it)
        acts = data.acts(model, hooks)
        reward, _ = data.rates(model)
        for h in hooks:
            v_r, v_p = cv.concept_vectors(acts[h], data.labels)
            for k, v in zip(
                rows, (it, h, cv.cosine(v_r, v_p), cv.cosine(v_r, final[h][0]), cv.cosine(v_p, final[h][1]), reward)
            ):
                rows[k].append(v)
    return rows
