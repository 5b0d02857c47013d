"""The rare-capability study in `rayexp report`: trigger rate, reward and B's belief R² per group of
trials that differ in more than their seed (``rare.csv``) and the curves over PPO checkpoints
(``rare_curves.png``); then, with Student-t intervals over seeds (:mod:`.summary`), whether RL found
the capability (B skill at the trigger against ceiling and chance, ``rare_capability.csv``), trigger
seeking as its own table (``rare_seeking.csv``), and the exposure effect before RL read from
behaviour and from probe skill against random init (``rare_exposure.csv``), with one sentence on
whether the probe can show it. Shuffled-reward null trials (``task.shuffle_reward``) are kept out of
those tables and set against the task, seed by seed, in ``rare_null.csv``."""

from __future__ import annotations

from pathlib import Path

from rayexp import tracking
from rayexp.studies.rare import summary
from rayexp.study import ReportInput
from rayexp.tables import format_table, mean_range, write_csv

RARE = "analysis/rare/"


def _groups(runs: list, ignore_task: bool = False) -> dict[str, list]:
    """Runs by the params in which they differ, the seed left out (e.g. the exposure axis), and with
    ``ignore_task`` the task's own params too (a task and its null then share a group)."""
    keys = sorted({k for r in runs for k in r.data.params})
    keys = [k for k in keys if k != "seed" and not (ignore_task and k.startswith("task."))]
    varying = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(", ".join(f"{k}={r.data.params.get(k)}" for k in varying) or "all", []).append(r)
    return out


def _order(label: str) -> tuple:
    """Group labels ordered by their values, numerically where they are numbers (eps 0 < 0.001 < 0.0105)."""
    out = []
    for part in label.split(", "):
        value = part.split("=", 1)[-1]
        try:
            out.append((0, float(value), ""))
        except ValueError:
            out.append((1, 0.0, value))
    return tuple(out)


is_null = tracking.is_null_run


def _seed_runs(runs: list):
    """(group label, seed, run) of every rare-capability run, grouped by what differs besides the seed and
    the task, so that a group's task and null trials meet under one label."""
    runs = [r for r in runs if any(k.startswith(RARE) for k in r.data.metrics)]
    for label, group in _groups(runs, ignore_task=True).items():
        for r in group:
            yield label, str(r.data.params.get("seed")), r


def by_seed(runs: list) -> tuple[summary.BySeed, summary.BySeed]:
    """({group: {seed: {metric (without the analysis prefix): value}}} of the task trials, the same of
    the null trials), grouped as :func:`_seed_runs` groups."""
    kinds: dict[tuple[str, bool], list] = {}
    for label, _, r in _seed_runs(runs):
        kinds.setdefault((label, is_null(r)), []).append(r)
    task: summary.BySeed = {}
    null: summary.BySeed = {}
    for (label, nulls), group in kinds.items():
        one = tracking.runs_by_seed(group, f"{label} ({'null' if nulls else 'task'})")
        (null if nulls else task)[label] = {
            seed: {k[len(RARE) :]: v for k, v in r.data.metrics.items() if k.startswith(RARE)}
            for seed, r in one.items()
        }
    return task, null


def lineage(runs: list) -> dict[str, dict[str, str]]:
    """{group: {seed: the pretrain key its task trial read}}, grouped as :func:`by_seed` groups: which
    groups' seeds share one pretrained model (the same run's 40 and 120 iterations), to pair them."""
    out: dict[str, dict[str, str]] = {}
    for label, seed, r in _seed_runs(runs):
        key = getattr(r.data, "tags", {}).get("rayexp.pretrain_key")
        if key is not None and not is_null(r):
            out.setdefault(label, {})[seed] = key
    return out


def seed_values(runs: list) -> summary.Groups:
    """{group: {metric (without the analysis prefix): values over the group's seeds}}, groups in order."""
    runs = [r for r in runs if any(k.startswith(RARE) for k in r.data.metrics)]
    groups = _groups(runs)
    out: summary.Groups = {}
    for label in sorted(groups, key=_order):
        vals: dict[str, list[float]] = {}
        for r in tracking.runs_by_seed(groups[label], label).values():  # a seed counted once
            for k, v in r.data.metrics.items():
                if k.startswith(RARE):
                    vals.setdefault(k[len(RARE) :], []).append(v)
        out[label] = vals
    return out


def rare_curves(runs: list) -> dict[str, dict[str, list]]:
    """Each rare-capability trial's ``rare_curve`` table (iteration, trigger_rate, reward, ...) by run id."""
    return tracking.run_tables([r for r in runs if any(k.startswith(RARE) for k in r.data.metrics)], "rare_curve")


def rare_rows(runs: list, curves: dict[str, dict[str, list]] | None = None) -> list[dict]:
    """One row per group of rare-capability trials: mean [min, max] over its seeds, and with
    ``curves`` the group's mean trigger rate at each stored PPO checkpoint (how fast RL found B)."""
    runs = [r for r in runs if any(k.startswith(RARE) for k in r.data.metrics)]
    rows = []
    for label, group in _groups(runs).items():

        def vals(key: str, group=group) -> list[float]:
            return [r.data.metrics[RARE + key] for r in group if RARE + key in r.data.metrics]

        rows.append(
            {
                "group": label,
                "seeds": len(group),
                "trigger rate post": mean_range(vals("post/trigger_rate")),
                "reward post": mean_range(vals("post/reward")),
                "R2 B at trigger pre": mean_range(vals("pre/r2_B/at")),
                "R2 B at trigger post": mean_range(vals("post/r2_B/at")),
            }
        )
        tables = [curves[r.info.run_id] for r in group if curves and r.info.run_id in curves]
        if tables and all(t["iteration"] == tables[0]["iteration"] for t in tables):
            its = tables[0]["iteration"]
            means = [sum(t["trigger_rate"][i] for t in tables) / len(tables) for i in range(len(its))]
            rows[-1][f"trigger rate at iterations {'/'.join(map(str, its))}"] = "/".join(f"{m:.2f}" for m in means)
    return rows


def rare_figure(runs: list, curves: dict[str, dict[str, list]], path: Path) -> Path:
    """Trigger rate and reward over PPO checkpoints, each trial a line, coloured by group (its params
    besides the seed and the task); a shuffled-reward null's trials dashed."""
    from rayexp.figures import plt  # the Agg backend, set once there

    runs = [r for r in runs if r.info.run_id in curves]
    groups = _groups(runs, ignore_task=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for i, (label, group) in enumerate(groups.items()):
        for null in (False, True):
            members = [r for r in group if is_null(r) == null]
            for j, r in enumerate(members):
                t = curves[r.info.run_id]
                name = f"{label}{', shuffled-reward null' if null else ''}" if j == 0 else None
                for ax, key in zip(axes, ("trigger_rate", "reward")):
                    ax.plot(t["iteration"], t[key], "o--" if null else "o-", color=f"C{i}", alpha=0.7, ms=3,
                            label=name if ax is axes[0] else None)  # fmt: skip
    for ax, name in zip(axes, ("trigger rate", "reward per step (the real reward)")):
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(name)
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_section(inp: ReportInput) -> None:
    curves = rare_curves(inp.runs)
    rows = rare_rows(inp.runs, curves)
    if not rows:
        return
    print("\nrare capabilities: mean [min, max] over seeds (docs/results/rare.md):", file=inp.file)
    print(format_table(rows), file=inp.file)
    if inp.out is not None:
        write_csv(rows, inp.out / "rare.csv")
        print(f"figure: {rare_figure(inp.runs, curves, inp.out / 'rare_curves.png')}", file=inp.file)
    task_runs = [r for r in inp.runs if not is_null(r)]
    null_runs = [r for r in inp.runs if is_null(r)]
    groups = seed_values(task_runs)
    tables = {
        "rare_capability": (
            (
                "did RL find the rare capability? B skill at the trigger, (hit rate - chance) / (ceiling - chance): "
                "0 = a guess among B's tokens, 1 = the exact Bayes ceiling; mean [95 % Student-t CI] over seeds"
            ),
            summary.capability_rows(groups),
        ),
        "rare_seeking": (
            "trigger seeking (a separate question: not the definition of 'found')",
            summary.seeking_rows(groups),
        ),
        "rare_exposure": (
            (
                "exposure effect before RL: behaviour against the ceiling, and probe skill against random init "
                "(1 - MSE / MSE_random-init); differences from the lowest exposure: Welch t"
            ),
            summary.exposure_rows(groups),
        ),
    }
    if null_runs:
        task_by_seed, null_by_seed = by_seed(inp.runs)
        tables["rare_null"] = (
            (
                "the task against PPO on a shuffled reward (scored against a shadow stream the same actions "
                "steer: pays for seeking and guessing, never for tracking B); task - null paired by seed"
            ),
            summary.null_rows(task_by_seed, null_by_seed),
        )
        ordered = {label: task_by_seed[label] for label in sorted(task_by_seed, key=_order)}
        tables["rare_null_exposures"] = (
            (
                "the groups compared on B skill after RL beyond the null (task - null, paired by seed); "
                "groups on different pretrained models differ by Welch t, groups on the same ones paired by seed"
            ),
            summary.null_exposure_rows(ordered, null_by_seed, lineage=lineage(inp.runs)),
        )
    for name, (title, table) in tables.items():
        print(f"\n{title}:", file=inp.file)
        print(format_table(table), file=inp.file)
        if inp.out is not None:
            write_csv(table, inp.out / f"{name}.csv")
    print(summary.probe_reading(groups), file=inp.file)
