"""Every figure renders to a real PNG with the panels it promises."""

import matplotlib.image as mpimg
import numpy as np
import pyarrow as pa
import pytest

from envs.processes import mess3, rrxor
from rayexp import figures, probes


def _png_ok(path):
    img = mpimg.imread(path)  # (H, W, 4) floats for PNG
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    return img


def _beliefs(hmm, n=300, L=8):
    _, _, b = hmm.sample_with_beliefs(n, L, np.random.default_rng(0))
    return b.reshape(-1, hmm.n_states)


def test_barycentric_maps_vertices_to_triangle_corners():
    xy = figures.barycentric(np.eye(3))
    np.testing.assert_allclose(xy, [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]], atol=1e-12)
    np.testing.assert_allclose(figures.barycentric(np.full((1, 3), 1 / 3)), [[0.5, np.sqrt(3) / 6]])


@pytest.mark.parametrize("hmm", [mess3(0.05, 0.85), rrxor()], ids=["3 states", "5 states (PCA)"])
def test_belief_simplex_png(tmp_path, hmm):
    true = _beliefs(hmm)
    pred = true + np.random.default_rng(1).normal(scale=0.02, size=true.shape)
    fig = figures.belief_simplex(true, pred, title=hmm.name)
    assert len(fig.axes) == 2
    colors = figures.belief_colors(true)
    assert colors.shape == (len(true), 3) and colors.min() >= 0 and colors.max() <= 1
    _png_ok(figures.save_png(fig, tmp_path / "sub" / "simplex.png"))
    with pytest.raises(ValueError):
        figures.belief_simplex(true, pred[:, :2])


def _table(seed):
    hmm = mess3()
    rng = np.random.default_rng(seed)
    tokens, _, beliefs = hmm.sample_with_beliefs(300, 6, rng)
    hooks = [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
        "ln_final.hook_normalized",
    ]
    acts = {
        h: beliefs @ rng.normal(size=(3, 5)) + rng.normal(scale=0.1 * (i + 1), size=(300, 6, 5))
        for i, h in enumerate(hooks)
    }
    acts_random = {h: rng.normal(size=a.shape) for h, a in acts.items()}
    return probes.run_probes(acts, acts_random, probes.belief_targets(hmm, tokens, beliefs), n_layers=2).table


def test_skill_by_layer_png(tmp_path):
    before, after = _table(0), _table(1)
    fig = figures.skill_by_layer(before, after, title="before vs after")
    assert len(fig.axes) == 2
    skill_ax = fig.axes[0]
    labels = [line.get_label() for line in skill_ax.get_lines()]
    assert "belief before RL" in labels and "belief after RL" in labels
    _png_ok(figures.save_png(fig, tmp_path / "skill.png"))
    assert len(figures.skill_by_layer(before).axes) == 2


def test_curves_png(tmp_path):
    history = [{"step": s, "loss": 1 / (s + 1), "loss_gap": 0.5 / (s + 1)} for s in range(20)]
    history.append({"step": 20, "reward": 1.0})  # metrics logged at another cadence
    fig = figures.curves(history, ["loss", "loss_gap"], logy=("loss",))
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"
    _png_ok(figures.save_png(fig, tmp_path / "curves.png"))
    four = figures.curves({"step": [0, 1], "a": [1, 2], "b": [3, 4], "c": [5, 6], "d": [7, 8]}, list("abcd"))
    assert len(four.axes) == 4
    with pytest.raises(KeyError):
        figures.curves(history, ["nope"])


def test_weight_diff_heatmap_png(tmp_path):
    rows = [{"module": m, "layer": i, "rel_diff": 0.1 * i + j} for j, m in enumerate(["attn", "mlp"]) for i in range(3)]
    fig = figures.weight_diff_heatmap(pa.Table.from_pylist(rows), title="RL update")
    assert len(fig.axes) == 2  # the map and its colorbar
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 3) and image[1, 2] == pytest.approx(1.2)
    _png_ok(figures.save_png(fig, tmp_path / "heat.png"))


def _axis_line(ax, at: float = 0.0, ls: str | None = None, vertical: bool = False) -> bool:
    """A line across the axes at ``at``: horizontal (what axhline draws) or ``vertical`` (axvline)."""
    along, across = ([at, at], [0, 1]) if not vertical else ([0, 1], [at, at])
    return any(
        list(line.get_ydata()) == along
        and list(line.get_xdata()) == across
        and (ls is None or line.get_linestyle() == ls)
        for line in ax.get_lines()
    )


def test_reward_legend_sits_outside_the_curves(tmp_path):
    """The report's reward figure: with six trials the legend once covered the positive control's curve."""
    series = [(f"task{i} s0 interleave(mess3,mess3)", list(range(40)), list(np.linspace(0.3, 0.3 + 0.05 * i, 40)))
              for i in range(6)]  # fmt: skip
    fig = figures.reward_curves(series)
    fig.canvas.draw()
    (ax,) = fig.axes
    (legend,) = fig.legends
    assert not ax.get_legend() and len(legend.get_texts()) == 6
    assert legend.get_window_extent().y1 <= ax.get_window_extent().y0  # wholly below the axes
    _png_ok(figures.save_png(fig, tmp_path / "reward.png"))


def test_probe_skill_figures_draw_0_and_say_what_below_it_means(tmp_path):
    for fig in (
        figures.skill_by_layer(_table(0), _table(1), title="before vs after"),
        figures.skill_pre_post(["neg\nseed 0", "pos\nseed 0"], [0.5, 0.4], [-0.9, -2.45], "skill"),
    ):
        assert _axis_line(fig.axes[0])
        assert any("below 0 is worse than it" in t.get_text() and "random-init" in t.get_text() for t in fig.texts)
        _png_ok(figures.save_png(fig, tmp_path / "skill.png"))


def test_verdict_signals_draw_the_rules_thresholds(tmp_path, monkeypatch):
    from types import SimpleNamespace as NS

    from rayexp.studies.composition.report import VERDICT_SIGNALS, verdict_figure
    from rayexp.studies.composition.verdict import Thresholds

    runs = [
        NS(data=NS(tags={"rayexp.process": "interleave(mess3,mess3)", "rayexp.task": task, "rayexp.seed": str(seed)},
                   metrics={key: 0.1 * seed for key in VERDICT_SIGNALS.values()}))
        for task in ("negative_control", "positive_control") for seed in range(3)
    ]  # fmt: skip
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    verdicts = {("interleave(mess3,mess3)", "positive_control"): "composition"}
    _png_ok(verdict_figure(runs, tmp_path / "verdict.png", verdicts))
    (fig,) = drawn
    th = Thresholds()
    want = {
        "unexplained by a map of p_pre": f"u_max {th.u_max:g}",
        "unexplained by a readout": f"u_max {th.u_max:g}",
        "per-phase greedy margin": f"margin_min {th.margin_min:g}",
        "reward shortfall of the map of p_pre": f"shortfall_min {th.shortfall_min:g}",
        "resolution bar - u, map of p_pre": "reweighting needs > 0",
    }
    for ax in fig.axes:
        title = ax.get_title()
        labels = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
        assert labels == ([want[title]] if title in want else []), title
        if title in want:
            value = th.margin_min if "margin" in title else th.shortfall_min if "shortfall" in title else th.u_max
            value = 0.0 if "bar" in title else value
            assert _axis_line(ax, value, "--", vertical=True)
    ax = fig.axes[0]
    top_down = [t.get_text() for _, t in sorted(zip(ax.get_yticks(), ax.get_yticklabels()), key=lambda p: -p[0])]
    # the first group on top; a group's label carries its verdict where the table has one
    assert top_down == ["interleave(mess3,mess3)  negative_control",
                        "interleave(mess3,mess3)  positive_control  \u2192 composition"]  # fmt: skip
    assert any("tol" in t.get_text() for t in fig.texts)
