"""The LLC analysis on trials (tiny transformers): its task-independent loss, the same estimate for the
same weights in trials of different tasks, the analysis end to end, and the setting the sweep file
states. The estimator's known answers are tests/test_llc.py."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rayexp.studies.development import losses
from rayexp.studies.development.llc import STUDY_SGLD

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add overhead


# ---------------------------------------------------------------------------------------------
# the loss and the adapter, on tiny transformers

STREAM = {"name": "interleave", "factors": [{"name": "mess3", "x": 0.05, "a": 0.85}] * 2}
TASKS = {  # the quickstart's negative and positive controls: different rewards and action sets
    "negative": {"reward": "next_token", "action_tokens": [0, 1, 2, 3, 4, 5]},
    "positive": {"reward": "joint_target", "action_tokens": [0, 1, 2]},
}


def _tiny(seed=0):
    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=16, n_ctx=6, d_vocab=6)
    return Transformer(cfg, seed=seed).eval()


def _pretrained():
    """A tiny model trained briefly on the stream, with checkpoints (the same for every task)."""
    import copy

    from envs import build_process

    process = build_process(STREAM)
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    tokens = torch.as_tensor(process.sample(64, 7, np.random.default_rng(0))[0])
    ckpts = {}
    for step in range(41):
        if step in (0, 5, 15, 40):
            ckpts[step] = copy.deepcopy(model).eval()
        opt.zero_grad()
        losses.next_token_loss(model, tokens).backward()
        opt.step()
    return process, ckpts


class FakeTrial:
    """What the llc analysis reads from rayexp.artifacts.TrialArtifacts, held in memory."""

    def __init__(self, task: str, pretrained, policy_seed: int, steps=(0, 5, 15, 40), iterations=(1, 2)):
        self._process, ckpts = pretrained
        self._ckpts = {s: ckpts[s] for s in steps}
        self.env_config = {"process": STREAM, "context": 6, "episode_len": 6, "reward_params": {}, "seed": 0}
        self.env_config.update(TASKS[task])
        self._policies = {}
        for it in iterations:  # stand-ins for PPO: the policies move with the iteration and differ between trials
            scale = 0.3 * it
            m = _tiny()
            m.load_state_dict(self._ckpts[40].state_dict())
            with torch.no_grad():
                shift = torch.randn(6, generator=torch.Generator().manual_seed(policy_seed))
                m.unembed_proj.bias.add_(scale * shift)
            self._policies[it] = m.eval()

    def __repr__(self):
        return "FakeTrial()"

    def process(self):
        return self._process

    def pretrain_steps(self):
        return sorted(self._ckpts)

    def pretrain_checkpoint(self, step):
        return self._ckpts[step]

    def ppo_iterations(self):
        return sorted(self._policies)

    def policy(self, it):
        return self._ckpts[40] if it == 0 else self._policies[it]


SMALL = {"num_burnin": 100, "num_draws": 200, "n_seq": 64, "batch_size": 16, "reward_episodes": 4}


def _run(trial, **changes):
    from rayexp.registry import validate_params
    from rayexp.studies.development.llc_analysis import llc

    return llc(trial, validate_params("llc", {**SMALL, **changes}))


def test_self_kl_is_zero_at_the_reference_and_ignores_the_task():
    from envs import build_process

    model, other = _tiny(0), _tiny(1)
    tokens = losses.stream_batches(build_process(STREAM), 32, 6, 16, seed=0)
    own = losses.self_kl_batches(model, tokens)
    with torch.no_grad():
        assert all(abs(float(losses.self_kl(model, b))) < 1e-6 for b in own)
        assert all(float(losses.self_kl(other, b)) > 0 for b in own)
        x = tokens[0]  # the KL is the full next-token distribution's, at every position
        p, q = torch.softmax(model(x).double(), -1), torch.softmax(other(x).double(), -1)
        want = float((p * (p.log() - q.log())).sum(-1).mean())
        assert float(losses.self_kl(other, own[0])) == pytest.approx(want, rel=1e-4)


def test_same_weights_give_the_same_llc_in_trials_of_different_tasks():
    pretrained = _pretrained()
    only = {"steps": (40,), "iterations": (1,)}  # the final pretraining checkpoint = iteration 0, and one policy
    neg, pos = FakeTrial("negative", pretrained, 1, **only), FakeTrial("positive", pretrained, 2, **only)
    a, b = _run(neg), _run(pos)
    ra, rb = a.tables["llc_rl"].to_pydict(), b.tables["llc_rl"].to_pydict()
    # iteration 0 is the shared pretrained model: the same estimate whichever trial computes it
    assert ra["llc_mean"][0] == rb["llc_mean"][0] and ra["llc_std"][0] == rb["llc_std"][0]
    assert a.metrics["pretrain/final"] == b.metrics["pretrain/final"]
    # and it is the final pretraining checkpoint's (estimated once)
    assert ra["llc_mean"][0] == a.tables["llc_pretrain"].to_pydict()["llc_mean"][-1]
    # another chain seed: the same weights agree within the chains' spread
    c = _run(pos, seed=7).tables["llc_rl"].to_pydict()
    se = math.hypot(ra["llc_std"][0], c["llc_std"][0]) / math.sqrt(4)
    assert abs(ra["llc_mean"][0] - c["llc_mean"][0]) < 3 * se
    assert ra["llc_mean"][1] != rb["llc_mean"][1]  # different policies, different weights, different values


def test_llc_analysis_end_to_end_on_tiny_models():
    result = _run(FakeTrial("negative", _pretrained(), 1))
    m = result.metrics
    for key in ("pretrain/final", "rl/final", "pretrain/final_rhat", "rl/final_rhat", "seconds_per_estimate"):
        assert np.isfinite(m[key]), key
    assert m["sgld/lr"] == STUDY_SGLD.lr and m["sgld/nbeta"] == STUDY_SGLD.nbeta and m["sgld/num_chains"] == 4
    assert m["sgld/num_burnin"] == 100 and m["sgld/num_draws"] == 200
    for phase in ("pretrain", "rl"):
        assert m[f"{phase}/final_settled"] in (0.0, 1.0) and m[f"{phase}/final_healthy"] in (0.0, 1.0)
    pre = result.tables["llc_pretrain"].to_pydict()
    assert pre["step"] == [0, 5, 15, 40] and pre["loss"][0] > pre["loss"][-1]
    assert {"rhat", "settled", "diverged", "below_init", "healthy"} <= set(pre)
    assert m["pretrain/unsettled"] == sum(not s for s in pre["settled"])
    assert m["pretrain/unhealthy"] == sum(not h for h in pre["healthy"]) >= m["pretrain/unsettled"]
    rl = result.tables["llc_rl"].to_pydict()
    assert rl["iteration"] == [0, 1, 2] and all(np.isfinite(rl["reward"]))
    assert not any(pre["below_init"] + rl["below_init"])  # every checkpoint is the minimum of its self-KL
    chains = result.tables["llc_chains"]
    assert chains.num_rows == 4 * 200 * (4 + 3)  # chains x draws x checkpoints (a reused estimate logged again)
    assert result.tables["llc_transitions"].column_names == ["phase", "curve", "checkpoint"]
    # 4 pretraining steps, 3 PPO checkpoints: too few to test, so no count of 0 transitions
    for key in ("pretrain/transitions_llc", "pretrain/transitions_loss", "rl/transitions_llc", "rl/transitions_reward"):
        assert math.isnan(m[key]) and m[f"{key}_tested"] == 0.0, key
    assert set(result.figures) == {"llc_over_training"}


def test_a_curve_with_too_few_healthy_estimates_is_not_tested():
    from rayexp.studies.development.llc_analysis import transition_metrics
    from rayexp.studies.development.transitions import phase_tested, phase_transitions

    def rows(healthy):  # PPO iterations 0-40 with a flat reward: no transition where tested
        return [{"checkpoint": 5 * i, "llc_mean": 100.0 + i, "healthy": i < healthy, "reward": 0.5} for i in range(9)]

    # the negative control's first draw: 4 healthy estimates of 9, below the rule's 5
    phases = {"rl": rows(4)}
    m = transition_metrics(phase_transitions(phases), phase_tested(phases))
    assert math.isnan(m["rl/transitions_llc"]) and m["rl/transitions_llc_tested"] == 0.0
    assert m["rl/transitions_reward"] == 0.0 and m["rl/transitions_reward_tested"] == 1.0
    phases = {"rl": rows(5)}
    m = transition_metrics(phase_transitions(phases), phase_tested(phases))
    assert m["rl/transitions_llc"] == 0.0 and m["rl/transitions_llc_tested"] == 1.0


def test_params_validate_and_default_to_the_study_setting():
    from pydantic import ValidationError

    from rayexp.registry import validate_params

    params = validate_params("llc", {})
    assert params.sgld() == STUDY_SGLD
    for bad in ({"num_chain": 4}, {"num_chains": 2}, {"num_burnin": 0}, {"lrs": [1e-5]}, {"rl_loss": "action_nll"}):
        with pytest.raises(ValidationError):
            validate_params("llc", bad)
    code = (
        "import sys, rayexp.registry as a; assert 'llc' in a.ANALYSES; "
        "assert not {'torch', 'devinterp'} & set(sys.modules), 'torch or devinterp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_sweep_file_states_the_tested_setting():
    from rayexp.registry import validate_params

    sweep = yaml.safe_load((ROOT / "sweeps" / "development.yaml").read_text())
    (entry,) = [a for a in sweep["base"]["analyses"] if isinstance(a, dict) and a.get("name") == "llc"]
    assert validate_params("llc", entry.get("params", {})).sgld() == STUDY_SGLD


def test_rl_only_arm_skips_pretraining_and_gets_the_same_estimates():
    """``pretraining: false`` (sweeps/development_null.yaml): no pretraining estimates, and the RL
    checkpoints' estimates are those of the full analysis (iteration 0 = the shared pretrained model)."""
    trial = FakeTrial("positive", _pretrained(), 2, steps=(0, 40), iterations=(1, 2))
    full, rl_only = _run(trial), _run(trial, pretraining=False)
    assert "llc_pretrain" not in rl_only.tables and "llc_pretrain" in full.tables
    assert not any(k.startswith("pretrain/") for k in rl_only.metrics)
    assert rl_only.tables["llc_rl"].to_pydict()["llc_mean"] == full.tables["llc_rl"].to_pydict()["llc_mean"]
    m = rl_only.metrics
    rl_keys = {k for k in full.metrics if k.startswith("rl/")}
    assert rl_keys == {k for k in m if k.startswith("rl/")} >= {"rl/start", "rl/last", "rl/growth", "rl/healthy"}
    assert all(m[k] == full.metrics[k] or (np.isnan(m[k]) and np.isnan(full.metrics[k])) for k in rl_keys)
    assert m["rl/start"] == full.tables["llc_rl"].to_pydict()["llc_mean"][0] and m["rl/estimates"] == 2
    assert set(rl_only.figures) == {"llc_over_training"}
