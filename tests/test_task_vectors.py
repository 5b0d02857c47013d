"""Task-vector arithmetic and the reward classifier on constructed (planted) vectors."""

import numpy as np
import pytest
import torch

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


# --- inference: intervals over seeds for pair statistics, and Holm over modules (issue 22) ---------


def test_holm_by_hand_and_nan_is_not_a_test():
    from rayexp.studies.objective.inference import holm

    got = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": float("nan")})
    # sorted 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), each at least the one before
    assert got == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06, "e": float("nan")}, nan_ok=True)
    assert holm({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}  # 2 x 0.5 capped at 1; 0.9 kept at least that
    assert holm({}) == {}


def test_pair_jackknife_on_additive_pairs_is_the_t_interval_of_the_seeds():
    from rayexp.stats import t_ci
    from rayexp.studies.objective.inference import pair_jackknife_ci

    # a pair's value x_i + x_j: the mean over all pairs is 2 mean(x), and the jackknife over seeds
    # reproduces exactly the t interval of 2 x_i (what the seeds alone support)
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    i, j = np.triu_indices(5, k=1)
    got = pair_jackknife_ci(x[i] + x[j], i, j)
    assert got == pytest.approx(t_ci(2 * x))
    assert np.isnan(pair_jackknife_ci([0.3], [0], [1])[1])  # 2 seeds: no spread to estimate
    with pytest.raises(ValueError, match="one pair of seeds"):
        pair_jackknife_ci([0.1, 0.2], [0], [1])


def test_pair_jackknife_covers_where_treating_pairs_as_independent_does_not():
    from rayexp.stats import t_ci
    from rayexp.studies.objective.inference import pair_jackknife_ci

    rng = np.random.default_rng(0)
    n, reps = 5, 400
    i, j = np.triu_indices(n, k=1)
    hit_jk = hit_naive = 0
    for _ in range(reps):
        seed_effect = rng.standard_normal(n)  # each seed's vector shifts every pair it is in
        vals = seed_effect[i] + seed_effect[j] + 0.3 * rng.standard_normal(len(i))
        _, lo, hi = pair_jackknife_ci(vals, i, j)
        hit_jk += lo <= 0 <= hi
        _, lo, hi = t_ci(vals)  # 10 pairs as 10 independent values
        hit_naive += lo <= 0 <= hi
    assert 0.90 <= hit_jk / reps <= 0.99
    assert hit_naive / reps < 0.85


def test_pair_difference_jackknife_is_paired_through_the_seeds():
    from rayexp.stats import t_ci
    from rayexp.studies.objective.inference import pair_difference_jackknife_ci, pair_jackknife_ci

    # additive pairs of both kinds over the same 5 seeds: the difference of means is 2 mean(x - y)
    # and its jackknife is exactly the t interval of 2 (x_i - y_i), the seeds' own paired spread
    x, y = np.array([0.1, 0.5, 0.2, 0.9, 0.4]), np.array([0.0, 0.3, 0.3, 0.6, 0.1])
    i, j = np.triu_indices(5, k=1)
    got = pair_difference_jackknife_ci((x[i] + x[j], i, j), (y[i] + y[j], i, j))
    assert got == pytest.approx(t_ci(2 * (x - y)))
    # a seed effect both kinds share cancels: coverage holds and the interval is narrower than the
    # two one-kind intervals would allow side by side
    rng = np.random.default_rng(1)
    hits, narrower, reps = 0, 0, 300
    for _ in range(reps):
        e = rng.standard_normal(5)
        a = e[i] + e[j] + 0.2 * rng.standard_normal(len(i))
        b = e[i] + e[j] + 0.2 * rng.standard_normal(len(i))
        _, lo, hi = pair_difference_jackknife_ci((a, i, j), (b, i, j))
        hits += lo <= 0 <= hi
        (_, la, ha), (_, lb, hb) = pair_jackknife_ci(a, i, j), pair_jackknife_ci(b, i, j)
        narrower += (hi - lo) < np.hypot(ha - la, hb - lb)
    # (pair-level noise alone makes this jackknife conservative: it covers at least its nominal rate)
    assert hits / reps >= 0.93 and narrower / reps > 0.95
    assert np.isnan(pair_difference_jackknife_ci(([], [], []), (y[i], i, j))[0])


def test_pair_index_gives_the_pairs_pair_cosines_reads():
    labels, seeds = ["r1", "r1", "r2", "r2", "null", "null"], [0, 1, 0, 1, 0, 1]
    idx = tv.pair_index(labels, seeds, null="null")
    assert [tuple(map(int, p)) for p in zip(*idx["same_reward"])] == [(0, 1), (2, 3)]
    assert [tuple(map(int, p)) for p in zip(*idx["other_reward_same_seed"])] == [(0, 2), (1, 3)]
    C = tv.cosine_matrix(np.random.default_rng(0).standard_normal((6, 4)))
    got = tv.pair_cosines(C, labels, seeds, null="null")
    for kind, (i, j) in idx.items():
        np.testing.assert_array_equal(got[kind], C[i, j])


def test_holm_over_sixteen_modules_keeps_the_planted_one_and_drops_noise():
    from rayexp.studies.objective.inference import holm

    rng = np.random.default_rng(3)
    seeds, rewards, d = [0, 1, 2, 3, 4], ["anti", "shift", "prefer0"], 6
    dirs = {r: rng.standard_normal(d) for r in rewards}
    labels = [r for _ in seeds for r in rewards]
    groups = [s for s in seeds for _ in rewards]
    p = {}
    for m in range(16):
        signal = m == 0  # only module 0 carries the reward
        X = np.array([(dirs[r] if signal else 0) + 0.5 * rng.standard_normal(d) for r in labels])
        p[f"m{m}"] = tv.permutation_pvalue(X, labels, groups, n_perm=1000, seed=m)[1]
    adj = holm(p)
    # a relabelling applied alike in every seed also classifies perfectly: p is a few / 1001, not 1 / 1001
    assert p["m0"] < 0.005 and adj["m0"] == pytest.approx(16 * p["m0"])
    assert adj["m0"] < 0.05 and all(adj[f"m{m}"] >= 0.05 for m in range(1, 16))
    assert 16 / 201 > 0.05  # with 200 permutations no module could ever pass Holm over 16


def test_module_rows_sorted_by_holm_p():
    from rayexp.studies.objective.report import module_rows

    pre = "sweep/task_vectors/all/classifier/module/"
    parent = {
        pre + "unembed/accuracy": 1.0,
        pre + "unembed/p_value": 0.001,
        pre + "unembed/p_holm": 0.016,
        pre + "blocks.1.attn/accuracy": 0.33,
        pre + "blocks.1.attn/p_value": 0.14,
        pre + "blocks.1.attn/p_holm": 1.0,
        pre + "n_tested": 16.0,
        "sweep/task_vectors/all/classifier/accuracy": 0.9,  # the whole-model classifier: not a module row
    }
    rows = module_rows(parent)
    assert [r["module"] for r in rows] == ["unembed", "blocks.1.attn"]
    assert rows[0]["modules tested"] == 16 and rows[0]["reads the reward (Holm p < 0.05)"] == "yes"
    assert rows[1]["reads the reward (Holm p < 0.05)"] == "no"


def test_free_pairs_put_the_reward_free_vector_first_and_pair_other_seeds_only():
    labels = ["anti", "free", "null", "anti", "free", "null"]
    seeds = [1, 1, 1, 2, 2, 2]
    idx = tv.free_pair_index(labels, seeds, free="free", null="null")
    pairs = {k: sorted(zip(map(int, i), map(int, j))) for k, (i, j) in idx.items()}
    assert pairs == {"free": [(1, 4)], "free_vs_reward": [(1, 3), (4, 0)], "free_vs_null": [(1, 5), (4, 2)]}


def test_free_cosines_measure_what_any_update_shares():
    """Planted updates: every PPO update from M_A carries one drift direction d; reward updates add
    their reward's direction. The reward-free arm's cosines then read the drift alone, and the
    same-reward minus free difference is what the reward adds."""
    from types import SimpleNamespace

    from rayexp.studies.objective.task_vectors_analysis import _free_cosines

    rng = np.random.default_rng(0)
    dim, seeds = 400, [0, 1, 2, 3, 4]
    d, r = rng.standard_normal(dim), {k: rng.standard_normal(dim) for k in ("anti", "shift")}
    noise = lambda: 0.5 * rng.standard_normal(dim)
    labels, sds, rows = [], [], []
    for s in seeds:
        for lab in ("anti", "shift", "null"):
            labels.append(lab)
            sds.append(s)
            rows.append(d + r.get(lab, 0) + noise())
    X = np.stack(rows)
    theta_a = {"w": np.zeros(dim)}  # M_A at the origin: each model's parameters are its update
    model = lambda v: SimpleNamespace(state_dict=lambda: {"w": torch.as_tensor(v)})
    free_models = [model(d + noise()) for _ in seeds]  # reward-free updates: the drift alone
    free = [SimpleNamespace(config={"seed": s}, model_after=lambda m=m: m) for s, m in zip(seeds, free_models)]
    pairs = {k: (tv.cosine_matrix(X)[i, j], np.asarray(sds)[i], np.asarray(sds)[j])
             for k, (i, j) in tv.pair_index(labels, sds, "null").items()}  # fmt: skip
    got = _free_cosines(X, labels, sds, free, theta_a, ["w"], "null", "free", pairs)
    # drift |d|^2 = 400 against noise 0.25 * 400 * 2 per pair: free pairs ~ 1 / 1.25
    assert got["cos/free/mean"] == pytest.approx(1 / 1.25, abs=0.05)
    assert got["cos/free_vs_null/mean"] == pytest.approx(got["cos/free/mean"], abs=0.05)
    assert got["cos/free_vs_reward/mean"] == pytest.approx(400 / np.sqrt(500 * 900), abs=0.05)  # diluted by r
    diff = pairs["same_reward"][0].mean() - got["cos/free/mean"]
    assert got["cos/same_reward_minus_free/mean"] == pytest.approx(diff)
    assert got["cos/null_minus_free/ci_low"] <= 0 <= got["cos/null_minus_free/ci_high"]  # null = drift alone
