"""The outcome process and env (note 004): the process's matrices against its rule and brute-force
Bayes, outcome_probs against sampled outcome frequencies, the env under gymnasium's checker and
vector API, policies that read the belief against ones that do not, and clear errors."""

import itertools
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers.vector import DictInfoToList
from process_bruteforce import brute_beliefs, brute_prob
from streams import MESS3

from envs import build_process, from_matrices, gym_env
from envs.gym_env import OutcomeEnv, OutcomeVectorEnv, SequenceEnv, action_tokens, make_env
from envs.outcome import NEUTRAL, PUNISHED, REWARDED, OutcomeTokens, decision_belief, outcome_probs, outcome_rule
from envs.processes import build, outcome
from envs.rewards import make_reward

OUTCOME = {"name": "outcome", "base": MESS3}
ENV = {"env": "outcome", "process": OUTCOME, "context": 16, "episode_len": 5}


@pytest.fixture(scope="module")
def hmm():
    return build_process(OUTCOME)


def test_layout_and_rule_are_in_the_matrices(hmm):
    lay = OutcomeTokens.of(hmm)
    S, V = 3, 3
    assert (lay.n_base_states, lay.n_base_tokens) == (S, V)
    assert (hmm.vocab_size, hmm.n_states) == (V + S + 3, 2 * S + S * S)
    assert lay.action_tokens.tolist() == [3, 4, 5] and lay.outcome_tokens.tolist() == [6, 7, 8]
    assert lay.decision_states.tolist() == [3, 4, 5]
    assert hmm.token_names[3:] == ("act0", "act1", "act2", "rewarded", "punished", "neutral")
    base = build_process(MESS3)
    np.testing.assert_array_equal(hmm.init[:S], base.init)
    assert hmm.init[S:].sum() == 0
    np.testing.assert_array_equal(hmm.T[:V, :S, S : 2 * S], base.T)
    for s, a in itertools.product(range(S), range(S)):
        o = int(lay.outcome_state(s, a))
        assert hmm.T[V + a, S + s, o] == pytest.approx(1 / S)
        want = {s: REWARDED, (s + 1) % S: PUNISHED}.get(a, NEUTRAL)
        assert outcome_rule(s, a, S) == want
        assert hmm.T[:, o, :].sum() == 1.0 and hmm.T[lay.outcome_tokens[want], o, s] == 1.0
    # registered: rebuilds from its own params; the default base is mess3
    assert hmm.family == "outcome" and hmm.params == {"base": MESS3}
    np.testing.assert_array_equal(build_process({"name": "outcome", **hmm.params}).T, hmm.T)
    assert build("outcome").params == {"base": {"name": "mess3"}}
    assert outcome(base).name == hmm.name == "outcome(mess3(x=0.05, a=0.85))"


def possible(hmm, length):
    """Every token sequence of ``length`` with positive probability, by brute-force path sums."""
    seqs = [()]
    for _ in range(length):
        seqs = [q + (x,) for q in seqs for x in range(hmm.vocab_size) if brute_prob(hmm.T, hmm.init, q + (x,)) > 0]
    return seqs


@pytest.mark.parametrize("base", [MESS3, {"name": "rrxor"}, {"name": "z1r"}])
def test_beliefs_equal_brute_force(base):
    hmm = build_process({"name": "outcome", "base": base})
    seqs = possible(hmm, 5)
    assert len(seqs) > 10
    sampled, _, _ = hmm.sample_with_beliefs(20, 10, np.random.default_rng(0))
    for seq in [*seqs, *sampled.tolist()]:
        np.testing.assert_allclose(hmm.beliefs(np.array(seq)), brute_beliefs(hmm.T, hmm.init, seq), atol=1e-12)


def test_an_outcome_tells_what_it_should(hmm):
    lay = OutcomeTokens.of(hmm)
    for a in range(3):
        rewarded = hmm.beliefs(np.array([0, lay.action_tokens[a], lay.outcome_tokens[REWARDED]]))[-1]
        np.testing.assert_allclose(rewarded, np.eye(hmm.n_states)[a], atol=1e-12)  # phase x, base state a
        punished = hmm.beliefs(np.array([0, lay.action_tokens[a], lay.outcome_tokens[PUNISHED]]))[-1]
        np.testing.assert_allclose(punished, np.eye(hmm.n_states)[(a - 1) % 3], atol=1e-12)


def test_outcome_probs_match_sampled_outcome_frequencies(hmm):
    """Outcome counts per (action, bin of the decision belief) against the sums of outcome_probs."""
    lay, rounds = OutcomeTokens.of(hmm), 4
    tokens, states, beliefs = hmm.sample_with_beliefs(12_000, 1 + 3 * rounds, np.random.default_rng(1))
    pos = 3 * np.arange(rounds)  # the base tokens after which the process is at a decision point
    b = beliefs[:, pos].reshape(-1, hmm.n_states)  # (n, N)
    a = (tokens[:, pos + 1] - lay.action_tokens[0]).ravel()  # (n,)
    k = lay.outcome_index(tokens[:, pos + 2]).ravel()  # (n,)
    # the outcome is the rule applied to the sampled hidden state, exactly
    s = (states[:, pos + 1] - lay.decision_states[0]).ravel()
    np.testing.assert_array_equal(k, outcome_rule(s, a, 3))
    p = outcome_probs(hmm, b)[np.arange(len(a)), a]  # (n, 3)
    assert p.shape == (len(a), 3) and np.allclose(p.sum(-1), 1.0)
    guess = np.argmax(decision_belief(hmm, b), axis=-1)
    sure = decision_belief(hmm, b).max(axis=-1) > 0.9
    checked = 0
    for act, g, confident in itertools.product(range(3), range(3), (False, True)):
        rows = (a == act) & (guess == g) & (sure == confident)
        if rows.sum() < 200:
            continue
        observed = np.bincount(k[rows], minlength=3)  # (3,)
        expected = p[rows].sum(axis=0)  # (3,)
        sd = np.sqrt((p[rows] * (1 - p[rows])).sum(axis=0)) + 1.0
        assert (np.abs(observed - expected) < 5 * sd).all(), (act, g, confident, observed, expected)
        checked += 1
    assert checked >= 12
    # a wrong rule would show: the punish probability of "name the next state" is far from that of "name it"
    assert p[a == (guess + 1) % 3, PUNISHED].mean() > 0.7 > p[a == guess, PUNISHED].mean()


def rollout(env, policy, episodes, seed):
    """(rewards (episodes, T), outcomes, punish_probs, chosen-action expected rewards) under ``policy``;
    checks every info["belief"] against the HMM's own filter on the tokens the episode emitted."""
    hmm, lay = env.hmm, OutcomeTokens.of(env.hmm)
    out = {"r": [], "k": [], "pp": [], "er": []}
    for e in range(episodes):
        obs, info = env.reset(seed=seed if e == 0 else None)
        infos = [info]
        done = False
        while not done:
            a = policy(info)
            p = outcome_probs(hmm, info["belief"])[a]  # (3,)
            obs, r, done, trunc, info = env.step(a)
            assert not trunc and obs[obs < lay.vocab_size][-1] in lay.base_tokens  # ends on a base token
            np.testing.assert_allclose(info["punish_prob"], p[PUNISHED], atol=1e-12)
            infos.append(info)
            out["r"].append(r), out["k"].append(info["outcome"]), out["pp"].append(p[PUNISHED])
            out["er"].append(p[REWARDED] - p[PUNISHED])
        # the window holds the whole episode: 1 + 3 * 5 = 16 tokens
        assert (obs < hmm.vocab_size).all()
        want = hmm.beliefs(obs)[::3]  # (T + 1, N): after the first token and after each step's base token
        np.testing.assert_allclose(np.array([i["belief"] for i in infos]), want, atol=1e-12)
        assert np.isin(obs[1::3], lay.action_tokens).all() and np.isin(obs[2::3], lay.outcome_tokens).all()
    return {key: np.array(v) for key, v in out.items()}


def test_reading_the_belief_pays_and_naming_the_next_state_is_punished():
    env = OutcomeEnv(ENV)
    hmm = env.hmm
    rng = np.random.default_rng(0)

    def best(info):
        return int(np.argmax(decision_belief(hmm, info["belief"])))

    runs = {
        "oracle": rollout(env, best, 150, seed=0),
        "uniform": rollout(env, lambda i: int(rng.integers(3)), 150, seed=0),
        "next_state": rollout(env, lambda i: (best(i) + 1) % 3, 150, seed=0),
    }
    for name, run in runs.items():
        # rewards are +1 / -1 / 0 for the outcome reported, and their mean is the exact expectation
        np.testing.assert_array_equal(run["r"], np.array([1.0, -1.0, 0.0])[run["k"]])
        n = len(run["r"])
        assert abs(run["r"].mean() - run["er"].mean()) < 5 / np.sqrt(n), name
        assert abs((run["k"] == PUNISHED).mean() - run["pp"].mean()) < 5 / np.sqrt(n), name
    assert runs["oracle"]["r"].mean() > 0.7
    assert abs(runs["uniform"]["r"].mean()) < 0.12
    assert runs["next_state"]["r"].mean() < -0.7
    assert (runs["next_state"]["k"] == PUNISHED).mean() > 0.8
    assert (runs["oracle"]["k"] == PUNISHED).mean() < 0.2


def null_rollout(config, policy, episodes, seed):
    """(observations (episodes, T + 1, K), actions, rewards, real outcomes) of one env under ``policy``."""
    env = OutcomeEnv(config)
    obs_all, acts, rewards, outcomes = [], [], [], []
    for e in range(episodes):
        obs, info = env.reset(seed=seed if e == 0 else None)
        seen, done = [obs], False
        while not done:
            a = policy(env, info)
            obs, r, done, _, info = env.step(a)
            seen.append(obs), acts.append(a), rewards.append(r), outcomes.append(info["outcome"])
        obs_all.append(seen)
    return np.array(obs_all), np.array(acts), np.array(rewards), np.array(outcomes)


def test_the_shuffled_null_shows_the_task_stream_and_pays_nothing_for_tracking_it():
    def best(env, info):
        return int(np.argmax(decision_belief(env.hmm, info["belief"])))

    task = null_rollout(ENV, best, 300, seed=0)
    null = null_rollout(dict(ENV, shuffle_reward=True), best, 300, seed=0)
    # the same stream, draw for draw, with the same (real) outcomes shown: only the pay differs
    np.testing.assert_array_equal(null[0], task[0])
    np.testing.assert_array_equal(null[3], task[3])
    np.testing.assert_array_equal(task[2], np.array([1.0, -1.0, 0.0])[task[3]])
    n = len(null[2])
    assert task[2].mean() > 0.7  # tracking the hidden state pays in the task
    assert abs(null[2].mean()) < 4 / np.sqrt(n)  # and earns nothing in expectation in the null
    # the null still pays +1 / -1 / 0, each about a third of the time, unrelated to the shown outcome
    assert all(abs((null[2] == v).mean() - 1 / 3) < 0.05 for v in (1.0, -1.0, 0.0))
    assert (null[2] == np.array([1.0, -1.0, 0.0])[null[3]]).mean() < 0.45
    # naming the next state, punished in the task, is not punished more than anything else in the null
    nxt = null_rollout(dict(ENV, shuffle_reward=True), lambda env, i: (best(env, i) + 1) % 3, 300, seed=0)
    assert abs(nxt[2].mean()) < 4 / np.sqrt(n)
    # the shadow is seeded by the env's seed: another seed pays differently on the same actions
    other = null_rollout(dict(ENV, shuffle_reward=True), best, 300, seed=1)
    assert not np.array_equal(other[2], null[2])
    again = null_rollout(dict(ENV, shuffle_reward=True), best, 300, seed=0)
    np.testing.assert_array_equal(again[2], null[2])


def test_the_null_runs_under_the_vector_api_and_pickles():
    env = make_env(dict(ENV, num_envs=4, seed=3, shuffle_reward=True))
    task = vector_rollout(make_env(dict(ENV, num_envs=4, seed=3)), 12)
    obs, rewards, terminated = vector_rollout(env, 12)
    np.testing.assert_array_equal(obs, task[0])  # the copies show the task's streams
    np.testing.assert_array_equal(terminated, task[2])
    assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0} and not np.array_equal(rewards, task[1])
    clone = pickle.loads(pickle.dumps(env))
    for actions in ([0, 1, 2, 0], [2, 2, 1, 0]):
        a, b = env.step(np.array(actions)), clone.step(np.array(actions))
        for x, y in zip(a[:3], b[:3]):
            np.testing.assert_array_equal(x, y)


def test_env_passes_the_checker_and_registers():
    check_env(OutcomeEnv(ENV), skip_render_check=True)
    check_env(gym.make(gym_env.OUTCOME_ENV_ID, config=ENV).unwrapped, skip_render_check=True)
    assert isinstance(gym.make_vec(gym_env.OUTCOME_ENV_ID, num_envs=2, config=ENV), OutcomeVectorEnv)
    assert isinstance(make_env(ENV), OutcomeEnv) and gym_env._ENVS["outcome"] == (OutcomeEnv, OutcomeVectorEnv)
    assert action_tokens(ENV) == [3, 4, 5] == OutcomeEnv(ENV).action_tokens.tolist()
    env = OutcomeEnv({"process": OUTCOME, "context": 10})
    assert env.config.reward == "outcome" and env.episode_len == 3  # (10 - 1) // 3 rounds fit in K
    assert OutcomeEnv({"process": OUTCOME, "context": 2}).episode_len == 1
    obs, _ = env.reset(seed=0)
    assert obs.shape == (10,) and obs[0] < 3 and (obs[1:] == env.hmm.vocab_size).all()  # right-padded
    for _ in range(3):
        obs, _, done, _, _ = env.step(0)
    assert done and (obs < env.hmm.vocab_size).all()
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(0)
    env.reset()
    with pytest.raises(ValueError, match="action must lie"):
        env.step(3)


def vector_rollout(env, steps, seed=None):
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=seed)
    out_obs, out_r, out_term = [obs], [], []
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(rng.integers(0, env.single_action_space.n, env.num_envs))
        assert not trunc.any()
        out_obs.append(obs), out_r.append(r), out_term.append(term)
    return np.array(out_obs), np.array(out_r), np.array(out_term)


def test_vector_env_steps_autoresets_and_seeds_like_the_active_one():
    env = make_env(dict(ENV, num_envs=4, seed=3))
    assert isinstance(env, OutcomeVectorEnv) and env.num_envs == 4
    assert env.metadata["autoreset_mode"] == gym_env.SequenceVectorEnv.metadata["autoreset_mode"]
    assert env.observation_space.shape == (4, 16) and env.single_action_space.n == 3
    obs, rewards, terminated = vector_rollout(env, 12)
    assert obs.shape == (13, 4, 16) and (obs >= 0).all() and (obs <= env.hmm.vocab_size).all()
    # episodes of 5 steps, then one next-step autoreset step that pays 0 and shows a fresh first token
    np.testing.assert_array_equal(terminated.any(axis=1), [False] * 4 + [True] + [False] * 5 + [True, False])
    assert (rewards[5] == 0).all() and (obs[6][:, 1:] == env.hmm.vocab_size).all()
    assert set(np.unique(rewards[:5])) <= {-1.0, 0.0, 1.0}
    assert not (obs[1:, 0] == obs[1:, 1]).all()  # the copies run different streams
    again = vector_rollout(make_env(dict(ENV, num_envs=4, seed=3)), 12)
    other = vector_rollout(make_env(dict(ENV, num_envs=4, seed=4)), 12)
    np.testing.assert_array_equal(again[0], obs)
    assert not np.array_equal(other[0], obs)
    np.testing.assert_array_equal(
        vector_rollout(make_env(dict(ENV, num_envs=2)), 7, seed=5)[0],
        vector_rollout(make_env(dict(ENV, num_envs=2, seed=99)), 7, seed=5)[0],
    )
    clone = pickle.loads(pickle.dumps(env))
    for actions in ([0, 1, 2, 0], [2, 2, 1, 0], [1, 0, 0, 2]):
        a, b = env.step(np.array(actions)), clone.step(np.array(actions))
        for x, y in zip(a[:3], b[:3]):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a[4]["belief"], b[4]["belief"])


def test_rllib_vector_entry_point_path():
    """What RLlib's env runner does: gym.make_vec in vector_entry_point mode, infos as per-env lists."""
    gym.register(
        "test-outcome-v0",
        entry_point=lambda: make_env(ENV),
        vector_entry_point=lambda num_envs: make_env(dict(ENV, num_envs=num_envs)),
    )
    try:
        env = DictInfoToList(gym.make_vec("test-outcome-v0", num_envs=3, vectorization_mode="vector_entry_point"))
        obs, infos = env.reset(seed=0)
        assert obs.shape == (3, 16) and len(infos) == 3 and infos[0]["belief"].shape == (15,)
        for _ in range(7):
            obs, _, _, _, infos = env.step(env.action_space.sample())
        assert len(infos) == 3
    finally:
        gym.registry.pop("test-outcome-v0")


def test_the_passive_stream_still_runs_as_a_sequence_env():
    env = SequenceEnv({"process": OUTCOME, "context": 7})  # next_token on the outcome stream: pretraining's task
    obs, _ = env.reset(seed=0)
    assert env.action_space.n == 9 and obs.shape == (7,)


TWO_STATES = from_matrices([[[0.9, 0.1], [0.1, 0.9]]], name="two")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: OutcomeEnv(dict(ENV, process=MESS3)), "OutcomeEnv needs an outcome process"),
        (lambda: make_env(dict(ENV, process=MESS3, num_envs=2)), "OutcomeEnv needs an outcome process"),
        (lambda: SequenceEnv({"process": OUTCOME, "reward": "outcome"}), "reward 'outcome' needs env: outcome"),
        (lambda: make_env({"process": OUTCOME, "reward": "outcome", "num_envs": 2}), "needs env: outcome"),
        (lambda: make_reward("outcome", build_process(OUTCOME)).targets(None, None), "needs env: outcome"),
        (lambda: make_reward("outcome", build_process(MESS3)), "reward 'outcome' needs an outcome process"),
        (lambda: OutcomeEnv(dict(ENV, action_tokens=[0, 1, 2])), r"must be the process's action tokens \[3, 4, 5\]"),
        (lambda: OutcomeEnv(dict(ENV, action_tokens=[4, 3, 5])), "action tokens .3, 4, 5. in order"),
        (lambda: action_tokens(dict(ENV, action_tokens=[3, 4])), "action tokens .3, 4, 5. in order"),
        (lambda: OutcomeEnv(dict(ENV, reward="next_token")), "reward must be 'outcome'; got 'next_token'"),
        (lambda: OutcomeEnv(dict(ENV, env="sequence")), "OutcomeEnv runs env 'outcome'"),
        (lambda: OutcomeEnv(dict(ENV, reward_params={"punished": "a lot"})), "punished must be a number"),
        (lambda: OutcomeEnv(dict(ENV, reward_params={"bonus": 1})), "unknown params"),
        (lambda: build_process({"name": "outcome", "base": TWO_STATES}), "base process needs at least 3 states"),
        (lambda: OutcomeEnv(dict(ENV, process={"name": "outcome", "base": TWO_STATES})), "at least 3 states"),
        (lambda: build_process({"name": "outcome", "base": {"name": "mess4"}}), r"process\.base: unknown process"),
        (lambda: build_process({"name": "outcome", "base": 3}), r"process\.base: a process spec must be a dict"),
        (lambda: outcome(base=3), "base must be a process spec dict or an HMM"),
        (lambda: outcome_probs(build_process(OUTCOME), build_process(OUTCOME).init), "not at a decision point"),
        (lambda: OutcomeTokens.of(build_process(MESS3)), "not an outcome process"),
    ],
)
def test_bad_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_reward_values_are_parameters():
    env = OutcomeEnv(dict(ENV, reward_params={"rewarded": 2.0, "punished": -5.0, "neutral": 0.5}))
    env.reset(seed=0)
    seen = {}
    for t in range(40):
        if t % 5 == 0:
            env.reset()
        _, r, _, _, info = env.step(t % 3)
        seen[info["outcome"]] = r
    assert seen == {REWARDED: 2.0, PUNISHED: -5.0, NEUTRAL: 0.5}
