"""Where a trial's torch stages run (issue 24), end to end: on the CPU the device-aware code computes
bit for bit what the CPU-only code did; a Ray trial reads its GPU share from what Ray granted (Ray is
given a GPU this machine does not have); benchmarks/bench_gpu.py, what a device check runs, goes
through every section on the CPU. The unit tests of the device decision are tests/test_device.py."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_device import ROOT, TINY, StandInGPU, raise_on_cuda
from test_sweep import tiny_sweep, write_sweep

from models.transformer import Transformer
from rayexp.config import load_points

# ---------------------------------------------------------------------------------------------
# on the CPU, the device-aware code computes exactly what the CPU-only code did


def old_action_probs(model, tokens, action_tokens, log=False, forward=None):  # rayexp.policy before issue 24
    with torch.no_grad():
        x = torch.as_tensor(tokens, dtype=torch.long)
        logits = (forward or model)(x)[..., torch.as_tensor(np.asarray(action_tokens))].double()
        return (torch.log_softmax(logits, -1) if log else torch.softmax(logits, -1)).numpy()


def old_window_probs(model, obs, pad, action_tokens):
    n = (obs != pad).sum(axis=1)
    x = torch.as_tensor(np.where(obs == pad, 0, obs), dtype=torch.long)
    with torch.no_grad():
        logits = model(x)[torch.arange(len(n)), torch.as_tensor(n - 1)][:, torch.as_tensor(np.asarray(action_tokens))]
        return torch.softmax(logits.double(), -1).numpy()


def old_random_perturbation(model, norm, seed=0):

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    params = list(out.parameters())
    noise = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    scale = float(norm) / max(float(torch.sqrt(sum((n**2).sum() for n in noise))), 1e-300)
    with torch.no_grad():
        for p, n in zip(params, noise):
            p.add_((n * scale).to(p.dtype))
    return out


def test_cpu_results_are_bit_identical_to_the_cpu_only_code():
    from rayexp.policy import action_probs, window_probs
    from rayexp.studies.composition.update import random_perturbation

    model = Transformer(TINY, seed=3).eval()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, (16, 6))
    for args in (([0, 1, 2], False, None), ([1, 4], True, None), ([0, 2], False, lambda x: 2 * model(x))):
        assert action_probs(model, tokens, *args).tobytes() == old_action_probs(model, tokens, *args).tobytes()
    obs = np.where(np.arange(6) < rng.integers(1, 7, (16, 1)), tokens, 5)  # right-padded with 5
    assert window_probs(model, obs, 5, [0, 1, 2]).tobytes() == old_window_probs(model, obs, 5, [0, 1, 2]).tobytes()
    new, old = random_perturbation(model, 0.7, seed=5).state_dict(), old_random_perturbation(model, 0.7, 5).state_dict()
    assert all(torch.equal(new[k], old[k]) for k in old)


def test_sgld_noise_is_drawn_on_the_cpu_whatever_the_device(monkeypatch):
    """A chain's noise comes from a CPU generator and is moved: the numbers the CPU-only sampler drew, on
    every device."""
    from rayexp.studies.development import losses, sgld

    draws, randn = [], torch.randn

    def spy(*size, generator=None, **kw):
        draws.append((generator.device.type, kw.get("device")))
        return randn(*size, generator=generator, **kw)

    settings = sgld.SGLDSettings(lr=1e-5, localization=1.0, nbeta=10.0, num_chains=2, num_burnin=2, num_draws=3)
    tokens = torch.zeros(4, 6, dtype=torch.long)
    for device in ("cpu", "meta"):
        model = Transformer(TINY).to(device)
        with StandInGPU():
            batches = losses.self_kl_batches(model, [tokens.to(device)])
            monkeypatch.setattr(torch, "randn", spy)
            sgld.sample(model, losses.self_kl, batches, settings)
            monkeypatch.setattr(torch, "randn", randn)
    assert len(draws) == 2 * 2 * 5 and set(draws) == {("cpu", None)}


# ---------------------------------------------------------------------------------------------
# end to end, with Ray (it holds a GPU it does not have: Ray does not check)


@pytest.fixture(scope="module")
def ray_with_a_fake_gpu():
    import ray

    ray.shutdown()  # a Ray another test module left running has no GPU
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_gpu_0_trial_never_calls_into_torch_cuda(ray_with_a_fake_gpu, tmp_path, monkeypatch):
    from rayexp.trial import run_trial

    sweep = tiny_sweep("nocuda", ppo_iterations=1)
    sweep["base"]["analyses"] = ["weight_diff", {"name": "policy_kl", "params": {"n_seq": 20}}]
    _, points = load_points(str(write_sweep(tmp_path, sweep)))
    meta = {"use_tune": False, "storage_path": str(tmp_path / "results"), "sweep": "nocuda", "gpu": 0}
    raise_on_cuda(monkeypatch)
    with pytest.raises(pytest.fail.Exception):
        torch.cuda.is_available()  # the guard is live
    latest = run_trial({"point": {"trial": points[0].trial.model_dump(), "axes": {}}, "meta": meta})
    assert latest["stage"] == latest["n_stages"] == 6
    assert not torch.cuda.is_initialized()


@pytest.mark.slow
def test_a_trial_reads_its_gpu_share_from_what_ray_granted(ray_with_a_fake_gpu, tmp_path):
    from ray import tune

    from rayexp.trial import gpu_share

    def trainable(config):
        tune.report({"gpu": gpu_share({}, True), "visible": float(os.environ.get("CUDA_VISIBLE_DEVICES") == "0")})

    shares = {}
    for gpu in (0.25, 0.0):  # the bundles rayexp.sweep reserves (checks.trial_bundles): the trial's own first
        bundles = [{"CPU": 1, "GPU": gpu} if gpu else {"CPU": 1}]
        run = tune.RunConfig(storage_path=str(tmp_path), name=f"g{gpu}", verbose=0)
        tuner = tune.Tuner(tune.with_resources(trainable, tune.PlacementGroupFactory(bundles)), run_config=run)
        shares[gpu] = tuner.fit()[0].metrics
    assert shares[0.25]["gpu"] == 0.25 and shares[0.25]["visible"] == 1.0
    assert shares[0.0]["gpu"] == 0.0


# ---------------------------------------------------------------------------------------------
# benchmarks/bench_gpu.py: what a device check runs


def bench(*args, timeout=600):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_gpu_fails_fast_with_one_line_without_a_gpu():
    proc = bench()
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr


@pytest.mark.slow
def test_bench_gpu_dry_run_goes_through_every_section(tmp_path):
    proc = bench("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert results["failed"] == [] and results["dry_run"]
    for section in ("pretrain", "agreement", "analyses", "quickstart", "ppo", "packing"):
        assert "error" not in results[section] and "skipped" not in results[section], section
    assert results["agreement"]["agree"] and results["quickstart"]["rc"] == 0
    analyses = results["analyses"]["rows"]  # every device-ready analysis beyond the quickstart's, compared
    assert [r["analysis"] for r in analyses] == [
        "composition",
        "policy_kl",
        "concept_vectors",
        "rare",
        "negation",
        "llc",
    ]
    assert results["analyses"]["agree"] and all(r["metrics"] > 0 and r["max_abs_diff"] == 0 for r in analyses)
    assert {r["device"] for r in results["ppo"]["rows"]} == {"cpu"}
    assert (tmp_path / "quickstart_log.txt").read_text().count("ok: sweep") == 1
