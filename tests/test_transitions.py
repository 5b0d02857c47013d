"""The transition rule: it must say no on curves without a transition, and yes on planted steps.

The must-say-no case is measured, not assumed: straight lines of random intercept, slope and noise
scale, at the checkpoint layouts the studies use (PPO's 9 evenly spaced iterations, pretraining's 10
log-spaced steps, the TMS study's 21), each marked at most as often as the rule's alpha allows. The
rule's threshold comes from a Monte Carlo of the same null, so these curves are drawn from another
generator than the calibration's. A fixed k = 3, the rule before calibration, fails the same check
(about one curve in five marked), which shows the check can fail.
"""

import numpy as np
import pytest

from rayexp.artifacts import log_spaced_steps
from rayexp.studies.development.llc_analysis import LLCParams
from rayexp.studies.development.tms_config import LLC as TMSLLC
from rayexp.studies.development.transitions import (
    _deviations,
    locate_transitions,
    phase_transitions,
    threshold,
)

PPO = np.arange(0, 45, 5)  # sweeps/development.yaml: iterations 0, 5, ..., 40
PRETRAIN = np.array(log_spaced_steps(800, 10))  # sweeps/development.yaml: 0, 1, 2, 5, 12, 28, 65, 150, 347, 800
TMS = np.arange(0, 126, 6)  # sweeps/tms.yaml's PPO: 21 checkpoints
LAYOUTS = [(PPO, False), (PRETRAIN, True), (TMS, False)]
N_CURVES = 4000  # binomial SD of a 0.05 rate: 0.0034


def _null_curves(steps, log_steps, seed):
    """Straight lines (in log-step where the layout is log-spaced) plus normal noise of random scale."""
    rng = np.random.default_rng(seed)
    x = np.log1p(steps) if log_steps else steps.astype(float)
    a, b = rng.normal(0, 100, (2, N_CURVES, 1))
    sigma = 10.0 ** rng.uniform(-3, 2, (N_CURVES, 1))
    return a + b * x / x.max() + sigma * rng.standard_normal((N_CURVES, len(x)))


@pytest.mark.parametrize(("steps", "log_steps"), LAYOUTS)
def test_a_line_plus_noise_is_marked_no_more_often_than_alpha(steps, log_steps):
    curves = _null_curves(steps, log_steps, seed=7)
    marked = np.mean([bool(locate_transitions(steps, c, 0.05, log_steps)) for c in curves])
    assert 0.035 < marked < 0.065, marked  # calibrated: about alpha, not below it by a wide margin either
    at_1pc = np.mean([bool(locate_transitions(steps, c, 0.01, log_steps)) for c in curves])
    assert at_1pc < 0.02, at_1pc
    # the rule before calibration (k = 3 robust SDs, whatever the number of checkpoints) fails this check
    x = np.log1p(steps) if log_steps else steps.astype(float)
    assert np.mean(_deviations(x, curves).max(axis=-1) > 3.0) > 0.12


def test_a_planted_step_is_found_where_it_is():
    rng = np.random.default_rng(3)
    curves = rng.standard_normal((2000, len(PPO)))
    curves[:, 5:] += 12.0  # a step of 12 noise SDs between iterations 20 and 25
    found = [locate_transitions(PPO, c, log_steps=False) for c in curves]
    hit = np.mean([any(abs(m - 25) <= 5 for m in f) for f in found])
    assert hit > 0.8, hit  # measured 0.88: the power 9 checkpoints allow at alpha 0.05
    small = rng.standard_normal((2000, len(PPO)))
    small[:, 5:] += 3.0  # 3 SDs: rarely told from noise at 9 checkpoints, and the rule says so
    assert np.mean([bool(locate_transitions(PPO, c, log_steps=False)) for c in small]) < 0.2


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
    assert locate_transitions([0, 1, 2, 3], [0.0, 0.0, 5.0, 5.0]) == []  # too few checkpoints to judge
    its = np.arange(0, 110, 10)  # evenly spaced
    ramp = np.where(its < 50, 0.01 * its, 0.01 * its + 2.0)
    assert locate_transitions(its, ramp, log_steps=False) == [50]
    assert locate_transitions(its, 0.01 * its, log_steps=False) == []


def test_jumps_not_slopes_so_short_intervals_of_a_noisy_flat_curve_are_not_marked():
    # a slope over the short intervals at the start of a log-spaced run has the noise of 1 / dx
    steps = np.array([0, 1, 2, 3, 4, 5, 6, 50, 100, 200, 400, 800])
    rng = np.random.default_rng(11)
    flat = rng.standard_normal((2000, len(steps)))
    x = steps.astype(float)
    slopes = np.diff(flat, axis=-1) / np.diff(x)
    dev = np.abs(slopes - np.median(slopes, axis=-1, keepdims=True))
    slope_rule = np.mean((dev > 3 * 1.4826 * np.median(dev, axis=-1, keepdims=True)).any(axis=-1))
    jump_rule = np.mean([bool(locate_transitions(steps, c, log_steps=False)) for c in flat])
    assert slope_rule > 0.5 and jump_rule < 0.07, (slope_rule, jump_rule)


def test_the_threshold_is_the_layouts_own_and_reproducible():
    k9, k21 = threshold(PPO.astype(float)), threshold(TMS.astype(float))
    assert k9 > k21 > 3.0  # fewer jumps, a noisier MAD, a higher bar
    assert threshold(10.0 * PPO) == k9  # x's scale does not matter
    assert threshold(PPO.astype(float), 0.01) > k9
    with pytest.raises(ValueError, match="alpha"):
        threshold(PPO.astype(float), 0.0)
    with pytest.raises(ValueError, match="increasing"):
        threshold([0.0, 1.0, 1.0, 2.0, 3.0])


def test_llc_transitions_use_healthy_estimates_only():
    its = list(range(0, 110, 10))
    llc = [1.0] * 5 + [5.0] * 6  # a step at 50 ...
    rows = [{"checkpoint": i, "llc_mean": v, "healthy": True, "reward": 0.1 * i} for i, v in zip(its, llc, strict=True)]
    assert phase_transitions({"rl": rows}) == {"rl": {"llc": [50], "reward": []}}
    rows[4]["llc_mean"], rows[4]["healthy"] = 50.0, False  # ... and an unsettled outlier is not a jump
    assert phase_transitions({"rl": rows})["rl"]["llc"] == [50]


@pytest.mark.parametrize("section", [LLCParams, TMSLLC])
def test_a_file_that_still_gives_transition_k_is_told_what_replaced_it(section):
    assert section().transition_alpha == 0.05
    with pytest.raises(ValueError, match="transition_k is gone.*transition_alpha"):
        section(transition_k=3.0)
    with pytest.raises(ValueError):
        section(transition_alpha=0.0)
