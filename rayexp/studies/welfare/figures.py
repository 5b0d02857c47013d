"""The welfare study's figures, drawn from the concept-vector analysis's tables (plain dicts of lists)."""

from __future__ import annotations

import numpy as np


def layer_figure(rows):
    """cos(v_R, v_P) per hook for random init, pre and post RL, each with its shuffled-label band."""
    from rayexp.figures import plt  # the Agg backend, set once there

    fig, ax = plt.subplots(figsize=(6, 3.2))
    hooks = list(dict.fromkeys(rows["hook"]))
    x = np.arange(len(hooks))
    for i, name in enumerate(("random_init", "pre", "post")):
        sel = [j for j, m in enumerate(rows["model"]) if m == name]
        ax.plot(x, [rows["cos"][j] for j in sel], "o-", color=f"C{i}", label=name)
        ax.fill_between(
            x, [rows["null_q025"][j] for j in sel], [rows["null_q975"][j] for j in sel], color=f"C{i}", alpha=0.12
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [h.replace("blocks.", "b").replace(".hook_resid_", " ") for h in hooks], fontsize=7)
    ax.set_ylabel("cos(v_R, v_P)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=7, title="bands: shuffled labels, 95%", title_fontsize=7)
    fig.tight_layout()
    return fig


def steer_figure(rows, hook):
    """P(punished action) against the steering strength, per vector, before and after RL."""
    from rayexp.figures import plt  # the Agg backend, set once there

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, name in zip(axes, ("pre", "post")):
        for vec in dict.fromkeys(rows["vector"]):
            sel = [j for j in range(len(rows["model"])) if rows["model"][j] == name and rows["vector"][j] == vec]
            style = {"v_P": ("C3", 2), "v_R": ("C2", 2), "orthogonal": ("C0", 1)}.get(vec, ("0.6", 0.8))
            ax.plot(
                [rows["alpha"][j] for j in sel],
                [rows["punish"][j] for j in sel],
                "-",
                color=style[0],
                lw=style[1],
                label=vec if not vec.startswith("random") or vec == "random0" else None,
            )
        ax.set_title(f"{name}-RL, steering at {hook}", fontsize=8)
        ax.set_xlabel("alpha")
    axes[0].set_ylabel("P(punished action)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def curve_figure(rows, hook):
    """Over PPO checkpoints at ``hook``: cos(v_R, v_P), each vector against its final direction, reward."""
    from rayexp.figures import plt  # the Agg backend, set once there

    sel = [j for j, h in enumerate(rows["hook"]) if h == hook]
    it = [rows["iteration"][j] for j in sel]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(it, [rows["cos_RP"][j] for j in sel], "o-", label="cos(v_R, v_P)")
    ax.plot(it, [rows["cos_R_final"][j] for j in sel], "s--", label="cos(v_R, final v_R)")
    ax.plot(it, [rows["cos_P_final"][j] for j in sel], "^--", label="cos(v_P, final v_P)")
    ax2 = ax.twinx()
    ax2.plot(it, [rows["reward"][j] for j in sel], "k:", label="reward rate")
    ax2.set_ylabel("exact reward rate")
    ax.set_xlabel("PPO iteration")
    ax.set_title(hook, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
