"""Across seeds: belief geometry over RL and the ablation table, per task of each process pair.

Reads each trial's ``geometry`` analysis metrics (:mod:`.geometry_analysis`) and gives, per
(process, task), the mean and Student-t 95 % interval over seeds of

- the geometry curve over PPO checkpoints at one layer (``layer``; ``last``: the last block's
  output): each factor's probe skill, the joint-only R^2, the joint dimension, the factors' overlap;
- every ablation (pre and post RL, every layer, each condition): the share of the reward removed and
  the interaction eta left.

Run it grouped by process, as the verdict is: ``rayexp analyze EXP --analysis geometry_summary
--group-by process``. Tables ``geometry_curve``, ``geometry_ablation`` and ``geometry_contrast``
(each erasure after RL minus its random, placebo and re-paired controls and minus the
``reference_task``'s same erasure, all paired by seed: :func:`contrast_rows`; column ``scored``:
``all`` sequences or the ``held_out`` half no basis was fitted on); figures
``geometry_curve`` (one line per task, the band its interval) and ``geometry_ablation`` (reward
removed by erasing each factor's subspace vs random subspaces of the same dimension, post-RL).
Metrics ``{task}/{pre,post}/{layer}/...`` and ``{task}/ablation/post/{layer}/{cond}/removed``.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.specs import process_label
from rayexp.stats import t_ci

CURVE_KEYS = (
    "skill/factor0",
    "skill/factor1",
    "r2/joint_only",
    "skill/joint_only",
    "dim95",
    "overlap",
    "overlap_random",
)
ABLATION_KEYS = (
    "removed", "drop", "expected", "greedy", "interaction",
    "left_factor0", "left_factor1", "left_joint_only", "removed_test", "expected_test",
)  # fmt: skip
_CURVE = re.compile(r"^curve/it(\d+)/([a-z0-9_]+)/(.+)$")
_ABL = re.compile(r"^ablation/(pre|post)/([a-z0-9_]+)/([a-z0-9_]+)/([a-z0-9_]+)$")


class GeometrySummaryParams(Params):
    analysis: str = Field("geometry", description="name of the per-trial analysis whose metrics are read")
    reference_task: str = Field(
        "negative_control",
        description="the task every other task's erasures are set against, paired by seed (contrast table)",
    )
    layer: str = Field("last", description="layer of the curves: embed, block{i}, final, or last (the last block)")
    ci: float = Field(0.95, gt=0, lt=1, description="interval coverage (Student-t over seeds)")


def _metrics(artifacts, name: str) -> dict[str, float]:
    prefix = f"analysis/{name}/"
    found = {k[len(prefix) :]: v for k, v in artifacts.metrics().items() if k.startswith(prefix)}
    return found or (artifacts.analysis_metrics(name) or {})


def last_block(keys) -> str:
    blocks = sorted({int(m.group(2)[5:]) for k in keys if (m := _CURVE.match(k)) and m.group(2).startswith("block")})
    return f"block{blocks[-1]}" if blocks else "final"


def summarise(per_seed: list[dict[str, float]], layer: str, ci: float) -> tuple[dict[str, list], dict[str, list]]:
    """(curve rows, ablation rows) of one task from its seeds' metrics."""
    curve: dict[tuple[int, str], list[float]] = {}
    abl: dict[tuple[str, str, str, str], list[float]] = {}
    for m in per_seed:
        for k, v in m.items():
            if (c := _CURVE.match(k)) and c.group(2) == layer and c.group(3) in CURVE_KEYS:
                curve.setdefault((int(c.group(1)), c.group(3)), []).append(v)
            elif (a := _ABL.match(k)) and a.group(4) in ABLATION_KEYS:
                abl.setdefault(a.groups(), []).append(v)
    crow: dict[str, list] = {"iteration": [], "quantity": [], "mean": [], "ci_low": [], "ci_high": [], "n_seeds": []}
    for (it, q), vals in sorted(curve.items()):
        mean, lo, hi = t_ci(vals, ci)
        for col, val in zip(crow, (it, q, mean, lo, hi, int(np.isfinite(vals).sum()))):
            crow[col].append(val)
    arow: dict[str, list] = {k: [] for k in ("model", "layer", "condition", "quantity", "mean", "ci_low", "ci_high")}
    for (model, lay, cond, q), vals in sorted(abl.items()):
        mean, lo, hi = t_ci(vals, ci)
        for col, val in zip(arow, (model, lay, cond, q, mean, lo, hi)):
            arow[col].append(val)
    return crow, arow


#: the joint erasures (each with its random, placebo or re-paired controls), in the order tables list them
JOINT_ERASURES = ("joint_only", "beyond_factors", "beyond_factor_poly", "beyond_factor_emitter")
CONTRASTED = ("both", *JOINT_ERASURES, "joint")
#: the erasures beyond the probes that keep more read-outs than the global linear probes' (degree-2,
#: phase-gated); each is also set against ``beyond_factors`` in the same trial: what keeping them spares
KEEPS_MORE = ("beyond_factor_poly", "beyond_factor_emitter")
_REMOVED = re.compile(r"^ablation/post/([a-z0-9_]+)/([a-z0-9_]+)/removed$")
#: the contrast table's ``scored`` column -> the per-trial quantity it contrasts
SCORED = {"all": "removed", "held_out": "removed_test"}


def contrast_rows(
    by_seed: dict[tuple[str, str], dict[str, dict[str, float]]], reference: str, ci: float, scored: str = "all"
) -> dict:
    """Post-RL share removed by each :data:`CONTRASTED` erasure minus, paired by seed: its random,
    placebo and re-paired controls (same trial), the ``reference`` task's same erasure (same process
    and seed, so the same pretrained model), and, where there is a placebo or a re-pairing, the
    reference's excess over it subtracted from this task's (the double differences); each
    :data:`KEEPS_MORE` erasure also minus ``beyond_factors`` in the same trial. ``fw_low`` /
    ``fw_high``: the same interval Bonferroni-adjusted over the layers of its (process, task,
    condition, minus) family (``fw_layers`` of them). ``by_seed``: {(process, task): {seed: metrics}}.
    ``scored`` (a :data:`SCORED` key): the reward on all sequences or on the held-out half alone, where
    no erasure was fitted (trials from before it was logged give no held-out rows). Student-t intervals."""
    quantity = SCORED[scored]
    cols = ("process", "task", "layer", "condition", "minus", "mean", "ci_low", "ci_high", "n_seeds")
    out: dict[str, list] = {c: [] for c in (*cols, "fw_low", "fw_high", "fw_layers")}
    diffs_of: list[list[float]] = []

    def add(key: tuple, diffs: list[float]) -> None:
        d = [x for x in diffs if np.isfinite(x)]
        if d:
            for col, val in zip(cols, (*key, *t_ci(d, ci), len(d))):
                out[col].append(val)
            diffs_of.append(d)

    for (process, task), seeds in sorted(by_seed.items()):
        keys = set().union(*seeds.values())
        layers = sorted({m.group(1) for k in keys if (m := _REMOVED.match(k))}, key=_layer_order)
        ref = by_seed.get((process, reference), {}) if task != reference else {}
        for lay in layers:
            for cond in CONTRASTED:
                mine = f"ablation/post/{lay}/{cond}/{quantity}"
                for ctrl in (f"random_{cond}", f"placebo_{cond}", f"repaired_{cond}"):
                    other = f"ablation/post/{lay}/{ctrl}/{quantity}"
                    pairs = [m[mine] - m[other] for m in seeds.values() if mine in m and other in m]
                    add((process, task, lay, cond, ctrl), pairs)
                pairs = [m[mine] - ref[sd][mine] for sd, m in seeds.items() if mine in m and mine in ref.get(sd, {})]
                add((process, task, lay, cond, reference), pairs)
                if cond in KEEPS_MORE:  # what keeping more read-outs spares, against the global probes
                    base = f"ablation/post/{lay}/beyond_factors/{quantity}"
                    add(
                        (process, task, lay, cond, "beyond_factors"),
                        [m[mine] - m[base] for m in seeds.values() if mine in m and base in m],
                    )
                # the double differences: this task's excess over its placebo minus the reference's
                for ctrl, label in (("placebo", "placebo"), ("repaired", "re-pairing")):
                    plc = f"ablation/post/{lay}/{ctrl}_{cond}/{quantity}"
                    net = [
                        (m[mine] - m[plc]) - (ref[sd][mine] - ref[sd][plc])
                        for sd, m in seeds.items()
                        if all(k in m and k in ref.get(sd, {}) for k in (mine, plc))
                    ]
                    add((process, task, lay, cond, f"{reference}, each net of its {label}"), net)
    # one contrast asked at every layer is one family: Bonferroni over its layers (fw_*) beside each
    # layer's own interval, so a cell that clears 0 only because several layers were looked at shows it
    family = [(out["process"][i], out["task"][i], out["condition"][i], out["minus"][i]) for i in range(len(diffs_of))]
    sizes = Counter(family)
    for f, d in zip(family, diffs_of):
        _, lo, hi = t_ci(d, 1 - (1 - ci) / sizes[f])
        out["fw_low"].append(lo)
        out["fw_high"].append(hi)
        out["fw_layers"].append(sizes[f])
    out["scored"] = [scored] * len(out["mean"])
    return out


def _stacked(tables: list[dict[str, list]]) -> dict[str, list]:
    return {c: [v for t in tables for v in t[c]] for c in tables[0]}


@analysis("geometry_summary", params=GeometrySummaryParams, scope="sweep")
def geometry_summary(group, params: GeometrySummaryParams) -> AnalysisResult:
    """Belief geometry over RL and the ablation table per task, with intervals over seeds."""
    by_task: dict[tuple[str, str], list[dict[str, float]]] = {}
    by_seed: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for a in group:
        m = _metrics(a, params.analysis)
        if m:
            key = (process_label(a.config["process"]), a.config["task"]["name"])
            by_task.setdefault(key, []).append(m)
            by_seed.setdefault(key, {})[str(a.config.get("seed"))] = m
    if not by_task:
        raise ValueError(f"geometry_summary: no trial in this group has {params.analysis!r} metrics")
    layer = params.layer if params.layer != "last" else last_block(next(iter(by_task.values()))[0])
    curves, ablations, metrics = {}, {}, {}
    ctab: dict[str, list] = {}
    atab: dict[str, list] = {}
    for (process, task), seeds in sorted(by_task.items()):
        crow, arow = summarise(seeds, layer, params.ci)
        curves[task], ablations[task] = crow, arow
        for tab, rows, extra in ((ctab, crow, {"layer": layer}), (atab, arow, {})):
            n = len(rows["mean"])
            cols = {"process": [process] * n, "task": [task] * n, **{k: [v] * n for k, v in extra.items()}, **rows}
            for col, val in cols.items():
                tab.setdefault(col, []).extend(val)
        for it, q, mean in zip(crow["iteration"], crow["quantity"], crow["mean"]):
            if it == max(crow["iteration"]):
                metrics[f"{task}/post/{layer}/{q}"] = mean
            if it == 0:
                metrics[f"{task}/pre/{layer}/{q}"] = mean
        for model, lay, cond, q, mean in zip(
            arow["model"], arow["layer"], arow["condition"], arow["quantity"], arow["mean"]
        ):
            if model == "post" and q == "removed":
                metrics[f"{task}/ablation/post/{lay}/{cond}/removed"] = mean
    figures = {"geometry_curve": curve_figure(curves, layer), "geometry_ablation": ablation_figure(ablations, layer)}
    return AnalysisResult(
        metrics=metrics,
        tables={
            "geometry_curve": pa.table(ctab),
            "geometry_ablation": pa.table(atab),
            "geometry_contrast": pa.table(
                _stacked([contrast_rows(by_seed, params.reference_task, params.ci, scored) for scored in SCORED])
            ),
        },
        figures=figures,
    )


def curve_figure(curves: dict[str, dict[str, list]], layer: str):
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    shown = ("skill/factor0", "skill/factor1", "r2/joint_only", "dim95", "overlap")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2))
    for ax, q in zip(axes, shown):
        for task, rows in curves.items():
            sel = [i for i, name in enumerate(rows["quantity"]) if name == q]
            x = np.array([rows["iteration"][i] for i in sel])
            mean, lo, hi = (np.array([rows[c][i] for i in sel], dtype=float) for c in ("mean", "ci_low", "ci_high"))
            (line,) = ax.plot(x, mean, "o-", label=task, ms=3)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
            if q == "overlap":
                sel_r = [i for i, name in enumerate(rows["quantity"]) if name == "overlap_random"]
                ax.plot(x, [rows["mean"][i] for i in sel_r], ":", color="k", lw=0.8)
        ax.set(xlabel="PPO iteration", title=f"{q} ({layer})")
        ax.axhline(0, color="k", lw=0.4)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _layer_order(name: str) -> int:
    return -1 if name == "embed" else int(name[5:]) if name.startswith("block") else 10**6


ERASED = {
    "both": "both factors' subspaces",
    "joint_only": "the joint-only subspace",
    "beyond_factors": "joint-only beyond the probes",
    "beyond_factor_poly": "joint-only beyond polynomial probes",
    "beyond_factor_emitter": "joint-only beyond phase-gated probes",
}


def ablation_figure(ablations: dict[str, dict[str, list]], layer: str):
    """Share of the reward removed by erasing, one row each, both factors' belief subspaces, the
    joint-only subspace and the joint-only part beyond the factor probes (solid), random subspaces
    of the same dimension (dotted) and, for the joint erasures, the same construction fed a noise
    target (placebo, dashed) and the re-paired target (dash-dot), at each layer, pre and post RL, per task with its interval over seeds.
    ``layer`` (the curves' layer) is marked."""
    from rayexp.figures import plt

    fig, grid = plt.subplots(len(ERASED), 2, figsize=(10, 3.3 * len(ERASED)), sharey=True)
    for r, erased in enumerate(ERASED):
        for ax, model in zip(grid[r], ("pre", "post")):
            for task, rows in ablations.items():
                _ablation_lines(ax, rows, model, erased, task, layer)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel("layer erased")
            ax.set_title(f"{model}-RL: reward removed by erasing {ERASED[erased]}", fontsize=9)
        grid[r, 0].set_ylabel("removed share (NaN: earns nothing)", fontsize=8)
        grid[r, 1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def _ablation_lines(ax, rows: dict[str, list], model: str, erased: str, task: str, layer: str) -> None:
    color = None
    styles = ((erased, "o-"), (f"random_{erased}", "s:"), (f"placebo_{erased}", "^--"), (f"repaired_{erased}", "v-."))
    for cond, style in styles:
        sel = [
            i
            for i in range(len(rows["model"]))
            if rows["model"][i] == model and rows["condition"][i] == cond and rows["quantity"][i] == "removed"
        ]
        if not sel:  # runs from before the joint-only conditions existed have none
            continue
        sel.sort(key=lambda i: _layer_order(rows["layer"][i]))
        names = [rows["layer"][i] for i in sel]
        x = np.arange(len(sel))
        mean, lo, hi = (np.array([rows[c][i] for i in sel], dtype=float) for c in ("mean", "ci_low", "ci_high"))
        label = f"{task}: {cond.split('_')[0] if cond != erased else ERASED[erased]}"
        (line,) = ax.plot(x, mean, style, color=color, label=label, ms=3)
        color = line.get_color()
        ax.fill_between(x, lo, hi, color=color, alpha=0.15)
        ax.set_xticks(x, names, fontsize=8)
        if layer in names:
            ax.axvline(names.index(layer), color="k", lw=0.4, ls="--")
