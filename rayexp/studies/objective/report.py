"""The objective study in `rayexp report`: the ``task_vectors`` analysis's summaries on the parent run
(the classifier, the cosines by kind of pair, the superposition gains and the negation leans, with
their Student-t or seed-jackknife intervals), as ``task_vectors.csv``; and the per-module classifier
with raw and Holm-adjusted permutation p-values (``task_vector_modules.csv``)."""

from __future__ import annotations

import math

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


MODULE = "classifier/module/"


def module_rows(parent_metrics: dict[str, float], alpha: float = 0.05) -> list[dict]:
    """One row per module the classifier was run on: accuracy, permutation p, Holm-adjusted p (over
    every module tested in that group) and whether the module reads the reward at family-wise
    ``alpha``. Sorted by adjusted p, so the modules that carry the objective come first."""
    rows = []
    for key, acc in parent_metrics.items():
        if not (key.startswith("sweep/task_vectors/") and key.endswith("/accuracy")):
            continue
        group, name = key.split("/", 3)[2:4]
        if not name.startswith(MODULE):
            continue
        stem = key.removesuffix("/accuracy")
        p, p_holm = parent_metrics.get(f"{stem}/p_value"), parent_metrics.get(f"{stem}/p_holm")
        n = parent_metrics.get(f"sweep/task_vectors/{group}/{MODULE}n_tested")
        rows.append(
            {
                "group": group,
                "module": name[len(MODULE) :].removesuffix("/accuracy"),
                "accuracy": round(acc, 3),
                "p": p,
                "p Holm": p_holm,
                "modules tested": int(n) if n is not None else None,
                f"reads the reward (Holm p < {alpha:g})": _verdict(p_holm, alpha),
            }
        )
    return sorted(rows, key=lambda r: (r["group"], _finite_or_inf(r["p Holm"]), r["module"]))


def _verdict(p_holm: float | None, alpha: float) -> str:
    return "-" if p_holm is None or not math.isfinite(p_holm) else ("yes" if p_holm < alpha else "no")


def _finite_or_inf(p: float | None) -> float:
    return p if p is not None and math.isfinite(p) else math.inf


def report_section(inp: ReportInput) -> None:
    rows = objective_rows(inp.parent_metrics)
    if not rows:
        return
    print("\nobjectives: task vectors (docs/results/objective.md):", file=inp.file)
    print(format_table(rows), file=inp.file)
    if inp.out is not None:
        write_csv(rows, inp.out / "task_vectors.csv")
    modules = module_rows(inp.parent_metrics)
    if modules:
        print(
            "\nwhich modules carry it: per-module classifier, permutation p and Holm's family-wise adjustment "
            "over the modules tested (dependent tests on the same trials):",
            file=inp.file,
        )
        print(format_table(modules), file=inp.file)
        if inp.out is not None:
            write_csv(modules, inp.out / "task_vector_modules.csv")
