"""Where the composition lives: factor and joint belief probes, dimensionality, subspace overlap, CKA.

docs/design.md §4.3: once RL changes the policy, is the composition a
new readout of features the model already had, or a new representation inside? This adapter samples
``n_seq`` fresh sequences of the RL stream (seeded; the stream's tokens are the policy's inputs),
their exact beliefs, each factor's belief (``hmm.layout.factor_beliefs``) and the joint belief over
factor states (their outer product: the factors evolve independently given the tokens, and for
interleave the phase is known from the position), runs the pre-RL, post-RL and random-init models
once each, and hands arrays to :mod:`rayexp.studies.composition.representation`.

Features: every residual-stream state (``blocks.0.hook_resid_pre`` and each ``resid_post``),
``ln_final.hook_normalized`` (``final``: what the unembedding and the value head read) and the
residual states concatenated (``concat``). Probes are ridge (``alpha`` relative to the features'
scale) fitted on one half of the sequences and scored on the other (split by sequence); skill is
``1 - MSE_model / MSE_random_init`` of the same probe on the same held-out sequences, and a change is
post - pre paired over those sequences (skill linearised per sequence, so the control's variance is
in the interval). Metrics, under ``analysis/representation/``:

- ``probe/{factor0,factor1,joint,belief}/{final,concat}/skill_{pre,post}`` and ``.../delta`` with
  ``/ci_low``, ``/ci_high``; ``belief`` is the full belief (with the interleave phase), for every stream;
- ``dims/{pre,post,random_init}/{final,concat}/n{80,90,95,99}``: principal components of the held-out
  predictions of the joint-belief probe (the belief probe for a stream without two factors) for that
  share of their variance; ``dims/exact/n..``, the same of the exact target; ``dims/factored``
  = sum(S_i - 1) and ``dims/joint`` = prod(S_i) - 1 (why predictions and not projected activations:
  :func:`rayexp.studies.composition.representation.n_components`);
- ``overlap/factors_{pre,post,random_init}`` (factor 0's vs factor 1's probe subspace on ``final``),
  ``overlap/factor{i}_pre_post`` (the same factor's, pre vs post), ``overlap/random_baseline`` (chance
  for the factor pair: max(k0, k1) / d_model) and ``overlap/random_baseline/factor{i}`` (k_i / d_model);
- ``cka/{hook}`` (linear CKA of pre vs post activations, all positions of all sequences) and ``cka_min``.

A stream without two running factors (primitive, mixture) gets NaN for the factor, joint and overlap
metrics, ``dims/factored`` and ``dims/joint``; CKA, the belief probe and its dims are still computed.
Table ``representation_by_layer``: one row per hook (depth, CKA, skill pre/post of each target); figure
``representation_by_layer``: CKA and probe skill by depth, pre vs post.

Cost: three forward passes with the residual hooks cached, one ridge solve per (model, features),
paired bootstraps and the figure; `benchmarks/bench_verdict.py` measures the analyses' share of a trial.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.probes import FINAL, collect_activations, hook_position, layer_name, residual_layers, split_sequences
from rayexp.stats import paired_bootstrap_ci
from rayexp.studies.composition import representation as rep

FEATURES = ("final", "concat")
MODELS = ("pre", "post", "random_init")


class RepresentationParams(Params):
    n_seq: int = Field(2000, ge=20, le=1_000_000, description="fresh sequences of the RL stream")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the sequences, the train/test split and the bootstrap")
    alpha: float = Field(1e-3, gt=0, description="ridge penalty of the probes (relative to the features' scale)")
    test_frac: float = Field(0.5, gt=0, lt=1, description="share of sequences held out to score the probes")


def _nan() -> float:
    return float("nan")


def stream_targets(hmm, tokens: np.ndarray, beliefs: np.ndarray) -> tuple[dict[str, np.ndarray], list[int]]:
    """Probe targets (N, L, K) of one stream and its factors' state counts (empty when the stream has no
    two running factors): ``belief`` always; ``factor{i}`` and ``joint`` (their outer product) for a
    composition whose factors all run in every sequence (product, interleave, gated; not a mixture)."""
    out = {"belief": np.asarray(beliefs, dtype=np.float64)}
    layout = hmm.layout
    if layout is None or layout.exclusive or layout.n_factors < 2:
        return out, []
    fbs = [np.asarray(b, dtype=np.float64) for b in hmm.factor_beliefs(beliefs)]
    out |= {f"factor{i}": b for i, b in enumerate(fbs)}
    out["joint"] = rep.outer_beliefs(fbs)
    return out, [f.n_states for f in layout.factors]


def features(acts: dict[str, np.ndarray], layers: list[str]) -> dict[str, np.ndarray]:
    """Per hook its activations, plus ``concat`` (the residual states side by side); ``final`` is the
    ``ln_final`` hook (aliased after fitting, so it is not fitted twice)."""
    return {**acts, "concat": np.concatenate([acts[h] for h in layers], axis=-1)}


def _ntag(frac: float) -> str:
    return f"n{round(frac * 100)}"


@analysis("representation", params=RepresentationParams, needs=("model_before", "model_after", "random_init", "env"))
def representation(artifacts, params: RepresentationParams) -> AnalysisResult:
    """Where the composition lives: factor/joint belief probes, dimensionality, subspace overlap, CKA."""
    import pyarrow as pa

    models = {"pre": artifacts.model_before(), "post": artifacts.model_after(), "random_init": artifacts.random_init()}
    cfg = models["pre"].cfg
    hmm = artifacts.stream()
    if hmm.vocab_size > cfg.d_vocab:
        raise ValueError(f"representation: the RL stream has {hmm.vocab_size} tokens, the model reads {cfg.d_vocab}")
    length = min(int(artifacts.env_config["context"]), int(cfg.n_ctx))
    rng = np.random.default_rng(params.seed)
    tokens, _, beliefs = hmm.sample_with_beliefs(params.n_seq, length, rng)  # (N, L), _, (N, L, S)
    train, test = split_sequences(params.n_seq, params.test_frac, rng)
    targets, n_states = stream_targets(hmm, tokens, beliefs)
    factored = bool(n_states)
    n_factors = max(len(n_states), 2)
    names = [f"factor{i}" for i in range(n_factors)] + ["joint", "belief"]
    dim_target = "joint" if factored else "belief"

    layers = residual_layers(models["pre"].hook_names)
    hooks = [*layers, FINAL]
    feats = {m: features(collect_activations(model, tokens, hooks), layers) for m, model in models.items()}
    y_train = {t: y[train] for t, y in targets.items()}
    y_test = {t: y[test] for t, y in targets.items()}
    fits = {  # model -> feature set (each hook, "concat", "final") -> target -> ProbeFit
        m: {f: rep.fit_probes(x[train], y_train, x[test], y_test, params.alpha) for f, x in feats[m].items()}
        for m in MODELS
    }
    for m in MODELS:
        fits[m]["final"] = fits[m][FINAL]

    def skills(target: str, feat: str) -> tuple[np.ndarray, np.ndarray] | None:
        if target not in targets:
            return None
        control = fits["random_init"][feat][target].errors
        return tuple(rep.skill_values(fits[m][feat][target].errors, control) for m in ("pre", "post"))

    metrics: dict[str, float] = {}
    # -- probes: skill before and after, and the paired change
    for t in names:
        for feat in FEATURES:
            key = f"probe/{t}/{feat}"
            s = skills(t, feat)
            if s is None:
                mean = lo = hi = pre = post = _nan()
            else:
                pre, post = float(np.mean(s[0])), float(np.mean(s[1]))
                mean, lo, hi = paired_bootstrap_ci(s[0], s[1], seed=params.seed)
            metrics |= {f"{key}/skill_pre": pre, f"{key}/skill_post": post, f"{key}/delta": mean}
            metrics |= {f"{key}/delta/ci_low": lo, f"{key}/delta/ci_high": hi}

    # -- dimensionality of the belief-predictive part
    fac_dim, joint_dim = rep.belief_dims(n_states) if factored else (_nan(), _nan())
    metrics |= {"dims/factored": float(fac_dim), "dims/joint": float(joint_dim)}
    exact = rep.explained_variance(y_test[dim_target])
    for frac in rep.FRACS:
        metrics[f"dims/exact/{_ntag(frac)}"] = float(rep.components_for(exact, frac))
    for m in MODELS:
        for feat in FEATURES:
            ev = rep.explained_variance(fits[m][feat][dim_target].pred)
            for frac in rep.FRACS:
                metrics[f"dims/{m}/{feat}/{_ntag(frac)}"] = float(rep.components_for(ev, frac))

    # -- overlap of the factor probes' subspaces (on the final features)
    metrics |= overlap_metrics(fits, n_factors if factored else 0, cfg.d_model)

    # -- CKA per hook, pre vs post
    cka = {h: rep.linear_cka(feats["pre"][h], feats["post"][h]) for h in hooks}
    metrics |= {f"cka/{h}": v for h, v in cka.items()}
    metrics["cka_min"] = float(np.nanmin(list(cka.values()))) if np.isfinite(list(cka.values())).any() else _nan()

    # -- by layer
    rows: dict[str, list] = {"hook": hooks, "depth": [hook_position(h, cfg.n_layers)[2] for h in hooks]}
    rows["cka"] = [cka[h] for h in hooks]
    for t in names:
        for m in ("pre", "post"):
            rows[f"skill_{t}_{m}"] = []
        for h in hooks:
            s = skills(t, h)
            rows[f"skill_{t}_pre"].append(_nan() if s is None else float(np.mean(s[0])))
            rows[f"skill_{t}_post"].append(_nan() if s is None else float(np.mean(s[1])))
    table = pa.table(rows)
    fig = layer_figure(rows, names, dim_target)
    return AnalysisResult(
        metrics=metrics, tables={"representation_by_layer": table}, figures={"representation_by_layer": fig}
    )


def overlap_metrics(fits: dict, n_factors: int, d: int) -> dict[str, float]:
    """``overlap/...`` metrics from the ``final`` probes' coefficients; NaN without two factors."""
    out = {
        "overlap/factors_pre": _nan(),
        "overlap/factors_post": _nan(),
        "overlap/factors_random_init": _nan(),
        "overlap/random_baseline": _nan(),
    }
    for i in range(max(n_factors, 2)):
        out[f"overlap/factor{i}_pre_post"] = out[f"overlap/random_baseline/factor{i}"] = _nan()
    if n_factors < 2:
        return out
    coef = {m: [fits[m]["final"][f"factor{i}"].coef for i in range(n_factors)] for m in MODELS}
    for m in MODELS:
        out[f"overlap/factors_{m}"] = rep.subspace_overlap(coef[m][0], coef[m][1])
    ranks = [rep.orthonormal_basis(w).shape[1] for w in coef["pre"]]
    out["overlap/random_baseline"] = rep.random_overlap(d, ranks[0], ranks[1])
    for i in range(n_factors):
        out[f"overlap/factor{i}_pre_post"] = rep.subspace_overlap(coef["pre"][i], coef["post"][i])
        out[f"overlap/random_baseline/factor{i}"] = rep.random_overlap(d, ranks[i], ranks[i])
    return out


def _short(hook: str) -> str:
    """Axis label of a hook: ``embed`` (block 0's input), ``block{i}`` (its output), ``ln_final``."""
    return "ln_final" if hook == FINAL else layer_name(hook)


def layer_figure(rows: dict[str, list], names: list[str], main: str):
    """CKA (pre vs post) and probe skill (pre dashed, post solid) by depth along the residual stream."""
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    fig, (ax_c, ax_s) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = np.arange(len(rows["hook"]))  # hooks in residual-stream order (ln_final last, after the last block)
    labels = [_short(h) for h in rows["hook"]]
    ax_c.plot(x, rows["cka"], "o-", color="k")
    ax_c.set(ylabel="linear CKA", title="CKA, pre vs post RL", ylim=(0, 1.05))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, t in enumerate(n for n in names if n in (main, "factor0", "factor1")):
        pre, post = rows[f"skill_{t}_pre"], rows[f"skill_{t}_post"]
        if not np.isfinite(np.asarray(pre + post, dtype=np.float64)).any():
            continue
        c = colors[j % len(colors)]
        ax_s.plot(x, pre, "o--", color=c, alpha=0.6, label=f"{t} pre")
        ax_s.plot(x, post, "s-", color=c, label=f"{t} post")
    ax_s.axhline(0, color="k", lw=0.5)
    ax_s.set(ylabel="skill (vs random init)", title="probe skill by layer")
    ax_s.legend(fontsize=7)
    for ax in (ax_c, ax_s):
        ax.set_xticks(x, labels, fontsize=8)
    fig.tight_layout()
    return fig
