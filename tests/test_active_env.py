"""Env kinds for sweeps: make_env / action_tokens dispatch on a config's ``env`` key, and the active
gated env's vector form under gymnasium's vector API (RLlib's vector_entry_point path): shapes,
next-step autoreset, deterministic seeding, pickling, and clear errors."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers.vector import DictInfoToList

from envs import gym_env
from envs.env_config import EnvConfig
from envs.gym_env import (
    ENV_KINDS,
    ActiveGatedEnv,
    ActiveGatedVectorEnv,
    SequenceEnv,
    SequenceVectorEnv,
    action_tokens,
    make_env,
)

GATED = {"name": "gated", "a": {"name": "mess3", "x": 0.05, "a": 0.85}, "b": {"name": "rrxor"}, "trigger": 0}
ACTIVE = {"env": "active_gated", "process": GATED, "context": 6, "episode_len": 5}


def vector_rollout(env, steps, seed=None, actions_seed=0):
    """(obs (steps+1, n, K), rewards (steps, n), terminated (steps, n)) under fixed random actions."""
    rng = np.random.default_rng(actions_seed)
    obs, _ = env.reset(seed=seed)
    out_obs, out_r, out_term = [obs], [], []
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(rng.integers(0, env.single_action_space.n, env.num_envs))
        assert not trunc.any()
        out_obs.append(obs)
        out_r.append(r)
        out_term.append(term)
    return np.array(out_obs), np.array(out_r), np.array(out_term)


def test_env_kinds_are_the_ones_make_env_builds():
    assert ENV_KINDS == ("sequence", "active_gated", "outcome") and tuple(gym_env._ENVS) == ENV_KINDS
    assert isinstance(make_env(dict(ACTIVE, env="sequence")), SequenceEnv)
    assert isinstance(make_env(dict(ACTIVE, env="sequence", num_envs=2)), SequenceVectorEnv)
    assert isinstance(make_env(ACTIVE), ActiveGatedEnv)
    assert isinstance(make_env(dict(ACTIVE, num_envs=2)), ActiveGatedVectorEnv)
    assert EnvConfig.from_dict({"process": GATED}).env == "sequence"  # the default


def test_active_vector_env_steps_under_the_vector_api():
    env = make_env(dict(ACTIVE, num_envs=4, seed=3))
    assert isinstance(env, gym.vector.VectorEnv) and env.num_envs == 4
    assert env.metadata["autoreset_mode"] == SequenceVectorEnv.metadata["autoreset_mode"]
    assert env.observation_space.shape == (4, 6) and env.single_action_space.n == env.hmm.vocab_size
    obs, info = env.reset()
    assert obs.shape == (4, 6) and obs.dtype == np.int64 and info["belief"].shape == (4, env.hmm.n_states)
    assert set(info["factor_beliefs"]) >= {"0", "1"}
    obs, rewards, terminated = vector_rollout(env, 12)
    assert obs.shape == (13, 4, 6) and rewards.shape == terminated.shape == (12, 4)
    assert (obs <= env.hmm.vocab_size).all() and (obs >= 0).all()
    # episodes of 5 steps, then one next-step autoreset step that pays 0
    np.testing.assert_array_equal(terminated.any(axis=1), [False] * 4 + [True] + [False] * 5 + [True, False])
    assert (rewards[5] == 0).all()
    assert not (obs[1:, 0] == obs[1:, 1]).all()  # the copies run different streams


def test_active_vector_env_is_seeded_from_the_config():
    a = vector_rollout(make_env(dict(ACTIVE, num_envs=3, seed=11)), 15)
    b = vector_rollout(make_env(dict(ACTIVE, num_envs=3, seed=11)), 15)
    c = vector_rollout(make_env(dict(ACTIVE, num_envs=3, seed=12)), 15)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # an explicit reset seed (what RLlib passes) also reproduces, whatever the config seed
    d = vector_rollout(make_env(dict(ACTIVE, num_envs=3)), 15, seed=5)
    e = vector_rollout(make_env(dict(ACTIVE, num_envs=3, seed=99)), 15, seed=5)
    np.testing.assert_array_equal(d[0], e[0])


def test_copies_of_several_env_runners_never_replay_each_other():
    """RLlib resets runner w's vector env with seed + w. Gymnasium's offsets (copy i from s + i) then
    make runner 1's copy i+1 replay runner 2's copy i; ``copy_seeds: spawn`` (what rayexp.ppo sets when
    it asks for env runners) gives every copy of every runner its own stream."""

    def streams(copy_seeds):
        out = []
        for w in (1, 2):
            env = make_env(dict(ACTIVE, num_envs=3, copy_seeds=copy_seeds))
            obs = [env.reset(seed=40 + w)[0]]
            for a in np.random.default_rng(0).integers(0, env.single_action_space.n, 15):
                obs.append(env.step(np.full(3, a))[0])  # every copy takes the same actions
            out += [np.array(obs)[:, i] for i in range(3)]  # (16, K) observations of each copy
        return out

    def replays(obs):
        return sum(np.array_equal(a, b) for i, a in enumerate(obs) for b in obs[i + 1 :])

    assert replays(streams("offset")) == 2  # runner 1's copies 1, 2 are runner 2's copies 0, 1
    assert replays(streams("spawn")) == 0
    with pytest.raises(ValueError, match="copy_seeds"):
        EnvConfig.from_dict({"process": GATED, "copy_seeds": "random"})


def test_active_vector_env_pickles_mid_rollout():
    env = make_env(dict(ACTIVE, num_envs=2))
    env.reset(seed=1)
    env.step(np.array([0, 1]))
    clone = pickle.loads(pickle.dumps(env))
    for actions in ([0, 0], [1, 0], [2, 3], [0, 4], [1, 1], [0, 0]):
        o1, r1, t1, _, i1 = env.step(np.array(actions))
        o2, r2, t2, _, i2 = clone.step(np.array(actions))
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(i1["belief"], i2["belief"])


def test_shuffled_active_vector_env_sees_the_task_streams_pays_otherwise_and_pickles():
    """The null under the vector API (what RLlib steps): same seed and actions, the same observations
    as the task's env across autoresets, other rewards; mid-rollout pickles carry the shadow stream."""
    cfg = dict(ACTIVE, process=dict(GATED, b={"name": "mess3"}), num_envs=3, seed=7, reward="rare_next_token")
    task, null = vector_rollout(make_env(cfg), 20), vector_rollout(make_env(dict(cfg, shuffle_reward=True)), 20)
    np.testing.assert_array_equal(task[0], null[0])
    np.testing.assert_array_equal(task[2], null[2])
    assert not np.array_equal(task[1], null[1])
    env = make_env(dict(cfg, shuffle_reward=True))
    env.reset(seed=1)
    env.step(np.array([0, 0, 1]))
    clone = pickle.loads(pickle.dumps(env))
    for actions in ([0, 0, 0], [1, 0, 2], [0, 0, 0], [3, 4, 0]) * 3:  # across an autoreset
        _, r1, _, _, _ = env.step(np.array(actions))
        _, r2, _, _, _ = clone.step(np.array(actions))
        np.testing.assert_array_equal(r1, r2)


def test_rllib_vector_entry_point_path():
    """What RLlib's env runner does with a registered creator: gym.make_vec in vector_entry_point
    mode, the creator called with num_envs, infos turned into per-env lists."""
    gym.register(
        "test-active-kinds-v0",
        entry_point=lambda: make_env(ACTIVE),
        vector_entry_point=lambda num_envs: make_env(dict(ACTIVE, num_envs=num_envs)),
    )
    try:
        env = DictInfoToList(gym.make_vec("test-active-kinds-v0", num_envs=3, vectorization_mode="vector_entry_point"))
        obs, infos = env.reset(seed=0)
        assert obs.shape == (3, 6) and len(infos) == 3 and "belief" in infos[0]
        for _ in range(7):
            obs, _, _, _, infos = env.step(env.action_space.sample())
        assert len(infos) == 3
    finally:
        gym.registry.pop("test-active-kinds-v0")
    vec = gym.make_vec(gym_env.ACTIVE_ENV_ID, num_envs=2, config=ACTIVE)
    assert isinstance(vec, ActiveGatedVectorEnv)


def test_action_tokens_follow_the_env_kind():
    env = ActiveGatedEnv(ACTIVE)
    assert env.config.reward == "rare_next_token"  # the active env's default reward decides the default actions
    assert action_tokens(ACTIVE) == env.action_tokens.tolist() == list(range(env.hmm.vocab_size))
    assert action_tokens(dict(ACTIVE, action_tokens=[0, 3, 4])) == [0, 3, 4]
    # one config, two kinds: the passive stream can score IMPLIES of the gated AND (its bits 3, 4),
    # the active env cannot (the agent steers the stream, so only next-token rewards are allowed)
    gate_and = dict(ACTIVE, process=dict(GATED, b={"name": "noisy_and"}), reward="implies")
    assert action_tokens(dict(gate_and, env="sequence")) == [3, 4]
    with pytest.raises(ValueError, match="looks beyond the next token"):
        action_tokens(gate_and)


def test_single_active_env_passes_the_checker():
    check_env(make_env(ACTIVE), skip_render_check=True)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: make_env(dict(ACTIVE, env="passive")),
            r"'env' must be one of \['sequence', 'active_gated', 'outcome'\]",
        ),
        (
            lambda: make_env(dict(ACTIVE, env="passive", num_envs=2)),
            r"one of \['sequence', 'active_gated', 'outcome'\]",
        ),
        (lambda: action_tokens(dict(ACTIVE, env="nope")), r"one of \['sequence', 'active_gated', 'outcome'\]"),
        (lambda: EnvConfig.from_dict(dict(ACTIVE, env="nope")), r"one of \['sequence', 'active_gated', 'outcome'\]"),
        (lambda: SequenceEnv(ACTIVE), "SequenceEnv runs env 'sequence'; got env='active_gated'"),
        (lambda: SequenceVectorEnv(2, ACTIVE), "SequenceEnv runs env 'sequence'"),
        (lambda: ActiveGatedEnv(dict(ACTIVE, env="sequence")), "ActiveGatedEnv runs env 'active_gated'"),
        (lambda: make_env(dict(ACTIVE, num_envs=0)), "num_envs must be an int >= 1"),
        (lambda: make_env(dict(ACTIVE, process={"name": "mess3"}, num_envs=2)), "needs a gated process"),
    ],
)
def test_bad_env_kinds_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
