"""Where a trial's torch stages run (issue 24): one decision, rayexp.context.trial_device, from the GPU share the
trial holds and ``pretrain.device``; every stage asks it; a gpu-0 trial never asks torch about CUDA.

This machine has no GPU: CUDA's presence is monkeypatched, Ray is given a GPU it does not have, and torch's
``meta`` device stands in for a second device where a model must really move."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch
from test_sweep import tiny_sweep, write_sweep

from models.checkpoint import load_checkpoint, save_checkpoint
from models.transformer import Transformer, TransformerConfig
from rayexp import stages
from rayexp.artifacts import TrialArtifacts
from rayexp.config import load_points
from rayexp.context import DeviceError, Reporter, StageState, TrialContext, trial_device
from rayexp.probes import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
TINY = TransformerConfig(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=16, n_ctx=6, d_vocab=5)
CUDA_CALLS = (
    "is_available",
    "device_count",
    "current_device",
    "get_device_capability",
    "get_device_name",
    "init",
    "_lazy_init",
    "set_device",
    "synchronize",
    "mem_get_info",
    "memory_allocated",
)


def expected(gpu: float, setting: str, available: bool):
    if setting == "cpu" or (gpu == 0 and setting == "auto"):
        return "cpu"
    if gpu == 0:
        return DeviceError
    if available:
        return "cuda"
    return DeviceError if setting == "cuda" else "cpu"


@pytest.mark.parametrize("available", [True, False])
@pytest.mark.parametrize("setting", ["auto", "cpu", "cuda"])
@pytest.mark.parametrize("gpu", [0, 0.25, 1])
def test_the_device_follows_the_share_and_the_setting(gpu, setting, available):
    asked = []

    def cuda_available():
        asked.append(True)
        return available

    want = expected(gpu, setting, available)
    if want is DeviceError:
        with pytest.raises(DeviceError) as err:
            trial_device(setting, gpu, cuda_available)
        assert "\n" not in str(err.value) and "pretrain.device" in str(err.value)
        assert ("resources.gpu" in str(err.value)) == (gpu == 0)
    else:
        assert trial_device(setting, gpu, cuda_available) == want
    assert bool(asked) == (gpu > 0 and setting != "cpu")  # a gpu-0 or cpu trial never asks


def raise_on_cuda(monkeypatch):
    for name in CUDA_CALLS:
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: pytest.fail(f"torch.cuda.{_n} called"))


def test_the_default_check_is_torchs_and_gpu_0_never_reaches_it(monkeypatch):
    raise_on_cuda(monkeypatch)
    assert trial_device("auto", 0) == "cpu" and trial_device("cpu", 0.5) == "cpu"
    with pytest.raises(DeviceError):
        trial_device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trial_device("auto", 0.25) == "cuda"
    with pytest.raises(DeviceError, match="auto, cpu or cuda"):
        trial_device("gpu", 0.25)


# ---------------------------------------------------------------------------------------------
# every stage asks the context


@pytest.fixture
def make_ctx(tmp_path, monkeypatch):
    """TrialContexts of the tiny sweep's first trial; a 'cuda' one on this machine sees a fake CUDA."""
    sweep = tiny_sweep("dev")
    sweep["storage_path"] = str(tmp_path / "results")
    _, points = load_points(str(write_sweep(tmp_path, sweep)))
    resolved = points[0].trial

    def make(device="cpu", gpu=0.0, artifacts_device=None):
        if device == "cuda":
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr("models.pretrain.has_bf16_matmul_units", lambda d: False)
        work = tmp_path / f"work-{device}-{gpu}"
        (work / "state").mkdir(parents=True, exist_ok=True)
        meta = {"storage_path": str(tmp_path / "results"), "sweep": "dev"}
        arts = TrialArtifacts(meta["storage_path"], "dev", "key", device=artifacts_device or device)
        ctx = TrialContext(
            resolved, meta, Reporter(None, False), StageState(work / "state"), arts, work, device=device, gpu=gpu
        )
        ctx.snapshot = lambda: None
        return ctx

    return make


@pytest.mark.parametrize(
    ("device", "gpu", "learner"), [("cpu", 0.0, 0.0), ("cuda", 0.25, 0.25), ("cuda", 2.0, 1.0), ("cpu", 0.25, 0.0)]
)
def test_pretraining_and_the_learner_get_the_trials_device(make_ctx, monkeypatch, device, gpu, learner):
    ctx = make_ctx(device, gpu)
    assert ctx.pre_cfg.device == device and ctx.resolved.pretrain.device == "auto"  # decided, never `auto`
    assert ctx.learner_gpus == learner
    assert ctx.pretrain_key == make_ctx("cpu").pretrain_key  # where it trains is not what it trains

    seen = {}

    def fake_pretrain(process, model_cfg, cfg, **kw):
        seen["pretrain"] = cfg.device
        return SimpleNamespace(model=Transformer(TINY), history=[])

    def fake_ppo(settings, env, checkpoint, out, callback=None, gpu=0.0, **kw):
        seen["ppo"] = gpu
        save_checkpoint(out, Transformer(TINY))

    monkeypatch.setattr("models.pretrain.pretrain", fake_pretrain)
    monkeypatch.setattr("rayexp.ppo.train_ppo", fake_ppo)
    stages.pretrain(ctx)
    stages.ppo(ctx)
    assert seen == {"pretrain": device, "ppo": learner}


def test_build_ppo_config_gives_the_local_learner_its_share_and_env_runners_none(tmp_path):
    from rayexp.ppo import PPOSettings, build_ppo_config

    ckpt = save_checkpoint(tmp_path / "m.pt", Transformer(TINY))
    env = {"process": {"name": "mess3"}, "context": 6, "reward": "next_token"}
    gpu = build_ppo_config(PPOSettings(), env, ckpt, gpu=0.25)  # built, never started
    assert (gpu.num_learners, gpu.num_gpus_per_learner, gpu.num_gpus_per_env_runner) == (0, 0.25, 0)
    assert build_ppo_config(PPOSettings(), env, ckpt).num_gpus_per_learner == 0


def test_a_learner_on_the_wrong_device_is_refused():
    from rayexp.ppo import check_learner_device

    def algo(device):
        learner = SimpleNamespace(module={"default_policy": torch.nn.Linear(2, 2, device=device)})
        return SimpleNamespace(learner_group=SimpleNamespace(foreach_learner=lambda f: [f(learner)]))

    assert check_learner_device(algo("cpu"), 0.0) == "cpu"
    with pytest.raises(RuntimeError, match="not cuda.*ray#50053"):  # RLlib's silent CPU fallback
        check_learner_device(algo("cpu"), 0.25)
    with pytest.raises(RuntimeError, match="not cpu"):
        check_learner_device(algo("meta"), 0.0)


def stored_trial(ctx) -> None:
    """A pretrained model and a policy in storage, as the pipeline leaves them."""
    ctx.artifacts.write_meta(ctx.trial.model_dump(), "k", ctx.env_config, {"pretrain_seed": 0})
    ckpt = save_checkpoint(ctx.workdir / "m.pt", Transformer(TINY, seed=0))
    ctx.artifacts.store.put(ckpt, "pretrain_cache/k/model.pt", checksum=True)
    ctx.artifacts.put_policy(ckpt, 2)


def test_models_load_to_the_artifacts_device(make_ctx, tmp_path):
    ctx = make_ctx(artifacts_device="meta")
    stored_trial(ctx)
    arts = ctx.artifacts

    def where(model):
        return {p.device.type for p in model.parameters()}

    for model in (arts.model_before(), arts.model_after(), arts.policy(2), arts.random_init()):
        assert where(model) == {"meta"}
    assert arts.on("meta") is arts and where(arts.on("cpu").model_before()) == {"cpu"}
    assert arts.on("cpu").on("meta") is arts
    assert pickle.loads(pickle.dumps(arts)).device == "cpu"  # the reading worker's fact, not shipped
    model, extra = load_checkpoint(tmp_path / "results/pretrain_cache/k/model.pt", map_location="meta")
    assert where(model) == {"meta"} and all(t.device.type == "cpu" for t in extra.values() if torch.is_tensor(t))


def test_probes_and_ready_analyses_run_on_the_trials_device_others_on_cpu(make_ctx, monkeypatch):
    ctx = make_ctx(artifacts_device="meta")
    stored_trial(ctx)
    seen = {}

    def fake_probe(model, random_model, hmm, **kw):
        seen["probe"] = {next(model.parameters()).device.type, next(random_model.parameters()).device.type}
        return SimpleNamespace(table=pa.Table.from_pylist([], schema=SCHEMA))

    monkeypatch.setattr("rayexp.probes.probe_model", fake_probe)
    stages.probe_pre(ctx)
    assert seen["probe"] == {"meta"}

    def analysis(artifacts, params):
        seen.setdefault("analyses", []).append(artifacts.device)
        return SimpleNamespace(metrics={}, tables={}, figures={})

    monkeypatch.setattr(stages.registry, "get", lambda name, scope: SimpleNamespace(fn=analysis, needs=()))
    monkeypatch.setattr(stages.registry, "validate_params", lambda name, params: params)
    for name in ("weight_diff", "policy_kl"):
        stages.analysis_stage(name, {}).run(ctx)
    assert seen["analyses"] == ["meta", "cpu"]  # policy_kl acts through rayexp.policy: CPU tensors
    assert "weight_diff" in stages.DEVICE_READY and "composition" not in stages.DEVICE_READY


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
    for section in ("pretrain", "agreement", "quickstart", "ppo", "packing"):
        assert "error" not in results[section] and "skipped" not in results[section], section
    assert results["agreement"]["agree"] and results["quickstart"]["rc"] == 0
    assert {r["device"] for r in results["ppo"]["rows"]} == {"cpu"}
    assert (tmp_path / "quickstart_log.txt").read_text().count("ok: sweep") == 1
