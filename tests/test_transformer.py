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


def _sdpa_reference(qkv: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    B, T, _ = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_heads, d_head).permute(2, 0, 3, 1, 4).unbind(0)
    z = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return z.transpose(1, 2).reshape(B, T, n_heads * d_head)


@pytest.mark.parametrize("B,T,H,E", [(7, 10, 4, 16), (3, 1, 1, 8), (5, 13, 2, 5), (64, 4, 3, 32)])
def test_cpu_attention_kernels_match_float64_sdpa_values_and_gradients(B, T, H, E):
    """float32 kernels against SDPA in float64, with float32 SDPA's own error as the yardstick."""
    from models._attention import causal_attention

    gen = torch.Generator().manual_seed(B * T + H)
    x64 = 3 * torch.randn(B, T, 3 * H * E, generator=gen, dtype=torch.float64)  # large logits: softmax saturates
    dz = torch.randn(B, T, H * E, generator=gen, dtype=torch.float64)
    ours_in, sdpa32_in, ref_in = (x64.float().requires_grad_(), x64.float().requires_grad_(), x64.requires_grad_())
    ours, sdpa32, ref = causal_attention(ours_in, H, E), _sdpa_reference(sdpa32_in, H, E), _sdpa_reference(ref_in, H, E)
    ours.backward(dz.float())
    sdpa32.backward(dz.float())
    ref.backward(dz)
    for got, f32, want in ((ours, sdpa32, ref), (ours_in.grad, sdpa32_in.grad, ref_in.grad)):
        err = (got.double() - want).abs().max().item()
        assert err <= 2 * (f32.double() - want).abs().max().item() + 1e-6, err
        torch.testing.assert_close(got.double(), want.detach(), atol=2e-5, rtol=1e-4)
    # a non-contiguous input (a slice) and no-grad mode give the same values
    wide = torch.cat([x64.detach().float(), torch.zeros(B, T, 1)], dim=-1)[..., :-1]
    with torch.no_grad():
        torch.testing.assert_close(causal_attention(wide, H, E), ours.detach(), atol=0, rtol=0)


def test_cpu_attention_picks_serial_kernels_for_one_thread_or_small_batches(monkeypatch):
    """One torch thread (a 1-CPU trial) or a small batch: serial kernels; big batches: parallel ones.
    Every choice gives the same bits (one thread per sequence, same arithmetic)."""
    import numba

    import models._attention as attention

    ran: list[str] = []
    monkeypatch.setattr(attention, "launch", lambda kernel, *args: (ran.append(kernel.__name__), kernel(*args)))
    old = torch.get_num_threads()
    big = torch.randn(512, 10, 3 * 4 * 16, generator=torch.Generator().manual_seed(0)).requires_grad_()
    small = big[:8].detach().clone().requires_grad_()
    try:
        outputs = []
        for threads, x in ((1, big), (min(2, numba.config.NUMBA_NUM_THREADS), big), (2, small)):
            torch.set_num_threads(threads)
            x.grad = None
            z = attention.causal_attention(x, 4, 16)
            z.sum().backward()
            outputs.append((z.detach()[:8], x.grad[:8].clone()))
    finally:
        torch.set_num_threads(old)
    parallel = numba.config.NUMBA_NUM_THREADS > 1
    assert ran == ["_forward_ser", "_backward_ser"] + (
        ["_forward_par", "_backward_par"] if parallel else ["_forward_ser", "_backward_ser"]
    ) + ["_forward_ser", "_backward_ser"]
    for z, g in outputs[1:]:
        assert torch.equal(z, outputs[0][0]) and torch.equal(g, outputs[0][1])


def test_cpu_attention_on_infinite_weights_gives_nan_not_an_exception():
    """An SGLD chain that diverges drives weights to inf; attention must then give a non-finite output,
    which the LLC diagnostics flag as diverged, not raise ZeroDivisionError inside the kernel."""
    from models._attention import causal_attention

    B, T, H, E = 2, 4, 1, 2
    qkv = torch.ones(B, T, 3 * H * E)
    qkv[:, :, :E] = float("inf")  # q = +inf, k = -inf: every score is -inf, the softmax sums to 0
    qkv[:, :, E : 2 * E] = float("-inf")
    out = causal_attention(qkv, H, E)
    assert out.shape == (B, T, H * E) and torch.isnan(out).all()
