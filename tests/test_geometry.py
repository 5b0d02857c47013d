"""Belief geometry and causal ablations (rayexp.studies.composition.geometry*), on planted cases whose
answer is known by construction: features that hold the factors' beliefs in known subspaces, with or
without their product (planted networks that act on them: tests/test_geometry_planted.py)."""

import numpy as np
import pytest

from envs import build_process
from envs.rewards import make_reward
from rayexp.ridge import ridge_fit
from rayexp.studies.composition import geometry as geo
from rayexp.studies.composition import representation as rep
from rayexp.studies.composition.geometry_analysis import (
    GeometryParams,
    belief_targets,
    geometry,
    layer_geometry,
)
from rayexp.studies.composition.geometry_summary import GeometrySummaryParams, geometry_summary
from rayexp.studies.composition.stream_setup import make_setup

MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}
INTERLEAVE = {"name": "interleave", "factors": [MESS3, MESS3]}


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


class _Trial:
    """What the geometry analysis reads from a trial's artifacts, held in memory (tiny transformers)."""

    def __init__(self, task="positive_control", seed=0):
        from models.transformer import Transformer, TransformerConfig

        cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
        self.env_config = {
            "process": INTERLEAVE,
            "context": 8,
            "episode_len": 8,
            "reward": "joint_target",
            "reward_params": {"m": 3},
            "action_tokens": None,
        }
        self.config = {"process": INTERLEAVE, "task": {"name": task}, "seed": seed}
        self._m = {i: Transformer(cfg, seed=seed + 10 * i).eval() for i in range(3)}
        self._stored = {}

    def stream(self):
        return build_process(INTERLEAVE)

    def model_before(self):
        return self._m[0]

    def random_init(self):
        return self._m[2]

    def ppo_iterations(self):
        return [5]

    def policy(self, it):
        return self._m[0] if it == 0 else self._m[1]

    def model_after(self):
        return self._m[1]

    def metrics(self):
        return {f"analysis/geometry/{k}": v for k, v in self._stored.items()}

    def analysis_metrics(self, name):
        return None


def test_geometry_analysis_and_summary_end_to_end_on_tiny_models():
    trials = [_Trial(task, seed) for task in ("positive_control", "negative_control") for seed in (0, 1)]
    for t in trials:
        res = geometry(t, GeometryParams(n_seq=40, n_random=1, lookup_k=[2]))
        t._stored = res.metrics
    m = trials[0]._stored
    for key in ("pre/final/skill/factor0", "post/block1/r2/joint_only", "curve/it5/embed/dim95", "ceiling/lookup_k2",
                "ablation/post/none/expected", "ablation/pre/block1/factor0/drop", "ablation/post/embed/random_both/drop",
                "dims/factored", "dims/joint", "ablation/post/block0/joint_only/drop",
                "ablation/post/block0/random_joint/drop", "ablation/pre/embed/joint_only/left_factor0",
                "ablation/post/block1/beyond_factors/left_factor1", "ablation/pre/block0/random_beyond_factors/drop",
                "ablation/post/block1/placebo_joint_only/drop", "ablation/pre/block0/placebo_beyond_factors/dim"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert m["dims/factored"] == 4 and m["dims/joint"] == 8
    for key in ("ablation/post/none/expected_test", "ablation/post/block1/joint_only/expected_test",
                "ablation/pre/block0/repaired_beyond_factors/expected_test"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert "ablation/post/block1/both/removed_test" in m
    for key in ("ablation/post/block1/beyond_factor_poly/left_factor0",
                "ablation/pre/block0/repaired_beyond_factor_poly/drop",
                "ablation/post/block1/beyond_factor_emitter/left_factor1",
                "ablation/post/block0/repaired_beyond_factor_emitter/expected_test"):  # fmt: skip
        assert np.isfinite(m[key]), key
    with pytest.raises(ValueError, match="poly_degree"):
        GeometryParams(poly_degree=1)  # degree 1 is the linear probes, beyond_factors itself
    # an untrained model earns nothing above uniform guessing: no share of it to remove
    assert (m["ablation/pre/none/expected"] - m["ceiling/uniform"] < 0.01) == np.isnan(
        m["ablation/pre/block1/factor0/removed"]
    )
    assert m["curve/it0/final/r2/factor0"] == m["pre/final/r2/factor0"]  # iteration 0 is the pretrained model
    assert m["curve/it5/final/r2/factor0"] == m["post/final/r2/factor0"]
    assert {"geometry_curve", "belief_simplex"} <= set(res.figures)
    summary = geometry_summary(trials, GeometrySummaryParams(layer="last"))
    curve = summary.tables["geometry_curve"].to_pydict()
    assert set(curve["task"]) == {"positive_control", "negative_control"} and set(curve["iteration"]) == {0, 5}
    assert set(curve["layer"]) == {"block1"}
    row = next(i for i, (t, it, q) in enumerate(zip(curve["task"], curve["iteration"], curve["quantity"]))
           if t == "positive_control" and it == 5 and q == "r2/joint_only")  # fmt: skip
    seeds = [
        t._stored["curve/it5/block1/r2/joint_only"] for t in trials if t.config["task"]["name"] == "positive_control"
    ]
    assert curve["mean"][row] == pytest.approx(np.mean(seeds)) and curve["ci_low"][row] < curve["mean"][row]
    abl = summary.tables["geometry_ablation"].to_pydict()
    assert {"model", "layer", "condition", "quantity", "mean", "ci_low", "ci_high"} <= set(abl)
    assert "positive_control/ablation/post/block1/factor0/removed" in summary.metrics
    assert "positive_control/ablation/post/block1/joint_only/removed" in summary.metrics
    assert {"left_factor0", "left_joint_only"} <= set(abl["quantity"])
    assert {"geometry_curve", "geometry_ablation"} == set(summary.figures)
    assert set(summary.tables["geometry_contrast"].column_names) >= {"task", "layer", "condition", "minus", "mean"}
    with pytest.raises(ValueError, match="no trial"):
        geometry_summary([_Trial()], GeometrySummaryParams())


def test_contrasts_pair_each_erasure_with_its_controls_and_the_reference_task_by_seed():
    from rayexp.stats import t_ci
    from rayexp.studies.composition.geometry_summary import contrast_rows

    def m(removed, placebo, random):
        k = "ablation/post/block0/{}/removed"
        return {k.format("beyond_factors"): removed, k.format("placebo_beyond_factors"): placebo,
                k.format("random_beyond_factors"): random,
                k.format("repaired_beyond_factors"): placebo / 2}  # fmt: skip

    by_seed = {
        ("p", "positive_control"): {"0": m(0.9, 0.5, 0.0), "1": m(0.8, 0.2, 0.1), "2": m(0.7, 0.1, 0.0)},
        ("p", "negative_control"): {"0": m(0.4, 0.4, 0.0), "1": m(0.3, 0.2, 0.0), "9": m(0.1, 0.1, 0.0)},
        ("q", "positive_control"): {"0": m(0.9, 0.0, 0.0)},  # another process: never paired with p's
    }
    rows = contrast_rows(by_seed, "negative_control", 0.95)
    got = {(p, t, c, x): (mean, lo, n) for p, t, c, x, mean, lo, n in
           zip(rows["process"], rows["task"], rows["condition"], rows["minus"], rows["mean"], rows["ci_low"],
               rows["n_seeds"])}  # fmt: skip
    assert got[("p", "positive_control", "beyond_factors", "placebo_beyond_factors")][0] == pytest.approx(1.6 / 3)
    ref = got[("p", "positive_control", "beyond_factors", "negative_control")]  # seeds 0 and 1 only
    assert ref[0] == pytest.approx(0.5) and ref[2] == 2 and ref[1] == pytest.approx(t_ci([0.5, 0.5])[1])
    net = got[("p", "positive_control", "beyond_factors", "negative_control, each net of its placebo")]
    assert net[0] == pytest.approx(((0.9 - 0.5) - (0.4 - 0.4) + (0.8 - 0.2) - (0.3 - 0.2)) / 2) and net[2] == 2
    rep = got[("p", "positive_control", "beyond_factors", "negative_control, each net of its re-pairing")]
    assert rep[0] == pytest.approx(((0.9 - 0.25) - (0.4 - 0.2) + (0.8 - 0.1) - (0.3 - 0.1)) / 2) and rep[2] == 2
    assert got[("p", "positive_control", "beyond_factors", "repaired_beyond_factors")][0] == pytest.approx(2.0 / 3)
    assert ("p", "negative_control", "beyond_factors", "negative_control") not in got  # not against itself
    # the family-wise interval: Bonferroni over the contrast's layers (one layer here: the plain interval),
    # and over two layers the interval at 1 - 0.05 / 2
    i = next(i for i, x in enumerate(rows["minus"]) if x == "placebo_beyond_factors" and rows["process"][i] == "p")
    assert rows["fw_layers"][i] == 1 and rows["fw_low"][i] == pytest.approx(rows["ci_low"][i])
    two = {
        k: v | {k2.replace("block0", "block1"): v2 for k2, v2 in v.items()}
        for k, v in by_seed[("p", "positive_control")].items()
    }
    rows2 = contrast_rows({("p", "positive_control"): two}, "negative_control", 0.95)
    j = rows2["minus"].index("placebo_beyond_factors")
    d = [0.9 - 0.5, 0.8 - 0.2, 0.7 - 0.1]
    assert rows2["fw_layers"][j] == 2 and rows2["fw_low"][j] == pytest.approx(t_ci(d, 0.975)[1])
    assert rows2["fw_low"][j] < rows2["ci_low"][j]
    assert ("q", "positive_control", "beyond_factors", "negative_control") not in got  # q has no reference
    assert set(rows["scored"]) == {"all"}
    # scored on the held-out half: the same contrasts of ``removed_test``, which the default never reads
    held = {
        key: {sd: v | {k.replace("/removed", "/removed_test"): x / 2 for k, x in v.items()} for sd, v in seeds.items()}
        for key, seeds in by_seed.items()
    }
    assert contrast_rows(held, "negative_control", 0.95)["mean"] == rows["mean"]
    rows_h = contrast_rows(held, "negative_control", 0.95, scored="held_out")
    assert set(rows_h["scored"]) == {"held_out"} and len(rows_h["mean"]) == len(rows["mean"])
    np.testing.assert_allclose(rows_h["mean"], np.array(rows["mean"]) / 2)
    assert contrast_rows(by_seed, "negative_control", 0.95, scored="held_out")["mean"] == []  # older trials
    from rayexp.studies.composition.geometry_summary import _stacked

    stacked = _stacked([rows, rows_h])
    assert stacked["scored"] == rows["scored"] + rows_h["scored"] and stacked["mean"] == rows["mean"] + rows_h["mean"]
    assert got[("q", "positive_control", "beyond_factors", "random_beyond_factors")][2] == 1
    assert set(rows["layer"]) == {"block0"} and set(rows["condition"]) == {"beyond_factors"}
    # the report prints them at each task's curve layer, one row per erasure
    from rayexp.studies.composition.geometry_report import contrasts_at

    curve = [{"process": "p", "task": "positive_control", "layer": "block0"}]
    (row,) = contrasts_at({"curve": curve, "contrast": [dict(zip(rows, v)) for v in zip(*rows.values())]})
    # a difference with no spread excludes 0 at any level: starred as holding over the layers too
    assert row["erasure"] == "beyond_factors" and row["minus negative_control"] == "+0.50 [+0.50, +0.50] *"
    assert row["minus placebo"].startswith("+0.53 [") and "minus random" in row
    assert row["minus negative_control (net of placebos)"] == "+0.45 [-0.19, +1.09]"
    # each scoring gets its own rows; rows without the column (older runs) count as scored on all
    both = [dict(zip(rows, v)) for v in zip(*rows.values())] + [dict(zip(rows_h, v)) for v in zip(*rows_h.values())]
    (row_h,) = contrasts_at({"curve": curve, "contrast": both}, "held_out")
    assert row_h["minus negative_control"] == "+0.25 [+0.25, +0.25] *"
    (row_a,) = contrasts_at({"curve": curve, "contrast": both})
    assert row_a == row
    old = [{k: v for k, v in r.items() if k != "scored"} for r in both[: len(rows["mean"])]]
    assert contrasts_at({"curve": curve, "contrast": old}) == [row]
    assert contrasts_at({"curve": curve, "contrast": old}, "held_out") == []
    assert row["minus repaired"].startswith("+0.67 [") and "minus negative_control (net of re-pairings)" in row
    one = [{"process": "q", "task": "positive_control", "layer": "block0"}]
    rows_q = [dict(zip(rows, v)) for v in zip(*rows.values()) if v[0] == "q"]
    assert contrasts_at({"curve": one, "contrast": rows_q})[0]["minus random"] == "+0.90 [n = 1]"


def test_an_erasure_that_keeps_more_read_outs_is_set_against_the_global_probes_one_in_the_same_trial():
    from rayexp.stats import t_ci
    from rayexp.studies.composition.geometry_report import contrasts_at
    from rayexp.studies.composition.geometry_summary import contrast_rows

    k = "ablation/post/block1/{}/removed"
    seeds = {  # the phase-gated erasure spares 0.3, 0.1, 0.2 of what the global one removes
        "0": {k.format("beyond_factors"): 0.6, k.format("beyond_factor_emitter"): 0.3, k.format("joint_only"): 0.1},
        "1": {k.format("beyond_factors"): 0.4, k.format("beyond_factor_emitter"): 0.3, k.format("joint_only"): 0.1},
        "2": {k.format("beyond_factors"): 0.5, k.format("beyond_factor_emitter"): 0.3, k.format("joint_only"): 0.1},
        "3": {k.format("beyond_factor_emitter"): 0.9},  # no global erasure logged: not paired
    }
    rows = contrast_rows({("p", "negative_control"): seeds}, "negative_control", 0.95)
    (i,) = [i for i, x in enumerate(rows["minus"]) if x == "beyond_factors"]
    assert rows["condition"][i] == "beyond_factor_emitter" and rows["n_seeds"][i] == 3
    mean, lo, hi = t_ci([-0.3, -0.1, -0.2], 0.95)
    assert (rows["mean"][i], rows["ci_low"][i], rows["ci_high"][i]) == pytest.approx((mean, lo, hi))
    # never the global erasure against itself, nor an erasure that keeps no more read-outs
    assert [c for c, x in zip(rows["condition"], rows["minus"]) if x == "beyond_factors"] == ["beyond_factor_emitter"]
    curve = [{"process": "p", "task": "negative_control", "layer": "block1"}]
    table = [dict(zip(rows, v)) for v in zip(*rows.values())]
    emitter = next(
        r for r in contrasts_at({"curve": curve, "contrast": table}) if r["erasure"] == "beyond_factor_emitter"
    )
    assert emitter["minus beyond_factors"] == f"-0.20 [{lo:+.2f}, {hi:+.2f}]"


def test_geometry_report_compacts_the_summary_tables():
    from rayexp.studies.composition.geometry_report import compact

    trials = [_Trial("positive_control", seed) for seed in (0, 1)]
    for t in trials:
        t._stored = geometry(t, GeometryParams(n_seq=30, n_random=1, lookup_k=[2], checkpoints=False)).metrics
    summary = geometry_summary(trials, GeometrySummaryParams())
    tables = {k: summary.tables[f"geometry_{k}"].to_pylist() for k in ("curve", "ablation")}
    (row,) = compact(tables)
    assert row["task"] == "positive_control" and row["layer"] == "block1"
    assert {"r2/joint_only pre", "r2/joint_only post", "dim95 post", "removed both", "removed random_both",
            "removed joint_only", "removed random_joint_only", "removed joint", "removed random_joint",
            "removed beyond_factors", "removed random_beyond_factors", "removed placebo_joint_only",
            "removed placebo_beyond_factors"} <= set(row)  # fmt: skip
    pre = np.mean([t._stored["pre/block1/r2/joint_only"] for t in trials])
    assert row["r2/joint_only pre"].startswith(f"{pre:.2f}")


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
