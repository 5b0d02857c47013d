"""Difference-of-means concept vectors, their controls, and the steering hook."""

import numpy as np
import pytest
import torch

from models.config import TransformerConfig
from models.transformer import Transformer, add_vector
from rayexp.studies.welfare import concepts as cv


def test_diff_of_means_and_cosine_by_hand():
    acts = np.array([[2.0, 0, 0], [4, 0, 0], [0, 0, 6], [0, 0, 8], [1, 1, 1], [1, 3, 1]])
    labels = np.array([cv.REWARDED, cv.REWARDED, cv.PUNISHED, cv.PUNISHED, cv.NEUTRAL, cv.NEUTRAL])
    v_r, v_p = cv.concept_vectors(acts, labels)
    np.testing.assert_allclose(v_r, [3 - 1, 0 - 2, 0 - 1])  # mean R (3,0,0) - mean N (1,2,1)
    np.testing.assert_allclose(v_p, [0 - 1, 0 - 2, 7 - 1])
    expected = (2 * -1 + -2 * -2 + -1 * 6) / (np.sqrt(9) * np.sqrt(41))
    assert cv.cosine(v_r, v_p) == pytest.approx(expected, abs=1e-15)
    assert cv.cosine(np.array([1.0, 0]), np.array([-2.0, 0])) == -1.0
    assert np.isnan(cv.cosine(np.zeros(2), np.ones(2)))


def test_antiparallel_planted_direction_beats_shuffled_null():
    rng = np.random.default_rng(0)
    d, n = 16, 300
    u = rng.standard_normal(d)
    labels = rng.integers(0, 3, n)
    sign = np.select([labels == cv.REWARDED, labels == cv.PUNISHED], [1.0, -1.0], 0.0)
    acts = sign[:, None] * u + 0.5 * rng.standard_normal((n, d))
    v_r, v_p = cv.concept_vectors(acts, labels)
    observed = cv.cosine(v_r, v_p)
    assert observed < -0.9
    null = cv.shuffled_cosines(acts, labels, n_perm=100, seed=0)
    assert observed < null.min()
    # on pure noise the null centres near +0.5: two difference vectors share the neutral mean
    noise = cv.shuffled_cosines(rng.standard_normal((n, d)), labels, n_perm=200, seed=1)
    assert abs(noise.mean() - 0.5) < 0.1


def test_split_half_cosine_is_high_for_a_strong_direction_and_low_for_noise():
    rng = np.random.default_rng(4)
    d, n_seq, per = 32, 400, 3
    groups = np.repeat(np.arange(n_seq), per)  # three outcome rows per sequence
    labels = rng.integers(0, 3, n_seq * per)
    u = rng.standard_normal(d)
    sign = np.select([labels == cv.REWARDED, labels == cv.PUNISHED], [1.0, 1.0], 0.0)
    strong = sign[:, None] * u + 0.5 * rng.standard_normal((n_seq * per, d))
    r, p = cv.split_half_cosines(strong, labels, groups, np.random.default_rng(0))
    assert r > 0.95 and p > 0.95  # one direction, estimated twice: nearly the same
    noise = rng.standard_normal((n_seq * per, d))
    r, p = cv.split_half_cosines(noise, labels, groups, np.random.default_rng(0))
    assert abs(r) < 0.4 and abs(p) < 0.4  # no direction: two halves' estimates are unrelated


def test_balanced_and_controls():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 4 + [2] * 7)
    idx = cv.balanced(labels, rng)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="at least 2"):
        cv.balanced(np.array([0, 0, 1, 2, 2]), rng)
    v = rng.standard_normal(32)
    r, o = cv.random_like(v, rng), cv.orthogonal_like(v, rng)
    assert np.linalg.norm(r) == pytest.approx(np.linalg.norm(v))
    assert np.linalg.norm(o) == pytest.approx(np.linalg.norm(v))
    assert abs(np.dot(o, v)) < 1e-10


def test_steering_adds_exactly_alpha_v_at_the_named_hook_only():
    cfg = TransformerConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=6, d_vocab=5)
    model = Transformer(cfg, seed=0).eval()
    tokens = torch.tensor([[0, 1, 2, 3, 4, 0], [4, 3, 2, 1, 0, 1]])
    names = model.hook_names
    target = "blocks.1.hook_resid_pre"
    v = torch.randn(8, generator=torch.Generator().manual_seed(3))
    alpha = 2.5
    with torch.no_grad():
        plain_logits, plain = model.run_with_cache(tokens)
        cache = dict.fromkeys(names)
        steered_logits = model.run_with_hooks(tokens, {target: add_vector(v, alpha)}, cache=cache)
        # what the rest of the network computes from the steered activation, by hand
        x = plain[target] + alpha * v
        x = x + model.blocks[1].attn(model.blocks[1].ln1(x))
        x = x + model.blocks[1].mlp(model.blocks[1].ln2(x))
        by_hand = model.unembed(model.ln_final(x))
    at = names.index(target)
    for name in names[:at]:  # upstream: untouched
        assert torch.equal(cache[name], plain[name]), name
    torch.testing.assert_close(cache[target] - plain[target], (alpha * v).expand_as(plain[target]), rtol=0, atol=1e-6)
    torch.testing.assert_close(steered_logits, by_hand, rtol=0, atol=1e-5)
    assert not torch.allclose(steered_logits, plain_logits)
    # alpha = 0 changes nothing
    with torch.no_grad():
        same = model.run_with_hooks(tokens, {target: add_vector(v, 0.0)})
    torch.testing.assert_close(same, plain_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown hook"):
        model.run_with_hooks(tokens, {"blocks.9.hook_resid_pre": add_vector(v, 1.0)})


# --- steering controls on the activation manifold (issue 22; its across-seed readings: test_welfare_summary)


def test_on_manifold_controls_stay_in_the_activations_span_and_carry_no_label():
    rng = np.random.default_rng(4)
    d, n = 12, 600
    basis = np.linalg.qr(rng.standard_normal((d, 3)))[0]  # activations live in a 3-D subspace
    u = basis[:, 0]
    labels = rng.integers(0, 3, n)
    sign = np.select([labels == cv.REWARDED, labels == cv.PUNISHED], [0.0, -2.0], 0.0)
    acts = (rng.standard_normal((n, 3)) * [1.0, 3.0, 2.0]) @ basis.T + sign[:, None] * u
    _, v_p = cv.concept_vectors(acts, labels)
    assert cv.cosine(v_p, -u) > 0.95  # the planted punishment direction
    shuffled = cv.norm_matched(cv.shuffled_vectors(acts, labels, 20, rng), np.linalg.norm(v_p))
    groups = cv.norm_matched(cv.group_differences(acts, 50, 20, rng), np.linalg.norm(v_p))
    off = np.stack([cv.random_like(v_p, rng) for _ in range(20)])
    outside = np.eye(d) - basis @ basis.T  # projector onto what the activations never use
    for controls in (shuffled, groups):
        np.testing.assert_allclose(np.linalg.norm(controls, axis=1), np.linalg.norm(v_p))
        np.testing.assert_allclose(controls @ outside, 0.0, atol=1e-9)  # on the manifold, exactly
        assert np.mean(np.abs(controls @ u)) / np.linalg.norm(v_p) < 0.5  # but not along the label's direction
    assert np.min(np.linalg.norm(off @ outside, axis=1) / np.linalg.norm(v_p)) > 0.3  # isotropic: mostly off it
    # a shuffle is a permutation of the labels: the same draw, by hand
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_allclose(
        cv.shuffled_vectors(acts, labels, 1, r1)[0], cv.concept_vectors(acts, r2.permutation(labels))[1]
    )


def test_each_vectors_orthogonal_control_is_orthogonal_to_that_vector_and_of_its_norm(monkeypatch):
    """steering_controls' ``orthogonal`` for v_R: the dose-response's orthogonal draw is orthogonal to v_P,
    so v_R needs its own. A stand-in steering hook hands its push back, and stand-in rates read it."""
    import models.transformer as tr
    from rayexp.studies.welfare.concept_vectors_analysis import ConceptParams, _control_effects

    rng = np.random.default_rng(0)
    d = 16
    v_r, v_p = rng.standard_normal(d), 2.0 * rng.standard_normal(d)
    params = ConceptParams(n_random=2, alphas=[-1.0, 0.0, 2.0])
    monkeypatch.setattr(tr, "add_vector", lambda v, alpha: alpha * v.double().numpy())

    class Data:  # P(punished) under steering := what ``read`` says of the push
        labels = np.repeat([cv.REWARDED, cv.PUNISHED, cv.NEUTRAL], 20)

        def __init__(self, read):
            self.read = read

        def all_acts(self, model, hook):
            return np.random.default_rng(1).standard_normal((100, d))

        def rates(self, model, hooks):
            (push,) = hooks.values()
            return 0.0, self.read(push)

    curves = {"v_P": {"punish": [0.0, 0.0, 0.3]}, "v_R": {"punish": [0.0, 0.0, 0.2]}}
    curves |= {f"random{i}": {"punish": [0.0, 0.0, 0.01], "vector": cv.random_like(v_p, rng)} for i in range(2)}
    curves["orthogonal"] = {"punish": [0.0, 0.0, 0.02], "vector": cv.orthogonal_like(v_p, rng)}
    acts = np.random.default_rng(2).standard_normal((60, d))

    def orthogonal_rows(read):
        _, rows = _control_effects(Data(read), torch.nn.Linear(1, 1), "h", (v_r, v_p), acts, curves, 0.0, params)
        return {t: rows["punish"][i] for i, t in enumerate(rows["target"]) if rows["control"][i] == "orthogonal"}

    cos = orthogonal_rows(lambda push: abs(cv.cosine(push, v_r)))
    assert cos["v_R"] < 1e-6  # orthogonal to v_R, not only to v_P
    assert cos["v_P"] == 0.02  # v_P's is still its dose-response's draw
    pushed = orthogonal_rows(lambda push: float(np.linalg.norm(push)))
    assert pushed["v_R"] == pytest.approx(2.0 * np.linalg.norm(v_r), rel=1e-6)  # v_R's push at the largest alpha


def test_group_differences_by_hand_and_norm_matching():
    acts = np.array([[0.0], [1.0], [2.0], [3.0]])
    got = cv.group_differences(acts, 2, 200, np.random.default_rng(0))
    # two disjoint halves of {0, 1, 2, 3}: mean differences are 0, +-1 or +-2, and all of them occur
    assert set(np.round(got[:, 0], 12)) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="group_size"):
        cv.group_differences(acts, 3, 1, np.random.default_rng(0))
    m = cv.norm_matched(np.array([[3.0, 4.0], [0.0, 0.0]]), 10.0)
    np.testing.assert_allclose(m, [[6.0, 8.0], [0.0, 0.0]])  # a zero row stays zero


class _Trial:
    """What the matched_null analysis reads from a trial: its task, seed, start and models."""

    def __init__(self, task, seed, pre, post, key="pretrained", path=None):
        from envs import build_process

        self.config = {"task": {"name": task}, "seed": seed}
        self.env_config, self.pretrain_key = {"context": 7}, key
        self._hmm = build_process({"name": "outcome", "base": {"name": "mess3", "x": 0.05, "a": 0.85}})
        self._pre, self._post = pre, post
        # the saved PPO checkpoints, {iteration: model}; the last is the trial's final model
        self._path = path or {30: post}

    def ppo_iterations(self):
        return sorted(self._path)

    def policy(self, iteration):
        return self._pre if iteration == 0 else self._path[iteration]

    def stream(self):
        return self._hmm

    def model_before(self):
        return self._pre

    def model_after(self):
        return self._post


def test_matched_null_scales_the_nulls_update_to_rls_norm_and_pairs_by_seed():
    from rayexp.probes import residual_layers
    from rayexp.studies.welfare.concept_vectors_analysis import OutcomeContexts
    from rayexp.studies.welfare.matched_null_analysis import MatchedNullParams, matched_null
    from rayexp.weights import interpolate, param_arrays, random_perturbation, update_norm

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=7, d_vocab=9)
    group = []
    for seed in (0, 1):
        pre = Transformer(cfg, seed=seed).eval()
        group += [
            _Trial("outcome_rl", seed, pre, random_perturbation(pre, 1.5, seed=10 + seed)),
            _Trial("shuffled_null", seed, pre, random_perturbation(pre, 6.0, seed=20 + seed)),
        ]
    group.append(_Trial("outcome_rl", 2, pre, pre))  # no null for seed 2: left out
    params = MatchedNullParams(n_seq=300)
    got = matched_null(group, params)
    assert got.metrics["n_seeds"] == 2
    assert got.metrics["norm/rl"] == pytest.approx(1.5, rel=1e-4) and got.metrics["norm/null"] == pytest.approx(
        6.0, rel=1e-4
    )
    # the null at RL's norm is its own direction a quarter of the way: the same model as a perturbation
    # along that direction drawn at norm 1.5 directly
    pre = group[2].model_before()
    scaled = interpolate(pre, group[3].model_after(), 0.25)
    direct = random_perturbation(pre, 1.5, seed=21)
    assert update_norm(param_arrays(pre), param_arrays(scaled)) == pytest.approx(1.5, rel=1e-4)
    assert all(
        np.allclose(a, b, atol=1e-6) for a, b in zip(param_arrays(scaled).values(), param_arrays(direct).values())
    )
    data = OutcomeContexts(group[2].stream(), 7, 300, params.seed)
    hook = residual_layers(pre.hook_names)[-1]
    v_pre = cv.concept_vectors(data.acts(pre, [hook])[hook], data.labels)
    v_dir = cv.concept_vectors(data.acts(direct, [hook])[hook], data.labels)
    table = got.tables["matched_rotation"].to_pydict()
    row = next(
        i
        for i in range(len(table["seed"]))
        if table["seed"][i] == 1 and table["hook"][i] == hook and table["vector"][i] == "P"
    )
    assert table["null_matched"][row] == pytest.approx(cv.cosine(v_pre[1], v_dir[1]), abs=1e-5)
    # the summaries are the seeds' paired differences
    sel = [i for i in range(len(table["seed"])) if table["hook"][i] == hook and table["vector"][i] == "P"]
    diffs = [table["rl"][i] - table["null_matched"][i] for i in sel]
    assert got.metrics[f"{hook}/P/rl_minus_null_matched"] == pytest.approx(np.mean(diffs))
    assert got.metrics[f"{hook}/P/rl_minus_null_matched/ci_low"] < np.mean(diffs)
    # a null saved only at its end has a straight path: its point at RL's norm is the scaled null
    assert np.allclose(table["null_path"], table["null_matched"], atol=1e-6)
    assert got.metrics["path/n_seeds"] == 2 and got.metrics["path/iteration"] == pytest.approx(30 * 0.25, rel=1e-4)
    with pytest.raises(ValueError, match="both"):
        matched_null(group[:1], params)
    with pytest.raises(ValueError, match="different models"):
        matched_null([group[0], _Trial("shuffled_null", 0, pre, pre, key="other")], params)


def test_first_crossing_finds_the_first_point_of_a_bent_path_at_the_norm():
    """Against a dense walk along the chords: the first point at the norm, on the right chord."""
    from rayexp.weights import first_crossing

    rng = np.random.default_rng(3)
    base = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}
    path = [{k: v + rng.normal(scale=0.8 * (j + 1), size=v.shape) for k, v in base.items()} for j in range(5)]
    flat = [np.concatenate([p[k].ravel() for k in base]) for p in [base, *path]]
    dist = [np.linalg.norm(f - flat[0]) for f in flat]
    norm = 0.6 * max(dist)
    j, t = first_crossing(base, path, norm)
    point = flat[j] + t * (flat[j + 1] - flat[j])
    assert np.linalg.norm(point - flat[0]) == pytest.approx(norm, rel=1e-9)
    walk = [(i, s) for i in range(len(path)) for s in np.linspace(0, 1, 20001)]
    first = next((i, s) for i, s in walk if np.linalg.norm(flat[i] + s * (flat[i + 1] - flat[i]) - flat[0]) >= norm)
    assert first[0] == j and first[1] == pytest.approx(t, abs=1e-4)
    assert first_crossing(base, path, 1.01 * max(dist)) is None
    with pytest.raises(ValueError, match="norm"):
        first_crossing(base, path, 0.0)


def test_matched_null_reads_the_null_where_its_own_path_reached_rls_norm():
    """A null whose PPO path bends: its point at RL's norm is on the path, not on the line to its end.
    Planted: the null first moves along a direction u to norm 2 (iteration 10), then turns along an
    orthogonal-ish w (iteration 20). At RL's norm 1 the path point is pre + u/2, which the scaled null
    (pre + (1 / |d_null|) d_null) is not."""
    from rayexp.probes import residual_layers
    from rayexp.studies.welfare.concept_vectors_analysis import OutcomeContexts
    from rayexp.studies.welfare.matched_null_analysis import MatchedNullParams, matched_null
    from rayexp.weights import interpolate, param_arrays, random_perturbation, update_norm

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=7, d_vocab=9)
    pre = Transformer(cfg, seed=0).eval()
    u = random_perturbation(pre, 2.0, seed=5)  # pre + u, |u| = 2
    bend = random_perturbation(u, 6.0, seed=6)  # then 6 further along another direction
    rl = random_perturbation(pre, 1.0, seed=7)
    short = random_perturbation(pre, 0.5, seed=8)  # a null that never gets as far as RL
    group = [
        _Trial("outcome_rl", 0, pre, rl),
        _Trial("shuffled_null", 0, pre, bend, path={10: u, 20: bend}),
        _Trial("outcome_rl", 1, pre, rl),
        _Trial("shuffled_null", 1, pre, short, path={10: short}),
    ]
    got = matched_null(group, MatchedNullParams(n_seq=300))
    table = got.tables["matched_rotation"].to_pydict()
    at = [table["path_iteration"][i] for i in range(len(table["seed"])) if table["seed"][i] == 0]
    assert at == pytest.approx([5.0] * len(at), rel=1e-6)  # halfway along the first chord
    assert got.metrics["path/n_seeds"] == 1 and got.metrics["path/iteration"] == pytest.approx(5.0, rel=1e-6)
    assert got.metrics["path/chord_share"] == pytest.approx(2.0, rel=1e-4)  # the chord holding it, |u|, over 1
    half = interpolate(pre, u, 0.5)
    scaled = interpolate(pre, bend, 1.0 / update_norm(param_arrays(pre), param_arrays(bend)))
    data = OutcomeContexts(group[0].stream(), 7, 300, 0)
    hook = residual_layers(pre.hook_names)[-1]
    v = {
        n: cv.concept_vectors(data.acts(m, [hook])[hook], data.labels)
        for n, m in (("pre", pre), ("half", half), ("scaled", scaled))
    }
    row = next(
        i
        for i in range(len(table["seed"]))
        if table["seed"][i] == 0 and table["hook"][i] == hook and table["vector"][i] == "R"
    )
    assert table["null_path"][row] == pytest.approx(cv.cosine(v["pre"][0], v["half"][0]), abs=1e-5)
    assert table["null_matched"][row] == pytest.approx(cv.cosine(v["pre"][0], v["scaled"][0]), abs=1e-5)
    assert abs(table["null_path"][row] - table["null_matched"][row]) > 1e-3  # the two nulls differ here
    # the seed whose null stopped short has no path point; its other columns stand
    short_rows = [i for i in range(len(table["seed"])) if table["seed"][i] == 1]
    assert all(np.isnan(table["null_path"][i]) for i in short_rows)
    assert all(np.isfinite(table["null_matched"][i]) for i in short_rows)
    # the path summary is seed 0's alone (one seed: no interval, a point)
    assert got.metrics[f"{hook}/R/null_path"] == pytest.approx(table["null_path"][row], abs=1e-12)


def test_welfare_report_reads_the_matched_null_from_the_parent_run():
    from rayexp.studies.welfare.report import matched_rows

    pm = {"sweep/matched_null/all/norm/rl": 7.0, "sweep/matched_null/all/norm/null": 8.5}
    for hook in ("blocks.1.hook_resid_post", "blocks.0.hook_resid_post"):
        for name, (m, lo, hi) in {"rl": (0.5, 0.4, 0.6), "null_matched": (0.6, 0.5, 0.7)}.items():
            stem = f"sweep/matched_null/all/{hook}/P/{name}"
            pm |= {stem: m, f"{stem}/ci_low": lo, f"{stem}/ci_high": hi}
    pm["sweep/other/all/x/P/rl"] = 1.0  # another analysis: not read
    rows = matched_rows(pm)
    assert [r["hook"] for r in rows] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert rows[0]["rl"] == "+0.50 [+0.40, +0.60]" and rows[0]["null_matched"] == "+0.60 [+0.50, +0.70]"
    assert rows[0]["rl_minus_null"] == "-" and rows[0]["update norm RL / null"] == "7.00 / 8.50"
    assert rows[0]["null_path"] == "-" and not any(k.startswith("null path:") for k in rows[0])  # a run before it
    assert matched_rows({}) == []
    stem = "sweep/matched_null/all/blocks.0.hook_resid_post/P/null_path"
    pm |= {stem: 0.3, f"{stem}/ci_low": 0.1, f"{stem}/ci_high": 0.5}
    pm |= {
        f"sweep/matched_null/all/path/{k}": v for k, v in {"iteration": 17.2, "chord_share": 0.31, "n_seeds": 5}.items()
    }
    row = matched_rows(pm)[0]
    assert (
        row["null_path"] == "+0.30 [+0.10, +0.50]"
        and row["null path: iteration, chord / RL norm, seeds"] == "17.2, 0.31, 5"
    )


@pytest.mark.parametrize("base", [{"name": "mess3", "x": 0.05, "a": 0.85}, {"name": "rrxor"}])
def test_outcome_labels_are_iid_and_blind_to_the_base_stream_so_a_row_shuffle_is_exact(base):
    """The welfare null shuffles labels across rows, and a sequence holds many rows. That is an exact
    null only if the real labels are as a row shuffle makes them: independent of one another and of the
    sequence the rows share. Exactly, from the matrices: P(base tokens, outcomes) over 3 rounds equals
    P(base tokens) times a product of per-round outcome probabilities (1/S, 1/S, (S-2)/S)."""
    import itertools

    from envs import build_process
    from envs.outcome import OutcomeTokens

    hmm = build_process({"name": "outcome", "base": base})
    lay = OutcomeTokens.of(hmm)
    S = lay.n_base_states
    p_outcome = np.array([1 / S, 1 / S, (S - 2) / S])
    act = hmm.T[lay.action_tokens].sum(0)  # any action: the process draws it uniformly
    rounds = 3
    checked = 0
    for xs in itertools.product(lay.base_tokens.tolist(), repeat=rounds):
        p_x = hmm.init.copy()
        for x in xs:
            p_x = p_x @ hmm.T[x] @ act @ hmm.T[lay.outcome_tokens].sum(0)
        checked += p_x.sum() > 1e-6
        for os in itertools.product(range(3), repeat=rounds):
            p = hmm.init.copy()
            for x, o in zip(xs, os):
                p = p @ hmm.T[x] @ act @ hmm.T[lay.outcome_tokens[o]]
            assert p.sum() == pytest.approx(p_x.sum() * np.prod(p_outcome[list(os)]), abs=1e-15)
    # the check covers most base sequences, each of real probability, not a few
    assert checked >= len(lay.base_tokens) ** rounds // 2
