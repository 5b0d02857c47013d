"""The geometry summary in `rayexp report`: what ``geometry_summary`` logged on a sweep's parent run
(tables ``sweep/geometry_summary/{group}__geometry_{curve,ablation,contrast}.parquet`` and its figures),
written as CSVs and PNGs and printed as one compact table per (process, task)."""

from __future__ import annotations

import sys
from pathlib import Path

from rayexp import tracking
from rayexp.studies.composition.geometry_summary import JOINT_ERASURES
from rayexp.tables import format_table, write_csv

#: the erasures the compact table prints, each beside its random control
SHOWN = (
    "factor0", "factor1", "both", "random_both", "joint_only", "random_joint_only", "placebo_joint_only",
    "repaired_joint_only", "beyond_factors", "random_beyond_factors", "placebo_beyond_factors",
    "repaired_beyond_factors", "beyond_factor_poly", "repaired_beyond_factor_poly", "beyond_factor_emitter",
    "repaired_beyond_factor_emitter", "joint", "random_joint",
)  # fmt: skip


def geometry_tables(uri: str, parent: str, out: Path | None = None) -> dict[str, list[dict]]:
    """{"curve": rows, "ablation": rows, "contrast": rows} from the parent run (empty lists when the analysis never ran);
    with ``out``, the summary's figures are copied there."""
    import shutil
    import tempfile

    import pyarrow.parquet as pq

    c = tracking.client(uri)
    tables: dict[str, list[dict]] = {"curve": [], "ablation": [], "contrast": []}
    names = [a.path for a in c.list_artifacts(parent, "sweep/geometry_summary")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(names):
            for kind in tables:
                if name.endswith(f"__geometry_{kind}.parquet"):
                    tables[kind] += pq.read_table(c.download_artifacts(parent, name, tmp)).to_pylist()
        if out is not None and any(tables.values()):
            for a in c.list_artifacts(parent, "figures/sweep/geometry_summary"):
                if a.path.endswith(".png"):
                    shutil.copy(c.download_artifacts(parent, a.path, tmp), out / Path(a.path).name)
    return tables


def compact(tables: dict[str, list[dict]]) -> list[dict]:
    """Per (process, task): the curve's quantities pre -> post and the post-RL ablations at the curve's layer."""
    out: dict[tuple[str, str], dict] = {}
    curve = tables["curve"]
    for r in curve:
        row = out.setdefault(
            (r["process"], r["task"]), {"process": r["process"], "task": r["task"], "layer": r["layer"]}
        )
        last = max(x["iteration"] for x in curve if (x["process"], x["task"]) == (r["process"], r["task"]))
        if r["iteration"] in (0, last) and r["quantity"] in ("r2/joint_only", "dim95", "overlap"):
            key = f"{r['quantity']} {'pre' if r['iteration'] == 0 else 'post'}"
            row[key] = f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    for r in tables["ablation"]:
        row = out.get((r["process"], r["task"]))
        at_row = row and r["model"] == "post" and r["layer"] == row["layer"] and r["quantity"] == "removed"
        if at_row and r["condition"] in SHOWN:
            row[f"removed {r['condition']}"] = f"{r['mean']:.2f}"
    return list(out.values())


def contrasts_at(tables: dict[str, list[dict]], scored: str = "all") -> list[dict]:
    """The contrast table's rows for the joint erasures at each (process, task)'s curve layer, one
    row per (process, task, condition), each contrast "mean [low, high]" in its own column; ``scored``:
    the reward on ``all`` sequences or on the ``held_out`` half the erasures were not fitted on (runs
    from before that column existed have ``all`` rows only)."""
    layers = {(r["process"], r["task"]): r["layer"] for r in tables["curve"]}
    out: dict[tuple, dict] = {}
    for r in tables.get("contrast", []):
        if r.get("scored", "all") != scored:
            continue
        at_layer = r["layer"] == layers.get((r["process"], r["task"]))
        if r["condition"] in JOINT_ERASURES and at_layer:
            row = out.setdefault(
                (r["process"], r["task"], r["condition"]),
                {"process": r["process"], "task": r["task"], "layer": r["layer"], "erasure": r["condition"]},
            )
            minus = (
                r["minus"].split("_")[0] if r["minus"].startswith(("random_", "placebo_", "repaired_")) else r["minus"]
            )
            minus = minus.replace(", each net of its placebo", " (net of placebos)")
            minus = minus.replace(", each net of its re-pairing", " (net of re-pairings)")
            bounds = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if r["n_seeds"] > 1 else f"[n = {r['n_seeds']}]"
            # *: the interval Bonferroni-adjusted over the contrast's layers excludes 0 too
            family = r.get("fw_low", float("nan")) > 0 or r.get("fw_high", float("nan")) < 0
            row[f"minus {minus}"] = f"{r['mean']:+.2f} {bounds}{' *' if family else ''}"
    return list(out.values())


def report_geometry(uri: str, parent: str, out: Path | None, file=sys.stdout) -> None:
    tables = geometry_tables(uri, parent, out)
    if not any(tables.values()):
        return
    print("\nbelief geometry (docs/results/geometry.md):\n" + format_table(compact(tables)), file=file)
    if rows := contrasts_at(tables):
        title = (
            "joint erasures after RL, share removed minus each reference, paired by seed (95 % t; "
            "*: also with Bonferroni over the layers)"
        )
        print(f"\n{title}:\n" + format_table(rows), file=file)
    if rows := contrasts_at(tables, "held_out"):
        title = "the same, the reward scored on the held-out half of the sequences only (no basis was fitted there)"
        print(f"\n{title}:\n" + format_table(rows), file=file)
    if out is not None:
        for kind, rows in tables.items():
            write_csv(rows, out / f"geometry_{kind}.csv")
            print(f"table: {out / f'geometry_{kind}.csv'}", file=file)
