"""PPO post-training of the pretrained transformer with RLlib (new API stack).

How to run (debug path, no Tune, zero env runners)::

    from rayexp.ppo import PPOSettings, train_ppo
    res = train_ppo(PPOSettings(iterations=5), {"process": {"name": "mess3"}, "context": 10,
                    "reward": "next_token"}, "pretrained.pt", "post_rl.pt")
    print(res.history[0]["reward_per_step"], res.history[-1]["reward_per_step"])

What to expect: the first iteration samples with the untouched pretrained policy, so its reward is
the pretrained baseline; the next-token reward rises towards the Bayes-optimal rate within a few
iterations when the starting model is not yet optimal. The trained transformer comes back as a
``models.checkpoint`` file (same format as pretraining), read from the Learner, not from an env
runner's (possibly stale, inference-only) module copy.

Defaults suit a stream whose actions do not change the future: ``gamma=0`` makes the advantage the
immediate reward minus the value baseline. ``shuffle_batch_per_epoch=False`` keeps each episode's
rows contiguous in a minibatch, which the module's prefix deduplication turns into one causal pass
per trajectory segment (shuffling stays exact, just slower).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.evaluation.postprocessing import Postprocessing

from envs.gym_env import EnvConfig, action_tokens, make_env
from models.checkpoint import load_checkpoint
from models.rl_module import PRETRAINED_LOGITS, TransformerPolicyModule, export_checkpoint
from rayexp import ppo_state
from rayexp.ppo_settings import CPUS_PER_ENV_RUNNER, PPOSettings  # declared there, torch-free, for the sweep validator

ENV_NAME = "rayexp-sequence-v0"
logger = logging.getLogger(__name__)


def _numba_runs_openmp() -> bool:
    """True if numba's OpenMP pool already runs here: envs/_kernels.py picks the workqueue layer
    unless NUMBA_THREADING_LAYER says otherwise, because OpenMP's spinning threads make every small
    torch op in the same process ~20x dearer."""
    import numba
    from numba.np.ufunc import parallel

    return parallel._is_initialized and numba.threading_layer() == "omp"


def _make_env(config: dict):
    # Imported lazily so that configs can be built (and this module imported) without the env.

    return make_env(dict(config))


def register_env() -> str:
    """Register the sequence env with Tune's registry (the gymnasium registry does not reach workers)."""
    tune.register_env(ENV_NAME, _make_env)
    return ENV_NAME


def module_spec(settings: PPOSettings, env_config: dict, checkpoint_path: str | Path) -> RLModuleSpec:
    model_config = {
        "checkpoint": str(checkpoint_path),
        "transformer_config": load_checkpoint(checkpoint_path)[0].cfg.model_dump(),
        "value_hidden": settings.value_hidden,
        "value_grad_to_trunk": settings.value_grad_to_trunk,
        "kl_to_pretrained": settings.kl_to_pretrained > 0,
    }

    # The env resolves its action set (a reward may choose its own default); the module must agree.
    model_config["action_tokens"] = action_tokens(dict(env_config))
    return RLModuleSpec(module_class=TransformerPolicyModule, model_config=model_config)


def _runner_env_config(env_config: dict, num_env_runners: int) -> dict:
    """RLlib resets runner w's envs with ``seed + w``; gymnasium's vector envs then seed copy i with
    ``s + i``, so with remote runners two copies would replay one stream: spawn the copies' seeds
    instead. With the driver sampling alone (0 runners) the offsets are kept, so earlier runs reproduce."""
    config = dict(env_config)
    if num_env_runners > 0:
        config["copy_seeds"] = "spawn"
    return config


def build_ppo_config(
    settings: PPOSettings, env_config: dict, checkpoint_path: str | Path, gpu: float = 0.0
) -> PPOConfig:
    """RLlib PPOConfig for post-training the checkpoint's transformer on ``SequenceEnv(env_config)``.

    ``gpu``: the GPU share of the learner (``TrialContext.learner_gpus``; 0 = CPU). The learner is
    local, so RLlib requests nothing from Ray for it: the share is the trial's own, granted with its
    placement group, and RLlib only reads ``> 0`` as "train on this process's GPU". Env runners stay
    on the CPU (``num_gpus_per_env_runner=0``): acting on one window at a time is launch-bound.
    """
    config = (
        PPOConfig()
        .environment(register_env(), env_config=_runner_env_config(env_config, settings.num_env_runners))
        .framework("torch")
        .env_runners(
            num_env_runners=settings.num_env_runners,
            num_envs_per_env_runner=settings.num_envs_per_env_runner,
            num_cpus_per_env_runner=CPUS_PER_ENV_RUNNER,  # what the trial reserves per runner (rayexp.sweep)
            # RLlib then calls the creator with num_envs: one numpy-vectorised env, not N copies.
            gym_env_vectorize_mode="vector_entry_point",
            num_gpus_per_env_runner=0,
        )
        # the learner is local: it trains in the trial's own process, on the trial's own resources.
        # learner_config_dict is set here: .training(learner_config_dict=) is deprecated in Ray 2.60 (same dict)
        .learners(
            num_learners=0,
            num_gpus_per_learner=gpu,
            learner_class=TransformerPPOLearner,
            learner_config_dict={"kl_to_pretrained": settings.kl_to_pretrained},
        )
        .rl_module(rl_module_spec=module_spec(settings, env_config, checkpoint_path))
        .training(
            lr=settings.lr,
            gamma=settings.gamma,
            lambda_=settings.lambda_,
            clip_param=settings.clip_param,
            vf_clip_param=settings.vf_clip_param,
            vf_loss_coeff=settings.vf_loss_coeff,
            entropy_coeff=settings.entropy_coeff,
            use_kl_loss=settings.kl_coeff > 0,
            kl_coeff=settings.kl_coeff,
            kl_target=settings.kl_target,
            grad_clip=settings.grad_clip,
            num_epochs=settings.num_epochs,
            minibatch_size=settings.minibatch_size,
            train_batch_size_per_learner=settings.train_batch_size,
            shuffle_batch_per_epoch=settings.shuffle_batch_per_epoch,
        )
        # Episode metrics average over about one iteration's episodes, so each history entry
        # describes the policy that sampled it (the first one: the pretrained policy).
        .reporting(metrics_num_episodes_for_smoothing=max(1, settings.train_batch_size // _episode_len(env_config)))
        .debugging(seed=settings.seed)
    )
    return config


def _episode_len(env_config: dict) -> int:

    cfg = EnvConfig.from_dict(dict(env_config))
    return cfg.episode_len or cfg.context


class TransformerPPOLearner(PPOTorchLearner):
    """RLlib's PPO loss plus a fixed KL to the pretrained policy and cleanrl's diagnostics.

    Logs ``approx_kl`` (cleanrl's low-variance ``E[(r - 1) - log r]`` to the sampling policy),
    ``clip_fraction`` and, when enabled, ``kl_to_pretrained``.
    """

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        module = self.module[module_id].unwrapped()
        logits = fwd_out[Columns.ACTION_DIST_INPUTS]  # (B, A)
        mask = batch.get(Columns.LOSS_MASK)
        mask = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device) if mask is None else mask.bool()

        def mean(x):
            return x[mask].mean()

        with torch.no_grad():
            dist = module.get_train_action_dist_cls().from_logits(logits)
            log_ratio = dist.logp(batch[Columns.ACTIONS]) - batch[Columns.ACTION_LOGP]  # (B,)
            values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))[mask]  # (B',)
            targets = batch[Postprocessing.VALUE_TARGETS][mask]  # (B',)
            stats = {
                "approx_kl": mean((log_ratio.exp() - 1) - log_ratio),
                "clip_fraction": mean(((log_ratio.exp() - 1).abs() > config.clip_param).float()),
                # RLlib's own vf_explained_var also counts the loss-masked bootstrap rows.
                "explained_variance": 1 - (targets - values).var() / targets.var().clamp(min=1e-8),
            }
        if PRETRAINED_LOGITS in fwd_out:
            logp = torch.log_softmax(logits, -1)  # (B, A)
            ref_logp = torch.log_softmax(fwd_out[PRETRAINED_LOGITS], -1)  # (B, A)
            kl = mean((logp.exp() * (logp - ref_logp)).sum(-1))
            loss = loss + config.learner_config_dict.get("kl_to_pretrained", 0.0) * kl
            stats["kl_to_pretrained"] = kl.detach()
        self.metrics.log_dict(stats, key=module_id, window=1)
        return loss


@dataclass
class PPOResult:
    """Per-iteration diagnostics and the exported post-RL checkpoint."""

    history: list[dict[str, float]]
    checkpoint_path: Path
    settings: PPOSettings
    extra: dict[str, Any] = field(default_factory=dict)


_LEARNER_KEYS = {
    "approx_kl": "approx_kl",
    "clip_fraction": "clip_fraction",
    "entropy": "entropy",
    "explained_variance": "vf_explained_var",
    "policy_loss": "policy_loss",
    "vf_loss": "vf_loss",
    "mean_kl_loss": "kl_to_previous",
    "kl_to_pretrained": "kl_to_pretrained",
}


def _metrics(result: dict, prev_steps: int, dt: float) -> tuple[dict[str, float], int]:
    env = result.get("env_runners", {})
    learner = result.get("learners", {}).get(DEFAULT_MODULE_ID, {})
    steps = int(result.get("num_env_steps_sampled_lifetime", env.get("num_env_steps_sampled_lifetime", 0)))
    ret, length = env.get("episode_return_mean", np.nan), env.get("episode_len_mean", np.nan)
    m = {
        "episode_return_mean": float(ret),
        "episode_len_mean": float(length),
        "reward_per_step": float(ret) / float(length) if np.isfinite(length) and length > 0 else float("nan"),
        "env_steps": steps,
        "env_steps_per_s": (steps - prev_steps) / dt,
    }
    m |= {name: float(learner[key]) for key, name in _LEARNER_KEYS.items() if key in learner}
    return m, steps


def learner_device(algo) -> str:
    """The device the Learner's module sits on, e.g. ``"cpu"`` or ``"cuda:0"``."""
    results = algo.learner_group.foreach_learner(
        lambda learner: str(next(learner.module[DEFAULT_MODULE_ID].parameters()).device)
    )
    first = next(iter(results))
    return first.get() if hasattr(first, "get") else first  # a CallResult; some Ray versions give the value


def check_learner_device(algo, gpu: float) -> str:
    """The Learner's device, or RuntimeError when it is not the one asked for. RLlib places a local
    learner on ``ray.get_gpu_ids()``'s device and falls back to the CPU without a word when the process
    holds none (read in Ray 2.60's rllib/utils/framework.py; a share per learner silently ignored is also
    reported as ray-project/ray#50053): a GPU trial must not quietly train on the CPU, nor a CPU trial
    touch a GPU."""
    got = learner_device(algo)
    want = "cuda" if gpu > 0 else "cpu"
    if got.split(":")[0] != want:
        why = "; a share per learner ignored, as in ray-project/ray#50053?" if want == "cuda" else ""
        raise RuntimeError(
            f"RLlib put the PPO learner on {got}, not {want} (num_gpus_per_learner={gpu:g}, "
            f"ray.get_gpu_ids()={_gpu_ids()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}{why})"
        )
    return got


def _gpu_ids() -> list:
    if not ray.is_initialized():  # ray.get_gpu_ids() would start a Ray just to say so
        return []
    try:
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001  (only for the message above)
        return []


def learner_module(algo, settings: PPOSettings, env_config: dict, checkpoint_path) -> TransformerPolicyModule:
    """The Learner's (authoritative) module weights, loaded into a fresh local module.

    Building it initialises a fresh network (torch's global generator) beside an env (numpy's), and the
    local env runner samples actions from torch's: it runs with the global generators forked and
    restored, so reading the policy mid-training (``ppo.save_every``) does not change what is trained
    (``tests/test_ppo.py``)."""
    import random

    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        env = _make_env(env_config)
        spec = module_spec(settings, env_config, checkpoint_path)
        spec.observation_space, spec.action_space = env.observation_space, env.action_space
        module = spec.build()
    np.random.set_state(np_state)
    random.setstate(py_state)
    path = f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}"
    state = algo.learner_group.get_state(components=path)
    module.set_state(state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID])
    return module


def _hand_over_policy(algo, settings, env_config, checkpoint_path, n: int, on_policy) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rayexp-policy-") as tmp:
        path = Path(tmp) / f"policy_{n}.pt"
        module = learner_module(algo, settings, env_config, checkpoint_path)
        export_checkpoint(module, path, extra={"ppo_iteration": n, "env_config": dict(env_config)})
        on_policy(n, path)


def train_ppo(
    settings: PPOSettings,
    env_config: dict,
    checkpoint_path: str | Path,
    out_path: str | Path,
    callback: Callable[[dict, int], None] | None = None,
    state_dir: str | Path | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_policy: Callable[[int, Path], None] | None = None,
    gpu: float = 0.0,
) -> PPOResult:
    """Post-train the checkpoint with PPO for ``settings.iterations``; export to ``out_path``.

    Needs a running Ray (``ray.init``). ``callback(metrics, iteration)`` forwards each iteration's
    diagnostics (to MLflow or Tune).

    With ``state_dir``, the algorithm state (weights, optimizer, KL coefficient) is saved there every
    ``settings.checkpoint_every`` iterations, before that iteration's callback, and
    ``on_checkpoint(iteration)`` is called after each save. A later call with a ``state_dir``
    holding a saved state resumes after its iteration: it first replays the saved iterations'
    metrics through ``callback`` (callers skip those they already logged), then trains the rest.
    The environments of a resumed run start from a seed derived from ``settings.seed`` and the
    resumed iteration, so it does not see the first iterations' streams again; it is therefore
    not bit-identical to an uninterrupted run.

    ``on_policy(n, path)`` receives, every ``settings.save_every`` iterations, the policy after
    ``n`` iterations as a ``models.checkpoint`` file (the Learner's weights; the file is removed
    after the call); the final policy is ``out_path``.

    ``gpu``: the learner's GPU share (see :func:`build_ppo_config`); the learner's device is checked
    once the algorithm is built (:func:`check_learner_device`).
    """
    torch.manual_seed(settings.seed)
    if _numba_runs_openmp():
        logger.warning(
            "numba's OpenMP threads run in this process; the learner's torch ops will be far slower. "
            "Leave NUMBA_THREADING_LAYER unset (envs picks workqueue) or set it to workqueue."
        )
    state = Path(state_dir) if state_dir is not None else None
    progress = ppo_state.progress(state)
    start = progress["iteration"] + 1 if progress else 0
    build_settings = settings if not start else settings.model_copy(update={"seed": settings.seed + 7919 * start})
    algo = build_ppo_config(build_settings, env_config, checkpoint_path, gpu=gpu).build_algo()
    history: list[dict[str, float]] = []
    try:
        check_learner_device(algo, gpu)
        steps = 0
        if progress:
            algo.restore_from_path(str(state / progress["algo"]))  # the sampled-steps count comes back too
            history, steps = progress["history"], progress["steps"]
            for metrics in history:
                if callback is not None:
                    callback(dict(metrics), int(metrics["iteration"]))
        for it in range(start, settings.iterations):
            t0 = time.perf_counter()
            result = algo.train()
            metrics, steps = _metrics(result, steps, time.perf_counter() - t0)
            metrics["iteration"] = it
            history.append(metrics)
            due = state is not None and settings.checkpoint_every and (it + 1) % settings.checkpoint_every == 0
            if due and it + 1 < settings.iterations:  # after the last iteration the exported model is the state
                ppo_state.save_state(algo, state, it, int(metrics["env_steps"]), history)
                if on_checkpoint is not None:
                    on_checkpoint(it)
            every = settings.save_every
            if on_policy is not None and every and (it + 1) % every == 0 and it + 1 < settings.iterations:
                _hand_over_policy(algo, settings, env_config, checkpoint_path, it + 1, on_policy)
            if callback is not None:
                callback(metrics, it)
        module = learner_module(algo, settings, env_config, checkpoint_path)
    finally:
        algo.stop()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    export_checkpoint(module, out_path, extra={"ppo_settings": settings.model_dump(), "env_config": dict(env_config)})
    return PPOResult(history=history, checkpoint_path=out_path, settings=settings)
