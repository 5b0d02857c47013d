"""Across trials: composition / reweighting / inconclusive for each group of seeds.

Reads each trial's ``composition`` analysis metrics (``analysis/composition/...`` in its
``metrics.json``, or the analysis's own stored result) and applies the rule of
:mod:`rayexp.studies.composition.verdict` (stated there with its reasoning) over the group's trials, one per
seed. Run it grouped so a group is one process and one task::

    rayexp analyze EXPERIMENT --analysis verdict --group-by process,task

Metrics per group: ``score`` (mean over seeds of kappa_post, the composed share), ``score_ci_low``,
``score_ci_high``, ``n_seeds``, ``verdict_code`` (+1 composition, -1 reweighting, 0 inconclusive),
``r2_ci_low``, ``margin_ci_low``. Table ``verdict``: one row (process, task, n_seeds, score and CI,
verdict, reason, and the mean over seeds of each signal in :data:`SIGNALS`). Figure ``verdict``:
each signal with the seeds as points.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.specs import process_label
from rayexp.studies.composition.verdict import decide

#: table column -> key of the per-trial composition analysis
SIGNALS = {
    "composed_post": "composed/post",
    "interaction_post": "interaction/post",
    "reweighting_r2_post": "reweighting_r2/post",
    "margin_greedy_post": "margin_greedy/post",
    "margin_post": "margin/post",
    "interaction_pre": "interaction/pre",
    "margin_pre": "margin/pre",
    "interaction_perturbed": "interaction/perturbed",
    "reweighting_r2_perturbed": "reweighting_r2/perturbed",
    "composed_pre": "composed/pre",
    "composed_perturbed": "composed/perturbed",
    "delta_composed": "delta/composed",
    "delta_margin_greedy": "delta/margin_greedy",
    "delta_margin": "delta/margin",
    "delta_interaction": "delta/interaction",
    "reward_post_expected": "reward/post/expected",
    "ceiling_optimum": "ceiling/optimum",
    "composed_post_ci_low": "composed/post/ci_low",
    "composed_post_ci_high": "composed/post/ci_high",
    "reweighting_r2_post_ci_low": "reweighting_r2/post/ci_low",
    "margin_greedy_post_ci_low": "margin_greedy/post/ci_low",
}


class VerdictParams(Params):
    analysis: str = Field("composition", description="name of the per-trial analysis whose metrics are read")
    threshold: float = Field(
        0.1, ge=0, lt=1, description="tau: composition needs kappa's (the score's) CI low above it"
    )
    r2_min: float = Field(0.8, gt=0, lt=1, description="reweighting: the CI low of R^2_post above it")
    margin_min: float = Field(0.5, ge=-1, le=1, description="composition also needs the margin's CI above this")
    min_seeds: int = Field(2, ge=1, description="fewer seeds: the score is reported, the verdict is inconclusive")
    n_boot: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples over seeds")
    ci: float = Field(0.95, gt=0, lt=1, description="interval coverage")
    seed: int = Field(0, ge=0, description="seed of the resampling")


def trial_signals(artifacts, analysis_name: str = "composition") -> dict[str, float]:
    """{column: value} of one trial (NaN where the analysis did not log it)."""
    prefix = f"analysis/{analysis_name}/"
    found = {k[len(prefix) :]: v for k, v in artifacts.metrics().items() if k.startswith(prefix)}
    if not found:
        found = artifacts.analysis_metrics(analysis_name) or {}
    return {col: float(found.get(key, float("nan"))) for col, key in SIGNALS.items()}


@analysis("verdict", params=VerdictParams, scope="sweep")
def verdict(group, params: VerdictParams) -> AnalysisResult:
    """Composition / reweighting / inconclusive over the seeds of a group, with a bootstrap CI."""

    per_trial = [trial_signals(a, params.analysis) for a in group]
    col = {c: np.array([t[c] for t in per_trial]) for c in SIGNALS}
    v = decide(
        col["composed_post"],
        col["reweighting_r2_post"],
        col["margin_greedy_post"],
        threshold=params.threshold,
        r2_min=params.r2_min,
        margin_min=params.margin_min,
        min_seeds=params.min_seeds,
        n_boot=params.n_boot,
        ci=params.ci,
        seed=params.seed,
        context_ci=(
            {
                "composed_ci_low": col["composed_post_ci_low"][0],
                "composed_ci_high": col["composed_post_ci_high"][0],
                "r2_ci_low": col["reweighting_r2_post_ci_low"][0],
                "margin_ci_low": col["margin_greedy_post_ci_low"][0],
            }
            if len(per_trial) == 1
            else None
        ),
    )
    configs = [a.config for a in group]
    processes = sorted({process_label(c["process"]) for c in configs})
    tasks = sorted({c["task"]["name"] for c in configs})
    row = {
        "process": [",".join(processes)],
        "task": [",".join(tasks)],
        "n_seeds": [v.n_seeds],
        "score": [v.score],
        "score_ci_low": [v.ci_low],
        "score_ci_high": [v.ci_high],
        "verdict": [v.label],
        "reason": [v.reason],
        **{c: [float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")] for c, x in col.items()},
    }
    metrics = {
        "score": v.score,
        "score_ci_low": v.ci_low,
        "score_ci_high": v.ci_high,
        "n_seeds": float(v.n_seeds),
        "verdict_code": float(v.code),
        "r2_ci_low": v.r2_ci_low,
        "margin_ci_low": v.margin_ci_low,
    }
    return AnalysisResult(metrics=metrics, tables={"verdict": pa.table(row)}, figures={"verdict": _figure(col, v)})


def _figure(col: dict[str, np.ndarray], v):
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    names = list(col)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 3.4))
    for i, name in enumerate(names):
        x = col[name]
        ax.plot(np.full(len(x), i) + np.linspace(-0.15, 0.15, len(x)), x, "o", alpha=0.7, color="tab:blue")
        if np.isfinite(x).any():
            ax.plot([i - 0.25, i + 0.25], [np.nanmean(x)] * 2, "k-")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"{v.label}: score {v.score:.2f} [{v.ci_low:.2f}, {v.ci_high:.2f}], {v.n_seeds} seeds", fontsize=9)
    fig.tight_layout()
    return fig
