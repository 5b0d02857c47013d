"""RL's rotation of the concept vectors against the null's update at RL's size (sweep scope).

The welfare report's rotation table sets RL's cos(v pre, v post) against PPO on a shuffled reward
(task ``shuffled_null``), but the null moves the weights further than RL (update norm 8.3-8.9
against 6.8-7.2 in ``sweeps/welfare.yaml``), and a longer move turns a vector further whatever its
direction. Here, per seed, the null's update is scaled to the norm of RL's,
``theta_pre + (|d_RL| / |d_null|) d_null`` (the null's direction at RL's size:
:func:`rayexp.weights.interpolate`), and the concept vectors are read from that model on the same
contexts and with the same estimator as the ``concept_vectors`` analysis (its ``n_seq`` and ``seed``
defaults), so the unscaled ``rl`` and ``null`` columns reproduce the trials' own ``align`` metrics.

Metrics, per residual hook and vector k in {R, P}, each a mean over seeds with its Student-t
interval (``/ci_low``, ``/ci_high``): ``{hook}/{k}/{rl,null,null_matched,null_path}`` = cos(v pre, v after),
``{hook}/{k}/rl_minus_null_matched``, ``{hook}/{k}/rl_minus_null_path`` and ``{hook}/{k}/rl_minus_null``,
paired by seed; ``norm/{rl,null}`` the mean update norms, ``n_seeds``; ``path/{iteration,chord_share,
n_seeds}`` as above. Table ``matched_rotation``: one row per seed and hook.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from pydantic import Field

from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.probes import residual_layers
from rayexp.stats import t_ci
from rayexp.studies.welfare import concepts as cv
from rayexp.studies.welfare.concept_vectors_analysis import OutcomeContexts
from rayexp.weights import first_crossing, interpolate, param_arrays, update_norm


class MatchedNullParams(Params):
    task: str = Field("outcome_rl", description="the RL task's name")
    null_task: str = Field("shuffled_null", description="the shuffled-reward null's task name")
    n_seq: int = Field(2000, ge=50, le=1_000_000, description="as concept_vectors' n_seq (same contexts)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="as concept_vectors' seed (same contexts)")
    ci: float = Field(0.95, gt=0, lt=1, description="interval coverage (Student-t over seeds)")


def _pairs(group, params: MatchedNullParams) -> dict[int, tuple]:
    """{seed: (RL trial, null trial)} for the seeds that ran both, from one pretrained model each."""
    by_seed: dict[int, dict[str, object]] = {}
    for a in group:
        name = a.config["task"]["name"]
        if name in (params.task, params.null_task):
            by_seed.setdefault(int(a.config["seed"]), {})[name] = a
    pairs = {s: (d[params.task], d[params.null_task]) for s, d in sorted(by_seed.items()) if len(d) == 2}
    if not pairs:
        raise ValueError(
            f"matched_null needs, for some seed, both a {params.task!r} and a {params.null_task!r} trial; "
            f"tasks found: {sorted({a.config['task']['name'] for a in group})}"
        )
    for s, (rl, null) in pairs.items():
        if rl.pretrain_key != null.pretrain_key:
            raise ValueError(f"matched_null: seed {s}'s {params.task!r} and null start from different models")
    return pairs


@analysis("matched_null", params=MatchedNullParams, needs=("model_before", "model_after", "env"), scope="sweep")
def matched_null(group, params: MatchedNullParams) -> AnalysisResult:
    """cos(v pre, v post) of RL against the shuffled-reward null's update scaled to RL's norm, per seed."""
    cols = ("rl", "null", "null_matched", "null_path")
    rows: dict[str, list] = {k: [] for k in ("seed", "hook", "vector", *cols, "path_iteration")}
    norms: dict[str, list[float]] = {"rl": [], "null": []}
    chords: list[float] = []
    contexts: dict[tuple, OutcomeContexts] = {}  # one sample per stream: every seed is read on the same contexts
    for seed, (rl, null) in _pairs(group, params).items():
        pre, post_rl, post_null = rl.model_before(), rl.model_after(), null.model_after()
        theta = param_arrays(pre)
        n_rl, n_null = update_norm(theta, param_arrays(post_rl)), update_norm(theta, param_arrays(post_null))
        norms["rl"].append(n_rl)
        norms["null"].append(n_null)
        models = {
            "pre": pre,
            "rl": post_rl,
            "null": post_null,
            "null_matched": interpolate(pre, post_null, n_rl / n_null),
        }
        where = _path_point(null, pre, post_null, theta, n_rl)
        if where is not None:
            models["null_path"], iteration, chord = where
            chords.append(chord / n_rl)
        key = (json.dumps(rl.config.get("process"), sort_keys=True), int(rl.env_config["context"]))
        if key not in contexts:
            contexts[key] = OutcomeContexts(rl.stream(), key[1], params.n_seq, params.seed)
        data = contexts[key]
        hooks = residual_layers(pre.hook_names)
        vecs = {}
        for name, model in models.items():
            acts = data.acts(model, hooks)
            vecs[name] = {h: cv.concept_vectors(acts[h], data.labels) for h in hooks}
        for h in hooks:
            for k, i in (("R", 0), ("P", 1)):
                cos = {m: cv.cosine(vecs["pre"][h][i], vecs[m][h][i]) if m in vecs else np.nan for m in cols}
                at = iteration if where is not None else np.nan
                for col, val in (("seed", seed), ("hook", h), ("vector", k), *cos.items(), ("path_iteration", at)):
                    rows[col].append(val)
    metrics: dict[str, float] = {"n_seeds": float(len(norms["rl"]))}
    metrics |= {f"norm/{m}": float(np.mean(v)) for m, v in norms.items()}
    metrics["path/n_seeds"] = float(len(chords))
    table = {k: np.asarray(v) for k, v in rows.items()}
    if chords:
        first = table["path_iteration"][np.isfinite(table["path_iteration"])]
        metrics |= {"path/iteration": float(np.mean(first)), "path/chord_share": float(max(chords))}
    for h in dict.fromkeys(rows["hook"]):
        for k in ("R", "P"):
            sel = (table["hook"] == h) & (table["vector"] == k)
            got = {m: table[m][sel] for m in cols}
            got["rl_minus_null_matched"] = got["rl"] - got["null_matched"]
            got["rl_minus_null_path"] = got["rl"] - got["null_path"]
            got["rl_minus_null"] = got["rl"] - got["null"]
            for name, vals in got.items():
                vals = vals[np.isfinite(vals)]  # null_path: the seeds whose null got as far as RL
                if not len(vals):
                    continue
                mean, lo, hi = t_ci(vals, params.ci)
                metrics |= {f"{h}/{k}/{name}": mean, f"{h}/{k}/{name}/ci_low": lo, f"{h}/{k}/{name}/ci_high": hi}
    return AnalysisResult(metrics=metrics, tables={"matched_rotation": pa.table(rows)})


def _path_point(null, pre, post, theta: dict[str, np.ndarray], norm: float):
    """(model, PPO iteration, chord length) at the first point of the null's stored path ``norm`` away
    from ``theta`` (the pretrained weights), or None if it never gets that far; ``post`` is the null's
    last stored policy, already loaded."""
    its = null.ppo_iterations()
    path = [null.policy(i) for i in its[:-1]] + [post]
    arrays = [param_arrays(m) for m in path]
    hit = first_crossing(theta, arrays, norm)
    if hit is None:
        return None
    j, t = hit
    start, start_it = (pre, 0) if j == 0 else (path[j - 1], its[j - 1])
    chord = update_norm(theta if j == 0 else arrays[j - 1], arrays[j])
    return interpolate(start, path[j], t), start_it + t * (its[j] - start_it), chord
