"""The development study in `rayexp report`: how far PPO moved each trial's LLC (``development_llc.csv``),
per task over seeds and against the shuffled-reward null, paired by seed (``development_growth.csv``),
and the LLC over PPO iterations of every trial, coloured by task (``development_llc_rl.png``).

Reads each trial's ``llc_rl`` table, so trials logged before the ``rl/growth`` metrics existed are
reported the same way. The arms of a seed start from the same pretrained weights, so their
iteration-0 LLCs must be one number; the section says whether they are (if not, the arms did not
share a pretrained model, or the estimator changed between them, and the comparison is void).
"""

from __future__ import annotations

import math
from pathlib import Path

from rayexp import tracking
from rayexp.studies.development.growth import matched_ratio, paired_growth, rl_growth
from rayexp.study import ReportInput
from rayexp.tables import format_table, write_csv

LLC = "analysis/llc/"


def llc_tables(runs: list, uri: str | None = None) -> dict[str, dict[str, list]]:
    """Each trial's ``llc_rl`` table (columns) by run id, for the runs whose ``llc`` analysis ran."""
    return tracking.run_tables([r for r in runs if LLC + "seconds_per_estimate" in r.data.metrics], "llc_rl", uri)


def _arm(run) -> tuple[str, str, bool]:
    tags = run.data.tags
    return tags.get("rayexp.process", "?"), tags.get("rayexp.task", "?"), tracking.is_null_run(run)


def _f(v: float, fmt: str = ".1f") -> str:
    return "-" if not math.isfinite(v) else format(v, fmt)


def trial_rows(runs: list, tables: dict[str, dict[str, list]]) -> list[dict]:
    """One row per trial: its arm, seed and :func:`.growth.rl_growth`."""
    rows = []
    for r in runs:
        if r.info.run_id not in tables:
            continue
        process, task, null = _arm(r)
        g = rl_growth(tables[r.info.run_id])
        seed = int(r.data.params.get("seed", -1))
        rows.append({"process": process, "task": task, "null": null, "seed": seed, **g, "run": r.info.run_id})
    return sorted(rows, key=lambda x: (x["process"], x["null"], x["task"], x["seed"]))


def _arms(trials: list[dict], process: str) -> dict[tuple[str, bool], dict[int, dict]]:
    """The process's trials by (task, is null), then by seed; an arm repeated across sweeps: the first's."""
    arms: dict[tuple[str, bool], dict[int, dict]] = {}
    for t in (t for t in trials if t["process"] == process):
        arms.setdefault((t["task"], t["null"]), {}).setdefault(t["seed"], t)
    return arms


def _paired(arm: dict[int, dict], other: dict[int, dict], tables: dict[str, dict[str, list]]) -> tuple[dict, str]:
    """``arm`` against ``other`` (trials by seed), seed by seed at the last iteration both are healthy:
    :func:`.growth.paired_growth` of the :func:`.growth.matched_ratio` s, and the iterations compared."""
    matched = {
        seed: matched_ratio(tables[t["run"]], tables[other[seed]["run"]]) for seed, t in arm.items() if seed in other
    }
    its = [f"{m['iteration']:.0f}" for _, m in sorted(matched.items()) if math.isfinite(m["iteration"])]
    return paired_growth({seed: m["ratio"] for seed, m in matched.items()}), "/".join(its) or "-"


def _interval(p: dict) -> str:
    return f"{p['ratio']:.2f} [{p['low']:.2f}, {p['high']:.2f}]"


def between_tasks(trials: list[dict], tables: dict[str, dict[str, list]]) -> list[dict]:
    """Per process, each pair of (non-null) tasks set against each other as a task is set against the null:
    seed by seed at the last iteration both are healthy (:func:`.growth.matched_ratio`). "Not beyond the
    null" for one task and "beyond" for another is not a difference between them; this row tests that."""
    out = []
    for process in dict.fromkeys(t["process"] for t in trials):
        tasks = sorted((task, by_seed) for (task, null), by_seed in _arms(trials, process).items() if not null)
        for i, (a, sa) in enumerate(tasks):
            for b, sb in tasks[i + 1 :]:
                p, its = _paired(sa, sb, tables)
                finite = math.isfinite(p["low"])
                out.append(
                    {
                        "process": process,
                        "growth of / over": f"{a} / {b}",
                        "ratio [95% CI]": _interval(p) if finite else "-",
                        "pairs": f"{p['seeds']:.0f}",
                        "sign-flip p": _f(p["p"], ".3f"),
                        "iterations compared": its,
                        "differ": ("yes" if p["low"] > 1 or p["high"] < 1 else "no") if finite else "-",
                    }
                )
    return out


def growth_rows(trials: list[dict], tables: dict[str, dict[str, list]]) -> list[dict]:
    """Per (process, task): growth over the seeds that have one (``seeds``), and against the process's
    shuffled-reward null, seed by seed at the last iteration both are healthy (:func:`.growth.matched_ratio`)."""
    out = []
    for process in dict.fromkeys(t["process"] for t in trials):
        arms = _arms(trials, process)
        nulls = [by_seed for (_, null), by_seed in arms.items() if null]
        for (task, null), by_seed in arms.items():
            vals = [t["growth"] for t in by_seed.values() if math.isfinite(t["growth"])]
            row = {
                "process": process,
                "task": task + (" (null)" if null else ""),
                "seeds": len(vals),  # those with a growth, which the summary rests on, not the trials
                "growth": f"{sum(vals) / len(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]" if vals else "-",
                "vs null at the same iteration (ratio [95% CI])": "-",
                "pairs": "-",
                "sign-flip p": "-",
                "iterations compared": "-",
                "moved beyond the null": "-" if null else "no null" if not nulls else "several nulls",
            }
            if not null and len(nulls) == 1:
                p, row["iterations compared"] = _paired(by_seed, nulls[0], tables)
                row["pairs"] = f"{p['seeds']:.0f}"
                row["sign-flip p"] = _f(p["p"], ".3f")
                row["moved beyond the null"] = "-"
                if math.isfinite(p["low"]):
                    row["vs null at the same iteration (ratio [95% CI])"] = _interval(p)
                    row["moved beyond the null"] = "yes" if p["above"] == 1.0 else "not shown"
                elif math.isfinite(p["ratio"]):
                    row["vs null at the same iteration (ratio [95% CI])"] = f"{p['ratio']:.2f} [one seed]"
            out.append(row)
    return out


def repeated(trials: list[dict]) -> list[str]:
    """(process, task, seed) met more than once (sweeps holding the same arm): the report keeps the first."""
    seen: dict[tuple, int] = {}
    for t in trials:
        key = (t["process"], t["task"], t["seed"])
        seen[key] = seen.get(key, 0) + 1
    return [f"{task} seed {seed} ({process}) x{n}" for (process, task, seed), n in seen.items() if n > 1]


def start_check(trials: list[dict], rtol: float = 1e-6) -> str | None:
    """Whether the arms of each (process, seed) start from one iteration-0 LLC (one pretrained model, one
    estimator): a sentence, or None when no seed has two arms to compare. ``rtol``: a relative difference
    below it is float noise (another device or library build), not another model."""
    starts: dict[tuple[str, int], list[float]] = {}
    for t in trials:
        starts.setdefault((t["process"], t["seed"]), []).append(t["start"])
    shared = [v for v in starts.values() if len(v) > 1]
    if not shared:
        return None
    if any(not math.isfinite(x) for v in shared for x in v):
        return "iteration-0 LLC missing (NaN) in some arm: the arms cannot be checked to share a pretrained model."
    worst = max((max(v) - min(v)) / max(abs(x) for x in v) for v in shared)
    if worst <= rtol:
        return f"iteration-0 LLC is one number across the arms of each seed (largest relative difference {worst:.1e})."
    return (
        f"iteration-0 LLC DIFFERS between arms of a seed (relative {worst:.1e}): they did not share a pretrained "
        "model or an estimator, and the comparison is void."
    )


def llc_rl_figure(runs: list, tables: dict[str, dict[str, list]], path: Path) -> Path:
    """LLC over PPO iterations, each trial a line through its healthy estimates (broken where one is
    not), coloured by task (and process, if several)."""
    from rayexp.figures import plt, save_png  # matplotlib, the Agg backend set once there

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours: dict[str, str] = {}
    labelled: set[str] = set()
    processes = {_arm(r)[0] for r in runs if r.info.run_id in tables}
    for r in runs:
        t = tables.get(r.info.run_id)
        if t is None:
            continue
        process, task, _ = _arm(r)
        name = task if len(processes) == 1 else f"{task}, {process}"
        colour = colours.setdefault(name, f"C{len(colours) % 10}")
        pts = sorted(zip(t["iteration"], t["llc_mean"], t["healthy"]))
        y = [v if h else math.nan for _, v, h in pts]  # unhealthy: a gap in the line, not a value
        label = None if name in labelled else name
        labelled.add(name)
        ax.plot([i for i, _, _ in pts], y, "o-", color=colour, ms=3, alpha=0.8, label=label)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("LLC (healthy estimates)")
    ax.set_title("LLC over PPO, one line per trial", fontsize=9)
    ax.legend(fontsize=8)
    return save_png(fig, path, 120)


def report_section(inp: ReportInput) -> None:
    tables = llc_tables(inp.runs)
    trials = trial_rows(inp.runs, tables)
    if not trials:
        return
    shown = [
        {
            "process": t["process"],
            "task": t["task"],
            "seed": t["seed"],
            "LLC it 0": _f(t["start"]),
            "last healthy LLC (it)": f"{_f(t['last'])} ({_f(t['last_iteration'], '.0f')})",
            "growth": _f(t["growth"], ".2f"),
            "healthy after 0": f"{t['healthy']:.0f}/{t['estimates']:.0f}",
            "reward it 0 -> last": f"{_f(t['reward_start'], '.3f')} -> {_f(t['reward_final'], '.3f')}",
        }
        for t in trials
    ]
    print("\ndevelopment: the LLC under PPO per trial (docs/results/development.md):", file=inp.file)
    print(format_table(shown), file=inp.file)
    growth = print_growth(trials, tables, inp.file)
    if inp.out is not None:
        write_csv([{k: v for k, v in t.items() if k != "run"} for t in trials], inp.out / "development_llc.csv")
        write_csv(growth, inp.out / "development_growth.csv")
        print(f"figure: {llc_rl_figure(inp.runs, tables, inp.out / 'development_llc_rl.png')}", file=inp.file)


def print_growth(trials: list[dict], tables: dict[str, dict[str, list]], file) -> list[dict]:
    """The growth table against the null, and the checks on the arms' shared start; its rows."""
    growth = growth_rows(trials, tables)
    print(
        "\nLLC growth (last healthy / iteration 0), mean [min, max] over seeds; against the shuffled-reward "
        "null paired by seed, each seed at the last iteration both are healthy (geometric mean of the growth "
        "ratios, Student-t on the log; sign-flip p: the exact two-sided test of the same logs, no normality "
        "assumed, floor 2/2^pairs):",
        file=file,
    )
    print(format_table(growth), file=file)
    if pairs := between_tasks(trials, tables):
        print("\nTask against task, paired by seed in the same way:", file=file)
        print(format_table(pairs), file=file)
    for line in (start_check(trials), *(f"repeated, the first sweep's kept: {r}" for r in repeated(trials))):
        if line:
            print(line, file=file)
    return growth


def after_sweep(inp: ReportInput) -> None:
    """What ``rayexp run`` prints after a sweep whose trials ran ``llc``: the growth against the null."""
    runs = tracking.trial_runs_of(inp.uri, inp.parent)
    if tables := llc_tables(runs, inp.uri):  # only the runs whose llc ran
        print_growth(trial_rows(runs, tables), tables, inp.file)
