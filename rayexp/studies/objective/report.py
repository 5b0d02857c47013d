"""The objective study in `rayexp report`: the ``task_vectors`` analysis's summaries on the parent run
(the classifier, the cosines by kind of pair, the superposition gains and the negation leans, with
their Student-t or seed-jackknife intervals), as ``task_vectors.csv``; and the per-module classifier
with raw and Holm-adjusted permutation p-values (``task_vector_modules.csv``); where ``matched_negation``
ran, each reward's lean beyond the null matched in size beside the unmatched one (``matched_negation.csv``)."""

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


MATCHED = "sweep/matched_negation/"


def matched_rows(parent_metrics: dict[str, float]) -> list[dict]:
    """One row per group, task and lambda of ``matched_negation``: the lean beyond the null at one lambda
    and beyond the null negated as far from theta_A, paired over the same seeds, with the norm ratio."""

    def cell(stem: str, digits: int = 3) -> str:
        m, lo, hi = (parent_metrics.get(f"{stem}/{k}") for k in ("mean", "ci_low", "ci_high"))
        return "-" if m is None else f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"

    rows = []
    for key in sorted(parent_metrics):
        if not (key.startswith(MATCHED) and key.endswith("/beyond_matched_null/mean")):
            continue
        group, _, task, lam = key[len(MATCHED) :].split("/")[:4]
        stem = f"{MATCHED}{group}/negation/{task}"
        rows.append(
            {
                "group": group,
                "task": task,
                "lambda": lam.removeprefix("lam"),
                "|tau_task| / |tau_null|": cell(f"{stem}/norm_ratio", 2),
                "beyond_null": cell(f"{stem}/{lam}/beyond_null"),
                "beyond_matched_null": cell(f"{stem}/{lam}/beyond_matched_null"),
                "seeds": int(parent_metrics.get(f"{stem}/{lam}/beyond_matched_null/n", 0)),
            }
        )
    return rows


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
    matched = matched_rows(inp.parent_metrics)
    if matched:
        print("\nnegation beyond the null, and beyond the null's update scaled to the reward's norm:", file=inp.file)
        print(format_table(matched), file=inp.file)
        if inp.out is not None:
            write_csv(matched, inp.out / "matched_negation.csv")
