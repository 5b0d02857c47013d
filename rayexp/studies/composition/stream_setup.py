"""One composition trial's stream, sampled once: the sequences, everything exact about them (targets, the
joint target, each factor's observer, the 2x2 history swaps) and the held-out split, with the reward
ceilings every policy is scored against. :mod:`.composition_analysis` and :mod:`.geometry_analysis` score
models on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.process import HMM
from envs.rewards import Reward, make_reward
from rayexp.exact import ceilings, targets
from rayexp.probes import split_sequences
from rayexp.studies.composition import interaction, resolution


@dataclass
class Setup:
    """The sampled stream and everything exact about it that every policy is scored against."""

    hmm: HMM
    reward: Reward
    tokens: np.ndarray  # (N, L)
    P: np.ndarray  # (N, L, A) exact P(target = action k)
    P_joint: np.ndarray | None  # (N, L, A) the stream's joint target on these actions (None: no two factors)
    p_next: np.ndarray  # (N, L, V) exact next-token distribution
    single: list[np.ndarray]  # per factor, its observer's P (N, L, A)
    cells: list[np.ndarray] | None  # tokens of (a, b'), (a', b), (a', b'); None without a fixed layout
    train: np.ndarray
    test: np.ndarray


def task_of(env: dict, hmm: HMM) -> tuple[Reward, int]:
    """The RL task a trial's env config (``artifacts.env_config``) sets on its stream ``hmm``: the reward,
    and how many steps are scored, the prefix ones (the context, or a shorter episode)."""
    reward = make_reward(env["reward"], hmm, env.get("reward_params") or {}, env.get("action_tokens"))
    return reward, min(int(env["context"]), int(env.get("episode_len") or env["context"]))


def make_setup(hmm: HMM, reward: Reward, length: int, n_seq: int, seed: int) -> Setup:
    """``n_seq`` sequences of ``length`` tokens (seeded), their exact targets, the 2x2 cells and the split."""
    rng = np.random.default_rng(seed)
    tokens, _, beliefs = hmm.sample_with_beliefs(n_seq, length, rng)  # (N, L), _, (N, L, S)
    P = targets.target_probs(hmm, reward, beliefs, tokens)
    single: list[np.ndarray] = []
    if hmm.layout is not None and not hmm.layout.exclusive:
        single = [targets.single_factor_probs(hmm, reward, beliefs, i) for i in range(len(hmm.factors))]
    a_from, b_from = interaction.partners(n_seq, rng)
    own = np.arange(n_seq)
    pair = tuple(reward.params.get("factors", (0, 1)))  # the joint target's two factors, else the first two
    cells = None  # a primitive process has no factors; a mixture or gated one no fixed slots per factor
    if hmm.layout is not None and len(hmm.factors) >= 2:
        try:
            cells = [
                interaction.swap_histories(hmm.layout, tokens, a, b, pair)
                for a, b in ((own, b_from), (a_from, own), (a_from, b_from))
            ]
        except ValueError:
            cells = None
    train, test = split_sequences(n_seq, 0.5, rng)
    P_joint = joint_target_probs(hmm, reward, beliefs, P)
    return Setup(hmm, reward, tokens, P, P_joint, hmm.next_token_probs(beliefs), single, cells, train, test)


def joint_target_probs(hmm: HMM, reward: Reward, beliefs: np.ndarray, P: np.ndarray) -> np.ndarray | None:
    """(N, L, A) the stream's joint target on ``reward``'s actions: ``P`` itself on a joint-target task,
    else the default joint target of the first two factors (:func:`.resolution.joint_onto_actions`);
    None where the stream has no such target (fewer than two factors, or factors that stop emitting)."""
    if reward.name == "joint_target":
        return P
    try:
        joint = make_reward("joint_target", hmm)
    except ValueError:
        return None
    return resolution.joint_onto_actions(targets.target_probs(hmm, joint, beliefs), P.shape[-1])


def ceiling_values(s: Setup, lookup_k: list[int]) -> dict[str, np.ndarray]:
    """Per-sequence ceilings (N,) (lookups: per held-out sequence)."""
    out = {"optimum": ceilings.optimum(s.P).mean(1), "uniform": ceilings.uniform(s.P).mean(1)}
    for i, Pi in enumerate(s.single):
        out[f"single_factor{i}"] = ceilings.greedy_reward(Pi, s.P).mean(1)
    if s.single:
        out["single_per_phase"] = ceilings.per_phase_single(s.single, s.P).mean(1)
    for k in lookup_k:
        keys = ceilings.lookup_keys(s.tokens, k, pad=s.hmm.vocab_size)
        out[f"lookup_k{k}"] = ceilings.lookup_reward(keys, s.P, s.train, s.test).mean(1)
    return out


def best_single(ceil: dict[str, np.ndarray]) -> np.ndarray | None:
    singles = [v for k, v in ceil.items() if k.startswith("single_factor")]  # not per phase: the old margin
    return max(singles, key=lambda v: float(v.mean())) if singles else None
