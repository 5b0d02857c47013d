"""The rare-capability study's process and bookkeeping on constructed cases."""

import numpy as np
import pytest

from envs.processes import build_process
from rayexp.studies.rare.positions import rare_positions, trigger_rate

MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}


def test_rare_token_emits_its_token_at_rate_eps_without_moving():
    base = build_process(MESS3)
    hmm = build_process({"name": "rare_token", "base": MESS3, "eps": 0.01})
    assert hmm.vocab_size == 4 and hmm.family == "rare_token" and hmm.params["eps"] == 0.01
    np.testing.assert_allclose(hmm.T[:3], 0.99 * base.T, atol=1e-15)
    np.testing.assert_allclose(hmm.T[3], 0.01 * np.eye(3), atol=1e-15)
    # the share of L-token sequences holding the token is 1 - (1 - eps)^L, whatever the state
    L = 10
    np.testing.assert_allclose(hmm.init @ np.linalg.matrix_power(hmm.T[:3].sum(0), L) @ np.ones(3), 0.99**L)
    tokens, _, _ = hmm.sample_with_beliefs(20000, L, np.random.default_rng(0))
    assert abs((tokens == 3).any(1).mean() - (1 - 0.99**L)) < 0.01
    # the token carries no news about the state: the belief does not move when it is seen
    b = hmm.beliefs(np.array([[0, 3]]))[0]
    np.testing.assert_allclose(b[1], b[0], atol=1e-12)
    never = build_process({"name": "rare_token", "base": MESS3, "eps": 0.0})
    assert (never.T[3] == 0).all()
    with pytest.raises(ValueError, match="eps"):
        build_process({"name": "rare_token", "base": MESS3, "eps": 0.7})
    with pytest.raises(ValueError, match="base"):
        build_process({"name": "rare_token", "base": {"name": "nope"}})


def test_rare_positions_and_trigger_rate_by_hand():
    # A: 0-2, trigger 3, B: 4-6
    tokens = np.array([[0, 3, 4, 1, 2, 3, 5, 0], [1, 1, 3, 6, 3, 4, 2, 2]])
    pos = rare_positions(tokens, 3, np.array([4, 5, 6]))
    got = {k: list(zip(*(a.tolist() for a in v))) for k, v in pos.items()}
    assert got["seen"] == [(0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7)]
    assert got["before"] == [(0, 4), (1, 3)]
    assert got["at"] == [(0, 5), (1, 4)]
    action_tokens = np.array([0, 1, 2, 3, 4, 5, 6])
    assert trigger_rate(np.array([[3, 0], [3, 3]]), action_tokens, 3) == 0.75
