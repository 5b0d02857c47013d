"""The welfare study in `rayexp report`: cos(v_R, v_P) per hook for the random-init, pre-RL and
post-RL models with the shuffled-label null band, mean and range over seeds (``concept_layers.csv`` /
``.png``), and the steering slopes (``steering.csv``)."""

from __future__ import annotations

from pathlib import Path

from rayexp.study import ReportInput
from rayexp.tables import format_table, mean_range, write_csv

CV = "analysis/concept_vectors/"


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
            row[f"cos {model}"] = mean_range(vals(f"{CV}cos/{model}/{h}"))
        lo, hi = vals(f"{CV}null/post/{h}/q025"), vals(f"{CV}null/post/{h}/q975")
        row["null post (95%)"] = f"[{sum(lo) / len(lo):+.2f}, {sum(hi) / len(hi):+.2f}]" if lo else "-"
        row["align P pre/post"] = mean_range(vals(f"{CV}align/{h}/P"))
        layers.append(row)
    steering = []
    for model in ("pre", "post"):
        for vec in ("v_P", "v_R", "orthogonal", "random"):
            steering.append(
                {
                    "model": model,
                    "vector": vec,
                    "d P(punished)/d alpha": mean_range(vals(f"{CV}steer/{model}/{vec}/punish_slope")),
                    "d reward/d alpha": mean_range(vals(f"{CV}steer/{model}/{vec}/reward_slope")),
                }
            )
    return layers, steering


def _hook_order(h: str) -> tuple[int, int]:
    parts = h.split(".")
    block = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 99
    return block, 0 if h.endswith("resid_pre") else 1


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


def report_section(inp: ReportInput) -> None:
    layers, steering = welfare_rows(inp.runs)
    if not layers:
        return
    print("\nwelfare: cos(v_R, v_P) per hook, mean [min, max] over seeds (README, 'Welfare'):", file=inp.file)
    print(format_table(layers), file=inp.file)
    print("\nsteering at the analysis's hook (slopes over alpha):", file=inp.file)
    print(format_table(steering), file=inp.file)
    if inp.out is not None:
        write_csv(layers, inp.out / "concept_layers.csv")
        write_csv(steering, inp.out / "steering.csv")
        print(f"figure: {concept_figure(inp.runs, inp.out / 'concept_layers.png')}", file=inp.file)
