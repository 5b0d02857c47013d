"""Semantic checks of one trial, across its sections: what pydantic's per-field checks cannot see.

Context lengths against ``model.n_ctx``, process vocabularies, rewards and the env kinds they run
in, M_A's action set, analysis parameters, learning rates, and the estimated memory of a training
step against a budget (``RAYEXP_MEMORY_GB``, default 64). Each failure is a
:class:`~rayexp.resolved.FieldError` at a path relative to the trial, which
:mod:`rayexp.config` maps to where the sweep file wrote it. Run once, by the driver.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import ValidationError

from envs.env_config import ENV_KINDS
from envs.layout import GatedLayout
from envs.rewards import REWARDS, make_reward
from models.config import TransformerConfig, param_count, train_memory_bytes
from rayexp.registry import validate_params
from rayexp.resolved import FieldError, first_error, ppo_settings, task_process
from rayexp.settings import AnalysisRef, TrialConfig
from rayexp.specs import build_process, process_label

_LR_KEYS = ("lr", "learning_rate")
#: Memory one trial may plan for, in GB (10^9 bytes): a large GPU's share, or a node's RAM.
#: ``RAYEXP_MEMORY_GB`` overrides it (e.g. 140 on an H200, 8 on a laptop).
MEMORY_ENV = "RAYEXP_MEMORY_GB"
DEFAULT_MEMORY_GB = 64.0
_GB = 1e9


def memory_budget_gb() -> float:
    """The memory budget of one trial's training step, in GB: ``RAYEXP_MEMORY_GB`` or 64."""
    raw = os.environ.get(MEMORY_ENV, "")
    try:
        budget = float(raw) if raw.strip() else DEFAULT_MEMORY_GB
    except ValueError:
        budget = float("nan")
    if not (budget > 0 and math.isfinite(budget)):
        raise FieldError(MEMORY_ENV, f"must be a positive number of GB, got {raw!r}")
    return budget


def check_memory(trial: TrialConfig, facts: dict[str, Any], budget_gb: float) -> None:
    """The estimated memory of the trial's largest training steps (a pretraining batch, a PPO
    minibatch) against the budget; FieldError naming the batch field. Run by the driver only, so
    the budget is the one the sweep was validated with."""
    model = trial.model.resolve(facts["d_vocab"])
    pre = trial.pretrain
    seq_len = pre.seq_len or facts["n_ctx"]
    _check_memory(model, pre.batch_size, seq_len, pre.optimizer_states, budget_gb, "pretrain.batch_size")
    where = "task.ppo.minibatch_size" if "minibatch_size" in trial.task.ppo.model_fields_set else "ppo.minibatch_size"
    minibatch = ppo_settings(trial).minibatch_size
    _check_memory(model, minibatch, facts["context"], 2, budget_gb, where)  # PPO's learner runs Adam


def _check_memory(model: TransformerConfig, batch: int, seq_len: int, states: int, budget: float, path: str) -> None:
    need = train_memory_bytes(model, batch, seq_len, states) / _GB
    if need > budget:
        raise FieldError(
            path,
            f"estimated training memory {need:.1f} GB ({batch} x {seq_len} positions, "
            f"{param_count(model) / 1e6:.1f}M parameters) exceeds the budget of {budget:g} GB "
            f"(set {MEMORY_ENV} to change it)",
        )


def _build_at(spec: dict[str, Any], path: str):
    """Build a process spec; its error's own "process.components[0]: ..." prefix joins the path."""
    try:
        return build_process(spec)
    except (ValueError, TypeError, KeyError) as err:
        msg = str(err)
        head, sep, rest = msg.partition(": ")
        if sep and head.startswith("process") and " " not in head:
            return_path = path + head[len("process") :]
            raise FieldError(return_path, rest) from None
        raise FieldError(path, msg) from None


def _check_analysis(ref: AnalysisRef, scope: str, path: str) -> None:
    try:
        validate_params(ref.name, ref.params, scope=scope)
    except ValidationError as err:  # before ValueError: pydantic's error is one
        sub, msg = first_error(err)
        raise FieldError(f"{path}.params.{sub}" if sub else f"{path}.params", msg) from None
    except ValueError as err:
        raise FieldError(f"{path}.name", str(err)) from None


def check_analyses(refs: list, scope: str, path: str) -> None:
    seen: set[str] = set()
    for i, ref in enumerate(refs):
        if ref.name in seen:
            raise FieldError(f"{path}[{i}].name", f"analysis {ref.name!r} is listed twice")
        seen.add(ref.name)
        _check_analysis(ref, scope, f"{path}[{i}]")


def check_trial(trial: TrialConfig) -> dict[str, Any]:
    """Semantic checks of one resolved trial; raises FieldError(path relative to the trial).

    Returns facts the runner needs (vocab sizes, context), so callers do not rebuild processes.
    """
    hmm = _build_at(trial.process, "process")
    vocab = hmm.vocab_size
    if trial.model.d_vocab is not None and trial.model.d_vocab < vocab:
        raise FieldError("model.d_vocab", f"{trial.model.d_vocab} is smaller than the process vocabulary {vocab}")
    model = trial.model.resolve(vocab)
    n_ctx = model.n_ctx
    for path, length in (("pretrain.seq_len", trial.pretrain.seq_len), ("probe.seq_len", trial.probe.seq_len)):
        if length is not None and length > n_ctx:
            raise FieldError(path, f"context length {length} exceeds model.n_ctx {n_ctx}")

    task = trial.task
    check_lr(task.ppo.model_dump(), "task.ppo")
    ppo_settings(trial)  # the task's overrides, checked merged into the base section
    stream = task_process(trial)
    task_hmm = hmm if stream is trial.process else _build_at(stream, "task.process" if task.process else "task.stream")
    if task_hmm.vocab_size > model.d_vocab:
        raise FieldError(
            "task.process", f"vocabulary {task_hmm.vocab_size} exceeds the model's d_vocab {model.d_vocab}"
        )
    context = task.context or n_ctx
    if context > n_ctx:
        raise FieldError("task.context", f"context length {context} exceeds model.n_ctx {n_ctx}")
    kinds = ENV_KINDS
    if task.env not in kinds:
        raise FieldError("task.env", f"unknown env {task.env!r}; valid: {list(kinds)}")
    if task.env == "active_gated" and not isinstance(task_hmm.layout, GatedLayout):
        raise FieldError(
            "task.env", f"active_gated needs a gated RL stream, got {process_label(stream)!r} (set task.process)"
        )
    if task.env == "outcome" and task_hmm.family != "outcome":
        raise FieldError(
            "task.env", f"outcome needs an outcome RL stream, got {process_label(stream)!r} (set task.process)"
        )
    if task.env != "sequence" and task.shuffle_reward:
        raise FieldError("task.shuffle_reward", "needs a stream the agent cannot steer (env: sequence)")
    if task.action_tokens is not None:
        bad = [t for t in task.action_tokens if not 0 <= t < task_hmm.vocab_size]
        if bad or not task.action_tokens:
            raise FieldError("task.action_tokens", f"must be non-empty token ids < {task_hmm.vocab_size}, got {bad}")
    if task.reward not in REWARDS:
        raise FieldError("task.reward", f"unknown reward {task.reward!r}; valid: {sorted(REWARDS)}")
    wants = REWARDS[task.reward].ENV
    if wants is not None and wants != task.env:
        raise FieldError("task.env", f"reward {task.reward!r} runs in env {wants!r}; got env {task.env!r}")
    if task.env == "outcome" and wants != "outcome":
        raise FieldError(
            "task.reward", f"env 'outcome' pays by the outcome tokens: use reward 'outcome', not {task.reward!r}"
        )
    try:
        make_reward(task.reward, task_hmm, task.reward_params, task.action_tokens)
    except (ValueError, TypeError, KeyError) as err:
        raise FieldError("task.reward_params", str(err)) from None
    if task.start_from is not None:
        start = task.start_from
        if start.reward not in REWARDS:
            raise FieldError("task.start_from.reward", f"unknown reward {start.reward!r}; valid: {sorted(REWARDS)}")
        try:
            first = make_reward(start.reward, task_hmm, start.reward_params, task.action_tokens)
        except (ValueError, TypeError, KeyError) as err:
            raise FieldError("task.start_from.reward_params", str(err)) from None
        this = make_reward(task.reward, task_hmm, task.reward_params, task.action_tokens)
        if first.action_tokens.tolist() != this.action_tokens.tolist():
            raise FieldError(
                "task.start_from.reward",
                f"M_A's reward acts on tokens {first.action_tokens.tolist()} but the task's on "
                f"{this.action_tokens.tolist()}; the policy head must be the same (set task.action_tokens)",
            )

    check_analyses(trial.analyses, "trial", "analyses")
    return {"vocab": vocab, "d_vocab": model.d_vocab, "n_ctx": n_ctx, "context": context}


def check_lr(section: Any, path: str) -> None:
    """A negative or non-finite learning rate, named as such (before the section's own checks)."""
    if not isinstance(section, dict):
        return
    for key, value in section.items():
        if (
            isinstance(key, str)
            and (key in _LR_KEYS or key.endswith("_lr"))
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not (value >= 0 and math.isfinite(value))
        ):
            raise FieldError(f"{path}.{key}", f"learning rate must be >= 0 (got {value!r})")
