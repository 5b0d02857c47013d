"""Linear probes from residual-stream activations to exact belief states, with controls.

A probe is closed-form ridge regression (float64, unpenalised intercept) from one hook point's
activations (or the concatenation of all residual-stream layers) to a belief target. Every probe
is scored on held-out *sequences* (never held-out positions of a training sequence) and next to
two controls:

- random init: the same architecture at its initialisation (same seed as the trained model), probed
  the same way. A random 4-layer transformer already reaches R^2 ~ 0.98 on Mess3, so raw R^2 is not
  evidence; ``skill = 1 - MSE_trained / MSE_random_init`` is.
- shuffled: the trained activations probed against beliefs permuted across sequences (positions kept
  aligned), which tells what a probe of this width fits out of nothing.

Targets: ``belief`` (the joint belief over the process's states) and, for compositions, ``factor{i}``
(factor i's belief). For a mixture, factor i is scored only on the sequences drawn from component i,
where its belief is that component's own forward-algorithm belief.

How to run: ``probe_model(model, random_model, hmm, n_seq=3000, seed=0).table``; the table has one
row per (target, hook), see :data:`SCHEMA`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayexp.ridge import Ridge, mse, r2, ridge_fit, skill, split_sequences

CONCAT = "concat_resid"

SCHEMA = pa.schema(
    [
        pa.field("target", pa.string()),  # "belief" | "factor{i}"
        pa.field("hook", pa.string()),  # hook name, or CONCAT
        pa.field("kind", pa.string()),  # embed | resid_pre | resid_mid | resid_post | ln_final | concat
        pa.field("layer", pa.int32()),  # block index of the hook; -1 for embed/ln_final/concat
        pa.field("depth", pa.float64()),  # position in the residual stream: embed 0, block i pre i, mid i+.5, post i+1
        pa.field("n_features", pa.int32()),
        pa.field("n_states", pa.int32()),
        pa.field("r2", pa.float64()),
        pa.field("mse", pa.float64()),
        pa.field("r2_random_init", pa.float64()),
        pa.field("mse_random_init", pa.float64()),
        pa.field("r2_shuffled", pa.float64()),
        pa.field("mse_shuffled", pa.float64()),
        pa.field("skill", pa.float64()),
        pa.field("skill_ci_low", pa.float64()),  # 95% bootstrap over held-out sequences
        pa.field("skill_ci_high", pa.float64()),
        pa.field("n_train", pa.int32()),  # sequences
        pa.field("n_test", pa.int32()),  # sequences
        pa.field("seq_len", pa.int32()),
    ]
)


def _rows(a: np.ndarray) -> np.ndarray:
    """(n, L, D) -> (n * L, D) float64."""
    return np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])


@dataclass
class ProbeScore:
    r2: float
    mse: float
    seq_sse: np.ndarray  # (n_test,) squared error summed per held-out sequence, for bootstrapping
    model: Ridge
    pred: np.ndarray  # (n_test, L, K) held-out predictions


def fit_and_score(
    acts: np.ndarray, beliefs: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float = 1e-6
) -> ProbeScore:
    """Fit on ``train`` sequences of ``acts`` (N, L, D) -> ``beliefs`` (N, L, K), score on ``test``."""
    model = ridge_fit(_rows(acts[train]), _rows(beliefs[train]), alpha)
    y_test = np.asarray(beliefs[test], dtype=np.float64)  # (n_test, L, K)
    pred = model.predict(_rows(acts[test])).reshape(y_test.shape)  # (n_test, L, K)
    y_rows, p_rows = _rows(y_test), _rows(pred)
    return ProbeScore(
        r2=r2(y_rows, p_rows),
        mse=mse(y_rows, p_rows),
        seq_sse=((y_test - pred) ** 2).sum(axis=(1, 2)),
        model=model,
        pred=pred,
    )


def bootstrap_skill(
    sse_model: np.ndarray, sse_random: np.ndarray, rng: np.random.Generator, n_boot: int = 1000
) -> tuple[float, float]:
    """95% interval of the skill, resampling held-out sequences (both probes see the same sequences)."""
    idx = rng.integers(0, len(sse_model), size=(n_boot, len(sse_model)))
    ratios = sse_model[idx].sum(axis=1) / np.maximum(sse_random[idx].sum(axis=1), 1e-300)
    lo, hi = np.quantile(1.0 - ratios, [0.025, 0.975])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# Hooks, activations and targets

#: what the unembedding reads: the final LayerNorm's output
FINAL = "ln_final.hook_normalized"


def layer_name(hook: str) -> str:
    """Short name of a residual hook: ``embed`` (block 0's input), ``block{i}`` (its output), ``final``."""
    if hook == FINAL:
        return "final"
    if hook.endswith("hook_resid_pre"):
        return "embed"
    return f"block{hook.split('.')[1]}"


def hook_position(hook: str, n_layers: int) -> tuple[str, int, float]:
    """(kind, layer, depth) of a hook name; depth orders hooks along the residual stream."""
    if hook == "hook_embed":
        return "embed", -1, 0.0
    if hook == FINAL:
        return "ln_final", -1, float(n_layers)
    if hook == CONCAT:
        return "concat", -1, float(n_layers)
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|mid|post)", hook)
    if m is None:
        raise ValueError(f"unknown hook {hook!r}")
    i = int(m.group(1))
    return f"resid_{m.group(2)}", i, i + {"pre": 0.0, "mid": 0.5, "post": 1.0}[m.group(2)]


def residual_layers(hook_names: list[str]) -> list[str]:
    """The distinct residual-stream states: the input to block 0 and each block's output.

    (block i's resid_pre equals block i-1's resid_post, so these are not double-counted.)
    """
    posts = sorted((h for h in hook_names if h.endswith("hook_resid_post")), key=lambda h: int(h.split(".")[1]))
    first = [h for h in hook_names if h == "blocks.0.hook_resid_pre"]
    return first + posts


def collect_activations(
    model, tokens: np.ndarray, names: list[str] | None = None, batch_size: int = 1024
) -> dict[str, np.ndarray]:
    """Run ``model.run_with_cache`` over ``tokens`` (N, L) in batches -> {hook: (N, L, D) float32}."""
    import torch

    names = list(names or model.hook_names)
    device = next(model.parameters()).device
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                batch = torch.as_tensor(tokens[start : start + batch_size], dtype=torch.long, device=device)  # (b, L)
                _, cache = model.run_with_cache(batch, names=names)
                for n in names:
                    chunks[n].append(cache[n].float().cpu().numpy())  # (b, L, D)
    finally:
        model.train(was_training)
    return {n: np.concatenate(c) for n, c in chunks.items()}


@dataclass
class Target:
    """Beliefs to probe for, and the sequences on which they are defined."""

    beliefs: np.ndarray  # (N, L, S) float64
    sequences: np.ndarray  # (N,) bool


def belief_targets(hmm, tokens: np.ndarray, beliefs: np.ndarray | None = None) -> dict[str, Target]:
    """``belief`` (joint) and, for compositions, ``factor{i}`` targets for ``tokens`` (N, L).

    Where each sequence comes from one factor (``hmm.layout.exclusive``: a mixture), factor i is
    defined on the sequences all of whose tokens it owns; its target is that component's
    forward-algorithm belief on its own (local) tokens, computed from the factor process itself so it
    does not depend on how the joint state space is laid out. Other compositions use
    ``hmm.factor_beliefs``.
    """
    tokens = np.asarray(tokens)
    joint = hmm.beliefs(tokens) if beliefs is None else np.asarray(beliefs, dtype=np.float64)  # (N, L, S)
    every = np.ones(len(tokens), dtype=bool)
    targets = {"belief": Target(joint, every)}
    layout = hmm.layout
    if layout is None:
        return targets
    if layout.exclusive:
        for i, (factor, local) in enumerate(zip(layout.factors, layout.split_tokens(tokens))):
            mine = (local >= 0).all(axis=1)  # (N,)
            fb = np.full(tokens.shape + (factor.n_states,), np.nan)  # (N, L, S_i)
            fb[mine] = factor.beliefs(local[mine])
            targets[f"factor{i}"] = Target(fb, mine)
    else:
        for i, fb in enumerate(hmm.factor_beliefs(joint)):
            targets[f"factor{i}"] = Target(np.asarray(fb, dtype=np.float64), every)
    return targets


# ---------------------------------------------------------------------------------------------
# The probe table


@dataclass
class ProbeResult:
    table: pa.Table
    tokens: np.ndarray  # (N, L)
    targets: dict[str, Target]
    train: np.ndarray  # sequence indices
    test: np.ndarray
    predictions: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (target, hook) -> (n_test_t, L, S)
    predictions_random: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # same, random-init model

    def held_out(self, target: str, hook: str, random_init: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) held-out beliefs of one probe, each (n, S) with all positions flattened."""
        t = self.targets[target]
        test = self.test[t.sequences[self.test]]
        pred = (self.predictions_random if random_init else self.predictions)[(target, hook)]
        return _rows(t.beliefs[test]), _rows(pred)


def run_probes(
    acts: dict[str, np.ndarray],
    acts_random: dict[str, np.ndarray],
    targets: dict[str, Target],
    *,
    n_layers: int,
    test_frac: float = 0.2,
    alpha: float = 1e-6,
    seed: int = 0,
    concat: bool = True,
    keep_predictions: bool = True,
    tokens: np.ndarray | None = None,
) -> ProbeResult:
    """Probe every hook in ``acts`` (and their residual concatenation) for every target, with controls.

    ``acts`` / ``acts_random``: {hook: (N, L, D)} from the trained and the random-init model on the same
    sequences. One split by sequence and one shuffle permutation serve every row, so rows compare.
    """
    rng = np.random.default_rng(seed)
    n_seq = len(next(iter(acts.values())))
    train, test = split_sequences(n_seq, test_frac, rng)
    shuffle_perm = rng.permutation(n_seq)
    hooks = list(acts)
    if concat:
        layers = residual_layers(hooks)
        if len(layers) > 1:
            acts = {**acts, CONCAT: np.concatenate([acts[h] for h in layers], axis=-1)}
            acts_random = {**acts_random, CONCAT: np.concatenate([acts_random[h] for h in layers], axis=-1)}
            hooks.append(CONCAT)
    rows, predictions, predictions_random = [], {}, {}
    for name, target in targets.items():
        tr, te = train[target.sequences[train]], test[target.sequences[test]]
        mine = np.flatnonzero(target.sequences)
        shuffled = target.beliefs.copy()
        # Shuffle only among this target's own sequences, so every row still holds a valid belief.
        shuffled[mine] = target.beliefs[mine[np.argsort(shuffle_perm[mine])]]
        for hook in hooks:
            trained = fit_and_score(acts[hook], target.beliefs, tr, te, alpha)
            random = fit_and_score(acts_random[hook], target.beliefs, tr, te, alpha)
            shuf = fit_and_score(acts[hook], shuffled, tr, te, alpha)
            lo, hi = bootstrap_skill(trained.seq_sse, random.seq_sse, rng)
            kind, layer, depth = hook_position(hook, n_layers)
            rows.append(
                {
                    "target": name,
                    "hook": hook,
                    "kind": kind,
                    "layer": layer,
                    "depth": depth,
                    "n_features": acts[hook].shape[-1],
                    "n_states": target.beliefs.shape[-1],
                    "r2": trained.r2,
                    "mse": trained.mse,
                    "r2_random_init": random.r2,
                    "mse_random_init": random.mse,
                    "r2_shuffled": shuf.r2,
                    "mse_shuffled": shuf.mse,
                    "skill": skill(trained.mse, random.mse),
                    "skill_ci_low": lo,
                    "skill_ci_high": hi,
                    "n_train": len(tr),
                    "n_test": len(te),
                    "seq_len": target.beliefs.shape[1],
                }
            )
            if keep_predictions:
                predictions[(name, hook)] = trained.pred
                predictions_random[(name, hook)] = random.pred
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return ProbeResult(table, tokens, targets, train, test, predictions, predictions_random)


def probe_model(
    model,
    random_model,
    hmm,
    *,
    n_seq: int = 3000,
    seq_len: int | None = None,
    seed: int = 0,
    hooks: list[str] | None = None,
    test_frac: float = 0.2,
    alpha: float = 1e-6,
    batch_size: int = 1024,
) -> ProbeResult:
    """Sample ``n_seq`` fresh sequences from ``hmm`` (seeded), probe ``model`` against ``random_model``.

    ``random_model`` must be the same architecture at the trained model's initialisation (same seed).
    ``seq_len`` defaults to the model's context length.
    """
    seq_len = seq_len or model.cfg.n_ctx
    rng = np.random.default_rng(seed)
    tokens, _, beliefs = hmm.sample_with_beliefs(n_seq, seq_len, rng)
    targets = belief_targets(hmm, tokens, beliefs)
    hooks = list(hooks or model.hook_names)
    acts = collect_activations(model, tokens, hooks, batch_size)
    acts_random = collect_activations(random_model, tokens, hooks, batch_size)
    return run_probes(
        acts,
        acts_random,
        targets,
        n_layers=model.cfg.n_layers,
        test_frac=test_frac,
        alpha=alpha,
        seed=int(rng.integers(2**31)),
        tokens=tokens,
    )


def summarize(table: pa.Table, target: str = "belief") -> dict[str, float]:
    """Flat metrics for one target, namespaced by hook (``{hook}/skill``), for MLflow and JSON."""
    out = {}
    for row in table.filter(pc.equal(table["target"], target)).to_pylist():
        for k in ("r2", "mse", "r2_random_init", "r2_shuffled", "skill", "skill_ci_low", "skill_ci_high"):
            out[f"{row['hook']}/{k}"] = row[k]
    return out
