"""What an env config means, shared by every env in :mod:`envs.gym_env`: the keys (validated once,
unknown keys are an error) and the observation window they imply."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from envs.process import HMM

#: the env kinds a config's ``env`` key may name (``envs.gym_env.make_env`` builds each)
ENV_KINDS = ("sequence", "active_gated", "outcome")


@dataclass(frozen=True)
class EnvConfig:
    """Env settings; ``EnvConfig.from_dict`` rejects unknown keys."""

    process: dict | HMM
    """Process spec for ``envs.build_process`` (e.g. ``{"name": "mess3"}``) or an HMM."""
    env: str = "sequence"
    """Which env runs the config, one of :data:`ENV_KINDS`: ``"sequence"`` (a stream the agent cannot
    steer: ``SequenceEnv`` / ``SequenceVectorEnv``), ``"active_gated"`` (a gated process whose trigger
    the agent can emit: ``ActiveGatedEnv``) or ``"outcome"`` (an outcome process whose actions the agent
    takes and whose outcomes it is paid for: ``envs.outcome_env.OutcomeEnv``, each step three tokens);
    ``envs.gym_env.make_env`` dispatches on it."""
    context: int = 8
    """K: observation window length (>= 1)."""
    episode_len: int | None = None
    """Steps per episode (>= 1); default K, so each episode is one pretraining-length sequence (``env:
    outcome``: the rounds whose three tokens fit in K after the first, ``max(1, (K - 1) // 3)``)."""
    reward: str = "next_token"
    """Name in ``envs.rewards.REWARDS``."""
    reward_params: dict = field(default_factory=dict)
    """Parameters of that reward (each reward documents its own)."""
    action_tokens: list[int] | None = None
    """Token ids the actions map to (action i -> action_tokens[i]); default chosen by the reward (all tokens)."""
    shuffle_reward: bool = False
    """The null task: score each action against the targets of an independent sequence of the same
    process (drawn alongside), so the reward keeps its distribution but carries no information about
    the right action at this context; what PPO then changes is drift from PPO itself. In the active
    gated env the independent sequence is steered by the same actions (``ActiveGatedEnv``); in the
    outcome env the action is paid the outcome it would earn in an independent base stream, while the
    agent sees its real outcomes (``OutcomeEnv``)."""
    seed: int | None = None
    """Seed for the first reset when ``reset`` is not given one (leave None under RLlib, which seeds resets)."""
    copy_seeds: str = "offset"
    """How ``reset(seed=s)`` seeds the copies of an env the agent steers (``CopiesVectorEnv``):
    ``"offset"``, copy i from ``s + i`` as gymnasium does; ``"spawn"``, copy i from child i of
    ``numpy.random.SeedSequence(s)``. RLlib resets runner w with ``seed + w``, so with several env
    runners offsets collide (runner w's copy i+1 replays runner w+1's copy i); rayexp.ppo asks for
    ``"spawn"`` there. The streamed sequence env draws all its rows from one generator and ignores it."""

    @classmethod
    def from_dict(cls, config: dict | None) -> EnvConfig:
        config = dict(config or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(f"unknown env config keys {unknown}; valid: {names}")
        if "process" not in config:
            raise ValueError("env config needs 'process' (a process spec dict or an HMM)")
        if config.get("copy_seeds", "offset") not in ("offset", "spawn"):
            raise ValueError(f"env config 'copy_seeds' must be 'offset' or 'spawn'; got {config['copy_seeds']!r}")
        if config.get("env", "sequence") not in ENV_KINDS:
            raise ValueError(f"env config 'env' must be one of {list(ENV_KINDS)}; got {config['env']!r}")
        return cls(**config)


def shadow_generator(np_random: np.random.Generator) -> np.random.Generator:
    """A shuffled-reward null's shadow stream generator: a child of the env's own (so one seed gives
    the same shadow), drawn apart from it (so the observed stream is the task's, draw for draw)."""
    return np.random.default_rng(np_random.bit_generator.seed_seq.spawn(1)[0])


def real_reward(config: dict) -> dict:
    """An env config without its null's ``shuffle_reward``: the same env, paying its real reward (what
    M_A is trained on, what negation retrains on, what a null policy is scored on at the task)."""
    return {k: v for k, v in config.items() if k != "shuffle_reward"}


def config_seeded_reset(env, seed: int | None, parent_reset) -> None:
    """Seed ``env``'s reset: the caller's seed, else ``env.config.seed`` on the very first reset (RLlib
    seeds resets itself; a direct user gets a reproducible stream from the config alone).
    ``parent_reset`` is the base class's ``reset`` (gymnasium's Env or VectorEnv)."""
    if seed is None and not env._seeded:
        seed = env.config.seed
    parent_reset(seed=seed)
    if seed is not None:
        env.action_space.seed(seed)
    env._seeded = True


def episode_lengths(cfg: EnvConfig) -> tuple[int, int]:
    """(K, episode_len) of a config, validated."""
    K = cfg.context
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"env config 'context' (K) must be an int >= 1; got {K!r}")
    T = K if cfg.episode_len is None else cfg.episode_len
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"env config 'episode_len' must be an int >= 1; got {T!r}")
    return int(K), int(T)


def window(tokens: np.ndarray, t: np.ndarray, K: int, pad: int) -> np.ndarray:
    """(n, L) tokens, (n,) current index -> (n, K): tokens up to t, the last K of them, right-padded."""
    t = t[:, None]  # (n, 1)
    pos = np.maximum(t + 1 - K, 0) + np.arange(K)  # (n, K)
    window = np.take_along_axis(tokens, np.minimum(pos, tokens.shape[1] - 1), axis=1)  # (n, K)
    return np.where(pos <= t, window, pad)


def check_step(env, action) -> None:
    """The checks every env's ``step`` starts with: the action is in the action space and the episode
    has not ended (``env._t`` steps taken of ``env.episode_len``)."""
    if not env.action_space.contains(action):
        raise ValueError(f"action must lie in 0..{env.action_space.n - 1}; got {action!r}")
    if env._t >= env.episode_len:
        raise RuntimeError("step() after the episode ended; call reset() first")
