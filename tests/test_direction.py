"""The direction of what a map of p_pre leaves (:mod:`rayexp.studies.composition.direction`): exact for a
mixture over a rest the map resolves, and (why the verdict does not use it) biased by a leaky model's
sharpened p_pre by as much as the soft composition it was meant to see."""

import numpy as np
import pytest

from rayexp.studies.composition import direction, resolution
from rayexp.studies.composition.battery_streams import sample


def _proj(s, pi, r_j):
    return float(direction.projection(direction.sample_residual(s, pi), r_j).mean())


def test_projection_of_a_soft_mixture_over_a_mapped_rest_is_its_share():
    s = sample("interleave(mess3,mess3)", 200, 0)  # an exact model: the map resolves sharpened p_pre
    r_j = direction.sample_residual(s, s.P)  # J: the joint target's Bayes probabilities
    sharp = resolution.sharpen(s.p_pre[..., s.act], 10.0)
    assert abs(_proj(s, sharp, r_j)) < 0.01
    for a in (0.25, 0.5):
        assert _proj(s, a * s.P + (1 - a) * sharp, r_j) == pytest.approx(a, abs=0.01)
    assert _proj(s, s.P, r_j) == pytest.approx(1.0)
    # a sharper composition projects further than the share it is played
    assert _proj(s, 0.25 * resolution.onehot_argmax(s.P) + 0.75 * sharp, r_j) > 0.5


def test_projection_is_linear_in_the_residual():
    g = np.random.default_rng(0)
    r_j, r_b = g.normal(size=(2, 30, 10, 3))
    a = 0.3
    mixed = direction.projection(a * r_j + (1 - a) * r_b, r_j).mean()
    assert mixed == pytest.approx(a + (1 - a) * direction.projection(r_b, r_j).mean())


def test_a_leaky_models_sharpened_p_pre_projects_as_far_as_a_soft_quarter():
    """The reason the measure is not a verdict input: a pure reweighting, on a model whose error carries
    every factor's belief, leaves a residual pointing away from the joint target by more than a
    probability-matching composition played a quarter of the time adds."""
    s = sample("interleave(mess3,z1r)", 300, 0, model_error=0.03)
    r_j = direction.sample_residual(s, s.P)
    sharp = resolution.sharpen(s.p_pre[..., s.act], 10.0)
    rest = _proj(s, sharp, r_j)
    assert rest < -0.1
    soft_quarter = _proj(s, 0.25 * s.P + 0.75 * sharp, r_j)
    assert soft_quarter == pytest.approx(0.25 + 0.75 * rest, abs=1e-9)  # linear: the rest's bias carries over
    assert soft_quarter < 0.15


def test_must_say_no_is_the_reweightings_and_drifts():
    assert direction.must_say_no("sharpen beta=10") and direction.must_say_no("argmax p_pre")
    assert direction.must_say_no(direction.DRIFT_NULL) and direction.must_say_no("drift: p_pre + f(t, x_t-1, x_t)")
    for name in ("soft beta=1 alpha=0.25", "graded alpha=0.5", "Bayes joint target", "readout of features"):
        assert not direction.must_say_no(name)
