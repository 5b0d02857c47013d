"""Gymnasium envs over hidden Markov processes: act on a token stream the agent cannot steer.

At reset the env samples one sequence of ``episode_len + lookahead`` tokens from the process, with
its hidden states and exact beliefs (``lookahead`` is what the reward needs to see past step t).
At step t the agent sees the last K emitted tokens ``x_{t-K+1}..x_t``, right-padded with pad id V
while fewer than K exist: with the default ``episode_len == K`` the observation at step t is the
prefix ``x_0..x_t`` of a fresh sequence, exactly what a pretrained causal model saw. The action
picks a token from the action set, and a named reward (:mod:`envs.rewards`: ``next_token``,
``joint_target``, ``implies``, ``reward_punish``, ``rare_next_token``) scores it against the
tokens that follow. The next token comes from the process whatever the action. An episode
terminates after ``episode_len`` steps (never truncates).

``shuffle_reward`` (the null task): each episode's targets come from an independent shadow sequence
drawn after the observed one from the env's own generator, so the reward keeps its distribution and
says nothing about the stream. Unlike the steered envs (whose shadows have their own generator), the
observed streams equal the task's for the same seed only in the first episode; nothing compares a
null with its task stream by stream (they are paired by seed, through the pretrained model), and
keeping the draws as they are keeps every stored null trial reproducible.

``info["belief"]`` is the exact belief P(state | x_0..x_t) that goes with the observation (from
the start of the episode, also when t + 1 > K). For compositions ``info["factor_beliefs"]`` maps
the factor index, as a string ("0", "1", ...: string keys let vector infos split per env), to
``hmm.factor_beliefs`` of that belief; for a mixture one more entry, the last, is the component
posterior. The info that ``step`` returns adds ``info["target"]``, the token the reward wanted for
the action just taken (-1: that step had no target).

How to run::

    env = SequenceEnv({"process": {"name": "mess3"}, "context": 8, "reward": "next_token"})
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

or ``gymnasium.make("rayexp/Sequence-v0", config=...)``; ``gymnasium.make_vec("rayexp/Sequence-v0",
num_envs=64, config=...)`` builds :class:`SequenceVectorEnv`, which steps all streams with numpy at
once. For Tune / RLlib use :func:`make_env` as the env creator: a config's ``env`` key (one of
:data:`ENV_KINDS`) picks these envs (``"sequence"``, the default), the active gated env of
:mod:`envs.active_env` (``"active_gated"``) or the outcome env of :mod:`envs.outcome_env`
(``"outcome"``), whose streams the agent steers.

What to expect: random actions earn 1/|actions| on ``next_token``; acting on ``argmax
hmm.next_token_probs(info["belief"])`` earns the most any policy can (about 0.67 on mess3(x=0.05,
a=0.85)). Measured on one busy core: the vector env ~250k env-steps/s at 64 streams, the single
env ~9k (when the sampling kernel itself is cheap; see envs._kernels).
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs import build_process
from envs.active_env import ActiveGatedEnv, ActiveGatedVectorEnv
from envs.env_config import ENV_KINDS, EnvConfig, config_seeded_reset, episode_lengths, window
from envs.outcome_env import OutcomeEnv, OutcomeVectorEnv
from envs.process import HMM
from envs.rewards import Reward, make_reward

ENV_ID = "rayexp/Sequence-v0"
ACTIVE_ENV_ID = "rayexp/ActiveGated-v0"
OUTCOME_ENV_ID = "rayexp/Outcome-v0"


def _draw(hmm: HMM, n: int, length: int, rng: np.random.Generator):
    """The one place sequences are sampled, so tests can swap in known sequences."""
    return hmm.sample_with_beliefs(n, length, rng)


def _sequence_config(config: dict | None) -> EnvConfig:
    cfg = EnvConfig.from_dict(config)
    if cfg.env != "sequence":
        raise ValueError(f"SequenceEnv runs env 'sequence'; got env={cfg.env!r} (use make_env)")
    return cfg


class _Streams:
    """``n`` independent episodes held as arrays; the single and vector envs both run on this."""

    def __init__(self, cfg: EnvConfig, n: int):
        self.hmm = build_process(cfg.process)
        self.K, self.episode_len = episode_lengths(cfg)
        self.reward: Reward = make_reward(cfg.reward, self.hmm, cfg.reward_params, cfg.action_tokens)
        if self.reward.ENV not in (None, "sequence"):
            raise ValueError(
                f"reward {cfg.reward!r} needs env: {self.reward.ENV} (it scores what the action causes, "
                "and a sequence env's stream ignores the actions)"
            )
        self.n = n
        self.shuffle = bool(cfg.shuffle_reward)
        self.length = self.episode_len + self.reward.lookahead
        self.pad = self.hmm.vocab_size
        S, L = self.hmm.n_states, self.length
        self.tokens = np.zeros((n, L), dtype=np.int64)
        self.beliefs = np.zeros((n, L, S))
        # a mixture's factor beliefs carry one extra entry, the component posterior
        self.factor_beliefs = [np.zeros((n, L, fb.shape[-1])) for fb in self.hmm.factor_beliefs(self.hmm.init[None])]
        self.targets = np.full((n, self.episode_len), -1, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)

    def reset(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        tokens, states, beliefs = _draw(self.hmm, len(rows), self.length, rng)
        self.tokens[rows] = tokens
        self.beliefs[rows] = beliefs
        if self.hmm.factors:
            for dst, src in zip(self.factor_beliefs, self.hmm.factor_beliefs(beliefs)):
                dst[rows] = src
        if self.shuffle:  # the null: targets of independent shadow sequences
            tokens, states, _ = _draw(self.hmm, len(rows), self.length, rng)
        self.targets[rows] = self.reward.targets(tokens, states)[:, : self.episode_len]
        self.t[rows] = 0

    def observe(self) -> np.ndarray:
        return window(self.tokens, self.t, self.K, self.pad)

    def step(self, actions: np.ndarray, rows: np.ndarray):
        """Score ``actions`` (action indices, one per row) and advance those rows."""
        if (self.t[rows] >= self.episode_len).any():
            raise RuntimeError("step() after the episode ended; call reset() first")
        target = self.targets[rows, self.t[rows]]  # (k,)
        reward = self.reward.rewards(self.reward.action_tokens[actions], target)  # (k,)
        self.t[rows] += 1
        return reward, target, self.t[rows] >= self.episode_len

    def info(self, rows) -> dict:
        t = self.t[rows]
        info = {"belief": self.beliefs[rows, t]}
        if self.hmm.factors:
            info["factor_beliefs"] = {str(i): fb[rows, t] for i, fb in enumerate(self.factor_beliefs)}
        return info


class SequenceEnv(gym.Env):
    """One stream; see the module docstring. ``config``: the keys of :class:`EnvConfig`."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, config: dict | None = None):
        self.config = _sequence_config(config)
        self._streams = _Streams(self.config, 1)
        self.hmm = self._streams.hmm
        self.reward_fn = self._streams.reward
        self.action_tokens = self.reward_fn.action_tokens
        self.observation_space = gym.spaces.Box(0, self.hmm.vocab_size, shape=(self._streams.K,), dtype=np.int64)
        self.action_space = gym.spaces.Discrete(len(self.action_tokens))
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        config_seeded_reset(self, seed, super().reset)
        self._streams.reset(np.array([0]), self.np_random)
        return self._streams.observe()[0], _unbatch(self._streams.info(np.array([0])))

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must lie in 0..{self.action_space.n - 1}; got {action!r}")
        rows = np.array([0])
        reward, target, done = self._streams.step(np.asarray([action], dtype=np.int64), rows)
        info = _unbatch(self._streams.info(rows))
        info["target"] = int(target[0])
        return self._streams.observe()[0], float(reward[0]), bool(done[0]), False, info


class SequenceVectorEnv(VectorEnv):
    """``num_envs`` streams stepped together with numpy; same config as :class:`SequenceEnv`.

    Next-step autoreset (gymnasium's default, what RLlib expects): the step after an episode ends
    resets that env, returns its first observation with reward 0, and ignores its action. All envs
    that reset together draw their sequences in one batched call.
    """

    metadata: ClassVar[dict] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, config: dict | None = None):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1; got {num_envs!r}")
        self.config = _sequence_config(config)
        self.num_envs = int(num_envs)
        self._streams = _Streams(self.config, self.num_envs)
        self.hmm = self._streams.hmm
        self.reward_fn = self._streams.reward
        self.action_tokens = self.reward_fn.action_tokens
        self.single_observation_space = gym.spaces.Box(0, self.hmm.vocab_size, shape=(self._streams.K,), dtype=np.int64)
        self.single_action_space = gym.spaces.Discrete(len(self.action_tokens))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        config_seeded_reset(self, seed, super().reset)
        mask = (options or {}).get("reset_mask")
        rows = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask)
        self._streams.reset(rows, self.np_random)
        self._autoreset[rows] = False
        return self._streams.observe(), self._vector_info(np.ones(self.num_envs, dtype=bool), None)

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        if actions.min() < 0 or actions.max() >= self.single_action_space.n:
            raise ValueError(f"actions must lie in 0..{self.single_action_space.n - 1}; got {actions}")
        resetting = self._autoreset.copy()
        stepping = np.flatnonzero(~resetting)
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        targets = np.full(self.num_envs, -1, dtype=np.int64)
        if stepping.size:
            r, tgt, done = self._streams.step(actions[stepping], stepping)
            rewards[stepping], targets[stepping], terminated[stepping] = r, tgt, done
        if resetting.any():
            self._streams.reset(np.flatnonzero(resetting), self.np_random)
        self._autoreset = terminated.copy()
        obs = self._streams.observe()
        return obs, rewards, terminated, np.zeros(self.num_envs, dtype=bool), self._vector_info(~resetting, targets)

    def _vector_info(self, stepped: np.ndarray, targets: np.ndarray | None) -> dict:
        """Info laid out as gymnasium's SyncVectorEnv would batch the single envs' infos."""
        every = np.ones(self.num_envs, dtype=bool)
        info = self._streams.info(np.arange(self.num_envs))
        out = {"belief": info["belief"], "_belief": every}
        if "factor_beliefs" in info:
            fb = dict(info["factor_beliefs"])
            fb.update({f"_{k}": every for k in info["factor_beliefs"]})
            out["factor_beliefs"], out["_factor_beliefs"] = fb, every
        if targets is not None and stepped.any():
            out["target"], out["_target"] = targets, stepped.copy()
        return out


def _unbatch(info: dict) -> dict:
    return {k: (_unbatch(v) if isinstance(v, dict) else v[0]) for k, v in info.items()}


#: env kind -> (single env, vector env); RLlib asks for the vector one (see make_env)
_ENVS = {
    "sequence": (SequenceEnv, SequenceVectorEnv),
    "active_gated": (ActiveGatedEnv, ActiveGatedVectorEnv),
    "outcome": (OutcomeEnv, OutcomeVectorEnv),
}


def _kind(config: dict) -> str:
    kind = config.get("env", "sequence")
    if kind not in ENV_KINDS:
        raise ValueError(f"env config 'env' must be one of {list(ENV_KINDS)}; got {kind!r}")
    return kind


def action_tokens(config: dict) -> list[int]:
    """The action set a config resolves to (the reward's default when ``action_tokens`` is not
    given, which for ``env: active_gated`` is ``rare_next_token``'s and for ``env: outcome`` the outcome
    process's action tokens), e.g. for an RL module that must restrict its logits to the same tokens."""
    kind = _kind(config)
    if kind != "sequence":
        return _ENVS[kind][0](config).action_tokens.tolist()
    cfg = EnvConfig.from_dict(config)
    return make_reward(
        cfg.reward, build_process(cfg.process), cfg.reward_params, cfg.action_tokens
    ).action_tokens.tolist()


def make_env(config: dict | None = None):
    """Env creator for ``ray.tune.register_env``. ``config["env"]`` (one of :data:`ENV_KINDS`, default
    "sequence") picks the env; when RLlib asks for ``num_envs`` (its ``vector_entry_point`` mode) the
    result is that env's vector form (:class:`SequenceVectorEnv`, :class:`ActiveGatedVectorEnv`,
    :class:`OutcomeVectorEnv`: all next-step autoreset), else the single env."""
    config = dict(config or {})
    num_envs = config.pop("num_envs", None)
    single, vector = _ENVS[_kind(config)]
    return single(config) if num_envs is None else vector(num_envs, config)


def _register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(
            id=ENV_ID,
            entry_point="envs.gym_env:SequenceEnv",
            vector_entry_point="envs.gym_env:SequenceVectorEnv",
        )
    if ACTIVE_ENV_ID not in gym.registry:
        gym.register(
            id=ACTIVE_ENV_ID,
            entry_point="envs.active_env:ActiveGatedEnv",
            vector_entry_point="envs.active_env:ActiveGatedVectorEnv",
        )
    if OUTCOME_ENV_ID not in gym.registry:
        gym.register(
            id=OUTCOME_ENV_ID,
            entry_point="envs.outcome_env:OutcomeEnv",
            vector_entry_point="envs.outcome_env:OutcomeVectorEnv",
        )


_register()

__all__ = [
    "ACTIVE_ENV_ID",
    "ENV_ID",
    "ENV_KINDS",
    "OUTCOME_ENV_ID",
    "ActiveGatedEnv",
    "ActiveGatedVectorEnv",
    "EnvConfig",
    "OutcomeEnv",
    "OutcomeVectorEnv",
    "SequenceEnv",
    "SequenceVectorEnv",
    "action_tokens",
    "make_env",
]
