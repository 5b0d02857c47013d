"""The LLC estimator on models whose learning coefficient is known, with the study's SGLD setting.

Known answers (rayexp.studies.development.rlct), all with STUDY_SGLD (eps 2e-6, gamma 1, nbeta 1000,
RMSprop delta 1e-4 frozen after 500 burn-in steps, 4 chains x 1000 draws), each within 15 % of the
truth and settled (R-hat <= 1.1):

- regular: linear regression with d parameters, d/2 (times nbeta / (nbeta + gamma) = 0.999: the
  localised posterior's precision is nbeta + gamma, :func:`regular_truth`);
- deep linear networks at their most singular true point, lambda by Aoyagi's formula: the reduced-rank
  regressions (M, H, N) = (5, 3, 5) -> 6.5, (5, 4, 5) -> 8, (4, 3, 8), (8, 3, 4), (3, 8, 4) -> 6
  (devinterp's cases, where it accepts rtol 0.3-0.4) and the 10-10-10-10 network with rank 3 -> 42;
- normal-crossing potentials K = 1/2 prod w_i^(2 k_i) at 0: lambda 1/2, 1/4, 1/6 (multiplicity 1).
  Their prior-bound directions mix slowly, so these run 4000 draws (the study's other settings
  unchanged), on 16 independent copies at once (the estimate of the sum is 16 lambda; divided by 16
  it has 16 times the samples). The tempered truth at nbeta 1000, gamma 1 (quadrature, below: 0.4995,
  0.2201, 0.1480) is 12 % and 11 % under lambda for 1/4 and 1/6, and the sampler overshoots it: at
  chain seed 0 it reads 0.511, 0.244, 0.167, against lambda +2 %, -2 %, +0 % but against the tempered
  truth +2 %, +11 %, +13 % (seeds 0-4: +2 to +5 %, -1 to +11 %, +8 to +15 %). Near lambda because the
  two errors cancel; each is held within 15 % of both. 16000 draws come closer (seeds 0, 1: +5.5 %,
  -0.2 % for 1/4, +7.5 %, +3.4 % for 1/6; seed 2's 1/6 diverged), a 4x smaller step with 8000 draws
  (half the sampler's time) does not (seeds 0-2: +5 to +8 %, +16 to +24 %): it reads as slow mixing,
  not the step's bias.
- Not within 15 %: K = w1^2 w2^2, lambda 1/2 with multiplicity 2. Its tempered truth is itself 0.381
  (-24 %: the expected energy is lambda - (m - 1) / log(nbeta) + ...), and the estimate (0.387) is
  held to that instead, and to being below lambda; said here, not loosened silently.

Timings on the shared 2-core machine: each known answer 1-6 s; the whole file about a minute.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rayexp.studies.development.convergence import rhat, split_rhat
from rayexp.studies.development.llc import (
    STUDY_SGLD,
    LLCResult,
    diagnose,
    estimate_llc,
)
from rayexp.studies.development.rlct import dln_rlct, normal_crossing_rlct, rrr_rlct

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add overhead


# ---------------------------------------------------------------------------------------------
# closed forms


def test_aoyagi_formula_on_devinterps_cases_and_a_deep_network():
    for (m, h, n), want in {(5, 3, 5): 6.5, (5, 4, 5): 8.0, (4, 3, 8): 6.0, (8, 3, 4): 6.0, (3, 8, 4): 6.0}.items():
        assert dln_rlct((m, h, n), 0) == want
        assert rrr_rlct(m, h, n) == want
    assert dln_rlct((10, 10, 10, 10), 3) == 42.0
    # the general theorem and Aoyagi & Watanabe's four reduced-rank cases agree on every small case
    for m, h, n in np.ndindex(7, 7, 7):
        m, h, n = m + 1, h + 1, n + 1
        for r in range(min(m, h, n) + 1):
            assert dln_rlct((m, h, n), r) == rrr_rlct(m, h, n, r), (m, h, n, r)
    assert dln_rlct((4, 6), 2) == 12.0  # one matrix: regular, d/2
    assert dln_rlct((3, 3, 5), 3) == 7.5  # full rank: the product's 15 entries, regular
    with pytest.raises(ValueError):
        dln_rlct((3, 2, 3), 3)  # rank above a width


def test_normal_crossing_rlct():
    assert normal_crossing_rlct((0, 1)) == (0.5, 1)
    assert normal_crossing_rlct((1, 2)) == (0.25, 1)
    assert normal_crossing_rlct((1, 3)) == (1 / 6, 1)
    assert normal_crossing_rlct((1, 1)) == (0.5, 2)
    assert normal_crossing_rlct((2, 1, 2)) == (0.25, 2)


def tempered_truth(powers, nbeta, gamma, n=2001):
    """nbeta * E[K] under exp(-nbeta K - gamma/2 |w|^2), K = 1/2 w1^(2 k1) w2^(2 k2): what SGLD samples, by quadrature."""
    g = np.linspace(-6 / math.sqrt(gamma), 6 / math.sqrt(gamma), n)
    w1, w2 = np.meshgrid(g, g, indexing="ij")
    k = 0.5 * w1 ** (2 * powers[0]) * w2 ** (2 * powers[1])
    logp = -nbeta * k - gamma / 2 * (w1**2 + w2**2)
    p = np.exp(logp - logp.max())
    return float(nbeta * (p * k).sum() / p.sum())


# ---------------------------------------------------------------------------------------------
# R-hat


def test_split_rhat_on_constructed_chains():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 1000))
    assert 0.99 < split_rhat(iid) < 1.01 and 0.99 < rhat(iid) < 1.01
    apart = iid + np.arange(4)[:, None]  # chains stuck in different places
    assert rhat(apart) > 1.5
    drifting = iid + np.linspace(0, 2, 1000)  # every chain still climbing: only the split sees it
    assert rhat(drifting) > 1.1 and split_rhat(drifting) > 1.1
    # by hand: 2 chains of 4 draws -> 4 halves of 2; W = mean within variance, B = 2 * var of means
    x = np.array([[0.0, 2.0, 1.0, 3.0], [1.0, 1.0, 5.0, 7.0]])
    halves = np.array([[0, 2], [1, 1], [1, 3], [5, 7]], dtype=float)
    w, b = halves.var(axis=1, ddof=1).mean(), 2 * halves.mean(axis=1).var(ddof=1)
    assert split_rhat(x) == pytest.approx(math.sqrt((w / 2 + b / 2) / w))
    heavy = rng.standard_cauchy((4, 1000))  # ranks make the tails harmless
    assert rhat(heavy) < 1.02
    assert math.isnan(rhat(iid[:, :3])) and math.isnan(rhat(np.where(iid > 3, np.inf, iid)))
    # chains that never move (every draw equal) have not shown they mix: no R-hat, so not settled
    assert math.isnan(split_rhat(np.ones((4, 10)))) and math.isnan(rhat(np.zeros((4, 100))))
    assert split_rhat(np.arange(4.0)[:, None] + np.zeros((4, 10))) == math.inf  # stuck in different places
    # two values, half each: the bulk is defined, the tail (distance from the median, all 0.5) is not
    two = np.tile([0.0, 1.0], (4, 50))
    assert np.isfinite(split_rhat(two)) and math.isnan(rhat(two))


# ---------------------------------------------------------------------------------------------
# the sampler on known answers


def orthogonal_data(m, d_in, d_out, seed):
    """Inputs with X^T X / m = I and noise orthogonal to every column of X: the loss is then exactly
    1/2 |W - W0|^2 + const in the network's map W, so its empirical minimum is the truth."""
    rng = np.random.default_rng(seed)
    X = np.linalg.qr(rng.standard_normal((m, d_in)))[0] * math.sqrt(m)
    E = rng.standard_normal((m, d_out))
    E -= X @ (X.T @ E) / m
    return torch.tensor(X, dtype=torch.float32), torch.tensor(E, dtype=torch.float32)


class DLN(nn.Module):
    def __init__(self, mats):
        super().__init__()
        self.ws = nn.ParameterList(nn.Parameter(torch.as_tensor(w, dtype=torch.float32)) for w in mats)

    def forward(self, x):
        for w in self.ws:
            x = x @ w.T
        return x


def half_sse(model, batch):
    """Gaussian negative log-likelihood (unit noise) per sample, up to a constant."""
    X, Y = batch
    return 0.5 * ((Y - model(X)) ** 2).sum(1).mean()


def dln_at_truth(widths, rank, seed=0):
    """A deep linear network at its true map of rank ``rank``, factorised as an r x r block per layer
    (zeros elsewhere: the most singular point of the fibre, whose LLC is Aoyagi's global lambda)."""
    rng = np.random.default_rng(seed)
    n_mats = len(widths) - 1
    mats = [np.zeros((widths[i + 1], widths[i])) for i in range(n_mats)]
    if rank:
        s = rng.uniform(1, 2, rank) ** (1 / n_mats)  # singular values 1-2 shared over the layers
        u = np.linalg.qr(rng.standard_normal((widths[-1], rank)))[0]
        v = np.linalg.qr(rng.standard_normal((widths[0], rank)))[0]
        mats[0][:rank] = np.diag(s) @ v.T
        for w in mats[1:-1]:
            w[:rank, :rank] = np.diag(s)
        mats[-1][:, :rank] = u @ np.diag(s)
    model = DLN(mats)
    X, E = orthogonal_data(4 * max(widths), widths[0], widths[-1], seed)
    with torch.no_grad():
        return model, [(X, model(X) + E)]


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32).clone())

    def forward(self, X):
        return X @ self.w  # (n,)


def mse(model, batch):
    X, y = batch
    return 0.5 * ((y - model(X)) ** 2).mean()


def _regression(d=10, seed=0):
    X, eps = orthogonal_data(1000, d, 1, seed)
    w_star = torch.linspace(-1, 1, d)
    return Linear(w_star), [(X, X @ w_star + eps[:, 0])]  # the least-squares optimum is w_star exactly


def regular_truth(d, s):
    """What the estimator targets on :func:`_regression`: L(w) - L(w*) = 1/2 |w - w*|^2 (orthogonal data),
    so exp(-nbeta L - gamma/2 |w - w*|^2) is normal with precision nbeta + gamma per coordinate and
    nbeta E[L - L(w*)] = d/2 * nbeta / (nbeta + gamma)."""
    return d / 2 * s.nbeta / (s.nbeta + s.localization)


def _regular_settings(preconditioner):
    # identity SGLD needs its own step: without the preconditioner's ~1/(grad scale) gain eps is far too small
    return STUDY_SGLD if preconditioner == "rmsprop" else STUDY_SGLD.replace(preconditioner="identity", lr=1e-4)


@pytest.mark.parametrize("preconditioner", ["rmsprop", "identity"])
def test_regular_model_llc_is_half_the_dimension(preconditioner):
    d = 10
    model, batches = _regression(d)
    before = model.w.detach().clone()
    s = _regular_settings(preconditioner)
    res = estimate_llc(model, mse, batches, s)
    assert res.mean == pytest.approx(regular_truth(d, s), rel=0.10) and res.settled()
    assert torch.equal(model.w.detach(), before)  # the model is left where it was
    assert res.loss_traces.shape == (4, 1000) and res.per_chain.shape == (4,)
    np.testing.assert_allclose(res.per_chain, s.nbeta * res.excess_traces.mean(1), rtol=1e-9)
    assert res.init_loss == pytest.approx(float(mse(model, batches[0]).detach()), rel=1e-6)
    again = estimate_llc(model, mse, batches, s)
    assert again.mean == res.mean  # seeded chains
    assert estimate_llc(model, mse, batches, s.replace(seed=1)).mean != res.mean


@pytest.mark.parametrize("preconditioner", ["rmsprop", "identity"])
def test_regular_model_llc_carries_the_localisation_factor(preconditioner):
    # at the study's gamma the factor is 0.999, too close to 1 to check; at gamma = nbeta it is 1/2 (2/3 if
    # the precision were 2 nbeta + gamma), and the estimate must follow it
    s = _regular_settings(preconditioner).replace(localization=STUDY_SGLD.nbeta)
    model, batches = _regression(10)
    res = estimate_llc(model, mse, batches, s)
    assert res.mean == pytest.approx(regular_truth(10, s), rel=0.10) and res.settled()


RRR = [((5, 3, 5), 0), ((5, 4, 5), 0), ((4, 3, 8), 0), ((8, 3, 4), 0), ((3, 8, 4), 0), ((10, 10, 10, 10), 3)]


@pytest.mark.parametrize("widths,rank", RRR, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else f"r{v}")
def test_deep_linear_networks_match_aoyagi(widths, rank):
    model, batches = dln_at_truth(widths, rank)
    truth = dln_rlct(widths, rank)
    res = estimate_llc(model, half_sse, batches, STUDY_SGLD)
    assert res.mean == pytest.approx(truth, rel=0.15), f"{widths} r{rank}: {res.mean:.3f} vs {truth}"
    assert res.settled(), f"R-hat {res.rhat:.3f}"


class Copies(nn.Module):
    """``copies`` independent points of R^len(powers), all starting at 0."""

    def __init__(self, powers, copies=16):
        super().__init__()
        self.k = torch.tensor(powers, dtype=torch.float32)
        self.w = nn.Parameter(torch.zeros(copies, len(powers)))


def normal_crossing(model, _batch):
    return 0.5 * torch.prod(model.w ** (2 * model.k), dim=1).sum()


NC_SETTINGS = STUDY_SGLD.replace(num_draws=4000)


def _normal_crossing_estimate(powers):
    model = Copies(powers)
    res = estimate_llc(model, normal_crossing, [None], NC_SETTINGS)
    return res.mean / len(model.w), res


@pytest.mark.parametrize("powers", [(0, 1), (1, 2), (1, 3)])
def test_normal_crossing_potentials(powers):
    lam, mult = normal_crossing_rlct(powers)
    assert mult == 1
    got, res = _normal_crossing_estimate(powers)
    assert got == pytest.approx(lam, rel=0.15), f"{powers}: {got:.4f} vs {lam:.4f}"
    assert got == pytest.approx(tempered_truth(powers, NC_SETTINGS.nbeta, NC_SETTINGS.localization), rel=0.15)
    assert res.settled(), f"R-hat {res.rhat:.3f}"


def test_multiplicity_two_reads_below_lambda_as_predicted():
    lam, mult = normal_crossing_rlct((1, 1))
    assert (lam, mult) == (0.5, 2)
    tempered = tempered_truth((1, 1), NC_SETTINGS.nbeta, NC_SETTINGS.localization)
    assert tempered < 0.8 * lam  # the finite-temperature answer itself is 24 % low
    got, res = _normal_crossing_estimate((1, 1))
    assert got == pytest.approx(tempered, rel=0.10) and got < 0.85 * lam and res.settled()


# ---------------------------------------------------------------------------------------------
# diagnostics


def test_diagnostics_flag_divergence_and_a_point_that_is_not_a_minimum():
    model, batches = _regression()
    s = STUDY_SGLD.replace(preconditioner="identity", lr=0.1, num_burnin=10, num_draws=50)
    dg = diagnose(estimate_llc(model, mse, batches, s))  # step x curvature x nbeta >> 2: explodes
    assert dg["diverged"] and not dg["settled"] and not dg["healthy"]
    off = Linear(model.w.detach() + 0.3)  # a slope away from the optimum: the chains walk downhill
    dg = diagnose(estimate_llc(off, mse, batches, s.replace(lr=1e-4, num_draws=200)))
    assert dg["below_init"] and dg["llc_mean"] < 0 and not dg["healthy"]


def test_diagnose_marks_unsettled_chains():
    def result(traces, init=1.0):
        traces = np.asarray(traces, dtype=float)
        per = 10 * (traces.mean(1) - init)
        ex = traces - init
        return LLCResult(per.mean(), per.std(ddof=1), per, traces, np.full(traces.shape[1], init), None, rhat(ex))

    rng = np.random.default_rng(0)
    flat = 1.1 + 0.01 * rng.standard_normal((4, 200))
    dg = diagnose(result(flat))
    assert dg["settled"] and dg["healthy"] and dg["rhat"] < 1.05
    assert not diagnose(result(flat), rhat_max=0.999 * dg["rhat"])["settled"]  # the threshold is the caller's
    rising = flat + np.linspace(0, 0.1, 200)  # still climbing: the halves differ
    assert not diagnose(result(rising))["settled"]
    apart = flat + 0.05 * np.arange(4)[:, None]  # chains in different places
    dg = diagnose(result(apart))
    assert not dg["settled"] and not dg["healthy"] and dg["rhat"] > 1.1
    assert diagnose(result(flat), ceiling=1.05)["diverged"]
    still = diagnose(result(np.full((4, 200), 1.1)))  # the chains never left their start
    assert math.isnan(still["rhat"]) and not still["settled"] and not still["healthy"]
    assert diagnose(result(flat - 0.2))["below_init"]
