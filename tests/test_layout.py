"""Composition layouts (envs.layout): token ownership, factor states against the joint state index
and the factors' own dynamics, factor beliefs against brute force over each factor's own tokens,
split/rebuild round trips, nesting, pickling; and processes recognised by what the registry built,
not by their matrices."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest
from process_bruteforce import brute_beliefs, brute_prob

from envs import build_process, from_matrices
from envs.compose import gated, interleave, mixture, product
from envs.layout import GatedLayout, InterleaveLayout, Layout, MixtureLayout, ProductLayout, max_wait
from envs.processes import (
    NOISY_AND_EMITS,
    NOISY_AND_STATES,
    PROCESSES,
    build,
    mess3,
    noisy_and,
    noisy_and_states,
    noisy_not,
    rrxor,
    z1r,
)
from envs.rewards import make_reward

LAYOUTS = {
    "product": (lambda: product(z1r(), noisy_not(0.1), mess3()), ProductLayout),
    "interleave": (lambda: interleave(mess3(0.05, 0.85), rrxor(), z1r()), InterleaveLayout),
    "mixture": (lambda: mixture([mess3(0.05, 0.85), rrxor(), z1r()], [0.2, 0.5, 0.3]), MixtureLayout),
    "gated": (lambda: gated(z1r(), noisy_not(0.1), trigger=1), GatedLayout),
}


def sample(hmm, batch=6, length=7, seed=0):
    return hmm.sample_with_beliefs(batch, length, np.random.default_rng(seed))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_composition_carries_its_layout(name):
    build_hmm, cls = LAYOUTS[name]
    hmm = build_hmm()
    layout = hmm.layout
    assert type(layout) is cls and layout.kind == name and hmm.meta["kind"] == name
    assert layout.factors == hmm.factors and layout.n_factors == len(hmm.factors)
    assert (layout.vocab_size, layout.n_states) == (hmm.vocab_size, hmm.n_states)
    assert layout.exclusive == (name == "mixture") and layout.disjoint == (name != "product")
    assert z1r().layout is None and z1r().factors == () and z1r().meta == {}


@pytest.mark.parametrize("name", ["interleave", "mixture", "gated"])
def test_disjoint_layouts_give_each_factor_one_block_of_tokens(name):
    layout = LAYOUTS[name][0]().layout
    owner = layout.token_owner  # (V,)
    for i, f in enumerate(layout.factors):
        owned = layout.factor_tokens[i]
        assert owned == list(range(layout.token_offsets[i], layout.token_offsets[i] + f.vocab_size))
        assert (owner[owned] == i).all() and (owner == i).sum() == f.vocab_size
        np.testing.assert_array_equal(layout.owns(i), owner == i)
        assert [layout.global_token(i, x) for x in range(f.vocab_size)] == owned


def test_product_tokens_carry_every_factor():
    layout = LAYOUTS["product"][0]().layout
    assert layout.token_shape == (2, 2, 3) and all(layout.owns(i).all() for i in range(3))
    for what in ("factor_tokens", "token_owner", "token_offsets"):
        with pytest.raises(ValueError, match="every joint token carries one token of every factor"):
            getattr(layout, what)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_split_tokens_round_trip(name):
    hmm = LAYOUTS[name][0]()
    layout = hmm.layout
    tokens, _, _ = sample(hmm, batch=20, length=9)
    local = layout.split_tokens(tokens)
    assert all(loc.shape == tokens.shape and loc.dtype == np.int64 for loc in local)
    for f, loc in zip(layout.factors, local):
        assert loc.max() < f.vocab_size
    if layout.disjoint:
        speaks = np.stack([loc >= 0 for loc in local])  # (n, B, L)
        assert (speaks.sum(axis=0) == 1).all()  # exactly one factor emits each token
        rebuilt = sum(np.where(loc >= 0, loc + layout.token_offsets[i], 0) for i, loc in enumerate(local))
    else:
        rebuilt = np.ravel_multi_index(local, layout.token_shape)
    np.testing.assert_array_equal(rebuilt, tokens)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_factor_states_index_the_joint_state(name):
    hmm = LAYOUTS[name][0]()
    layout = hmm.layout
    per = layout.factor_states(np.arange(hmm.n_states))  # [(S,)]
    if isinstance(layout, MixtureLayout):
        for i, (f, off) in enumerate(zip(layout.factors, layout.state_offsets)):
            want = np.full(hmm.n_states, -1)
            want[off : off + f.n_states] = np.arange(f.n_states)
            np.testing.assert_array_equal(per[i], want)
    else:
        for j in range(hmm.n_states):
            idx = np.unravel_index(j, layout.state_shape)
            assert [int(p[j]) for p in per] == [int(k) for k in idx[layout.phase_axes :]]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_factor_states_follow_each_factors_own_dynamics(name):
    """Whenever a factor emits, its own T moves its own state; when silent, its state holds."""
    hmm = LAYOUTS[name][0]()
    layout = hmm.layout
    tokens, states, _ = sample(hmm, batch=30, length=10, seed=1)
    for f, loc, st in zip(layout.factors, layout.split_tokens(tokens), layout.factor_states(states)):
        before, after = st[:, :-1], st[:, 1:]  # (B, L)
        speaks = loc >= 0
        assert (f.T[loc[speaks], before[speaks], after[speaks]] > 0).all()
        inside = before >= 0  # a mixture's other components are never in this factor
        np.testing.assert_array_equal(before[~speaks & inside], after[~speaks & inside])


@pytest.mark.parametrize("name", ["product", "interleave", "gated"])
def test_factor_beliefs_are_the_outer_product_marginals(name):
    hmm = LAYOUTS[name][0]()
    layout = hmm.layout
    tokens, _, beliefs = sample(hmm, batch=5, length=8, seed=2)
    fb = layout.factor_beliefs(beliefs)
    local = layout.split_tokens(tokens)
    for b in range(len(tokens)):
        for t in range(tokens.shape[1]):
            per = []
            for i, f in enumerate(layout.factors):
                own = [int(x) for x in local[i][b, : t + 1] if x >= 0]
                want = brute_beliefs(f.T, f.init, own)[-1] if own else f.init
                np.testing.assert_allclose(fb[i][b, t], want, atol=1e-12)
                per.append(want)
            joint = beliefs[b, t].reshape(layout.state_shape)
            if layout.phase_axes:  # whose turn it is is known exactly from the tokens
                phase = np.flatnonzero(joint.sum(axis=tuple(range(1, joint.ndim))) > 1e-12)
                assert phase.size == 1
                joint = joint[phase[0]]
            np.testing.assert_allclose(joint, functools.reduce(np.multiply.outer, per), atol=1e-12)


def test_mixture_factor_beliefs_are_conditional_with_a_posterior():
    hmm = LAYOUTS["mixture"][0]()
    layout = hmm.layout
    tokens, _, beliefs = sample(hmm, batch=12, length=5, seed=3)
    fb = layout.factor_beliefs(beliefs)
    local = layout.split_tokens(tokens)
    assert len(fb) == layout.n_factors + 1
    for b in range(len(tokens)):
        for t in range(tokens.shape[1]):
            lik = np.array(
                [
                    brute_prob(f.T, f.init, loc[b, : t + 1]) if (loc[b, : t + 1] >= 0).all() else 0.0
                    for f, loc in zip(layout.factors, local)
                ]
            )
            post = layout.weights * lik / (layout.weights * lik).sum()
            np.testing.assert_allclose(fb[-1][b, t], post, atol=1e-12)
            for i, f in enumerate(layout.factors):
                want = brute_beliefs(f.T, f.init, local[i][b, : t + 1])[-1] if post[i] > 0 else np.zeros(f.n_states)
                np.testing.assert_allclose(fb[i][b, t], want, atol=1e-12)


def test_nested_compositions_read_through_their_own_layouts():
    inner_i, inner_p = interleave(z1r(), rrxor()), product(noisy_not(0.2), z1r())
    hmm = mixture([inner_i, inner_p], [0.4, 0.6])
    tokens, _, beliefs = sample(hmm, batch=40, length=6, seed=4)
    outer_local = hmm.layout.split_tokens(tokens)
    outer_fb = hmm.factor_beliefs(beliefs)
    for c, inner in enumerate((inner_i, inner_p)):
        rows = (outer_local[c] >= 0).all(axis=1)  # sequences drawn from component c
        assert rows.any()
        loc = outer_local[c][rows]  # (n, L) the inner composition's own tokens
        leaves = inner.layout.split_tokens(loc)
        leaf_fb = inner.layout.factor_beliefs(outer_fb[c][rows])  # beliefs of the leaves, two levels down
        for k, leaf in enumerate(inner.factors):
            for b in range(len(loc)):
                for t in range(loc.shape[1]):
                    own = [int(x) for x in leaves[k][b, : t + 1] if x >= 0]
                    want = brute_beliefs(leaf.T, leaf.init, own)[-1] if own else leaf.init
                    np.testing.assert_allclose(leaf_fb[k][b, t], want, atol=1e-12)
    # a mixture nested inside an interleave: its factor-0 beliefs carry the mixture's own posterior
    nest = interleave(mixture([z1r(), rrxor()], [0.5, 0.5]), mess3())
    _, _, beliefs = sample(nest, batch=4, length=5, seed=5)
    fb_mix = nest.factor_beliefs(beliefs)[0]
    assert fb_mix.shape == (4, 5, 3 + 5) and len(nest.factors[0].factor_beliefs(fb_mix)) == 3
    assert max_wait(nest, 0) == 2 and max_wait(hmm, 0) is None


def test_max_wait_reads_the_joint_support():
    assert [max_wait(interleave(z1r(), rrxor(), mess3()), i) for i in range(3)] == [3, 3, 3]
    assert max_wait(product(z1r(), rrxor()), 1) == 1
    g = gated(mess3(), rrxor(), trigger=0)  # mess3 can avoid its token 0 for arbitrarily long
    assert max_wait(g, 0) == 2 and max_wait(g, 1) is None
    # but z1r emits its token 0 once every three tokens, so B's wait is bounded: 3 of A's, then B
    assert max_wait(gated(z1r(), rrxor(), trigger=0), 1) == 4
    always = from_matrices([[[1.0]]], name="always")  # A always emits the trigger: B every other step
    assert max_wait(gated(always, rrxor(), trigger=0), 1) == 2


def test_layouts_pickle_with_the_hmm():
    for build_hmm, cls in LAYOUTS.values():
        hmm = build_hmm()
        clone = pickle.loads(pickle.dumps(hmm))
        assert type(clone.layout) is cls and clone.meta == hmm.meta
        assert [f.name for f in clone.factors] == [f.name for f in hmm.factors]
        _, _, beliefs = sample(hmm, batch=2, length=3)
        for a, b in zip(clone.factor_beliefs(beliefs), hmm.factor_beliefs(beliefs)):
            np.testing.assert_array_equal(a, b)


def test_from_matrices_checks_a_layout_against_the_matrices():
    with pytest.raises(ValueError, match="layout has 4 tokens and 30 states; T has 2 and 5"):
        from_matrices(rrxor().T, layout=InterleaveLayout((z1r(), rrxor())))
    with pytest.raises(ValueError, match="layout must be an envs.layout.Layout"):
        from_matrices(rrxor().T, layout={"kind": "product"})
    assert isinstance(interleave(z1r(), z1r()).layout, Layout)


# -- what the registry built ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(PROCESSES) - {"from_matrices"}))
def test_registry_records_what_it_built_and_that_rebuilds_it(name):
    hmm = build(name)
    assert hmm.family == name
    again = build_process({"name": hmm.family, **hmm.params})
    np.testing.assert_array_equal(again.T, hmm.T)
    assert again.name == hmm.name


def test_noisy_and_is_recognised_by_the_registry_not_by_its_matrices():
    gate = noisy_and(0.2)
    assert gate.family == "noisy_and" and gate.params == {"eps": 0.2}
    assert make_reward("implies", gate).action_tokens.tolist() == [0, 1]
    same = from_matrices(gate.T, gate.init, name="lookalike")
    np.testing.assert_array_equal(same.T, gate.T)
    assert same.family == "" and same.params == {}
    with pytest.raises(ValueError, match="needs noisy_and"):
        make_reward("implies", same)
    with pytest.raises(ValueError, match="needs noisy_and"):
        make_reward("implies", interleave(noisy_not(), same))
    assert make_reward("implies", mixture([same, gate]))._gate == 1
    # a composition is not a gate even when its one factor is
    assert interleave(gate).family == "" and make_reward("implies", interleave(gate))._gate == 0


def test_noisy_and_phases_by_name_match_its_matrices():
    gate = noisy_and(0.1)
    assert sorted(NOISY_AND_STATES.values()) == list(range(gate.n_states))
    assert sorted(s for names in NOISY_AND_EMITS.values() for s in names) == sorted(NOISY_AND_STATES)
    step = gate.T.sum(axis=0) > 0  # (S, S)
    for bit, nxt in (("x", "y"), ("y", "out"), ("out", "x")):
        src, dst = noisy_and_states(bit), noisy_and_states(nxt)
        assert step[np.ix_(src, dst)].any(axis=1).all()  # every state of this phase moves to the next phase
        assert not np.delete(step[src], dst, axis=1).any()  # and nowhere else
    # the output bit is the AND of the inputs with probability 1 - eps
    P0, P1 = NOISY_AND_STATES["P0"], NOISY_AND_STATES["P1"]
    assert gate.T[0, P0].sum() == pytest.approx(0.9) and gate.T[1, P1].sum() == pytest.approx(0.9)
