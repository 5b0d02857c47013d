"""The rare-capability study in `rayexp report`: trigger rate, reward and B's belief R² per group of
trials that differ in more than their seed (``rare.csv``) and the curves over PPO checkpoints
(``rare_curves.png``)."""

from __future__ import annotations

from pathlib import Path

from rayexp import tracking
from rayexp.study import ReportInput
from rayexp.tables import format_table, mean_range, write_csv

RARE = "analysis/rare/"


def _groups(runs: list) -> dict[str, list]:
    """Runs by the params in which they differ, the seed left out (e.g. the exposure axis)."""
    keys = sorted({k for r in runs for k in r.data.params})
    varying = [k for k in keys if k != "seed" and len({r.data.params.get(k) for r in runs}) > 1]
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(", ".join(f"{k}={r.data.params.get(k)}" for k in varying) or "all", []).append(r)
    return out


def rare_curves(runs: list) -> dict[str, dict[str, list]]:
    """Each rare-capability trial's ``rare_curve`` table (iteration, trigger_rate, reward, ...) by run id."""
    import tempfile

    import pyarrow.parquet as pq

    runs = [r for r in runs if any(k.startswith(RARE) for k in r.data.metrics)]
    if not runs:
        return {}
    c = tracking.client(tracking.tracking_uri())
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            path = c.download_artifacts(r.info.run_id, "tables/rare_curve.parquet", tmp)
            out[r.info.run_id] = pq.read_table(path).to_pydict()
    return out


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
    """Trigger rate and reward over PPO checkpoints, each trial a line, coloured by group."""
    from rayexp.figures import plt  # the Agg backend, set once there

    runs = [r for r in runs if r.info.run_id in curves]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for i, (label, group) in enumerate(_groups(runs).items()):
        for j, r in enumerate(group):
            t = curves[r.info.run_id]
            for ax, key in zip(axes, ("trigger_rate", "reward")):
                ax.plot(t["iteration"], t[key], "o-", color=f"C{i}", alpha=0.7, label=label if j == 0 else None)
    for ax, name in zip(axes, ("trigger rate", "reward per step")):
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_section(inp: ReportInput) -> None:
    curves = rare_curves(inp.runs)
    rows = rare_rows(inp.runs, curves)
    if not rows:
        return
    print("\nrare capabilities: mean [min, max] over seeds (README, 'Rare capabilities'):", file=inp.file)
    print(format_table(rows), file=inp.file)
    if inp.out is not None:
        write_csv(rows, inp.out / "rare.csv")
        print(f"figure: {rare_figure(inp.runs, curves, inp.out / 'rare_curves.png')}", file=inp.file)
