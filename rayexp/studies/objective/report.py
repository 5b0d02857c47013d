"""The objective study in `rayexp report`: the ``task_vectors`` analysis's summaries on the parent run
(the classifier, the cosines by kind of pair, the superposition gains and the negation leans), as
``task_vectors.csv``."""

from __future__ import annotations

from rayexp.study import ReportInput
from rayexp.tables import format_table, write_csv


def objective_rows(parent_metrics: dict[str, float]) -> list[dict]:
    """One row per task-vector summary the parent run holds (``sweep/task_vectors/{group}/...``)."""
    rows = []
    wanted = ("classifier/", "cos/", "superpose/", "negation/", "similarity/")
    for key in sorted(parent_metrics):
        if not key.startswith("sweep/task_vectors/"):
            continue
        group, name = key.split("/", 3)[2:4]
        if (
            "/lam0/" in name  # the control itself: zero by construction
            or ("/lean_" in name and "/lean_A/" not in name and "/lean_B/" not in name)  # score_also's, in MLflow
            or name.startswith("classifier/module/")
            or not name.startswith(wanted)
            or name.endswith(("/ci_low", "/ci_high", "/n"))
        ):
            continue
        stem = key.removesuffix("/mean")
        lo, hi = parent_metrics.get(f"{stem}/ci_low"), parent_metrics.get(f"{stem}/ci_high")
        ci = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
        rows.append({"group": group, "metric": name, "value": round(parent_metrics[key], 4), "95% CI": ci})
    return rows


def report_section(inp: ReportInput) -> None:
    rows = objective_rows(inp.parent_metrics)
    if not rows:
        return
    print("\nobjectives: task vectors (README, 'Objectives in weight diffs'):", file=inp.file)
    print(format_table(rows), file=inp.file)
    if inp.out is not None:
        write_csv(rows, inp.out / "task_vectors.csv")
