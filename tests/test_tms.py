"""The TMS study (rayexp/studies/development/tms*.py, envs/tms.py, models/tms.py) on known answers.

- data: the env's inputs have the exact statistics of their mode (one_hot, independent), and the
  reward is -||a - x||^2 (the vector env's reset steps pay 0);
- model: the forward pass is ReLU(W^T W x + b); the closed-form loss of one_hot data equals the
  sample mean; supervised Adam from seed 0 reaches the regular 6-gon, whose loss is the minimum of
  the closed form over the family (radius, bias);
- LLC: on that trained 6-gon (18 parameters, one flat direction, the rotation of the hidden plane:
  8.5) the usual estimate is settled and reads 7-11; at the starting point, which is not a minimum,
  it is flagged below init (the estimator can say no);
- transitions: the matching rule on a constructed case; the module's value head shares nothing with W;
- PPO: a few RLlib iterations raise the exact expected reward (slow: starts Ray);
- the sweep file: validated with one-line errors; sweeps/tms.yaml states the tested SGLD setting.
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.tms import TMSDataConfig, TMSEnv, TMSVectorEnv, expected_reward, moments, sample
from models.tms import (
    SupervisedSettings,
    TMSPolicy,
    exact_loss,
    from_weights,
    init_tms,
    k_count,
    mse,
    phase_label,
    train_supervised,
)
from rayexp.studies.development.tms_config import SweepFileError, load, validate
from rayexp.studies.development.tms_llc import (
    LLC_BATCH,
    N_LLC,
    TMS_SGLD,
    estimate,
    k_changes,
    llc_batches,
    matched,
    summarise,
    transitions,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kgon(k: int, radius: float, bias: float, F: int = 6):
    th = np.arange(k) * 2 * np.pi / k
    W = np.zeros((2, F))
    W[0, :k], W[1, :k] = radius * np.cos(th), radius * np.sin(th)
    return W, np.full(F, bias)


# ---------------------------------------------------------------------------------------------
# data and env


@pytest.mark.parametrize("mode,p", [("one_hot", None), ("independent", 0.3)])
def test_data_has_the_exact_statistics_of_its_mode(mode, p):
    cfg = TMSDataConfig(n_features=6, mode=mode, **({"p": p} if p else {}))
    x = sample(cfg, 200_000, np.random.default_rng(0)).astype(np.float64)
    m = moments(cfg)
    assert x.dtype == np.float64 and x.min() >= 0 and x.max() <= 1
    on = x != 0
    n = len(x)
    assert abs(on.mean() - m["p_active"]) < 4 * math.sqrt(m["p_active"] * (1 - m["p_active"]) / n / 6)
    assert abs(x.mean() - m["mean"]) < 0.002
    assert abs((x**2).mean() - m["second"]) < 0.002
    assert abs((x[:, 0] * x[:, 1]).mean() - m["cross"]) < 0.002
    if mode == "one_hot":
        assert (on.sum(1) == 1).all()  # exactly one feature on, every time
        assert m == {"p_active": 1 / 6, "mean": 1 / 12, "second": 1 / 18, "cross": 0.0, "p_zero": 0.0}
    else:
        assert abs((~on.any(1)).mean() - m["p_zero"]) < 0.003
        assert m["p_zero"] == pytest.approx(0.7**6)


def test_env_reward_is_minus_the_squared_error_and_episodes_are_one_step():
    env = TMSEnv({"n_features": 6, "seed": 3})
    x, _ = env.reset()
    assert env.observation_space.contains(x)
    _, r, terminated, truncated, _ = env.step(x)
    assert r == 0.0 and terminated and not truncated
    x, _ = env.reset(seed=1)
    _, r, *_ = env.step(np.zeros(6, dtype=np.float32))
    assert r == pytest.approx(-float((x.astype(np.float64) ** 2).sum()))
    with pytest.raises(ValueError, match="unknown TMS env config keys"):
        TMSEnv({"n_feature": 6})
    with pytest.raises(ValueError, match="mode"):
        TMSEnv({"mode": "dense"})

    vec = TMSVectorEnv(5, {"n_features": 6})
    x, _ = vec.reset(seed=0)
    a = x + 0.5
    _, r, term, _, _ = vec.step(a)
    assert np.allclose(r, -0.25 * 6) and term.all()
    x2, r, term, _, _ = vec.step(a)  # next-step autoreset: fresh inputs, no reward, action ignored
    assert (r == 0).all() and not term.any() and not np.allclose(x2, x)
    assert expected_reward(0.1, np.full(6, math.log(0.5))) == pytest.approx(-0.1 - 6 * 0.25)


# ---------------------------------------------------------------------------------------------
# model


def test_forward_is_relu_of_wtw_x_plus_b_and_the_closed_form_loss_is_the_mean():
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(2, 6)), 0.3 * rng.normal(size=6)
    model = from_weights(W, b).double()
    x = rng.random((7, 6))
    want = np.maximum(x @ W.T @ W + b, 0)
    assert np.allclose(model(torch.from_numpy(x)).detach().numpy(), want)
    data = torch.from_numpy(sample(TMSDataConfig(), 400_000, np.random.default_rng(1))).double()
    for Wc, bc in [(W, b), kgon(5, 1.2, -0.3), (np.zeros((2, 6)), np.full(6, 0.1))]:
        with torch.no_grad():
            assert exact_loss(Wc, bc) == pytest.approx(float(mse(from_weights(Wc, bc).double(), data)), rel=5e-3)
    assert exact_loss(np.zeros((2, 6)), np.zeros(6)) == pytest.approx(1 / 3)  # E||x||^2 = 6 * 1/18
    assert k_count(kgon(4, 1.0, -0.2)[0]) == 4
    W4, b4 = kgon(4, 1.0, -0.2)
    b4[4] = 0.08
    assert phase_label(W4, b4) == "4+-"


@pytest.fixture(scope="module")
def six_gon():
    """Adam (lr 0.01, batch 256, 3000 steps) from seed 0's init: it lands on the regular 6-gon."""
    torch.set_num_threads(1)
    cfg = TMSDataConfig()
    model = init_tms(6, 2, seed=0)
    start = model.weights()
    out = train_supervised(
        model, lambda n, rng: sample(cfg, n, rng), SupervisedSettings(3000, 1e-2, 256, seed=0), [0, 1500, 3000]
    )
    return start, out


def test_supervised_training_reaches_the_regular_six_gon(six_gon):
    start, out = six_gon
    assert [c["step"] for c in out] == [0, 1500, 3000]
    assert np.allclose(out[0]["W"], start["W"])
    # the minimum of the closed-form loss over regular 6-gons (radius, shared bias): 0.0482
    grid = [
        (exact_loss(*kgon(6, r, b)), r, b) for r in np.linspace(1.2, 1.45, 51) for b in np.linspace(-0.8, -0.45, 71)
    ]
    best, r, b = min(grid)
    assert best == pytest.approx(0.0482, abs=2e-4)
    W, b_ = out[-1]["W"], out[-1]["b"]
    assert k_count(W) == 6 and phase_label(W, b_) == "6"
    assert exact_loss(W, b_) < exact_loss(start["W"], start["b"]) / 5
    assert exact_loss(W, b_) == pytest.approx(best, rel=0.03)  # Adam's noise keeps it within 3 %
    assert np.allclose(np.linalg.norm(W, axis=0), r, rtol=0.05) and np.allclose(b_, b, atol=0.06)


def test_llc_of_the_six_gon_is_settled_near_its_count_and_the_start_is_flagged(six_gon):
    start, out = six_gon
    batches = llc_batches(sample(TMSDataConfig(), N_LLC, np.random.default_rng(0)))
    assert len(batches) == N_LLC // LLC_BATCH and batches[0].shape == (LLC_BATCH, 6)
    at = estimate(out[-1]["W"], out[-1]["b"], batches, TMS_SGLD)
    assert at["healthy"] and at["rhat"] <= 1.1, at
    assert 7.0 <= at["llc_mean"] <= 11.0, at  # a regular point up to the rotation: 17 / 2 = 8.5
    # the starting point is not a minimum of the loss: the chains walk downhill and say so
    init = estimate(start["W"], start["b"], batches, TMS_SGLD)
    assert init["below_init"] and not init["healthy"] and init["llc_mean"] < 0, init


# ---------------------------------------------------------------------------------------------
# transitions and the RL module


def test_transitions_and_the_within_one_checkpoint_rule():
    steps = list(range(0, 200, 10))  # 20 checkpoints
    loss = [1.0] * 8 + [0.2] * 12  # one drop between 70 and 80
    llc_good = [5.0] * 9 + [9.0] * 11  # jumps one checkpoint later
    llc_late = [5.0] * 12 + [9.0] * 8  # jumps four checkpoints later
    k = [4] * 8 + [5] * 12
    rows = [
        {"checkpoint": s, "loss": v, "k": kk, "phase": str(kk), "llc_mean": a, "llc_healthy": True}
        for s, v, kk, a in zip(steps, loss, k, llc_good, strict=True)
    ]
    marks = transitions(rows, "loss")
    assert marks == {"loss": [80], "llc": [90], "k": [80]}
    assert k_changes(rows) == [80]
    assert matched([80], [90], steps) == [True]
    assert matched([80], [120], steps) == [False]
    late = [dict(r, llc_mean=a) for r, a in zip(rows, llc_late, strict=True)]
    s = summarise("supervised", 0, late, "loss")
    assert (s["curve_marked"], s["curve_total"], s["k_marked"], s["llc_unexplained"]) == (0, 1, 0, 1)
    assert s["k_path"] == "4>5"
    # unhealthy estimates are not a curve: a jump through them is not an LLC transition
    hidden = [dict(r, llc_healthy=not 7 <= i <= 10) for i, r in enumerate(rows)]
    assert transitions(hidden, "loss")["llc"] == [110]


def test_policy_value_head_shares_no_weight_with_the_tms():
    import gymnasium as gym
    from ray.rllib.core.columns import Columns

    from rayexp.studies.development.tms_rl import TMSPolicyModule

    W, b = kgon(5, 1.1, -0.2)
    spec_cfg = {"n_features": 6, "n_hidden": 2, "W": W.tolist(), "b": b.tolist(), "log_std": -1.5}
    module = TMSPolicyModule(
        observation_space=gym.spaces.Box(0, 1, (6,), np.float32),
        action_space=gym.spaces.Box(-np.inf, np.inf, (6,), np.float32),
        model_config=spec_cfg,
    )
    x = torch.rand(4, 6)
    out = module.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS]
    assert out.shape == (4, 12)
    assert torch.allclose(out[:, :6], module.policy.tms(x)) and torch.allclose(out[:, 6:], torch.tensor(-1.5))
    values = module.compute_values({Columns.OBS: x})
    grads = torch.autograd.grad(values.sum(), [module.policy.tms.W, module.policy.tms.b], allow_unused=True)
    assert all(g is None for g in grads)  # the value loss never moves (W, b)
    assert isinstance(module.policy, TMSPolicy) and "log_std" not in dict(module.named_parameters())


@pytest.mark.slow
def test_ppo_raises_the_exact_expected_reward(workdir):
    """7-18 s on the shared 2-core machine (Ray start, algorithm build, 8 iterations)."""
    import ray

    from rayexp.ray_local import start_local_ray
    from rayexp.studies.development.tms_rl import TMSPPOSettings, train_ppo_tms

    start = init_tms(6, 2, seed=1).weights()
    settings = TMSPPOSettings(iterations=8, train_batch_size=512, minibatch_size=128, save_every=4, seed=1)
    start_local_ray(num_cpus=1)
    try:
        out = train_ppo_tms(settings, {"n_features": 6}, start["W"], start["b"])
    finally:
        ray.shutdown()
    assert [c["iteration"] for c in out] == [0, 4, 8]
    assert np.allclose(out[0]["W"], start["W"]) and np.allclose(out[0]["log_std"], -2.0)
    rewards = [expected_reward(exact_loss(c["W"], c["b"]), c["log_std"]) for c in out]
    assert rewards[2] > rewards[0] + 0.03, rewards  # 0.327 -> ~0.26 in loss
    assert math.isfinite(out[-1]["sampled_reward"])
    assert out[-1]["sampled_reward"] == pytest.approx(rewards[2], abs=0.05)  # the sampled mean agrees


# ---------------------------------------------------------------------------------------------
# the sweep file


def test_shipped_sweep_validates_and_states_the_tested_setting():
    spec = load(ROOT / "sweeps" / "tms.yaml")
    assert len(spec.seeds) == 5 and spec.arms == ["supervised", "ppo"]
    s = spec.llc.settings()
    for field in ("lr", "localization", "nbeta", "num_chains", "num_burnin", "num_draws", "rms_delta", "rms_alpha"):
        assert getattr(s, field) == pytest.approx(getattr(TMS_SGLD, field)), field
    assert spec.llc.n == N_LLC and spec.llc.batch_size == LLC_BATCH


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"ppo": {"lr": -1}}, "ppo.lr: Input should be greater than 0"),
        ({"ppo": {"minibatch_size": 4096}}, "ppo: Value error, minibatch_size 4096 exceeds train_batch_size 1024"),
        ({"llc": {"num_chain": 4}}, "llc.num_chain: unknown key"),
        ({"seeds": [0, 0]}, "seeds: Value error, repeated values in [0, 0]"),
        ({"seeds": [True]}, "seeds.0: Input should be a valid integer"),
        ({"arms": ["rl"]}, "arms.0: Input should be 'supervised' or 'ppo'"),
        ({"data": {"mode": "dense"}}, "data.mode: Input should be 'one_hot' or 'independent'"),
        ({"llc": {"lr": float("nan")}}, "llc.lr: Input should be a finite number"),
        ({"ppo": {"vf_loss_coeff": float("inf")}}, "ppo.vf_loss_coeff: Input should be a finite number"),
        ({"model": {"init_scale": True}}, "model.init_scale: Input should be a valid number"),
        ({"llc": {"lr": 3.0}}, "llc.lr: Input should be less than or equal to 1"),
        ({"study": "development"}, "study: Input should be 'tms'"),
    ],
)
def test_bad_sweep_input_is_one_clear_line(patch, message):
    data = {"name": "t", "seeds": [0, 1]}
    data.update(patch)
    with pytest.raises(SweepFileError) as err:
        validate(data, "t.yaml")
    assert str(err.value).startswith(f"t.yaml: {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_cli_refuses_bad_files_with_exit_2_and_one_line(tmp_path, capsys):
    from rayexp.studies.development.tms import main

    cases = {
        "list.yaml": "- 1\n- 2\n",
        "broken.yaml": "name: [unclosed\n",
        "missing.yaml": None,
        "bad.yaml": "name: t\nseeds: [0]\nsupervised: {steps: 0}\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        assert main([str(path)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}") and "\n" not in err, err
    good = tmp_path / "good.yaml"
    good.write_text("name: t\nseeds: [0, 1]\n")
    assert main([str(good), "--validate"]) == 0
    assert ": ok: TMS sweep 't', 4 trials (2 seeds x 2 arms)" in capsys.readouterr().out


def test_rayexp_cli_hands_tms_files_to_the_study(tmp_path, capsys):
    from rayexp.cli import main as rayexp_main
    from rayexp.studies.development.tms_config import is_tms_file

    shipped = ROOT / "sweeps" / "tms.yaml"
    assert is_tms_file(shipped) and not is_tms_file(ROOT / "sweeps" / "development.yaml")
    assert not is_tms_file(tmp_path / "missing.yaml")
    deep = tmp_path / "deep.yaml"
    deep.write_text("study: tms\nname: t\nseeds: [0]\ndata: " + "[" * 5000 + "]" * 5000 + "\n")
    assert rayexp_main(["validate", str(deep)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {deep}: line 4: nested more than 64 levels deep"
    bomb = tmp_path / "bomb.yaml"  # a billion laughs in a field the schema reads
    rows = ["[lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"[{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, 9)
    ]
    aliases = ", ".join(f"l{k}: &l{k} {row}" for k, row in enumerate(rows))
    bomb.write_text(f"study: tms\nname: t\nseeds: [0]\ndescription: {{{aliases}}}\n")
    assert rayexp_main(["validate", str(bomb)]) == 2
    assert "expands to more than 100_000 values" in capsys.readouterr().err
    assert rayexp_main(["validate", str(shipped)]) == 0
    assert f"{shipped}: ok: TMS sweep 'tms', 10 trials" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: tms\nname: t\nseeds: [0]\nppo: {lrr: 1}\n")
    assert rayexp_main(["validate", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: ppo.lrr: unknown key"
    assert rayexp_main(["run", str(bad), "--resume"]) == 2
    assert "--resume is not supported" in capsys.readouterr().err


def test_validation_loads_neither_torch_nor_ray():
    import subprocess
    import sys

    code = (
        "import sys; from rayexp.studies.development.tms import main; "
        "assert main(['sweeps/tms.yaml', '--validate']) == 0; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr
    assert os.path.exists(ROOT / "sweeps" / "tms.yaml")


def test_report_reads_stored_rows_prints_the_table_and_draws_the_figure(tmp_path, capsys):
    import json

    from rayexp.studies.development.tms import figure_name, main

    steps = list(range(0, 200, 10))
    for arm, curve, sign in (("supervised", "loss", 1.0), ("ppo", "reward", -1.0)):
        rows = [
            {
                "checkpoint": s,
                "loss": 1.0 if i < 8 else 0.2,
                "reward": -(1.0 if i < 8 else 0.2),
                "k": 4 if i < 8 else 5,
                "phase": "4" if i < 8 else "5",
                "llc_mean": 5.0 if i < 9 else 9.0,
                "llc_std": 0.1,
                "llc_healthy": True,
            }
            for i, s in enumerate(steps)
        ]
        out = tmp_path / "store" / "t" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{arm}_s0.json").write_text(json.dumps({"rows": rows}))
    sweep = tmp_path / "t.yaml"
    sweep.write_text(f"name: t\nseeds: [0]\nstorage_path: {tmp_path / 'store'}\nfigures_dir: {tmp_path / 'fig'}\n")
    assert main([str(sweep), "--report"]) == 0
    text = capsys.readouterr().out
    assert "supervised | 0 | llc | 4>5 | [80] | [80] | [90] | curve 1/1, k 1/1 | 20/20" in text
    assert "ppo        llc     : curve transitions 1/1, k changes 1/1" in text
    assert (tmp_path / "fig" / "tms_t_llc_transitions.png").stat().st_size > 10_000
    assert figure_name("tms") == "tms_llc_transitions.png"
    empty = tmp_path / "e.yaml"
    empty.write_text(f"name: e\nseeds: [0]\nstorage_path: {tmp_path / 'none'}\n")
    assert main([str(empty), "--report"]) == 1
    assert "no stored results" in capsys.readouterr().err
