"""The outcome env: the agent takes the outcome process's actions and is paid their outcomes (note 004).

Same config keys, observation and seeding as :class:`envs.active_env.ActiveGatedEnv` (``env:
"outcome"``), on an outcome process (:mod:`envs.outcome`). Reset emits the first base token, which
leaves the process at a decision point. Each step the action i becomes action token V + i; the env
appends it, then the outcome token it earns in the hidden base state, then the next base token, so
every step adds three tokens and the observation again ends on a base token. A model trained on the
passive stream has seen exactly these triples with uniform actions; here its own choices fill them.
:class:`OutcomeVectorEnv` runs ``num_envs`` copies under gymnasium's vector API for RLlib.

How to run::

    env = OutcomeEnv({"process": {"name": "outcome", "base": {"name": "mess3", "x": 0.05, "a": 0.85}},
                      "context": 16})
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

or ``envs.gym_env.make_env({..., "env": "outcome", "num_envs": 4})`` for the vector form.

What to expect: uniform actions earn 0 on average under the default values (+1, -1, 0: each base
state has one rewarded and one punished action); naming the most likely base state under
``info["belief"]`` earns clearly more, naming the state after it clearly less (tests/test_outcome_env.py).
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np

from envs.active_env import CopiesVectorEnv
from envs.env_config import (
    EnvConfig,
    check_step,
    config_seeded_reset,
    episode_lengths,
    shadow_generator,
    window,
)
from envs.outcome import PUNISHED, OutcomeTokens, outcome_probs, outcome_rule
from envs.processes import build_process
from envs.rewards import make_reward


class OutcomeEnv(gym.Env):
    """The outcome env; see the module docstring. ``config``: the keys of :class:`envs.env_config.EnvConfig`.

    ``process`` must be an outcome process, ``reward`` ``"outcome"`` (the default here; its params
    set the values of the three outcomes), ``action_tokens`` the process's S action tokens (the
    default). ``context`` (K) counts tokens, ``episode_len`` steps (three tokens each; default
    ``max(1, (K - 1) // 3)``, the rounds that fit in K after the first base token).

    ``shuffle_reward`` (the null task): the agent sees the stream and its actions' real outcomes as
    in the task, draw for draw, but is paid the outcome its action would earn in a *shadow* base
    stream, an independent run of the same base process with its own generator (a child of the env's
    seed) that the agent never sees. The pay keeps its distribution and its link to the action's
    value under the shadow's belief (uniform for Mess3: every action earns 0 in expectation), and
    carries nothing about the observed stream: PPO on it is the same update machinery with no reward
    signal to follow (docs/design.md §6 rule 6).

    ``info["belief"]``: the exact belief over the outcome process's states given every token of the
    episode (the filter treats the agent's action like the process's own uniform one, which gives the
    same posterior since the policy sees only the history). ``step`` adds ``info["outcome"]`` (0 / 1 /
    2: rewarded / punished / neutral) and ``info["punish_prob"]``, the exact probability, given the
    belief before the step, that the chosen action would be punished.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        config.setdefault("env", "outcome")
        config.setdefault("reward", "outcome")
        self.config = cfg = EnvConfig.from_dict(config)
        if cfg.env != "outcome":
            raise ValueError(f"OutcomeEnv runs env 'outcome'; got env={cfg.env!r} (use make_env)")
        hmm = self.hmm = build_process(cfg.process)
        if hmm.family != "outcome":
            raise ValueError(
                f"OutcomeEnv needs an outcome process ({{'name': 'outcome', 'base': ...}}); got {hmm.name!r}"
            )
        if cfg.reward != "outcome":
            raise ValueError(f"OutcomeEnv pays the outcome it emits: reward must be 'outcome'; got {cfg.reward!r}")
        self.K, episode_len = episode_lengths(cfg)
        self.episode_len = max(1, (self.K - 1) // 3) if cfg.episode_len is None else episode_len
        self.reward_fn = make_reward(cfg.reward, hmm, cfg.reward_params, cfg.action_tokens)
        self.action_tokens = self.reward_fn.action_tokens
        self.token_layout = OutcomeTokens.of(hmm)
        N, V = hmm.n_states, hmm.vocab_size
        self._cdf = np.cumsum(hmm.T.transpose(1, 0, 2).reshape(N, V * N), axis=1)  # (N, V*N) over (token, next)
        self.observation_space = gym.spaces.Box(0, V, shape=(self.K,), dtype=np.int64)
        self.action_space = gym.spaces.Discrete(len(self.action_tokens))
        self._seeded = False

    def _push(self, x: int) -> None:
        eta = self._belief @ self.hmm.T[x]  # (N,)
        self._belief = eta / eta.sum()
        self._tokens[0, self._n] = x
        self._n += 1

    def _draw_base(self, state: int, rng: np.random.Generator) -> tuple[int, int]:
        """(base token, next state) from ``state`` (a phase-x state)."""
        cdf = self._cdf[state]
        k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)
        return divmod(k, self.hmm.n_states)

    def _emit_base(self) -> None:
        x, self._state = self._draw_base(self._state, self.np_random)
        self._push(x)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        config_seeded_reset(self, seed, super().reset)
        self._tokens = np.zeros((1, 1 + 3 * self.episode_len), dtype=np.int64)
        self._n, self._t = 0, 0
        self._state = int(self.np_random.choice(self.hmm.n_states, p=self.hmm.init))
        self._belief = self.hmm.init.copy()
        self._emit_base()
        if self.config.shuffle_reward:
            self._shadow_rng = shadow_generator(self.np_random)
            state = int(self._shadow_rng.choice(self.hmm.n_states, p=self.hmm.init))
            self._shadow_state = self._draw_base(state, self._shadow_rng)[1]
        return self._observe(), self._info()

    def step(self, action):
        check_step(self, action)
        a, lay = int(action), self.token_layout
        punish_prob = float(outcome_probs(self.hmm, self._belief)[a, PUNISHED])
        s = self._state - lay.n_base_states  # the hidden base state at this decision point
        self._push(int(self.action_tokens[a]))
        k = int(outcome_rule(s, a, lay.n_base_states))
        outcome_token = int(lay.outcome_tokens[k])
        self._push(outcome_token)
        self._state = s  # the outcome returns to phase x in the same base state
        self._emit_base()
        self._t += 1
        paid = outcome_token
        if self.config.shuffle_reward:
            s_shadow = self._shadow_state - lay.n_base_states
            paid = int(lay.outcome_tokens[int(outcome_rule(s_shadow, a, lay.n_base_states))])
            self._shadow_state = self._draw_base(s_shadow, self._shadow_rng)[1]
        reward = float(self.reward_fn.rewards(self.action_tokens[[a]], np.array([paid]))[0])
        info = self._info()
        info["outcome"], info["punish_prob"] = k, punish_prob
        return self._observe(), reward, self._t >= self.episode_len, False, info

    def _observe(self) -> np.ndarray:
        return window(self._tokens, np.array([self._n - 1]), self.K, self.hmm.vocab_size)[0]

    def _info(self) -> dict:
        return {"belief": self._belief.copy()}


class OutcomeVectorEnv(CopiesVectorEnv):
    """``num_envs`` :class:`OutcomeEnv` copies, exactly as :class:`envs.active_env.ActiveGatedVectorEnv`
    (next-step autoreset, copies seeded from seeds spawned from the config's seed)."""

    ENV = OutcomeEnv
    KIND = "outcome"
