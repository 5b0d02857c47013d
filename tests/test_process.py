"""Primitive processes: validation, registry, exact beliefs vs brute force, sampling statistics,
mixed states, entropies, determinism."""

from __future__ import annotations

import itertools
import pickle

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from process_bruteforce import brute_beliefs, brute_prob
from scipy.stats import chisquare

from envs import _kernels, build_process
from envs.process import HMM, from_matrices, stationary
from envs.processes import PROCESSES, build, mess3, noisy_and, noisy_not, rrxor, z1r

NAMED = {
    "mess3_paper": lambda: mess3(0.05, 0.85),
    "mess3_default": mess3,
    "rrxor": rrxor,
    "z1r": z1r,
    "noisy_not": lambda: noisy_not(0.1),
    "noisy_and": lambda: noisy_and(0.2),
}
LN2 = np.log(2)


def binary_entropy(p: float) -> float:
    return float(-sum(q * np.log(q) for q in (p, 1 - p) if q > 0))


def possible_sequences(hmm: HMM, length: int, limit: int = 300):
    """All token sequences of ``length`` with positive probability (first ``limit``)."""
    out = []
    for seq in itertools.product(range(hmm.vocab_size), repeat=length):
        if brute_prob(hmm.T, hmm.init, seq) > 0:
            out.append(seq)
        if len(out) >= limit:
            break
    return np.array(out, dtype=np.int64)


# -- validation ----------------------------------------------------------------------------------

GOOD = rrxor().T


def _with(x, i, j, value):
    T = np.array(GOOD)
    T[x, i, j] = value
    return T


BAD_MATRICES = [
    (np.ones((2, 3)), None, "shape check: T must have shape"),
    (np.ones((2, 3, 4)) / 8, None, "shape check: T must have shape"),
    (np.zeros((0, 2, 2)), None, "shape check: T needs at least one token"),
    (_with(1, 2, 4, np.nan), None, r"finite check: T\[1\]\[2, 4\] is nan"),
    (_with(0, 0, 1, np.inf), None, r"finite check: T\[0\]\[0, 1\] is inf"),
    (_with(0, 3, 3, -0.1), None, r"non-negative check: T\[0\]\[3, 3\]"),
    (_with(0, 3, 0, 0.5), None, "stochastic check: row 3 of sum_x T\\[x\\] sums to 1.5"),
    (np.stack([np.eye(3) * 0.5, np.eye(3) * 0.5]), None, "no unique stationary distribution"),
    (GOOD, np.ones(4) / 4, r"shape check: init must have shape \(5,\)"),
    (GOOD, [0.5, 0.5, np.nan, 0, 0], r"finite check: init\[2\]"),
    (GOOD, [0.5, 0.7, -0.2, 0, 0], r"non-negative check: init\[2\]"),
    (GOOD, [0.5, 0.6, 0, 0, 0], "stochastic check: init sums to 1.1"),
    ("not a matrix", None, "T is not a numeric array"),
]


@pytest.mark.parametrize(("T", "init", "message"), BAD_MATRICES)
def test_bad_matrices_raise_a_clear_error(T, init, message):
    with pytest.raises(ValueError, match=message):
        from_matrices(T, init, name="bad")


def test_non_unique_stationary_is_fine_with_explicit_init():
    T = np.stack([np.eye(3) * 0.5, np.eye(3) * 0.5])
    hmm = from_matrices(T, [0.2, 0.3, 0.5])
    assert np.allclose(hmm.beliefs(np.array([0, 1]))[-1], [0.2, 0.3, 0.5])


def test_stationary_is_exact_for_periodic_rrxor():
    # an eigensolver is off by ~1e-12 here, enough to split RRXOR's mixed states
    assert np.abs(rrxor().init - np.array([2, 1, 1, 1, 1]) / 6).max() < 1e-15
    assert np.abs(stationary(rrxor().transition) @ rrxor().transition - rrxor().init).max() < 1e-15


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("mess4", {}, r"unknown process 'mess4'; valid: \['from_matrices', 'mess3', 'noisy_and'"),
        ("mess3", {"y": 0.1}, r"unknown parameter\(s\) \['y'\]; valid signature: mess3\(x: float = 0.15, a: float"),
        ("mess3", {"x": 0.6}, r"mess3: x must be in \[0.0, 0.5\]; got 0.6"),
        ("mess3", {"x": -0.01}, r"mess3: x must be in \[0.0, 0.5\]"),
        ("mess3", {"a": 1.5}, r"mess3: a must be in \[0.0, 1.0\]"),
        ("mess3", {"a": float("nan")}, r"mess3: a must be in"),
        ("mess3", {"x": "0.1"}, r"mess3: x must be a number"),
        ("mess3", {"x": True}, r"mess3: x must be a number"),
        ("noisy_not", {"eps": 1.2}, r"noisy_not: eps must be in \[0.0, 1.0\]"),
        ("noisy_and", {"eps": -1}, r"noisy_and: eps must be in \[0.0, 1.0\]"),
        ("rrxor", {"p": 0.5}, r"valid signature: rrxor\(\)"),
        ("from_matrices", {"init": [1.0]}, r"missing a required argument: 'T'"),
    ],
)
def test_bad_names_and_parameters_list_what_is_valid(name, params, message):
    with pytest.raises(ValueError, match=message):
        build(name, **params)


def test_registry_builds_every_process_with_defaults():
    for name, factory in PROCESSES.items():
        if name != "from_matrices":
            hmm = factory()
            assert isinstance(hmm, HMM) and hmm.n_states >= 1 and len(hmm.token_names) == hmm.vocab_size


def test_mess3_edge_parameters_are_valid():
    for x, a in [(0.0, 0.85), (0.5, 0.0), (0.5, 1.0), (0.0, 1 / 3)]:
        hmm = mess3(x, a)
        _tokens, _, beliefs = hmm.sample_with_beliefs(4, 20, np.random.default_rng(0))
        assert np.allclose(beliefs.sum(-1), 1.0)


# -- exact beliefs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NAMED))
def test_beliefs_equal_brute_force_on_all_short_sequences(name):
    hmm = NAMED[name]()
    for length in (1, 3, 5):
        seqs = possible_sequences(hmm, length, limit=250)
        got = hmm.beliefs(seqs)  # (N, L, S)
        for seq, b in zip(seqs, got):
            np.testing.assert_allclose(b, brute_beliefs(hmm.T, hmm.init, seq), atol=1e-12)


@st.composite
def random_hmms(draw):
    S = draw(st.integers(1, 4))
    V = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw = rng.random((V, S, S)) * (rng.random((V, S, S)) > draw(st.sampled_from([0.0, 0.3, 0.6])))
    raw[0, np.arange(S), rng.integers(0, S, S)] += 0.05  # every state can emit something
    T = raw / raw.sum(axis=(0, 2))[None, :, None]
    init = rng.dirichlet(np.ones(S)) if draw(st.booleans()) else None
    try:
        return from_matrices(T, init), seed
    except ValueError:  # no unique stationary distribution: give one explicitly
        return from_matrices(T, rng.dirichlet(np.ones(S))), seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_hmms(), st.integers(1, 5))
def test_beliefs_equal_brute_force_on_random_processes(hmm_seed, length):
    hmm, seed = hmm_seed
    tokens, _, fused = hmm.sample_with_beliefs(3, length, np.random.default_rng(seed))
    for seq, b in zip(tokens, fused):
        np.testing.assert_allclose(b, brute_beliefs(hmm.T, hmm.init, seq), atol=1e-12)
    np.testing.assert_allclose(hmm.beliefs(tokens), fused, atol=1e-14)
    np.testing.assert_allclose(_kernels.beliefs_numpy(hmm, tokens), fused, atol=1e-14)


def test_beliefs_accept_any_leading_shape_and_empty_sequences():
    hmm = mess3()
    tokens = np.random.default_rng(0).integers(0, 3, (2, 3, 7))
    assert hmm.beliefs(tokens).shape == (2, 3, 7, 3)
    np.testing.assert_array_equal(hmm.beliefs(tokens)[1, 2], hmm.beliefs(tokens[1, 2]))
    assert hmm.beliefs(np.zeros((4, 0), dtype=int)).shape == (4, 0, 3)


def test_impossible_or_out_of_range_tokens_raise():
    with pytest.raises(ValueError, match=r"sequence 1 has probability zero at position 2"):
        z1r().beliefs(np.array([[0, 1, 0], [0, 0, 0]]))  # Z1R never emits three 0s in a row
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 2\)"):
        rrxor().beliefs(np.array([0, 2]))


def test_next_token_probs():
    hmm = mess3(0.05, 0.85)
    np.testing.assert_allclose(hmm.next_token_probs(hmm.init), np.full(3, 1 / 3))
    b = hmm.beliefs(np.array([0, 0, 1]))[-1]
    expected = [brute_prob(hmm.T, hmm.init, [0, 0, 1, x]) / brute_prob(hmm.T, hmm.init, [0, 0, 1]) for x in range(3)]
    np.testing.assert_allclose(hmm.next_token_probs(b), expected, atol=1e-14)


# -- sampling ------------------------------------------------------------------------------------


def test_mess3_transitions_match_chi_square():
    hmm = mess3(0.05, 0.85)
    tokens, states = hmm.sample(60_000, 3, np.random.default_rng(1234))
    # one (state, token, next state) triple per sequence, so the draws are independent
    i, x, j = states[:, 2], tokens[:, 2], states[:, 3]
    for s in range(3):
        mine = i == s
        counts = np.bincount(x[mine] * 3 + j[mine], minlength=9)
        expected = hmm.T[:, s, :].ravel() * mine.sum()
        assert chisquare(counts, expected).pvalue > 1e-3, (s, counts, expected)
    # observable token pairs against the exact pair distribution of the stationary process
    pairs = np.bincount(tokens[:, 1] * 3 + tokens[:, 2], minlength=9)
    exact = np.array([[hmm.init @ hmm.T[a] @ hmm.T[b].sum(axis=1) for b in range(3)] for a in range(3)]).ravel()
    assert chisquare(pairs, exact * len(tokens)).pvalue > 1e-3


def test_tokens_do_not_encode_states():
    hmm = mess3(0.05, 0.85)
    tokens, states, fused = hmm.sample_with_beliefs(4000, 16, np.random.default_rng(7))
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < hmm.vocab_size
    # a state emits "its own" token only with probability a*y + 2*b*x = 0.7725: tokens are not states
    agree = (tokens == states[:, :-1]).mean()
    assert abs(agree - np.mean([hmm.T[i, i].sum() for i in range(3)])) < 0.01 and abs(agree - 0.7725) < 0.01
    # beliefs depend on tokens alone: recomputing them without the states gives the same numbers
    np.testing.assert_array_equal(hmm.beliefs(tokens), fused)


def test_initial_states_follow_init_and_runs_are_deterministic():
    hmm = rrxor()
    t1, s1 = hmm.sample(20_000, 5, np.random.default_rng(3))
    assert chisquare(np.bincount(s1[:, 0], minlength=5), hmm.init * 20_000).pvalue > 1e-3
    t2, s2, b2 = hmm.sample_with_beliefs(20_000, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(s1, s2)
    _t3, _s3, b3 = hmm.sample_with_beliefs(20_000, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(b2, b3)
    t4, _ = hmm.sample(20_000, 5, np.random.default_rng(4))
    assert not np.array_equal(t1, t4)


@pytest.mark.parametrize("hmm", [mess3(), rrxor()], ids=lambda h: h.name)  # dense and sparse kernels
def test_results_do_not_depend_on_thread_count_or_batch_split(hmm):
    batch, length = 512, 64
    assert batch * length >= _kernels.PARALLEL_MIN_TOKENS  # the parallel path
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = hmm.sample_with_beliefs(batch, length, np.random.default_rng(5))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = hmm.sample_with_beliefs(batch, length, np.random.default_rng(5))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    # small batches take the serial loop: same numbers, sequence by sequence
    np.testing.assert_array_equal(np.concatenate([hmm.beliefs(t[None]) for t in one[0][:20]]), one[2][:20])
    np.testing.assert_array_equal(hmm.sample(batch, length, np.random.default_rng(5))[0], one[0])


@pytest.mark.parametrize("name", sorted(NAMED))
def test_numpy_baseline_matches_compiled_kernel(name):
    hmm = NAMED[name]()
    fast = hmm.sample_with_beliefs(50, 20, np.random.default_rng(11))
    slow = _kernels.sample_with_beliefs_numpy(hmm, 50, 20, np.random.default_rng(11))
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_allclose(fast[2], slow[2], atol=1e-14)


def test_sampled_sequences_are_possible_and_bad_arguments_raise():
    hmm = z1r()
    tokens, _states = hmm.sample(200, 9, np.random.default_rng(0))
    assert all(brute_prob(hmm.T, hmm.init, seq) > 0 for seq in tokens[:50])
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        hmm.sample(2, 3, 0)
    with pytest.raises(ValueError, match="batch and length must be >= 0"):
        hmm.sample(-1, 3, np.random.default_rng(0))


def test_hmm_pickles_with_its_behaviour():
    for hmm in (
        mess3(0.05, 0.85),
        build_process({"name": "interleave", "factors": [{"name": "z1r"}, {"name": "rrxor"}]}),
    ):
        hmm.sample(2, 2, np.random.default_rng(0))  # fills the cache
        clone = pickle.loads(pickle.dumps(hmm))
        tokens = hmm.sample(3, 6, np.random.default_rng(1))[0]
        np.testing.assert_array_equal(clone.beliefs(tokens), hmm.beliefs(tokens))
        assert clone.meta == hmm.meta and clone.name == hmm.name


def test_demo_runs_through_its_entry_point(capsys):
    from envs.__main__ import main

    assert main(["--batch", "16", "--length", "6"]) == 0
    out = capsys.readouterr().out
    assert "mixture(mess3(x=0.05, a=0.85), rrxor" in out and "optimal_loss" in out and "entropy_rate" in out
    assert main(["--spec", '{"name": "mess4"}']) == 2
    assert "unknown process name 'mess4'" in capsys.readouterr().err


# -- mixed states and entropies ------------------------------------------------------------------


def test_rrxor_mixed_state_presentation_has_36_beliefs():
    counts = [len(rrxor().mixed_states(d)[0]) for d in range(12)]
    # 1 root, then 2, 4, 8 new beliefs...; complete at depth 6 and closed under every token after
    assert counts[:7] == [1, 3, 7, 15, 27, 34, 36]
    assert set(counts[6:]) == {36}
    beliefs, probs = rrxor().mixed_states(10)
    assert np.isclose(probs.sum(), 1.0) and (probs > 0).all()
    assert np.allclose(beliefs.sum(axis=1), 1.0)
    for b in beliefs:  # closed: every successor of a mixed state is again one of the 36
        for x in range(2):
            v = b @ rrxor().T[x]
            if v.sum() > 0:
                assert np.abs(beliefs - v / v.sum()).max(axis=1).min() < 1e-12


def test_mixed_states_match_enumerated_sequences():
    hmm = mess3(0.05, 0.85)
    beliefs, probs = hmm.mixed_states(3)
    assert len(beliefs) == 1 + 3 + 9 + 27  # Mess3 never merges: every prefix is its own belief
    # weight of the root is 1/(depth+1); of a depth-3 belief, P(prefix)/(depth+1)
    root = np.argmin(np.abs(beliefs - hmm.init).max(axis=1))
    assert np.isclose(probs[root], 1 / 4)
    b = hmm.beliefs(np.array([2, 0, 1]))[-1]
    k = np.argmin(np.abs(beliefs - b).max(axis=1))
    assert np.isclose(probs[k], brute_prob(hmm.T, hmm.init, [2, 0, 1]) / 4)
    with pytest.raises(ValueError, match="exceed max_states=50"):
        hmm.mixed_states(5, max_states=50)


def test_conditional_entropies_equal_brute_force():
    for hmm in (mess3(0.05, 0.85), noisy_and(0.2), z1r()):
        H = hmm.conditional_entropies(5)
        # H(X_t | X_<t) = H(X_0..X_t) - H(X_0..X_{t-1}), block entropies by brute force
        block = [0.0]
        for n in range(1, 6):
            probs = [brute_prob(hmm.T, hmm.init, s) for s in itertools.product(range(hmm.vocab_size), repeat=n)]
            block.append(-sum(p * np.log(p) for p in probs if p > 0))
        np.testing.assert_allclose(H, np.diff(block), atol=1e-12)


@pytest.mark.parametrize(
    ("hmm", "rate"),
    [
        (rrxor(), 2 / 3 * LN2),
        (z1r(), LN2 / 3),
        (noisy_not(0.1), (LN2 + binary_entropy(0.1)) / 2),
        (noisy_and(0.2), (2 * LN2 + binary_entropy(0.2)) / 3),
    ],
)
def test_entropy_rate_of_unifilar_processes_is_exact(hmm, rate):
    assert abs(hmm.entropy_rate() - rate) < 1e-14
    # the conditional entropies approach it from above (period-2 and -3 wiggles averaged out);
    # slowly where the phase is only learned statistically (excess at t = 60: noisy NOT ~7e-5,
    # noisy AND ~4e-3), so a model's loss gap should use conditional_entropies, not this rate
    H = hmm.conditional_entropies(60)
    excess = H[-6:].mean() - rate
    assert 0 <= excess < 1e-2
    assert excess <= H[-18:-12].mean() - rate


def test_mess3_entropies_agree_across_methods():
    hmm = mess3(0.05, 0.85)
    exact = hmm.conditional_entropies(9, max_states=10**5)  # 3^8 beliefs: exact
    coarse = hmm.conditional_entropies(40, max_states=500)
    mc = hmm.conditional_entropies(40, max_states=500, beyond="mc", n_samples=16_384)
    np.testing.assert_allclose(coarse[:6], exact[:6], atol=1e-12)  # 3^5 < 500: still exact
    assert (coarse[6:9] >= exact[6:9] - 1e-12).all()  # coarsening only forgets: an upper bound
    assert np.abs(coarse[6:9] - exact[6:9]).max() < 1e-4
    default = hmm.conditional_entropies(40)  # coarsened at 5k beliefs per level
    assert np.all(np.diff(default) < 2e-5)  # a stationary process: non-increasing up to the bound's slack
    assert np.abs(coarse - default).max() < 5e-4
    assert np.abs(mc[6:] - default[6:]).max() < 5e-3
    assert abs(hmm.entropy_rate() - default[-1]) < 1e-3


# -- goldens -------------------------------------------------------------------------------------

GOLDEN = __import__("pathlib").Path(__file__).parent / "goldens" / "process_goldens.npz"


def make_goldens() -> dict[str, np.ndarray]:
    beliefs, probs = rrxor().mixed_states(10)
    tokens = np.random.default_rng(20240501).integers(0, 3, 64)
    return {
        "rrxor_msp_beliefs": beliefs,
        "rrxor_msp_probs": probs,
        "mess3_tokens": tokens,
        "mess3_beliefs": mess3(0.05, 0.85).beliefs(tokens),
    }


def test_goldens_are_unchanged():
    """Regenerate (only for an intended change of the science) with
    ``python -c "import sys; sys.path.insert(0, 'tests'); import test_process as t; t.write_goldens()"``."""
    gold = np.load(GOLDEN)
    now = make_goldens()
    np.testing.assert_allclose(now["rrxor_msp_beliefs"], gold["rrxor_msp_beliefs"], atol=1e-12)
    np.testing.assert_allclose(now["rrxor_msp_probs"], gold["rrxor_msp_probs"], atol=1e-12)
    np.testing.assert_array_equal(now["mess3_tokens"], gold["mess3_tokens"])
    np.testing.assert_allclose(mess3(0.05, 0.85).beliefs(gold["mess3_tokens"]), gold["mess3_beliefs"], atol=1e-12)


def write_goldens() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez(GOLDEN, **make_goldens())
