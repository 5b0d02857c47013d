"""The size-matched null of negation (rayexp.studies.objective.matched_negation_analysis): the null's
update negated as far from theta_A as each reward's, on planted updates whose answer is known, through
the real ``negation`` analysis (PPO's retraining replaced by a deterministic map)."""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest

from models.transformer import Transformer
from rayexp.config import load_points
from rayexp.studies.objective import negation_analysis
from rayexp.studies.objective import task_vectors as tv
from rayexp.studies.objective.exact_returns import ExactReturns, params_of, with_params
from rayexp.studies.objective.matched_negation_analysis import (
    MatchedNegationParams,
    matched_lambdas,
    matched_negation,
    negation_params,
    summarise,
)
from rayexp.studies.objective.negation_analysis import negation
from rayexp.studies.objective.report import matched_rows
from rayexp.weights import interpolate, random_perturbation

SEEDS = (1, 2, 3)
NEGATION = {"lambdas": [0, 1, 2], "iterations": 1, "n_seq": 200}


def test_matched_lambdas_put_the_null_as_far_as_the_task():
    assert matched_lambdas([0.5, 1.0, 2.0], 6.0, 4.0) == [0.75, 1.5, 3.0]
    with pytest.raises(ValueError, match="norm"):
        matched_lambdas([1.0], 6.0, 0.0)


def test_summarise_pairs_the_leans_by_seed():
    table = {
        "seed": np.array([1, 2, 3, 1, 2, 3]),
        "task": np.array(["a"] * 6),
        "lambda": np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]),
        "norm_task": np.array([6.0, 8.0, 7.0] * 2),
        "norm_null": np.array([4.0, 4.0, 3.5] * 2),
        "lean_task": np.array([-0.3, -0.5, -0.4, -0.6, -0.7, -0.8]),
        "lean_null": np.array([-0.1, -0.1, np.nan, -0.2, -0.2, -0.2]),  # seed 3 stored no lean on a
        "lean_null_matched": np.array([-0.3, -0.4, -0.5, -0.5, -0.6, -0.7]),
    }
    got = summarise(table)
    # both differences on the same seeds: seed 3, with no unmatched lean at lambda 1, is left out of both
    assert got["negation/a/lam1/beyond_matched_null/mean"] == pytest.approx(-0.05)
    assert got["negation/a/lam1/beyond_matched_null/n"] == got["negation/a/lam1/beyond_null/n"] == 2
    assert got["negation/a/lam2/beyond_matched_null/mean"] == pytest.approx(-0.1)
    # a constant paired difference has no spread, though each lean has
    assert got["negation/a/lam2/beyond_matched_null/ci_low"] == pytest.approx(-0.1)
    assert got["negation/a/lam1/beyond_null/mean"] == pytest.approx(-0.3)
    assert got["negation/a/lam1/null_matched_lean/mean"] == pytest.approx(-0.35)
    assert got["negation/a/norm_ratio/mean"] == pytest.approx(np.mean([1.5, 2.0, 2.0]))
    assert got["negation/a/norm_ratio/n"] == 3  # one ratio per seed, not per lambda


class _Trial:
    """What negation and matched_negation read from a trial, with the resolved config of one
    sweeps/objective.yaml point and tiny models."""

    def __init__(self, point, pre, post, start_key="start-k"):
        self.config = point.config.model_dump()
        self.config["analyses"] = [{"name": "negation", "params": NEGATION | {"score_also": self.score_also(point)}}]
        self.env_config, self.ppo_settings, self.learner_gpus = point.env, point.ppo, 0.0
        self.start_key, self._pre, self._post, self.stored = start_key, pre, post, None

    @staticmethod
    def score_also(point):
        return point.config.model_dump()["analyses"][0]["params"]["score_also"]

    def model_before(self):
        return self._pre

    def model_after(self):
        return self._post

    def analysis_metrics(self, name):
        return self.stored if name == "negation" else None


def _pull_back(theta_a):
    """A stand-in for PPO's retraining on R_A: halfway back to M_A (deterministic, not linear in the
    returns), recording how far from theta_A each model it retrains lies."""
    seen = []

    def retrain(self, model, tmp, name):
        theta = params_of(model)
        seen.append(float(np.linalg.norm(tv.flatten(tv.task_vector(theta_a, theta)))))
        return with_params(model, {k: theta_a[k] + 0.5 * (theta[k] - theta_a[k]) for k in theta})

    return retrain, seen


@pytest.fixture(scope="module")
def points():
    _, pts = load_points("sweeps/objective.yaml")
    return {(p.trial.config.task.name, p.trial.config.seed): p.trial for p in pts}


def _sweep(points, monkeypatch, updates):
    """Trials of the null and the tasks in ``updates`` ({task: f(m_a, null's model, seed) -> model}) on
    SEEDS, each with its negation run and stored; returns (trials, M_A, the retraining's distances)."""
    small = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}
    m_a = Transformer(points[("null", 1)].model.model_copy(update=small), seed=0).eval()
    retrain, seen = _pull_back(params_of(m_a))
    monkeypatch.setattr(negation_analysis.Retraining, "__call__", retrain)
    trials = []
    for s in SEEDS:
        null = random_perturbation(m_a, 4.0, seed=10 + s)
        trials.append(_Trial(points[("null", s)], m_a, null))
        trials += [_Trial(points[(t, s)], m_a, make(m_a, null, s)) for t, make in updates.items()]
    for t in trials:
        t.stored = negation(t, negation_params(t)).metrics
    plt.close("all")
    seen.clear()
    return trials, m_a, seen


def _find(trials, task, seed):
    return next(t for t in trials if t.config["task"]["name"] == task and t.config["seed"] == seed)


def test_an_update_that_is_the_nulls_made_longer_leans_beyond_the_null_but_not_beyond_the_matched_null(
    points, monkeypatch
):
    """prefer0's update is the null's own, twice as long: negating it at lambda is negating the null at
    2 lambda, so whatever it leans is distance. beyond_null sees a lean; the matched null reads 0."""
    longer = {"prefer0": lambda m_a, null, s: interpolate(m_a, null, 2.0)}
    trials, _, seen = _sweep(points, monkeypatch, longer)
    got = matched_negation(trials, MatchedNegationParams()).metrics
    for lam in (1, 2):
        stem = f"negation/prefer0/lam{lam}"
        assert abs(got[f"{stem}/beyond_null/mean"]) > 0.01, got[f"{stem}/beyond_null/mean"]
        assert got[f"{stem}/beyond_matched_null/mean"] == pytest.approx(0.0, abs=1e-5)
        assert got[f"{stem}/beyond_matched_null/n"] == len(SEEDS)
    assert got["negation/prefer0/norm_ratio/mean"] == pytest.approx(2.0, rel=1e-5)
    assert got["n_seeds"] == len(SEEDS) and got["control_drift"] == pytest.approx(0.0, abs=1e-12)
    # per seed: the control, then the null at lambda 1 and 2 scaled to prefer0's norm (8): 8 and 16 away
    assert np.allclose(seen, [0.0, 8.0, 16.0] * len(SEEDS), rtol=1e-5)


def test_another_direction_is_set_against_the_null_at_its_own_norm(points, monkeypatch):
    """anti's update points elsewhere and is longer (norm 7 against 4); shift's points elsewhere at the
    null's norm, so for it the matched null is the null's own negation and the two columns agree. The
    matched lean equals one computed here from scratch: theta_A - lambda 7/4 tau_null, retrained, scored."""
    updates = {
        "anti": lambda m_a, null, s: random_perturbation(m_a, 7.0, seed=50 + s),
        "shift": lambda m_a, null, s: random_perturbation(m_a, 4.0, seed=60 + s),
    }
    trials, m_a, _ = _sweep(points, monkeypatch, updates)
    result = matched_negation(trials, MatchedNegationParams())
    got, table = result.metrics, result.tables["matched_negation"].to_pydict()
    for lam in (1, 2):
        stem = f"negation/shift/lam{lam}"
        assert got[f"{stem}/beyond_matched_null/mean"] == pytest.approx(got[f"{stem}/beyond_null/mean"], abs=1e-5)
    anti = np.asarray(table["task"]) == "anti"
    moved = np.abs(np.asarray(table["lean_null_matched"]) - np.asarray(table["lean_null"]))[anti]
    assert moved.max() > 0.005  # the null negated 7/4 as far leans otherwise than at one lambda
    # seed 2, anti, lambda 2 from scratch
    null = _find(trials, "null", 2)
    theta_a = params_of(m_a)
    tau = tv.task_vector(theta_a, params_of(null.model_after()))
    ev = ExactReturns(null.env_config, {"anti": null.config["analyses"][0]["params"]["score_also"]["anti"]}, 200, 0)
    retrain, _ = _pull_back(theta_a)
    scale = 7.0 / 4.0
    far, near = (retrain(None, with_params(m_a, tv.apply(theta_a, tau, -lam)), None, "") for lam in (2 * scale, 0.0))
    lean = float(ev.returns(far)["anti"].mean() - ev.returns(near)["anti"].mean())
    row = next(
        i
        for i, (s, t, lam) in enumerate(zip(table["seed"], table["task"], table["lambda"]))
        if (s, t, lam) == (2, "anti", 2)
    )
    assert table["lean_null_matched"][row] == pytest.approx(lean, abs=1e-5)
    assert table["lambda_null"][row] == pytest.approx(2 * scale, rel=1e-5)
    # the task's own lean is the one its trial stored
    assert table["lean_task"][row] == _find(trials, "anti", 2).stored["lam2/lean_B"]
    # only the tasks asked for are retrained; one the null does not score is refused
    only = matched_negation(trials, MatchedNegationParams(tasks=["shift"])).metrics
    assert not any(k.startswith("negation/anti/") for k in only)
    with pytest.raises(ValueError, match="score_also"):
        matched_negation(trials, MatchedNegationParams(tasks=["echo"]))
    # a task matched to a score_also entry that is not its own reward is refused
    renamed = copy.deepcopy(_find(trials, "null", 1))
    scored = renamed.config["analyses"][0]["params"]["score_also"]
    scored["anti"], scored["shift"] = scored["shift"], scored["anti"]
    with pytest.raises(ValueError, match="but that task's reward is"):
        matched_negation([renamed, _find(trials, "anti", 1)], MatchedNegationParams(tasks=["anti"]))
    odd = _Trial(points[("anti", 1)], m_a, _find(trials, "anti", 1).model_after(), start_key="another-M_A")
    odd.stored = _find(trials, "anti", 1).stored
    with pytest.raises(ValueError, match="different models"):
        matched_negation([_find(trials, "null", 1), odd], MatchedNegationParams())


def test_control_drift_is_the_gap_to_the_stored_control_and_nan_where_one_is_missing(points, monkeypatch):
    trials, _, _ = _sweep(points, monkeypatch, {"prefer0": lambda m_a, null, s: interpolate(m_a, null, 2.0)})
    null = _find(trials, "null", 2)
    null.stored = dict(null.stored) | {"lam0/retrained/B": null.stored["lam0/retrained/B"] + 0.25}
    got = matched_negation(trials, MatchedNegationParams()).metrics
    assert got["control_drift"] == pytest.approx(0.25, abs=1e-9)  # a control that moved is seen
    del null.stored["lam0/retrained/B"]
    got = matched_negation(trials, MatchedNegationParams()).metrics
    assert np.isnan(got["control_drift"])  # a comparison not made is not a 0


def test_report_sets_the_matched_lean_beside_the_unmatched_one():
    pm = {}
    stem = "sweep/matched_negation/all/negation/prefer0"
    for name, (m, lo, hi) in {
        "lam1/beyond_null": (-0.54, -0.79, -0.28),
        "lam1/beyond_matched_null": (-0.2, -0.4, 0.0),
    }.items():
        pm |= {f"{stem}/{name}/mean": m, f"{stem}/{name}/ci_low": lo, f"{stem}/{name}/ci_high": hi}
    pm |= {f"{stem}/lam1/beyond_matched_null/n": 5.0, f"{stem}/norm_ratio/mean": 1.6}
    pm |= {f"{stem}/norm_ratio/ci_low": 1.5, f"{stem}/norm_ratio/ci_high": 1.7}
    pm["sweep/task_vectors/all/negation/prefer0/lam1/beyond_null/mean"] = -0.54  # task_vectors': not a row
    (row,) = matched_rows(pm)
    assert row == {
        "group": "all",
        "task": "prefer0",
        "lambda": "1",
        "|tau_task| / |tau_null|": "+1.60 [+1.50, +1.70]",
        "beyond_null": "-0.540 [-0.790, -0.280]",
        "beyond_matched_null": "-0.200 [-0.400, +0.000]",
        "seeds": 5,
    }
    assert matched_rows({}) == []
