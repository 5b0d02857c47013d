"""The objective and welfare studies in `rayexp report`: their summaries as tables and figures.

Welfare (trials with the ``concept_vectors`` analysis): cos(v_R, v_P) per hook for the random-init,
pre-RL and post-RL models with the shuffled-label null band, mean and range over seeds
(``concept_layers.csv`` / ``.png``), and the steering slopes (``steering.csv``). Objectives (the
``task_vectors`` analysis on the parent run): the classifier, the cosines by kind of pair, the
superposition gains and the negation leans (``task_vectors.csv``). Rare capabilities (trials with
the ``rare`` analysis): trigger rate, reward and B's belief R² per group of trials that differ in
more than their seed (``rare.csv``) and the curves over PPO checkpoints (``rare_curves.png``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rayexp.sweep import format_table

CV = "analysis/concept_vectors/"
RARE = "analysis/rare/"


def _mean_range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{sum(values) / len(values):+.3f} [{lo:+.3f}, {hi:+.3f}]"


def welfare_rows(runs: list) -> tuple[list[dict], list[dict]]:
    """(per-hook cosine rows, steering rows) over the trial runs holding concept-vector metrics."""
    runs = [r for r in runs if any(k.startswith(CV) for k in r.data.metrics)]
    if not runs:
        return [], []
    keys = set().union(*(r.data.metrics for r in runs))
    hooks = sorted({k[len(CV + "cos/post/") :] for k in keys if k.startswith(CV + "cos/post/")}, key=_hook_order)

    def vals(key: str) -> list[float]:
        return [r.data.metrics[key] for r in runs if key in r.data.metrics]

    layers = []
    for h in hooks:
        row = {"hook": h}
        for model in ("random_init", "pre", "post"):
            row[f"cos {model}"] = _mean_range(vals(f"{CV}cos/{model}/{h}"))
        lo, hi = vals(f"{CV}null/post/{h}/q025"), vals(f"{CV}null/post/{h}/q975")
        row["null post (95%)"] = f"[{sum(lo) / len(lo):+.2f}, {sum(hi) / len(hi):+.2f}]" if lo else "-"
        row["align P pre/post"] = _mean_range(vals(f"{CV}align/{h}/P"))
        layers.append(row)
    steering = []
    for model in ("pre", "post"):
        for vec in ("v_P", "v_R", "orthogonal", "random"):
            steering.append(
                {
                    "model": model,
                    "vector": vec,
                    "d P(punished)/d alpha": _mean_range(vals(f"{CV}steer/{model}/{vec}/punish_slope")),
                    "d reward/d alpha": _mean_range(vals(f"{CV}steer/{model}/{vec}/reward_slope")),
                }
            )
    return layers, steering


def _hook_order(h: str) -> tuple[int, int]:
    parts = h.split(".")
    block = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 99
    return block, 0 if h.endswith("resid_pre") else 1


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

    from rayexp import tracking

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
                "trigger rate post": _mean_range(vals("post/trigger_rate")),
                "reward post": _mean_range(vals("post/reward")),
                "R2 B at trigger pre": _mean_range(vals("pre/r2_B/at")),
                "R2 B at trigger post": _mean_range(vals("post/r2_B/at")),
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


def print_studies(runs: list, parent_metrics: dict[str, float], out: Path, file=sys.stdout) -> None:
    from rayexp.report import _write_csv

    layers, steering = welfare_rows(runs)
    if layers:
        print("\nwelfare: cos(v_R, v_P) per hook, mean [min, max] over seeds (README, 'Welfare'):", file=file)
        print(format_table(layers), file=file)
        print("\nsteering at the analysis's hook (slopes over alpha):", file=file)
        print(format_table(steering), file=file)
        _write_csv(layers, out / "concept_layers.csv")
        _write_csv(steering, out / "steering.csv")
        print(f"figure: {concept_figure(runs, out / 'concept_layers.png')}", file=file)
    curves = rare_curves(runs)
    rare = rare_rows(runs, curves)
    if rare:
        print("\nrare capabilities: mean [min, max] over seeds (README, 'Rare capabilities'):", file=file)
        print(format_table(rare), file=file)
        _write_csv(rare, out / "rare.csv")
        print(f"figure: {rare_figure(runs, curves, out / 'rare_curves.png')}", file=file)
    objective = objective_rows(parent_metrics)
    if objective:
        print("\nobjectives: task vectors (README, 'Objectives in weight diffs'):", file=file)
        print(format_table(objective), file=file)
        _write_csv(objective, out / "task_vectors.csv")


def concept_figure(runs: list, path: Path) -> Path:
    """cos(v_R, v_P) per hook, every seed a line, per model."""
    from rayexp.figures import plt  # the Agg backend, set once there

    runs = [r for r in runs if any(k.startswith(CV) for k in r.data.metrics)]
    keys = set().union(*(r.data.metrics for r in runs))
    hooks = sorted({k[len(CV + "cos/post/") :] for k in keys if k.startswith(CV + "cos/post/")}, key=_hook_order)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, model in enumerate(("random_init", "pre", "post")):
        for j, r in enumerate(runs):
            y = [r.data.metrics.get(f"{CV}cos/{model}/{h}", float("nan")) for h in hooks]
            ax.plot(range(len(hooks)), y, "o-", color=f"C{i}", alpha=0.7, label=model if j == 0 else None)
        lo = [sum(r.data.metrics.get(f"{CV}null/{model}/{h}/q025", 0) for r in runs) / len(runs) for h in hooks]
        hi = [sum(r.data.metrics.get(f"{CV}null/{model}/{h}/q975", 0) for r in runs) / len(runs) for h in hooks]
        ax.fill_between(range(len(hooks)), lo, hi, color=f"C{i}", alpha=0.1)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(
        range(len(hooks)), [h.replace("blocks.", "b").replace(".hook_resid_", " ") for h in hooks], fontsize=7
    )
    ax.set_ylabel("cos(v_R, v_P)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=7, title="bands: shuffled-label null", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
