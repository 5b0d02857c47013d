"""Semantic checks of one trial, across its sections: what pydantic's per-field checks cannot see.

Context lengths against ``model.n_ctx``, process vocabularies and sizes (a state-space cap, checked
before a process is built), probe hooks, rewards and the env kinds they run in, M_A's action set,
analysis parameters, learning rates, finite numbers in the free-form sections (process specs, reward
and analysis parameters), the estimated memory of a training step against a budget
(``RAYEXP_MEMORY_GB``, default 64), and a local ``storage_path`` that can be written. Each failure is a
:class:`~rayexp.resolved.FieldError` at a path relative to the trial, which
:mod:`rayexp.config` maps to where the sweep file wrote it. Run once, by the driver.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from envs.env_config import ENV_KINDS
from envs.layout import GatedLayout
from envs.rewards import REWARDS, make_reward
from models.config import TransformerConfig, hook_names, param_count, train_memory_bytes
from rayexp.ppo_settings import CPUS_PER_ENV_RUNNER
from rayexp.registry import validate_params
from rayexp.resolved import FieldError, first_error, ppo_settings, task_process
from rayexp.settings import AnalysisRef, Resources, TrialConfig
from rayexp.specs import build_process, process_label

_LR_KEYS = ("lr", "learning_rate")
#: Memory one trial may plan for, in GB (10^9 bytes): a large GPU's share, or a node's RAM.
#: ``RAYEXP_MEMORY_GB`` overrides it (e.g. 140 on an H200, 8 on a laptop).
MEMORY_ENV = "RAYEXP_MEMORY_GB"
DEFAULT_MEMORY_GB = 64.0
_GB = 1e9
#: Hidden states of one process, and entries of its (tokens, states, states) transition tensor: the
#: exact beliefs need that tensor in float64, so 2**27 entries is 1 GiB. Interleaving two Mess3 is
#: 18 states; a product of 8 is 6561 states and 6561 tokens, a 2.3 TB tensor.
MAX_STATES = 4096
MAX_TENSOR = 2**27
_COMBINE = {  # (states, tokens) of each part -> the composition's, as envs.compose builds it
    "product": lambda s, v: (math.prod(s), math.prod(v)),
    "interleave": lambda s, v: (len(s) * math.prod(s), sum(v)),
    "mixture": lambda s, v: (sum(s), sum(v)),
    "gated": lambda s, v: (2 * math.prod(s), sum(v)),
}


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


def _size(spec: Any) -> tuple[int, int]:
    """(states, tokens) of a process spec, without building any composition's matrices; a part that
    is not a well-formed spec raises, and :func:`check_process` then names what is wrong with it."""
    name = spec["name"]
    if name in _COMBINE:
        parts = [spec["a"], spec["b"]] if name == "gated" else spec.get("factors") or spec["components"]
        sizes = [_size(part) for part in parts]
        return _COMBINE[name]([s for s, _ in sizes], [v for _, v in sizes])
    if name in ("outcome", "rare_token"):
        states, tokens = _size(spec.get("base") or {"name": "mess3"})
        return ((states + 1) ** 2 - 1, tokens + states + 3) if name == "outcome" else (states, tokens + 1)
    hmm = build_process(spec)  # a leaf: a few states, or matrices the file spelled out
    return hmm.n_states, hmm.vocab_size


def _check_size(spec: dict[str, Any], path: str) -> None:
    try:
        states, tokens = _size(spec)
    except Exception:  # noqa: BLE001  (a malformed spec: building it reports the problem)
        return
    if states > MAX_STATES or tokens * states * states > MAX_TENSOR:
        raise FieldError(
            path,
            f"{process_label(spec)} has {states:_} hidden states and {tokens:_} tokens: its exact beliefs need a "
            f"{tokens * states * states * 8 / 2**30:,.1f} GiB transition tensor; the caps are {MAX_STATES} states "
            f"and {MAX_TENSOR * 8 // 2**30} GiB",
        )


def check_finite(value: Any, path: str) -> None:
    """Refuse inf and nan anywhere in a free-form value (a process spec, reward or analysis params),
    where no schema field holds them to finite numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(path, f"must be a finite number (got {value})")
    if isinstance(value, int) and abs(value) > 2**53:  # past float64's integers; 2**1024 overflows it
        raise FieldError(path, f"must be at most 2**53 in size (got an integer of {len(str(abs(value)))} digits)")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{path}[{i}]")


def check_storage(storage_path: str) -> None:
    """A local storage_path must be a directory this process can create entries in (or be creatable).
    Probed with a temporary directory, removed at once, in its nearest existing ancestor: os.access
    says yes to root under /proc. Object stores (s3://...) are checked by Tune when it writes."""
    if "://" in storage_path:
        return
    path = Path(storage_path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is" if existing == path else f"is under {existing}, which is"
        raise FieldError("storage_path", f"{storage_path} {what} a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rayexp-probe-", dir=existing))
    except OSError as err:
        raise FieldError("storage_path", f"cannot create directories in {existing}: {err.strerror or err}") from None


def check_process(spec: dict[str, Any], path: str):
    """Build a process spec, checked first (finite, within the state caps); a FieldError at ``path``,
    its error's own "process.components[0]: ..." prefix joined to the path."""
    check_finite(spec, path)
    _check_size(spec, path)
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
    check_finite(ref.params, f"{path}.params")
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
    hmm = check_process(trial.process, "process")
    vocab = hmm.vocab_size
    if trial.model.d_vocab is not None and trial.model.d_vocab < vocab:
        raise FieldError("model.d_vocab", f"{trial.model.d_vocab} is smaller than the process vocabulary {vocab}")
    model = trial.model.resolve(vocab)
    n_ctx = model.n_ctx
    unknown = [h for h in trial.probe.hooks or [] if h not in hook_names(model)]
    if unknown:  # else it fails in the probe stage, after pretraining
        raise FieldError(
            "probe.hooks",
            f"unknown hook(s) {unknown}; valid: hook_embed, blocks.{{0..{model.n_layers - 1}}}.hook_resid_"
            "{pre,mid,post}, ln_final.hook_normalized",
        )
    for path, length in (("pretrain.seq_len", trial.pretrain.seq_len), ("probe.seq_len", trial.probe.seq_len)):
        if length is not None and length > n_ctx:
            raise FieldError(path, f"context length {length} exceeds model.n_ctx {n_ctx}")

    task = trial.task
    check_lr(task.ppo.model_dump(), "task.ppo")
    ppo_settings(trial)  # the task's overrides, checked merged into the base section
    stream = task_process(trial)
    task_hmm = (
        hmm if stream is trial.process else check_process(stream, "task.process" if task.process else "task.stream")
    )
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
    this = _reward_at(task.reward, task.reward_params, task_hmm, task.action_tokens, "task")
    if task.start_from is not None:
        start = task.start_from
        first = _reward_at(start.reward, start.reward_params, task_hmm, task.action_tokens, "task.start_from")
        if first.action_tokens.tolist() != this.action_tokens.tolist():
            raise FieldError(
                "task.start_from.reward",
                f"M_A's reward acts on tokens {first.action_tokens.tolist()} but the task's on "
                f"{this.action_tokens.tolist()}; the policy head must be the same (set task.action_tokens)",
            )

    check_analyses(trial.analyses, "trial", "analyses")
    actions = this.action_tokens.tolist()  # the env's action set, which the analysis scores them on
    for i, ref in enumerate(trial.analyses):
        for where, spec in validate_params(ref.name, ref.params).rewards().items():
            _reward_at(spec["reward"], spec["reward_params"], task_hmm, actions, f"analyses[{i}].params.{where}")
    return {"vocab": vocab, "d_vocab": model.d_vocab, "n_ctx": n_ctx, "context": context}


def _reward_at(name: str, params: dict, hmm: Any, action_tokens: list[int] | None, path: str) -> Any:
    """The reward ``name`` built on the RL stream, or a FieldError at ``path.reward(_params)``."""
    if name not in REWARDS:
        raise FieldError(f"{path}.reward", f"unknown reward {name!r}; valid: {sorted(REWARDS)}")
    check_finite(params, f"{path}.reward_params")
    try:
        return make_reward(name, hmm, params, action_tokens)
    except (ValueError, TypeError, KeyError) as err:
        raise FieldError(f"{path}.reward_params", str(err)) from None


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
            and not (value >= 0 and (isinstance(value, int) or math.isfinite(value)))  # a huge int overflows isfinite
        ):
            raise FieldError(f"{path}.{key}", f"learning rate must be >= 0 (got {value!r})")


# ---------------------------------------------------------------------------------------------
# Placement: what a trial holds, against the nodes of a connected cluster


def trial_bundles(resources: Resources, env_runners: int) -> list[dict[str, float]]:
    """The bundles Tune reserves for one trial (rayexp.sweep): the trial's own, where its process and
    RLlib's learner run (``num_learners=0``: the learner is local), then one per remote env runner."""
    own = {"CPU": resources.cpu, "GPU": resources.gpu, **resources.custom}
    return [own] + [{"CPU": CPUS_PER_ENV_RUNNER}] * env_runners


def _fits(node: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items() if v > 0)


def check_placement(bundles: list[dict[str, float]], nodes: list[dict[str, float]], runners_at: str) -> None:
    """FieldError unless the bundles can be placed on ``nodes`` (each node's total resources) at once.

    Tune's placement group packs the bundles but may spread them over nodes: the trial's own bundle
    must fit on one node, and each env runner's (CPUs only) on whatever is left anywhere. An
    unplaceable group is not an error to Ray: the trial would wait for it forever."""
    own, runners = bundles[0], bundles[1:]
    for key, amount in own.items():
        if amount > 0 and not any(n.get(key, 0.0) >= amount for n in nodes):
            path = {"CPU": "resources.cpu", "GPU": "resources.gpu"}.get(key, f"resources.custom.{key}")
            most = max((n.get(key, 0.0) for n in nodes), default=0.0)
            if most <= 0:
                raise FieldError(path, f"{amount:g} {key} per trial requested but the cluster has no {key}")
            raise FieldError(path, f"{amount:g} {key} per trial but the largest node has {most:g}")
    homes = [i for i, n in enumerate(nodes) if _fits(n, own)]
    if not homes:
        wanted = ", ".join(f"{v:g} {k}" for k, v in own.items() if v > 0)
        raise FieldError("resources", f"no node has {wanted} at once (each has some, none all)")
    if not runners:
        return
    per = runners[0]["CPU"]
    # Ray counts resources in units of 1e-4, so a float remainder must not cost a runner
    room = [math.floor((n.get("CPU", 0.0) + 1e-6) / per) for n in nodes]
    best = max(sum(room) - room[h] + math.floor((nodes[h].get("CPU", 0.0) - own["CPU"] + 1e-6) / per) for h in homes)
    if best < len(runners):
        total = sum(n.get("CPU", 0.0) for n in nodes)
        raise FieldError(
            runners_at,
            f"a trial holds {own['CPU']:g} CPU + {len(runners)} env runners x {per:g} CPU = "
            f"{own['CPU'] + per * len(runners):g} CPUs, but the cluster ({total:g} CPUs on {len(nodes)} node(s)) "
            f"can place {best} env runners beside the trial's own CPUs",
        )
