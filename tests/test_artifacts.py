"""The storage layer, the trial artifact object, and the small maths the analyses share."""

import json
import math

import numpy as np
import pytest

from rayexp.analyses.policy_kl import forward_kl
from rayexp.analyses.seed_spread import SeedSpreadParams, summarise
from rayexp.analyze import group_label, group_trials, group_value
from rayexp.artifacts import TrialArtifacts, find_trials, log_spaced_steps
from rayexp.stats import bootstrap_ci, paired_bootstrap_ci
from rayexp.storage import Storage


@pytest.mark.parametrize(
    ("total", "n", "expected"),
    [(1000, 4, [0, 1, 32, 1000]), (2000, 1, [2000]), (2000, 0, []), (5, 10, [0, 1, 2, 3, 4, 5])],
)
def test_log_spaced_steps(total, n, expected):
    assert log_spaced_steps(total, n) == expected


def test_log_spaced_default_has_about_ten_checkpoints_including_both_ends():
    steps = log_spaced_steps(2000, 10)
    assert steps[0] == 0 and steps[-1] == 2000 and 9 <= len(steps) <= 10
    ratios = np.diff(np.log(steps[1:]))
    assert steps[1] == 1 and np.allclose(ratios, np.log(2000) / 8, atol=0.25)  # rounding bends the low end


def test_storage_round_trip_and_sizes(tmp_path):
    store = Storage(str(tmp_path / "root"))
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100)
    store.put(src, "a/b/f.bin")
    store.write_json("a/meta.json", {"k": 1})
    assert store.exists("a/b/f.bin") and store.read_json("a/meta.json") == {"k": 1}
    assert store.listdir("a") == ["b", "meta.json"] and store.listdir("missing") == []
    assert store.size("a") == 100 + len(json.dumps({"k": 1}))
    assert store.local_file("a/b/f.bin").read_bytes() == b"x" * 100
    store.delete("a/b")
    assert not store.exists("a/b/f.bin")


def _fake_trial(root, sweep, key, config, finished=True, metrics=None):
    art = TrialArtifacts(str(root), sweep, key)
    art.write_meta(config, "pk", {"process": config["process"], "context": 4}, {"d_vocab": 3})
    art.write_metrics(metrics or {})
    if finished:
        art.mark_finished()
    return art


def test_find_trials_and_retention(tmp_path):
    cfg = {"process": {"name": "mess3"}, "task": {"name": "next"}, "seed": 0, "model": {"d_model": 8}}
    a = _fake_trial(tmp_path, "sw", "k1", cfg)
    _fake_trial(tmp_path, "sw", "k2", cfg, finished=False)
    assert [t.key for t in find_trials(str(tmp_path), "sw")] == ["k1"]
    assert len(find_trials(str(tmp_path), "sw", finished_only=False)) == 2
    for it in (5, 10, 15):
        src = tmp_path / f"p{it}.pt"
        src.write_bytes(b"w")
        a.put_policy(src, it)
    assert a.ppo_iterations() == [5, 10, 15]
    a.apply_retention("final")
    assert a.ppo_iterations() == [15]
    a.apply_retention("none")
    assert a.ppo_iterations() == [] and a.metrics() == {} and a.config == cfg  # the small records stay
    with pytest.raises(FileNotFoundError, match="no policy stored"):
        a.model_after()


def test_trial_artifacts_pickle_as_their_address(tmp_path):
    import pickle

    a = _fake_trial(tmp_path, "sw", "k1", {"process": {"name": "mess3"}})
    b = pickle.loads(pickle.dumps(a))
    assert (b.store.uri, b.sweep, b.key) == (a.store.uri, a.sweep, a.key) and b.config == a.config


def test_grouping_by_config_fields(tmp_path):
    trials = [
        _fake_trial(
            tmp_path,
            "sw",
            f"k{i}",
            {"process": {"name": "mess3"}, "task": {"name": t}, "seed": s, "model": {"d_model": d}},
        )
        for i, (t, s, d) in enumerate([("neg", 0, 8), ("neg", 1, 8), ("pos", 0, 8), ("pos", 0, 16)])
    ]
    assert group_value(trials[0].config, "process") == "mess3"
    groups = group_trials(trials, ["task"])
    assert {g: len(m) for g, m in groups.items()} == {"neg": 2, "pos": 2}
    groups = group_trials(trials, ["task", "model.d_model"])
    assert sorted(groups) == ["neg__8", "pos__16", "pos__8"]
    assert group_label(("mixture(mess3,rrxor)", "neg")) == "mixture_mess3_rrxor___neg"
    from rayexp.config import SweepError

    with pytest.raises(SweepError, match="model.nope"):
        group_trials(trials, ["model.nope"])


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=400)
    mean, lo, hi = bootstrap_ci(x, seed=1)
    assert lo < mean < hi and lo < 1.0 < hi and 0.1 < hi - lo < 0.3  # ~ 2 * 1.96 / sqrt(400)
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    assert all(np.isnan(v) for v in bootstrap_ci([]))
    # paired: a shared per-unit offset cancels, so the paired interval is far narrower than unpaired ones
    unit = rng.normal(0, 10, size=50)
    d, dlo, dhi = paired_bootstrap_ci(unit, unit + 0.5 + rng.normal(0, 0.01, 50))
    assert abs(d - 0.5) < 0.01 and dhi - dlo < 0.02
    with pytest.raises(ValueError, match="equal shapes"):
        paired_bootstrap_ci([1, 2], [1])


def test_seed_spread_summary():
    # Student-t by default: mean 2, sd 1, n 3 -> 2 +- t_{0.975, 2} / sqrt(3) = 2 +- 2.4841 (the
    # percentile bootstrap of 3 values could never reach past the range [1, 3])
    out = summarise({"m": [1.0, 2.0, 3.0]}, SeedSpreadParams(metrics=["m"]))
    assert out["m/mean"] == 2.0 and out["m/n"] == 3.0
    assert out["m/ci_low"] == pytest.approx(2 - 4.302653 / 3**0.5, abs=1e-6)
    assert out["m/ci_high"] == pytest.approx(2 + 4.302653 / 3**0.5, abs=1e-6)
    boot = summarise({"m": [1.0, 2.0, 3.0]}, SeedSpreadParams(metrics=["m"], interval="bootstrap"))
    assert 1.0 <= boot["m/ci_low"] < 2.0 < boot["m/ci_high"] <= 3.0
    one = summarise({"m": [5.0]}, SeedSpreadParams(metrics=["m"]))
    assert one["m/mean"] == 5.0 and math.isnan(one["m/ci_low"]) and math.isnan(one["m/ci_high"])


def test_forward_kl_known_values():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.25, 0.25, 0.5])
    assert forward_kl(p, q) == pytest.approx(np.log(2))
    assert forward_kl(p, p) == 0.0
    assert forward_kl(q, p) == np.inf  # q puts mass where p has none


def test_analyze_reads_the_sweep_files_own_entry():
    from types import SimpleNamespace

    from rayexp.analyze import sweep_file_entry

    declared = [{"name": "verdict", "params": {}, "group_by": ["process"]}]
    run = SimpleNamespace(data=SimpleNamespace(params={"sweep_analyses": json.dumps(declared)}))
    assert sweep_file_entry(run, "verdict") == declared[0]
    assert sweep_file_entry(run, "seed_spread") is None
    assert (
        sweep_file_entry(SimpleNamespace(data=SimpleNamespace(params={"sweep_analyses": "[oops"})), "verdict") is None
    )
    assert sweep_file_entry(SimpleNamespace(data=SimpleNamespace(params={})), "verdict") is None
