"""The ``rare`` analysis (the trial adapter) on planted policies whose answers are known by hand.

Stand-in models read B's hidden state exactly, from B's own tokens filtered through B's Mess3 matrices
here (not through the gated process or the analysis' beliefs), so each metric has an answer computed
in this file: a probability-matching tracker of B, a greedy Bayes policy, a policy blind to B; a
seeker of the trigger and a policy that never seeks it; features holding B's belief only where the
trigger was just emitted. The answers catch a swapped pre/post, a capability read on the wrong
positions, a skill against the wrong reference and a trigger rate of the wrong token."""

import numpy as np
import pytest
import torch
from streams import MESS3

from envs.processes import build_process
from rayexp.studies.rare.rare_analysis import RareParams, rare

TRIGGER, A_TOKENS, B_TOKENS = 3, [0, 1, 2], [4, 5, 6]
ENV = {  # sweeps/rare.yaml's RL env, resolved (its seek_rare task)
    "process": {
        "name": "gated",
        "a": {"name": "rare_token", "base": MESS3, "eps": 0.001},
        "b": MESS3,
        "trigger": TRIGGER,
    },
    "context": 10,
    "episode_len": 10,
    "reward": "rare_next_token",
    "reward_params": {"factor": 1, "rare": 1.0, "common": 0.0},
    "seed": 1,
    "env": "active_gated",
    "action_tokens": list(range(7)),
}


def b_filter(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, 3) B's belief after x_t and (N, L, 3) P(B's next token = 4, 5, 6 | B's tokens up to t):
    B's Mess3 filter run on B's own tokens (B moves only when it speaks)."""
    b = build_process(MESS3)
    tokens = np.asarray(tokens)
    belief = np.tile(b.init, (len(tokens), 1))  # (N, 3)
    beliefs, nxt = np.empty((*tokens.shape, 3)), np.empty((*tokens.shape, 3))
    for t in range(tokens.shape[1]):
        for y in range(3):
            spoke = tokens[:, t] == B_TOKENS[y]
            belief[spoke] = belief[spoke] @ b.T[y]
        belief /= belief.sum(1, keepdims=True)
        beliefs[:, t] = belief
        nxt[:, t] = np.stack([(belief @ b.T[y]).sum(1) for y in range(3)], axis=1)
    return beliefs, nxt


def b_next(tokens: np.ndarray) -> np.ndarray:
    return b_filter(tokens)[1]


class Planted(torch.nn.Module):
    """A stand-in transformer: at a trigger (B speaks next) it gives ``at_trigger(p)`` over the 7 tokens
    from B's exact next-token probabilities p; elsewhere ``elsewhere`` (7,). Its residual stream holds B's
    filtered state where the last token is the trigger and zeros elsewhere (``features="at"``), zeros
    everywhere (``"none"``) or B's state under noise everywhere (``"noisy"``)."""

    def __init__(self, at_trigger, elsewhere, features="none"):
        super().__init__()
        self.hook_names = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.at_trigger, self.elsewhere, self.kind = at_trigger, np.asarray(elsewhere, dtype=float), features
        self.inputs: list[np.ndarray] = []

    def forward(self, x):
        tokens = x.cpu().numpy()
        self.inputs.append(tokens)
        probs = np.broadcast_to(self.elsewhere, (*tokens.shape, 7)).copy()
        at = tokens == TRIGGER
        probs[at] = self.at_trigger(b_next(tokens)[at])
        return torch.as_tensor(np.log(np.maximum(probs, 1e-300)))  # (N, L, 7) float64

    def run_with_cache(self, x, names=None):
        tokens = x.cpu().numpy()
        n, L = tokens.shape
        if self.kind == "noisy":  # B's belief everywhere, under noise: partly readable
            feats = np.random.default_rng(7).standard_normal((n, L, 4)) * 0.4
            feats[..., :3] += b_filter(tokens)[0]
        else:
            feats = np.zeros((n, L, 4))
            if self.kind == "at":
                belief, at = b_filter(tokens)[0], tokens == TRIGGER
                feats[at, :3] = belief[at]
        cache = {name: torch.as_tensor(feats) for name in names}
        return self(x), cache


def one_hot(i):
    return np.eye(7)[i]


SEEK, NEVER = one_hot(TRIGGER), one_hot(0)


def matching(p):  # names B's token with B's own probabilities: tracks B, below the ceiling
    return np.c_[np.zeros((len(p), 4)), p]


def greedy(p):  # the Bayes argmax among B's tokens: the ceiling
    return np.eye(7)[4 + np.argmax(p, axis=1)]


def blind(p):  # 60 % spread evenly over B's tokens, 40 % on A's token 0: knows B speaks, not what it says
    return np.tile(0.4 * one_hot(0) + 0.2 * (one_hot(4) + one_hot(5) + one_hot(6)), (len(p), 1))


class Artifacts:
    env_config = ENV

    def __init__(self, path):
        self.path = path  # {iteration: model}; iteration 0 is the model PPO started from

    def random_init(self):
        return Planted(blind, NEVER, features="noisy")

    def ppo_iterations(self):
        return sorted(i for i in self.path if i > 0)

    def policy(self, iteration):
        return self.path[iteration]


def test_rare_scores_planted_policies_against_b_filtered_by_hand():
    pre = Planted(blind, NEVER)  # blind to B, never seeks it, nothing about B in its residual stream
    mid = Planted(greedy, SEEK)
    post = Planted(matching, SEEK, features="at")
    params = RareParams(n_episodes=10, n_seq=600, eval_eps=0.2, seed=3)
    got = rare(Artifacts({0: pre, 10: mid, 20: post}), params).metrics

    # the evaluation stream, as the policies were shown it, and its trigger positions once B has spoken,
    # found here from the tokens alone
    (tokens,) = [x for x in post.inputs if x.shape == (params.n_seq, ENV["context"])][:1]
    spoke = np.cumsum(np.isin(tokens, B_TOKENS), axis=1) > 0
    at = spoke & (tokens == TRIGGER)
    p = b_next(tokens)[at]  # (n_at, 3): B speaks next, with these probabilities
    assert got["positions/at"] == at.sum() > 100
    ceiling, chance = p.max(1).mean(), 1 / 3  # the Bayes hit rate; a guess among B's three tokens
    assert got["b_ceiling"] == pytest.approx(ceiling, rel=1e-9) and got["b_chance"] == pytest.approx(chance)
    gap = ceiling - chance

    # post: probability matching on B, exactly its expected hit rate sum p^2; its argmax is Bayes'
    match = (p**2).sum(1).mean()
    assert got["post/b_accuracy"] == pytest.approx(match, rel=1e-6)
    assert got["post/capability"] == pytest.approx((match - chance) / gap, rel=1e-6)
    assert 0.2 < got["post/capability"] < 0.9  # not a trivial 0 or 1
    assert got["post/capability_greedy"] == pytest.approx(1.0, abs=1e-9)
    assert got["post/tracking"] == pytest.approx(got["post/capability"], rel=1e-9)  # all its mass on B
    assert got["post/b_mass"] == pytest.approx(1.0)
    # pre: blind to B. Below a guess as a whole policy (40 % on a token B never says), 0 as a tracker of B,
    # and its argmax names token 0, which never pays at a trigger
    assert got["pre/capability"] == pytest.approx((0.6 * chance - chance) / gap, rel=1e-6)
    assert got["pre/tracking"] == pytest.approx(0.0, abs=1e-9)
    assert got["pre/capability_greedy"] == pytest.approx(-chance / gap, rel=1e-6)
    assert got["pre/b_mass"] == pytest.approx(0.6)
    assert got["delta/capability"] == pytest.approx((match - 0.6 * chance) / gap, rel=1e-6)
    # the greedy Bayes policy in between is the best checkpoint: the max is its 1, the post the last one's
    assert got["max/capability"] == pytest.approx(1.0, abs=1e-9)

    # seeking, in the env: the seeker triggers whenever A is due and names a B token when B is, so its
    # actions alternate, 5 triggers in 10 steps whatever the stream; the other never names the trigger
    assert got["post/trigger_rate"] == 0.5 and got["max/trigger_rate"] == 0.5
    assert got["pre/trigger_rate"] == 0.0 and got["delta/trigger_rate"] == 0.5

    # B's belief: post's residual stream holds it exactly at the trigger and nowhere before one; pre's holds
    # nothing; the random-init reference holds it under noise everywhere, so it reads part of it
    assert got["post/r2_B/at"] > 0.99 and got["post/skill_B/at"] > 0.99
    assert -0.05 < got["post/r2_B/before"] < 0.01  # no features there: the probe predicts the mean
    assert -0.05 < got["pre/r2_B/at"] < 0.01 and -0.05 < got["pre/r2_B/before"] < 0.01
    for k in ("seen", "before", "at"):
        assert 0.4 < got[f"r2_B_random_init/{k}"] < 0.8, k
        # skill is against the random-init model on the same held-out positions: 1 - (1 - R2) / (1 - R2_init)
        for phase in ("pre", "post"):
            skill = 1 - (1 - got[f"{phase}/r2_B/{k}"]) / (1 - got[f"r2_B_random_init/{k}"])
            assert got[f"{phase}/skill_B/{k}"] == pytest.approx(skill, rel=1e-9, abs=1e-12), (phase, k)
    assert got["pre/skill_B/at"] < -1  # less readable than the reference's noisy copy
    assert got["delta/skill_B/at"] == pytest.approx(got["post/skill_B/at"] - got["pre/skill_B/at"])


def test_a_nulls_policy_is_scored_on_the_real_reward_not_its_shadow():
    """A shuffled-reward null's trial is scored at the task: its env config, shuffle and all, must give
    what the task's gives, exactly. The greedy Bayes seeker names B's token at every other step; on the real
    reward it hits well above a guess's 1/3 there (0.56 over these episodes, B's history short at first),
    while a shadow stream pays it a guess's rate (0.36 here, were the shuffle kept)."""
    tracker = Planted(greedy, SEEK)
    params = RareParams(n_episodes=40, n_seq=50, seed=1)

    class Null(Artifacts):
        env_config = ENV | {"shuffle_reward": True}

    real = rare(Artifacts({0: tracker, 10: tracker}), params).metrics
    null = rare(Null({0: tracker, 10: tracker}), params).metrics
    assert null["post/reward"] == real["post/reward"] and null["post/trigger_rate"] == real["post/trigger_rate"] == 0.5
    assert 0.5 * 0.45 < real["post/reward"] < 0.5 * 0.75  # half the steps name B, tracking it
