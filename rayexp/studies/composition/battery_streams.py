"""The known-answer battery's streams and samples: the PPO pairs' factors, one evaluation seed's
sequences with everything exact about them, the random-init control's features, and an imperfect
"pretrained model" whose error leaks every factor's belief (:func:`imperfect`). :mod:`.battery` plants
policies on them and scores the verdict."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from envs import build_process
from envs.rewards import make_reward
from rayexp.exact import ceilings, targets
from rayexp.probes import collect_activations, residual_layers
from rayexp.ridge import split_sequences
from rayexp.studies.composition import classes

# the factors of the PPO runs' pairs (sweeps/composition_cpu.yaml), on every stream, products included,
# so the battery checks the rule on the factors its real verdicts are read on
MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}
STREAMS = {
    "interleave(mess3,mess3)": {"name": "interleave", "factors": [MESS3, MESS3]},
    "interleave(mess3,z1r)": {"name": "interleave", "factors": [MESS3, {"name": "z1r"}]},
    "interleave(z1r,z1r)": {"name": "interleave", "factors": [{"name": "z1r"}, {"name": "z1r"}]},
    "product(mess3,mess3)": {"name": "product", "factors": [MESS3, MESS3]},
    "product(mess3,z1r)": {"name": "product", "factors": [MESS3, {"name": "z1r"}]},
}
CONTEXT = 10


@dataclass
class Sample:
    """One evaluation seed's sequences of a stream, with everything exact about them."""

    tokens: np.ndarray  # (N, L)
    p_pre: np.ndarray  # (N, L, V) the "pretrained model's" next-token distribution (exact, or :func:`imperfect`)
    feats: np.ndarray  # (N, L, sum S_i) the factors' beliefs side by side
    feats_random: np.ndarray  # (N, L, 64) a random-init transformer's residual stream, all layers, top 64 PCs
    P: np.ndarray  # (N, L, A) exact P(joint target = action k)
    act: np.ndarray  # (A,) action tokens
    groups: np.ndarray | None  # (V, A) one-hot: joint token -> its target group (product streams)
    ceil: dict[str, np.ndarray] = field(default_factory=dict)
    train: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    resolution: float = classes.MIN_RESOLUTION  # what a map of p_pre is fitted at: twice the model's error
    draw: int = 0  # which draw of the battery's fixed random choices (:func:`sample`)


@functools.lru_cache(maxsize=64)  # every case of a stream reads the same seeds' samples; nothing mutates them
def sample(stream: str, n_seq: int, seed: int, model_error: float = 0.0, draw: int = 0) -> Sample:
    """One seed's sequences; ``model_error`` > 0: the pretrained model is :func:`imperfect` by that mean L1
    error, and maps of it are fitted at its resolution, as the composition analysis fits a real model's.
    ``draw`` > 0: a replicate whose every fixed random choice is new (the sequences, the leak's map, the
    random-init network; :mod:`.battery` draws its planted maps and drift null from it too), to check
    the rule on cases nobody looked at when its thresholds were set."""
    hmm = build_process(STREAMS[stream])
    reward = make_reward("joint_target", hmm)
    rng = np.random.default_rng(seed if draw == 0 else (draw, seed))
    tokens, _, beliefs = hmm.sample_with_beliefs(n_seq, CONTEXT, rng)
    fb = hmm.factor_beliefs(beliefs)
    P = targets.target_probs(hmm, reward, beliefs, tokens)
    groups = None
    if STREAMS[stream]["name"] == "product":
        local = hmm.layout.split_tokens(np.arange(hmm.vocab_size)[None, :])  # per factor (1, V)
        groups = np.eye(len(reward.action_tokens))[(local[0][0] + local[1][0]) % len(reward.action_tokens)]
    single = [targets.single_factor_probs(hmm, reward, beliefs, i) for i in range(len(hmm.factors))]
    ceil = {"optimum": ceilings.optimum(P).mean(1), "per_phase": ceilings.per_phase_single(single, P).mean(1)}
    train, test = split_sequences(n_seq, 0.5, rng)
    exact, feats = hmm.next_token_probs(beliefs), np.concatenate(fb, -1)
    p_pre = imperfect(exact, feats, model_error, LEAK_SEED + draw)
    return Sample(
        tokens,
        p_pre,
        feats,
        random_features(tokens, hmm.vocab_size, seed=draw),
        P,
        reward.action_tokens,
        groups,
        ceil,
        train,
        test,
        classes.resolution_of(p_pre, exact),
        draw,
    )


#: the fixed map of :func:`imperfect`'s error
LEAK_SEED = 30_011


def imperfect(p: np.ndarray, feats: np.ndarray, error: float, seed: int = LEAK_SEED) -> np.ndarray:
    """A pretrained model's next-token distribution: the exact ``p`` (N, L, V) mixed with softmax(3 feats M)
    for a fixed random M, weighted so the mean L1 error is ``error``. Its error carries every factor's
    belief (``feats``), the silent one's on an interleave too: the leak a map of p_pre must not read, and
    why it is fitted at twice the model's error (:func:`.classes.resolution_of`). Real models here err by
    0.008-0.035 on interleaves and ~0.06 on products (half their logged ``classes/resolution``)."""
    if error <= 0:
        return p
    q = classes.softmax(3.0 * feats @ np.random.default_rng(seed).normal(size=(feats.shape[-1], p.shape[-1])))
    w = error / float(np.abs(q - p).sum(-1).mean())
    if not 0 < w < 1:
        raise ValueError(f"model error {error} is more than this stream's leak can carry (weight {w:.2f})")
    return (1 - w) * p + w * q


def random_features(tokens: np.ndarray, vocab: int, seed: int = 0, k: int = 64) -> np.ndarray:
    """(N, L, k) residual stream, all layers side by side, of a random-init transformer shaped as in
    sweeps/composition_cpu.yaml (what features any network of that shape has before training), on its
    top ``k`` principal components: a readout of 320 features costs ~5x the time of 64 in the battery's
    hundreds of fits, and the first 64 components hold nearly all of their variance."""
    from models.transformer import Transformer, TransformerConfig  # torch: only when the battery runs

    cfg = TransformerConfig(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=CONTEXT, d_vocab=vocab)
    model = Transformer(cfg, seed=seed).eval()
    layers = residual_layers(model.hook_names)
    acts = collect_activations(model, tokens, layers)
    X = np.concatenate([acts[h] for h in layers], -1).astype(np.float64)  # (N, L, 320)
    flat = X.reshape(-1, X.shape[-1]) - X.reshape(-1, X.shape[-1]).mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return (flat @ vt[:k].T).reshape(X.shape[:-1] + (k,))
