"""The sweep file's schema: one pydantic model per section, each field documented where declared.

Imports neither torch nor RLlib (the transformer and pretraining configs come from the torch-free
``models.config``), so ``rayexp validate`` checks a file in about a second on a driver that never
trains. Unknown keys are an error in every section. What needs more than one section (context
lengths against ``model.n_ctx``, process vocabularies, estimated memory, analysis parameters) is
checked in :mod:`rayexp.config`, which also resolves the trials.

Sizes have documented maxima (``le=`` bounds, see :mod:`models.config` for why). Every section is
strict and finite (``models.config.StrictModel``): ``true`` is no integer, inf and nan no number.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    create_model,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from models.config import MAX_D_VOCAB, MAX_N_CTX, MAX_SEED, NAME_PATTERN, PretrainConfig, StrictModel, TransformerConfig
from rayexp.axes import Axes
from rayexp.ppo_settings import PPOSettings

MAX_PROBE_SEQ = 200_000  # the ridge fit holds n_seq x seq_len rows per hook; scores settle far earlier
MAX_EPISODE_LEN = 1_000_000


class _Overrides(StrictModel):
    """Dumps only the fields that were set, so a trial's dump, its MLflow params and its key read as
    the sweep file wrote it, and "unset" survives a dump and reload."""

    @model_serializer(mode="wrap")
    def _set_only(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def _overrides_of(settings: type[BaseModel], name: str) -> type[_Overrides]:
    """A model with every field of ``settings`` optional and unset, each value held to the field's
    own constraints; cross-field checks run once the overrides are merged into the base section."""
    fields: dict[str, Any] = {
        key: (
            (Annotated[f.annotation, *f.metadata] if f.metadata else f.annotation) | None,
            Field(None, description=f.description),
        )
        for key, f in settings.model_fields.items()
    }
    return create_model(name, __base__=_Overrides, **fields)


#: a task's overrides of the base ppo section
PPOOverrides = _overrides_of(PPOSettings, "PPOOverrides")


class ModelSection(TransformerConfig):
    """The sweep's ``model`` section: a TransformerConfig whose vocabulary defaults to the process's."""

    # Wider than TransformerConfig.d_vocab on purpose: None is resolved per trial, once the process is built.
    d_vocab: int | None = Field(  # pyright: ignore[reportIncompatibleVariableOverride]
        None,
        ge=1,
        le=MAX_D_VOCAB,
        description=f"vocabulary size (<= {MAX_D_VOCAB}); null = the pretraining process's vocabulary, "
        "which an explicit value must not be below",
    )

    def resolve(self, vocab: int) -> TransformerConfig:
        """The TransformerConfig of a trial whose process emits ``vocab`` tokens."""
        return TransformerConfig(**{**self.model_dump(), "d_vocab": self.d_vocab or vocab})


class ProbeSettings(StrictModel):
    """Belief probes run before and after RL (rayexp.probes.probe_model)."""

    n_seq: int = Field(
        default=3000,
        ge=10,
        le=MAX_PROBE_SEQ,
        description=f"Fresh sequences sampled for probing, split by sequence (<= {MAX_PROBE_SEQ:_}).",
    )
    seq_len: int | None = Field(
        default=None, gt=0, le=MAX_N_CTX, description="Probe sequence length; null = model n_ctx. Must be <= n_ctx."
    )
    test_frac: float = Field(default=0.2, gt=0, lt=1, description="Share of sequences held out for scoring.")
    alpha: float = Field(default=1e-6, ge=0, le=1e6, description="Ridge penalty (<= 1e6: past it every probe is 0).")
    hooks: list[str] | None = Field(default=None, description="Hook names to probe; null = all residual hooks.")
    figures: bool = Field(default=True, description="Log belief-simplex and skill-by-layer figures.")


class ArtifactSettings(StrictModel):
    """What a trial stores under storage_path for later analyses (rayexp.artifacts)."""

    pretrain_checkpoints: int = Field(
        default=10,
        ge=0,
        le=200,
        description="number of log-spaced pretraining checkpoints, step 0 and the last step included; 0 = none",
    )
    retention: Literal["all", "final", "none"] = Field(
        default="all",
        description="all: keep every checkpoint; final: after the trial's analyses, delete intermediate PPO "
        "checkpoints and keep the pretrained and final models; none: delete the trial's stored artifacts "
        "when it finishes (MLflow keeps what was logged)",
    )
    rollouts: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="episodes of the final policy stored for analyses that need rollouts; raised automatically "
        "when an analysis needs them",
    )


class AnalysisRef(StrictModel):
    """One analysis to run and its parameters; a bare name ``weight_diff`` means ``{name: weight_diff}``."""

    name: str = Field(description="Name of a registered analysis (rayexp.registry).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the analysis, checked against its own params model."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class SweepAnalysisRef(AnalysisRef):
    """An across-trial analysis run over the finished sweep, once per group of trials."""

    group_by: list[str] = Field(
        default_factory=lambda: ["task"],
        description="Dotted trial-config paths whose values form the groups, e.g. task (= task.name), process, "
        "model.d_model, seed; [] = all trials in one group.",
    )

    @field_validator("group_by")
    @classmethod
    def _distinct(cls, keys: list[str]) -> list[str]:
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"{repeated} listed more than once")
        return keys


class StartFrom(StrictModel):
    """Start a task's PPO from M_A: the pretrained model first post-trained with PPO on another
    reward in the same env, with its own fixed seed, so every trial naming the same M_A shares it
    (trained once, cached next to the pretrained model)."""

    reward: str = Field(description="M_A's reward (envs.rewards.REWARDS), e.g. next_token.")
    reward_params: dict[str, Any] = Field(default_factory=dict, description="Keyword parameters of that reward.")
    iterations: int = Field(gt=0, le=100_000, description="PPO iterations that train M_A.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="M_A's PPO seed (not the trial's: trials share M_A).")


class TaskConfig(StrictModel):
    """One RL post-training task: an environment over a process stream and a reward."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Short name; appears in run names and metric names (ppo/{name}/...).",
    )
    env: str = Field(
        default="sequence",
        description="Env kind in envs.gym_env.ENV_KINDS: sequence (actions do not steer the stream), "
        "active_gated (the agent can emit a gated process's trigger; needs a gated RL stream) or outcome "
        "(the agent takes an outcome process's actions and is paid their outcomes; reward outcome).",
    )
    reward: str = Field(description="Reward name in envs.rewards.REWARDS, e.g. next_token or joint_target.")
    reward_params: dict[str, Any] = Field(default_factory=dict, description="Keyword parameters of the reward.")
    shuffle_reward: bool = Field(
        default=False,
        description="The null task: score each action against an independent sequence's target, so the reward "
        "says nothing about the right action and PPO's own drift has a baseline (active_gated: an independent "
        "sequence the same actions steer; not for outcome).",
    )
    stream: Literal["pretrain", "interleave", "product"] = Field(
        default="pretrain",
        description="RL stream when `process` is null: the pretraining process itself, or its components "
        "(of a mixture / composition) interleaved or taken as a product, so a grid over base.process "
        "carries the positive control along.",
    )
    process: dict[str, Any] | None = Field(
        default=None,
        description="Explicit process spec of the RL stream (envs.build_process); overrides `stream`.",
    )
    context: int | None = Field(
        default=None,
        gt=0,
        le=MAX_N_CTX,
        description="Observation window K of the env; null = the model's n_ctx. Must be <= n_ctx.",
    )
    episode_len: int | None = Field(
        default=None, gt=0, le=MAX_EPISODE_LEN, description="Steps per episode; null = context."
    )
    action_tokens: list[int] | None = Field(
        default=None, description="Distinct token ids the policy may emit; null = the RL stream's whole vocabulary."
    )
    ppo: PPOOverrides = Field(
        default_factory=PPOOverrides,
        description="Overrides of the base ppo settings for this task only (any PPOSettings field; checked merged).",
    )
    start_from: StartFrom | None = Field(
        default=None,
        description="Post-train from M_A (the pretrained model after PPO on start_from.reward in this env) instead "
        "of the pretrained model; 'before' then means M_A for every stage and analysis.",
    )

    @field_validator("action_tokens")
    @classmethod
    def _distinct(cls, tokens: list[int] | None) -> list[int] | None:
        # a repeated token is two policy outputs with one meaning: PPO's ratio and KL collapse
        repeated = sorted({t for t in tokens or [] if tokens.count(t) > 1})
        if repeated:
            raise ValueError(f"token(s) {repeated} listed more than once; each action is one distinct token")
        return tokens


class BaseTrial(StrictModel):
    """Everything one trial needs except its task."""

    process: dict[str, Any] = Field(
        description="Pretraining process spec for envs.build_process, e.g. {name: mess3, x: 0.05, a: 0.85}."
    )
    model: ModelSection = Field(description="The transformer (models.config.TransformerConfig fields).")
    pretrain: PretrainConfig = Field(
        default_factory=PretrainConfig,
        description="Pretraining (models.config.PretrainConfig fields). Fields left unset follow the trial: "
        "seed = the trial's seed, num_threads = its CPUs, no progress bar. A batch_size x seq_len whose estimated "
        "training memory (models.config.train_memory_bytes) exceeds RAYEXP_MEMORY_GB (default 64) is refused.",
    )
    probe: ProbeSettings = Field(default_factory=ProbeSettings, description="Belief probe settings.")
    ppo: PPOSettings = Field(
        default_factory=PPOSettings,
        description="PPO settings shared by the tasks; unset seed = the trial's seed. A minibatch_size x context "
        "whose estimated training memory exceeds RAYEXP_MEMORY_GB (default 64) is refused.",
    )
    analyses: list[AnalysisRef] = Field(
        default_factory=lambda: [AnalysisRef(name="weight_diff")],
        description="Trial-level analyses run after PPO, each a name or {name, params}; names unique.",
    )
    artifacts: ArtifactSettings = Field(
        default_factory=ArtifactSettings, description="What the trial stores for later analyses."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of every stochastic step (pretrain, probes, PPO)")

    @field_serializer("model", "pretrain", "ppo", mode="wrap")
    def _as_written(self, section: BaseModel, handler: Any) -> dict[str, Any]:
        # These sections dump only the fields the file set: an unset field follows the trial
        # (pretrain.seed is the trial's seed, d_vocab the process's), so a dumped base re-validates
        # to the same trials instead of pinning a default as if the file had written it.
        return {k: v for k, v in handler(section).items() if k in section.model_fields_set}


class TrialConfig(BaseTrial):
    """A fully resolved trial: the base with axis values applied, plus its task."""

    task: TaskConfig = Field(description="The RL task of this trial.")


class Resources(StrictModel):
    """Resources of one trial (one Tune trial = one Ray actor holding them)."""

    cpu: float = Field(default=1.0, gt=0, le=4096, description="CPUs per trial (<= 4096).")
    gpu: float = Field(default=0.0, ge=0, le=64, description="GPUs per trial (<= 64); fractions (< 1) share a device.")
    custom: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Custom Ray resources per trial, e.g. {node_a: 0.01} to pin trials."
    )

    @field_validator("gpu")
    @classmethod
    def _whole_past_one(cls, gpu: float) -> float:
        if gpu > 1 and not gpu.is_integer():  # Ray refuses it, but only once the trial is scheduled
            raise ValueError(f"more than 1 GPU must be a whole number, got {gpu}")
        return gpu


class SweepConfig(StrictModel):
    """A whole sweep file."""

    name: str = Field(pattern=NAME_PATTERN, description="Sweep name; Tune experiment dir under storage_path.")
    description: str = Field(default="", description="What the sweep asks; logged on the parent MLflow run.")
    experiment: str | None = Field(default=None, description="MLflow experiment name; null = the sweep name.")
    storage_path: str = Field(
        default="rayexp_results",
        min_length=1,
        description="Results, checkpoints and the pretrain cache: a local dir, an NFS mount or s3://bucket/prefix.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per-trial resources.")
    max_concurrent: int | None = Field(default=None, ge=1, description="Cap on trials running at once.")
    max_failures: int = Field(
        default=2, ge=0, le=100, description="Retries of a failed trial, from its last checkpoint."
    )
    base: BaseTrial = Field(description="The base trial config.")
    tasks: list[TaskConfig] = Field(min_length=1, description="RL tasks; each is an implicit grid axis.")
    axes: Axes = Field(default_factory=Axes, description="Grid and sampled axes over the base trial.")
    sweep_analyses: list[SweepAnalysisRef] = Field(
        default_factory=list,
        description="Across-trial analyses run over the finished sweep (rayexp analyze), logged on the parent run.",
    )

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return tasks
