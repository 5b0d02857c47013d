"""Episodes of a transformer policy in the RL env, for analyses that need on-policy data.

The policy is what the RLlib module acts with (models.rl_module): the LM head at the last real
position of the observation window, restricted to the env's action tokens. Observations are
right-padded, so with causal attention the pad positions never reach the one that is read.
"""

from __future__ import annotations

import numpy as np

from envs.gym_env import make_env
from rayexp.policy import window_probs


def collect(model, env_config: dict, n_episodes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n_episodes`` episodes, actions sampled from the policy (seeded): observations (N, L, K),
    actions and rewards (N, L), action probabilities (N, L, A) and exact beliefs (N, L, S)."""

    envs = [make_env(dict(env_config)) for _ in range(n_episodes)]
    rng = np.random.default_rng(seed)
    first = [e.reset(seed=seed * 100_003 + i) for i, e in enumerate(envs)]
    obs = np.stack([o for o, _ in first])  # (N, K)
    beliefs = [np.stack([info["belief"] for _, info in first])]
    tokens = np.asarray(env_config["action_tokens"])
    pad = int(envs[0].observation_space.high.max())
    out: dict[str, list] = {"obs": [], "actions": [], "rewards": [], "probs": []}
    done = np.zeros(n_episodes, dtype=bool)
    while not done.all():
        probs = window_probs(model, obs, pad, tokens)  # (N, A)
        actions = (rng.random((len(probs), 1)) > probs.cumsum(1)).sum(1).clip(0, len(tokens) - 1)  # (N,)
        steps = [e.step(int(a)) for e, a in zip(envs, actions)]
        out["obs"].append(obs)
        out["actions"].append(actions)
        out["probs"].append(probs)
        out["rewards"].append(np.array([s[1] for s in steps]))
        obs = np.stack([s[0] for s in steps])
        beliefs.append(np.stack([s[4]["belief"] for s in steps]))
        done = np.array([s[2] or s[3] for s in steps])
    data = {k: np.stack(v, axis=1) for k, v in out.items()}
    data["beliefs"] = np.stack(beliefs[:-1], axis=1)  # (N, L, S): the belief each action was taken under
    return data
