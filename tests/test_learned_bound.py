"""The composed-share bound against a pair's learned composition: which trials it pairs, its value, and
the planted case it exists for (a soft composition the Bayes bound counts too little of)."""

import dataclasses

import numpy as np
import pytest
from seed_draws import seeds

from rayexp.studies.composition import resolution
from rayexp.studies.composition.battery import map_mass
from rayexp.studies.composition.battery_streams import sample
from rayexp.studies.composition.learned_bound import learned_bound, same_fit
from rayexp.studies.composition.verdict import COMPOSITION, decide


def test_trials_pair_only_on_one_model_one_sample_and_room_for_the_actions():
    one = (2000, 0)  # the composition analysis's (n_seq, seed)
    mine = ("model-a", one, 0.031, 6)  # (model key, sample, resolution the fit used, actions)
    assert same_fit(("model-a", one, 0.031, 3), mine)  # 3 joint targets placed on 6 next tokens
    assert not same_fit(("model-b", one, 0.031, 3), mine)  # another pretrained model
    assert not same_fit(("model-a", one, 0.029, 3), mine)  # another sample (or model) moves the resolution
    assert not same_fit(("model-a", one, 0.031, 7), mine)  # merging actions would shrink what the map leaves
    assert not same_fit((None, one, 0.031, 3), (None, one, 0.031, 6))  # unknown model: no claim
    assert not same_fit(("model-a", one, np.nan, 3), ("model-a", one, np.nan, 6))
    # a near-exact model's resolution sits at its floor (0.005) on any sample: the sample itself must match
    assert not same_fit(("model-a", (2000, 1), 0.005, 3), ("model-a", one, 0.005, 6))
    assert not same_fit(("model-a", (1000, 0), 0.005, 3), ("model-a", one, 0.005, 6))


def _reweighting():
    return decide(
        seeds(0.1), seeds(0.45, seed=1), seeds(np.nan, seed=2), seeds(0.6, seed=10), seeds(0.6, seed=11),
        below_bar=seeds(0.1, seed=3), u_composed=seeds(0.9, seed=4),
    )  # fmt: skip


def test_the_bound_against_the_learned_policy_is_stated_and_decides_nothing():
    v = _reweighting()
    m_pi, m_sharp, m_null, m_learned = (
        seeds(0.06, 0.01),
        seeds(0.01, 0.002, seed=1),
        seeds(0.24, seed=2),
        seeds(0.56, seed=3),
    )
    out = learned_bound(v, m_pi, m_sharp, m_null, m_learned, "positive_control")
    # each seed's bound, (m_pi + m_rest) / (m_J + m_rest) capped at 1, and their mean over seeds
    each = np.minimum(1, (m_pi + m_sharp) / (m_learned + m_sharp))
    assert out.code == v.code and out.share_max_learned.mean == pytest.approx(each.mean())
    assert out.share_max_learned_drift.mean == pytest.approx(
        np.mean(np.minimum(1, (m_pi + m_null) / (m_learned + m_null)))
    )
    assert out.reason.startswith(v.reason)
    assert f"positive_control's learned composition at most {out.share_max_learned.hi:.2f}" in out.reason
    # without a paired learned policy on enough seeds: the verdict as it was
    assert learned_bound(v, m_pi, m_sharp, m_null, [np.nan] * 4 + [0.5], "positive_control") == v
    # a composition verdict keeps its reason (its share is its claim), with the numbers on the record
    comp = learned_bound(dataclasses.replace(v, code=COMPOSITION), m_pi, m_sharp, m_null, m_learned, "p")
    assert comp.reason == v.reason and np.isfinite(comp.share_max_learned.mean)
    # where the policy refutes the sharp rest's premise against the Bayes J, only the drifting bound is stated
    refuting = learned_bound(dataclasses.replace(v, refuted_sharp=5.0), m_pi, m_sharp, m_null, m_learned, "pc")
    assert f"at most {refuting.share_max_learned.hi:.2f}" not in refuting.reason
    assert f"pc's learned composition at most {refuting.share_max_learned_drift.hi:.2f} of the time for a drifting" in (
        refuting.reason
    )
    assert refuting.share_max_learned == out.share_max_learned  # on the record, not in the reason
    # and where it refutes the drifting rest's too, neither is stated: no bound beside "refutes" for one premise
    both = learned_bound(dataclasses.replace(v, refuted_sharp=5.0, refuted_drift=2.0), m_pi, m_sharp, m_null,
                         m_learned, "pc")  # fmt: skip
    assert both.reason == v.reason and both.share_max_learned_drift == out.share_max_learned_drift
    drift_only = learned_bound(dataclasses.replace(v, refuted_drift=2.0), m_pi, m_sharp, m_null, m_learned, "pc")
    assert f"at most {out.share_max_learned.hi:.2f}" in drift_only.reason and "drifting rest" not in drift_only.reason


def test_a_soft_composition_is_bounded_by_its_own_mass_and_not_by_the_bayes_policys():
    # the planted case: a quarter of the joint-target policy at temperature 1 over sharpened p_pre, on
    # the battery's Mess3 interleave with an exact model
    s = sample("interleave(mess3,mess3)", 400, 0)
    sharp, bayes, soft = (
        resolution.sharpen(s.p_pre[..., s.act], 10.0),
        resolution.onehot_argmax(s.P),
        resolution.sharpen(s.P, 1.0),
    )

    m_pi, m_sharp, m_soft, m_bayes = (map_mass(s, pi) for pi in (0.25 * soft + 0.75 * sharp, sharp, soft, bayes))
    own = resolution.composed_share_max(m_pi, m_sharp, m_soft).mean()
    assert own >= 0.25 - 1e-9  # exact: the map is linear in the policy
    assert resolution.composed_share_max(m_pi, m_sharp, m_bayes).mean() < 0.15  # the Bayes J counts too little
