"""Ridge regression and held-out scoring on plain arrays: the numerics every probe, readout and
reweighting fit shares (float64, unpenalised intercept, penalty relative to the features' scale).

- :func:`ridge_fit`, :class:`Ridge`, :func:`mse`, :func:`r2`, :func:`skill`: one fit and its scores;
- :func:`split_sequences`: train/test split by sequence, never by position (docs/design.md §6 rule 2);
- :func:`fit_probes` / :func:`probe_errors`: probes scored as squared error per *held-out sequence*,
  so two models' errors on the same sequences pair up; :func:`skill_values` turns them into
  per-sequence linearised values of ``skill = 1 - MSE_model / MSE_control`` whose mean is the skill
  exactly and whose paired differences a paired bootstrap covers (:func:`rayexp.stats.ratio_values`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rayexp.stats import ratio_values

# ---------------------------------------------------------------------------------------------
# Probe math on plain arrays


@dataclass(frozen=True)
class Ridge:
    """A fitted affine map ``Y ~ X @ coef + intercept``."""

    coef: np.ndarray  # (D, K)
    intercept: np.ndarray  # (K,)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept  # (N, K)


def ridge_fit(X: np.ndarray, Y: np.ndarray, alpha: float = 1e-6) -> Ridge:
    """Closed-form ridge regression with an unpenalised intercept.

    ``alpha`` is relative to the features' scale (penalty = alpha * mean diagonal of the centred Gram
    matrix), so the same alpha means the same amount of shrinkage for a trained model's activations
    and for a random-init model's, whose norms differ. It only has to keep collinear features (a
    LayerNorm output sums to a constant) solvable; 1e-6 is essentially ordinary least squares.
    """
    X = np.asarray(X, dtype=np.float64)  # (N, D)
    Y = np.asarray(Y, dtype=np.float64)  # (N, K)
    x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - x_mean, Y - y_mean
    gram = Xc.T @ Xc  # (D, D)
    lam = alpha * max(float(np.trace(gram)) / max(gram.shape[0], 1), 1e-300)
    gram[np.diag_indices_from(gram)] += lam
    rhs = Xc.T @ Yc  # (D, K)
    try:
        coef = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return Ridge(coef=coef, intercept=y_mean - x_mean @ coef)


def mse(Y: np.ndarray, Y_hat: np.ndarray) -> float:
    """Mean squared error over samples and belief dimensions."""
    return float(np.mean((np.asarray(Y, np.float64) - Y_hat) ** 2))


def r2(Y: np.ndarray, Y_hat: np.ndarray) -> float:
    """Variance-weighted R^2: 1 - total SSE / total SS around each dimension's mean (over all dims)."""
    Y = np.asarray(Y, dtype=np.float64)
    sst = float(((Y - Y.mean(axis=0)) ** 2).sum())
    sse = float(((Y - Y_hat) ** 2).sum())
    return 1.0 - sse / sst if sst > 0 else float("nan")


def skill(mse_model: float, mse_random_init: float) -> float:
    """1 - MSE_model / MSE_random_init: 0 = no better than an untrained network, 1 = perfect."""
    return 1.0 - mse_model / mse_random_init if mse_random_init > 0 else float("nan")


def split_sequences(n_seq: int, test_frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (train, test) sequence indices; positions of one sequence never straddle the split."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1); got {test_frac}")
    n_test = round(n_seq * test_frac)
    if n_test < 1 or n_test >= n_seq:
        raise ValueError(f"split_sequences: {n_seq} sequences cannot give a non-empty train and test set")
    perm = rng.permutation(n_seq)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# ---------------------------------------------------------------------------------------------
# Probes with per-sequence errors


def _seq(a: np.ndarray) -> np.ndarray:
    """(n, D) -> (n, 1, D): one position per sequence; (n, L, D) unchanged; float64."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        return a[:, None, :]
    if a.ndim != 3:
        raise ValueError(f"expected (sequences, positions, features) or (sequences, features); got shape {a.shape}")
    return a


@dataclass
class ProbeFit:
    """One fitted probe scored on held-out sequences."""

    errors: np.ndarray  # (n_test,) squared error summed over each held-out sequence's positions and outputs
    coef: np.ndarray  # (D, K) the probe's coefficients (the subspace it reads is their column span)
    pred: np.ndarray  # (n_test, L, K) held-out predictions


def fit_probes(
    X_train: np.ndarray,
    Y_train: Mapping[str, np.ndarray],
    X_test: np.ndarray,
    Y_test: Mapping[str, np.ndarray],
    alpha: float = 1e-3,
) -> dict[str, ProbeFit]:
    """Ridge probes from the same features to several targets, fitted in one solve.

    ``X_*``: (n, L, D) or (n, D) (one position per sequence); ``Y_*[name]``: (n, L, K_name) or
    (n, K_name). Ridge regression is separable over output columns, so stacking the targets and
    splitting the coefficients gives exactly each target's own probe, for the price of one Gram
    matrix. ``alpha`` is relative to the features' scale (:func:`ridge_fit`).
    """
    names = list(Y_train)
    if not names:
        return {}
    Xtr, Xte = _seq(X_train), _seq(X_test)
    ytr = [_seq(Y_train[n]) for n in names]
    yte = [_seq(Y_test[n]) for n in names]
    widths = [y.shape[-1] for y in ytr]
    model = ridge_fit(
        Xtr.reshape(-1, Xtr.shape[-1]), np.concatenate([y.reshape(-1, y.shape[-1]) for y in ytr], -1), alpha
    )
    pred = model.predict(Xte.reshape(-1, Xte.shape[-1])).reshape(Xte.shape[:2] + (sum(widths),))  # (n, L, sum K)
    out, start = {}, 0
    for name, k, y in zip(names, widths, yte):
        p = pred[..., start : start + k]  # (n_test, L, k)
        out[name] = ProbeFit(((y - p) ** 2).sum(axis=(1, 2)), model.coef[:, start : start + k], p)
        start += k
    return out


def probe_errors(
    X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray, Y_test: np.ndarray, alpha: float = 1e-3
) -> np.ndarray:
    """(n_test,) squared error of a ridge probe (fitted on the training sequences) summed over each
    held-out sequence's positions and outputs; shapes as in :func:`fit_probes`.

    Sum of the result / (n_test * L * K) is the held-out MSE; two feature sets probed on the same
    held-out sequences give errors that pair up sequence by sequence.
    """
    return fit_probes(X_train, {"y": Y_train}, X_test, {"y": Y_test}, alpha)["y"].errors


def skill_values(errors: np.ndarray, errors_control: np.ndarray) -> np.ndarray:
    """(n,) per-sequence linearised values of ``skill = 1 - sum(errors) / sum(errors_control)``.

    Their mean is the skill exactly; ``paired_bootstrap_ci(skill_values(e_pre, c), skill_values(e_post, c))``
    is the paired change of skill over the same held-out sequences (the control's sampling
    variance included). NaNs when the control's error is zero.
    """
    return 1.0 - ratio_values(errors, errors_control)
