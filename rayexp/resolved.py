"""One resolved trial: a sweep row turned, once and by the driver, into the frozen, typed object
every stage reads (docs/design.md §2).

:func:`resolve` takes a validated :class:`~rayexp.settings.TrialConfig` and its checked facts and
derives everything a worker needs: the model config (vocabulary resolved), the pretraining config
(seeded by the trial, threads from its CPUs, log-spaced checkpoints), the task's PPO settings (base
section + task overrides + the trial's seed), the RL env config (action set resolved), M_A's env and
PPO settings when the task starts from one, and how many rollouts to store. Workers receive the
object (as its dump) and re-derive nothing; what only a worker can know (the precision ``auto``
resolves to on its hardware, hence the pretrain cache key) stays in :mod:`rayexp.context`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envs.env_config import real_reward
from envs.gym_env import action_tokens
from models.config import PretrainConfig, TransformerConfig
from rayexp.artifacts import log_spaced_steps
from rayexp.ppo_settings import PPOSettings
from rayexp.settings import TrialConfig
from rayexp.specs import process_label


class FieldError(Exception):
    """A problem at one field of a trial (path relative to the trial, e.g. ``task.ppo.lr``)."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message


def first_error(err: ValidationError) -> tuple[str, str]:
    """(dotted path, message) of pydantic's first error, as the one-line errors print it."""
    e = err.errors()[0]
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "value_error":  # a validator's own message, which names what it got
        msg = msg.removeprefix("Value error, ")
    elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
        msg = f"{msg} (got {e['input']!r})"
    path = ""
    for part in e["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path, msg


def task_process(trial: TrialConfig) -> dict[str, Any]:
    """Process spec of the trial's RL stream (see TaskConfig.stream)."""
    task = trial.task
    if task.process is not None:
        return task.process
    if task.stream == "pretrain":
        return trial.process
    parts = trial.process.get("components") or trial.process.get("factors")
    if not parts:
        raise FieldError(
            "task.stream",
            f"{task.stream!r} needs a pretraining process with components or factors, "
            f"got {process_label(trial.process)!r}",
        )
    return {"name": task.stream, "factors": parts}


def ppo_settings(trial: TrialConfig) -> PPOSettings:
    """The task's PPO settings: the base ppo section, the task's overrides on top, and the trial's
    seed unless either sets one. Raises FieldError at ``task.ppo.KEY`` for a bad override.
    ("Unset" is what the sweep file did not write: the sections dump only the fields it set.)"""
    task_ppo = trial.task.ppo.model_dump()  # only what the task set
    raw = {"seed": trial.seed, **trial.ppo.model_dump(exclude_unset=True), **task_ppo}
    try:
        return PPOSettings.model_validate(raw)
    except ValidationError as err:
        sub, msg = first_error(err)
        if sub.split(".")[0] in task_ppo or (not sub and task_ppo):
            raise FieldError(f"task.ppo.{sub}" if sub else "task.ppo", msg) from None
        raise FieldError(f"ppo.{sub}" if sub else "ppo", msg) from None


def pretrain_config(trial: TrialConfig, cpus: float) -> PretrainConfig:
    """Seeded by the trial, threads matching the trial's CPUs, and log-spaced checkpoints
    (``artifacts.pretrain_checkpoints``) unless the file lists its own."""
    raw = trial.pretrain.model_dump(exclude_unset=True)  # unset fields keep following the trial (its seed)
    cfg = PretrainConfig(**{"seed": trial.seed, "num_threads": max(1, int(cpus)), "progress": False, **raw})
    if "checkpoint_steps" not in raw:
        cfg = cfg.model_copy(
            update={"checkpoint_steps": log_spaced_steps(cfg.steps, trial.artifacts.pretrain_checkpoints)}
        )
    return cfg


def env_config(trial: TrialConfig, n_ctx: int) -> dict[str, Any]:
    """The RL env config of the trial's task (``envs.gym_env.make_env``), action set resolved."""

    task = trial.task
    context = task.context or n_ctx
    env = {
        "process": task_process(trial),
        "context": context,
        "episode_len": task.episode_len or context,
        "reward": task.reward,
        "reward_params": task.reward_params,
        "seed": trial.seed,
    }
    if task.env != "sequence":
        env["env"] = task.env
    if task.shuffle_reward:
        env["shuffle_reward"] = True
    if task.action_tokens is not None:
        env["action_tokens"] = list(task.action_tokens)
    # the policy module must act over the reward's own action set, which a reward may choose
    env["action_tokens"] = [int(t) for t in action_tokens(dict(env))]
    return env


class StartFrom(BaseModel):
    """M_A (``task.start_from``): this task's env with M_A's reward and seed, and its PPO settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: dict[str, Any]
    ppo: PPOSettings


class ResolvedTrial(BaseModel):
    """Everything a trial's stages read, derived once by the driver (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: TrialConfig = Field(description="the trial as validated; its dump is the MLflow params and trial key")
    model: TransformerConfig = Field(description="the transformer, vocabulary resolved")
    pretrain: PretrainConfig = Field(description="pretraining: seed, threads and checkpoint steps resolved")
    ppo: PPOSettings = Field(description="the task's PPO settings: base + task overrides + the trial's seed")
    env: dict[str, Any] = Field(description="the RL env config (envs.gym_env.make_env), action set resolved")
    start: StartFrom | None = Field(None, description="M_A's env and PPO settings, when the task starts from one")
    facts: dict[str, Any] = Field(description="vocab, d_vocab, n_ctx and the RL context, from the checks")
    rollouts: int = Field(0, ge=0, description="episodes of the final policy to store")

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def task(self):
        return self.config.task


def resolve(trial: TrialConfig, facts: dict[str, Any], cpus: float, rollouts: int) -> ResolvedTrial:
    """The resolved trial of a checked TrialConfig (``facts`` from ``rayexp.config.check_trial``)."""
    model = trial.model.resolve(facts["d_vocab"])
    ppo = ppo_settings(trial)
    env = env_config(trial, model.n_ctx)
    start = None
    if trial.task.start_from is not None:
        s = trial.task.start_from
        update = {"iterations": s.iterations, "seed": s.seed, "save_every": 0, "checkpoint_every": 0}
        start = StartFrom(  # a null task's shuffle is the task's, never M_A's
            env=real_reward(env) | {"reward": s.reward, "reward_params": s.reward_params, "seed": s.seed},
            ppo=ppo.model_copy(update=update),
        )
    return ResolvedTrial(
        config=trial,
        model=model,
        pretrain=pretrain_config(trial, cpus),
        ppo=ppo,
        env=env,
        start=start,
        facts=facts,
        rollouts=rollouts,
    )
