"""The PPO arm of the TMS study: an RLlib RLModule around :class:`models.tms.TMSPolicy`, and the run.

RLlib new API stack, torch, the conventions of ``models/rl_module.py`` and ``rayexp/ppo.py``: a
``TorchRLModule`` with ``ValueFunctionAPI``, a local learner (``num_learners=0``), env runners
vectorised through the env's ``vector_entry_point``, ``gym_env_vectorize_mode="vector_entry_point"``,
the seed from the settings. It lives here, not in ``models/``, because ``tests/test_layering.py``
keeps RLlib out of ``models/`` except ``models/rl_module.py``.

The policy is N(x_hat(x), diag sigma^2) with x_hat the TMS (``models.tms.TMSPolicy``); the value head
is an MLP on x that shares nothing with (W, b). The env (``envs.tms``) is a one-step contextual
bandit with reward -||a - x||^2, so with ``gamma`` irrelevant the advantage is the reward minus the
value baseline (RLlib standardises advantages per batch).

:func:`train_ppo_tms` builds the algorithm from the same (W, b) the supervised arm starts from, runs
``iterations`` iterations and hands (W, b) of the Learner's module (the authoritative copy) to
``on_checkpoint`` at iteration 0 and every ``save_every`` iterations. One iteration makes
``num_epochs * train_batch_size / minibatch_size`` Adam updates; the study puts both arms on that axis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule

from envs.tms import make_tms_env
from models.tms import TMSPolicy

ENV_NAME = "rayexp-tms-v0"
logger = logging.getLogger(__name__)


class TMSPolicyModule(TorchRLModule, ValueFunctionAPI):
    """PPO module: diagonal Gaussian with mean ReLU(W^T W x + b); value MLP on x (no shared weights).

    model_config keys: ``n_features``, ``n_hidden``, ``W`` and ``b`` (the starting weights, nested
    lists), ``log_std`` (initial log standard deviation), ``learn_std`` (bool), ``value_hidden``.
    """

    def setup(self):
        cfg = self.model_config
        self.policy = TMSPolicy(
            int(cfg["n_features"]),
            int(cfg["n_hidden"]),
            log_std=float(cfg.get("log_std", -2.0)),
            learn_std=bool(cfg.get("learn_std", False)),
            value_hidden=int(cfg.get("value_hidden", 64)),
        )
        if "W" in cfg:
            self.policy.tms.load_weights(cfg["W"], cfg["b"])

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.policy.dist_inputs(batch[Columns.OBS].float())}

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        return self.policy.values(batch[Columns.OBS].float())


@dataclass(frozen=True)
class TMSPPOSettings:
    iterations: int = 100
    train_batch_size: int = 1024  # episodes (= scored env steps) per iteration
    minibatch_size: int = 256
    num_epochs: int = 4
    lr: float = 1e-3
    clip_param: float = 0.2
    vf_loss_coeff: float = 1.0
    entropy_coeff: float = 0.0
    log_std: float = -2.0
    learn_std: bool = False
    value_hidden: int = 64
    num_envs_per_env_runner: int = 64
    save_every: int = 5
    seed: int = 0

    @property
    def updates_per_iteration(self) -> int:
        """Adam updates of one iteration: epochs times minibatches (RLlib rounds the batch to minibatches)."""
        return self.num_epochs * max(1, self.train_batch_size // self.minibatch_size)


def register_env() -> str:
    tune.register_env(ENV_NAME, make_tms_env)
    return ENV_NAME


def build_config(settings: TMSPPOSettings, env_config: dict, W, b) -> PPOConfig:
    """RLlib PPOConfig for the TMS policy started at (W, b) on ``TMSEnv(env_config)``."""
    n_hidden, n_features = np.asarray(W).shape
    model_config = {
        "n_features": int(n_features),
        "n_hidden": int(n_hidden),
        "W": np.asarray(W, dtype=np.float64).tolist(),
        "b": np.asarray(b, dtype=np.float64).tolist(),
        "log_std": settings.log_std,
        "learn_std": settings.learn_std,
        "value_hidden": settings.value_hidden,
    }
    # 2 vector steps per episode (next-step autoreset): the rollout fragment covers one train batch
    return (
        PPOConfig()
        # the action space is unbounded: act in it as it is, no squashing or clipping
        .environment(register_env(), env_config=dict(env_config), normalize_actions=False, clip_actions=False)
        .framework("torch")
        .env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=settings.num_envs_per_env_runner,
            gym_env_vectorize_mode="vector_entry_point",
        )
        .learners(num_learners=0, num_gpus_per_learner=0)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=TMSPolicyModule, model_config=model_config))
        .training(
            lr=settings.lr,
            gamma=0.0,  # one-step episodes: nothing to discount
            lambda_=1.0,
            clip_param=settings.clip_param,
            vf_loss_coeff=settings.vf_loss_coeff,
            entropy_coeff=settings.entropy_coeff,
            use_kl_loss=False,
            num_epochs=settings.num_epochs,
            minibatch_size=settings.minibatch_size,
            train_batch_size_per_learner=settings.train_batch_size,
        )
        .reporting(metrics_num_episodes_for_smoothing=settings.train_batch_size)
        .debugging(seed=settings.seed)
    )


def learner_weights(algo) -> dict[str, np.ndarray]:
    """(W, b) and log-std of the Learner's module, as float64 numpy arrays."""
    state = algo.learner_group.get_weights(module_ids=[DEFAULT_MODULE_ID])[DEFAULT_MODULE_ID]
    get = {k.split("policy.", 1)[-1]: v for k, v in state.items()}
    return {
        k: np.asarray(get[name], dtype=np.float64).copy()
        for k, name in (("W", "tms.W"), ("b", "tms.b"), ("log_std", "log_std"))
    }


def train_ppo_tms(
    settings: TMSPPOSettings,
    env_config: dict,
    W,
    b,
    on_checkpoint: Callable[[int, dict[str, np.ndarray], dict[str, float]], None] | None = None,
) -> list[dict]:
    """Run PPO from (W, b); returns ``[{"iteration", "W", "b", "log_std", "sampled_reward"}]`` at
    iteration 0 and every ``save_every`` iterations (and the last). Needs a running Ray.

    ``sampled_reward`` is RLlib's mean episode return over the iteration that ended there (NaN at 0);
    the study reports the exact expected reward beside it.
    """
    torch.manual_seed(settings.seed)
    algo = build_config(settings, env_config, W, b).build_algo()
    out: list[dict] = []

    def keep(it: int, sampled: float, seconds: float) -> None:
        weights = learner_weights(algo)
        out.append({"iteration": it, **weights, "sampled_reward": sampled})
        if on_checkpoint is not None:
            on_checkpoint(it, weights, {"sampled_reward": sampled, "seconds": seconds})

    try:
        t0 = time.perf_counter()
        keep(0, float("nan"), 0.0)
        for it in range(1, settings.iterations + 1):
            result = algo.train()
            sampled = float(result.get("env_runners", {}).get("episode_return_mean", np.nan))
            if it % settings.save_every == 0 or it == settings.iterations:
                keep(it, sampled, time.perf_counter() - t0)
    finally:
        algo.stop()
    return out
