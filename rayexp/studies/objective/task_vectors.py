"""Task vectors: what a fine-tuning on another reward wrote into the weights (research note 002).

Pure numpy. A model is a ``{parameter name: array}`` dict; a task vector is ``tau = theta_B - theta_A``
over the same names. Modules group parameter names the way the transformer is built (embeddings,
each block's attention / MLP / LayerNorms, the final LayerNorm, the unembedding), so every statistic
can also be read per module.

- :func:`task_vector`, :func:`apply` (``theta_A + lam * tau``: ``lam = -1`` is note 002's negation);
- :func:`cosine_matrix`, :func:`pair_index` and :func:`pair_cosines` (same reward other seed / other
  reward / the seed-only null);
- :func:`nearest_centroid_loso`: name the reward of a held-out seed's vectors from the centroids of
  the other seeds' vectors, with :func:`permutation_pvalue` for "better than chance";
- :func:`superpose`: per seed, the mean update over rewards and each reward's residual from it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

Params = dict[str, np.ndarray]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(attn|mlp|ln1|ln2)\.")


def module_of(name: str) -> str:
    """Parameter name -> module: ``embed``, ``pos_embed``, ``blocks.{i}.attn``, ``blocks.{i}.mlp``,
    ``blocks.{i}.ln`` (both LayerNorms), ``ln_final``, ``unembed``; anything else is its own first part."""
    m = _BLOCK.match(name)
    if m:
        part = "ln" if m.group(2).startswith("ln") else m.group(2)
        return f"blocks.{m.group(1)}.{part}"
    head = name.split(".")[0]
    return "unembed" if head == "unembed_proj" else head


def task_vector(before: Params, after: Params) -> Params:
    if set(before) != set(after):
        raise ValueError(f"task vector of models with different parameters: {sorted(set(before) ^ set(after))}")
    return {k: np.asarray(after[k], dtype=np.float64) - np.asarray(before[k], dtype=np.float64) for k in before}


def apply(base: Params, tau: Params, lam: float = 1.0) -> Params:
    """``base + lam * tau`` (lam = -1: the negated update)."""
    if set(base) != set(tau):
        raise ValueError(f"task vector and model differ in parameters: {sorted(set(base) ^ set(tau))}")
    return {k: np.asarray(base[k], dtype=np.float64) + lam * tau[k] for k in base}


def mean(vectors: Sequence[Params]) -> Params:
    if not vectors:
        raise ValueError("mean of no task vectors")
    return {k: np.mean([v[k] for v in vectors], axis=0) for k in vectors[0]}


def flatten(tau: Params, names: Sequence[str] | None = None) -> np.ndarray:
    """One vector, parameters in sorted-name order (or ``names``' order)."""
    names = sorted(tau) if names is None else names
    return np.concatenate([np.ravel(tau[k]) for k in names])


def module_names(tau: Params) -> dict[str, list[str]]:
    """Module -> its parameter names (sorted), modules in order of first appearance in sorted names."""
    out: dict[str, list[str]] = {}
    for k in sorted(tau):
        out.setdefault(module_of(k), []).append(k)
    return out


def module_norms(tau: Params) -> dict[str, float]:
    return {m: float(np.linalg.norm(flatten(tau, names))) for m, names in module_names(tau).items()}


def cosine_matrix(X: np.ndarray) -> np.ndarray:
    """(n, d) rows -> (n, n) cosine similarities (a zero row has cosine 0 with everything)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    U = X / np.where(norms > 0, norms, 1.0)[:, None]
    return U @ U.T


def pair_cosines(C: np.ndarray, labels: Sequence[str], seeds: Sequence[int], null: str | None) -> dict[str, np.ndarray]:
    """Off-diagonal cosines by kind of pair (:func:`pair_index` says which pairs)."""
    return {kind: C[i, j] for kind, (i, j) in pair_index(labels, seeds, null).items()}


def pair_index(
    labels: Sequence[str], seeds: Sequence[int], null: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pairs of trials (row indices i < j) by kind (their seeds, ``seeds[i]`` and ``seeds[j]``, are what
    an interval over seeds needs: :func:`rayexp.studies.objective.inference.pair_jackknife_ci`):

    - ``same_reward``: same label, other seed (the null's own pairs excluded);
    - ``other_reward``: different labels, neither the null, other seeds;
    - ``null``: two seed-only vectors (the null label, other seeds): what retraining on the same
      reward with another seed alone gives;
    - ``null_vs_reward``: a seed-only vector against a reward's vector, other seeds;
    - ``other_reward_same_seed``: different rewards, same seed, reported apart because trials of
      one seed share their PPO and env seeds (the same streams, the same fresh value head), so
      their updates share noise; every other kind pairs different seeds, like for like.
    """
    labels, seeds = np.asarray(labels), np.asarray(seeds)
    i, j = np.triu_indices(len(labels), k=1)
    li, lj, si, sj = labels[i], labels[j], seeds[i], seeds[j]
    is_null_i = li == null if null is not None else np.zeros(len(i), bool)
    is_null_j = lj == null if null is not None else np.zeros(len(j), bool)
    kinds = {
        "same_reward": (li == lj) & (si != sj) & ~is_null_i,
        "other_reward": (li != lj) & ~is_null_i & ~is_null_j & (si != sj),
        "null": is_null_i & is_null_j & (si != sj),
        "null_vs_reward": (is_null_i ^ is_null_j) & (si != sj),
        "other_reward_same_seed": (li != lj) & ~is_null_i & ~is_null_j & (si == sj),
    }
    return {kind: (i[sel], j[sel]) for kind, sel in kinds.items()}


def nearest_centroid_loso(X: np.ndarray, labels: Sequence[str], groups: Sequence[int]) -> np.ndarray:
    """Leave-one-group-out nearest-centroid predictions (n,): each row's label is predicted from the
    centroids of the *other* groups' (seeds') unit-normalised rows, by cosine. Rows are normalised
    so a reward is named by its direction, not by how far PPO moved."""
    return _loso_from_gram(_unit_gram(X), np.asarray(labels), np.asarray(groups))


def _unit_gram(X: np.ndarray) -> np.ndarray:
    """(n, n) inner products of the unit-normalised rows (a zero row stays zero)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    U = X / np.where(norms > 0, norms, 1.0)[:, None]
    return U @ U.T


def _loso_from_gram(G: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    # A centroid is a mean of unit rows, c_k = M_k U, so every cosine the classifier needs is a
    # linear function of the Gram matrix G = U U^T: U_test . c_k = G_test M_k^T and
    # |c_k|^2 = M_k G M_k^T. The permutation null then costs O(n^2) per shuffle instead of a pass
    # over all ~200k parameters (1000 shuffles x 17 classifiers per sweep).
    classes = np.unique(labels)
    pred = np.empty(len(labels), dtype=labels.dtype)
    for g in np.unique(groups):
        test, train = groups == g, groups != g
        present = [c for c in classes if (train & (labels == c)).any()]
        if not present:
            raise ValueError("nearest_centroid_loso needs every group's classes in the other groups")
        M = np.stack([(train & (labels == c)) / np.sum(train & (labels == c)) for c in present])  # (k, n)
        dots = G[test] @ M.T  # (n_test, k)
        norms = np.sqrt(np.maximum(np.einsum("kn,nm,km->k", M, G, M), 0.0))  # (k,)
        pred[test] = np.asarray(present)[np.argmax(dots / np.maximum(norms, 1e-300), axis=1)]
    return pred


def permutation_pvalue(
    X: np.ndarray, labels: Sequence[str], groups: Sequence[int], n_perm: int = 1000, seed: int = 0
) -> tuple[float, float, np.ndarray]:
    """(accuracy, p-value, null accuracies): the LOSO accuracy against the same classifier with labels
    permuted within each group (so every group keeps one vector per label), ``p = (1 + #{null >= acc}) /
    (1 + n_perm)``."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    G = _unit_gram(X)  # once: a shuffle moves labels, not vectors
    acc = float(np.mean(_loso_from_gram(G, labels, groups) == labels))
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for b in range(n_perm):
        perm = labels.copy()
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            perm[idx] = labels[rng.permutation(idx)]
        null[b] = np.mean(_loso_from_gram(G, perm, groups) == perm)
    return acc, float((1 + np.sum(null >= acc)) / (1 + n_perm)), null


def superpose(taus: dict[str, Params]) -> tuple[Params, dict[str, Params]]:
    """One seed's task vectors by reward -> (the mean update mu, {reward: tau - mu}).

    If every reward's update were a shared part (reward-independent: sharpening, PPO's own drift)
    plus a reward-specific part, mu estimates the shared part and the residuals the specific ones
    (note 002's "superposing" of several R_B so confounders cancel)."""
    mu = mean(list(taus.values()))
    return mu, {r: {k: t[k] - mu[k] for k in t} for r, t in taus.items()}


def free_pair_index(
    labels: Sequence[str], seeds: Sequence[int], free: str, null: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pairs (i, j) with at least one trial of the reward-free task ``free`` (PPO from M_A on a
    shuffled reward: what any PPO update from M_A writes), other seeds only, by kind: ``free`` (two
    reward-free vectors), ``free_vs_reward`` (one against a reward's, not the null's), ``free_vs_null``
    (one against the seed-only null's). Rows are ordered so that ``i`` is always the free one."""
    labels, seeds = np.asarray(labels), np.asarray(seeds)
    i, j = np.triu_indices(len(labels), k=1)
    swap = (labels[j] == free) & (labels[i] != free)  # the free one first
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    fi, fj, other = labels[i] == free, labels[j] == free, seeds[i] != seeds[j]
    is_null_j = labels[j] == null if null is not None else np.zeros(len(j), bool)
    kinds = {
        "free": fi & fj & other,
        "free_vs_reward": fi & ~fj & ~is_null_j & other,
        "free_vs_null": fi & is_null_j & other,
    }
    return {kind: (i[sel], j[sel]) for kind, sel in kinds.items()}
