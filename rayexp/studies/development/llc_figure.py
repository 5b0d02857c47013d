"""The figure of the ``llc`` analysis: loss / reward over training above the LLC, transitions marked."""

from __future__ import annotations

import numpy as np


def llc_figure(pretrain: list[dict], rl: list[dict], marks: dict[str, dict[str, list[int]]], rhat_max: float):
    """Two columns (pretraining, RL): loss / reward on top, LLC with its chain spread below.

    Filled markers: healthy estimates (R-hat <= ``rhat_max``, no draw past the divergence ceiling,
    not below init); hollow ones: the rest, drawn so they are seen but not joined into the curve
    (the line runs through healthy estimates only).
    Vertical lines: transitions located on the LLC (red, dashed) and on the loss or reward (grey, dotted).
    """
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    fig, axs = plt.subplots(2, 2, figsize=(11, 6), sharex="col")
    panels = (
        (0, pretrain, "loss", "next-token loss (nats)", "pretraining step", "pretrain"),
        (1, rl, "reward", "reward per step", "PPO iteration", "rl"),
    )
    for col, rows, key, label, xlabel, phase in panels:
        top, bottom = axs[0, col], axs[1, col]
        if not rows:  # pretraining: false (the other arms of these seeds hold it)
            for ax in (top, bottom):
                ax.text(0.5, 0.5, "not estimated here", ha="center", va="center", transform=ax.transAxes)
            continue
        x = np.array([r["checkpoint"] for r in rows], dtype=float)
        top.plot(x, [r[key] for r in rows], "o-", color="C0", ms=4)
        top.set_ylabel(label)
        mean = np.array([r["llc_mean"] for r in rows], dtype=float)
        std = np.array([r["llc_std"] for r in rows], dtype=float)
        ok = np.array([bool(r["healthy"]) for r in rows])
        bottom.plot(x[ok], mean[ok], "-", color="C1", lw=1)
        bottom.errorbar(x[ok], mean[ok], std[ok], fmt="o", color="C1", ms=5, capsize=2, label="healthy")
        shown = ~ok & np.isfinite(mean)
        bottom.errorbar(
            x[shown], mean[shown], std[shown], fmt="o", mfc="white", color="C1", ms=5, capsize=2,
            label=f"unsettled (R-hat > {rhat_max:g}) or diverged",
        )  # fmt: skip
        bottom.set_ylabel("LLC (mean ± chain std)")
        bottom.set_xlabel(xlabel)
        if phase == "pretrain":
            bottom.set_xscale("symlog", linthresh=1)
            bottom.set_xlim(0, 1.5 * max(x.max(), 1))
        for ax in (top, bottom):
            for s in marks.get(phase, {}).get("llc", []):
                ax.axvline(s, color="C3", ls="--", lw=1)
            for s in marks.get(phase, {}).get(key, []):
                ax.axvline(s, color="0.5", ls=":", lw=1)
        bottom.legend(fontsize=8, loc="best")
    axs[0, 0].set_title("pretraining")
    axs[0, 1].set_title("RL")
    fig.suptitle(
        "LLC over training: self-KL on the pretraining stream, one SGLD setting "
        "(red dashed: LLC transitions; grey dotted: loss / reward transitions)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
