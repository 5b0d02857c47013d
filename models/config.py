"""Configs of the transformer and of its pretraining, and what training them costs in memory.

Pure pydantic (no torch): a driver validates sweep files against these models without loading
torch, and ``models.transformer`` / ``models.pretrain`` re-export them.

Sizes have finite maxima. They are generous for real use on one GPU (a GPT-2-XL-sized width and
context still fit) but catch the typo that asks for a million positions or a million-wide layer,
which would otherwise surface as an allocation failure minutes into a trial. The estimated memory of
a training step (:func:`train_memory_bytes`) bounds the combinations that each maximum allows.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

# Documented maxima of the size fields (see the module docstring for why they exist).
MAX_N_CTX = 4096  # the CPU attention kernel keeps a (B, H, T, T) pattern; HMM beliefs need short contexts
MAX_D_MODEL = 4096  # a 7B-class width; the models here are trained from scratch on tiny vocabularies
MAX_N_LAYERS = 64
MAX_N_HEADS = 128  # d_model 4096 with 32-wide heads
MAX_D_HEAD = 512
MAX_D_MLP = 16384  # 4 x MAX_D_MODEL
MAX_D_VOCAB = 65536  # GPT-2's tokenizer fits; the processes here emit tens of tokens
MAX_BATCH = 65536  # sequences per update (pretraining) or rows per SGD step (PPO minibatch)
MAX_STEPS = 10_000_000  # 2000 steps train the flagship model; a few extra zeros are a typo
# RLlib seeds numpy's global generator (seeds < 2**32) with a seed plus offsets; 2**31 leaves room.
MAX_SEED = 2**31 - 1
# Adam moves every weight by about lr per step: past 1 the weights of these models (scale ~0.1) are
# gone in one step, so a larger value is a typo (1.5 for 1.5e-3), caught here rather than as nan.
# Plain SGD's step scales with the gradient, so it may go higher; past 1000 it is a typo too.
MAX_LR = 1.0
MAX_SGD_LR = 1000.0

#: Strict and finite: ``true`` is not the integer 1, "2" is not a number, and inf / nan are no value
#: a training run can use (they pass every ``ge=`` bound and train nothing).
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
#: names that become parts of run, metric and directory names
NAME_PATTERN = r"^[A-Za-z0-9_\-]+$"
_Beta = Annotated[float, Field(ge=0, lt=1)]

BYTES_PER_FLOAT = 4  # float32 weights, grads, optimizer state and activations (CUDA autocast halves the last)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys, coercion, inf and nan are errors (:data:`STRICT`)."""

    model_config = STRICT


class TransformerConfig(BaseModel):
    """Architecture of :class:`models.transformer.Transformer`. Defaults are the Mess3 model of Shai et al. (2024)."""

    model_config = ConfigDict(**STRICT, frozen=True)

    n_layers: int = Field(4, ge=1, le=MAX_N_LAYERS, description=f"number of transformer blocks (<= {MAX_N_LAYERS})")
    d_model: int = Field(64, ge=1, le=MAX_D_MODEL, description=f"width of the residual stream (<= {MAX_D_MODEL})")
    n_heads: int = Field(1, ge=1, le=MAX_N_HEADS, description=f"attention heads per block (<= {MAX_N_HEADS})")
    d_head: int = Field(
        8,
        ge=1,
        le=MAX_D_HEAD,
        description=f"width of each head (<= {MAX_D_HEAD}; n_heads * d_head need not equal d_model)",
    )
    d_mlp: int = Field(256, ge=1, le=MAX_D_MLP, description=f"hidden width of each MLP (<= {MAX_D_MLP})")
    n_ctx: int = Field(
        10, ge=1, le=MAX_N_CTX, description=f"context length: maximum number of positions (<= {MAX_N_CTX})"
    )
    d_vocab: int = Field(
        3, ge=1, le=MAX_D_VOCAB, description=f"vocabulary size, input tokens and output logits (<= {MAX_D_VOCAB})"
    )
    act: Literal["relu", "gelu"] = Field("relu", description="MLP non-linearity")
    ln: bool = Field(True, description="use LayerNorm before attention, MLP and unembedding (else identity)")


class PretrainConfig(BaseModel):
    """Training settings of :func:`models.pretrain.pretrain`; every field is validated and unknown keys are an error."""

    model_config = ConfigDict(**STRICT)

    steps: int = Field(2000, ge=0, le=MAX_STEPS, description=f"optimizer updates (<= {MAX_STEPS:_})")
    batch_size: int = Field(
        512, ge=1, le=MAX_BATCH, description=f"sequences per update, fresh samples every step (<= {MAX_BATCH})"
    )
    seq_len: int | None = Field(
        None,
        ge=1,
        le=MAX_N_CTX,
        description=f"input positions per sequence (<= n_ctx <= {MAX_N_CTX}); None = the model's n_ctx",
    )
    lr: float = Field(
        1e-3, gt=0, le=MAX_SGD_LR, description=f"peak learning rate (<= {MAX_LR:g} with adamw, {MAX_SGD_LR:g} with sgd)"
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW (fused kernel) or SGD")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (ignored by AdamW)")
    # Strict(False): a YAML or JSON list is a tuple here (each beta stays strict and finite)
    betas: Annotated[tuple[_Beta, _Beta], Strict(False)] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1)"
    )
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after warm-up: cosine decay to min_lr_frac * lr, or constant"
    )
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="linear warm-up from 0 to lr over this many updates")
    min_lr_frac: float = Field(0.1, ge=0, le=1, description="final lr of the cosine schedule, as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this; None = off")
    weight_decay: float = Field(0.0, ge=0, description="decoupled (AdamW) or L2 (SGD) weight decay")
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"seeds the initialisation and the data stream (<= {MAX_SEED})")
    eval_every: int = Field(
        100, ge=1, le=MAX_STEPS, description="report metrics (history, callback, progress) every N updates"
    )
    checkpoint_steps: list[Annotated[int, Field(ge=0, le=MAX_STEPS)]] = Field(
        default_factory=list, description="save a checkpoint after these updates (0 = at init); needs out_dir"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available, else cpu")
    num_threads: int | None = Field(
        2, ge=1, le=4096, description="CPU cores to train on; None = torch's current setting"
    )
    compile: bool = Field(False, description="torch.compile forward + backward (measured slower on CPU for this model)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description=(
            "bf16: matrix products in bf16 (autocast), with weights, optimizer state, LayerNorm, attention softmax "
            "and the loss in fp32; fp32: everything fp32; auto = bf16 where the device has bf16 matrix units "
            "(CUDA compute capability >= 8, x86 AMX-BF16 or AVX-512 BF16), else fp32. The resolved value is logged and keyed"
        ),
    )
    progress: bool | None = Field(None, description="tqdm bar; None = only on a TTY and for >= 500 steps")
    optimal_loss_samples: int = Field(
        20000, ge=100, description="Monte-Carlo sequences for the optimal loss when the process has no exact one"
    )

    @model_validator(mode="after")
    def _adam_lr(self) -> PretrainConfig:
        if self.optimizer == "adamw" and self.lr > MAX_LR:
            raise ValueError(
                f"lr {self.lr:g} exceeds {MAX_LR:g} with adamw, which moves every weight by about lr a step"
            )
        return self

    @property
    def optimizer_states(self) -> int:
        """Floats of optimizer state per parameter: AdamW's two moments, SGD's momentum buffer if any."""
        if self.optimizer == "adamw":
            return 2
        return 1 if self.momentum > 0 else 0


def hook_names(cfg: TransformerConfig) -> list[str]:
    """Hook names of ``Transformer(cfg)``, in forward order (``models.transformer.hook_names_for``
    gives the same list; here so a driver checks ``probe.hooks`` without torch)."""
    names = ["hook_embed"]
    for i in range(cfg.n_layers):
        names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_mid", f"blocks.{i}.hook_resid_post"]
    return names + ["ln_final.hook_normalized"]


def param_count(cfg: TransformerConfig) -> int:
    """Parameters of ``Transformer(cfg)`` (equals its ``num_params()``), from the config alone."""
    D, H, E, F, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    norm = 2 * D if cfg.ln else 0  # LayerNorm weight + bias
    attn = D * 3 * H * E + 3 * H * E + H * E * D + D  # fused qkv, out projection (with biases)
    mlp = D * F + F + F * D + D
    block = 2 * norm + attn + mlp
    return V * D + cfg.n_ctx * D + cfg.n_layers * block + norm + D * V + V  # embeds, blocks, ln_final, unembed


def activation_floats(cfg: TransformerConfig, batch: int, seq_len: int) -> int:
    """Floats a training step keeps for its backward pass, for a (batch, seq_len) token batch.

    Exactly what autograd saves on the CPU float32 path (``tests/test_validate.py`` counts it). Per
    block and position: each LayerNorm's input and statistics, its output as the next Linear's
    input (without LayerNorm, the Linear keeps the residual itself); the fused qkv (3 H E), the
    attention pattern (H T: the CPU kernel keeps it, as does SDPA's math path; flash attention on
    a GPU does not, so there this over-counts) and the merged heads (H E); the MLP's hidden layer,
    once for relu (its output serves its own backward and fc_out's), twice for gelu. Outside the
    blocks: the final LayerNorm and the log-softmax of the loss (V).
    """
    D, H, E, F, V, T = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, seq_len
    norm = 2 * D + 2 if cfg.ln else D  # input + mean, rstd + output; or the un-normed input
    hidden = F if cfg.act == "relu" else 2 * F
    per_block = 2 * norm + 3 * H * E + H * T + H * E + hidden
    return batch * T * (cfg.n_layers * per_block + norm + V)


def train_memory_bytes(cfg: TransformerConfig, batch: int, seq_len: int, optimizer_states: int = 2) -> int:
    """Estimated peak memory of one training step, in bytes (float32 throughout).

    Weights, their gradients and ``optimizer_states`` floats per parameter (AdamW: 2), plus
    :func:`activation_floats`. The backward pass's transient buffers and the allocator's slack are
    not counted; CUDA's bf16 autocast and flash attention need less. A planning figure, not a bound.
    """
    params = param_count(cfg)
    return BYTES_PER_FLOAT * ((2 + optimizer_states) * params + activation_floats(cfg, batch, seq_len))
