"""The TMS study's figure: per arm, loss or reward, the LLC and k over training, seeds overlaid,
transitions marked."""

from __future__ import annotations

import numpy as np

PANELS = {"supervised": ("loss", "supervised loss E||x_hat - x||^2", "Adam step"),
          "ppo": ("reward", "expected reward (exact)", "PPO iteration")}  # fmt: skip


def tms_figure(trials: list[dict], llc_key: str = "llc", title: str = ""):
    """``trials``: ``{"arm", "seed", "rows", "marks"}`` per trial (``marks`` from
    :func:`.tms_llc.transitions`). Columns: the arms; rows: the curve, the LLC, k.

    Each seed has one colour. Curve: a line, with a triangle at each of its transitions. LLC: healthy
    estimates filled and joined, the rest (unsettled, below init, diverged) hollow and not joined,
    with a diamond at each LLC transition. k: a step line, a dot at each change. A thin dotted
    vertical line in the seed's colour runs through all three rows at each curve transition, so an
    LLC mark within one checkpoint of it is read off directly.
    """
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    arms = [a for a in PANELS if any(t["arm"] == a for t in trials)]
    fig, axs = plt.subplots(3, len(arms), figsize=(6.2 * len(arms), 9), sharex="col", squeeze=False)
    seeds = sorted({t["seed"] for t in trials})
    colour = {s: f"C{i % 10}" for i, s in enumerate(seeds)}
    for col, arm in enumerate(arms):
        curve, ylabel, xlabel = PANELS[arm]
        top, mid, bottom = axs[0, col], axs[1, col], axs[2, col]
        for t in (t for t in trials if t["arm"] == arm):
            c, rows, marks = colour[t["seed"]], t["rows"], t["marks"]
            x = np.array([r["checkpoint"] for r in rows], dtype=float)
            y = np.array([r[curve] for r in rows], dtype=float)
            top.plot(x, y, "-", color=c, lw=1.2, label=f"seed {t['seed']}")
            at = {int(s): i for i, s in enumerate(x)}
            idx = [at[s] for s in marks.get(curve, []) if s in at]
            top.plot(x[idx], y[idx], "v", color=c, ms=7)
            mean = np.array([r[f"{llc_key}_mean"] for r in rows], dtype=float)
            ok = np.array([bool(r[f"{llc_key}_healthy"]) for r in rows])
            mid.plot(x[ok], mean[ok], "o-", color=c, ms=4, lw=1)
            shown = ~ok & np.isfinite(mean)
            mid.plot(x[shown], mean[shown], "o", mfc="white", color=c, ms=4)
            idx = [at[s] for s in marks.get(llc_key, []) if s in at]
            mid.plot(x[idx], mean[idx], "D", color=c, ms=7, mfc="none", mew=1.5)
            k = np.array([r["k"] for r in rows], dtype=float)
            bottom.step(x, k + 0.04 * (seeds.index(t["seed"]) - len(seeds) / 2), where="post", color=c, lw=1.2)
            idx = [at[s] for s in marks.get("k", []) if s in at]
            bottom.plot(x[idx], k[idx], "o", color=c, ms=5)
            for s in marks.get(curve, []):
                for ax in (top, mid, bottom):
                    ax.axvline(s, color=c, ls=":", lw=0.8, alpha=0.7)
        top.set_ylabel(ylabel)
        top.set_title(arm)
        if arm == "supervised":
            top.set_yscale("log")
        mid.set_yscale("symlog", linthresh=10)  # healthy values (0-10) linear, below-init ones (to -300) compressed
        mid.set_ylabel("LLC (SGLD on the MSE)\nhollow: unhealthy")
        mid.axhline(0, color="0.6", lw=0.6)
        bottom.set_ylabel("k (columns of W with norm > 0.5)")
        bottom.set_xlabel(xlabel)
        bottom.set_yticks(range(7))
        top.legend(fontsize=7, loc="best")
    fig.suptitle(
        title or "TMS (F=6, m=2): ▼ curve transition, ◇ LLC transition, ● k change; dotted: curve transitions",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
