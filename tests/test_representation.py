"""Where the composition lives: the pure signals on constructed cases with known answers, and the
adapter end to end on tiny transformers standing in for a trial's stored artifacts."""

import copy
import subprocess
import sys

import numpy as np
import pytest
from streams import INTERLEAVE, MESS3

from envs import build_process
from rayexp.probes import fit_and_score
from rayexp.stats import paired_bootstrap_ci
from rayexp.studies.composition import representation as rep


def _orthonormal_centred(n, k, rng):
    """(n, k) columns that are centred and orthonormal: sample covariance exactly the identity / n."""
    Z = rng.standard_normal((n, k))
    return np.linalg.qr(Z - Z.mean(0))[0]


def _rotation(d, rng):
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


# ---------------------------------------------------------------------------------------------
# probes


def test_probe_errors_exact_map_noise_level_and_pairing():
    rng = np.random.default_rng(0)
    n, L, D, K = 300, 4, 6, 3
    X = rng.standard_normal((n, L, D))
    B, c = rng.standard_normal((D, K)), rng.standard_normal(K)
    Y = X @ B + c
    tr, te = np.arange(200), np.arange(200, 300)
    err = rep.probe_errors(X[tr], Y[tr], X[te], Y[te], alpha=1e-12)
    assert err.shape == (100,) and err.max() < 1e-16  # an exact affine map is recovered
    noisy = Y + 0.1 * rng.standard_normal(Y.shape)
    err = rep.probe_errors(X[tr], noisy[tr], X[te], noisy[te], alpha=1e-9)
    assert err.mean() / (L * K) == pytest.approx(0.01, rel=0.15)  # the noise variance, per position and output
    # the same held-out MSE as the project's probes
    ref = fit_and_score(X, noisy, tr, te, alpha=1e-9)
    assert err.sum() / (len(te) * L * K) == pytest.approx(ref.mse, rel=1e-9)
    np.testing.assert_allclose(err, ref.seq_sse, rtol=1e-9)
    # stacked targets give each target's own probe
    Y2 = np.tanh(X[..., :2])
    fits = rep.fit_probes(X[tr], {"a": noisy[tr], "b": Y2[tr]}, X[te], {"a": noisy[te], "b": Y2[te]}, 1e-3)
    np.testing.assert_allclose(fits["b"].errors, rep.probe_errors(X[tr], Y2[tr], X[te], Y2[te], 1e-3), rtol=1e-9)
    assert fits["a"].coef.shape == (D, K) and fits["b"].pred.shape == (100, L, 2)
    # 2-D inputs: one position per sequence
    assert rep.probe_errors(X[tr, 0], Y[tr, 0], X[te, 0], Y[te, 0], 1e-12).shape == (100,)


def test_skill_values_mean_is_the_skill_and_the_paired_change():
    rng = np.random.default_rng(1)
    control = rng.gamma(2.0, 1.0, 400)
    pre = 0.5 * control * rng.uniform(0.8, 1.2, 400)
    post = 0.5 * pre
    s_pre, s_post = rep.skill_values(pre, control), rep.skill_values(post, control)
    assert s_pre.mean() == pytest.approx(1 - pre.sum() / control.sum(), abs=1e-12)
    assert s_post.mean() == pytest.approx(1 - post.sum() / control.sum(), abs=1e-12)
    delta, lo, hi = paired_bootstrap_ci(s_pre, s_post, seed=0)
    assert delta == pytest.approx(0.5 * pre.sum() / control.sum(), abs=1e-12)  # ~0.25
    assert lo < delta < hi and lo > 0.2 and hi < 0.3
    assert np.isnan(rep.skill_values(pre, np.zeros(400))).all()


# ---------------------------------------------------------------------------------------------
# dimensionality


def test_n_components_on_a_known_spectrum():
    rng = np.random.default_rng(2)
    shares = np.array([0.55, 0.3, 0.12, 0.025, 0.005])  # cumulative .55 .85 .97 .995 1
    X = (_orthonormal_centred(1000, 5, rng) * np.sqrt(shares)) @ _rotation(5, rng)[:5] + 3.0
    X = np.concatenate([X, np.zeros((1000, 3))], axis=1) @ _rotation(8, rng)  # embedded in 8 dims
    np.testing.assert_allclose(rep.explained_variance(X)[:5], shares, atol=1e-12)
    assert [rep.n_components(X, f) for f in rep.FRACS] == [2, 3, 3, 4]
    assert rep.n_components(X, 1.0) == 5 and rep.n_components(X.reshape(100, 10, 8), 0.9) == 3
    assert rep.n_components(np.ones((10, 3)), 0.95) == 0
    with pytest.raises(ValueError, match="frac"):
        rep.n_components(X, 0.0)


def test_factored_features_give_factored_dims_and_products_give_joint_dims():
    """The docstring's claim: the joint probe's predictions span sum(S_i - 1) dims from features that hold
    each factor's belief linearly, and prod(S_i) - 1 once the products are there too."""
    rng = np.random.default_rng(3)
    bA, bB = rng.dirichlet(np.ones(3), 600), rng.dirichlet(np.ones(3), 600)  # (n, 3) each
    joint = rep.outer_beliefs([bA, bB])  # (n, 9)
    np.testing.assert_allclose(joint.reshape(600, 3, 3).sum(2), bA)
    np.testing.assert_allclose(joint.reshape(600, 3, 3).sum(1), bB)
    assert rep.belief_dims([3, 3]) == (4, 8) and rep.belief_dims([3, 2, 4]) == (6, 23)
    assert rep.outer_beliefs([bA, bB, bA]).shape == (600, 27)
    assert rep.n_components(joint, 1.0) == 8
    mix = rng.standard_normal((6, 16))
    factored = np.concatenate([bA, bB], 1) @ mix  # 16 features, a linear code of the factors only
    composed = np.concatenate([bA, bB, joint], 1) @ rng.standard_normal((15, 16))
    tr, te = np.arange(400), np.arange(400, 600)
    for X, want in ((factored, 4), (composed, 8)):
        pred = rep.fit_probes(X[tr], {"j": joint[tr]}, X[te], {"j": joint[te]}, 1e-10)["j"].pred
        assert rep.n_components(pred, 1.0) == want


# ---------------------------------------------------------------------------------------------
# subspace overlap


def test_subspace_overlap_known_angles():
    rng = np.random.default_rng(4)
    d = 12
    W = rng.standard_normal((d, 3))
    assert rep.subspace_overlap(W, W @ rng.standard_normal((3, 3))) == pytest.approx(1.0)  # same span
    e = np.eye(d)
    assert rep.subspace_overlap(e[:, :2], e[:, 2:5]) == pytest.approx(0.0, abs=1e-15)
    theta = 0.3
    v = np.cos(theta) * e[:, 0] + np.sin(theta) * e[:, 5]
    assert rep.subspace_overlap(e[:, :1], v[:, None]) == pytest.approx(np.cos(theta) ** 2)
    # angles 0 and theta: mean squared cosine (1 + cos^2) / 2
    assert rep.subspace_overlap(e[:, :2], np.stack([e[:, 1], v], 1)) == pytest.approx((1 + np.cos(theta) ** 2) / 2)
    # a belief probe's coefficients sum to zero over states: rank K - 1
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    probe = np.stack([a, b, -(a + b)], 1)
    assert rep.orthonormal_basis(probe).shape == (d, 2)
    assert rep.subspace_overlap(probe, np.stack([a, b], 1)) == pytest.approx(1.0)
    assert np.isnan(rep.subspace_overlap(np.zeros((d, 2)), W))


def test_random_overlap_baseline_matches_sampling():
    for d, k1, k2 in ((20, 2, 2), (30, 3, 5)):
        sampled = rep.sampled_random_overlap(d, k1, k2, n=400, seed=0)
        assert sampled.mean() == pytest.approx(rep.random_overlap(d, k1, k2), rel=0.08)
    assert rep.random_overlap(64, 2, 2) == 2 / 64
    assert np.isnan(rep.random_overlap(4, 0, 2))


# ---------------------------------------------------------------------------------------------
# CKA


def test_linear_cka_identities_and_a_closed_form():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    Y = np.tanh(X[:, :5]) + 0.5 * rng.standard_normal((500, 5))
    assert rep.linear_cka(X, X) == pytest.approx(1.0)
    Q = _rotation(8, rng)
    assert rep.linear_cka(X, 3.7 * X @ Q + 2.0) == pytest.approx(1.0)  # rotation, scale and shift
    assert rep.linear_cka(X @ Q * 0.2, Y) == pytest.approx(rep.linear_cka(X, Y))
    assert rep.linear_cka(X, Y) == pytest.approx(rep.linear_cka(Y, X))
    # closed form: orthonormal centred columns scaled s1, s2; Y = the first one: s1^2 / sqrt(s1^4 + s2^4)
    Z = _orthonormal_centred(400, 2, rng)
    s1, s2 = 2.0, 1.0
    assert rep.linear_cka(Z * [s1, s2], Z[:, :1]) == pytest.approx(s1**2 / np.hypot(s1**2, s2**2))
    # independent random matrices, n >> d: near 0
    assert rep.linear_cka(rng.standard_normal((5000, 4)), rng.standard_normal((5000, 6))) < 0.01
    assert rep.linear_cka(X.reshape(50, 10, 8), X.reshape(50, 10, 8)) == pytest.approx(1.0)
    assert np.isnan(rep.linear_cka(np.ones((10, 2)), X[:10]))


# ---------------------------------------------------------------------------------------------
# the adapter


def _tiny(seed=0, n_ctx=8):
    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=n_ctx, d_vocab=6)
    return Transformer(cfg, seed=seed).eval()


class FakeTrial:
    """What the representation analysis reads from rayexp.artifacts.TrialArtifacts, held in memory."""

    def __init__(self, process=INTERLEAVE, move="unembed"):
        import torch

        self.env_config = {"process": process, "context": 8}
        self.config = {"process": process, "seed": 0}
        self._pre = _tiny()
        self._post = copy.deepcopy(self._pre)
        with torch.no_grad():
            if move == "unembed":  # RL moves only the unembedding: every activation stays as it was
                self._post.unembed_proj.weight.add_(1.0)
            else:  # RL moves the last block's MLP
                for p in self._post.blocks[-1].mlp.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))

    def stream(self):
        return build_process(self.env_config["process"])

    def model_before(self):
        return self._pre

    def model_after(self):
        return self._post

    def random_init(self):
        return _tiny(seed=1)


HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]


def test_representation_analysis_on_tiny_models():
    from rayexp.registry import get
    from rayexp.studies.composition.representation_analysis import RepresentationParams, representation

    assert get("representation").needs == ("model_before", "model_after", "random_init", "env")
    params = RepresentationParams(n_seq=120)
    m = representation(FakeTrial(), params).metrics
    for t in ("factor0", "factor1", "joint", "belief"):
        for feat in ("final", "concat"):
            k = f"probe/{t}/{feat}"
            for s in ("skill_pre", "skill_post", "delta", "delta/ci_low", "delta/ci_high"):
                assert np.isfinite(m[f"{k}/{s}"]), f"{k}/{s}"
            # only the unembedding moved: the probes see identical features
            assert m[f"{k}/skill_pre"] == m[f"{k}/skill_post"] and m[f"{k}/delta"] == 0.0
    assert m["dims/factored"] == 4 and m["dims/joint"] == 8
    for who in ("exact", "pre/final", "post/concat", "random_init/final"):
        ns = [m[f"dims/{who}/n{p}"] for p in (80, 90, 95, 99)]
        assert ns == sorted(ns) and 1 <= ns[0] and ns[-1] <= 8, who
    assert m["dims/pre/final/n95"] == m["dims/post/final/n95"]
    assert m["overlap/factor0_pre_post"] == pytest.approx(1.0) == m["overlap/factor1_pre_post"]
    assert 0 <= m["overlap/factors_pre"] <= 1 and m["overlap/factors_pre"] == m["overlap/factors_post"]
    assert m["overlap/random_baseline"] == 2 / 16 == m["overlap/random_baseline/factor0"]
    for h in HOOKS:
        assert m[f"cka/{h}"] == pytest.approx(1.0)
    assert m["cka_min"] == pytest.approx(1.0)

    result = representation(FakeTrial(move="mlp"), params)
    m = result.metrics
    assert m["cka/blocks.0.hook_resid_post"] == pytest.approx(1.0)  # upstream of the change
    assert m["cka/blocks.1.hook_resid_post"] < 1 - 1e-6 and m["cka_min"] == min(m[f"cka/{h}"] for h in HOOKS)
    d = m["probe/joint/final/delta"]
    assert d == pytest.approx(m["probe/joint/final/skill_post"] - m["probe/joint/final/skill_pre"], abs=1e-12)
    assert m["probe/joint/final/delta/ci_low"] <= d <= m["probe/joint/final/delta/ci_high"]
    assert m["overlap/factor0_pre_post"] < 1
    rows = result.tables["representation_by_layer"].to_pydict()
    assert rows["hook"] == HOOKS and rows["depth"] == [0.0, 1.0, 2.0, 2.0]
    assert rows["cka"][-1] == pytest.approx(m["cka/ln_final.hook_normalized"])
    assert rows["skill_joint_post"][-1] == pytest.approx(m["probe/joint/final/skill_post"])
    assert rows["skill_factor0_pre"][1] == rows["skill_factor0_post"][1]  # block 0 did not change
    assert "representation_by_layer" in result.figures


@pytest.mark.parametrize("process", [MESS3, {"name": "mixture", "components": [MESS3, MESS3]}])
def test_representation_analysis_without_two_running_factors(process):
    from rayexp.studies.composition.representation_analysis import RepresentationParams, representation

    result = representation(FakeTrial(process, move="mlp"), RepresentationParams(n_seq=60))
    m = result.metrics
    for k in ("probe/factor0/final/skill_pre", "probe/joint/concat/delta", "overlap/factors_pre",
              "overlap/factor1_pre_post", "overlap/random_baseline", "dims/factored", "dims/joint"):  # fmt: skip
        assert np.isnan(m[k]), k
    for k in ("probe/belief/final/skill_post", "probe/belief/concat/delta/ci_low", "dims/pre/final/n95",
              "dims/exact/n99", "cka_min", "cka/blocks.1.hook_resid_post"):  # fmt: skip
        assert np.isfinite(m[k]), k
    assert np.isnan(result.tables["representation_by_layer"].to_pydict()["skill_joint_pre"]).all()


def test_representation_params_and_torch_free_import():
    from rayexp.registry import validate_params

    assert validate_params("representation", {"n_seq": 500}).n_seq == 500
    with pytest.raises(Exception, match="extra"):
        validate_params("representation", {"n_sequences": 5})
    code = (
        "import sys, rayexp.registry as a; assert 'representation' in a.ANALYSES; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
