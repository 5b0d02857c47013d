"""The LLC estimator (devinterp's SGLD) on models whose learning coefficient is known, its diagnostics,
the calibration rule, the transition rule on a constructed staircase, and the analysis adapter on
tiny transformers standing in for a trial's stored artifacts.

Known answers, with the tolerance each test states:
- regular: full-rank linear regression with d parameters at its least-squares optimum, LLC = d/2
  (within 10 %; the localization shrinks it by 2n*beta / (2n*beta + gamma) = 0.997 here);
- singular: y = sum_i w_i^2 x_i at w = 0 with a truth of 0: L(w) - L(0) = sum_i w_i^4 exactly (the
  data are built so), whose RLCT is 1/4 per parameter, d/4 in all (within 15 %; at the finite
  n*beta and gamma used, quadrature of the tempered posterior gives 0.972 * d/4).
"""

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rayexp.studies.development import losses
from rayexp.studies.development.llc import (
    SGLDSettings,
    calibrate,
    diagnose,
    estimate_llc,
    locate_transitions,
)

N = 1000
NBETA = N / math.log(N)  # n / ln n


def _data(n, d, seed):
    """Inputs with X^T X / n = I and noise orthogonal to every column of X."""
    rng = np.random.default_rng(seed)
    X = np.linalg.qr(rng.standard_normal((n, d)))[0] * math.sqrt(n)  # (n, d)
    eps = rng.standard_normal(n)
    eps -= X @ (X.T @ eps) / n
    return torch.tensor(X, dtype=torch.float32), torch.tensor(eps, dtype=torch.float32)


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32).clone())

    def forward(self, X):
        return X @ self.w  # (n,)


class Squares(nn.Module):
    """y = sum_i w_i^2 x_i: singular at w = 0."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, X):
        return X @ self.w**2  # (n,)


def mse(model, batch):
    X, y = batch
    return ((y - model(X)) ** 2).mean()


def _regression(d=10, seed=0):
    X, eps = _data(N, d, seed)
    w_star = torch.linspace(-1, 1, d)
    return Linear(w_star), [(X, X @ w_star + eps)]  # the least-squares optimum is w_star exactly


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and the machine is shared)
    yield
    torch.set_num_threads(threads)


def test_regular_model_llc_is_half_the_dimension():
    d = 10
    model, batches = _regression(d)
    before = model.w.detach().clone()
    s = SGLDSettings(lr=3e-4, localization=1.0, nbeta=NBETA, num_chains=4, num_draws=400, num_burnin=100)
    res = estimate_llc(model, mse, batches, s)
    assert res.mean == pytest.approx(d / 2, rel=0.10)
    assert torch.equal(model.w.detach(), before)  # the model is not moved
    assert res.loss_traces.shape == (4, 400) and res.per_chain.shape == (4,)
    # devinterp's per-chain LLC is n*beta times the mean excess of the draws
    np.testing.assert_allclose(res.per_chain, NBETA * res.excess_traces.mean(1), rtol=1e-4)
    assert res.init_loss == pytest.approx(float(mse(model, batches[0]).detach()), rel=1e-6)
    dg = diagnose(res)
    assert dg["healthy"] and not dg["diverged"] and not dg["below_init"] and not dg["spiked"]
    again = estimate_llc(model, mse, batches, s)
    assert again.mean == pytest.approx(res.mean, rel=1e-6)  # seeded chains


def test_singular_model_llc_is_its_rlct():
    d = 8
    X, eps = _data(N, d, 1)
    s = SGLDSettings(lr=2e-3, localization=1.0, nbeta=NBETA, num_chains=4, num_draws=1000, num_burnin=200)
    res = estimate_llc(Squares(d), mse, [(X, eps)], s)
    assert res.mean == pytest.approx(d / 4, rel=0.15)
    assert res.mean < 0.6 * d / 2  # well below what a regular model with d parameters has
    assert diagnose(res)["healthy"]


def test_diagnostics_flag_divergence_and_a_point_that_is_not_a_minimum():
    model, batches = _regression()
    s = SGLDSettings(lr=0.1, localization=1.0, nbeta=NBETA, num_chains=2, num_draws=50)
    dg = diagnose(estimate_llc(model, mse, batches, s))  # step x curvature = 14.5 > 2: explodes
    assert dg["diverged"] and not dg["healthy"]
    off = Linear(model.w.detach() + 0.3)  # a slope away from the optimum: the chains walk downhill
    dg = diagnose(estimate_llc(off, mse, batches, s.replace(lr=3e-4, num_draws=200)))
    assert dg["below_init"] and dg["llc_mean"] < 0 and not dg["healthy"]


def test_diagnose_rules_on_constructed_traces():
    from rayexp.studies.development.llc import LLCResult

    def result(traces, init=1.0):
        traces = np.asarray(traces, dtype=float)
        per = 10 * (traces.mean(1) - init)
        return LLCResult(per.mean(), per.std(ddof=1), per, traces, init, None, np.full(traces.shape[1], init))

    rng = np.random.default_rng(0)
    flat = 1.1 + 0.01 * rng.standard_normal((4, 100))
    assert diagnose(result(flat))["healthy"]
    rising = 1.0 + np.linspace(0, 0.2, 100) + 0.001 * rng.standard_normal((4, 100))
    assert not diagnose(result(rising))["settled"]
    spike = flat.copy()
    spike[:, 5:10] += 2.0
    assert diagnose(result(spike))["spiked"]
    assert diagnose(result(flat), ceiling=1.05)["diverged"]
    assert diagnose(result(flat - 0.2))["below_init"]


def test_calibration_picks_the_healthy_setting():
    d = 40  # many parameters: the too-small step's slow climb is steady enough to be seen in 4 chains
    model, batches = _regression(d)
    base = SGLDSettings(lr=0, localization=0, nbeta=NBETA, num_chains=4, num_draws=200)
    cal = calibrate(model, mse, batches, base, lrs=[1e-6, 3e-4, 0.1], localizations=[1.0, 100.0])
    rows = {(r["lr"], r["localization"]): r for r in cal.table}
    assert not rows[(1e-6, 1.0)]["settled"]  # too small a step: still climbing after 200 draws
    assert rows[(1e-6, 1.0)]["llc_mean"] < 0.1 * d / 2
    assert rows[(0.1, 1.0)]["diverged"] and rows[(0.1, 100.0)]["diverged"]
    assert rows[(3e-4, 1.0)]["healthy"] and rows[(3e-4, 1.0)]["llc_mean"] == pytest.approx(d / 2, rel=0.10)
    # localization shrinks the answer to d/2 * 2nbeta / (2nbeta + gamma) (0.74 of d/2 at gamma = 100)
    assert rows[(3e-4, 100.0)]["llc_mean"] == pytest.approx(d / 2 * 2 * NBETA / (2 * NBETA + 100), rel=0.10)
    assert (cal.settings.lr, cal.settings.localization) == (3e-4, 1.0)
    assert [r["chosen"] for r in cal.table].count(True) == 1 and rows[(3e-4, 1.0)]["chosen"]
    assert cal.settings.num_draws == 200 and set(cal.results) == set(rows)


def test_transitions_on_a_staircase():
    steps = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
    stairs = np.array([1.0] * 5 + [3.0] * 5 + [4.0] * 4)  # jumps between 10 -> 20 and 500 -> 1000
    assert locate_transitions(steps, stairs) == [20, 1000]
    noisy = stairs + 0.02 * np.random.default_rng(0).standard_normal(len(stairs))
    assert locate_transitions(steps, noisy) == [20, 1000]
    assert locate_transitions(steps, 2.0 * np.log1p(steps)) == []  # a straight line in log-step
    assert locate_transitions(steps[::-1], stairs[::-1]) == [20, 1000]  # order does not matter
    with_nan = stairs.copy()
    with_nan[2] = np.nan
    assert locate_transitions(steps, with_nan) == [20, 1000]
    assert locate_transitions([0, 1, 2], [0.0, 5.0, 5.0]) == []  # too few checkpoints to judge
    its = np.arange(0, 110, 10)  # evenly spaced: slopes per iteration
    ramp = np.where(its < 50, 0.01 * its, 0.01 * its + 2.0)
    assert locate_transitions(its, ramp, log_steps=False) == [50]
    assert locate_transitions(its, 0.01 * its, log_steps=False) == []


def test_choose_skips_a_step_size_that_blew_up_at_any_localization():
    from rayexp.studies.development.llc import choose

    def row(lr, loc, healthy=True, diverged=False, spiked=False):
        return {"lr": lr, "localization": loc, "healthy": healthy, "diverged": diverged, "spiked": spiked}

    rows = [row(1e-5, 1), row(3e-5, 1), row(1e-5, 100), row(3e-5, 100, healthy=False, spiked=True)]
    assert choose(rows) == 0  # 3e-5 is healthy at gamma 1 but spiked at gamma 100: the edge of stability
    rows[3] = row(3e-5, 100)
    assert choose(rows) == 1  # the smallest localization, then the largest lr
    rows = [row(1e-5, 1, healthy=False), row(1e-5, 100, healthy=False, diverged=True)]
    assert choose(rows) == 0  # nothing healthy: the points that did not blow up


# ---------------------------------------------------------------------------------------------
# the losses and the adapter, on tiny transformers

MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}


def _tiny(seed=0):
    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=16, n_ctx=6, d_vocab=3)
    return Transformer(cfg, seed=seed).eval()


def test_rl_losses_read_the_policy_at_the_last_real_position():
    from rayexp.policy import window_probs as policy_probs

    model, pad = _tiny(), 3
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 3, (5, 4, 6))  # (N, L, K)
    lengths = rng.integers(1, 7, (5, 4))
    obs = np.where(np.arange(6) < lengths[..., None], obs, pad)
    actions = rng.integers(0, 2, (5, 4))
    batch = losses.action_batches({"obs": obs, "actions": actions}, pad, [2, 0], 64)[0]
    probs = policy_probs(model, obs.reshape(-1, 6), pad, np.array([2, 0]))  # (20, 2)
    want = -np.log(probs[np.arange(20), actions.ravel()]).mean()
    with torch.no_grad():
        assert float(losses.action_nll(model, batch)) == pytest.approx(want, rel=1e-5)
        own = losses.distill_batches(model, [batch])[0]
        assert float(losses.self_distill_kl(model, own)) == pytest.approx(0, abs=1e-6)
        other = losses.distill_batches(_tiny(seed=1), [batch])[0]
        assert float(losses.self_distill_kl(model, other)) > 0


class FakeTrial:
    """What the llc analysis reads from rayexp.artifacts.TrialArtifacts, held in memory."""

    def __init__(self):
        from envs import build_process
        from rayexp.rollouts import collect

        self.env_config = {
            "process": MESS3,
            "context": 6,
            "episode_len": 6,
            "reward": "next_token",
            "reward_params": {},
            "seed": 0,
            "action_tokens": [0, 1, 2],
        }
        self._process = build_process(MESS3)
        model = _tiny()
        opt = torch.optim.Adam(model.parameters(), lr=3e-2)
        tokens = torch.as_tensor(self._process.sample(64, 7, np.random.default_rng(0))[0])
        self._ckpts = {}
        for step in range(41):
            if step in (0, 5, 15, 40):
                self._ckpts[step] = copy.deepcopy(model).eval()
            opt.zero_grad()
            losses.next_token_loss(model, tokens).backward()
            opt.step()
        self._policies = {}
        for it, scale in ((1, 0.3), (2, 0.6)):
            m = copy.deepcopy(self._ckpts[40])
            with torch.no_grad():
                m.unembed_proj.bias.add_(scale * torch.tensor([1.0, 0.0, -1.0]))
            self._policies[it] = m
        self._rollouts = collect(self._policies[2], self.env_config, 16, seed=1)

    def __repr__(self):
        return "FakeTrial()"

    def process(self):
        return self._process

    def stream(self):
        return self._process

    def pretrain_steps(self):
        return sorted(self._ckpts)

    def pretrain_checkpoint(self, step):
        return self._ckpts[step]

    def ppo_iterations(self):
        return sorted(self._policies)

    def policy(self, it):
        return self._ckpts[40] if it == 0 else self._policies[it]

    def rollouts(self):
        return self._rollouts


@pytest.mark.parametrize("rl_loss", ["self_distill", "action_nll"])
def test_llc_analysis_end_to_end_on_tiny_models(rl_loss):
    from rayexp.registry import validate_params
    from rayexp.studies.development.llc_analysis import llc

    params = validate_params(
        "llc",
        {"num_chains": 2, "num_draws": 12, "lrs": [1e-5, 1e-4], "localizations": [10.0], "n_seq": 64,
         "batch_size": 16, "reward_episodes": 4, "rl_loss": rl_loss},
    )  # fmt: skip
    result = llc(FakeTrial(), params)
    m = result.metrics
    for key in (
        "pretrain/final",
        "rl/final",
        "calibration/pretrain/lr",
        "calibration/rl/nbeta",
        "seconds_per_estimate",
    ):
        assert np.isfinite(m[key]), key
    assert m["calibration/pretrain/localization"] == 10.0 and m["calibration/pretrain/lr"] in (1e-5, 1e-4)
    assert m["calibration/pretrain/nbeta"] == pytest.approx(384 / math.log(384))  # n / ln n, 64 sequences x 6 tokens
    pre = result.tables["llc_pretrain"].to_pydict()
    assert pre["step"] == [0, 5, 15, 40] and pre["loss"][0] > pre["loss"][-1]
    rl = result.tables["llc_rl"].to_pydict()
    assert rl["iteration"] == [0, 1, 2] and all(np.isfinite(rl["reward"]))
    chains = result.tables["llc_chains"]
    assert chains.num_rows == 2 * 12 * (4 + 3 + 2 + 2)  # chains x draws x (estimates + calibration points)
    assert result.tables["llc_calibration"].num_rows == 4
    assert result.tables["llc_transitions"].column_names == ["phase", "curve", "checkpoint"]
    assert set(result.figures) == {"llc_over_training"}


def test_params_validate():
    from pydantic import ValidationError

    from rayexp.registry import validate_params

    assert validate_params("llc", {}).num_chains == 4
    with pytest.raises(ValidationError):
        validate_params("llc", {"num_chain": 2})
    with pytest.raises(ValidationError):
        validate_params("llc", {"lrs": []})
    code = (
        "import sys, rayexp.registry as a; assert 'llc' in a.ANALYSES; "
        "assert not {'torch', 'devinterp'} & set(sys.modules), 'torch or devinterp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
