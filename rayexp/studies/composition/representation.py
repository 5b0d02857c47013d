"""Where the composition lives: probes, dimensionality, subspace overlap and CKA, on plain arrays.

docs/design.md §4 asks, once RL has composed two skills, whether the new
policy reads existing features in a new way or builds a new joint representation inside. These are
the pure (numpy) signals the adapter :mod:`rayexp.studies.composition.representation_analysis` feeds with activations
(sequences x positions x features) and exact beliefs:

- :func:`probe_errors` / :func:`fit_probes`: ridge probes fitted on training sequences, scored as
  squared error summed per *held-out sequence*, so two models' errors on the same sequences pair up;
  :func:`skill_values` turns them into per-sequence linearised values of
  ``skill = 1 - MSE_model / MSE_control`` (control: the same probe on random-init features), whose
  mean is the skill exactly and whose paired differences (post - pre) a paired bootstrap covers,
  the control's variance included (:func:`rayexp.stats.ratio_values`);
- :func:`n_components` / :func:`explained_variance`: principal components for a fraction of the
  variance, to set against the factored dimension ``sum(S_i - 1)`` and the joint ``prod(S_i) - 1``
  (:func:`belief_dims`); :func:`outer_beliefs` builds the joint target from factor beliefs;
- :func:`subspace_overlap` / :func:`orthonormal_basis`: mean squared cosine of the principal angles
  between two probes' coefficient subspaces, against :func:`random_overlap` (k/d, exact) or
  :func:`sampled_random_overlap`;
- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al. 2019).
"""

from __future__ import annotations

import numpy as np

from rayexp.ridge import ProbeFit, fit_probes, probe_errors, skill_values  # noqa: F401  (used by the adapter)

#: fractions of variance the dimensionality is reported at (the field's 80/90/95/99 %)
FRACS = (0.8, 0.9, 0.95, 0.99)


# ---------------------------------------------------------------------------------------------
# Dimensionality


def outer_beliefs(factor_beliefs: list[np.ndarray]) -> np.ndarray:
    """The joint belief over factor states, row-major: the outer product of the factors' beliefs
    (..., S_0), (..., S_1), ... -> (..., S_0 * S_1 * ...). Exact for factors that evolve independently
    given the tokens (product, interleave with its phase known from the position)."""
    if not factor_beliefs:
        raise ValueError("outer_beliefs needs at least one factor")
    out = np.asarray(factor_beliefs[0], dtype=np.float64)
    for b in factor_beliefs[1:]:
        b = np.asarray(b, dtype=np.float64)
        out = (out[..., :, None] * b[..., None, :]).reshape(out.shape[:-1] + (-1,))
    return out


def belief_dims(n_states: list[int]) -> tuple[int, int]:
    """(factored, joint) dimensions of beliefs over factors with ``n_states`` states each:
    ``sum(S_i - 1)`` (a point in each factor's simplex) and ``prod(S_i) - 1`` (the joint simplex)."""
    return int(sum(s - 1 for s in n_states)), int(np.prod(n_states)) - 1


def explained_variance(X: np.ndarray) -> np.ndarray:
    """Fractions of the total variance along the principal components of ``X`` (..., D), rows =
    all leading axes, in decreasing order (sums to 1; all zeros for constant data)."""
    X = np.asarray(X, dtype=np.float64)
    X = X.reshape(-1, X.shape[-1])
    Xc = X - X.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(Xc.T @ Xc), 0.0, None)[::-1]  # (D,) decreasing
    total = eig.sum()
    return eig / total if total > 0 else np.zeros_like(eig)


def n_components(X: np.ndarray, frac: float = 0.95) -> int:
    """Fewest principal components of ``X`` (..., D) that hold at least ``frac`` of its variance
    (0 for constant data).

    What the adapter feeds it, and why: the held-out *predictions* of the joint-belief probe (the
    belief probe for a stream without two factors), not the activations projected onto the probe's
    span. Predictions are the belief-predictive part in belief coordinates, so their variance
    fractions compare directly with the exact beliefs' own spectrum and with ``sum(S_i - 1)`` /
    ``prod(S_i) - 1`` (:func:`belief_dims`). Projected activations keep every activation direction of
    the probe's (up to ``prod(S_i) - 1``)-dimensional span with all its variance, predictive or not,
    so they fill that span whatever the model encodes. A model that holds each factor's belief
    linearly but not their product gives predictions in a ``sum(S_i - 1)``-dimensional affine space
    (the best affine map of the factor beliefs to their outer product); one that also holds the
    product terms reaches up to ``prod(S_i) - 1``.
    """
    return components_for(explained_variance(X), frac)


def components_for(spectrum: np.ndarray, frac: float) -> int:
    """:func:`n_components` from a spectrum :func:`explained_variance` already returned."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1]; got {frac}")
    ev = np.asarray(spectrum, dtype=np.float64)
    if not ev.any():
        return 0
    return int(min(np.searchsorted(np.cumsum(ev), frac - 1e-12) + 1, ev.size))


# ---------------------------------------------------------------------------------------------
# Subspace overlap


def orthonormal_basis(W: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """(D, r) orthonormal basis of the column span of ``W`` (D, K), r its numerical rank (singular
    values above ``rtol`` times the largest). A probe to beliefs has coefficient columns summing to
    zero (the target's sum is constant), so its rank is at most K - 1 and this drops that direction."""
    W = np.asarray(W, dtype=np.float64)
    U, s, _ = np.linalg.svd(W, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return U[:, :0]
    return U[:, : int((s > rtol * s[0]).sum())]


def principal_cosines(W1: np.ndarray, W2: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the column spans of ``W1`` (D, K1) and ``W2`` (D, K2):
    the singular values of ``Q1.T @ Q2`` for orthonormal bases Q1, Q2, decreasing (min(r1, r2) of them)."""
    Q1, Q2 = orthonormal_basis(W1), orthonormal_basis(W2)
    return np.clip(np.linalg.svd(Q1.T @ Q2, compute_uv=False), 0.0, 1.0)


def subspace_overlap(W1: np.ndarray, W2: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between the column spans of ``W1`` and ``W2``
    (``||Q1.T Q2||_F^2 / min(r1, r2)``): 1 when one span contains the other, 0 when orthogonal;
    NaN when either is empty. Chance level: :func:`random_overlap`."""
    c = principal_cosines(W1, W2)
    return float(np.mean(c**2)) if c.size else float("nan")


def random_overlap(d: int, k1: int, k2: int) -> float:
    """Expected :func:`subspace_overlap` of uniformly random k1- and k2-dimensional subspaces of R^d:
    ``E||Q1.T Q2||_F^2 = k1 k2 / d``, over min(k1, k2) angles, gives ``max(k1, k2) / d`` (k/d for equal k)."""
    if not (0 < k1 <= d and 0 < k2 <= d):
        return float("nan")
    return max(k1, k2) / d


def sampled_random_overlap(d: int, k1: int, k2: int, n: int = 200, seed: int = 0) -> np.ndarray:
    """(n,) :func:`subspace_overlap` of pairs of random Gaussian subspaces (uniform on the Grassmannian)."""
    rng = np.random.default_rng(seed)
    return np.array([subspace_overlap(rng.standard_normal((d, k1)), rng.standard_normal((d, k2))) for _ in range(n)])


# ---------------------------------------------------------------------------------------------
# CKA


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between ``X`` (n, d1) and ``Y`` (n, d2), rows paired:
    ``||Yc.T Xc||_F^2 / (||Xc.T Xc||_F ||Yc.T Yc||_F)`` on column-centred matrices. In [0, 1]; 1 for
    X = Y; invariant to orthogonal transforms and isotropic scaling of either; NaN if either is constant.
    Leading axes beyond the last are flattened into rows (``(N, L, D)`` -> ``(N * L, D)``)."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    X, Y = X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1])
    if len(X) != len(Y):
        raise ValueError(f"linear_cka needs paired rows; got {len(X)} and {len(Y)}")
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    # work in the smaller of the (d x d) and (n x n) forms: here n >> d, so feature-space Gram matrices
    cross = np.linalg.norm(Yc.T @ Xc) ** 2
    nx, ny = np.linalg.norm(Xc.T @ Xc), np.linalg.norm(Yc.T @ Yc)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(cross / (nx * ny))
