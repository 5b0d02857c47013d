"""Task-vector arithmetic and the reward classifier on constructed (planted) vectors."""

import numpy as np
import pytest

from rayexp.studies.objective import task_vectors as tv


def _model(rng, scale=1.0):
    return {
        "embed.weight": scale * rng.standard_normal((5, 4)),
        "blocks.0.attn.qkv.weight": scale * rng.standard_normal((12, 4)),
        "blocks.0.ln1.weight": scale * rng.standard_normal(4),
        "blocks.0.mlp.fc_in.weight": scale * rng.standard_normal((8, 4)),
        "unembed_proj.weight": scale * rng.standard_normal((5, 4)),
    }


def test_negation_and_apply_are_exact():
    rng = np.random.default_rng(0)
    a, b = _model(rng), _model(rng)
    tau = tv.task_vector(a, b)
    back = tv.apply(a, tau, 1.0)
    assert all(np.array_equal(back[k], b[k]) or np.allclose(back[k], b[k], atol=1e-15) for k in a)
    neg = tv.apply(a, tau, -1.0)
    for k in a:
        np.testing.assert_allclose(neg[k], 2 * a[k] - b[k], atol=1e-14)
    half = tv.apply(a, tau, -0.5)
    for k in a:
        np.testing.assert_allclose(half[k], a[k] - 0.5 * (b[k] - a[k]), atol=1e-14)
    with pytest.raises(ValueError, match="differ in parameters"):
        tv.apply(a, {"embed.weight": tau["embed.weight"]})


def test_mean_and_superposition_recover_planted_shared_part():
    rng = np.random.default_rng(1)
    shared = _model(rng)
    specific = {r: _model(rng) for r in "abcd"}
    # make the specific parts sum to zero so the mean is exactly the shared part
    total = tv.mean(list(specific.values()))
    specific = {r: {k: v[k] - total[k] for k in v} for r, v in specific.items()}
    taus = {r: {k: shared[k] + s[k] for k in s} for r, s in specific.items()}
    mu, resid = tv.superpose(taus)
    for k in shared:
        np.testing.assert_allclose(mu[k], shared[k], atol=1e-12)
        for r in "abcd":
            np.testing.assert_allclose(resid[r][k], specific[r][k], atol=1e-12)


def test_module_grouping_and_norms():
    assert tv.module_of("blocks.3.attn.qkv.weight") == "blocks.3.attn"
    assert tv.module_of("blocks.0.ln2.bias") == "blocks.0.ln"
    assert tv.module_of("unembed_proj.bias") == "unembed"
    assert tv.module_of("pos_embed.weight") == "pos_embed"
    tau = {"blocks.0.ln1.weight": np.array([3.0, 0.0]), "blocks.0.ln2.weight": np.array([0.0, 4.0])}
    assert tv.module_norms(tau) == {"blocks.0.ln": 5.0}


def test_cosines_by_pair_kind():
    X = np.array([[1.0, 0], [1, 0], [0, 1], [0, 1], [1, 1], [1, -1]])
    labels = ["r1", "r1", "r2", "r2", "null", "null"]
    seeds = [0, 1, 0, 1, 0, 1]
    C = tv.cosine_matrix(X)
    np.testing.assert_allclose(np.diag(C), 1.0)
    got = tv.pair_cosines(C, labels, seeds, null="null")
    np.testing.assert_allclose(got["same_reward"], [1.0, 1.0])
    np.testing.assert_allclose(got["other_reward"], [0, 0], atol=1e-15)  # other seeds only
    np.testing.assert_allclose(got["other_reward_same_seed"], [0, 0], atol=1e-15)
    np.testing.assert_allclose(got["null"], [0.0], atol=1e-15)
    assert len(got["null_vs_reward"]) == 4  # 2 rewards x 2 seeds x the null of the other seed


def test_classifier_names_planted_rewards_and_fails_on_noise():
    rng = np.random.default_rng(2)
    d, seeds, rewards = 200, [0, 1, 2], ["anti", "shift", "echo", "const"]
    dirs = {r: rng.standard_normal(d) for r in rewards}
    X, labels, groups = [], [], []
    for s in seeds:
        for r in rewards:
            X.append(dirs[r] + 0.8 * rng.standard_normal(d))  # signal plus seed noise of similar size
            labels.append(r)
            groups.append(s)
    X = np.array(X)
    acc, p, null = tv.permutation_pvalue(X, labels, groups, n_perm=200, seed=0)
    assert acc == 1.0 and p <= 1 / 201 + 1e-12
    assert 0.1 < null.mean() < 0.45  # chance is 1/4
    noise = rng.standard_normal(X.shape)
    _, p0, _ = tv.permutation_pvalue(noise, labels, groups, n_perm=200, seed=0)
    assert p0 > 0.05
    # a held-out seed never sees its own vectors in the centroids: duplicating a row within a seed
    # cannot be memorised
    pred = tv.nearest_centroid_loso(X, labels, groups)
    assert (pred == np.array(labels)).all()
