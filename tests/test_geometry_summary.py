"""The geometry analysis (rayexp.studies.composition.geometry_analysis) run end to end on tiny trials
held in memory, and its sweep summary: contrasts paired by seed with their controls and the reference
task, and the compact report tables."""

import numpy as np
import pytest
from streams import INTERLEAVE

from envs import build_process
from rayexp.studies.composition.geometry_analysis import GeometryParams, geometry
from rayexp.studies.composition.geometry_summary import GeometrySummaryParams, geometry_summary


class _Trial:
    """What the geometry analysis reads from a trial's artifacts, held in memory (tiny transformers)."""

    def __init__(self, task="positive_control", seed=0):
        from models.transformer import Transformer, TransformerConfig

        cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
        self.env_config = {
            "process": INTERLEAVE,
            "context": 8,
            "episode_len": 8,
            "reward": "joint_target",
            "reward_params": {"m": 3},
            "action_tokens": None,
        }
        self.config = {"process": INTERLEAVE, "task": {"name": task}, "seed": seed}
        self._m = {i: Transformer(cfg, seed=seed + 10 * i).eval() for i in range(3)}
        self._stored = {}

    def stream(self):
        return build_process(INTERLEAVE)

    def model_before(self):
        return self._m[0]

    def random_init(self):
        return self._m[2]

    def ppo_iterations(self):
        return [5]

    def policy(self, it):
        return self._m[0] if it == 0 else self._m[1]

    def model_after(self):
        return self._m[1]

    def metrics(self):
        return {f"analysis/geometry/{k}": v for k, v in self._stored.items()}

    def analysis_metrics(self, name):
        return None


def test_geometry_analysis_and_summary_end_to_end_on_tiny_models():
    trials = [_Trial(task, seed) for task in ("positive_control", "negative_control") for seed in (0, 1)]
    for t in trials:
        res = geometry(t, GeometryParams(n_seq=40, n_random=1, lookup_k=[2]))
        t._stored = res.metrics
    m = trials[0]._stored
    for key in ("pre/final/skill/factor0", "post/block1/r2/joint_only", "curve/it5/embed/dim95", "ceiling/lookup_k2",
                "ablation/post/none/expected", "ablation/pre/block1/factor0/drop", "ablation/post/embed/random_both/drop",
                "dims/factored", "dims/joint", "ablation/post/block0/joint_only/drop",
                "ablation/post/block0/random_joint/drop", "ablation/pre/embed/joint_only/left_factor0",
                "ablation/post/block1/beyond_factors/left_factor1", "ablation/pre/block0/random_beyond_factors/drop",
                "ablation/post/block1/placebo_joint_only/drop", "ablation/pre/block0/placebo_beyond_factors/dim"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert m["dims/factored"] == 4 and m["dims/joint"] == 8
    for key in ("ablation/post/none/expected_test", "ablation/post/block1/joint_only/expected_test",
                "ablation/pre/block0/repaired_beyond_factors/expected_test"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert "ablation/post/block1/both/removed_test" in m
    for key in ("ablation/post/block1/beyond_factor_poly/left_factor0",
                "ablation/pre/block0/repaired_beyond_factor_poly/drop",
                "ablation/post/block1/beyond_factor_emitter/left_factor1",
                "ablation/post/block0/repaired_beyond_factor_emitter/expected_test"):  # fmt: skip
        assert np.isfinite(m[key]), key
    with pytest.raises(ValueError, match="poly_degree"):
        GeometryParams(poly_degree=1)  # degree 1 is the linear probes, beyond_factors itself
    # an untrained model earns nothing above uniform guessing: no share of it to remove
    assert (m["ablation/pre/none/expected"] - m["ceiling/uniform"] < 0.01) == np.isnan(
        m["ablation/pre/block1/factor0/removed"]
    )
    assert m["curve/it0/final/r2/factor0"] == m["pre/final/r2/factor0"]  # iteration 0 is the pretrained model
    assert m["curve/it5/final/r2/factor0"] == m["post/final/r2/factor0"]
    assert {"geometry_curve", "belief_simplex"} <= set(res.figures)
    summary = geometry_summary(trials, GeometrySummaryParams(layer="last"))
    curve = summary.tables["geometry_curve"].to_pydict()
    assert set(curve["task"]) == {"positive_control", "negative_control"} and set(curve["iteration"]) == {0, 5}
    assert set(curve["layer"]) == {"block1"}
    row = next(i for i, (t, it, q) in enumerate(zip(curve["task"], curve["iteration"], curve["quantity"]))
           if t == "positive_control" and it == 5 and q == "r2/joint_only")  # fmt: skip
    seeds = [
        t._stored["curve/it5/block1/r2/joint_only"] for t in trials if t.config["task"]["name"] == "positive_control"
    ]
    assert curve["mean"][row] == pytest.approx(np.mean(seeds)) and curve["ci_low"][row] < curve["mean"][row]
    abl = summary.tables["geometry_ablation"].to_pydict()
    assert {"model", "layer", "condition", "quantity", "mean", "ci_low", "ci_high"} <= set(abl)
    assert "positive_control/ablation/post/block1/factor0/removed" in summary.metrics
    assert "positive_control/ablation/post/block1/joint_only/removed" in summary.metrics
    assert {"left_factor0", "left_joint_only"} <= set(abl["quantity"])
    assert {"geometry_curve", "geometry_ablation"} == set(summary.figures)
    assert set(summary.tables["geometry_contrast"].column_names) >= {"task", "layer", "condition", "minus", "mean"}
    with pytest.raises(ValueError, match="no trial"):
        geometry_summary([_Trial()], GeometrySummaryParams())


def test_contrasts_pair_each_erasure_with_its_controls_and_the_reference_task_by_seed():
    from rayexp.stats import t_ci
    from rayexp.studies.composition.geometry_summary import contrast_rows

    def m(removed, placebo, random):
        k = "ablation/post/block0/{}/removed"
        return {k.format("beyond_factors"): removed, k.format("placebo_beyond_factors"): placebo,
                k.format("random_beyond_factors"): random,
                k.format("repaired_beyond_factors"): placebo / 2}  # fmt: skip

    by_seed = {
        ("p", "positive_control"): {"0": m(0.9, 0.5, 0.0), "1": m(0.8, 0.2, 0.1), "2": m(0.7, 0.1, 0.0)},
        ("p", "negative_control"): {"0": m(0.4, 0.4, 0.0), "1": m(0.3, 0.2, 0.0), "9": m(0.1, 0.1, 0.0)},
        ("q", "positive_control"): {"0": m(0.9, 0.0, 0.0)},  # another process: never paired with p's
    }
    rows = contrast_rows(by_seed, "negative_control", 0.95)
    got = {(p, t, c, x): (mean, lo, n) for p, t, c, x, mean, lo, n in
           zip(rows["process"], rows["task"], rows["condition"], rows["minus"], rows["mean"], rows["ci_low"],
               rows["n_seeds"])}  # fmt: skip
    assert got[("p", "positive_control", "beyond_factors", "placebo_beyond_factors")][0] == pytest.approx(1.6 / 3)
    ref = got[("p", "positive_control", "beyond_factors", "negative_control")]  # seeds 0 and 1 only
    assert ref[0] == pytest.approx(0.5) and ref[2] == 2 and ref[1] == pytest.approx(t_ci([0.5, 0.5])[1])
    net = got[("p", "positive_control", "beyond_factors", "negative_control, each net of its placebo")]
    assert net[0] == pytest.approx(((0.9 - 0.5) - (0.4 - 0.4) + (0.8 - 0.2) - (0.3 - 0.2)) / 2) and net[2] == 2
    rep = got[("p", "positive_control", "beyond_factors", "negative_control, each net of its re-pairing")]
    assert rep[0] == pytest.approx(((0.9 - 0.25) - (0.4 - 0.2) + (0.8 - 0.1) - (0.3 - 0.1)) / 2) and rep[2] == 2
    assert got[("p", "positive_control", "beyond_factors", "repaired_beyond_factors")][0] == pytest.approx(2.0 / 3)
    assert ("p", "negative_control", "beyond_factors", "negative_control") not in got  # not against itself
    # the family-wise interval: Bonferroni over the contrast's layers (one layer here: the plain interval),
    # and over two layers the interval at 1 - 0.05 / 2
    i = next(i for i, x in enumerate(rows["minus"]) if x == "placebo_beyond_factors" and rows["process"][i] == "p")
    assert rows["fw_layers"][i] == 1 and rows["fw_low"][i] == pytest.approx(rows["ci_low"][i])
    two = {
        k: v | {k2.replace("block0", "block1"): v2 for k2, v2 in v.items()}
        for k, v in by_seed[("p", "positive_control")].items()
    }
    rows2 = contrast_rows({("p", "positive_control"): two}, "negative_control", 0.95)
    j = rows2["minus"].index("placebo_beyond_factors")
    d = [0.9 - 0.5, 0.8 - 0.2, 0.7 - 0.1]
    assert rows2["fw_layers"][j] == 2 and rows2["fw_low"][j] == pytest.approx(t_ci(d, 0.975)[1])
    assert rows2["fw_low"][j] < rows2["ci_low"][j]
    assert ("q", "positive_control", "beyond_factors", "negative_control") not in got  # q has no reference
    assert set(rows["scored"]) == {"all"}
    # scored on the held-out half: the same contrasts of ``removed_test``, which the default never reads
    held = {
        key: {sd: v | {k.replace("/removed", "/removed_test"): x / 2 for k, x in v.items()} for sd, v in seeds.items()}
        for key, seeds in by_seed.items()
    }
    assert contrast_rows(held, "negative_control", 0.95)["mean"] == rows["mean"]
    rows_h = contrast_rows(held, "negative_control", 0.95, scored="held_out")
    assert set(rows_h["scored"]) == {"held_out"} and len(rows_h["mean"]) == len(rows["mean"])
    np.testing.assert_allclose(rows_h["mean"], np.array(rows["mean"]) / 2)
    assert contrast_rows(by_seed, "negative_control", 0.95, scored="held_out")["mean"] == []  # older trials
    from rayexp.studies.composition.geometry_summary import _stacked

    stacked = _stacked([rows, rows_h])
    assert stacked["scored"] == rows["scored"] + rows_h["scored"] and stacked["mean"] == rows["mean"] + rows_h["mean"]
    assert got[("q", "positive_control", "beyond_factors", "random_beyond_factors")][2] == 1
    assert set(rows["layer"]) == {"block0"} and set(rows["condition"]) == {"beyond_factors"}
    # the report prints them at each task's curve layer, one row per erasure
    from rayexp.studies.composition.geometry_report import contrasts_at

    curve = [{"process": "p", "task": "positive_control", "layer": "block0"}]
    (row,) = contrasts_at({"curve": curve, "contrast": [dict(zip(rows, v)) for v in zip(*rows.values())]})
    # a difference with no spread excludes 0 at any level: starred as holding over the layers too
    assert row["erasure"] == "beyond_factors" and row["minus negative_control"] == "+0.50 [+0.50, +0.50] *"
    assert row["minus placebo"].startswith("+0.53 [") and "minus random" in row
    assert row["minus negative_control (net of placebos)"] == "+0.45 [-0.19, +1.09]"
    # each scoring gets its own rows; rows without the column (older runs) count as scored on all
    both = [dict(zip(rows, v)) for v in zip(*rows.values())] + [dict(zip(rows_h, v)) for v in zip(*rows_h.values())]
    (row_h,) = contrasts_at({"curve": curve, "contrast": both}, "held_out")
    assert row_h["minus negative_control"] == "+0.25 [+0.25, +0.25] *"
    (row_a,) = contrasts_at({"curve": curve, "contrast": both})
    assert row_a == row
    old = [{k: v for k, v in r.items() if k != "scored"} for r in both[: len(rows["mean"])]]
    assert contrasts_at({"curve": curve, "contrast": old}) == [row]
    assert contrasts_at({"curve": curve, "contrast": old}, "held_out") == []
    assert row["minus repaired"].startswith("+0.67 [") and "minus negative_control (net of re-pairings)" in row
    one = [{"process": "q", "task": "positive_control", "layer": "block0"}]
    rows_q = [dict(zip(rows, v)) for v in zip(*rows.values()) if v[0] == "q"]
    assert contrasts_at({"curve": one, "contrast": rows_q})[0]["minus random"] == "+0.90 [n = 1]"


def test_an_erasure_that_keeps_more_read_outs_is_set_against_the_global_probes_one_in_the_same_trial():
    from rayexp.stats import t_ci
    from rayexp.studies.composition.geometry_report import contrasts_at
    from rayexp.studies.composition.geometry_summary import contrast_rows

    k = "ablation/post/block1/{}/removed"
    seeds = {  # the phase-gated erasure spares 0.3, 0.1, 0.2 of what the global one removes
        "0": {k.format("beyond_factors"): 0.6, k.format("beyond_factor_emitter"): 0.3, k.format("joint_only"): 0.1},
        "1": {k.format("beyond_factors"): 0.4, k.format("beyond_factor_emitter"): 0.3, k.format("joint_only"): 0.1},
        "2": {k.format("beyond_factors"): 0.5, k.format("beyond_factor_emitter"): 0.3, k.format("joint_only"): 0.1},
        "3": {k.format("beyond_factor_emitter"): 0.9},  # no global erasure logged: not paired
    }
    rows = contrast_rows({("p", "negative_control"): seeds}, "negative_control", 0.95)
    (i,) = [i for i, x in enumerate(rows["minus"]) if x == "beyond_factors"]
    assert rows["condition"][i] == "beyond_factor_emitter" and rows["n_seeds"][i] == 3
    mean, lo, hi = t_ci([-0.3, -0.1, -0.2], 0.95)
    assert (rows["mean"][i], rows["ci_low"][i], rows["ci_high"][i]) == pytest.approx((mean, lo, hi))
    # never the global erasure against itself, nor an erasure that keeps no more read-outs
    assert [c for c, x in zip(rows["condition"], rows["minus"]) if x == "beyond_factors"] == ["beyond_factor_emitter"]
    curve = [{"process": "p", "task": "negative_control", "layer": "block1"}]
    table = [dict(zip(rows, v)) for v in zip(*rows.values())]
    emitter = next(
        r for r in contrasts_at({"curve": curve, "contrast": table}) if r["erasure"] == "beyond_factor_emitter"
    )
    assert emitter["minus beyond_factors"] == f"-0.20 [{lo:+.2f}, {hi:+.2f}]"


def test_geometry_report_compacts_the_summary_tables():
    from rayexp.studies.composition.geometry_report import compact

    trials = [_Trial("positive_control", seed) for seed in (0, 1)]
    for t in trials:
        t._stored = geometry(t, GeometryParams(n_seq=30, n_random=1, lookup_k=[2], checkpoints=False)).metrics
    summary = geometry_summary(trials, GeometrySummaryParams())
    tables = {k: summary.tables[f"geometry_{k}"].to_pylist() for k in ("curve", "ablation")}
    (row,) = compact(tables)
    assert row["task"] == "positive_control" and row["layer"] == "block1"
    assert {"r2/joint_only pre", "r2/joint_only post", "dim95 post", "removed both", "removed random_both",
            "removed joint_only", "removed random_joint_only", "removed joint", "removed random_joint",
            "removed beyond_factors", "removed random_beyond_factors", "removed placebo_joint_only",
            "removed placebo_beyond_factors"} <= set(row)  # fmt: skip
    pre = np.mean([t._stored["pre/block1/r2/joint_only"] for t in trials])
    assert row["r2/joint_only pre"].startswith(f"{pre:.2f}")
