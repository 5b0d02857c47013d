"""PPO post-training end to end through ``rayexp.ppo.train_ppo``: settings validation, the config
builder, the lr-0 weight round trip, and a measurable reward gain with 0 and 1 remote env runners."""

import numpy as np
import pytest
import ray
import torch
from pydantic import ValidationError

from envs import build_process
from models.checkpoint import load_checkpoint, save_checkpoint
from models.rl_module import TransformerPolicyModule
from models.transformer import Transformer, TransformerConfig
from rayexp.ppo import (
    ENV_NAME,
    PPOSettings,
    TransformerPPOLearner,
    build_ppo_config,
    train_ppo,
)

K = 10
PROCESS = {"name": "mixture", "components": [{"name": "mess3", "x": 0.05, "a": 0.85}, {"name": "rrxor"}]}
ENV = {"process": PROCESS, "context": K, "reward": "next_token"}
FAST = {"train_batch_size": 600, "minibatch_size": 300, "num_envs_per_env_runner": 20, "num_epochs": 4}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def brief_checkpoint(tmp_path_factory):
    """A model trained for a few steps only: better than chance, far from the Bayes-optimal policy.

    A bare loop rather than models.pretrain.pretrain, whose optimal-loss bookkeeping for the
    mixture costs more than this whole pretraining."""
    path = tmp_path_factory.mktemp("pre") / "pre.pt"
    save_checkpoint(path, bare_pretrain(PROCESS, d_vocab=5, steps=15))
    return path


def bare_pretrain(process_spec: dict, d_vocab: int, steps: int) -> Transformer:
    """A 2-layer d32 model after ``steps`` AdamW steps on 64 fresh sequences each (seeded)."""
    process = build_process(process_spec)
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=8, d_mlp=64, n_ctx=K, d_vocab=d_vocab)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        tokens = torch.as_tensor(process.sample(64, K + 1, rng)[0])  # (64, K+1)
        logits = model(tokens[:, :K])  # (64, K, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, d_vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def expected_next_token_reward(checkpoint, n: int = 4000) -> float:
    """E[reward] of the sampling policy: the mean probability it puts on the true next token
    (exact per context, averaged over held-out sequences; far less noisy than sampled returns)."""
    model, _ = load_checkpoint(checkpoint)
    tokens = torch.as_tensor(build_process(PROCESS).sample(n, K + 1, np.random.default_rng(123))[0])
    with torch.no_grad():
        p = torch.softmax(model(tokens[:, :K]), -1)  # (n, K, V)
    return p.gather(-1, tokens[:, 1:, None]).mean().item()


def test_settings_forbid_unknown_keys_and_default_to_gamma_0():
    assert PPOSettings().gamma == 0.0
    with pytest.raises(ValidationError):
        PPOSettings(num_sgd_iter=3)
    with pytest.raises(ValidationError):
        PPOSettings(gamma=1.5)


def test_build_ppo_config_wires_module_env_and_learner(brief_checkpoint, monkeypatch):
    from ray.rllib.algorithms import algorithm_config

    deprecated = []
    monkeypatch.setattr(algorithm_config, "deprecation_warning", lambda **kw: deprecated.append(kw["old"]))
    settings = PPOSettings(lr=1e-3, kl_to_pretrained=0.1, **FAST)
    config = build_ppo_config(settings, ENV, brief_checkpoint)
    # the current API: .learners(learner_config_dict=...), not .training(learner_config_dict=...)
    assert config.learner_config_dict == {"kl_to_pretrained": 0.1} and not deprecated, deprecated
    assert config.env == ENV_NAME and config.env_config == ENV
    assert config.gamma == 0.0 and config.lr == 1e-3 and config.minibatch_size == 300
    assert config.learner_class is TransformerPPOLearner
    spec = config.rl_module_spec
    assert spec.module_class is TransformerPolicyModule
    assert spec.model_config["checkpoint"] == str(brief_checkpoint) and spec.model_config["kl_to_pretrained"]
    assert build_ppo_config(settings, ENV, brief_checkpoint).to_dict() == config.to_dict()  # pure


def test_lr_0_round_trips_weights_bit_for_bit(ray_local, brief_checkpoint, tmp_path):
    settings = PPOSettings(lr=0.0, iterations=1, kl_to_pretrained=0.5, **FAST)
    res = train_ppo(settings, ENV, brief_checkpoint, tmp_path / "post.pt")
    post, extra = load_checkpoint(res.checkpoint_path)
    pre, _ = load_checkpoint(brief_checkpoint)
    assert extra["ppo_settings"]["lr"] == 0.0
    assert post.state_dict().keys() == pre.state_dict().keys()
    for name, w in pre.state_dict().items():
        assert torch.equal(post.state_dict()[name], w), name
    h = res.history[0]
    assert h["env_steps"] >= 600 and h["env_steps_per_s"] > 0
    assert {"approx_kl", "clip_fraction", "entropy", "vf_explained_var", "reward_per_step"} <= h.keys()
    assert h["kl_to_pretrained"] < 1e-6 and h["approx_kl"] < 1e-6  # the policy never moved


@pytest.mark.slow
@pytest.mark.parametrize("num_env_runners", [0, 1])
def test_ppo_raises_next_token_reward(ray_local, brief_checkpoint, tmp_path, num_env_runners):
    settings = PPOSettings(lr=2e-3, iterations=6, num_env_runners=num_env_runners, seed=num_env_runners, **FAST)
    res = train_ppo(settings, ENV, brief_checkpoint, tmp_path / "post.pt")
    before, after = expected_next_token_reward(brief_checkpoint), expected_next_token_reward(res.checkpoint_path)
    curve = [round(h["reward_per_step"], 3) for h in res.history]
    print(f"num_env_runners={num_env_runners}: expected reward {before:.3f} -> {after:.3f}; sampled {curve}")
    assert after > before + 0.03, (before, after, curve)
    assert all(np.isfinite(h["approx_kl"]) for h in res.history)


JOINT_ENV = {
    "process": {"name": "interleave", "factors": [{"name": "mess3", "x": 0.05, "a": 0.85}] * 2},
    "context": K,
    "reward": "joint_target",
}


def expected_env_reward(checkpoint, env_config: dict, n: int = 512) -> float:
    """Mean probability the policy puts on the rewarded action, over the steps of ``n`` fresh episodes."""
    from envs.gym_env import SequenceVectorEnv

    env = SequenceVectorEnv(n, env_config)
    obs, _ = env.reset(seed=5)
    model, _ = load_checkpoint(checkpoint)
    actions, pad = torch.as_tensor(env.action_tokens), model.cfg.d_vocab
    probs = []
    for _ in range(K):
        o = torch.as_tensor(obs)
        last = (o != pad).sum(-1) - 1
        with torch.no_grad():
            pi = torch.softmax(model(o.masked_fill(o == pad, 0))[torch.arange(n), last][:, actions], -1)  # (n, A)
        obs, _, _, _, info = env.step(np.zeros(n, dtype=np.int64))
        hit = actions[None] == torch.as_tensor(info["target"])[:, None]  # (n, A)
        probs.append((pi * hit).sum(-1).mean().item())
    return float(np.mean(probs))


@pytest.mark.slow
def test_ppo_raises_joint_target_reward_on_interleaved_stream(ray_local, tmp_path):
    """The target (next A token + next B token) mod 3 needs both factors' beliefs; the pretrained
    policy (A's next-token distribution) is at chance, and PPO must read the joint belief."""
    save_checkpoint(tmp_path / "pre.pt", bare_pretrain(JOINT_ENV["process"], d_vocab=6, steps=100))
    settings = PPOSettings(lr=3e-3, iterations=16, **FAST)
    res = train_ppo(settings, JOINT_ENV, tmp_path / "pre.pt", tmp_path / "post.pt")
    before, after = (
        expected_env_reward(tmp_path / "pre.pt", JOINT_ENV),
        expected_env_reward(res.checkpoint_path, JOINT_ENV),
    )
    curve = [round(h["reward_per_step"], 3) for h in res.history]
    print(f"joint_target: expected reward {before:.3f} -> {after:.3f}; sampled {curve}")
    assert after > before + 0.025, (before, after, curve)


def test_train_ppo_resumes_after_its_last_saved_iteration(ray_local, brief_checkpoint, tmp_path):
    """Killed (here: an exception) after iteration 2 was saved, a second call with the same state dir
    replays iterations 0-2 through the callback, then trains 3-4 from the saved algorithm state."""
    settings = PPOSettings(
        train_batch_size=60, minibatch_size=60, num_epochs=1, num_envs_per_env_runner=6, iterations=5, seed=3
    )
    state, seen, saved = tmp_path / "ppo_state", [], []
    state.mkdir()

    class Killed(Exception):
        pass

    def callback(metrics, it):
        seen.append((it, metrics["env_steps"]))
        if it == 2 and len(seen) == 3:
            raise Killed

    with pytest.raises(Killed):
        train_ppo(settings, ENV, brief_checkpoint, tmp_path / "a.pt", callback, state, saved.append)
    assert saved == [0, 1, 2] and sorted(p.name for p in state.iterdir()) == ["algo_000002", "progress.json"]
    first = list(seen)
    result = train_ppo(settings, ENV, brief_checkpoint, tmp_path / "a.pt", callback, state, saved.append)
    assert seen[3:6] == first  # the saved iterations, replayed
    assert [it for it, _ in seen[6:]] == [3, 4]
    assert [h["env_steps"] for h in result.history] == [60 * (i + 1) for i in range(5)]  # counts carried over
    assert saved == [0, 1, 2, 3]  # the last iteration is not saved: the exported model is the result
    assert load_checkpoint(tmp_path / "a.pt")[0] is not None


def test_policy_checkpoints_every_save_every_are_the_learners_weights(ray_local, brief_checkpoint, tmp_path):
    """Every ``save_every`` iterations the Learner's policy is handed over as a checkpoint; the one after
    two iterations equals the weights RLlib saved in its own algorithm state at that point."""
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

    settings = PPOSettings(
        train_batch_size=60,
        minibatch_size=60,
        num_epochs=1,
        num_envs_per_env_runner=6,
        iterations=3,
        seed=5,
        save_every=1,
    )
    state, policies = tmp_path / "state", {}
    state.mkdir()

    def keep(n, path):
        policies[n] = load_checkpoint(path)[0]

    train_ppo(settings, ENV, brief_checkpoint, tmp_path / "final.pt", None, state, None, keep)
    assert sorted(policies) == [1, 2]  # the third is the final model, written to out_path
    algo = build_ppo_config(settings, ENV, brief_checkpoint).build_algo()
    try:
        algo.restore_from_path(str(state / "algo_000001"))  # RLlib's own state after two iterations
        path = f"{COMPONENT_LEARNER_GROUP}/{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}"
        learner = algo.get_state(components=path)
        for key in (COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID):
            learner = learner[key]
    finally:
        algo.stop()
    trunk = {k.removeprefix("transformer."): v for k, v in learner.items() if k.startswith("transformer.")}
    mine = policies[2].state_dict()
    assert trunk.keys() == mine.keys()
    assert all(torch.equal(torch.as_tensor(trunk[k]), mine[k]) for k in mine)
    assert not all(torch.equal(policies[1].state_dict()[k], mine[k]) for k in mine)


def test_how_often_policies_are_saved_does_not_change_training(ray_local, brief_checkpoint, tmp_path):
    """Saving is storage, not training: a run that hands a policy over after every iteration (and saves
    RLlib's whole state for resuming) must train the same weights as one that saves nothing. Building the
    handed-over module initialises a fresh network, which draws from torch's global generator, the one the
    local env runner samples actions from; with that draw left in, every later iteration of a saving run
    differed (welfare's null, 2026-12-06)."""
    settings = PPOSettings(
        train_batch_size=60, minibatch_size=60, num_epochs=1, num_envs_per_env_runner=6, iterations=3, seed=5
    )
    saved, state = [], tmp_path / "state"
    state.mkdir()
    every = settings.model_copy(update={"save_every": 1, "checkpoint_every": 1})
    train_ppo(every, ENV, brief_checkpoint, tmp_path / "a.pt", None, state, None, lambda n, path: saved.append(n))
    train_ppo(settings.model_copy(update={"save_every": 0}), ENV, brief_checkpoint, tmp_path / "b.pt")
    assert saved == [1, 2] and (state / "progress.json").exists()
    a, b = (load_checkpoint(tmp_path / f"{x}.pt")[0].state_dict() for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
