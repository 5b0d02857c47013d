"""Transformer and checkpoint behaviour on tiny models (seconds on one core)."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.transformer import Transformer, TransformerConfig

TINY = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 4, "d_mlp": 32, "n_ctx": 8, "d_vocab": 5}


@pytest.fixture(params=["relu", "gelu"])
def model(request) -> Transformer:
    return Transformer(TransformerConfig(**TINY, act=request.param), seed=0).eval()


def tokens(batch=3, length=8, seed=1):
    return torch.randint(0, TINY["d_vocab"], (batch, length), generator=torch.Generator().manual_seed(seed))


def test_causal_changing_token_t_never_changes_earlier_logits(model):
    base = tokens()
    with torch.no_grad():
        ref = model(base)
        for t in range(base.shape[1]):
            changed = base.clone()
            changed[:, t] = (changed[:, t] + 1) % TINY["d_vocab"]
            out = model(changed)
            assert torch.equal(out[:, :t], ref[:, :t]), f"position < {t} saw token {t}"
            assert not torch.allclose(out[:, t], ref[:, t]), "token t must influence its own position"


def test_hook_names_and_shapes(model):
    names = model.hook_names
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized"
    for i in range(TINY["n_layers"]):
        for h in ("resid_pre", "resid_mid", "resid_post"):
            assert f"blocks.{i}.hook_{h}" in names
    assert len(names) == 2 + 3 * TINY["n_layers"]
    x = tokens(batch=2, length=6)
    logits, cache = model.run_with_cache(x)
    assert list(cache) == names
    assert logits.shape == (2, 6, TINY["d_vocab"])
    for name, act in cache.items():
        assert act.shape == (2, 6, TINY["d_model"]), name
    with pytest.raises(ValueError, match="unknown hook"):
        model.run_with_cache(x, names=["blocks.9.hook_resid_post"])


def test_run_with_cache_equals_forward_and_trunk(model):
    x = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names=["blocks.1.hook_resid_post", "ln_final.hook_normalized"])
        assert set(cache) == {"blocks.1.hook_resid_post", "ln_final.hook_normalized"}
        assert torch.equal(logits, model(x))
        assert torch.equal(cache["ln_final.hook_normalized"], model.trunk(x))
        assert torch.equal(model.unembed(cache["ln_final.hook_normalized"]), logits)
        # the residual stream is the running sum: resid_pre of block 1 is resid_post of block 0
        _, full = model.run_with_cache(x)
        assert torch.equal(full["blocks.1.hook_resid_pre"], full["blocks.0.hook_resid_post"])


def test_run_with_hooks_edits_the_forward_pass(model):
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model.run_with_hooks(x, {"blocks.0.hook_resid_mid": lambda a: None}), model(x))
        zeroed = model.run_with_hooks(x, {"ln_final.hook_normalized": torch.zeros_like})
        assert torch.allclose(zeroed, model.unembed_proj.bias.expand_as(zeroed))


def test_seeded_init_is_reproducible_and_config_rejects_unknown_keys():
    a = Transformer(TransformerConfig(**TINY), seed=3)
    b = Transformer(TransformerConfig(**TINY), seed=3)
    c = Transformer(TransformerConfig(**TINY), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.blocks[0].mlp.fc_in.weight, c.blocks[0].mlp.fc_in.weight)
    with pytest.raises(ValueError):
        TransformerConfig(**TINY, n_layer=3)
    with pytest.raises(ValueError, match="n_ctx"):
        a(torch.zeros(1, TINY["n_ctx"] + 1, dtype=torch.long))


def test_checkpoint_round_trip_weights_only(model, tmp_path):
    extra = {"step": 7, "process": {"name": "mess3", "x": 0.05, "a": 0.85}, "loss": 0.9, "hist": [1.0, 2.0]}
    path = save_checkpoint(tmp_path / "ck" / "m.pt", model, extra)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"config", "state_dict", "extra"}
    loaded, got = load_checkpoint(path)
    assert got == extra and loaded.cfg == model.cfg
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(TypeError, match="builtins"):
        save_checkpoint(tmp_path / "bad.pt", model, {"obj": object()})
