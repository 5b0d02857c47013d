"""Pretraining on Mess3 with tiny models: the loss approaches the optimum, runs are reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from envs.processes import mess3
from models.checkpoint import load_checkpoint
from models.pretrain import PretrainConfig, optimal_loss_by_position, pretrain
from models.transformer import TransformerConfig

TINY = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=3)


def run(**kw):
    cfg = {"batch_size": 64, "lr": 3e-3, "num_threads": 1, "progress": False, "optimal_loss_samples": 2000, **kw}
    return pretrain(mess3(0.05, 0.85), TINY, PretrainConfig(**cfg))


def test_loss_gap_to_optimal_falls():
    res = run(steps=160, eval_every=40, warmup_steps=10)
    gaps = [h["loss_gap"] for h in res.history]
    assert [h["step"] for h in res.history] == [40, 80, 120, 160]
    assert gaps[0] > 0.05, "an untrained model should be well above the optimum"
    assert max(gaps[-2:]) < 0.3 * gaps[0], gaps
    assert abs(gaps[-1]) < 0.05, gaps  # close to the optimum (a little MC noise either side)
    assert all(h["tokens_per_s"] > 0 and h["optimal_loss"] == res.optimal_loss for h in res.history)
    assert 0.5 < res.optimal_loss < math.log(3)


def test_same_seed_gives_identical_weights_and_other_seed_does_not():
    a, b, c = run(steps=15, seed=3), run(steps=15, seed=3), run(steps=15, seed=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.mlp.fc_in.weight"], sc["blocks.0.mlp.fc_in.weight"])
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_sgd_constant_schedule_checkpoints_and_callback(tmp_path):
    seen = []
    res = pretrain(
        mess3(0.05, 0.85),
        TINY,
        PretrainConfig(
            steps=20,
            batch_size=32,
            optimizer="sgd",
            momentum=0.9,
            lr=0.05,
            schedule="constant",
            grad_clip=None,
            eval_every=10,
            checkpoint_steps=[0, 10],
            num_threads=1,
            progress=False,
            optimal_loss_samples=500,
        ),
        out_dir=tmp_path,
        callback=lambda metrics, step: seen.append((step, metrics["loss_gap"])),
        process_spec={"name": "mess3", "x": 0.05, "a": 0.85},
    )
    assert [s for s, _ in seen] == [10, 20]
    assert {p.name for p in res.checkpoints} == {"step_0000000.pt", "step_0000010.pt", "final.pt"}
    model, extra = load_checkpoint(tmp_path / "step_0000010.pt")
    assert extra["step"] == 10 and extra["process_spec"]["a"] == 0.85 and extra["pretrain"]["optimizer"] == "sgd"
    assert extra["pretrain"]["precision"] == res.precision in ("fp32", "bf16")  # resolved, never "auto"
    final, extra = load_checkpoint(tmp_path / "final.pt")
    assert extra["step"] == 20
    x = torch.randint(0, 3, (4, 8))
    with torch.no_grad():
        assert torch.equal(final(x), res.model(x))
        assert not torch.equal(model(x), res.model(x))
    assert all(h["lr"] == 0.05 for h in res.history)


def test_optimal_loss_of_an_iid_process_is_its_entropy():
    uniform = mess3(1 / 3, 1 / 3)  # every transition 1/9: i.i.d. uniform tokens
    np.testing.assert_allclose(optimal_loss_by_position(uniform, 5, samples=200), math.log(3), atol=1e-12)


def test_config_errors():
    with pytest.raises(ValueError):
        PretrainConfig(step=10)
    with pytest.raises(ValueError, match="n_ctx"):
        run(steps=1, seq_len=TINY.n_ctx + 1)
    with pytest.raises(ValueError, match="out_dir"):
        run(steps=1, checkpoint_steps=[1])
