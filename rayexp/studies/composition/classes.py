"""Which policy class explains a post-RL policy (docs/design.md §4.1), with fits that can succeed.

The classes are nested: *reweighting* (pi_post = g(p_pre) for one fixed map g of the pretrained
model's full next-token distribution), *elicitation* (pi_post = a fixed-capacity readout of the
frozen pretrained residual stream), and *composition* (neither). Each class is fitted on training
sequences and scored on held-out ones, **within each position** (a position-only policy is the
baseline, never a fit's success):

- :func:`reweighting_fit`: a nonparametric map of p_pre per position (the mean policy of training
  contexts within a resolution of it, :func:`resolution_of`), so it represents every map a reader
  would call reweighting, sharp ones included (argmax, sums over token groups then argmax, capped
  logits, products): the earlier ridge family could not, and called planted argmax maps "composition";
- :func:`readout_fit`: a linear readout from the frozen features (all residual layers) to the
  policy, per position: softmax regression to its probabilities (the "one stated small family");
- :func:`unexplained_values`: per held-out sequence, the total variation left by a fit over the
  total variation left by the position-only policy (linearised so its mean is the ratio and a paired
  bootstrap covers it). 0: the class explains the policy; 1: nothing beyond position.

Total variation is bounded, so one sharp policy's near-boundary errors cannot dominate the way
they do under KL (``kl_values`` is reported beside it).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from rayexp.exact.ceilings import MARGIN_EPS
from rayexp.ridge import ridge_fit
from rayexp.stats import ratio_values

#: floor of fitted probabilities (KL and log-targets of one-hot policies stay finite)
FLOOR = 1e-4
#: the finest resolution (L1 between next-token distributions) a map of p_pre is judged at
MIN_RESOLUTION = 0.005


def tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance along the last axis."""
    return 0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum(-1)


def kl_values(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) along the last axis, q floored at :data:`FLOOR` and renormalised."""
    q = np.maximum(np.asarray(q, dtype=np.float64), FLOOR)
    q = q / q.sum(-1, keepdims=True)
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)


def position_policy(pi: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(n_test, L, A) the mean training policy at each position: what position alone explains."""
    mean = np.asarray(pi, dtype=np.float64)[train].mean(0)  # (L, A)
    return np.broadcast_to(mean, (len(test), *mean.shape)).copy()


def reweighting_fit(
    p_pre: np.ndarray, pi: np.ndarray, train: np.ndarray, test: np.ndarray, resolution: float = MIN_RESOLUTION
) -> np.ndarray:
    """(n_test, L, A) the held-out prediction of ``pi`` (N, L, A) from ``p_pre`` (N, L, V) by one map
    per position *at a resolution*: the mean policy of the training contexts whose p_pre lies within
    ``resolution`` (L1) of the held-out one (the nearest, where none does).

    Why a resolution: a pretrained model's distribution is never exact, and its small errors can
    depend on anything in the context (on an interleave, on the silent factor's history); a map free
    to read differences below the model's own error would call any policy a reweighting, the
    nearest-neighbour fit found 0.15 unexplained in a positive control whose p_pre carries one factor.
    Maps a reader calls reweighting (sharpening, argmax, group sums, caps, products) do not depend on
    such differences, except within ``resolution`` of a decision boundary."""
    import warnings

    from sklearn.neighbors import KNeighborsRegressor, RadiusNeighborsRegressor  # slow import: fits only

    X, Y = np.asarray(p_pre, dtype=np.float64), np.asarray(pi, dtype=np.float64)
    out = np.empty((len(test), *Y.shape[1:]))
    for t in range(Y.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # no neighbour within the radius: handled below
            pred = RadiusNeighborsRegressor(radius=resolution, metric="manhattan").fit(X[train, t], Y[train, t])
            pred = pred.predict(X[test, t])
        alone = ~np.isfinite(pred).all(-1)
        if alone.any():
            nearest = KNeighborsRegressor(n_neighbors=1, metric="manhattan").fit(X[train, t], Y[train, t])
            pred[alone] = nearest.predict(X[test, t][alone])
        out[:, t] = pred
    return out


def resolution_of(p_pre: np.ndarray, p_exact: np.ndarray) -> float:
    """The resolution a map of ``p_pre`` is judged at: twice the pretrained model's mean L1 error
    against the exact next-token distribution, at least :data:`MIN_RESOLUTION`."""
    err = float(np.abs(np.asarray(p_pre, dtype=np.float64) - p_exact).sum(-1).mean())
    return max(MIN_RESOLUTION, 2.0 * err)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _softmax_regression(X: np.ndarray, Y: np.ndarray, alpha: float, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (D, A), b (A,)) minimising the cross-entropy of softmax(X W + b) to soft labels ``Y`` plus
    ``alpha * |W|^2`` (X standardised by the caller): a linear readout to a *policy*, started from the
    ridge fit to the clipped log-probabilities and refined by L-BFGS."""
    from scipy.optimize import minimize  # scipy's import is slow; only fits need it

    n, d = X.shape
    a = Y.shape[1]
    logp = np.log(np.maximum(Y, FLOOR))
    init = ridge_fit(X, logp - logp.mean(-1, keepdims=True), 1e-3)
    theta0 = np.concatenate([init.coef.ravel(), init.intercept.ravel()])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: d * a].reshape(d, a), theta[d * a :]
        q = softmax(X @ W + b)  # (n, A)
        ce = -(Y * np.log(np.maximum(q, 1e-300))).sum() / n + alpha * (W**2).sum()
        g = (q - Y) / n  # (n, A) gradient wrt the logits
        return float(ce), np.concatenate([(X.T @ g + 2 * alpha * W).ravel(), g.sum(0)])

    theta = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": iters}).x
    return theta[: d * a].reshape(d, a), theta[d * a :]


def readout_fit(
    feats: np.ndarray,
    pi: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    alpha: float = 1e-4,
    iters: int = 200,
    blas_threads: int | None = 1,
) -> np.ndarray:
    """(n_test, L, A) the held-out prediction of ``pi`` (N, L, A) by a linear readout of ``feats``
    (N, L, D): softmax regression to the policy, one readout per position (features standardised on
    the training sequences; ``alpha`` the L2 penalty of the standardised weights).

    ``blas_threads`` caps the BLAS pools during the fits (None: leave them as the caller set them).
    numpy and scipy each ship an OpenBLAS with its own thread pool, and L-BFGS alternates between
    them thousands of times: each pool's idle threads spin on the cores the other needs. Outside a
    Ray worker (which runs on ``OMP_NUM_THREADS=1``) that made the composition analysis of one
    quickstart trial 6x slower on 2 cores (benchmarks/bench_readout.py); one thread is also what a
    trial computes with, so a fit gives the trial's numbers wherever it runs."""
    import scipy.optimize  # noqa: F401  (loads scipy's OpenBLAS: the limit caps only libraries already loaded)

    X, Y = np.asarray(feats, dtype=np.float64), np.asarray(pi, dtype=np.float64)
    out = np.empty((len(test), *Y.shape[1:]))
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        for t in range(Y.shape[1]):
            mu, sd = X[train, t].mean(0), X[train, t].std(0) + 1e-8
            W, b = _softmax_regression((X[train, t] - mu) / sd, Y[train, t], alpha, iters)
            out[:, t] = softmax(((X[test, t] - mu) / sd) @ W + b)
    return out


def unexplained_values(pi_test: np.ndarray, fit: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """(n_test,) per held-out sequence: sum_t TV(pi, fit) over sum_t TV(pi, baseline), linearised
    (:func:`rayexp.stats.ratio_values`) so that the mean is the ratio of the sums."""
    return ratio_values(tv(pi_test, fit).sum(-1), tv(pi_test, baseline).sum(-1))


def class_values(
    pi: np.ndarray,
    p_pre: np.ndarray,
    feats: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    alpha: float = 1e-4,
    resolution: float = MIN_RESOLUTION,
) -> dict[str, np.ndarray]:
    """Both classes fitted to policy ``pi`` (N, L, A): per held-out sequence, the share each leaves
    unexplained (``u_reweighting``, ``u_elicitation``) and that probability mass itself (total variation
    per step, ``tv_reweighting``, ``tv_elicitation``), and each fit's held-out prediction
    (``fit_{class}``, (n_test, L, A), with ``fit_position`` the position-only baseline)."""
    base = position_policy(pi, train, test)
    fits = {
        "reweighting": reweighting_fit(p_pre, pi, train, test, resolution),
        "elicitation": readout_fit(feats, pi, train, test, alpha),
    }
    out = {f"u_{cls}": unexplained_values(pi[test], fit, base) for cls, fit in fits.items()}
    out |= {f"tv_{cls}": tv(pi[test], fit).mean(-1) for cls, fit in fits.items()}  # (n_test,) per step
    return out | {f"fit_{cls}": fit for cls, fit in fits.items()} | {"fit_position": base}


def reward_shortfall(
    greedy: np.ndarray, fit_reward: np.ndarray, optimum: np.ndarray, single: np.ndarray | None, test: np.ndarray
) -> np.ndarray:
    """Per held-out sequence (n_test,), linearised: (the policy's greedy reward ``greedy`` - the fitted
    map of p_pre's ``fit_reward``, both (n_test,)) over (``optimum`` - ``single``, the best per-phase
    single factor, both (N,) over every sequence, taken at ``test``): the share of that gap no map of
    p_pre earns (above 1 where the map earns less than the single factor). NaN without a single factor
    below the optimum (as the margin). The composition analysis and the battery both score it so."""
    if single is None or optimum.mean() - single.mean() < MARGIN_EPS:
        return np.full(len(test), np.nan)
    return ratio_values(greedy - fit_reward, optimum[test] - single[test])
