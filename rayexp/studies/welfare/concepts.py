"""Difference-of-means concept vectors and the controls that make their cosine mean something.

Pure numpy. ``acts`` (n, d) are activations at one hook point, one row per context; ``labels`` (n,)
say how each context's trajectory ended: :data:`REWARDED`, :data:`PUNISHED` or :data:`NEUTRAL`.

- v_R = mean(rewarded) - mean(neutral), v_P = mean(punished) - mean(neutral) (:func:`concept_vectors`);
- the null of their cosine: the same with labels shuffled (:func:`shuffled_cosines`): what two
  difference-of-means vectors sharing the neutral mean give when the labels carry nothing. The shuffle
  is across rows although a sequence holds many rows; on the outcome process that is exact, since the
  uniformly random action makes the labels i.i.d. and independent of the base stream (checked from the
  matrices in ``tests/test_concepts.py``), so real labels group rows exactly as shuffled ones do. A
  stream whose labels cluster by sequence would need the sequences' labels permuted instead;
- steering controls off the activation manifold: a random vector of the same norm
  (:func:`random_like`) and one of the same norm orthogonal to v (:func:`orthogonal_like`);
- steering controls *on* it (:func:`norm_matched` brings them to v's norm): v_P with the outcome
  labels shuffled (:func:`shuffled_vectors`: the null's own vectors) and differences of means between
  random groups of activations (:func:`group_differences`). Activations are low-rank, so an
  isotropic vector mostly points where the network never writes; beating it may only mean "on the
  manifold beats off it". These controls are directions the network does use, without the label.
"""

from __future__ import annotations

import numpy as np

REWARDED, PUNISHED, NEUTRAL = 0, 1, 2


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors; NaN when either is zero."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else float("nan")


def balanced(labels: np.ndarray, rng: np.random.Generator, per_class: int | None = None) -> np.ndarray:
    """Indices with the same number of contexts per outcome (the rarest class's count, or ``per_class``
    if smaller), drawn without replacement, so no mean rests on more data than another."""
    labels = np.asarray(labels)
    counts = [int(np.sum(labels == c)) for c in (REWARDED, PUNISHED, NEUTRAL)]
    k = min(counts) if per_class is None else min(min(counts), per_class)
    if k < 2:
        raise ValueError(f"need at least 2 contexts per outcome (rewarded, punished, neutral); got {counts}")
    return np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in (REWARDED, PUNISHED, NEUTRAL)]
        )
    )


def concept_vectors(acts: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v_R, v_P), each (d,)."""
    acts, labels = np.asarray(acts, dtype=np.float64), np.asarray(labels)
    means = []
    for c in (REWARDED, PUNISHED, NEUTRAL):
        rows = acts[labels == c]
        if not len(rows):
            raise ValueError(f"no contexts with outcome {c}")
        means.append(rows.mean(0))
    return means[0] - means[2], means[1] - means[2]


def split_half_cosines(
    acts: np.ndarray, labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> tuple[float, float]:
    """(cos(v_R half A, v_R half B), same for v_P): the rows' ``groups`` (their sequences) split in two
    at random, each half's vectors estimated alone. What a cosine between two estimates of one
    unchanged direction is at half the data: the reliability a cosine across models is read against."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    in_a = np.isin(groups, rng.permutation(ids)[: len(ids) // 2])
    va, vb = concept_vectors(acts[in_a], labels[in_a]), concept_vectors(acts[~in_a], labels[~in_a])
    return cosine(va[0], vb[0]), cosine(va[1], vb[1])


def shuffled_cosines(acts: np.ndarray, labels: np.ndarray, n_perm: int, seed: int = 0) -> np.ndarray:
    """cos(v_R, v_P) under ``n_perm`` random permutations of the labels (n_perm,)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    return np.array([cosine(*concept_vectors(acts, rng.permutation(labels))) for _ in range(n_perm)])


def shuffled_vectors(acts: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) v_P (punished minus neutral mean) under ``n`` random permutations of the labels: what a
    difference of means on these very activations gives when the labels carry nothing."""
    labels = np.asarray(labels)
    return np.stack([concept_vectors(acts, rng.permutation(labels))[1] for _ in range(n)])


def group_differences(acts: np.ndarray, group_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) mean of one random group of ``group_size`` activation rows minus the mean of another,
    disjoint one (rows drawn without replacement): directions of the activations' own variation."""
    acts = np.asarray(acts, dtype=np.float64)
    if not 1 <= group_size <= len(acts) // 2:
        raise ValueError(f"group_size must be in [1, {len(acts) // 2}] for {len(acts)} rows; got {group_size}")
    out = np.empty((n, acts.shape[1]))
    for i in range(n):
        idx = rng.choice(len(acts), 2 * group_size, replace=False)
        out[i] = acts[idx[:group_size]].mean(0) - acts[idx[group_size:]].mean(0)
    return out


def norm_matched(vectors: np.ndarray, norm: float) -> np.ndarray:
    """Each row rescaled to ``norm`` (a zero row stays zero): a control must push as hard as v does."""
    vectors = np.asarray(vectors, dtype=np.float64)
    lengths = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors * (norm / np.where(lengths > 0, lengths, np.inf))


def random_like(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random direction with v's norm."""
    r = rng.standard_normal(v.shape)
    return r * (np.linalg.norm(v) / np.linalg.norm(r))


def orthogonal_like(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random direction orthogonal to v, with v's norm."""
    r = rng.standard_normal(v.shape)
    u = v / np.linalg.norm(v)
    r = r - np.dot(r, u) * u
    return r * (np.linalg.norm(v) / np.linalg.norm(r))


def outcome_rates(policy: np.ndarray, outcome_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (reward rate, punishment probability) per decision (n,), from the policy (n, A) and
    P(outcome k | history, action a) (n, A, 3): reward = P(rewarded) - P(punished) (the env pays +1 / -1)."""
    p = np.einsum("na,nak->nk", np.asarray(policy, dtype=np.float64), np.asarray(outcome_p, dtype=np.float64))
    return p[:, REWARDED] - p[:, PUNISHED], p[:, PUNISHED]


def slope(alphas, values) -> float:
    """Least-squares slope of ``values`` against ``alphas`` (the dose-response's steepness)."""
    a, v = np.asarray(alphas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    a = a - a.mean()
    return float(np.dot(a, v - v.mean()) / np.dot(a, a))
