"""The objective and welfare studies end to end at toy scale (embedded Ray on 127.0.0.1):
trials that start from one shared M_A, the negation and task-vector analyses, and the concept
vectors of the outcome env, with what they promise in MLflow."""

import numpy as np
import torch
from test_sweep import tiny_sweep, trial_runs, write_sweep

from rayexp import tracking

TINY_MODEL = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32}
ANTI = {"matrix": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]], "offset": 1}


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_objective_trials_share_one_m_a_and_log_task_vectors(workdir):
    from rayexp.artifacts import find_trials
    from rayexp.storage import Storage
    from rayexp.sweep import run_sweep

    start = {"reward": "next_token", "iterations": 2, "seed": 0}
    sweep = tiny_sweep(
        "objective_toy",
        tasks=[
            {"name": "null", "reward": "next_token", "start_from": start},
            {"name": "anti", "reward": "payoff", "reward_params": ANTI, "start_from": start},
        ],
        axes={"grid": {"seed": [1, 2]}},
        sweep_analyses=[
            {"name": "task_vectors", "group_by": [], "params": {"n_seq": 50, "n_perm": 20, "n_perm_module": 10}}
        ],
    )
    sweep["base"]["process"] = {"name": "mess3", "x": 0.05, "a": 0.85}
    sweep["base"]["model"] = TINY_MODEL | {"n_ctx": 6}
    sweep["base"]["pretrain"]["seed"] = 0
    negation = {
        "lambdas": [1.0],
        "iterations": 1,
        "n_seq": 50,
        "score_also": {"anti": {"reward": "payoff", "reward_params": ANTI}},
    }
    sweep["base"]["analyses"] = [{"name": "negation", "params": negation}]
    outcome = run_sweep(str(write_sweep(workdir, sweep)))
    assert outcome.errors == 0

    trials = find_trials(str(workdir / "results"), "objective_toy")
    assert len(trials) == 4
    keys = {t.start_key for t in trials}
    assert len(keys) == 1 and keys.pop().startswith("start-")
    entries = [n for n in Storage(str(workdir / "results")).listdir("pretrain_cache") if n.startswith("start-")]
    assert len([e for e in entries if not e.endswith(".lock")]) == 1  # M_A trained once for four trials
    m_a = trials[0].model_before()
    assert not _same(m_a, trials[0].model_pretrained())  # M_A is PPO's, not the pretrained model
    for t in trials:
        assert _same(t.model_before(), m_a) and not _same(t.model_after(), m_a)
        neg = t.analysis_metrics("negation")
        assert neg["lam0/lean_B"] == 0.0 and np.isfinite(neg["lam1/lean_B"])
        if t.config["task"]["name"] == "null":  # R_B is R_A: the two leans are one number
            assert neg["lam1/lean_B"] == neg["lam1/lean_A"]

    c = tracking.client(tracking.tracking_uri())
    for run in trial_runs(tracking.tracking_uri(), "objective_toy"):
        assert len(c.get_metric_history(run.info.run_id, "start/reward_per_step")) == 2  # M_A's curve, replayed
    got = c.get_run(outcome.parent_run_id).data.metrics
    pre = "sweep/task_vectors/all/"
    assert 0 <= got[pre + "classifier/accuracy"] <= 1 and got[pre + "classifier/chance"] == 0.5
    assert got[pre + "similarity/anti/null"] == -1.0  # R_B = -R_A, exactly
    for key in (
        "cos/same_reward/mean",
        "cos/null_vs_reward/mean",
        "cos/null/mean",
        "negation/anti/lam1/beyond_null/mean",
    ):
        assert np.isfinite(got[pre + key]), key
    figures = {a.path for a in c.list_artifacts(outcome.parent_run_id, "figures/sweep/task_vectors")}
    assert "figures/sweep/task_vectors/all__task_vector_cosines.png" in figures, figures
    tables = {a.path for a in c.list_artifacts(outcome.parent_run_id, "sweep/task_vectors")}
    assert any("all__superposition" in p for p in tables), tables


def test_welfare_trial_logs_concept_vectors_and_steering(workdir):
    from rayexp.artifacts import find_trials
    from rayexp.sweep import run_sweep

    sweep = tiny_sweep(
        "welfare_toy",
        ppo_iterations=2,
        tasks=[{"name": "outcome_rl", "env": "outcome", "reward": "outcome", "episode_len": 3}],
    )
    sweep["base"]["process"] = {"name": "outcome", "base": {"name": "mess3"}}
    sweep["base"]["model"] = TINY_MODEL | {"n_ctx": 10}
    sweep["base"]["ppo"]["save_every"] = 1
    params = {"n_seq": 200, "n_perm": 20, "alphas": [-1.0, 0.0, 1.0], "n_random": 2}
    sweep["base"]["analyses"] = [{"name": "concept_vectors", "params": params}]
    outcome = run_sweep(str(write_sweep(workdir, sweep)))
    assert outcome.errors == 0
    (trial,) = find_trials(str(workdir / "results"), "welfare_toy")
    m = trial.analysis_metrics("concept_vectors")
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for model in ("random_init", "pre", "post"):
        for h in hooks:
            assert -1 <= m[f"cos/{model}/{h}"] <= 1
            assert m[f"null/{model}/{h}/q025"] <= m[f"null/{model}/{h}/q975"]
    for vec in ("v_P", "v_R", "orthogonal", "random"):
        assert np.isfinite(m[f"steer/post/{vec}/punish_slope"])
    assert -1 <= m["reward/post"] <= 1 and 0 <= m["punish/post"] <= 1
    c = tracking.client(tracking.tracking_uri())
    (run,) = trial_runs(tracking.tracking_uri(), "welfare_toy")
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}  # figures at the root (compare view)
    assert {"concept_layers.png", "steering.png", "concept_curve.png"} <= arts, arts
    tables = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert any("steering" in p for p in tables) or any(
        "steering" in a.path for d in tables for a in c.list_artifacts(run.info.run_id, d)
    )


def test_rare_trial_logs_trigger_rate_reward_and_b_probes(workdir):
    from rayexp.artifacts import find_trials
    from rayexp.sweep import run_sweep

    gated = {
        "name": "gated",
        "a": {"name": "rare_token", "base": {"name": "mess3"}, "eps": 0.05},
        "b": {"name": "mess3"},
        "trigger": 3,
    }
    task = {"name": "seek", "env": "active_gated", "reward": "rare_next_token", "reward_params": {"factor": 1}}
    sweep = tiny_sweep("rare_toy", ppo_iterations=2, tasks=[task])
    sweep["base"]["process"] = gated
    sweep["base"]["model"] = TINY_MODEL | {"n_ctx": 8}
    sweep["base"]["ppo"] |= {"save_every": 1, "gamma": 0.9}
    sweep["base"]["analyses"] = [{"name": "rare", "params": {"n_episodes": 20, "n_seq": 200}}]
    outcome = run_sweep(str(write_sweep(workdir, sweep)))
    assert outcome.errors == 0
    (trial,) = find_trials(str(workdir / "results"), "rare_toy")
    m = trial.analysis_metrics("rare")
    for phase in ("pre", "post"):
        assert 0 <= m[f"{phase}/trigger_rate"] <= 1 and 0 <= m[f"{phase}/reward"] <= 1
        assert m[f"{phase}/r2_B/seen"] <= 1
    assert m["positions/before"] > 0 and m["positions/at"] > 0
    assert m["delta/reward"] == m["post/reward"] - m["pre/reward"]
    c = tracking.client(tracking.tracking_uri())
    (run,) = trial_runs(tracking.tracking_uri(), "rare_toy")
    assert "rare_curve.png" in {a.path for a in c.list_artifacts(run.info.run_id)}
