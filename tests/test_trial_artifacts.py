"""What a finished sweep leaves behind, read through rayexp.artifacts; analyses as resumable
stages; across-trial analyses on the parent run (embedded Ray on 127.0.0.1, tiny models); what the
MLflow run list shows of a trial (its name, the verdict's tags and description)."""

import os
import threading

import torch
from test_sweep import cli, kill_group, tiny_sweep, trial_runs, write_sweep

from rayexp import tracking


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sweep_stores_checkpoints_and_analyze_logs_once(workdir):
    from models.pretrain import pretrain
    from models.transformer import Transformer
    from rayexp.analyze import run_analysis
    from rayexp.artifacts import find_trials, log_spaced_steps
    from rayexp.resolved import pretrain_config
    from rayexp.sweep import run_sweep

    sweep = tiny_sweep("stored", ppo_iterations=3)
    sweep["base"]["ppo"]["save_every"] = 1
    sweep["base"]["artifacts"] = {"pretrain_checkpoints": 4}
    sweep["base"]["analyses"] = ["weight_diff", {"name": "policy_kl", "params": {"n_seq": 50}}]
    sweep["sweep_analyses"] = [{"name": "seed_spread", "params": {"metrics": ["analysis/policy_kl/policy_kl"]}}]
    outcome = run_sweep(str(write_sweep(workdir, sweep)))
    assert outcome.errors == 0

    trials = find_trials(str(workdir / "results"), "stored")
    assert sorted(t.config["task"]["name"] for t in trials) == ["negative_control", "positive_control"]
    uri = tracking.tracking_uri()
    c = tracking.client(uri)
    runs = {r.data.tags["rayexp.trial_key"]: r for r in trial_runs(uri, "stored")}
    for t in trials:
        # pretraining: the log-spaced checkpoints are those an independent re-run produces, bit for bit
        cfg = pretrain_config(t.trial, 1)
        assert t.pretrain_steps() == log_spaced_steps(30, 4) == cfg.checkpoint_steps
        again = pretrain(t.process(), t.model_before().cfg, cfg, out_dir=workdir / f"again_{t.key}")
        for step in t.pretrain_steps():
            rerun = torch.load(workdir / f"again_{t.key}" / f"step_{step:07d}.pt", weights_only=True)["state_dict"]
            stored = t.pretrain_checkpoint(step).state_dict()
            assert all(torch.equal(rerun[k], stored[k]) for k in stored), step
        assert _same_weights(t.pretrain_checkpoint(0), Transformer(t.model_before().cfg, seed=cfg.seed))
        assert _same_weights(t.pretrain_checkpoint(30), t.model_before()) and _same_weights(
            again.model, t.model_before()
        )
        # PPO: a policy after every iteration; the last is the model the run logged to MLflow
        assert t.ppo_iterations() == [1, 2, 3]
        logged = c.download_artifacts(runs[t.key].info.run_id, "weights/model_after.pt", str(workdir / t.key))
        from models.checkpoint import load_checkpoint

        assert _same_weights(t.policy(3), load_checkpoint(logged)[0]) and _same_weights(t.model_after(), t.policy(3))
        assert not _same_weights(t.policy(1), t.model_before())  # PPO moved the weights
        assert {"pre", "post"} <= set(t.probe_phases())
        assert t.env_config["process"]["name"] in ("mixture", "interleave")
        assert t.analysis_metrics("policy_kl")["policy_kl"] >= 0
        assert t.size_bytes()["trial"] > 0

    # the across-trial analysis ran when the trials finished; running it twice more adds nothing
    parent = outcome.parent_run_id
    key = "sweep/seed_spread/negative_control/analysis/policy_kl/policy_kl/mean"
    assert key in c.get_run(parent).data.metrics
    for _ in range(2):
        run_analysis("stored", "seed_spread", {"metrics": ["analysis/policy_kl/policy_kl"]}, ["task"])
    run_analysis("stored", "seed_spread")  # no params, no group_by: the sweep file's own, so nothing new either
    assert len(c.get_metric_history(parent, key)) == 1
    names = {m for m in c.get_run(parent).data.metrics if m.startswith("sweep/seed_spread/")}
    assert all(len(c.get_metric_history(parent, m)) == 1 for m in names) and len(names) == 8


def test_trial_killed_in_its_second_analysis_resumes_there(workdir):
    sweep = tiny_sweep("analyses", ppo_iterations=2, tasks=[{"name": "next", "reward": "next_token"}])
    sweep["base"]["analyses"] = ["weight_diff", {"name": "policy_kl", "params": {"n_seq": 50}}]
    path = write_sweep(workdir, sweep)
    marker = workdir / "killed"
    proc = cli("run", str(path), cwd=workdir, env={**os.environ, "RAYEXP_KILL_AT": f"analysis:policy_kl@{marker}"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=400)
        reader.join(timeout=30)
    finally:
        kill_group(proc)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert marker.exists() and "FAILED" in out, out  # the worker died once, in the second analysis
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    (run,) = trial_runs(uri, "analyses")
    assert run.info.status == "FINISHED" and run.data.tags["rayexp.resumed_after"] == "analysis:weight_diff"
    c = tracking.client(uri)
    # the first analysis was not run again (its stage time has one point), and every metric has one point
    assert len(c.get_metric_history(run.info.run_id, "time/analysis_weight_diff_s")) == 1
    for key in run.data.metrics:
        if key.startswith(("analysis/", "probe/", "ppo/")):
            assert len(c.get_metric_history(run.info.run_id, key)) == 1 or key.startswith("ppo/"), key
    assert "analysis/policy_kl/policy_kl" in run.data.metrics
    assert "analysis:policy_kl done (6/6)" in out  # one progress line per stage, by name


def test_trial_run_names_tell_trials_apart_in_their_first_20_characters():
    names = [
        tracking.trial_run_name(task, seed, "interleave(mess3(0.05,0.85),mess3(0.05,0.85))")
        for task in ("negative_control", "positive_control", "shuffled_null")
        for seed in range(5)
    ]
    assert names[8] == "positive_control s3 interleave(mess3(0.05,0.85),mess3(0.05,0.85))"
    assert len({n[:20] for n in names}) == len(names)


def test_a_verdict_table_lands_on_the_trial_runs_and_the_parent_description(workdir):
    """The hook an across-trial analysis's driver calls (tracking.annotate_from_table): tags and a
    description on each trial it judges (matched by the trial runs' process and task tags), the table
    on the parent; running it twice changes nothing."""
    uri = tracking.tracking_uri()
    exp = tracking.experiment_id(uri, "annotate")
    parent = tracking.start_parent_run(uri, exp, "sw", {}, {tracking.DESCRIPTION_TAG: "The sweep's own words."})
    for task, seed, process in [("positive_control", 0, "mess3"), ("positive_control", 1, "mess3"),
                                ("shuffled_null", 0, "mess3"), ("positive_control", 0, "rrxor")]:  # fmt: skip
        tags = {"rayexp.task": task, "rayexp.process": process, "rayexp.seed": str(seed)}  # as trial.py sets them
        name = tracking.trial_run_name(task, seed, process)
        tracking.TrialRun(uri, exp, parent, f"{process}-{task}-{seed}", name, {}, tags)
    rows = [
        {"process": "mess3", "task": "positive_control", "verdict": "composition", "score": 0.1234, "n_seeds": 2,
         "reason": "margin | CI above 0.5", "other": 7.0},
        {"process": "mess3", "task": "shuffled_null", "verdict": "inconclusive", "score": float("nan"), "n_seeds": 1,
         "reason": "1 seed(s) < 2"},
    ]  # fmt: skip
    columns = ["verdict", "score", "n_seeds", "reason"]
    for _ in range(2):
        assert tracking.annotate_from_table(uri, parent, "verdict", rows, columns) == 3  # rrxor: no row
    c = tracking.client(uri)
    runs = {r.data.tags[tracking.TRIAL_KEY_TAG]: r for r in trial_runs(uri, "annotate")}
    tags = runs["mess3-positive_control-1"].data.tags
    assert tags["rayexp.verdict"] == "composition" and tags["rayexp.verdict.score"] == "0.123"
    assert tags["rayexp.verdict.n_seeds"] == "2" and "rayexp.verdict.other" not in tags
    assert tags[tracking.DESCRIPTION_TAG] == (
        "**verdict: composition** (score 0.123, n_seeds 2, reason margin | CI above 0.5)\n"
    )
    assert runs["mess3-shuffled_null-0"].data.tags["rayexp.verdict.score"] == "nan"
    assert "rayexp.verdict" not in runs["rrxor-positive_control-0"].data.tags
    assert runs["mess3-positive_control-0"].info.run_name == "positive_control s0 mess3"
    text = c.get_run(parent).data.tags[tracking.DESCRIPTION_TAG]
    assert text.startswith("The sweep's own words.\n\n**verdict**\n\n| process | task | verdict | score |")
    assert text.count("**verdict**") == 1 and "margin \\| CI above 0.5" in text and "| mess3 | shuffled_null |" in text


def test_an_analysiss_arrays_come_back_exactly_and_none_where_it_kept_none(tmp_path):
    import numpy as np

    from rayexp.artifacts import TrialArtifacts

    t = TrialArtifacts(str(tmp_path), "sweep", "trial0")
    assert t.analysis_arrays("composition") is None  # an older trial, stored before any were kept
    r = np.random.default_rng(0).normal(size=(5, 4, 3))
    t.put_analysis_arrays("composition", {"residual_post": r, "action_tokens": np.array([4, 1, 2])})
    back = TrialArtifacts(str(tmp_path), "sweep", "trial0").analysis_arrays("composition")
    assert set(back) == {"residual_post", "action_tokens"} and back["action_tokens"].tolist() == [4, 1, 2]
    np.testing.assert_array_equal(back["residual_post"], r)  # float64 to the last bit: premises are checked to 1e-9
    assert t.analysis_arrays("policy_kl") is None
