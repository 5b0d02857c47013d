"""Belief geometry through RL, on plain arrays: the joint-only part of a joint belief, linear erasure
of a belief subspace, random subspaces of the same dimension, simplex coordinates.

The adapter (:mod:`.geometry_analysis`) feeds these with a model's activations and exact beliefs.
What each answers (docs/design.md §4.6):

- :func:`product_part`: the part of the joint belief (outer product of the factors' beliefs) that no
  affine map of the two factor beliefs gives. Features that hold each factor's belief linearly, in
  any subspaces (the factored representation of Shai et al. 2026), predict none of it linearly; a
  probe that does predict it reads a *joint-only* direction, something beyond the two factor probes.
- :func:`erasure_basis` and :func:`erase`: the subspace to remove so that no affine probe can read a
  target from the features any more (on the distribution the basis was fitted on). It is the span
  of the cross-covariance ``Cov(x, z)``: after ``x' = x - (x - mu) Q Q^T`` with Q an orthonormal
  basis of that span, ``Cov(x', z) = (I - Q Q^T) Cov(x, z) = 0``, so the least-squares probe from x'
  to z is a constant. It is linear guardedness (Ravfogel et al. 2022; Belrose et al. 2023, LEACE,
  which also minimises the distortion; an orthogonal projection is enough to erase, and keeps the
  ablation one familiar operation: mean-replace a subspace). Dimension: rank of Cov(x, z), at most
  K - 1 for beliefs over K states (they sum to one).
- :func:`joint_only_basis`: the subspace to remove so that no affine probe reads the joint-only part
  *through directions the factors do not use*: the erasure basis of the joint-only target from the
  features with the factors' subspaces projected out. Erasing it leaves Cov(x, factor) unchanged (it
  is orthogonal to that span), so it tests whether a policy needs a joint direction while the factor
  subspaces stay in place; whatever of the joint-only part the factor subspaces themselves carry is
  left (erasing it would erase factors too; the ``joint`` condition, both spans together, does).
  It keeps each factor's *covariance* with the features, not each factor *probe's output*: a probe
  is ``Sigma_x^{-1} Cov(x, factor)``, and where features are not isotropic it also reads directions
  outside the factor span (to cancel what leaks into the factor span from elsewhere), so erasing them
  can blur the factors themselves (seen in a trained model: factor probe R^2 0.94 -> 0.71).
- :func:`beyond_probes_basis`: the erasure that cannot do that. Given the factor probes' weights W,
  it erases the span of ``Cov(x, z_res)``, with ``z_res`` the joint-only part minus its affine
  least-squares prediction from the probes' outputs ``x W``. Since ``Cov(x W, z_res) = 0`` that
  span is orthogonal to W, so every factor probe's output is unchanged row by row (``x' W = x W``),
  while no affine probe reads anything of the joint-only part beyond what those outputs carry. A
  policy that forms the joint from its factor readouts loses nothing to it, however the features
  are laid out; one that reads joint-only directions loses them. What it does not keep is the
  factor information in other directions than the probes' (a trained policy's own read-out need not
  be the ridge probe's), so in trained networks it can remove reward a policy earns from the factors.
- :func:`factor_monomials`: every monomial of one degree in one factor's belief, the targets of wider
  factor probes. ``beyond_probes_basis`` with those probes' weights keeps each factor's polynomial
  read-outs (its squares and products, not only its belief) row by row: a policy that reads a factor
  through a curved map of the features, as a trained network's own read-out need not be the linear
  probe's, keeps more of it, while the joint-only part beyond every such read-out is still erased
  (a function of one factor alone carries none of it where the factors are independent).
- :func:`derangement` and :func:`repaired_product_part`: the *re-paired* placebo target, the
  joint-only part recomputed with one factor's beliefs taken from another sequence at the same
  position. Each factor's beliefs keep their distribution, their dependence on position and their
  dependence on the features; only the pairing of the two factors is broken, so any representation
  that holds the factors separately (``x = f(h_0) + g(h_1)``, however nonlinear f and g) has no
  population covariance with it, as with the real target, and its sample covariance has the real
  target's heavy tails and position structure rather than a Gaussian's. It is the null of an
  interaction test (keep the margins, shuffle the pairing) applied to the erasure's target.
- :func:`random_basis`: a uniformly random subspace of the same dimension, the ablation's control;
  :func:`random_basis_outside`: the same within the complement of a span (the control of an erasure
  held orthogonal to the factor probes).
- :func:`simplex_xy`: 2-D coordinates of points of the 2-simplex (three-state beliefs), for the
  belief-simplex figure (true vs predicted, as in the Mess3 fractal figure).
"""

from __future__ import annotations

import numpy as np


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(-1, a.shape[-1])


def product_part(factor_beliefs: list[np.ndarray], joint: np.ndarray) -> np.ndarray:
    """The joint belief (..., K) minus its least-squares affine prediction from the factor beliefs
    side by side (..., sum S_i), fitted on all the rows given: the product terms no sum of per-factor
    contributions gives. Exact beliefs in, so it is a property of the stream, not of a model."""
    X = np.concatenate([_rows(b) for b in factor_beliefs], axis=-1)  # (n, sum S_i)
    return affine_residual(X, _rows(joint)).reshape(np.shape(joint))


def factor_monomials(b: np.ndarray, degree: int = 2) -> np.ndarray:
    """(..., C(S + degree - 1, degree)): every monomial of exactly ``degree`` in one factor's belief
    ``b`` (..., S). Beliefs sum to 1, so these span every polynomial of degree at most ``degree`` in
    ``b`` (a lower monomial is itself times (sum b)^k), the beliefs themselves included."""
    from itertools import combinations_with_replacement

    b = np.asarray(b, dtype=np.float64)
    if degree < 1:
        raise ValueError(f"degree must be >= 1; got {degree}")
    terms = combinations_with_replacement(range(b.shape[-1]), degree)
    return np.stack([np.prod(b[..., list(t)], axis=-1) for t in terms], axis=-1)


def gated(features: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """(..., K * G): ``features`` (..., K) times each column of ``gate`` (..., G; one-hot per row).
    Fed a belief (which sums to 1) and the one-hot of which factor emitted the current token, it spans
    every affine function of the belief whose coefficients depend on that factor: what a read-out that
    differs by phase (in an interleaved stream) computes, and a global probe of the belief does not."""
    f, g = np.asarray(features, dtype=np.float64), np.asarray(gate, dtype=np.float64)
    if f.shape[:-1] != g.shape[:-1]:
        raise ValueError(f"features {f.shape} and gate {g.shape} must agree on every axis but the last")
    return (f[..., :, None] * g[..., None, :]).reshape(f.shape[:-1] + (-1,))


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) a random permutation with no fixed point (one cycle through a random order), n >= 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items; got {n}")
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def repaired_product_part(factor_beliefs: list[np.ndarray], which: int, partner: np.ndarray) -> np.ndarray:
    """:func:`product_part` of the factor beliefs (N, L, S_i) with factor ``which``'s taken from sequence
    ``partner[n]`` for sequence n (same position): the joint-only target with the pairing broken."""
    fbs = [np.asarray(b, dtype=np.float64) for b in factor_beliefs]
    fbs[which] = fbs[which][np.asarray(partner)]
    joint = np.einsum("...i,...j->...ij", fbs[0], fbs[1]).reshape(fbs[0].shape[:-1] + (-1,))
    return product_part(fbs, joint)


def affine_residual(A: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """``Z`` (n, K) minus its least-squares affine prediction from ``A`` (n, m), rows paired."""
    P = np.concatenate([A, np.ones((len(A), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(P, Z, rcond=None)
    return Z - P @ coef


def cross_covariance(X: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """(D, K) covariance between features ``X`` (..., D) and targets ``Z`` (..., K), rows paired."""
    X, Z = _rows(X), _rows(Z)
    if len(X) != len(Z):
        raise ValueError(f"cross_covariance needs paired rows; got {len(X)} and {len(Z)}")
    return (X - X.mean(0)).T @ (Z - Z.mean(0)) / max(len(X) - 1, 1)


def erasure_basis(X: np.ndarray, Z: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """(D, r) orthonormal basis of the span of ``Cov(X, Z)``: the subspace whose removal leaves no
    affine probe from X to Z (see the module docstring); r its numerical rank (singular values above
    ``rtol`` times the largest)."""
    C = cross_covariance(X, Z)
    U, s, _ = np.linalg.svd(C, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return U[:, :0]
    return U[:, : int((s > rtol * s[0]).sum())]


def joint_only_basis(X: np.ndarray, Z: np.ndarray, factors: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """(D, r) orthonormal basis, orthogonal to span(``factors``) (D, k; orthonormal), of the span of
    ``Cov(X P, Z)`` with ``P = I - F F^T``: the part of the features' covariance with ``Z`` that lies
    outside the factor subspaces (see the module docstring)."""
    X = _rows(X)
    F = np.asarray(factors, dtype=np.float64)
    Q = erasure_basis(X - (X @ F) @ F.T, Z, rtol)
    # exact orthogonality to F (the SVD's columns carry rounding); re-orthonormalise after
    Q = Q - F @ (F.T @ Q)
    return np.linalg.qr(Q)[0] if Q.shape[1] else Q


def beyond_probes_basis(X: np.ndarray, Z: np.ndarray, W: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """(D, r) orthonormal basis, orthogonal to the columns of ``W`` (D, m; probe weights), of the span
    of ``Cov(X, Z_res)``, ``Z_res`` = ``Z`` minus its least-squares affine prediction from ``X W``:
    erasing it leaves ``X W`` unchanged and no affine probe of ``Z`` beyond an affine map of ``X W``
    (see the module docstring)."""
    X = _rows(X)
    Q = erasure_basis(X, probe_residual(X, Z, W), rtol)
    # Cov(X W, Z_res) = 0 makes Q orthogonal to W up to rounding; remove the rounding exactly
    Wq = span_basis(W, rtol)
    Q = Q - Wq @ (Wq.T @ Q)
    return np.linalg.qr(Q)[0] if Q.shape[1] else Q


def probe_residual(X: np.ndarray, Z: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``Z`` (n, K) minus its least-squares affine prediction from the probe outputs ``X W``, rows of X."""
    return affine_residual(_rows(X) @ np.asarray(W, dtype=np.float64), _rows(Z))


def span_basis(A: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """(D, r) orthonormal basis of the column span of ``A`` (D, m), r its numerical rank."""
    U, s, _ = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    return U[:, : int((s > rtol * s[0]).sum())] if s.size and s[0] > 0 else U[:, :0]


def erase(X: np.ndarray, Q: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``X - (X - mu) Q Q^T``: each row's component in span(Q) replaced by the mean's (mean ablation)."""
    X = np.asarray(X, dtype=np.float64)
    return X - ((X - mu) @ Q) @ Q.T


def random_basis(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(d, k) orthonormal basis of a uniformly random k-dimensional subspace of R^d."""
    if not 0 <= k <= d:
        raise ValueError(f"a {k}-dimensional subspace of R^{d} does not exist")
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))[None, :] if k else q


def random_basis_outside(d: int, k: int, W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(d, k) orthonormal basis of a uniformly random k-dimensional subspace of the orthogonal
    complement of span(``W``) (d, m)."""
    U, s, _ = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=True)
    rank = int((s > 1e-10 * s[0]).sum()) if s.size and s[0] > 0 else 0
    comp = U[:, rank:]  # (d, d - rank) orthonormal basis of the complement
    if not 0 <= k <= comp.shape[1]:
        raise ValueError(f"a {k}-dimensional subspace outside a {rank}-dimensional span of R^{d} does not exist")
    return comp @ random_basis(comp.shape[1], k, rng)


def held_out_r2(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SSE / SST of predictions ``pred`` of ``y`` (..., K), SST around y's own mean per column."""
    y, pred = _rows(y), _rows(pred)
    sst = ((y - y.mean(0)) ** 2).sum()
    return float(1.0 - ((y - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


def simplex_xy(b: np.ndarray) -> np.ndarray:
    """(..., 2) coordinates of three-state beliefs (..., 3) in an equilateral triangle with corners
    (0, 0), (1, 0), (1/2, sqrt(3)/2) for states 0, 1, 2 (predictions off the simplex land outside it)."""
    b = np.asarray(b, dtype=np.float64)
    if b.shape[-1] != 3:
        raise ValueError(f"simplex_xy draws three-state beliefs; got {b.shape[-1]} states")
    return np.stack([b[..., 1] + 0.5 * b[..., 2], (np.sqrt(3) / 2) * b[..., 2]], axis=-1)


def removed_share(full: float, ablated: float, floor: float, min_gain: float = 0.01) -> float:
    """Share of what a policy earns above ``floor`` (e.g. uniform guessing) that an ablation removes:
    ``(full - ablated) / (full - floor)``; NaN when the policy earns less than ``min_gain`` above the
    floor (a share of nothing is noise: the shuffled null earns about the floor)."""
    gain = full - floor
    return float((full - ablated) / gain) if gain > min_gain else float("nan")
