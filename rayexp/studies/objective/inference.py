"""Inference for the task-vector study, pure numpy (issue 22): intervals over seeds that cover, and a
correction for testing many modules.

- :func:`pair_jackknife_ci`: the mean of a statistic over *pairs* of trials (a cosine of two task
  vectors) with an interval over seeds. Pairs that share a seed are not independent (one seed's
  vector sits in four of the ten pairs of five seeds), so resampling pairs as if they were
  understates the spread. The leave-one-seed-out jackknife drops every pair a seed is in, which
  is what makes it honest for such U-statistic-like means; the interval is Student-t with
  n_seeds - 1 degrees of freedom (docs/design.md §6 rule 4). :func:`pair_difference_jackknife_ci`
  does the same for a difference of two such means (same-reward minus other-reward cosines).
- :func:`holm`: Holm's step-down adjustment of p-values. The per-module classifiers test ~16
  modules on the same trials, so they are dependent; Holm controls the family-wise error rate at
  the nominal level under any dependence (as Bonferroni does) and never rejects less than
  Bonferroni. FWER, not FDR, because README names single modules as carrying the objective.
"""

from __future__ import annotations

import numpy as np


def _pairs(values, seeds_i, seeds_j) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    si, sj = np.asarray(seeds_i), np.asarray(seeds_j)
    if not (v.shape == si.shape == sj.shape):
        raise ValueError(f"one pair of seeds per value; got {v.shape}, {si.shape}, {sj.shape}")
    ok = np.isfinite(v)
    return v[ok], si[ok], sj[ok]


def _seed_jackknife(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], sign, ci: float):
    """(estimate, low, high) of sum_k sign[k] * mean(samples[k]'s values), leave-one-seed-out jackknife
    over every seed any sample names, Student-t with n_seeds - 1 degrees of freedom."""
    from scipy import stats  # scipy's import is slow; only summaries need it

    if any(not v.size for v, _, _ in samples):
        return float("nan"), float("nan"), float("nan")
    est = float(sum(w * v.mean() for w, (v, _, _) in zip(sign, samples)))
    seeds = np.unique(np.concatenate([np.concatenate([si, sj]) for _, si, sj in samples]))
    n = len(seeds)
    if n < 3:
        return est, float("nan"), float("nan")
    loo = []
    for s in seeds:
        kept = [v[(si != s) & (sj != s)] for v, si, sj in samples]
        if any(not k.size for k in kept):
            return est, float("nan"), float("nan")
        loo.append(sum(w * k.mean() for w, k in zip(sign, kept)))
    loo = np.asarray(loo)
    se = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
    half = float(stats.t.ppf(0.5 + ci / 2, n - 1) * se)
    return est, est - half, est + half


def pair_jackknife_ci(values, seeds_i, seeds_j, ci: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` (one per pair of trials, the pair's seeds ``seeds_i``,
    ``seeds_j``) with a leave-one-seed-out jackknife t interval; NaN bounds when fewer than 3 seeds
    or when leaving some seed out leaves no pair (nothing to estimate the spread from)."""
    return _seed_jackknife([_pairs(values, seeds_i, seeds_j)], (1.0,), ci)


def pair_difference_jackknife_ci(a, b, ci: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high) for two kinds of pairs from the same trials, ``a`` and ``b`` each
    ``(values, seeds_i, seeds_j)`` (e.g. same-reward and other-reward cosines): one jackknife drops a
    seed from both at once, so the interval is paired through the seeds the two kinds share (a
    seed's odd vector moves both means) rather than two intervals set side by side."""
    return _seed_jackknife([_pairs(*a), _pairs(*b)], (1.0, -1.0), ci)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values by name: the k-th smallest of m finite p's becomes
    max over j <= k of min(1, (m - j + 1) p_(j)). Non-finite p's are not tests: left out of m, kept NaN."""
    names = [k for k, p in pvalues.items() if np.isfinite(p)]
    m = len(names)
    out = {k: float("nan") for k in pvalues}
    running = 0.0
    for rank, k in enumerate(sorted(names, key=lambda k: pvalues[k])):
        running = max(running, min(1.0, (m - rank) * pvalues[k]))
        out[k] = running
    return out
