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
