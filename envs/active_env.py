"""The rare-capability env: a gated process whose rare factor the agent can summon (000 §1.5.3).

Same config keys, observation, action and episode layout as :class:`envs.gym_env.SequenceEnv`
(``env: "active_gated"``), but here the agent steers the stream: emitting the gate's trigger hands
the next step to the rare factor. :class:`ActiveGatedVectorEnv` runs ``num_envs`` copies under
gymnasium's vector API for RLlib.

How to run::

    env = ActiveGatedEnv({"process": {"name": "gated", "a": {"name": "mess3"}, "b": {"name": "rrxor"},
                                      "trigger": 0}, "context": 8})
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

or ``envs.gym_env.make_env({..., "env": "active_gated", "num_envs": 4})`` for the vector form.

What to expect: under the default reward (``rare_next_token``, ``common=0``) a policy that never
emits the trigger is paid only when A happens to emit it; one that seeks it and then predicts B
earns several times more (tests/test_gym_env.py measures both).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from envs.env_config import (
    EnvConfig,
    check_step,
    config_seeded_reset,
    episode_lengths,
    shadow_generator,
    window,
)
from envs.layout import GatedLayout
from envs.processes import build_process
from envs.rewards import make_reward


class ActiveGatedEnv(gym.Env):
    """The rare-capability env: a gated process whose rare factor B the agent can summon.

    Config as :class:`envs.gym_env.SequenceEnv` (``env`` defaults to "active_gated" here), with
    ``process`` a ``gated(A, B, trigger)`` spec. Same observation, actions and episode layout, with
    one difference: choosing the trigger token (which must be in the action set) *emits* it whenever
    A is the one about to emit, so the next token after that is B's; any other action, or the
    trigger while B is due, leaves the process to emit its own token. Under the passive stream B
    shows up only after A happens to emit the trigger, so a policy sees (and can be paid for) B only
    if it seeks it. Rewards must score the next token only (``next_token``, ``rare_next_token``,
    ``reward_punish``). The default, ``rare_next_token`` with ``common=0``, pays only for correct
    predictions of B's tokens, so with discount > 0 the optimal policy triggers and then predicts B
    (under ``next_token`` a summoned trigger counts as a correct prediction, which pays for seeking
    itself). ``info["belief"]`` stays exact under the interventions (it filters with the forced
    dynamics); ``info["forced"]`` says whether the agent's trigger was emitted at that step.

    ``shuffle_reward`` (the null task): each action is scored against a *shadow* stream, an
    independent run of the same process that the same actions steer (the agent's trigger summons the
    shadow's B too) but that the agent never sees. The reward keeps its distribution under any policy,
    seeking included, and carries no information about which token is right at this context: it pays
    for summoning B and guessing among B's tokens, never for tracking B. What the null learns is what
    seeking plus a context-blind guess gives; the real task's excess over it is what tracking B adds.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        config.setdefault("env", "active_gated")
        config.setdefault("reward", "rare_next_token")
        self.config = EnvConfig.from_dict(config)
        if self.config.env != "active_gated":
            raise ValueError(f"ActiveGatedEnv runs env 'active_gated'; got env={self.config.env!r} (use make_env)")
        hmm = self.hmm = build_process(self.config.process)
        if not isinstance(hmm.layout, GatedLayout):
            raise ValueError(f"ActiveGatedEnv needs a gated process; got {hmm.name!r}")  # noqa: TRY004 (config errors are ValueErrors by contract)
        self.K, self.episode_len = episode_lengths(self.config)
        self.reward_fn = make_reward(self.config.reward, hmm, self.config.reward_params, self.config.action_tokens)
        if not self.reward_fn.ONLINE:
            raise ValueError(
                f"ActiveGatedEnv: reward {self.config.reward!r} looks beyond the next token, which the agent "
                "steers here; use next_token, rare_next_token or reward_punish"
            )
        self.action_tokens = self.reward_fn.action_tokens
        self.trigger = hmm.layout.trigger_token
        if self.trigger not in self.action_tokens:
            raise ValueError(
                f"ActiveGatedEnv: the trigger token {self.trigger} is not in action_tokens "
                f"{self.action_tokens.tolist()}, so the agent could never seek the rare factor"
            )
        S, V = hmm.n_states, hmm.vocab_size
        p = hmm.T[self.trigger].sum(axis=1)  # (S,) P(trigger | state)
        can = p > 0
        forced = hmm.T.copy()  # (V, S, S) dynamics when the agent emits the trigger
        forced[:, can, :] = 0.0
        forced[self.trigger, can, :] = hmm.T[self.trigger, can, :] / p[can, None]
        self._dynamics = (hmm.T, forced)
        self._cdf = [np.cumsum(d.transpose(1, 0, 2).reshape(S, V * S), axis=1) for d in self._dynamics]  # (S, V*S)
        self._can_force = can
        self.observation_space = gym.spaces.Box(0, V, shape=(self.K,), dtype=np.int64)
        self.action_space = gym.spaces.Discrete(len(self.action_tokens))
        self._seeded = False

    def _draw(self, state: int, seek: bool, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """(token, next state) from ``state``, the trigger forced where ``seek`` and A is due."""
        cdf = self._cdf[int(seek)][state]
        u = (rng or self.np_random).random()
        k = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), cdf.size - 1)
        return divmod(k, self.hmm.n_states)

    def _emit(self, seek: bool) -> int:
        x, self._state = self._draw(self._state, seek)
        eta = self._belief @ self._dynamics[int(seek)][x]  # (S,)
        self._belief = eta / eta.sum()
        return x

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        config_seeded_reset(self, seed, super().reset)
        self._tokens = np.zeros((1, self.episode_len + 1), dtype=np.int64)
        self._t = 0
        self._state = int(self.np_random.choice(self.hmm.n_states, p=self.hmm.init))
        self._belief = self.hmm.init.copy()
        self._tokens[0, 0] = self._emit(False)
        if self.config.shuffle_reward:
            # the null's shadow stream: same process, steered by the same actions, its own generator
            self._shadow_rng = shadow_generator(self.np_random)
            self._shadow_state = int(self._shadow_rng.choice(self.hmm.n_states, p=self.hmm.init))
            self._shadow_token, self._shadow_state = self._draw(self._shadow_state, False, self._shadow_rng)
        return self._observe(), self._info()

    def step(self, action):
        check_step(self, action)
        token = int(self.action_tokens[action])
        forced = token == self.trigger and bool(self._can_force[self._state])
        x = self._emit(token == self.trigger)
        self._t += 1
        self._tokens[0, self._t] = x
        pair = self._tokens[:, self._t - 1 : self._t + 1]  # (1, 2)
        if self.config.shuffle_reward:
            y, self._shadow_state = self._draw(self._shadow_state, token == self.trigger, self._shadow_rng)
            pair, self._shadow_token = np.array([[self._shadow_token, y]]), y
        target = self.reward_fn.targets(pair, np.zeros((1, 3), dtype=np.int64))[:, 0]  # (1,)
        reward = float(self.reward_fn.rewards(np.array([token]), target)[0])
        info = self._info()
        info["target"], info["forced"] = int(target[0]), forced
        return self._observe(), reward, self._t >= self.episode_len, False, info

    def _observe(self) -> np.ndarray:
        return window(self._tokens, np.array([self._t]), self.K, self.hmm.vocab_size)[0]

    def _info(self) -> dict:
        fb = self.hmm.factor_beliefs(self._belief)
        return {"belief": self._belief.copy(), "factor_beliefs": {str(i): b for i, b in enumerate(fb)}}


class CopiesVectorEnv(SyncVectorEnv):
    """``num_envs`` copies of ``ENV`` (an env the agent steers) under gymnasium's vector API, for RLlib.

    The agent steers each stream, so unlike :class:`envs.gym_env.SequenceVectorEnv` there is no
    batched sampling to share, and gymnasium's own SyncVectorEnv steps the copies. Autoreset is
    next-step, as in SequenceVectorEnv (what RLlib's env runner expects). Copy i seeds its first
    reset from seed i spawned from the config's seed (``numpy.random.SeedSequence``), so copies
    never replay each other's streams and one config gives the same rollouts; ``reset(seed=s)``
    seeds copy i with ``s + i`` as gymnasium does, or with child i of ``SeedSequence(s)`` under
    ``copy_seeds: spawn`` (what several RLlib env runners need, see ``EnvConfig.copy_seeds``). The
    process is built once and shared.
    """

    ENV: ClassVar[type[gym.Env]]
    KIND: ClassVar[str]

    def __init__(self, num_envs: int, config: dict | None = None):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1; got {num_envs!r}")
        config = dict(config or {})
        cfg = EnvConfig.from_dict(dict(config, env=config.get("env", self.KIND)))
        config["process"] = build_process(cfg.process)
        seeds = spawn_seeds(cfg.seed, int(num_envs))
        fns = [functools.partial(self.ENV, dict(config, seed=s)) for s in seeds]
        super().__init__(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
        self.config = self.envs[0].config
        self.hmm = self.envs[0].hmm
        self.reward_fn = self.envs[0].reward_fn
        self.action_tokens = self.envs[0].action_tokens
        self._spawn = cfg.copy_seeds == "spawn"

    def reset(self, *, seed=None, options=None):
        if self._spawn and isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seed = spawn_seeds(int(seed), self.num_envs)
        return super().reset(seed=seed, options=options)


class ActiveGatedVectorEnv(CopiesVectorEnv):
    """``num_envs`` :class:`ActiveGatedEnv` copies (see :class:`CopiesVectorEnv`)."""

    ENV = ActiveGatedEnv
    KIND = "active_gated"


def spawn_seeds(seed: int | None, n: int) -> list[int | None]:
    """``n`` independent first-reset seeds derived from ``seed`` (all None when it is None)."""
    if seed is None:
        return [None] * n
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]
