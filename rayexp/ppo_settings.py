"""The sweep file's ``ppo`` section (:class:`PPOSettings`): PPO's hyperparameters, each documented and
bounded where declared.

Torch- and RLlib-free like the rest of the schema (:mod:`rayexp.settings`), so the validator checks a
file without loading what trains it; :mod:`rayexp.ppo` turns these settings into an RLlib config.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from models.config import MAX_BATCH, MAX_D_MLP, MAX_LR, MAX_SEED, MAX_STEPS, StrictModel

MAX_TRAIN_BATCH = 1_000_000  # env steps per PPO iteration; RLlib holds the whole batch in memory
MAX_ENVS_PER_RUNNER = 4096  # one batched forward steps them all; more only adds latency
MAX_ENV_RUNNERS = 1024
MAX_EPOCHS = 10_000
#: CPUs of one RLlib env runner (rayexp.ppo); the trial reserves them beside its own (rayexp.sweep)
CPUS_PER_ENV_RUNNER = 1.0


class PPOSettings(StrictModel):
    """PPO hyperparameters and resources (rayexp.ppo.train_ppo). Unknown keys are an error."""

    lr: float = Field(
        3e-4, ge=0, le=MAX_LR, description=f"Adam learning rate (<= {MAX_LR:g}; 0 leaves every weight untouched)"
    )
    gamma: float = Field(0.0, ge=0, le=1, description="discount; 0 because actions do not change the stream")
    lambda_: float = Field(1.0, ge=0, le=1, description="GAE lambda (irrelevant when gamma is 0)")
    clip_param: float = Field(0.2, gt=0, description="PPO ratio clip")
    vf_clip_param: float = Field(10.0, gt=0, description="clip of the squared value error")
    vf_loss_coeff: float = Field(1.0, ge=0, description="weight of the value loss")
    entropy_coeff: float = Field(0.0, ge=0, description="entropy bonus")
    kl_coeff: float = Field(
        0.0, ge=0, description="RLlib's adaptive KL penalty to the *previous* policy (0 disables it)"
    )
    kl_target: float = Field(0.01, gt=0, description="target of the adaptive KL to the previous policy")
    kl_to_pretrained: float = Field(
        0.0, ge=0, description="fixed coefficient of KL(policy || frozen pretrained policy) added to the loss"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="global gradient-norm clip (None: off)")
    num_epochs: int = Field(4, ge=1, le=MAX_EPOCHS, description=f"passes over each train batch (<= {MAX_EPOCHS})")
    minibatch_size: int = Field(
        500, ge=1, le=MAX_BATCH, description=f"rows per SGD step (<= train_batch_size, <= {MAX_BATCH})"
    )
    train_batch_size: int = Field(
        2000, ge=1, le=MAX_TRAIN_BATCH, description=f"env steps per training iteration (<= {MAX_TRAIN_BATCH:_})"
    )
    shuffle_batch_per_epoch: bool = Field(False, description="shuffle rows per epoch (breaks prefix sharing)")
    num_env_runners: int = Field(
        0, ge=0, le=MAX_ENV_RUNNERS, description=f"remote env runners (0: sample in the driver; <= {MAX_ENV_RUNNERS})"
    )
    num_envs_per_env_runner: int = Field(
        16,
        ge=1,
        le=MAX_ENVS_PER_RUNNER,
        description=f"envs stepped together, one batched forward per step (<= {MAX_ENVS_PER_RUNNER})",
    )
    iterations: int = Field(10, ge=1, le=MAX_STEPS, description="training iterations")
    checkpoint_every: int = Field(
        1,
        ge=0,
        le=MAX_STEPS,
        description="save the PPO state every N iterations; a killed trial resumes there (0: never)",
    )
    save_every: int = Field(
        5,
        ge=0,
        le=MAX_STEPS,
        description="store a policy checkpoint (pretraining checkpoint format) every N PPO iterations, "
        "plus the final one; 0 = final only",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of RLlib, envs and torch; unset = the trial's seed")
    value_hidden: int = Field(
        64, ge=0, le=MAX_D_MLP, description="hidden width of the value MLP (0: linear value head)"
    )
    value_grad_to_trunk: bool = Field(
        False, description="let the value loss update the transformer (off: weight changes are the policy's)"
    )

    @model_validator(mode="after")
    def _minibatch_fits(self) -> PPOSettings:
        # RLlib refuses this too, but only once the trial has pretrained
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} exceeds train_batch_size {self.train_batch_size}")
        return self
