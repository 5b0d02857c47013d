"""The composition signals' maths (rayexp.composition) on constructed cases with known answers."""

import numpy as np
import pytest
from streams import INTERLEAVE, MESS3

from envs import build_process
from envs.rewards import make_reward
from rayexp.exact import ceilings, targets
from rayexp.probes import split_sequences
from rayexp.stats import ratio_values
from rayexp.studies.composition import interaction as ia
from rayexp.studies.composition import readout, reweighting, update


@pytest.fixture(scope="module")
def hmm():
    return build_process(INTERLEAVE)


@pytest.fixture(scope="module")
def joint(hmm):
    return make_reward("joint_target", hmm, {"m": 3})


@pytest.fixture(scope="module")
def stream(hmm):
    tokens, _, beliefs = hmm.sample_with_beliefs(4000, 10, np.random.default_rng(0))
    return tokens, beliefs


def cells_of(hmm, tokens, seed=1):
    """The 2x2 design's four token arrays: (a, b), (a, b'), (a', b), (a', b')."""
    n = len(tokens)
    a_from, b_from = ia.partners(n, np.random.default_rng(seed))
    own = np.arange(n)
    swap = lambda a, b: ia.swap_histories(hmm.layout, tokens, a, b)
    return [tokens, swap(own, b_from), swap(a_from, own), swap(a_from, b_from)]


# ------------------------------------------------------------------------------------------- ceilings


def test_ceilings_of_joint_target_on_interleaved_mess3(hmm, joint, stream):
    tokens, beliefs = stream
    P = targets.target_probs(hmm, joint, beliefs)  # (N, 10, 3)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-12)
    for i in (0, 1):
        single = targets.single_factor_probs(hmm, joint, beliefs, i)
        np.testing.assert_allclose(single, 1 / 3, atol=1e-12)  # the other factor's next token is uniform
        np.testing.assert_allclose(ceilings.greedy_reward(single, P), 1 / 3, atol=1e-12)  # exactly, per context
    np.testing.assert_allclose(ceilings.uniform(P), 1 / 3, atol=1e-12)
    assert ceilings.optimum(P).mean() == pytest.approx(0.498, abs=0.003)
    train, test = split_sequences(len(tokens), 0.5, np.random.default_rng(0))
    lookup = {
        k: ceilings.lookup_reward(ceilings.lookup_keys(tokens, k, hmm.vocab_size), P, train, test).mean()
        for k in (1, 2, 3)
    }
    assert lookup[1] == pytest.approx(1 / 3, abs=0.01)  # the last token belongs to one factor only
    assert lookup[2] == pytest.approx(0.489, abs=0.005)  # the last token of each factor
    assert lookup[3] == pytest.approx(lookup[2], abs=0.002)
    assert lookup[2] < ceilings.optimum(P[test]).mean()


def test_next_token_single_factor_observer_knows_its_own_factor_only(hmm, stream):
    _, beliefs = stream
    nxt = make_reward("next_token", hmm)
    P = targets.target_probs(hmm, nxt, beliefs[:50])
    single = targets.single_factor_probs(hmm, nxt, beliefs[:50], 0)
    a_turn = np.arange(10) % 2 == 1  # after x_t at odd t, factor A (tokens 0..2) emits next
    np.testing.assert_allclose(single[:, a_turn], P[:, a_turn], atol=1e-12)
    np.testing.assert_allclose(single[:, ~a_turn][..., 3:], 1 / 3, atol=1e-12)
    np.testing.assert_allclose(
        targets.joint_from_factors(hmm, beliefs, hmm.factor_beliefs(beliefs)), beliefs, atol=1e-12
    )


def test_unsupported_rewards_are_refused(hmm):
    with pytest.raises(targets.UnsupportedReward, match="unsupported"):
        targets.check_supported(make_reward("reward_punish", hmm, {"rewarded": [0]}))


def test_greedy_ties_expected_and_margin():
    P = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert ceilings.greedy_reward(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), P).tolist() == pytest.approx(
        [0.35, 1 / 3]
    )
    assert ceilings.expected_reward(np.array([[0, 1, 0], [0.5, 0.5, 0]]), P).tolist() == pytest.approx([0.5, 0.45])
    assert ceilings.optimum(P).tolist() == [0.5, 0.6]
    assert ceilings.margin(0.5, 1 / 3, 0.5) == pytest.approx(1.0)
    assert ceilings.margin(1 / 3, 1 / 3, 0.5) == 0.0
    assert np.isnan(ceilings.margin(0.6, 0.5, 0.5))  # the task does not need two factors


def test_lookup_fits_on_train_and_falls_back_on_unseen_keys():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 3, size=(200, 6))
    P = np.eye(3)[tokens]  # the target is the current token
    train, test = np.arange(100), np.arange(100, 200)
    keys = ceilings.lookup_keys(tokens, 1, pad=3)
    assert ceilings.lookup_reward(keys, P, train, test).mean() == 1.0
    assert ceilings.lookup_keys(tokens, 2, pad=3)[0, 0].tolist() == [3, tokens[0, 0]]
    only_zero = np.where(tokens[:100] == 0)  # train never sees tokens 1, 2 ...
    t2 = tokens.copy()
    t2[:100] = 0
    r = ceilings.lookup_reward(ceilings.lookup_keys(t2, 1, 3), np.eye(3)[t2], train, test)
    assert r.mean() == pytest.approx((tokens[100:] == 0).mean())  # ... so they get the fallback action 0
    assert only_zero[0].size


# ---------------------------------------------------------------------------------------- interaction


def _draws(n, n_a=5, n_b=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_a, n), rng.integers(0, n_b, n), rng.integers(0, n_a, n), rng.integers(0, n_b, n)


def test_additive_policy_has_zero_interaction():
    rng = np.random.default_rng(1)
    g, h = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    a, b, a2, b2 = _draws(5000)
    f = lambda a, b: ia.centred(g[a] + h[b])
    num, den = ia.interaction_terms(f(a, b), f(a, b2), f(a2, b), f(a2, b2))
    assert np.abs(num).max() < 1e-20 and den.mean() > 0.5
    assert ia.interaction_share(f(a, b), f(a, b2), f(a2, b), f(a2, b2)) == pytest.approx(0.0, abs=1e-15)


def test_pure_and_partial_interaction_shares():
    rng = np.random.default_rng(2)
    g, h = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    g, h = g - g.mean(0), h - h.mean(0)  # zero mean over uniform a, b: no main effects
    a, b, a2, b2 = _draws(40000)
    pure = lambda a, b: g[a] * h[b]
    assert ia.interaction_share(pure(a, b), pure(a, b2), pure(a2, b), pure(a2, b2)) == pytest.approx(1.0, abs=0.03)
    # f = g + h + c g h: the interaction's share of the variance is known in closed form
    c = 0.7
    mixed = lambda a, b: g[a] + h[b] + c * g[a] * h[b]
    var_g, var_h = (g**2).mean(0).sum(), (h**2).mean(0).sum()
    var_gh = ((g[:, None] * h[None]) ** 2).mean((0, 1)).sum()
    known = c**2 * var_gh / (var_g + var_h + c**2 * var_gh)
    share = ia.interaction_share(mixed(a, b), mixed(a, b2), mixed(a2, b), mixed(a2, b2))
    assert share == pytest.approx(known, abs=0.03)


def test_swap_histories_moves_each_factor(hmm):
    tokens = hmm.sample(6, 8, np.random.default_rng(0))[0]
    a_from, b_from = np.array([1, 2, 3, 4, 5, 0]), np.array([5, 0, 1, 2, 3, 4])
    out = ia.swap_histories(hmm.layout, tokens, a_from, b_from)
    np.testing.assert_array_equal(out[:, 0::2], tokens[a_from][:, 0::2])  # factor A speaks at even positions
    np.testing.assert_array_equal(out[:, 1::2], tokens[b_from][:, 1::2])
    product = build_process({"name": "product", "factors": [MESS3, MESS3]})
    toks = product.sample(6, 5, np.random.default_rng(0))[0]
    got = product.layout.split_tokens(ia.swap_histories(product.layout, toks, a_from, b_from))
    want = product.layout.split_tokens(toks)
    np.testing.assert_array_equal(got[0], want[0][a_from])
    np.testing.assert_array_equal(got[1], want[1][b_from])
    mixture = build_process({"name": "mixture", "components": [MESS3, MESS3]})
    toks = mixture.sample(40, 5, np.random.default_rng(0))[0]
    with pytest.raises(ValueError, match="2x2 design"):
        ia.swap_histories(mixture.layout, toks, np.roll(np.arange(40), 1), np.arange(40))


def test_bayes_optimal_policies_have_their_known_interaction(hmm, joint, stream):
    """Joint target: eta = 1 (Mess3's cyclic symmetry makes both main effects vanish); next token: 0
    (each step's answer depends on the factor whose turn it is)."""
    cells = cells_of(hmm, stream[0])
    beliefs = [hmm.beliefs(c) for c in cells]
    f_joint = [ia.centred_log(targets.target_probs(hmm, joint, b)) for b in beliefs]
    assert ia.interaction_share(*f_joint) == pytest.approx(1.0, abs=0.05)  # estimator sd ~0.014 at 4000 sequences
    nxt = make_reward("next_token", hmm)
    f_next = [ia.centred_log(targets.target_probs(hmm, nxt, b), floor=1e-6) for b in beliefs]
    assert ia.interaction_share(*f_next) < 1e-12


# ---------------------------------------------------------------------------------------- reweighting


def test_reweighting_fit_on_functions_of_the_distribution_and_beyond(hmm, joint, stream):
    beliefs = stream[1][:1000]
    p = hmm.next_token_probs(beliefs)  # (N, L, 6) the oracle pretrained model
    train, test = split_sequences(len(p), 0.5, np.random.default_rng(0))
    blocks = hmm.layout.factor_tokens
    fit = lambda y: reweighting.reweighting_fit(p, y, train, test, blocks)[0]
    pair_sums = np.stack([p[..., 0] + p[..., 1], p[..., 1] + p[..., 2], p[..., 2] + p[..., 0]], axis=-1)
    assert fit(ia.centred(2 * np.log(np.maximum(p[..., :3], reweighting.LOG_FLOOR)))) > 0.99  # sharpened
    assert fit(ia.centred_log(pair_sums)) > 0.99  # sums of output probabilities
    assert fit(ia.centred_log(targets.target_probs(hmm, joint, beliefs))) < 0.05  # needs what p does not hold
    assert fit(np.random.default_rng(0).normal(size=(1000, 10, 3))) < 0.02


def test_composed_share_is_the_interaction_the_pre_rl_outputs_do_not_explain(hmm, joint, stream):
    tokens = stream[0][:1500]
    cells = cells_of(hmm, tokens)
    beliefs = [hmm.beliefs(c) for c in cells]
    ps = [hmm.next_token_probs(b) for b in beliefs]
    train, test = split_sequences(len(tokens), 0.5, np.random.default_rng(0))
    blocks = hmm.layout.factor_tokens

    def kappa(f_cells):
        _, fmap = reweighting.reweighting_fit(ps[0], f_cells[0], train, test, blocks)
        num, den = reweighting.composed_terms(fmap, [p[test] for p in ps], [f[test] for f in f_cells])
        return num.mean() / den.mean()

    f_joint = [ia.centred_log(targets.target_probs(hmm, joint, b)) for b in beliefs]
    assert kappa(f_joint) == pytest.approx(ia.interaction_share(*[f[test] for f in f_joint]), abs=0.03)
    assert kappa([ia.centred(2 * np.log(np.maximum(p, 1e-6))) for p in ps]) < 1e-3  # a reweighting
    # additive but not in p_pre: factor A's belief itself (p shows A's next token on A's turns only)
    f_a = [ia.centred(np.log(hmm.factor_beliefs(b)[0])) for b in beliefs]
    assert reweighting.reweighting_fit(ps[0], f_a[0], train, test, blocks)[0] < 0.9
    assert kappa(f_a) < 0.01


def test_a_sum_of_probabilities_that_interacts_is_still_reweighting():
    """docs/design.md §4.2's caveat: on a product stream each joint token carries both factors, so P((a+b) mod 3)
    is a fixed sum of the pretrained outputs: full interaction, and fully a function of p_pre."""
    product = build_process({"name": "product", "factors": [MESS3, MESS3]})
    tokens, _, _ = product.sample_with_beliefs(1500, 8, np.random.default_rng(3))
    a, b = np.unravel_index(np.arange(9), (3, 3))
    to_target = np.eye(3)[(a + b) % 3]  # (9, 3)
    ps = [product.next_token_probs(product.beliefs(c)) for c in cells_of(product, tokens)]
    g = [ia.centred_log(p @ to_target) for p in ps]
    assert ia.interaction_share(*g) > 0.95
    train, test = split_sequences(len(tokens), 0.5, np.random.default_rng(0))
    r2, fmap = reweighting.reweighting_fit(ps[0], g[0], train, test)
    assert r2 > 0.99
    num, den = reweighting.composed_terms(fmap, [p[test] for p in ps], [f[test] for f in g])
    assert num.mean() / den.mean() < 0.01  # kappa: no interaction beyond what p_pre holds


# ------------------------------------------------------------------------------------- readout, update


def test_readout_from_exact_beliefs_reaches_the_optimum(hmm, joint, stream):
    beliefs = stream[1][:1000]
    P = targets.target_probs(hmm, joint, beliefs)
    train, test = split_sequences(len(P), 0.5, np.random.default_rng(0))
    # P is linear in the joint belief (the outer product of the factors' beliefs): a linear readout is exact
    full = readout.readout_reward(beliefs, P, train, test, alpha=1e-9).mean()
    assert full == pytest.approx(ceilings.optimum(P[test]).mean(), abs=1e-6)
    one = readout.readout_reward(hmm.factor_beliefs(beliefs)[0], P, train, test).mean()
    assert one == pytest.approx(1 / 3, abs=0.01)


def _tiny(seed=0):
    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
    return Transformer(cfg, seed=seed).eval()


def test_update_confined_to_the_unembedding_leaves_frozen_feature_readouts_unchanged(hmm, joint, stream):
    import copy

    import torch

    from rayexp.studies.composition.composition_analysis import model_forward

    pre = _tiny()
    post = copy.deepcopy(pre)
    with torch.no_grad():
        post.unembed_proj.weight.add_(torch.randn_like(post.unembed_proj.weight))
    tokens, beliefs = stream[0][:400, :8], stream[1][:400, :8]
    P = targets.target_probs(hmm, joint, beliefs)
    train, test = split_sequences(len(P), 0.5, np.random.default_rng(0))
    (lp, fp), (lq, fq) = model_forward(pre)(tokens, True), model_forward(post)(tokens, True)
    assert not np.allclose(lp, lq)  # the policy moved ...
    for name in ("final", "concat"):
        np.testing.assert_array_equal(fp[name], fq[name])  # ... its features did not
        r_pre = readout.readout_reward(fp[name], P, train, test)
        np.testing.assert_array_equal(r_pre, readout.readout_reward(fq[name], P, train, test))
    sparsity = update.update_sparsity(update.param_arrays(pre), update.param_arrays(post))
    assert sparsity["frac_changed/block0"] == sparsity["frac_changed/block1"] == sparsity["frac_changed/embed"] == 0
    assert sparsity["frac_changed/unembed"] > 0.5 and sparsity["norm_share/unembed"] == 1.0


def test_update_sparsity_by_depth_on_planted_changes():
    before = {
        "embed.weight": np.ones((4, 2)),
        "blocks.0.w": np.ones(10),
        "blocks.1.w": np.ones(10),
        "unembed_proj.b": np.ones(3),
    }
    after = {k: v.copy() for k, v in before.items()}
    after["blocks.1.w"][:4] += 1.0
    after["blocks.0.w"][:] += 1e-6  # below tol * RMS: float noise
    out = update.update_sparsity(before, after, tol=1e-3)
    assert out["frac_changed/block1"] == 0.4 and out["frac_changed/block0"] == 0.0
    assert out["frac_changed"] == pytest.approx(4 / 31)
    assert out["norm_share/block1"] == pytest.approx(1.0, abs=1e-9)
    assert list(out)[1:3] == ["frac_changed/embed", "norm_share/embed"]  # ordered by depth
    assert update.depth_of("blocks.12.attn.qkv.weight") == "block12" and update.depth_of("ln_final.weight") == "unembed"


def test_random_perturbation_has_the_asked_norm_and_is_seeded():
    model = _tiny()
    before = update.param_arrays(model)
    moved = update.random_perturbation(model, 2.5, seed=3)
    assert update.update_norm(before, update.param_arrays(moved)) == pytest.approx(2.5, rel=1e-5)
    assert update.update_norm(before, update.param_arrays(model)) == 0.0  # the original is untouched
    again = update.random_perturbation(model, 2.5, seed=3)
    assert update.update_norm(update.param_arrays(again), update.param_arrays(moved)) == 0.0
    other = update.random_perturbation(model, 2.5, seed=4)
    assert update.update_norm(update.param_arrays(other), update.param_arrays(moved)) > 1.0


def test_ratio_values_average_to_the_ratio():
    rng = np.random.default_rng(0)
    num, den = rng.random(50), rng.random(50) + 0.5
    assert ratio_values(num, den).mean() == pytest.approx(num.mean() / den.mean())
    assert np.isnan(ratio_values(num, np.zeros(50))).all()


_NOT, _AND = {"name": "noisy_not", "eps": 0.05}, {"name": "noisy_and", "eps": 0.05}


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "mixture", "components": [_NOT, _AND]},  # the logic sweep's process
        # the gate waits in its output state while the other factor speaks: no target then
        {"name": "interleave", "factors": [_AND, _NOT]},
        {"name": "interleave", "factors": [_NOT, _AND]},  # the gate second (its first bit at position 1)
        {"name": "gated", "a": _AND, "b": _NOT, "trigger": 0},
    ],
    ids=["mixture", "interleave_gate_first", "interleave_gate_second", "gated"],
)
def test_implies_target_probs_match_the_sampled_targets(spec):
    """P(target = k) of 'implies': exact values agree with the targets the env samples (frequency of
    each answer, the optimum's hit rate, and per context: the sampled answer's indicator less P is
    uncorrelated with P itself)."""
    from envs.rewards import make_reward

    h = build_process(spec)
    r = make_reward("implies", h, {})
    tokens, states, beliefs = h.sample_with_beliefs(20000, 13, np.random.default_rng(1))
    sampled = r.targets(tokens, states)[:, :12]  # (N, 12)
    P = targets.target_probs(h, r, beliefs[:, :12], tokens[:, :12])  # (N, 12, 2)
    for k in range(2):
        hit_k = (sampled == r.action_tokens[k]).astype(float)
        assert hit_k.mean() == pytest.approx(P[..., k].mean(), abs=0.006)
        assert (hit_k * P[..., k]).mean() == pytest.approx((P[..., k] ** 2).mean(), abs=0.006)
    hit = r.action_tokens[P.argmax(-1)] == sampled
    assert hit.mean() == pytest.approx(P.max(-1).mean(), abs=0.006)
    assert P.sum(-1).max() <= 1 + 1e-12 and 0 < P.max(-1).mean() < 0.5  # most steps have no target
