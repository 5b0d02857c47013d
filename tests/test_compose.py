"""Compositions: joint beliefs against brute force over the factors' own hidden paths, token and
state layout, entropies, and the spec builder."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from process_bruteforce import brute_beliefs, brute_prob

from envs import build_process
from envs.compose import gated, interleave, mixture, product, split_tokens
from envs.process import enumerate_conditional_entropies
from envs.processes import mess3, noisy_and, noisy_not, rrxor, z1r

RNG = np.random.default_rng(2024)


def factor_belief_before(f, local_tokens, t):
    """Brute-force belief of factor f after its own tokens among local_tokens[: t + 1]."""
    own = [int(x) for x in local_tokens[: t + 1] if x >= 0]
    return brute_beliefs(f.T, f.init, own)[-1] if own else np.asarray(f.init)


def outer(*vectors):
    return functools.reduce(np.multiply.outer, vectors).ravel()


def sampled(hmm, batch=6, length=5):
    tokens, _states, beliefs = hmm.sample_with_beliefs(batch, length, RNG)
    return tokens, beliefs


COMPOSITIONS = {
    "product": lambda: product(mess3(0.05, 0.85), rrxor()),
    "product3": lambda: product(z1r(), noisy_not(0.1), mess3()),
    "interleave": lambda: interleave(mess3(0.05, 0.85), rrxor()),
    "interleave3": lambda: interleave(z1r(), noisy_and(0.2), rrxor()),
    "mixture": lambda: mixture([mess3(0.05, 0.85), rrxor()], [0.3, 0.7]),
    "gated": lambda: gated(z1r(), mess3(), trigger=1),
    "nested": lambda: mixture([interleave(z1r(), rrxor()), product(noisy_not(0.2), z1r())]),
}


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_joint_beliefs_equal_brute_force_over_joint_paths(name):
    hmm = COMPOSITIONS[name]()
    tokens, beliefs = sampled(hmm, batch=4, length=4)
    for seq, b in zip(tokens, beliefs):
        np.testing.assert_allclose(b, brute_beliefs(hmm.T, hmm.init, seq), atol=1e-12)


def test_product_beliefs_are_outer_products_of_factor_beliefs():
    factors = (mess3(0.05, 0.85), rrxor(), noisy_not(0.1))
    hmm = product(*factors)
    assert hmm.vocab_size == 3 * 2 * 2 and hmm.n_states == 3 * 5 * 3
    tokens, beliefs = sampled(hmm, batch=5, length=6)
    local = split_tokens(hmm, tokens)
    for b in range(len(tokens)):
        for t in range(tokens.shape[1]):
            per = [brute_beliefs(f.T, f.init, loc[b, : t + 1])[-1] for f, loc in zip(factors, local)]
            np.testing.assert_allclose(beliefs[b, t], outer(*per), atol=1e-12)
            for got, want in zip(hmm.factor_beliefs(beliefs[b, t]), per):
                np.testing.assert_allclose(got, want, atol=1e-12)
    # joint token = row-major index of the factor tokens
    np.testing.assert_array_equal(np.ravel_multi_index(local, (3, 2, 2)), tokens)


@pytest.mark.parametrize("factors", [(mess3(0.05, 0.85), rrxor()), (z1r(), noisy_and(0.2), rrxor())])
def test_interleave_beliefs_equal_factorwise_brute_force(factors):
    hmm = interleave(*factors)
    n = len(factors)
    tokens, beliefs = sampled(hmm, batch=5, length=7)
    local = split_tokens(hmm, tokens)
    for i, loc in enumerate(local):  # factor i speaks at positions i, i+n, ...: disjoint id blocks
        assert (loc[:, i::n] >= 0).all() and (np.delete(loc, np.s_[i::n], axis=1) == -1).all()
    fb = hmm.factor_beliefs(beliefs)
    for b in range(len(tokens)):
        for t in range(tokens.shape[1]):
            per = [factor_belief_before(f, loc[b], t) for f, loc in zip(factors, local)]
            phase = np.eye(n)[(t + 1) % n]  # whose turn is next
            np.testing.assert_allclose(beliefs[b, t], outer(phase, *per), atol=1e-12)
            for got, want in zip(fb, per):
                np.testing.assert_allclose(got[b, t], want, atol=1e-12)


def test_mixture_beliefs_equal_bayes_over_components():
    comps, w = (mess3(0.05, 0.85), rrxor()), np.array([0.3, 0.7])
    hmm = mixture(comps, w)
    assert hmm.meta["factor_tokens"] == [[0, 1, 2], [3, 4]]
    tokens, beliefs = sampled(hmm, batch=12, length=5)
    local = split_tokens(hmm, tokens)
    fb = hmm.factor_beliefs(beliefs)
    assert len(fb) == 3 and fb[2].shape == (12, 5, 2)
    for b in range(len(tokens)):
        # a sequence never switches component
        assert (local[0][b] >= 0).all() or (local[1][b] >= 0).all()
        for t in range(tokens.shape[1]):
            lik = np.array(
                [
                    brute_prob(c.T, c.init, loc[b, : t + 1]) if (loc[b, : t + 1] >= 0).all() else 0.0
                    for c, loc in zip(comps, local)
                ]
            )
            post = w * lik / (w * lik).sum()
            np.testing.assert_allclose(fb[2][b, t], post, atol=1e-12)
            for i, c in enumerate(comps):
                want = brute_beliefs(c.T, c.init, local[i][b, : t + 1])[-1] if post[i] > 0 else np.zeros(c.n_states)
                np.testing.assert_allclose(fb[i][b, t], want, atol=1e-12)
                np.testing.assert_allclose(beliefs[b, t, [0, 3][i] : [3, 8][i]], post[i] * want, atol=1e-12)
    # before any token the component is unknown: the prior is the weighted stationary mix
    np.testing.assert_allclose(hmm.init, np.concatenate([0.3 * comps[0].init, 0.7 * comps[1].init]))


def test_mixture_components_are_drawn_with_their_weights():
    hmm = mixture([z1r(), rrxor()], [0.2, 0.8])
    tokens, _ = hmm.sample(20_000, 3, np.random.default_rng(0))
    from_b = (split_tokens(hmm, tokens)[1] >= 0).all(axis=1).mean()
    assert abs(from_b - 0.8) < 0.01


def test_gated_b_speaks_only_right_after_the_trigger():
    a, b_proc = z1r(), noisy_not(0.1)
    hmm = gated(a, b_proc, trigger=1)
    tokens, beliefs = sampled(hmm, batch=200, length=12)
    la, lb = split_tokens(hmm, tokens)
    after_trigger = np.zeros_like(tokens, dtype=bool)
    after_trigger[:, 1:] = la[:, :-1] == 1
    np.testing.assert_array_equal(lb >= 0, after_trigger)
    fb = hmm.factor_beliefs(beliefs)
    for s in range(5):
        for t in range(tokens.shape[1]):
            np.testing.assert_allclose(fb[0][s, t], factor_belief_before(a, la[s], t), atol=1e-12)
            np.testing.assert_allclose(fb[1][s, t], factor_belief_before(b_proc, lb[s], t), atol=1e-12)
            mode = np.eye(2)[int(la[s, t] == 1)]  # B's turn exactly after a trigger
            np.testing.assert_allclose(beliefs[s, t], outer(mode, fb[0][s, t], fb[1][s, t]), atol=1e-12)


def test_bad_composition_arguments():
    with pytest.raises(ValueError, match=r"gated: trigger must be a token id of factor a in \[0, 2\)"):
        gated(z1r(), rrxor(), trigger=2)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        mixture([z1r(), rrxor()], [0.5, 0.6])
    with pytest.raises(ValueError, match="weights must be 2 finite non-negative numbers"):
        mixture([z1r(), rrxor()], [1.0])
    with pytest.raises(ValueError, match="factor 1 is a str, not an HMM"):
        product(z1r(), "rrxor")
    with pytest.raises(ValueError, match="needs at least one factor"):
        interleave()


@pytest.mark.parametrize(
    "hmm",
    [
        product(z1r(), noisy_not(0.1)),
        interleave(z1r(), rrxor()),
        interleave(noisy_not(0.3), z1r(), rrxor()),
        mixture([z1r(), noisy_not(0.1)], [0.3, 0.7]),
        mixture([mess3(0.05, 0.85), rrxor()]),
    ],
    ids=lambda h: h.name,
)
def test_compositional_entropies_equal_joint_enumeration(hmm):
    # the closed forms in conditional_entropies against enumerating the joint mixed states
    np.testing.assert_allclose(
        hmm.conditional_entropies(9), enumerate_conditional_entropies(hmm, 9, max_states=10**5), atol=1e-12
    )


def test_composed_entropy_rates():
    a, b = z1r(), rrxor()
    assert np.isclose(product(a, b).entropy_rate(), a.entropy_rate() + b.entropy_rate(), atol=1e-14)
    assert np.isclose(interleave(a, b).entropy_rate(), (a.entropy_rate() + b.entropy_rate()) / 2, atol=1e-14)
    assert np.isclose(mixture([a, b], [0.25, 0.75]).entropy_rate(), 0.25 * a.entropy_rate() + 0.75 * b.entropy_rate())
    # and they are the limits of the joint conditional entropies (averaged over a period of 6)
    H = enumerate_conditional_entropies(interleave(a, b), 120)
    assert abs(H[-6:].mean() - interleave(a, b).entropy_rate()) < 1e-4
    g = gated(a, b, trigger=0)  # no closed form: Monte Carlo over exact beliefs
    Hg = g.conditional_entropies(90)
    assert abs(g.entropy_rate() - Hg[-12:].mean()) < 5e-3


def test_split_tokens_layouts():
    hmm = interleave(z1r(), mess3())
    parts = split_tokens(hmm, np.array([[1, 4, 0, 2]]))
    np.testing.assert_array_equal(parts[0], [[1, -1, 0, -1]])
    np.testing.assert_array_equal(parts[1], [[-1, 2, -1, 0]])
    p = product(z1r(), mess3())
    np.testing.assert_array_equal(np.stack(split_tokens(p, np.array([0, 5]))), [[0, 1], [0, 2]])
    assert p.factor_beliefs(p.init)[1].shape == (3,) and z1r().factor_beliefs(z1r().init) == []
    with pytest.raises(ValueError, match="not a composition"):
        split_tokens(z1r(), np.array([0]))


# -- build_process ---------------------------------------------------------------------------


def test_build_process_from_specs():
    m = build_process({"name": "mess3", "x": 0.05, "a": 0.85})
    np.testing.assert_array_equal(m.T, mess3(0.05, 0.85).T)
    assert build_process({"name": "rrxor"}).n_states == 5
    mix = build_process(
        {"name": "mixture", "components": [{"name": "mess3"}, {"name": "rrxor"}], "weights": [0.5, 0.5]}
    )
    assert mix.meta["kind"] == "mixture" and mix.vocab_size == 5
    inter = build_process({"name": "interleave", "factors": [{"name": "mess3"}, {"name": "rrxor"}]})
    assert inter.meta["factor_tokens"] == [[0, 1, 2], [3, 4]]
    prod = build_process({"name": "product", "factors": [{"name": "z1r"}, {"name": "noisy_and", "eps": 0.1}]})
    assert prod.vocab_size == 4
    g = build_process({"name": "gated", "a": {"name": "z1r"}, "b": {"name": "noisy_not", "eps": 0.05}, "trigger": 0})
    assert g.meta["trigger"] == 0 and g.n_states == 2 * 3 * 3
    nested = build_process(
        {"name": "mixture", "components": [{"name": "interleave", "factors": [{"name": "z1r"}] * 2}, {"name": "rrxor"}]}
    )
    assert nested.factors[0].meta["kind"] == "interleave"
    fm = build_process({"name": "from_matrices", "T": rrxor().T.tolist()})
    np.testing.assert_allclose(fm.init, rrxor().init)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"x": 0.1}, r"process: missing key 'name'; valid names: \['from_matrices', 'mess3', .*'gated', 'interleave'"),
        ({"name": "mess9"}, r"process: unknown process name 'mess9'; valid names: \["),
        (
            {"name": "mess3", "z": 1},
            r"process: mess3: unknown parameter\(s\) \['z'\]; valid signature: mess3\(x: float",
        ),
        (
            {"name": "mixture", "components": [{"name": "rrxor"}, {"name": "mess3", "x": 0.9}]},
            r"process.components\[1\]: mess3: x must be in \[0.0, 0.5\]; got 0.9",
        ),
        (
            {"name": "mixture", "factors": []},
            r"unknown key\(s\) \['factors'\] for 'mixture'; valid keys: \['name', 'components', 'weights'\]",
        ),
        ({"name": "interleave"}, r"missing key\(s\) \['factors'\] for 'interleave'"),
        ({"name": "product", "factors": []}, r"process.factors: must be a non-empty list"),
        (
            {"name": "gated", "a": {"name": "z1r"}, "b": {"name": "z1r"}, "trigger": 7},
            r"process: gated: trigger must be",
        ),
        (
            {"name": "gated", "a": {"name": "z1r"}, "b": "z1r", "trigger": 0},
            r"process.b: a process spec must be a dict",
        ),
        ({"name": "mixture", "components": [{"name": "z1r"}], "weights": [0.2]}, r"mixture: weights must sum to 1"),
        ("mess3", r"a process spec must be a dict with a 'name' key"),
    ],
)
def test_build_process_errors_name_the_bad_key(spec, message):
    with pytest.raises(ValueError, match=message):
        build_process(spec)
