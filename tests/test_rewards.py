"""Reward targets against brute-force walks over sampled sequences, and every validation error."""

import numpy as np
import pytest

from envs.compose import gated, interleave, mixture, product
from envs.gym_env import ActiveGatedEnv, SequenceEnv, SequenceVectorEnv
from envs.processes import mess3, noisy_and, noisy_not, rrxor
from envs.rewards import REWARDS, make_reward

EYE3 = np.eye(3).tolist()
PAYOFF = np.array([[0.5, -1.0, 2.0], [0.0, 1.25, -0.5], [3.0, 0.0, -2.0]])  # (A, V) for mess3, all tokens


def sample(hmm, batch=64, length=30, seed=0):
    tokens, states, _ = hmm.sample_with_beliefs(batch, length, np.random.default_rng(seed))
    return tokens, states


def test_registry_entries_are_documented():
    assert {"next_token", "joint_target", "implies", "reward_punish", "payoff"} <= set(REWARDS)
    for name, cls in REWARDS.items():
        assert cls.__doc__ and len(cls.__doc__) > 80, name
        for param, (_, doc) in cls.PARAMS.items():
            assert doc, (name, param)


def test_next_token_targets_are_the_following_token():
    hmm = mess3()
    r = make_reward("next_token", hmm)
    tokens, states = sample(hmm)
    assert r.lookahead == 1 and r.action_tokens.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(r.targets(tokens, states), tokens[:, 1:])
    np.testing.assert_array_equal(r.rewards(np.array([0, 1, 2]), np.array([0, 2, 2])), [1.0, 0.0, 1.0])


def brute_joint(hmm, tokens, fa, fb, m, actions):
    """Walk each sequence: for step t find the first token of each factor after t."""
    owners = [set(ids) for ids in hmm.meta["factor_tokens"]] if "factor_tokens" in hmm.meta else None
    offs = hmm.meta.get("token_offsets")
    out = []
    for row in tokens:
        targets = []
        for t in range(len(row)):
            nxt = []
            for f in (fa, fb):
                local = None
                for x in row[t + 1 :]:
                    if owners is None:  # product: every token carries both factors
                        local = np.unravel_index(x, hmm.meta["token_shape"])[f]
                        break
                    if x in owners[f]:
                        local = x - offs[f]
                        break
                nxt.append(local)
            if None in nxt:
                break
            targets.append(actions[(nxt[0] + nxt[1]) % m])
        out.append(targets)
    return out


@pytest.mark.parametrize(
    "hmm, lookahead",
    [
        (interleave(mess3(), rrxor()), 2),
        (interleave(rrxor(), mess3(), noisy_not()), 3),
        (product(mess3(), rrxor()), 1),
    ],
)
def test_joint_target_matches_brute_force(hmm, lookahead):
    r = make_reward("joint_target", hmm)
    assert r.lookahead == lookahead
    tokens, states = sample(hmm, batch=8, length=20)
    got = r.targets(tokens, states)
    assert got.shape == (8, 20 - lookahead)
    want = brute_joint(hmm, tokens, 0, 1, hmm.factors[0].vocab_size, r.action_tokens)
    for row, w in zip(got, want):
        np.testing.assert_array_equal(row, w[: len(row)])


def test_joint_target_params_and_action_set():
    hmm = interleave(mess3(), rrxor())  # tokens: mess3 0..2, rrxor 3..4
    r = make_reward("joint_target", hmm, {"factors": [1, 0], "m": 2})
    assert r.action_tokens.tolist() == [3, 4]  # factor A = rrxor here
    tokens, states = sample(hmm, batch=4, length=12)
    want = brute_joint(hmm, tokens, 1, 0, 2, [3, 4])
    for row, w in zip(r.targets(tokens, states), want):
        np.testing.assert_array_equal(row, w[: len(row)])
    r = make_reward("joint_target", hmm, action_tokens=[4, 3, 0])
    assert r.action_tokens.tolist() == [4, 3, 0]


def test_joint_target_probs_are_a_distribution_matching_frequencies():
    hmm = interleave(mess3(0.05, 0.85), rrxor())
    r = make_reward("joint_target", hmm)
    tokens, states, beliefs = hmm.sample_with_beliefs(4000, 6, np.random.default_rng(1))
    probs = r.target_probs(hmm.factor_beliefs(beliefs[:, 3]))  # (B, m) for the action at step 3
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    hit = r.targets(tokens, states)[:, 3][:, None] == r.action_tokens[None, :]  # (B, m)
    # calibration: the predicted probability of each target matches how often it happens
    np.testing.assert_allclose(hit.mean(0), probs.mean(0), atol=0.03)


def brute_implies(tokens, states):
    """noisy_and layout: S=0 emits x, X0/X1=1,2 emit y, P0/P1=3,4 emit the output bit."""
    out = np.full((tokens.shape[0], tokens.shape[1] - 1), -1)
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1] - 1):
            if states[b, t + 1] in (3, 4) and states[b, t - 1] == 0:
                x, y = tokens[b, t - 1], tokens[b, t]
                out[b, t] = int(not (x and not y))
    return out


def test_implies_on_noisy_and_matches_brute_force():
    hmm = noisy_and(0.1)
    r = make_reward("implies", hmm)
    tokens, states = sample(hmm, batch=32, length=15)
    got = r.targets(tokens, states)
    np.testing.assert_array_equal(got, brute_implies(tokens, states))
    assert (got >= 0).sum() >= 32 * 3  # one target per complete triple


def test_implies_every_step_uses_the_latest_input_pair():
    hmm = noisy_and(0.1)
    r = make_reward("implies", hmm, {"every_step": True})
    tokens, states = sample(hmm, batch=32, length=15)
    got = r.targets(tokens, states)
    want = np.full_like(got, -1)
    for b in range(len(tokens)):
        for t in range(got.shape[1]):
            ys = [p for p in range(1, t + 1) if states[b, p] in (1, 2)]  # y is emitted from X0 / X1
            if ys:
                x, y = tokens[b, ys[-1] - 1], tokens[b, ys[-1]]
                want[b, t] = int(not (x and not y))
    np.testing.assert_array_equal(got, want)
    at_output = make_reward("implies", hmm).targets(tokens, states)
    np.testing.assert_array_equal(got[at_output >= 0], at_output[at_output >= 0])
    assert (got >= 0).mean() > 0.8


@pytest.mark.parametrize("kind", ["interleave", "mixture"])
def test_implies_on_compositions_scores_only_the_and_gate(kind):
    gate = noisy_and(0.1)
    hmm = interleave(noisy_not(0.1), gate) if kind == "interleave" else mixture([noisy_not(0.1), gate])
    r = make_reward("implies", hmm)
    assert r.action_tokens.tolist() == [2, 3]  # the AND gate's bits
    tokens, states = sample(hmm, batch=32, length=24)
    got = r.targets(tokens, states)
    local = hmm.layout.split_tokens(tokens)[1]
    fstates = hmm.layout.factor_states(states)[1]
    for b in range(len(tokens)):
        keep = local[b] >= 0  # the AND gate's own subsequence, with its own states
        pos = np.flatnonzero(keep)
        want = np.full(tokens.shape[1] - 1, -1)
        sub_t, sub_s = local[b, pos], fstates[b, pos]
        sub_want = brute_implies(sub_t[None], np.append(sub_s, 0)[None])[0] if pos.size > 1 else []
        for i in range(len(sub_want)):
            if sub_want[i] >= 0:
                want[pos[i + 1] - 1] = r.action_tokens[sub_want[i]]
        np.testing.assert_array_equal(got[b], want)
    assert (got >= 0).any()


def test_reward_punish_and_rare_next_token_values():
    hmm = mess3()
    r = make_reward("reward_punish", hmm, {"rewarded": [0], "punished": [2]})
    np.testing.assert_array_equal(r.rewards(np.array([0, 1, 2]), np.full(3, -1)), [1.0, 0.0, -1.0])
    g = gated(mess3(), rrxor(), 0)  # A tokens 0..2, B tokens 3..4
    r = make_reward("rare_next_token", g, {"rare": 2.0, "common": 0.5})
    np.testing.assert_array_equal(r.rewards(np.array([3, 4, 1, 1]), np.array([3, 3, 1, 2])), [2.0, 0.0, 0.5, 0.0])


@pytest.mark.parametrize(
    "name, hmm, params, actions, match",
    [
        ("nope", mess3(), {}, None, "unknown reward 'nope'; valid"),
        ("next_token", mess3(), {"m": 2}, None, "unknown params"),
        ("next_token", mess3(), {}, [0, 3], "not in the vocabulary"),
        ("next_token", mess3(), {}, [], "empty"),
        ("next_token", mess3(), {}, [0.5], "integer token ids"),
        ("joint_target", mess3(), {}, None, "at least two factors"),
        ("joint_target", mixture([mess3(), rrxor()]), {}, None, "silent for arbitrarily long"),
        ("joint_target", gated(mess3(), rrxor(), 0), {}, None, "silent for arbitrarily long"),
        ("joint_target", interleave(mess3(), rrxor()), {"factors": [0, 0]}, None, "two distinct"),
        ("joint_target", interleave(mess3(), rrxor()), {"factors": 1}, None, "two distinct"),
        ("joint_target", interleave(mess3(), rrxor()), {"m": 1}, None, "m must be an int >= 2"),
        ("joint_target", interleave(mess3(), rrxor()), {"m": 4}, None, "pass action_tokens"),
        ("joint_target", interleave(mess3(), rrxor()), {}, [0, 1], "exactly m=3"),
        ("implies", mess3(), {}, None, "noisy_and"),
        ("implies", interleave(noisy_not(), rrxor()), {}, None, "noisy_and"),
        ("implies", noisy_and(), {}, [0, 1, 1], "two distinct"),
        ("implies", interleave(noisy_not(), noisy_and()), {"gate": 0}, None, "one of \\[1\\]"),
        ("implies", noisy_and(), {"every_step": 1}, None, "true or false"),
        ("reward_punish", mess3(), {}, None, "at least one token"),
        ("reward_punish", mess3(), {"rewarded": [1], "punished": [1]}, None, "both rewarded and punished"),
        ("reward_punish", mess3(), {"rewarded": [7]}, None, "not in the vocabulary"),
        ("rare_next_token", mess3(), {}, None, "composed process"),
        ("payoff", mess3(), {}, None, "give matrix"),
        ("payoff", mess3(), {"matrix": EYE3[:2]}, None, "one row per action token, shape \\(3, 3\\)"),
        ("payoff", mess3(), {"matrix": EYE3}, [0, 1], "one row per action token, shape \\(2, 3\\)"),
        ("payoff", mess3(), {"matrix": [[1, 0], [0, 1], [0, 0]]}, None, "V=3 columns"),
        ("payoff", mess3(), {"matrix": [[1, 0, 0], [0, 1], [0, 0, 1]]}, None, "list of rows of V=3 numbers"),
        ("payoff", mess3(), {"matrix": [1, 0, 0]}, None, "list of rows of V=3 numbers"),
        ("payoff", mess3(), {"matrix": [["a", "b", "c"]] * 3}, None, "list of rows of V=3 numbers"),
        ("payoff", mess3(), {"matrix": [[True, False, False]] * 3}, None, "list of rows of V=3 numbers"),
        (
            "payoff",
            mess3(),
            {"matrix": [[0, float("nan"), 0], [0, 1, 0], [0, 0, 1]]},
            None,
            "matrix\\[0\\]\\[1\\] must be finite",
        ),
        (
            "payoff",
            mess3(),
            {"matrix": [[0, 0, 0], [0, 1, 0], [0, 0, float("inf")]]},
            None,
            "matrix\\[2\\]\\[2\\] must be finite",
        ),
        (
            "payoff",
            mess3(),
            {"matrix": [[1, 0, 0], [0, True, 0], [0, 0, 1]]},
            None,
            "matrix\\[1\\]\\[1\\] must be a number",
        ),
        ("payoff", mess3(), {"matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1e30]]}, None, "at most 1e\\+06 in size"),
        ("rare_next_token", mess3(), {"rare": True}, None, "rare must be a number"),
        ("rare_next_token", mess3(), {"rare": 10**400}, None, "rare must be finite and at most 1e\\+06"),
        ("payoff", mess3(), {"matrix": EYE3, "offset": 2}, None, "offset must be 1 .* or 0"),
        ("payoff", mess3(), {"matrix": EYE3, "offset": True}, None, "offset must be 1"),
        ("payoff", mess3(), {"matrix": EYE3, "offset": "1"}, None, "offset must be 1"),
        ("payoff", mess3(), {"matrix": EYE3[:2]}, [1, 1], "distinct"),
        ("payoff", mess3(), {"matrix": EYE3, "scale": 2}, None, "unknown params"),
    ],
)
def test_bad_reward_configs_raise(name, hmm, params, actions, match):
    with pytest.raises(ValueError, match=match):
        make_reward(name, hmm, params, actions)


def test_payoff_targets_and_rewards_map_action_tokens_to_rows():
    hmm = mess3()
    tokens, states = sample(hmm, batch=8, length=12)
    for offset, want in ((1, tokens[:, 1:]), (0, tokens[:, :-1])):
        r = make_reward("payoff", hmm, {"matrix": PAYOFF.tolist(), "offset": offset})
        assert r.lookahead == 1 and r.ONLINE and r.offset == offset
        np.testing.assert_array_equal(r.targets(tokens, states), want)
    # action tokens [2, 0]: row 0 is token 2's, row 1 token 0's
    r = make_reward("payoff", hmm, {"matrix": PAYOFF[:2].tolist()}, action_tokens=[2, 0])
    np.testing.assert_array_equal(r.rewards(np.array([2, 0, 2, 0]), np.array([0, 1, 2, 2])), [0.5, 1.25, 2.0, -0.5])
    with pytest.raises(ValueError, match="not in the action set"):
        r.rewards(np.array([1]), np.array([0]))
    # the docstring's examples
    tok = np.array([0, 1, 2, 0, 2])
    nxt = np.array([1, 1, 0, 2, 2])
    ident = make_reward("payoff", hmm, {"matrix": EYE3})
    np.testing.assert_array_equal(ident.rewards(tok, nxt), make_reward("next_token", hmm).rewards(tok, nxt))
    neg = make_reward("payoff", hmm, {"matrix": (-np.eye(3)).tolist()})
    np.testing.assert_array_equal(neg.rewards(tok, nxt), -ident.rewards(tok, nxt))
    shift = np.zeros((3, 3))
    shift[(np.arange(3) + 1) % 3, np.arange(3)] = 1
    r = make_reward("payoff", hmm, {"matrix": shift.tolist()})
    np.testing.assert_array_equal(r.rewards(tok, nxt), (tok == (nxt + 1) % 3).astype(float))


def run_episode(config, seed, actions):
    """(rewards, targets, newest token before each step, newest token after it, beliefs) of one episode."""
    env = SequenceEnv(config)
    obs, info = env.reset(seed=seed)
    K = env.observation_space.shape[0]
    out = {"reward": [], "target": [], "before": [], "after": [], "belief": [info["belief"]]}
    for t, a in enumerate(actions):
        out["before"].append(obs[min(t, K - 1)])  # episode_len == K: the window is the prefix
        obs, rew, done, _, info = env.step(a)
        out["after"].append(obs[min(t + 1, K - 1)])
        out["reward"].append(rew)
        out["target"].append(info["target"])
        out["belief"].append(info["belief"])
    assert done
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("offset", [1, 0])
def test_payoff_in_the_sequence_env_pays_the_matrix_entry(offset):
    config = {
        "process": {"name": "mess3"},
        "context": 10,
        "reward": "payoff",
        "reward_params": {"matrix": PAYOFF.tolist(), "offset": offset},
    }
    actions = np.random.default_rng(5).integers(0, 3, size=10)
    ep = run_episode(config, 11, actions)
    scored = ep["after"] if offset == 1 else ep["before"]  # x_{t+1} or x_t
    np.testing.assert_array_equal(ep["target"], scored)
    np.testing.assert_array_equal(ep["reward"], PAYOFF[actions, ep["target"]])
    # the same stream as next_token under the same seed (same lookahead, so the same draws)
    nt = run_episode({"process": {"name": "mess3"}, "context": 10}, 11, actions)
    np.testing.assert_array_equal(ep["belief"], nt["belief"])
    np.testing.assert_array_equal(ep["after"], nt["after"])
    if offset == 1:
        ident = run_episode({**config, "reward_params": {"matrix": EYE3}}, 11, actions)
        np.testing.assert_array_equal(ident["reward"], nt["reward"])
        neg = run_episode({**config, "reward_params": {"matrix": (-np.eye(3)).tolist()}}, 11, actions)
        np.testing.assert_array_equal(neg["reward"], -nt["reward"])


def test_payoff_in_the_vector_env():
    for offset in (0, 1):
        env = SequenceVectorEnv(
            4,
            {
                "process": {"name": "mess3"},
                "context": 5,
                "reward": "payoff",
                "reward_params": {"matrix": PAYOFF.tolist(), "offset": offset},
            },
        )
        env.reset(seed=0)
        for t in range(5):
            a = np.arange(4) % 3
            _, rew, _, _, info = env.step(a)
            np.testing.assert_array_equal(rew, PAYOFF[a, info["target"]])


@pytest.mark.parametrize("offset", [1, 0])
def test_payoff_scores_a_steered_stream(offset):
    """ONLINE for both offsets: the active gated env reads the target from (x_t, x_{t+1})."""
    M = np.arange(25, dtype=float).reshape(5, 5) / 7 - 1  # gated(mess3, rrxor): 5 tokens
    env = ActiveGatedEnv(
        {
            "process": {"name": "gated", "a": {"name": "mess3"}, "b": {"name": "rrxor"}, "trigger": 0},
            "context": 8,
            "reward": "payoff",
            "reward_params": {"matrix": M.tolist(), "offset": offset},
        }
    )
    obs, _ = env.reset(seed=2)
    for t, a in enumerate([0, 3, 1, 0, 4, 2, 0, 0]):
        before = obs[t]
        obs, rew, done, _, info = env.step(a)
        after = obs[min(t + 1, 7)]
        assert info["target"] == (after if offset == 1 else before)
        assert rew == M[a, info["target"]]
    assert done
