"""Figures people expect from a trial: belief simplex, probe skill by layer, curves, weight-diff heatmaps.

Every function returns a matplotlib ``Figure`` (Agg backend, no display needed) so callers can
``save_png`` it or hand it to ``mlflow.log_figure``; nothing here reads files or global state.
"""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

_SQRT3_2 = math.sqrt(3) / 2


def save_png(fig, path, dpi: int = 150) -> pathlib.Path:
    """Write ``fig`` as PNG (parents created) and close it so long runs do not accumulate figures."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Belief simplex


def barycentric(beliefs: np.ndarray) -> np.ndarray:
    """3-state beliefs (N, 3) -> 2D points in an equilateral triangle with vertices (0,0), (1,0), (1/2, sqrt3/2)."""
    b = np.asarray(beliefs, dtype=np.float64)
    return np.stack([b[:, 1] + b[:, 2] / 2, b[:, 2] * _SQRT3_2], axis=1)  # (N, 2)


def _pca(true: np.ndarray, k: int):
    """Top-k principal axes of ``true`` (N, S): returns (mean (S,), axes (S, k))."""
    mean = true.mean(axis=0)
    _, _, vt = np.linalg.svd(true - mean, full_matrices=False)
    axes = vt[:k].T  # (S, <=k)
    if axes.shape[1] < k:  # fewer states than k: pad with zero axes so shapes stay fixed
        axes = np.pad(axes, ((0, 0), (0, k - axes.shape[1])))
    return mean, axes


def belief_colors(true: np.ndarray) -> np.ndarray:
    """RGB per point from the true belief: the belief itself for 3 states, else its top-3 PCA scores."""
    true = np.asarray(true, dtype=np.float64)
    if true.shape[1] == 3:
        return np.clip(true, 0, 1)
    mean, axes = _pca(true, 3)
    z = (true - mean) @ axes  # (N, 3)
    span = z.max(axis=0) - z.min(axis=0)
    return np.clip((z - z.min(axis=0)) / np.where(span > 0, span, 1), 0, 1)


def belief_simplex(
    true: np.ndarray,
    pred: np.ndarray,
    title: str = "",
    max_points: int = 20000,
    seed: int = 0,
    point_size: float | None = None,
):
    """True beliefs (left) and probe-predicted beliefs (right), coloured by the true belief.

    3-state beliefs are drawn in the 2-simplex (barycentric); more states are projected onto the top-2
    principal components of the *true* beliefs, and predictions onto the same axes. ``point_size=None``
    scales markers with the number of distinct beliefs, so a 36-state mixed-state presentation (RRXOR)
    is as visible as a fractal of thousands of points.
    """
    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if true.shape != pred.shape or true.ndim != 2:
        raise ValueError(f"belief_simplex: true {true.shape} and pred {pred.shape} must both be (N, S)")
    if len(true) > max_points:
        keep = np.random.default_rng(seed).choice(len(true), max_points, replace=False)
        true, pred = true[keep], pred[keep]
    colors = belief_colors(true)
    if point_size is None:
        distinct = len(np.unique(true.round(6), axis=0))
        point_size = float(np.clip(1500 / distinct, 1.0, 40.0))
    sizes = (point_size, min(point_size, 4.0))  # predictions scatter: keep their markers small
    if true.shape[1] == 3:
        xy_true, xy_pred = barycentric(true), barycentric(pred)
        labels = ("", "")
    else:
        mean, axes = _pca(true, 2)
        xy_true, xy_pred = (true - mean) @ axes, (pred - mean) @ axes
        labels = ("PC1 of true beliefs", "PC2 of true beliefs")
    fig, axs = plt.subplots(1, 2, figsize=(10, 4.8))
    panels = zip(axs, (xy_true, xy_pred), sizes, ("true beliefs", "probe prediction (held out)"))
    for ax, xy, size, name in panels:
        ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=size, linewidths=0, rasterized=True)
        if true.shape[1] == 3:
            ax.plot([0, 1, 0.5, 0], [0, 0, _SQRT3_2, 0], color="0.6", lw=0.8)
            ax.set_aspect("equal")
            ax.set_axis_off()
        else:
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
        ax.set_title(name)
    # Same limits on both panels so the shapes compare directly.
    lims = np.concatenate([xy_true, xy_pred])
    lo, hi = np.quantile(lims, 0.001, axis=0), np.quantile(lims, 0.999, axis=0)
    pad = 0.05 * (hi - lo + 1e-9)
    for ax in axs:
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Probe skill by layer

#: what a skill below 0 means (docs/design.md §6 rule 2), under every figure that shows skill
SKILL_CAPTION = (
    "skill = 1 - MSE / MSE(same probe on a random-init network): 1 is exact, 0 is no better than the "
    "random-init probe, below 0 is worse than it"
)


def _caption(fig, text: str, title: str = "") -> None:
    """``text`` as a line under the panels (and room for a suptitle)."""
    fig.tight_layout(rect=(0, 0.07, 1, 0.94 if title else 1))
    fig.text(0.5, 0.015, text, ha="center", va="bottom", fontsize=7, wrap=True)


def _layer_rows(table: pa.Table, target: str):
    rows = [r for r in table.to_pylist() if r["target"] == target]
    stream = sorted(
        (
            r
            for r in rows
            if r["kind"] in ("embed", "resid_pre", "resid_post") and not (r["kind"] == "resid_pre" and r["layer"] > 0)
        ),
        key=lambda r: r["depth"],
    )
    if any(r["kind"] == "resid_pre" for r in stream):  # blocks.0 resid_pre is the embedding plus positions
        stream = [r for r in stream if r["kind"] != "embed"]
    extra = {r["kind"]: r for r in rows if r["kind"] in ("ln_final", "concat")}
    return stream, extra


def skill_by_layer(before: pa.Table, after: pa.Table | None = None, targets: list[str] | None = None, title: str = ""):
    """Probe skill (left) and held-out R^2 (right) along the residual stream, per target.

    With ``after`` given, the first table is drawn dashed ("before RL") and the second solid ("after RL").
    The concatenation of all layers and the final normed stream are drawn as markers right of the last
    layer. R^2 shows the random-init control dotted, the reason skill, not R^2, is the evidence.
    """
    targets = targets or sorted(set(before.column("target").to_pylist()))
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    tables = [("before RL", before, "--"), ("after RL", after, "-")] if after is not None else [("", before, "-")]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ti, target in enumerate(targets):
        c = colors[ti % len(colors)]
        for label, table, ls in tables:
            stream, extra = _layer_rows(table, target)
            if not stream:
                continue
            name = f"{target} {label}".strip()
            x = [r["depth"] for r in stream]
            ax_s.plot(x, [r["skill"] for r in stream], ls, color=c, marker="o", label=name)
            ax_s.fill_between(
                x, [r["skill_ci_low"] for r in stream], [r["skill_ci_high"] for r in stream], color=c, alpha=0.15, lw=0
            )
            ax_r.plot(x, [r["r2"] for r in stream], ls, color=c, marker="o", label=name)
            ax_r.plot(x, [r["r2_random_init"] for r in stream], ":", color=c)
            last = max(x)
            for off, kind, marker in ((0.35, "ln_final", "s"), (0.7, "concat", "*")):
                fill = "none" if ls == "--" else "full"
                if kind in extra:
                    ax_s.plot([last + off], [extra[kind]["skill"]], marker, color=c, ms=9, fillstyle=fill)
                    ax_r.plot([last + off], [extra[kind]["r2"]], marker, color=c, ms=9, fillstyle=fill)
    for ax, ylabel in ((ax_s, "skill = 1 - MSE / MSE(random init)"), (ax_r, "held-out R$^2$ (dotted: random init)")):
        ax.set_xlabel("layer (0 = embedding)   ■ final norm   ★ all layers")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_s.axhline(0, color="0.3", lw=0.9)
    ax_s.legend(fontsize=8)
    ax_r.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _caption(fig, SKILL_CAPTION, title)
    return fig


def skill_pre_post(labels: list[str], pre, post, ylabel: str):
    """Probe skill before and after RL per trial, as bars, with the 0 line and what below it means."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels)), 3.9))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, pre, 0.4, label="before RL")
    ax.bar(x + 0.2, post, 0.4, label="after RL")
    ax.axhline(0, color="0.3", lw=0.9)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    _caption(fig, SKILL_CAPTION)
    return fig


def reward_curves(series: list[tuple[str, list, list]], xlabel: str = "PPO iteration", ylabel: str = "reward per step"):
    """One curve per ``(label, x, y)``; the legend sits below the axes, where it hides no curve."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6 + 0.18 * math.ceil(len(series) / 2)), layout="constrained")
    for label, x, y in series:
        ax.plot(x, y, marker=".", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# Generic helpers used by later stages


def _columns(history, keys: list[str], x: str) -> tuple[dict[str, list], list[str]]:
    if isinstance(history, pa.Table):
        history = history.to_pylist()
    if isinstance(history, dict):
        cols = {k: list(v) for k, v in history.items()}
    else:
        present = {k for row in history for k in row}
        cols = {k: [row.get(k, np.nan) for row in history] for k in {x, *keys} & present}
    missing = [k for k in keys if k not in cols]
    if missing:
        raise KeyError(f"curves: no column {missing} in history (has {sorted(cols)})")
    return cols, keys


def curves(history, keys: list[str], x: str = "step", title: str = "", logy: tuple[str, ...] = ()):
    """One panel per key against ``x``; ``history`` is a list of dicts, a dict of lists or a pyarrow Table.

    Rows lacking a key are skipped for that panel (metrics logged at different cadences share a history).
    """
    cols, keys = _columns(history, keys, x)
    xs = np.asarray(cols[x], dtype=float) if x in cols else np.arange(len(cols[keys[0]]), dtype=float)
    n = len(keys)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig, axs = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, key in zip(axs.flat, keys):
        ys = np.asarray([np.nan if v is None else v for v in cols[key]], dtype=float)
        ok = np.isfinite(ys) & np.isfinite(xs)
        ax.plot(xs[ok], ys[ok], marker="." if ok.sum() < 50 else None)
        ax.set_xlabel(x)
        ax.set_title(key)
        if key in logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[n:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def weight_diff_heatmap(
    table,
    row: str = "module",
    col: str = "layer",
    value: str = "rel_diff",
    title: str = "",
    annotate: bool = True,
    cmap: str = "viridis",
):
    """Heatmap of ``value`` pivoted by ``row`` x ``col`` (e.g. relative weight change per module and layer).

    ``table`` is a pyarrow Table or a list of dicts; missing cells are blank.
    """
    records = table.to_pylist() if isinstance(table, pa.Table) else list(table)
    for k in (row, col, value):
        if records and k not in records[0]:
            raise KeyError(f"weight_diff_heatmap: no column {k!r} (has {sorted(records[0])})")
    rows = list(dict.fromkeys(r[row] for r in records))
    cols = sorted(dict.fromkeys(r[col] for r in records), key=lambda c: (isinstance(c, str), c))
    grid = np.full((len(rows), len(cols)), np.nan)
    for r in records:
        grid[rows.index(r[row]), cols.index(r[col])] = r[value]
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * max(len(cols), 2), 1.0 + 0.45 * max(len(rows), 2)))
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    fig.colorbar(im, ax=ax, label=value)
    if annotate and grid.size <= 400:
        finite = grid[np.isfinite(grid)]
        mid = (finite.max() + finite.min()) / 2 if finite.size else 0
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="black" if v > mid else "white")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
