"""The RLlib module around the transformer: exact pretrained policy, exact prefix deduplication,
checkpoint export. No Ray cluster needed (modules are built from their spec in-process)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs import build_process
from models.checkpoint import load_checkpoint, save_checkpoint
from models.rl_module import PRETRAINED_LOGITS, TransformerPolicyModule, export_checkpoint, prefix_heads
from models.transformer import Transformer, TransformerConfig

K, V = 8, 3
PAD = V


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=8, d_mlp=64, n_ctx=K, d_vocab=V))
    with torch.no_grad():  # a non-trivial predictive distribution (init logits are nearly uniform)
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    path = tmp_path_factory.mktemp("ckpt") / "pre.pt"
    save_checkpoint(path, model)
    return path


def build(checkpoint, action_tokens=None, **extra) -> TransformerPolicyModule:
    n_actions = V if action_tokens is None else len(action_tokens)
    spec = RLModuleSpec(
        module_class=TransformerPolicyModule,
        observation_space=gym.spaces.Box(0, V, shape=(K,), dtype=np.int64),
        action_space=gym.spaces.Discrete(n_actions),
        model_config={"checkpoint": str(checkpoint), "action_tokens": action_tokens, **extra},
    )
    return spec.build()


def episode_observations(n_episodes: int, seed: int = 0) -> torch.Tensor:
    """Every prefix observation of ``n_episodes`` Mess3 sequences plus each one's slid final window."""
    tokens, _ = build_process({"name": "mess3"}).sample(n_episodes, K + 1, np.random.default_rng(seed))
    rows = []
    for seq in tokens:
        for t in range(K):
            rows.append(np.concatenate([seq[: t + 1], np.full(K - t - 1, PAD)]))
        rows.append(seq[1:])
    return torch.tensor(np.array(rows))  # (n_episodes * (K + 1), K)


def naive_last(fn, obs: torch.Tensor) -> torch.Tensor:
    """``fn`` over exactly each row's real tokens, read at its last one: the definition to match.

    Rows of equal length go through one call (same tokens, same positions, nothing shared)."""
    n = (obs != PAD).sum(-1)
    out = None
    with torch.no_grad():
        for k in n.unique().tolist():
            rows = (n == k).nonzero().squeeze(-1)
            y = fn(obs[rows, :k])[:, k - 1]  # (rows, ...)
            out = y.new_zeros(len(obs), *y.shape[1:]) if out is None else out
            out[rows] = y
    return out


def naive_last_logits(model: Transformer, obs: torch.Tensor) -> torch.Tensor:
    return naive_last(model, obs)  # (B, V)


def test_initial_policy_is_pretrained_distribution_restricted_to_actions(checkpoint):
    actions = [2, 0]
    module = build(checkpoint, actions)
    model, _ = load_checkpoint(checkpoint)
    obs = episode_observations(20)
    expected = torch.softmax(naive_last_logits(model, obs)[:, actions], -1)  # (B, 2)
    for forward in (module.forward_exploration, module.forward_inference, module.forward_train):
        got = torch.softmax(forward({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS], -1)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert expected.std(0).min() > 0.01  # the check is not vacuous: the policy varies with the context


def test_dedup_forward_equals_naive_and_ignores_row_order(checkpoint):
    module = build(checkpoint)
    model, _ = load_checkpoint(checkpoint)
    obs = episode_observations(30)
    extra = torch.tensor(np.random.default_rng(1).integers(0, V, (20, K)))  # unrelated full windows
    obs = torch.cat([obs, obs[:15], extra])  # duplicates too
    perm = torch.randperm(len(obs), generator=torch.Generator().manual_seed(0))
    out = module.forward_train({Columns.OBS: obs})
    out_perm = module.forward_train({Columns.OBS: obs[perm]})
    naive = naive_last_logits(model, obs)
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS].detach(), naive, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_perm[Columns.ACTION_DIST_INPUTS].detach(), naive[perm], atol=1e-6, rtol=0)
    values = module.compute_values({Columns.OBS: obs})
    torch.testing.assert_close(module.compute_values({}, embeddings=out[Columns.EMBEDDINGS]), values)
    resid = naive_last(model.trunk, obs)  # (B, D)
    with torch.no_grad():
        torch.testing.assert_close(values, module.value_head(resid).squeeze(-1), atol=1e-6, rtol=0)


def test_prefix_heads_are_exactly_the_maximal_rows():
    obs = episode_observations(25, seed=3)
    obs = obs[torch.randperm(len(obs), generator=torch.Generator().manual_seed(1))]
    n = (obs != PAD).sum(-1)
    heads, head_of = prefix_heads(obs, n)
    # Brute force: a row is maximal when no other, different row extends it.
    rows = [tuple(r[:k].tolist()) for r, k in zip(obs, n)]
    maximal = {r for r in rows if not any(o != r and o[: len(r)] == r for o in rows)}
    assert {rows[h] for h in heads.tolist()} == maximal and len(heads) == len(maximal)
    covering = obs[heads[head_of]]  # (B, K)
    assert all(torch.equal(covering[i, :k], obs[i, :k]) for i, k in enumerate(n.tolist()))
    assert len(heads) == 2 * 25  # one chain per episode plus each slid final window


def test_rows_after_a_terminal_step_are_skipped_and_the_rest_unchanged(checkpoint):
    module = build(checkpoint)
    obs = episode_observations(6)
    mask = torch.tensor([(i % (K + 1)) < K for i in range(len(obs))])  # RLlib's appended rows are masked
    terminated = torch.tensor([(i % (K + 1)) == K - 1 for i in range(len(obs))])
    batch = {Columns.OBS: obs, Columns.LOSS_MASK: mask, Columns.TERMINATEDS: terminated}
    out = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    full = module.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(out[mask], full[mask], atol=1e-6, rtol=0)
    assert (~mask).sum() == 6 and torch.all(out[~mask] == 0)
    assert torch.all(module.compute_values(batch)[~mask] == 0)  # the post-terminal value is gated anyway


def test_export_round_trips_the_transformer_bit_for_bit(checkpoint, tmp_path):
    module = build(checkpoint, [1])
    export_checkpoint(module, tmp_path / "out.pt", extra={"note": "test"})
    model, extra = load_checkpoint(tmp_path / "out.pt")
    pre, _ = load_checkpoint(checkpoint)
    assert extra["note"] == "test" and extra["action_tokens"] == [1]
    assert model.cfg == pre.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), pre.state_dict().items()):
        assert torch.equal(a, b), name


def test_kl_reference_outputs_pretrained_logits_and_stays_out_of_the_state(checkpoint):
    module = build(checkpoint, kl_to_pretrained=True)
    obs = episode_observations(4)
    with torch.no_grad():
        for p in module.transformer.parameters():
            p.add_(0.1)
    out = module.forward_train({Columns.OBS: obs})
    model, _ = load_checkpoint(checkpoint)
    torch.testing.assert_close(out[PRETRAINED_LOGITS], naive_last_logits(model, obs), atol=1e-6, rtol=0)
    assert not any(k.startswith("_reference") for k in module.get_state())


def test_bad_action_tokens_raise(checkpoint):
    with pytest.raises(ValueError, match="vocabulary"):
        build(checkpoint, [0, V])


def test_env_runner_copy_builds_without_the_file_and_takes_synced_weights(checkpoint, tmp_path):
    learner_side = build(checkpoint)
    model, _ = load_checkpoint(checkpoint)
    spec = RLModuleSpec(
        module_class=TransformerPolicyModule,
        observation_space=gym.spaces.Box(0, V, shape=(K,), dtype=np.int64),
        action_space=gym.spaces.Discrete(V),
        inference_only=True,
        model_config={"checkpoint": str(tmp_path / "absent.pt"), "transformer_config": model.cfg.model_dump()},
    )
    runner_side = spec.build()
    runner_side.set_state(learner_side.get_state(inference_only=True))
    obs = episode_observations(3)
    torch.testing.assert_close(
        runner_side.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS],
        learner_side.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS],
        atol=0,
        rtol=0,
    )


def test_dedup_gradients_equal_per_row_gradients(checkpoint):
    module = build(checkpoint)
    obs = episode_observations(5)
    weights = torch.randn(len(obs), V, generator=torch.Generator().manual_seed(0))  # an arbitrary loss

    def grads(dedup: bool) -> list[torch.Tensor]:
        module.zero_grad()
        resid = module._last_resid(module.transformer, obs, dedup=dedup)  # (B, D)
        (module._policy(resid) * weights).sum().backward()
        return [p.grad.clone() for p in module.transformer.parameters()]

    for shared, per_row in zip(grads(True), grads(False)):
        torch.testing.assert_close(shared, per_row, atol=1e-5, rtol=1e-4)
