"""Mixed precision of pretraining: how ``auto`` resolves, what runs in bf16, what stays fp32 (seconds on one core)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import models.pretrain as pretrain_mod
from envs.processes import mess3
from models._attention import causal_attention
from models.checkpoint import load_checkpoint
from models.pretrain import PretrainConfig, has_bf16_matmul_units, pretrain, resolve_precision
from models.transformer import TransformerConfig

TINY = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=3)


def run(out_dir=None, **kw):
    cfg = {"batch_size": 64, "lr": 3e-3, "num_threads": 1, "progress": False, "optimal_loss_samples": 500, **kw}
    return pretrain(mess3(0.05, 0.85), TINY, PretrainConfig(**cfg), out_dir=out_dir)


@pytest.fixture(params=[False, True], ids=["no_bf16_units", "bf16_units"])
def units(request, monkeypatch) -> bool:
    """Pretend this CPU has bf16 matrix units (AMX) or not."""
    monkeypatch.setattr(pretrain_mod, "has_bf16_matmul_units", lambda device: request.param)
    return request.param


def test_auto_resolves_by_detection_and_explicit_settings_win(units):
    assert resolve_precision(PretrainConfig(device="cpu")) == ("bf16" if units else "fp32")
    assert resolve_precision(PretrainConfig(device="cpu", precision="fp32")) == "fp32"
    assert resolve_precision(PretrainConfig(device="cpu", precision="bf16")) == "bf16"


def test_detection_on_this_machine_is_the_bf16_flags_and_auto_follows_it():
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    if "amx_bf16" in caps:
        bf16 = bool(caps["amx_bf16"] or caps.get("avx512_bf16", False))
        assert has_bf16_matmul_units(torch.device("cpu")) == bf16
    expected = "bf16" if has_bf16_matmul_units(torch.device("cpu")) else "fp32"
    assert resolve_precision(PretrainConfig(device="cpu")) == expected


def test_config_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        PretrainConfig(precision="fp16")
    assert PretrainConfig().precision == "auto"


def test_bf16_run_multiplies_in_bf16_and_keeps_fp32_master_weights_and_state(monkeypatch):
    linear_out, optimizers = set(), []
    linear = torch.nn.functional.linear

    def spy_linear(*args, **kwargs):
        y = linear(*args, **kwargs)
        linear_out.add(y.dtype)
        return y

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.nn.functional, "linear", spy_linear)
    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    res = run(steps=6, eval_every=3, precision="bf16")
    assert linear_out == {torch.bfloat16}
    assert res.precision == "bf16" and [h["precision"] for h in res.history] == ["bf16", "bf16"]
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    state = [t for s in optimizers[0].state.values() for t in s.values() if t.ndim > 0]  # exp_avg, exp_avg_sq
    assert state and all(t.dtype == torch.float32 for t in state)


def test_bf16_and_fp32_losses_agree_loosely_from_the_same_seed():
    fp32, bf16 = run(steps=30, eval_every=10, precision="fp32"), run(steps=30, eval_every=10, precision="bf16")
    a, b = [h["loss"] for h in fp32.history], [h["loss"] for h in bf16.history]
    assert a != b, "bf16 should round differently"
    assert all(abs(x - y) < 0.03 for x, y in zip(a, b, strict=True)), (a, b)
    assert b[-1] < b[0]  # it learns


def test_checkpoints_record_the_resolved_precision(units, tmp_path):
    res = run(tmp_path, steps=2, eval_every=1, checkpoint_steps=[0])
    expected = "bf16" if units else "fp32"
    assert res.precision == expected and res.history[-1]["precision"] == expected
    for name in ("step_0000000.pt", "final.pt"):
        _, extra = load_checkpoint(tmp_path / name)
        assert extra["pretrain"]["precision"] == expected, name  # never "auto": the logged config reproduces


def test_pretrain_cache_key_holds_the_resolved_precision(units):
    from rayexp.cache import pretrain_key
    from rayexp.context import TrialContext

    def determining(**kw):
        ctx = SimpleNamespace(pre_cfg=PretrainConfig(device="cpu", **kw))
        return TrialContext.pretrain_determining.func(ctx)  # the cached_property's body

    auto, explicit = determining(), determining(precision="bf16" if units else "fp32")
    assert auto["precision"] == ("bf16" if units else "fp32")
    assert auto == explicit  # `auto` and the setting it resolves to train the same model: one cache entry
    fp32, bf16 = determining(precision="fp32"), determining(precision="bf16")
    assert pretrain_key({"name": "mess3"}, {}, fp32, 0) != pretrain_key({"name": "mess3"}, {}, bf16, 0)


def test_cpu_attention_kernel_takes_bf16_in_fp32_and_returns_bf16():
    g = torch.Generator().manual_seed(0)
    B, T, H, E = 3, 7, 2, 8
    qkv = torch.randn(B, T, 3 * H * E, generator=g).bfloat16().requires_grad_()
    z = causal_attention(qkv, H, E)  # (B, T, H*E)
    q, k, v = qkv.detach().double().view(B, T, 3, H, E).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, E)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.double(), ref, atol=2e-2, rtol=2e-2)  # bf16 output rounding only
    z.sum().backward()
    assert qkv.grad.dtype == torch.bfloat16 and torch.isfinite(qkv.grad.float()).all()
