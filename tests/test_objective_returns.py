"""Exact action values and returns (rayexp.studies.objective.returns) against brute-force enumeration of
hidden paths, sampled rewards, the env's own steps, and hand-computed cases."""

import itertools

import numpy as np
import pytest

from envs import from_matrices
from envs.compose import gated, interleave
from envs.gym_env import SequenceEnv
from envs.processes import mess3, noisy_and, rrxor
from envs.rewards import make_reward
from rayexp.studies.objective import returns
from rayexp.studies.objective.returns import (
    UnsupportedReward,
    action_values,
    expected_return,
    greedy_return,
    optimal_return,
    reward_similarity,
)

V = 3
EYE = np.eye(V)
SHIFT = np.zeros((V, V))
SHIFT[(np.arange(V) + 1) % V, np.arange(V)] = 1.0  # action (v + 1) mod V is paid when the next token is v
RAND = np.array([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7], [-0.4, 0.9, 0.25]])


def toy_hmm():
    """2 hidden states, 3 tokens, every transition possible (non-unifilar, so beliefs stay mixed)."""
    T = np.array(
        [
            [[0.30, 0.10], [0.05, 0.05]],
            [[0.10, 0.15], [0.10, 0.20]],
            [[0.20, 0.15], [0.25, 0.35]],
        ]
    )
    return from_matrices(T, name="toy")


def path_prob(hmm, seq, last_state=None):
    """P(x_0..x_n = seq [, state after x_n = last_state]) by summing over every hidden path."""
    S = hmm.n_states
    total = 0.0
    for path in itertools.product(range(S), repeat=len(seq) + 1):
        if last_state is not None and path[-1] != last_state:
            continue
        p = hmm.init[path[0]]
        for i, x in enumerate(seq):
            p *= hmm.T[x, path[i], path[i + 1]]
        total += p
    return total


def brute_next(hmm, prefix):
    """(V,) P(x_{t+1} = v | x_0..x_t = prefix)."""
    den = path_prob(hmm, prefix)
    return np.array([path_prob(hmm, [*prefix, v]) for v in range(hmm.vocab_size)]) / den


def all_sequences(L):
    return np.array(list(itertools.product(range(V), repeat=L)), dtype=np.int64)  # (V^L, L)


def test_belief_convention_is_after_the_token():
    hmm = toy_hmm()
    tokens, _, beliefs = hmm.sample_with_beliefs(6, 5, np.random.default_rng(0))
    np.testing.assert_allclose(beliefs, hmm.beliefs(tokens), atol=1e-12)
    for n in range(3):
        for t in range(5):
            prefix = tokens[n, : t + 1].tolist()
            post = np.array([path_prob(hmm, prefix, s) for s in range(2)]) / path_prob(hmm, prefix)
            np.testing.assert_allclose(beliefs[n, t], post, atol=1e-12)  # P(state | x_0..x_t)


def brute_values(hmm, tokens, matrix, offset):
    N, L = tokens.shape
    out = np.zeros((N, L - 1, matrix.shape[0]))
    for n in range(N):
        for t in range(L - 1):
            if offset == 1:
                out[n, t] = matrix @ brute_next(hmm, tokens[n, : t + 1].tolist())
            else:
                out[n, t] = matrix[:, tokens[n, t]]
    return out


@pytest.mark.parametrize("matrix", [EYE, -EYE, SHIFT, RAND], ids=["identity", "minus", "shift", "random"])
@pytest.mark.parametrize("offset", [1, 0])
def test_payoff_values_match_brute_force(matrix, offset):
    hmm = toy_hmm()
    tokens = all_sequences(4)  # every sequence of 4 tokens, all of positive probability
    beliefs = hmm.beliefs(tokens)
    r = make_reward("payoff", hmm, {"matrix": matrix.tolist(), "offset": offset})
    got = action_values(hmm, r, tokens, beliefs)
    assert got.shape == (len(tokens), 3, 3)
    np.testing.assert_allclose(got, brute_values(hmm, tokens, matrix, offset), rtol=0, atol=1e-12)


def test_named_relations_between_rewards():
    hmm = toy_hmm()
    tokens, _, beliefs = hmm.sample_with_beliefs(50, 12, np.random.default_rng(1))

    def q(name, params=None, actions=None):
        return action_values(hmm, make_reward(name, hmm, params, actions), tokens, beliefs)

    nt = q("next_token")
    np.testing.assert_allclose(nt, q("payoff", {"matrix": EYE.tolist()}), atol=1e-12)
    np.testing.assert_array_equal(q("payoff", {"matrix": (-EYE).tolist()}), -q("payoff", {"matrix": EYE.tolist()}))
    np.testing.assert_allclose(q("payoff", {"matrix": SHIFT.tolist()}), nt[..., [2, 0, 1]], atol=1e-12)
    np.testing.assert_array_equal(q("payoff", {"matrix": EYE.tolist(), "offset": 0}), EYE[tokens[:, :-1]])
    np.testing.assert_allclose(nt.sum(-1), 1.0, atol=1e-12)
    # token ids -> action indices: actions [2, 0] read columns 2 and 0
    np.testing.assert_allclose(q("next_token", actions=[2, 0]), nt[..., [2, 0]], atol=1e-12)
    sub = RAND[:2]
    np.testing.assert_allclose(q("payoff", {"matrix": sub.tolist()}, [2, 0]), nt @ sub.T, atol=1e-12)
    # a constant preference: row 0 all ones pays 1 for action 0 whatever comes; reward_punish the same
    pref = np.zeros((3, 3))
    pref[0] = 1.0
    for offset in (0, 1):
        np.testing.assert_allclose(
            q("payoff", {"matrix": pref.tolist(), "offset": offset}), np.broadcast_to(pref[:, 0], nt.shape), atol=1e-12
        )
    np.testing.assert_array_equal(q("reward_punish", {"rewarded": [0]}), np.broadcast_to([1.0, 0, 0], nt.shape))


CALIBRATION = {
    "payoff1": (mess3(0.05, 0.85), "payoff", {"matrix": RAND.tolist()}),
    "payoff0": (mess3(0.05, 0.85), "payoff", {"matrix": RAND.tolist(), "offset": 0}),
    "next_token": (mess3(0.05, 0.85), "next_token", {}),
    "reward_punish": (mess3(), "reward_punish", {"rewarded": [1], "punished": [2]}),
    "rare_next_token": (gated(mess3(), rrxor(), 0), "rare_next_token", {"rare": 2.0, "common": 0.5}),
    "joint_target": (interleave(mess3(0.05, 0.85), rrxor()), "joint_target", {}),
    "implies": (noisy_and(0.1), "implies", {}),
}


@pytest.mark.parametrize("case", sorted(CALIBRATION))
def test_values_are_the_mean_of_sampled_rewards(case):
    """E[sampled reward of action k at step t] = mean of the exact values: a 5-sigma check per (t, k)."""
    hmm, name, params = CALIBRATION[case]
    r = make_reward(name, hmm, params)
    tokens, states, beliefs = hmm.sample_with_beliefs(6000, 9, np.random.default_rng(2))
    Q = action_values(hmm, r, tokens, beliefs)  # (N, L', A)
    tgt = r.targets(tokens, states)[:, : Q.shape[1]]  # (N, L')
    assert Q.shape == (*tgt.shape, len(r.action_tokens))
    got = np.stack([r.rewards(np.full(tgt.size, a), tgt.ravel()).reshape(tgt.shape) for a in r.action_tokens], -1)
    diff = got - Q  # zero-mean if Q is the conditional expectation
    se = diff.std(axis=0) / np.sqrt(len(diff)) + 1e-12
    assert (np.abs(diff.mean(axis=0)) < 5 * se).all(), np.abs(diff.mean(axis=0)) / se
    assert np.abs(Q).max() > 0


def test_values_line_up_with_the_env_steps():
    """Index t of the values is env step t: tokens and beliefs read back from one episode."""
    for offset in (0, 1):
        env = SequenceEnv(
            {
                "process": {"name": "mess3"},
                "context": 6,
                "reward": "payoff",
                "reward_params": {"matrix": RAND.tolist(), "offset": offset},
            }
        )
        obs, info = env.reset(seed=3)
        toks, bels, acts, rews = [obs[0]], [info["belief"]], [], []
        for t in range(6):
            a = (t * 2 + 1) % 3
            obs, rew, done, _, info = env.step(a)
            toks.append(obs[min(t + 1, 5)])
            bels.append(info["belief"])
            acts.append(a)
            rews.append(rew)
        assert done
        Q = action_values(env.hmm, env.reward_fn, np.array([toks]), np.array([bels]))  # (1, 6, 3)
        assert Q.shape == (1, 6, 3)
        if offset == 0:  # the reward is known at the context: the value is what the env paid
            np.testing.assert_array_equal(Q[0, np.arange(6), acts], rews)
        else:
            np.testing.assert_allclose(Q[0], env.hmm.next_token_probs(np.array(bels[:6])) @ RAND.T, atol=1e-12)
            np.testing.assert_array_equal(rews, RAND[acts, toks[1:]])


def test_unsupported_rewards_and_bad_shapes_raise():
    hmm = noisy_and(0.1)
    tokens, _, beliefs = hmm.sample_with_beliefs(4, 6, np.random.default_rng(0))
    with pytest.raises(UnsupportedReward, match="'implies' is unsupported"):
        action_values(hmm, make_reward("implies", hmm, {"every_step": True}), tokens, beliefs)
    r = make_reward("next_token", hmm)
    with pytest.raises(ValueError, match="beliefs must have shape"):
        action_values(hmm, r, tokens, beliefs[:, :-1])
    with pytest.raises(ValueError, match="longer than its lookahead"):
        action_values(hmm, r, tokens[:, :1], beliefs[:, :1])
    assert "payoff" in returns.SUPPORTED_REWARDS
    with pytest.raises(ValueError, match="same shape|both have shape"):
        expected_return(np.ones((2, 3, 2)), np.ones((2, 3, 3)))


def test_returns_by_hand():
    values = np.array([[[1.0, 0.0, -1.0], [0.2, 0.5, 0.3]], [[0.0, 2.0, 2.0], [1.0, 1.0, 1.0]]])  # (2, 2, 3)
    pi = np.array([[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], [[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]]])
    np.testing.assert_allclose(expected_return(pi, values), [(0.25 + 0.2) / 2, (2.0 + 1.0) / 2])
    np.testing.assert_allclose(optimal_return(values), [(1.0 + 0.5) / 2, (2.0 + 1.0) / 2])
    scores = np.array([[[0.0, 3.0, 1.0], [5.0, 5.0, 0.0]], [[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # ties share
    np.testing.assert_allclose(greedy_return(scores, values), [(0.0 + 0.35) / 2, (0.0 + 1.0) / 2])
    np.testing.assert_allclose(expected_return(pi, -values), -expected_return(pi, values))


def test_reward_similarity():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(5, 4, 3))
    other = rng.normal(size=(5, 4, 3))
    C = reward_similarity([R, -R, 2 * R + 3, other])
    np.testing.assert_allclose(np.diag(C), 1.0, atol=1e-12)
    assert abs(C[0, 1] + 1) < 1e-12 and abs(C[0, 2] - 1) < 1e-12 and abs(C[1, 2] + 1) < 1e-12
    np.testing.assert_allclose(C, C.T, atol=1e-15)
    assert abs(C[0, 3]) < 0.6
    # a function of the context alone changes no ranking: 1 with per_context, less without
    shifted = R + rng.normal(size=(5, 4, 1))
    assert reward_similarity([R, shifted])[0, 1] < 0.99
    assert abs(reward_similarity([R, shifted], per_context=True)[0, 1] - 1) < 1e-12
    # a constant reward has no direction
    C = reward_similarity([R, np.full_like(R, 0.7)])
    assert np.isnan(C[1]).all() and np.isnan(C[:, 1]).all() and abs(C[0, 0] - 1) < 1e-12
    with pytest.raises(ValueError, match="one shape"):
        reward_similarity([R, R[:, :2]])


def test_mess3_rewards_differ():
    """How far apart the chosen rewards are on Mess3: -next_token is exactly anti-correlated; a cyclic
    shift of 3 tokens correlates exactly -1/2 (the centred P sums to 0 in every context); echo is close
    to next_token (Mess3 tends to repeat its last token) but not equal."""
    hmm = mess3(0.05, 0.85)
    tokens, _, beliefs = hmm.sample_with_beliefs(200, 16, np.random.default_rng(4))
    Qs = [
        action_values(hmm, make_reward("payoff", hmm, {"matrix": m.tolist(), "offset": o}), tokens, beliefs)
        for m, o in ((EYE, 1), (-EYE, 1), (SHIFT, 1), (EYE, 0))
    ]
    C = reward_similarity(Qs)
    assert abs(C[0, 1] + 1) < 1e-12
    assert abs(C[0, 2] + 0.5) < 1e-12 and 0.5 < C[0, 3] < 0.99
    # the Bayes-optimal next_token policy earns the next_token optimum and less than it under -next_token
    opt = np.eye(3)[Qs[0].argmax(-1)]
    np.testing.assert_allclose(expected_return(opt, Qs[0]), optimal_return(Qs[0]), atol=1e-12)
    assert (expected_return(opt, Qs[1]) < optimal_return(Qs[1])).all()
