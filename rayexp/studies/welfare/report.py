"""The welfare study in `rayexp report`: cos(v_R, v_P) per hook for the random-init, pre-RL and
post-RL models with the shuffled-label null band, mean and range over seeds (``concept_layers.csv`` /
``.png``), and the steering slopes (``steering.csv``); then, with Student-t intervals over seeds
(:mod:`.summary`), the reading of cos(v_R, v_P) against each seed's shuffled-label null, paired by
seed (``cos_vs_null.csv``) and the post-RL steering effect against controls of the same norm off and on
the activation manifold, as ratio and difference (``steering_controls.csv``), and whether RL turned
the vectors (``rotation.csv``): cos(pre, post) against a split-half estimate, a random move of RL's
norm and, where the sweep ran one, PPO on a shuffled reward, each difference paired by seed. Every
table but the null's column reads the task's trials only."""

from __future__ import annotations

from pathlib import Path

from rayexp import tracking
from rayexp.stats import t_ci
from rayexp.studies.welfare import summary
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
        row["align P pre/random move"] = mean_range(vals(f"{CV}align_random/{h}/P"))
        row["split-half P pre / post"] = (
            f"{mean_range(vals(f'{CV}split_half/pre/{h}/P'))} / {mean_range(vals(f'{CV}split_half/post/{h}/P'))}"
        )
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


CONTROLS = ("random", "orthogonal", "shuffled", "group")  # off the manifold, then on it


def _paired(runs: list, *keys: str) -> list[list[float]]:
    """Per key, its values over the runs that hold every key (so values stay paired by seed)."""
    held = [r for r in runs if all(CV + k in r.data.metrics for k in keys)]
    return [[r.data.metrics[CV + k] for r in held] for k in keys]


def control_rows(runs: list) -> list[dict]:
    """Post-RL steering effect |change of P(punished)| at the largest alpha for v_P and v_R against each
    control of the same norm: geometric-mean ratio and paired difference over seeds, Student-t."""
    rows = []
    for target in ("v_P", "v_R"):
        for kind in CONTROLS:
            effect, control = _paired(runs, f"steer/post/{target}/effect", f"steer/post/{target}/control/{kind}")
            if not effect:
                continue
            got = summary.effect_vs_control(effect, control)
            rows.append(
                {
                    "vector": target,
                    "control": kind,
                    "seeds": len(effect),
                    "effect": summary.cell(t_ci(effect)),
                    "control effect": summary.cell(t_ci(control)),
                    "ratio (geometric mean)": summary.cell(got["ratio"], ".1f"),
                    "difference": summary.cell(got["diff"]),
                }
            )
    return rows


def cos_rows(runs: list, models: tuple[str, ...] = ("pre", "post")) -> list[dict]:
    """cos(v_R, v_P) per hook and model against each seed's shuffled-label null (its mean, paired by
    seed, and its band), with the reading the numbers allow (:func:`.summary.cos_reading`)."""
    runs = [r for r in runs if any(k.startswith(CV) for k in r.data.metrics)]
    keys = set().union(*(r.data.metrics for r in runs)) if runs else set()
    hooks = sorted({k[len(CV + "cos/post/") :] for k in keys if k.startswith(CV + "cos/post/")}, key=_hook_order)
    rows = []
    for model in models:
        for h in hooks:
            null = f"null/{model}/{h}"
            cos, lo, hi, m0 = _paired(runs, f"cos/{model}/{h}", f"{null}/q025", f"{null}/q975", f"{null}/mean")
            if not cos:
                continue
            got = summary.cos_reading(cos, lo, hi, m0)
            rows.append(
                {
                    "model": model,
                    "hook": h,
                    "cos(v_R, v_P)": summary.cell(got["cos"]),
                    "shuffled-label null mean": f"{got['null']:+.2f}",
                    "cos - null mean (paired)": summary.cell(got["minus_null"]),
                    "shuffled-label band (mean)": f"[{got['band'][0]:+.2f}, {got['band'][1]:+.2f}]",
                    "seeds below/inside/above": "/".join(str(got["seeds"][k]) for k in ("below", "inside", "above")),
                    "reading": got["reading"],
                }
            )
    return rows


def _by_seed(runs: list, what: str) -> dict[str, dict[str, float]]:
    return {seed: r.data.metrics for seed, r in tracking.runs_by_seed(runs, what).items()}


def rotation_rows(task_runs: list, null_runs: list = ()) -> list[dict]:
    """Per hook and vector: cos(pre, post) after RL, its split-half reference (post), the random move
    of RL's norm, RL minus that (paired by seed), and with ``null_runs`` (PPO on a shuffled reward)
    the null's cos(pre, post) and RL minus the null, paired by seed (one pretrained model per seed)."""
    task_runs = [r for r in task_runs if any(k.startswith(CV + "align/") for k in r.data.metrics)]
    if not task_runs:
        return []
    keys = set().union(*(r.data.metrics for r in task_runs))
    hooks = sorted({k[len(CV + "align/") : -2] for k in keys if k.startswith(CV + "align/")}, key=_hook_order)
    task, null = _by_seed(task_runs, "task"), _by_seed(null_runs, "null")
    both = sorted(set(task) & set(null))
    rows = []
    for h in hooks:
        for v in ("R", "P"):
            key = f"{CV}align/{h}/{v}"
            rl, rand, half = _paired(task_runs, f"align/{h}/{v}", f"align_random/{h}/{v}", f"split_half/post/{h}/{v}")
            row = {
                "hook": h,
                "vector": f"v_{v}",
                "RL cos(pre, post)": summary.cell(t_ci(rl), "+.2f"),
                "split-half post": summary.cell(t_ci(half), "+.2f"),
                "random move": summary.cell(t_ci(rand), "+.2f"),
                "RL - random": summary.cell(t_ci([a - b for a, b in zip(rl, rand)]), "+.2f"),
            }
            pairs = [(task[s][key], null[s][key]) for s in both if key in task[s] and key in null[s]]
            if pairs:
                row["null cos(pre, post)"] = summary.cell(t_ci([b for _, b in pairs]), "+.2f")
                row["RL - null"] = summary.cell(t_ci([a - b for a, b in pairs]), "+.2f")
                row["seeds paired"] = len(pairs)
            rows.append(row)
    return rows


MATCHED = "sweep/matched_null/"


def matched_rows(parent_metrics: dict[str, float]) -> list[dict]:
    """The ``matched_null`` analysis on the parent run: per group, hook and vector, cos(pre, post) of RL,
    of the null, of the null's update scaled to RL's norm and of the null's own path where it reached
    RL's norm, and RL minus each, paired by seed."""
    cells: dict[tuple[str, str, str], dict] = {}
    for key, mean in parent_metrics.items():
        parts = key[len(MATCHED) :].split("/") if key.startswith(MATCHED) else []
        if len(parts) != 4:  # {group}/{hook}/{vector}/{name}; bounds and norms are read below
            continue
        group, hook, vec, name = parts
        lo, hi = parent_metrics.get(f"{key}/ci_low"), parent_metrics.get(f"{key}/ci_high")
        row = cells.setdefault((group, hook, vec), {"group": group, "hook": hook, "vector": f"v_{vec}"})
        row[name] = summary.cell((mean, lo, hi), "+.2f") if lo is not None else f"{mean:+.2f}"
    order = ("rl", "null", "null_matched", "null_path", "rl_minus_null", "rl_minus_null_matched", "rl_minus_null_path")
    rows = []
    for (group, hook, vec), row in sorted(cells.items(), key=lambda kv: (kv[0][0], _hook_order(kv[0][1]), kv[0][2])):
        norms = [parent_metrics.get(f"{MATCHED}{group}/norm/{m}", float("nan")) for m in ("rl", "null")]
        # hook and vector first: a wide table's further blocks repeat its first two columns
        rows.append({"hook": hook, "vector": row["vector"], **{k: row.get(k, "-") for k in order}})
        rows[-1] |= {"update norm RL / null": f"{norms[0]:.2f} / {norms[1]:.2f}", "group": group}
        path = [parent_metrics.get(f"{MATCHED}{group}/path/{m}") for m in ("iteration", "chord_share", "n_seeds")]
        if path[0] is not None:
            rows[-1]["null path: iteration, chord / RL norm, seeds"] = f"{path[0]:.1f}, {path[1]:.2f}, {path[2]:.0f}"
    return rows


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
    runs = [r for r in inp.runs if not tracking.is_null_run(r)]
    nulls = [r for r in inp.runs if tracking.is_null_run(r)]
    layers, steering = welfare_rows(runs)
    if not layers:
        return
    print("\nwelfare: cos(v_R, v_P) per hook, mean [min, max] over seeds (docs/results/welfare.md):", file=inp.file)
    print(format_table(layers), file=inp.file)
    print("\nsteering at the analysis's hook (slopes over alpha):", file=inp.file)
    print(format_table(steering), file=inp.file)
    if inp.out is not None:
        write_csv(layers, inp.out / "concept_layers.csv")
        write_csv(steering, inp.out / "steering.csv")
        print(f"figure: {concept_figure(runs, inp.out / 'concept_layers.png')}", file=inp.file)
    tables = {
        "cos_vs_null": (
            (
                "cos(v_R, v_P) against each seed's shuffled-label null (minus its mean, paired by seed), "
                "mean [95 % Student-t CI] over seeds"
            ),
            cos_rows(runs),
        ),
        "steering_controls": (
            (
                "steering after RL: |change of P(punished)| at the largest alpha, against controls of the same "
                "norm (random, orthogonal: off the activation manifold; shuffled-label v_P, random-group mean "
                "differences: on it); ratio = geometric mean over seeds, difference paired; 95 % Student-t CIs"
            ),
            control_rows(runs),
        ),
        "rotation": (
            (
                "did RL turn the vectors? cos(v pre-RL, v post-RL) against a split-half estimate of the post-RL "
                "vector, a random move of RL's norm and PPO on a shuffled reward (differences paired by seed); "
                "mean [95 % Student-t CI] over seeds"
            ),
            rotation_rows(runs, nulls),
        ),
        "rotation_matched": (
            (
                "the same against the null's update scaled to RL's norm (analysis matched_null: "
                "theta_pre + |d_RL| / |d_null| * d_null, per seed) and against the null's own PPO path where it "
                "first lay RL's norm from the pretrained weights (null_path); mean [95 % Student-t CI] over seeds"
            ),
            matched_rows(inp.parent_metrics),
        ),
    }
    for name, (title, rows) in tables.items():
        if not rows:
            continue
        print(f"\n{title}:", file=inp.file)
        print(format_table(rows), file=inp.file)
        if inp.out is not None:
            write_csv(rows, inp.out / f"{name}.csv")
