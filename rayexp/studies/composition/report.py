"""The composition study in `rayexp report` and after `rayexp run`: the verdict table (one row per
(process, task) group that the across-trial ``verdict`` analysis logged on the parent run,
``verdict.csv``) and the verdict's signals per task, seeds as points (``verdict_signals.png``)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from rayexp import tracking
from rayexp.studies.composition.geometry_report import report_geometry
from rayexp.studies.composition.verdict import Thresholds
from rayexp.study import ReportInput
from rayexp.tables import format_table, write_csv

VERDICT_COLUMNS = (
    "process",
    "task",
    "n_seeds",
    "u_rw",
    "u_el",
    "spec",
    "margin",
    "shortfall",
    "below_bar",
    "share_max_hi",
    "share_max_drift_hi",
    "share_max_learned_hi",
    "score",
    "score_ci_low",
    "score_ci_high",
    "excess",
    "verdict",
)


def verdict_rows(uri: str, parent: str, logged_as: str = "verdict") -> list[dict]:
    """The verdict table of a sweep: one row per (process, task) group that the across-trial
    ``verdict`` analysis logged on the parent run (empty when it never ran). ``logged_as``:
    ``verdict_pooled_OTHER`` for the table pooled with another sweep's seeds (``--pool``)."""
    import tempfile

    import pyarrow.parquet as pq

    c = tracking.client(uri)
    names = [a.path for a in c.list_artifacts(parent, f"sweep/{logged_as}") if a.path.endswith("__verdict.parquet")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(names):
            rows += pq.read_table(c.download_artifacts(parent, name, tmp)).to_pylist()
    first = [k for k in VERDICT_COLUMNS if rows and k in rows[0]]
    return [{k: r[k] for k in first} | {k: v for k, v in r.items() if k not in first} for r in rows]


def pooled_tables(uri: str, parent: str) -> list[str]:
    """The names the verdict was logged under pooled with other sweeps (``rayexp analyze --pool``)."""
    c = tracking.client(uri)
    return sorted(
        a.path.split("/")[-1] for a in c.list_artifacts(parent, "sweep") if a.is_dir and "/verdict_pooled_" in a.path
    )


def print_verdicts(rows: list[dict], file=sys.stdout, title: str = "verdict") -> None:
    if rows:
        brief = [{k: r[k] for k in (*VERDICT_COLUMNS, "reason") if k in r} for r in rows]
        print(f"\n{title} (rule: README, 'Reading a verdict'):\n" + format_table(brief), file=file)


#: the verdict's signals as trial metrics, drawn per task with seeds as points
VERDICT_SIGNALS = {
    "unexplained by a map of p_pre": "analysis/composition/classes/reweighting/unexplained/post",
    "unexplained by a readout": "analysis/composition/classes/elicitation/unexplained/post",
    "the same, random-init features": "analysis/composition/classes/elicitation_random_init/unexplained/post",
    "per-phase greedy margin": "analysis/composition/margin_phase_greedy/post",
    "reward shortfall of the map of p_pre": "analysis/composition/classes/reweighting/shortfall/post",
    "resolution bar - u, map of p_pre": "analysis/composition/classes/reweighting/below_bar/post",
    "composed share at most (decides nothing)": "analysis/composition/classes/composed_share_max/post",
    "pass@1024 of pre": "analysis/composition/support/pass_at_1024/pre",
    "pre prob. of post's choice": "analysis/composition/support/pre_prob_of_post_choice",
}


#: one colour per task across every panel, so a task reads as one colour down the figure
TASK_COLORS = {"negative_control": "tab:blue", "positive_control": "tab:orange", "shuffled_null": "tab:gray"}


def verdict_figure(
    runs: list,
    path: Path,
    verdicts: dict[tuple[str, str], str] | None = None,
    u_max: float = Thresholds.u_max,
    margin_min: float = Thresholds.margin_min,
    shortfall_min: float = Thresholds.shortfall_min,
) -> Path:
    """Each verdict signal per (process, task), one row per group with its verdict (``verdicts``, from the
    verdict table) in its label, every seed a point, with the rule's thresholds where they apply to a
    trial's value: ``u_max`` on the unexplained shares of the two classes, ``margin_min`` on the margin, 0
    on the resolution bar minus the map's share (:mod:`.resolution`), and ``shortfall_min`` on the reward
    shortfall of the map of p_pre (a trial logged before a metric has no point there) (verdict.Thresholds'
    defaults; the rule applies them to the intervals over seeds). ``tol`` is on the paired excess over
    the null, which no per-trial panel shows. Rows run down and panels share them, so a dozen groups
    stay legible where tick labels under one row of panels overlapped."""
    import numpy as np

    from rayexp.figures import plt  # the Agg backend, set once there

    groups = sorted({(r.data.tags.get("rayexp.process", "?"), r.data.tags.get("rayexp.task", "?")) for r in runs})
    verdicts = verdicts or {}
    labels = [f"{p}  {t}" + (f"  \u2192 {verdicts[p, t]}" if (p, t) in verdicts else "") for p, t in groups]
    rows = {g: len(groups) - 1 - i for i, g in enumerate(groups)}  # the first group on top
    ncols = 3
    nrows = -(-len(VERDICT_SIGNALS) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.0 * ncols + 3.0, (0.3 * len(groups) + 1.0) * nrows + 0.8), sharey=True, squeeze=False
    )
    thresholds = {
        VERDICT_SIGNALS["unexplained by a map of p_pre"]: (u_max, "u_max"),
        VERDICT_SIGNALS["unexplained by a readout"]: (u_max, "u_max"),
        VERDICT_SIGNALS["per-phase greedy margin"]: (margin_min, "margin_min"),
        VERDICT_SIGNALS["reward shortfall of the map of p_pre"]: (shortfall_min, "shortfall_min"),
        VERDICT_SIGNALS["resolution bar - u, map of p_pre"]: (0.0, "reweighting needs >"),
    }
    breaks = [rows[g] - 0.5 for g, nxt in itertools.pairwise(groups) if g[0] != nxt[0]]  # between processes
    for ax, (title, key) in zip(axes.flat, VERDICT_SIGNALS.items()):
        for g in groups:
            vals = [
                r.data.metrics[key]
                for r in runs
                if (r.data.tags.get("rayexp.process"), r.data.tags.get("rayexp.task")) == g and key in r.data.metrics
            ]
            if vals:
                jitter = np.linspace(-0.15, 0.15, len(vals))
                ax.plot(vals, rows[g] + jitter, "o", ms=4, alpha=0.75, color=TASK_COLORS.get(g[1], "tab:purple"))
                ax.plot([np.mean(vals)] * 2, [rows[g] - 0.3, rows[g] + 0.3], "k-", lw=1.2)
        for y in breaks:
            ax.axhline(y, color="0.75", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.axvline(0, color="k", lw=0.4)
        ax.tick_params(axis="x", labelsize=7)
        if key in thresholds:
            value, name = thresholds[key]
            ax.axvline(value, color="tab:red", ls="--", lw=1, label=f"{name} {value:g}")
            ax.legend(fontsize=7, loc="best")
    for ax in axes.flat[len(VERDICT_SIGNALS) :]:
        ax.set_visible(False)
    axes[0, 0].set_yticks([rows[g] for g in groups], labels)
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize=7)
    axes[0, 0].set_ylim(-0.6, len(groups) - 0.4)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.text(
        0.5,
        0.005,
        f"dashed: the rule's thresholds. explained needs the CI high over seeds of the unexplained share below "
        f"u_max {u_max:g} (and the paired excess over the null below tol); composition needs the margin's CI low "
        f"above margin_min {margin_min:g} and the shortfall's above shortfall_min {shortfall_min:g};\nreweighting "
        "also needs the resolution bar's margin above 0 where the joint-target policy is visible to the map. "
        "Points: seeds; black bars: means.",
        ha="center",
        va="bottom",
        fontsize=7,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_section(inp: ReportInput) -> None:
    report_geometry(inp.uri, inp.parent, inp.out, inp.file)
    verdicts = verdict_rows(inp.uri, inp.parent)
    if verdicts:
        print_verdicts(verdicts, inp.file)
        if inp.out is not None:
            write_csv(verdicts, inp.out / "verdict.csv")
            print(f"table: {inp.out / 'verdict.csv'}", file=inp.file)
            labels = {(r["process"], r["task"]): r["verdict"] for r in verdicts if "verdict" in r}
            print(f"figure: {verdict_figure(inp.runs, inp.out / 'verdict_signals.png', labels)}", file=inp.file)
    for name in pooled_tables(inp.uri, inp.parent):
        rows = verdict_rows(inp.uri, inp.parent, name)
        print_verdicts(rows, inp.file, title=f"{name} (this sweep's trials with another sweep's seeds)")
        if inp.out is not None and rows:
            write_csv(rows, inp.out / f"{name}.csv")
            print(f"table: {inp.out / f'{name}.csv'}", file=inp.file)


def after_sweep(inp: ReportInput) -> None:
    print_verdicts(verdict_rows(inp.uri, inp.parent), inp.file)
