"""The reproduction's seed-to-seed spread (``python -m rayexp.reproduce NAME --seeds N``): one seed's
bootstrap interval covers the probe's sampling error only, so a published finding ("concat beats final
on RRXOR") is stated over pretraining seeds, each seed's own run unchanged."""

import json

import numpy as np
import pytest
from scipy import stats

from rayexp import reproduce


def _summary(seed: int, final: float, concat: float, passed: bool, experiment: str = "rrxor") -> dict:
    row = lambda skill: {"skill": skill}
    return {
        "experiment": experiment,
        "criterion": "c",
        "passed": passed,
        "loss_gap": 0.001 * (seed + 1),
        "pretrain": {"seed": seed, "precision": "fp32"},
        "wall_s": {"total": 10.0},
        "targets": {"belief": {"final": row(final), "concat": row(concat), "ln_final": row(final - 0.01)}},
    }


def test_spread_is_a_student_t_interval_over_seeds_and_a_paired_difference():
    finals, concats = [0.80, 0.82, 0.78, 0.81, 0.79], [0.92, 0.90, 0.93, 0.91, 0.88]
    sp = reproduce.spread([_summary(k, f, c, k != 2) for k, (f, c) in enumerate(zip(finals, concats))])
    assert sp["seeds"] == [0, 1, 2, 3, 4] and sp["passed"] == 4 and sp["wall_s"] == 50.0
    final = sp["targets"]["belief"]["final"]
    half = stats.t.ppf(0.975, 4) * np.std(finals, ddof=1) / np.sqrt(5)
    assert final["mean"] == pytest.approx(0.80)
    assert (final["ci_low"], final["ci_high"]) == pytest.approx((0.80 - half, 0.80 + half))
    assert final["per_seed"] == finals
    diff = sp["targets"]["belief"]["concat_minus_final"]
    assert diff["per_seed"] == pytest.approx(np.subtract(concats, finals))
    assert diff["mean"] == pytest.approx(np.mean(concats) - np.mean(finals))
    assert diff["sign_flip_p"] == pytest.approx(2 / 32)  # every seed positive: the exact test's floor with 5
    assert sp["loss_gap"]["mean"] == pytest.approx(0.003)
    # a difference whose sign changes from seed to seed is not shown
    mixed = reproduce.spread([_summary(k, 0.8, 0.8 + d, True) for k, d in enumerate([0.1, -0.1, 0.05, -0.05])])
    assert mixed["targets"]["belief"]["concat_minus_final"]["sign_flip_p"] == pytest.approx(1.0)


def test_spread_refuses_runs_of_different_experiments_or_none():
    with pytest.raises(ValueError, match="one experiment"):
        reproduce.spread([_summary(0, 0.8, 0.9, True), _summary(1, 0.8, 0.9, True, experiment="mess3-0.05")])
    with pytest.raises(ValueError, match="one experiment"):
        reproduce.spread([])


def test_seeds_runs_each_seed_into_its_folder_and_writes_the_spread(tmp_path, capsys):
    argv = ["mess3-0.05", "--out", str(tmp_path), "--steps", "3", "--n-seq", "200", "--precision", "fp32"]
    assert reproduce.main([*argv, "--seed", "3", "--seeds", "2"]) == 0
    runs = [json.loads((tmp_path / f"seed{k}" / "summary.json").read_text()) for k in (3, 4)]
    assert [r["pretrain"]["seed"] for r in runs] == [3, 4]
    sp = json.loads((tmp_path / "spread.json").read_text())
    assert sp["seeds"] == [3, 4] and sp["command"].endswith("--seed 3 --seeds 2")
    skills = [r["targets"]["belief"]["final"]["skill"] for r in runs]
    assert skills[0] != skills[1]  # two pretraining seeds, two models
    assert sp["targets"]["belief"]["final"]["per_seed"] == pytest.approx(skills)
    assert sp["passed"] == sum(r["passed"] for r in runs)
    assert "over 2 pretraining seeds [3, 4]" in capsys.readouterr().out
    # one seed into OUT/seed4 again gives that seed's run to the digit: --seeds adds nothing to a run
    one = tmp_path / "one"
    assert reproduce.main([*argv[:2], str(one), *argv[3:], "--seed", "4"]) == 0
    again = json.loads((one / "summary.json").read_text())
    assert again["targets"] == runs[1]["targets"]


@pytest.mark.parametrize("flag", [["--seeds", "0"], ["--seed", "-1"]])
def test_seeds_must_be_positive(tmp_path, flag):
    with pytest.raises(SystemExit):
        reproduce.main(["mess3-0.05", "--out", str(tmp_path), *flag])
    assert not any(tmp_path.iterdir())  # refused before any pretraining
