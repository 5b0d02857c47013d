"""The sequence envs: gymnasium's checker, seeding, pickling, exact beliefs, a stream the actions
cannot steer, oracles that beat weaker policies, the vector form against single envs, the active
gated env, and clear errors for bad configs."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from streams import MESS3

from envs import build_process, from_matrices, gym_env
from envs.compose import gated
from envs.gym_env import ActiveGatedEnv, SequenceEnv, SequenceVectorEnv, make_env
from envs.processes import mess3, rrxor

RRXOR = {"name": "rrxor"}
INTERLEAVE = {"name": "interleave", "factors": [MESS3, RRXOR]}
MIXTURE = {"name": "mixture", "components": [MESS3, RRXOR]}
GATED = {"name": "gated", "a": MESS3, "b": RRXOR, "trigger": 0}
AND = {"name": "noisy_and", "eps": 0.1}
# A rare trigger: an i.i.d. source whose token 2 has probability 0.04 gates rrxor
RARE = gated(from_matrices([[[0.48]], [[0.48]], [[0.04]]], name="coin"), rrxor(), trigger=2)

CONFIGS = {
    "mess3_next": {"process": MESS3, "context": 8},
    "mixture_next": {"process": MIXTURE, "context": 6, "episode_len": 10},
    "interleave_joint": {"process": INTERLEAVE, "context": 6, "reward": "joint_target"},
    "and_implies": {"process": AND, "context": 9, "reward": "implies"},
    "punish": {
        "process": MESS3,
        "context": 4,
        "reward": "reward_punish",
        "reward_params": {"rewarded": [0], "punished": [1]},
    },
    "gated_rare": {"process": GATED, "context": 8, "reward": "rare_next_token"},
}


def rollout(env, seed, policy=lambda obs, info, t: 0, episodes=1):
    """(observations, rewards, infos) of whole episodes, with the reset info first."""
    out_obs, out_r, out_info = [], [], []
    obs, info = env.reset(seed=seed)
    for _ in range(episodes):
        if out_obs:
            obs, info = env.reset()
        out_obs.append(obs)
        out_info.append(info)
        done, t = False, 0
        while not done:
            obs, r, done, trunc, info = env.step(policy(obs, info, t))
            assert not trunc
            out_obs.append(obs)
            out_r.append(r)
            out_info.append(info)
            t += 1
    return np.array(out_obs), np.array(out_r), out_info


def stream_of(env, obs_list):
    """The tokens emitted in one episode, read back from its observations (last real token of each)."""
    pad = env.observation_space.high[0]
    return np.array([o[o != pad][-1] for o in obs_list])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_check_env(name):
    env = gym.make(gym_env.ENV_ID, config=CONFIGS[name])
    check_env(env.unwrapped, skip_render_check=True)


def test_check_env_active():
    check_env(gym.make(gym_env.ACTIVE_ENV_ID, config=CONFIGS["gated_rare"]).unwrapped, skip_render_check=True)


def test_observation_is_the_right_padded_prefix_then_a_sliding_window():
    env = SequenceEnv({"process": MESS3, "context": 4, "episode_len": 7})
    obs, _, _ = rollout(env, seed=3)
    x = stream_of(env, obs)
    assert obs.shape == (8, 4) and obs.dtype == np.int64
    np.testing.assert_array_equal(obs[0], [x[0], 3, 3, 3])  # step 0 sees token 0, padded with V = 3
    np.testing.assert_array_equal(obs[2], [x[0], x[1], x[2], 3])
    for t in range(3, 8):
        np.testing.assert_array_equal(obs[t], x[t - 3 : t + 1])


def test_default_episode_is_one_pretraining_sequence():
    env = SequenceEnv({"process": MESS3, "context": 5})
    obs, r, _ = rollout(env, seed=0)
    assert len(r) == 5  # episode_len defaults to K
    for t in range(5):  # until the end, observation t is the prefix x_0..x_t
        assert (obs[t][: t + 1] != 3).all() and (obs[t][t + 1 :] == 3).all()


def test_seeding_reproducible_and_config_seed():
    cfg = CONFIGS["interleave_joint"]
    a = rollout(SequenceEnv(cfg), seed=7, episodes=3)
    b = rollout(SequenceEnv(cfg), seed=7, episodes=3)
    c = rollout(SequenceEnv(cfg), seed=8, episodes=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    env = SequenceEnv(dict(cfg, seed=7))
    first, _ = env.reset()  # no seed given: the config's seed applies
    np.testing.assert_array_equal(first, a[0][0])


def test_pickle_round_trip_mid_episode():
    env = SequenceEnv(CONFIGS["interleave_joint"])
    env.reset(seed=1)
    env.step(0)
    clone = pickle.loads(pickle.dumps(env))
    for action in [1, 2, 0, 1]:
        o1, r1, d1, _, i1 = env.step(action)
        o2, r2, d2, _, i2 = clone.step(action)
        np.testing.assert_array_equal(o1, o2)
        assert (r1, d1, i1["target"]) == (r2, d2, i2["target"])
        np.testing.assert_array_equal(i1["belief"], i2["belief"])
    active = ActiveGatedEnv(CONFIGS["gated_rare"])
    active.reset(seed=2)
    clone = pickle.loads(pickle.dumps(active))
    for action in [0, 3, 1, 0]:
        assert np.array_equal(active.step(action)[0], clone.step(action)[0])


@pytest.mark.parametrize("name", ["mess3_next", "mixture_next", "interleave_joint", "gated_rare"])
def test_info_beliefs_are_exact(name):
    cfg = CONFIGS[name]
    env = SequenceEnv(cfg)
    hmm = build_process(cfg["process"])
    for seed in range(3):
        obs, _, infos = rollout(env, seed=seed)
        x = stream_of(env, obs)
        want = hmm.beliefs(x)  # (T+1, S)
        got = np.array([i["belief"] for i in infos])
        np.testing.assert_allclose(got, want, atol=1e-12)
        if hmm.factors:
            fb = hmm.factor_beliefs(want)
            for k, f in enumerate(fb):
                np.testing.assert_allclose([i["factor_beliefs"][str(k)] for i in infos], f, atol=1e-12)
        else:
            assert "factor_beliefs" not in infos[0]


def test_stream_ignores_actions():
    env = SequenceEnv(CONFIGS["interleave_joint"])
    rng = np.random.default_rng(0)
    a = rollout(env, seed=5, episodes=2)
    b = rollout(env, seed=5, policy=lambda o, i, t: int(rng.integers(3)), episodes=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert [i.get("target") for i in a[2]] == [i.get("target") for i in b[2]]


def test_next_token_oracle_beats_random():
    env = SequenceEnv({"process": MESS3, "context": 8, "episode_len": 60})  # few resets: cheap
    hmm = env.hmm
    oracle = rollout(env, 0, lambda o, i, t: int(np.argmax(hmm.next_token_probs(i["belief"]))), episodes=40)[1]
    rng = np.random.default_rng(0)
    rand = rollout(env, 0, lambda o, i, t: int(rng.integers(3)), episodes=40)[1]
    assert rand.mean() == pytest.approx(1 / 3, abs=0.04)
    assert oracle.mean() > rand.mean() + 0.2  # mess3(0.05, 0.85) is very predictable once synchronised


def test_shuffled_reward_carries_no_information_about_the_action():
    """The null task: the oracle that wins on the real reward scores only chance on the shuffled one,
    while the reward rate of a fixed action (its marginal) stays what it was."""
    cfg = {"process": MESS3, "context": 8, "episode_len": 60}
    oracle = lambda env: lambda o, i, t: int(np.argmax(env.hmm.next_token_probs(i["belief"])))
    real, null = SequenceEnv(cfg), SequenceEnv(dict(cfg, shuffle_reward=True))
    r_real = rollout(real, 0, oracle(real), episodes=40)[1].mean()
    r_null = rollout(null, 0, oracle(null), episodes=40)[1].mean()
    assert r_real > 0.55 and r_null == pytest.approx(1 / 3, abs=0.04), (r_real, r_null)
    always0 = [rollout(e, 1, lambda o, i, t: 0, episodes=40)[1].mean() for e in (real, null)]
    assert always0[0] == pytest.approx(always0[1], abs=0.04)


def test_joint_target_needs_the_joint_belief():
    env = SequenceEnv(dict(CONFIGS["interleave_joint"], episode_len=80))
    hmm, r = env.hmm, env.reward_fn
    marg = [f.next_token_probs(f.init) for f in hmm.factors]  # what a policy blind to a factor can assume
    stationary = [f.init for f in hmm.factors]

    def policy(use):
        def act(obs, info, t):
            fb = [info["factor_beliefs"][str(k)] if use[k] else stationary[k] for k in range(2)]
            return int(np.argmax(r.target_probs(fb)))

        return act

    assert np.allclose(marg[1], 0.5)  # rrxor alone says nothing about its next bit
    scores = {use: rollout(env, 0, policy(use), episodes=30)[1].mean() for use in [(1, 1), (1, 0), (0, 1)]}
    # same seed, so all three policies face the very same streams
    assert scores[(1, 1)] > max(scores[(1, 0)], scores[(0, 1)]) + 0.05, scores


def test_rewards_match_targets():
    env = SequenceEnv(CONFIGS["and_implies"])
    _, rewards, infos = rollout(env, 0, lambda o, i, t: 1, episodes=20)
    targets = np.array([i["target"] for i in infos if "target" in i])
    np.testing.assert_array_equal(rewards, (targets == env.action_tokens[1]).astype(float))
    assert (targets >= 0).mean() > 0.2  # about one step in three has an IMPLIES target


def sync_vs_vector(cfg, n, seed, steps, rng):
    sync = gym.vector.SyncVectorEnv([lambda: SequenceEnv(cfg) for _ in range(n)])
    vec = SequenceVectorEnv(n, cfg)
    o1, i1 = sync.reset(seed=seed)
    o2, i2 = vec.reset(seed=seed)
    results = [((o1, i1), (o2, i2))]
    for _ in range(steps):
        a = rng.integers(vec.single_action_space.n, size=n)
        results.append((sync.step(a), vec.step(a)))
    return results


def assert_same(x, y):
    if isinstance(x, dict):
        assert set(x) == set(y), (set(x), set(y))
        for k in x:
            mask = x.get(f"_{k}")
            if mask is not None and not k.startswith("_") and not isinstance(x[k], dict):
                np.testing.assert_array_equal(x[k][mask], y[k][mask])
            else:
                assert_same(x[k], y[k])
    elif isinstance(x, tuple):
        for a, b in zip(x, y):
            assert_same(a, b)
    else:
        np.testing.assert_array_equal(x, y)


def test_vector_env_matches_single_env_with_one_stream():
    cfg = CONFIGS["interleave_joint"]  # episodes of 6 steps: 20 steps cross three autoresets
    for a, b in sync_vs_vector(cfg, 1, 11, 20, np.random.default_rng(0)):
        assert_same(a, b)


def test_vector_env_matches_single_envs(monkeypatch):
    """Several streams: both sides draw the same sequences, in env order, so they must agree step by step."""
    cfg = dict(CONFIGS["mixture_next"], episode_len=4)
    hmm = build_process(cfg["process"])
    pool = hmm.sample_with_beliefs(64, 4 + 1, np.random.default_rng(0))
    cursor = {"single": 0, "vector": 0}

    def draw(hmm, n, length, rng):
        side = "single" if n == 1 else "vector"
        i = cursor[side]
        cursor[side] += n
        return tuple(p[i : i + n] for p in pool)

    monkeypatch.setattr(gym_env, "_draw", draw)
    results = sync_vs_vector(cfg, 5, 0, 12, np.random.default_rng(1))
    assert cursor == {"single": 15, "vector": 15}  # reset + two autoresets of 5 streams on each side
    for a, b in results:
        assert_same(a, b)
    terminated = np.array([b[2] for _, b in results[1:]])
    assert terminated[[3, 8]].all() and terminated.sum() == 10  # ends every 4 steps, then an autoreset step


def test_registered_and_make_vec_uses_the_numpy_vector_env():
    gym_env._register()  # a second registration is a no-op
    vec = gym.make_vec(gym_env.ENV_ID, num_envs=4, config=CONFIGS["mess3_next"])
    assert isinstance(vec, SequenceVectorEnv) and vec.observation_space.shape == (4, 8)
    _, info = vec.reset(seed=0)
    assert info["belief"].shape == (4, 3)
    assert isinstance(make_env(dict(CONFIGS["mess3_next"], num_envs=3)), SequenceVectorEnv)
    assert isinstance(make_env(CONFIGS["mess3_next"]), SequenceEnv)
    assert gym_env.action_tokens(CONFIGS["interleave_joint"]) == [0, 1, 2]  # joint_target: A's tokens
    assert gym_env.action_tokens(CONFIGS["and_implies"]) == [0, 1]
    assert gym_env.action_tokens(CONFIGS["mess3_next"]) == [0, 1, 2]


def test_active_env_without_seeking_is_the_passive_stream():
    cfg = dict(CONFIGS["gated_rare"], seed=4)
    env = ActiveGatedEnv(cfg)
    hmm = env.hmm
    for seed in range(3):
        obs, _, infos = rollout(env, seed, lambda o, i, t: 1)  # token 1 is never the trigger
        x = stream_of(env, obs)
        np.testing.assert_allclose([i["belief"] for i in infos], hmm.beliefs(x), atol=1e-12)
        assert not any(i.get("forced") for i in infos)


def test_active_env_seeking_summons_b_and_keeps_beliefs_calibrated():
    env = ActiveGatedEnv({"process": RARE, "context": 6, "reward": "rare_next_token"})
    b_tokens = set(env.hmm.meta["factor_tokens"][1])
    seen = {"passive": 0, "seek": 0}
    beliefs, states = [], []
    for mode in seen:
        for ep in range(400):
            obs, info = env.reset(seed=ep)
            done = False
            while not done:
                action = 2 if mode == "seek" else 0
                obs, _, done, _, info = env.step(action)
                seen[mode] += int(obs[obs != env.hmm.vocab_size][-1] in b_tokens)
                if mode == "seek":
                    beliefs.append(info["belief"])
                    states.append(env._state)
    assert seen["seek"] > 5 * seen["passive"], seen
    # exact under the intervention: on average, the belief equals the hidden state's frequency
    freq = np.bincount(states, minlength=env.hmm.n_states) / len(states)
    np.testing.assert_allclose(np.mean(beliefs, axis=0), freq, atol=0.025)


def test_active_env_pays_for_seeking_the_rare_factor():
    env = ActiveGatedEnv({"process": RARE, "context": 8})
    assert env.config.reward == "rare_next_token"  # the active env's default
    hmm = env.hmm

    def oracle(seek):
        def act(obs, info, t):
            p = hmm.next_token_probs(info["belief"])
            if p[3:].sum() > 0.5:  # B is due: predict its token
                return int(np.argmax(p))
            return 2 if seek else int(np.argmax(p))

        return act

    passive = rollout(env, 0, oracle(False), episodes=200)[1].sum()
    seeking = rollout(env, 0, oracle(True), episodes=200)[1].sum()
    assert seeking > 5 * passive + 50, (passive, seeking)


def test_active_shuffled_reward_pays_for_seeking_and_guessing_never_for_tracking_b():
    """The active env's null: actions are scored against a shadow stream the same actions steer. A
    seeker that tracks B earns on the real reward far more than a seeker that guesses B's token blind;
    on the shuffled one they earn the same, and seeking still pays (the shadow's B is summoned too)."""
    env_cfg = {"process": gated(RARE.factors[0], mess3(0.05, 0.85), trigger=2), "context": 8, "episode_len": 40}
    real, null = ActiveGatedEnv(env_cfg), ActiveGatedEnv(dict(env_cfg, shuffle_reward=True))
    b_first = 3  # B's tokens follow the coin's three

    def seeker(env, track):
        def act(obs, info, t):
            p = env.hmm.next_token_probs(info["belief"])
            if p[b_first:].sum() > 0.5:  # B is due: its most likely token, or always its first
                return int(np.argmax(p)) if track else b_first
            return 2

        return act

    def paid(env, policy, seed):
        return rollout(env, seed, policy, episodes=60)[1].mean()

    on_real = {track: paid(real, seeker(real, track), 0) for track in (True, False)}
    on_null = {track: paid(null, seeker(null, track), 0) for track in (True, False)}
    passive_null = paid(null, lambda o, i, t: 0, 0)
    assert on_real[True] > on_real[False] + 0.05, on_real  # tracking B pays on the real reward ...
    assert on_null[True] == pytest.approx(on_null[False], abs=0.03), on_null  # ... and not on the null
    assert on_null[False] == pytest.approx(on_real[False], abs=0.03), (on_null, on_real)  # a blind guess: same pay
    assert on_null[False] > 10 * passive_null + 0.1, (on_null, passive_null)  # seeking pays on both
    # shuffling changes the pay, never what the agent sees: same seed and actions, the same stream
    seek_blind = seeker(real, False)
    obs_real, r_real, _ = rollout(real, 3, seek_blind, episodes=5)
    obs_null, r_null, _ = rollout(null, 3, seek_blind, episodes=5)
    assert np.array_equal(obs_real, obs_null) and not np.array_equal(r_real, r_null)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"process": MESS3, "reward": "nope"}, "unknown reward 'nope'"),
        ({"process": MESS3, "action_tokens": [0, 5]}, "not in the vocabulary"),
        ({"process": MESS3, "context": 0}, "'context' .K. must be an int >= 1"),
        ({"process": MESS3, "context": 2.5}, "'context' .K. must be an int >= 1"),
        ({"process": MESS3, "episode_len": 0}, "'episode_len' must be an int >= 1"),
        ({"process": MESS3, "contxt": 4}, "unknown env config keys \\['contxt'\\]"),
        ({"context": 4}, "needs 'process'"),
        ({"process": {"name": "mess4"}}, "mess4"),
        ({"process": MESS3, "reward": "joint_target"}, "at least two factors"),
        ({"process": MIXTURE, "reward": "joint_target"}, "silent"),
        ({"process": MESS3, "reward": "implies"}, "noisy_and"),
        ({"process": MESS3, "reward_params": {"m": 3}}, "unknown params"),
        ({"process": MESS3, "reward": "reward_punish"}, "at least one token"),
    ],
)
def test_bad_configs_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        SequenceEnv(cfg)


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"process": MESS3}, "needs a gated process"),
        ({"process": GATED, "action_tokens": [1, 2, 3]}, "trigger token 0 is not in action_tokens"),
        ({"process": GATED, "reward": "joint_target"}, "silent"),
        ({"process": dict(GATED, b=AND), "reward": "implies"}, "looks beyond the next token"),
    ],
)
def test_bad_active_configs_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        ActiveGatedEnv(cfg)


def test_bad_actions_and_vector_sizes_raise():
    env = SequenceEnv(CONFIGS["mess3_next"])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must lie"):
        env.step(3)
    with pytest.raises(ValueError, match="num_envs"):
        SequenceVectorEnv(0, CONFIGS["mess3_next"])
    vec = SequenceVectorEnv(2, CONFIGS["mess3_next"])
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="actions must lie"):
        vec.step(np.array([0, 7]))
