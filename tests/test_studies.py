"""The objective, welfare and rare studies end to end at toy scale, through the real CLI (embedded
Ray on 127.0.0.1): trials that start from one shared M_A, the negation and task-vector analyses, the
concept vectors of the outcome env and the rare-capability probes, with what they promise in storage
and MLflow. Each runs the study's golden sweep (tests/goldens/behaviour/), the same run whose every
metric tests/test_behaviour.py compares with its golden values, so the sweep is paid for once."""

import numpy as np
import pytest
import torch
from test_sweep import trial_runs

from rayexp import tracking


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_objective_trials_share_one_m_a_and_log_task_vectors(golden_sweep):
    from rayexp.artifacts import find_trials
    from rayexp.storage import Storage

    # tasks null (R_B = R_A = next_token) and anti (R_B = -R_A), both from one M_A; seeds 1, 2
    g = golden_sweep("objective")
    trials = find_trials(str(g.dir / "results"), g.experiment)
    assert len(trials) == 4
    keys = {t.start_key for t in trials}
    assert len(keys) == 1 and keys.pop().startswith("start-")
    entries = [n for n in Storage(str(g.dir / "results")).listdir("pretrain_cache") if n.startswith("start-")]
    assert len([e for e in entries if not e.endswith(".lock")]) == 1  # M_A trained once for four trials
    m_a = trials[0].model_before()
    assert not _same(m_a, trials[0].model_pretrained())  # M_A is PPO's, not the pretrained model
    for t in trials:
        assert _same(t.model_before(), m_a) and not _same(t.model_after(), m_a)
        neg = t.analysis_metrics("negation")
        assert neg["lam0/lean_B"] == 0.0 and np.isfinite(neg["lam1/lean_B"])
        if t.config["task"]["name"] == "null":  # R_B is R_A: the two leans are one number
            assert neg["lam1/lean_B"] == neg["lam1/lean_A"]

    c = tracking.client(g.uri)
    for run in trial_runs(g.uri, g.experiment):
        assert len(c.get_metric_history(run.info.run_id, "start/reward_per_step")) == 2  # M_A's curve, replayed
    parent = g.parent_run_id()
    got = c.get_run(parent).data.metrics
    pre = "sweep/task_vectors/all/"
    assert 0 <= got[pre + "classifier/accuracy"] <= 1 and got[pre + "classifier/chance"] == 0.5
    assert got[pre + "similarity/anti/null"] == -1.0  # R_B = -R_A, exactly
    for key in (
        "cos/same_reward/mean",
        "cos/null_vs_reward/mean",
        "cos/null/mean",
        "negation/anti/lam1/beyond_null/mean",
        "cos/same_reward_minus_null/mean",
    ):
        assert np.isfinite(got[pre + key]), key
    # the paired difference's estimate is the difference of the two means (2 seeds: no interval)
    diff = got[pre + "cos/same_reward/mean"] - got[pre + "cos/null/mean"]
    assert got[pre + "cos/same_reward_minus_null/mean"] == pytest.approx(diff)
    figures = {a.path for a in c.list_artifacts(parent, "figures/sweep/task_vectors")}
    assert "figures/sweep/task_vectors/all__task_vector_cosines.png" in figures, figures
    tables = {a.path for a in c.list_artifacts(parent, "sweep/task_vectors")}
    assert any("all__superposition" in p for p in tables), tables


def test_welfare_trial_logs_concept_vectors_and_steering(golden_sweep):
    from rayexp.artifacts import find_trials

    g = golden_sweep("welfare")  # the outcome env, one PPO task, concept_vectors with 2 random vectors
    (trial,) = find_trials(str(g.dir / "results"), g.experiment)
    m = trial.analysis_metrics("concept_vectors")
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for model in ("random_init", "pre", "post"):
        for h in hooks:
            assert -1 <= m[f"cos/{model}/{h}"] <= 1
            assert m[f"null/{model}/{h}/q025"] <= m[f"null/{model}/{h}/q975"]
    for vec in ("v_P", "v_R", "orthogonal", "random"):
        assert np.isfinite(m[f"steer/post/{vec}/punish_slope"])
    assert -1 <= m["reward/post"] <= 1 and 0 <= m["punish/post"] <= 1
    # the rotation's controls: split halves of one model, and the pre-RL model moved as far at random
    from rayexp.weights import param_arrays, update_norm

    norm = update_norm(param_arrays(trial.model_before()), param_arrays(trial.model_after()))
    assert m["update_norm"] == pytest.approx(norm, rel=1e-6) and norm > 0
    for h in hooks:
        for k in ("R", "P"):
            assert -1 <= m[f"align_random/{h}/{k}"] <= 1 and -1 <= m[f"split_half/pre/{h}/{k}"] <= 1
    assert -1 <= m["reward/perturbed"] <= 1
    c = tracking.client(g.uri)
    (run,) = trial_runs(g.uri, g.experiment)
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}  # figures at the root (compare view)
    assert {"concept_layers.png", "steering.png", "concept_curve.png"} <= arts, arts
    tables = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert any("steering" in p for p in tables) or any(
        "steering" in a.path for d in tables for a in c.list_artifacts(run.info.run_id, d)
    )


def test_rare_trial_logs_trigger_rate_reward_and_b_probes(golden_sweep):
    from rayexp.artifacts import find_trials

    g = golden_sweep("rare")  # gated(rare_token(mess3, eps 0.05), mess3), the active env, rare_next_token
    (trial,) = find_trials(str(g.dir / "results"), g.experiment)
    m = trial.analysis_metrics("rare")
    for phase in ("pre", "post"):
        assert 0 <= m[f"{phase}/trigger_rate"] <= 1 and 0 <= m[f"{phase}/reward"] <= 1
        assert m[f"{phase}/r2_B/seen"] <= 1
    assert m["positions/before"] > 0 and m["positions/at"] > 0
    assert m["delta/reward"] == m["post/reward"] - m["pre/reward"]
    c = tracking.client(g.uri)
    (run,) = trial_runs(g.uri, g.experiment)
    assert "rare_curve.png" in {a.path for a in c.list_artifacts(run.info.run_id)}


def test_direction_scores_stored_composition_trials(golden_sweep, capsys):
    """``python -m rayexp.studies.composition.direction --runs``: each stored trial's projections, on the
    composition analysis' own sequences, one row per (process, task)."""
    from rayexp.artifacts import find_trials
    from rayexp.studies.composition import direction
    from rayexp.studies.composition.verdict_analysis import trial_signals

    g = golden_sweep("composition")
    root = str(g.dir / "results")
    trials = find_trials(root, g.experiment)
    assert len(trials) == 3
    for t in trials:
        v = direction.trial_projection(t)  # on the sample the trial's own analysis drew (n_seq 60 here)
        norms = {"norm_post", "norm_sharp", "norm_soft", "norm_argmax"}
        masses = {"mass_rest_min", "mass_sharp", "mass_post"}
        assert set(v) == {"pre", "post", "sharp", "post_argmax", *masses, *norms}, v
        assert all(np.isfinite(x) for x in v.values()) and all(v[k] > 0 for k in norms), v
        # the composition analysis logged the same residuals (per held-out sequence) for the verdict's bounds
        sig = trial_signals(t)
        n_test = v["norm_post"] ** 2 / sig["residual_sq"]
        assert n_test == pytest.approx(30) and sig["rest_min"] == pytest.approx(v["mass_rest_min"])
        assert v["norm_soft"] ** 2 / sig["residual_sq_planted_soft"] == pytest.approx(n_test)
        assert v["norm_sharp"] ** 2 / sig["residual_sq_planted_sharp"] == pytest.approx(n_test)
        assert sig["residual_dot_soft"] * n_test == pytest.approx(v["post"] * v["norm_soft"] ** 2)
        assert sig["residual_dot_composed"] * n_test == pytest.approx(v["post_argmax"] * v["norm_argmax"] ** 2)
    # the learned bound's premise: the negative control against its pair's positive control, on its own fit.
    # At share 0 the rest is the policy itself, so the least rest is at most the policy's own mass
    by = {t.config["task"]["name"]: t for t in trials}
    neg, pos = by["negative_control"], by["positive_control"]
    least = direction.learned_rest_min(neg, pos)
    assert 0 <= least <= direction.trial_projection(neg)["mass_post"] + 1e-12
    assert np.isnan(direction.learned_rest_min(pos, neg))  # six next-token actions do not fit among three
    assert direction.main(["--runs", f"{root}:{g.experiment}"]) == 0
    out = capsys.readouterr().out
    for task in ("negative_control", "positive_control", "shuffled_null"):
        assert task in out
    assert "soft J <= (null rest)" in out and "learned J premise refuted (sharp; null rest)" in out
    with pytest.raises(SystemExit):
        direction.main(["--runs", g.experiment])  # no storage
