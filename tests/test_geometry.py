"""Belief geometry and causal ablations (rayexp.studies.composition.geometry*), on planted cases whose
answer is known by construction: features that hold the factors' beliefs in known subspaces, with or
without their product (planted networks that act on them: tests/test_geometry_planted.py; the analysis
and its sweep summary on tiny trials: tests/test_geometry_summary.py)."""

import numpy as np
import pytest
from streams import INTERLEAVE

from envs import build_process
from envs.rewards import make_reward
from rayexp.ridge import ridge_fit
from rayexp.studies.composition import geometry as geo
from rayexp.studies.composition import representation as rep
from rayexp.studies.composition.geometry_analysis import belief_targets, layer_geometry
from rayexp.studies.composition.stream_setup import make_setup


def _setup(n=600, seed=0):
    hmm = build_process(INTERLEAVE)
    reward = make_reward("joint_target", hmm, {"m": 3})
    s = make_setup(hmm, reward, 8, n, seed)
    return hmm, reward, s, belief_targets(hmm, s.tokens)


def test_product_part_is_what_no_affine_map_of_the_factors_gives():
    rng = np.random.default_rng(0)
    b0, b1 = rng.dirichlet(np.ones(3), 5000), rng.dirichlet(np.ones(3), 5000)
    joint = rep.outer_beliefs([b0, b1])
    r = geo.product_part([b0, b1], joint)
    X = np.concatenate([b0, b1, np.ones((5000, 1))], 1)
    assert np.abs(X.T @ r).max() < 1e-8  # orthogonal to every affine function of the factor beliefs
    assert (r**2).sum() > 0.05 * ((joint - joint.mean(0)) ** 2).sum()  # and not nothing
    # a joint that *is* affine in the factors (here: their concatenation, twice) has no product part
    assert np.abs(geo.product_part([b0, b1], np.concatenate([b0, 2 * b1], 1))).max() < 1e-10


def test_erasure_leaves_no_affine_probe_and_a_random_subspace_does():
    rng = np.random.default_rng(1)
    z = rng.dirichlet(np.ones(3), 4000)  # (n, 3)
    E = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    X = 3 * z @ E[:, :3].T + 0.3 * rng.standard_normal((4000, 20))  # the target in a known 3-d subspace
    Q = geo.erasure_basis(X, z)
    assert Q.shape == (20, 2)  # beliefs sum to one: rank 2
    assert np.allclose(Q.T @ Q, np.eye(2), atol=1e-10)
    Xe = geo.erase(X, Q, X.mean(0))
    assert np.abs(geo.cross_covariance(Xe, z)).max() < 1e-12
    fit = lambda A: np.linalg.lstsq(np.c_[A, np.ones(len(A))], z, rcond=None)[0]
    r2 = lambda A: geo.held_out_r2(z, np.c_[A, np.ones(len(A))] @ fit(A))
    assert r2(X) > 0.5 and abs(r2(Xe)) < 1e-9
    kept = [r2(geo.erase(X, geo.random_basis(20, 2, rng), X.mean(0))) for _ in range(20)]
    assert np.mean(kept) > 0.6 * r2(X)
    assert np.allclose(geo.random_basis(5, 0, rng), np.zeros((5, 0)))
    with pytest.raises(ValueError):
        geo.random_basis(3, 4, rng)


def test_joint_only_basis_erases_the_joint_part_outside_the_factor_subspaces_and_keeps_the_factors():
    rng = np.random.default_rng(3)
    b0, b1 = rng.dirichlet(np.ones(3), 6000), rng.dirichlet(np.ones(3), 6000)
    jo = geo.product_part([b0, b1], rep.outer_beliefs([b0, b1]))  # (n, 9), rank 4
    E = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    X = 3 * np.c_[b0, b1] @ E[:, :6].T + 5 * jo @ E[:, 6:15].T + 0.05 * rng.standard_normal((6000, 24))
    F = np.linalg.qr(np.concatenate([geo.erasure_basis(X, b) for b in (b0, b1)], axis=1))[0]
    Q = geo.joint_only_basis(X, jo, F)
    assert Q.shape == (24, 4)  # the product part of two 3-state beliefs has rank (3 - 1)(3 - 1)
    assert np.allclose(Q.T @ Q, np.eye(4), atol=1e-10) and np.abs(F.T @ Q).max() < 1e-12
    Xe = geo.erase(X, Q, X.mean(0))
    for b in (b0, b1):  # the factors' covariance with the features is untouched
        assert np.allclose(geo.cross_covariance(Xe, b), geo.cross_covariance(X, b), atol=1e-12)
    # outside the factor subspaces nothing of the joint-only part is left
    Xp = Xe - (Xe @ F) @ F.T
    assert (
        np.abs(geo.cross_covariance(Xp, jo)).max()
        < 1e-12
        < np.abs(geo.cross_covariance(X @ (np.eye(24) - F @ F.T), jo)).max()
    )
    # features without a joint part give nothing but noise directions: a tiny covariance, not a structure
    Xf = 3 * np.c_[b0, b1] @ E[:, :6].T + 0.05 * rng.standard_normal((6000, 24))
    Qf = geo.joint_only_basis(Xf, jo, F)
    assert np.linalg.norm(geo.cross_covariance(Xf, jo) @ np.eye(9)) < 0.01 * np.linalg.norm(geo.cross_covariance(X, jo))
    assert Qf.shape[1] <= 4


def _oblique_features(rng, n=6000, d=24, tilt=0.8):
    """Factor beliefs in 6 known directions and the joint-only part in 9 directions tilted ``tilt``
    towards the factor directions: a factor probe must subtract the tilt, so it reads the joint
    directions too (the layout where erasing "outside the factor span" blurs the factors)."""
    b0, b1 = rng.dirichlet(np.ones(3), n), rng.dirichlet(np.ones(3), n)
    jo = geo.product_part([b0, b1], rep.outer_beliefs([b0, b1]))
    E = np.linalg.qr(rng.standard_normal((d, d)))[0]
    J = tilt * E[:, [i % 6 for i in range(9)]] + np.sqrt(1 - tilt**2) * E[:, 6:15]
    X = 3 * np.c_[b0, b1] @ E[:, :6].T + 5 * jo @ J.T + 0.05 * rng.standard_normal((n, d))
    return X, b0, b1, jo


def test_beyond_probes_basis_keeps_every_factor_probe_output_and_erases_the_joint_only_rest():
    rng = np.random.default_rng(4)
    X, b0, b1, jo = _oblique_features(rng)
    fb = np.c_[b0, b1]
    W = ridge_fit(X, fb, 1e-3).coef  # (24, 6)
    Q = geo.beyond_probes_basis(X, jo, W)
    assert Q.shape == (24, 4) and np.allclose(Q.T @ Q, np.eye(4), atol=1e-10)
    assert np.abs(W.T @ Q).max() < 1e-12
    mu = X.mean(0)
    Xe = geo.erase(X, Q, mu)
    assert np.allclose(Xe @ W, X @ W, atol=1e-10)  # every factor probe's output, row by row
    r2 = lambda A, Y: geo.held_out_r2(Y, ridge_fit(A, Y, 1e-6).predict(A))
    # nothing of the joint-only part is left but what an affine map of the probe outputs gives
    assert r2(Xe, jo) == pytest.approx(r2(X @ W, jo), abs=1e-6)
    assert r2(X @ W, jo) < 0.05 and r2(X, jo) > 0.95
    assert r2(Xe, fb) == pytest.approx(r2(X, fb), abs=1e-3) and r2(X, fb) > 0.99
    # the joint-only erasure of the same features (outside the factor span) blurs the factors here
    F = np.linalg.qr(np.concatenate([geo.erasure_basis(X, b) for b in (b0, b1)], axis=1))[0]
    Xo = geo.erase(X, geo.joint_only_basis(X, jo, F), mu)
    assert r2(Xo, fb) < r2(X, fb) - 0.05  # 0.99 -> 0.91
    # its control: random subspaces of the same dimension that keep the probe outputs too
    R = geo.random_basis_outside(24, 4, W, rng)
    assert np.allclose(R.T @ R, np.eye(4), atol=1e-10) and np.abs(W.T @ R).max() < 1e-10
    assert np.allclose(geo.erase(X, R, mu) @ W, X @ W, atol=1e-9)
    with pytest.raises(ValueError):
        geo.random_basis_outside(8, 3, rng.standard_normal((8, 6)), rng)


def test_a_noise_targets_erasure_leans_on_the_features_high_variance_directions():
    # why the joint erasures get a placebo control beside the random one: the span of Cov(X, g) for a
    # target g the features do not hold is drawn towards X's large directions; a random subspace is not
    rng = np.random.default_rng(5)
    scales = np.r_[np.full(4, 10.0), np.full(20, 0.5)]  # 4 loud directions, 20 quiet ones
    X = rng.standard_normal((8000, 24)) * scales
    loud = lambda Q: float((Q[:4] ** 2).sum() / Q.shape[1])  # share of Q's norm in the loud directions
    placebo = [loud(geo.erasure_basis(X, rng.standard_normal((8000, 4)))) for _ in range(5)]
    random = [loud(geo.random_basis(24, 4, rng)) for _ in range(5)]
    assert np.mean(placebo) > 0.7 and np.mean(random) < 0.4  # random: 4/24 in expectation


def test_derangement_moves_every_item():
    rng = np.random.default_rng(0)
    for n in (2, 3, 50):
        p = geo.derangement(n, rng)
        assert sorted(p) == list(range(n)) and (p != np.arange(n)).all()
    with pytest.raises(ValueError):
        geo.derangement(1, rng)


def _position_beliefs(rng, n=3000, conc=(0.3, 50, 50, 50)):
    """Two independent factors' 3-state beliefs (n, len(conc), 3), spread at position 0 and near
    uniform after it (as beliefs early in a sequence and once synchronised)."""
    return [np.stack([rng.dirichlet(np.full(3, c), n) for c in conc], 1) for _ in range(2)]


def test_repairing_breaks_the_factors_pairing_and_keeps_each_factor():
    rng = np.random.default_rng(6)
    b = _position_beliefs(rng)
    joint = np.einsum("...i,...j->...ij", b[0], b[1]).reshape(3000, 4, 9)
    z = geo.product_part(b, joint)
    assert np.array_equal(geo.repaired_product_part(b, 1, np.arange(3000)), z)  # no re-pairing: the target
    p = geo.derangement(3000, rng)
    zr = geo.repaired_product_part(b, 1, p)
    assert np.array_equal(
        zr, geo.product_part([b[0], b[1][p]], np.einsum("...i,...j->...ij", b[0], b[1][p]).reshape(3000, 4, 9))
    )
    # features that hold the factors separately, however nonlinearly, have no covariance with either
    # target (up to sampling noise); features that hold the joint covary with the real one only
    sep = np.concatenate([b[0], b[0] ** 2, b[1], np.sqrt(b[1])], -1)
    both = joint.reshape(3000, 4, 9)
    size = lambda X, t: float(
        np.abs(geo.cross_covariance(X, t)).max() / np.sqrt(X.reshape(-1, X.shape[-1]).var(0).max())
    )
    assert size(sep, z) < 0.004 and size(sep, zr) < 0.004
    assert size(both, z) > 5 * size(both, zr)


def test_a_repaired_targets_erasure_leans_where_the_real_targets_does_and_a_gaussians_does_not():
    # why the re-paired control beside the Gaussian placebo: with no joint information in the features,
    # the real target's covariance span is sampling noise weighted by the target's size, which is large
    # early in a sequence (beliefs spread) and tiny later (synchronised). Features loud in directions A
    # at position 0 and in directions B later: the real span leans on A, so does the re-paired one,
    # and a Gaussian target (the same size everywhere) leans on B, where most rows are loud
    rng = np.random.default_rng(7)
    b = _position_beliefs(rng)
    scale = np.full((4, 12), 0.5)
    scale[0, :4], scale[1:, 4:8] = 3.0, 3.0
    X = rng.standard_normal((3000, 4, 12)) * scale
    in_a = lambda Q: float((Q[:4] ** 2).sum() / Q.shape[1])
    real = in_a(geo.erasure_basis(X, geo.product_part(b, np.einsum("...i,...j->...ij", *b).reshape(3000, 4, 9))))
    repaired = [
        in_a(geo.erasure_basis(X, geo.repaired_product_part(b, r % 2, geo.derangement(3000, rng)))) for r in range(6)
    ]
    gaussian = [in_a(geo.erasure_basis(X, rng.standard_normal((3000, 4, 4)))) for _ in range(6)]
    assert real > 0.6 and np.mean(repaired) > 0.6 and np.mean(gaussian) < 0.45
    assert abs(np.mean(repaired) - real) < abs(np.mean(gaussian) - real) - 0.2


def test_simplex_corners_and_removed_share():
    xy = geo.simplex_xy(np.eye(3))
    assert np.allclose(xy, [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    assert geo.removed_share(0.5, 1 / 3, 1 / 3) == pytest.approx(1.0)
    assert geo.removed_share(0.5, 0.5, 1 / 3) == 0.0
    assert np.isnan(geo.removed_share(0.335, 0.3, 1 / 3))  # a policy earning nothing has no share to remove


def test_layer_geometry_tells_factored_from_joint_features():
    _hmm, _, s, y = _setup()
    rng = np.random.default_rng(2)
    d = 32
    E = np.linalg.qr(rng.standard_normal((d, d)))[0]
    n, L = s.tokens.shape
    noise = 0.02 * rng.standard_normal((n, L, d))
    factored = y["factor0"] @ E[:, :3].T + y["factor1"] @ E[:, 3:6].T + noise
    joint = factored + y["joint"] @ E[:, 6:15].T
    rand = rng.standard_normal((n, L, d))  # a control that knows nothing
    g_fac = layer_geometry(factored, rand, y, s.train, s.test, 1e-3)
    g_joint = layer_geometry(joint, rand, y, s.train, s.test, 1e-3)
    exact_dim = rep.components_for(rep.explained_variance(y["joint"][s.test]), 0.95)
    for g in (g_fac, g_joint):
        assert g["r2/factor0"] > 0.98 and g["r2/factor1"] > 0.98 and g["skill/factor0"] > 0.98
    assert abs(g_fac["r2/joint_only"]) < 0.05  # factored: no joint-only direction (held out: ~0 +- noise)
    assert g_joint["r2/joint_only"] > 0.95  # the product terms are there
    assert g_fac["dim95"] <= 4 < g_joint["dim95"] == exact_dim  # sum(S_i - 1) = 4; the joint's own count
    # orthogonal subspaces: far below chance (not 0: the two factors' sampled beliefs correlate a little)
    assert g_fac["overlap"] < g_fac["overlap_random"] / 2 and g_fac["overlap_random"] == pytest.approx(2 / d)


def test_an_ablation_scores_all_sequences_and_the_held_out_half_alone():
    from models.transformer import Transformer, TransformerConfig
    from rayexp.studies.composition.composition_analysis import policy_values
    from rayexp.studies.composition.geometry_ablation import _policy_summary, hooked_forward

    hmm = build_process(INTERLEAVE)
    s = make_setup(hmm, make_reward("joint_target", hmm, {"m": 3}), 8, 40, 0)
    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
    forward = hooked_forward(Transformer(cfg, seed=3).eval(), None, None, None)
    per_seq = policy_values(s, forward)["expected"]
    got = _policy_summary(s, forward, 0.0)
    assert got["expected"] == pytest.approx(per_seq.mean())
    assert got["expected_test"] == pytest.approx(per_seq[s.test].mean())
    assert got["expected_test"] != pytest.approx(got["expected"], abs=1e-6)  # a real half, not the whole


def test_the_ablations_joint_only_target_holds_no_affine_part_of_the_factors_on_its_own_rows():
    """The bases are fitted on the training half; the target there must be that half's own product
    part, as the re-paired control's is. The all-sequence fit keeps an affine part of the factors on
    the half (a few % of its norm), which a basis fitted there would erase beside the joint-only part."""
    from rayexp.studies.composition.geometry_ablation import joint_only_on
    from rayexp.studies.composition.geometry_analysis import belief_targets

    hmm = build_process(INTERLEAVE)
    s = make_setup(hmm, make_reward("joint_target", hmm, {"m": 3}), 10, 400, 0)
    y = belief_targets(hmm, s.tokens)
    factors = np.concatenate([y["factor0"][s.train], y["factor1"][s.train]], axis=-1).reshape(-1, 6)

    def affine_share(z):
        z = z.reshape(len(factors), -1)
        return np.linalg.norm(z - geo.affine_residual(factors, z)) / np.linalg.norm(z)

    assert affine_share(joint_only_on(y, s.train)) < 1e-10
    assert affine_share(y["joint_only"][s.train]) > 0.01  # what the ablation fitted to before
    both = np.concatenate([s.train, s.test])
    np.testing.assert_allclose(joint_only_on(y, np.sort(both)), y["joint_only"], atol=1e-12)
