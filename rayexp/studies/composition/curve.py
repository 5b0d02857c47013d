"""The ``composition_curve`` figure: reward against its exact ceilings, and the composition signals,
over the PPO checkpoints the ``composition`` analysis scores (:mod:`.composition_analysis`)."""

from __future__ import annotations

#: curve column -> metric of :meth:`.composition_analysis.Scorer.score` (``{}``: the model's name)
CURVE = {
    "expected_reward": "reward/{}/expected",
    "greedy_reward": "reward/{}/greedy",
    "margin": "margin/{}",
    "margin_greedy": "margin_greedy/{}",
    "interaction": "interaction/{}",
    "composed": "composed/{}",
    "reweighting_r2": "reweighting_r2/{}",
    "unexplained_reweighting": "classes/reweighting/unexplained/{}",
    "unexplained_elicitation": "classes/elicitation/unexplained/{}",
    "margin_phase_greedy": "margin_phase_greedy/{}",
}


def curve_figure(rows: dict[str, list], metrics: dict[str, float]):
    """Reward against its ceilings, and the composition signals, over PPO iterations."""
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = rows["iteration"]
    ax_r.plot(x, rows["expected_reward"], "o-", label="expected")
    ax_r.plot(x, rows["greedy_reward"], "s--", label="greedy")
    for key, style in (("ceiling/optimum", "k-"), ("ceiling/uniform", "k:")):
        ax_r.axhline(metrics[key], color=style[0], ls=style[1:], lw=0.8, label=key.split("/")[1])
    singles = [v for k, v in metrics.items() if k.startswith("ceiling/single_factor")]
    if singles:
        ax_r.axhline(max(singles), color="tab:red", ls="-.", lw=0.8, label="best single factor")
    lookups = {k: v for k, v in metrics.items() if k.startswith("ceiling/lookup_k")}
    if lookups:
        best = max(lookups, key=lookups.get)
        ax_r.axhline(
            lookups[best], color="tab:green", ls="--", lw=0.8, label=f"lookup k={best[len('ceiling/lookup_k') :]}"
        )
    ax_r.set(xlabel="PPO iteration", ylabel="reward / step", title="reward vs exact ceilings")
    ax_r.legend(fontsize=7)
    for col in ("margin_phase_greedy", "unexplained_reweighting", "unexplained_elicitation", "composed"):
        ax_s.plot(x, rows[col], "o-", label=col)
    ax_s.axhline(0, color="k", lw=0.5)
    ax_s.set(xlabel="PPO iteration", title="composition signals")
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    return fig
