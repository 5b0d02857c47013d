"""The direction of what a map of p_pre leaves (:mod:`rayexp.studies.composition.projection`, run by
:mod:`rayexp.studies.composition.direction`): exact for a mixture over a rest the map resolves; as a
measure biased by a leaky model's sharpened p_pre by as much as the soft composition it was meant to
see; as a bound on the composed share never below it where its premise on the rest's size holds."""

import numpy as np
import pytest

from rayexp.studies.composition import direction, projection, resolution
from rayexp.studies.composition.battery_streams import sample


def _proj(s, pi, r_j):
    return float(projection.projection(direction.sample_residual(s, pi), r_j).mean())


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
    mixed = projection.projection(a * r_j + (1 - a) * r_b, r_j).mean()
    assert mixed == pytest.approx(a + (1 - a) * projection.projection(r_b, r_j).mean())


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


def test_the_bound_is_never_below_the_share_for_a_rest_no_larger_than_its_premise():
    g = np.random.default_rng(1)
    refuted = 0
    for _ in range(300):
        r_j, r_b = g.normal(size=(2, 20, 10, 3)) * g.uniform(0.1, 3, size=(2, 1, 1, 1))
        a = g.uniform(0, 1)
        r_pi = a * r_j + (1 - a) * r_b
        for slack in (1.0, 1.5):  # the premise at the rest's own size, or above it
            assert projection.share_max(r_pi, r_j, slack * projection.norm(r_b)) >= a - 1e-9
        # a premise the rest breaks may be refuted by the policy itself (NaN), never met by a smaller share
        small = projection.share_max(r_pi, r_j, 0.5 * projection.norm(r_b))
        refuted += np.isnan(small)
        jj, pj = (r_j * r_j).sum(), (r_pi * r_j).sum()
        rest = (r_pi - small * r_j) / (1 - small) if np.isfinite(small) and small < 1 else None
        if rest is not None:  # where a share is allowed, its rest is as small as the premise says
            assert projection.norm(rest) <= 0.5 * projection.norm(r_b) * (1 + 1e-9)
        assert projection.share_max_of((r_pi * r_pi).sum(), pj, jj, projection.norm(r_b)) == pytest.approx(
            projection.share_max(r_pi, r_j, projection.norm(r_b))
        )
    assert refuted > 0
    # tight: a rest pointing straight against J, as large as the premise allows, is bounded at its share
    r_j = g.normal(size=(20, 10, 3))
    r_b = -0.7 * r_j
    assert projection.share_max(0.3 * r_j + 0.7 * r_b, r_j, projection.norm(r_b)) == pytest.approx(0.3)
    assert projection.share_max(r_j, r_j, 0.0) == 1.0  # the policy is J
    # a rest the map nearly resolves, as large as the premise: f only touches 0 at the share (the battery's
    # mixtures over sharpened p_pre on the Z1R pair; an exact root test called them refuted)
    r_b = 1e-7 * g.normal(size=(20, 10, 3))
    for a in (0.25, 0.5, 0.75):
        assert projection.share_max(a * r_j + (1 - a) * r_b, r_j, projection.norm(r_b)) == pytest.approx(a, abs=1e-6)
    # the Cauchy-Schwarz relaxation is never tighter
    r_b = g.normal(size=(20, 10, 3))
    r_pi = 0.2 * r_j + 0.8 * r_b
    proj, rho = float(projection.projection(r_pi, r_j).mean()), projection.norm(r_b) / projection.norm(r_j)
    assert projection.share_max(r_pi, r_j, projection.norm(r_b)) <= (proj + rho) / (1 + rho) + 1e-12


def test_the_bound_on_a_soft_quarter_over_a_resolved_rest_is_its_share():
    """The case the mass bound counts too little of: the Bayes probabilities a quarter of the time over
    sharpened p_pre. With J the Bayes probabilities and the rest the planted sharp reweighting itself the
    residual bound is the share, exactly; the mass bound with J the Bayes argmax falls below it."""
    s = sample("interleave(mess3,mess3)", 200, 0)
    sharp = resolution.sharpen(s.p_pre[..., s.act], 10.0)
    r_j, r_sharp = direction.sample_residual(s, s.P), direction.sample_residual(s, sharp)
    r_pi = direction.sample_residual(s, 0.25 * s.P + 0.75 * sharp)
    bound = projection.share_max(r_pi, r_j, projection.norm(r_sharp))
    assert bound == pytest.approx(0.25, abs=1e-6)

    r_argmax = direction.sample_residual(s, resolution.onehot_argmax(s.P))
    masses = [projection.mass(r) for r in (r_pi, r_sharp, r_argmax)]
    assert resolution.composed_share_max(*masses) < 0.25
