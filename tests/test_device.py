"""Where a trial's torch stages run (issue 24): one decision, rayexp.context.trial_device, from the GPU share the
trial holds and ``pretrain.device``; every stage asks it; a gpu-0 trial never asks torch about CUDA.

This machine has no GPU: CUDA's presence is monkeypatched, Ray is given a GPU it does not have, and torch's
``meta`` device stands in for a second device where a model must really move."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_sweep import tiny_sweep, write_sweep
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from models.checkpoint import load_checkpoint, save_checkpoint
from models.transformer import Transformer, TransformerConfig
from rayexp import stages
from rayexp.analysis import AnalysisResult
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
    # remote env runners: the copies' reset seeds are spawned, not offset (tests/test_active_env.py)
    assert "copy_seeds" not in build_ppo_config(PPOSettings(), env, ckpt).env_config
    runners = build_ppo_config(PPOSettings(num_env_runners=2), env, ckpt)
    assert runners.env_config["copy_seeds"] == "spawn" and runners.num_env_runners == 2


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


def test_probes_rollouts_and_ready_analyses_run_on_the_trials_device_others_on_cpu(make_ctx, monkeypatch):
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
        return AnalysisResult()  # the contract's result: metrics, tables, figures, arrays

    def fake_collect(model, env_config, n, seed=0):
        seen["rollouts"] = next(model.parameters()).device.type
        return {"rewards": np.zeros((1, 1))}

    monkeypatch.setattr(stages, "collect", fake_collect)
    stages.rollouts(ctx)
    assert seen["rollouts"] == "meta"

    monkeypatch.setattr(stages.registry, "get", lambda name, scope: SimpleNamespace(fn=analysis, needs=()))
    monkeypatch.setattr(stages.registry, "validate_params", lambda name, params: params)
    for name in ("weight_diff", "policy_kl", "llc", "an_analysis_not_ready"):
        stages.analysis_stage(name, {}).run(ctx)
    assert seen["analyses"] == ["meta", "meta", "meta", "cpu"]  # one not in DEVICE_READY reads CPU copies


def test_every_trial_analysis_is_device_ready():
    from rayexp.analysis import ANALYSES

    trial = {name for name, a in ANALYSES.items() if a.scope == "trial"}
    assert stages.DEVICE_READY <= trial  # no stale names
    # a new trial analysis runs on CPU copies until its code is device-aware and run by STAND_INS below
    assert trial - stages.DEVICE_READY == set(), "device-aware? add it to stages.DEVICE_READY and STAND_INS"
    assert {case[0] for case in STAND_INS} == set(stages.DEVICE_READY)


# ---------------------------------------------------------------------------------------------
# every device-ready analysis, run on a stand-in GPU: torch's meta device, checked as CUDA would be


ATEN = torch.ops.aten
#: ops that may take tensors of two devices, as on CUDA: copies between devices, and indexing with CPU indices
CROSS_DEVICE = {ATEN._to_copy.default, ATEN.copy_.default, ATEN.index.Tensor, ATEN.index_put_.default}


class StandInGPU(TorchDispatchMode):
    """``meta`` stands in for a GPU. An op that mixes it with CPU tensors (other than 0-dim scalars and the
    ops of CROSS_DEVICE) raises, as CUDA would; a copy back to the CPU gets seeded pseudo-random values of
    its shape and dtype, and ``.item()`` a number, so an analysis runs on to its end: its numbers mean
    nothing, where it computed them is what is checked. ``forwards``: the device of every model pass (its
    embedding lookup: ``forward``, ``run_with_cache`` and ``run_with_hooks`` alike)."""

    def __init__(self):
        super().__init__()
        self.gen, self.forwards = torch.Generator().manual_seed(0), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors if t.device.type != "cpu" or t.dim() > 0}
        if len(devices) > 1 and func not in CROSS_DEVICE:
            raise RuntimeError(f"{func} mixes devices {sorted(devices)}")
        if func is ATEN.embedding.default:
            self.forwards.append(args[0].device.type)
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and src.device.type == "meta":
            if func is ATEN._to_copy.default and torch.device(kwargs.get("device", "meta")).type == "cpu":
                dtype = kwargs.get("dtype") or src.dtype
                if dtype.is_floating_point:
                    return torch.rand(src.shape, generator=self.gen, dtype=torch.float64).to(dtype)
                return torch.zeros(src.shape, dtype=dtype)
            if func is ATEN._local_scalar_dense.default:
                return float(torch.rand(1, generator=self.gen)) if src.dtype.is_floating_point else 0
        return func(*args, **kwargs)


def test_the_stand_in_catches_what_cuda_would():
    model = Transformer(TINY).to("meta")
    with StandInGPU() as gpu, pytest.raises(RuntimeError, match="embedding.*mixes devices"):
        model(torch.zeros(2, 6, dtype=torch.long))  # CPU tokens into a GPU model
    with StandInGPU() as gpu, torch.no_grad():
        out = model(torch.zeros(2, 6, dtype=torch.long, device="meta")).cpu()
        assert out.shape == (2, 6, 5) and out.device.type == "cpu" and float(out.sum()) > 0
    assert gpu.forwards == ["meta"]


def study_trial(storage: Path, sweep_file: str, key: str, point: int = 0, steps=(), iterations=(1,)):
    """A stored trial of a study's sweep file (its resolved config and env) with tiny models: M_A when the
    task starts from one, pretraining checkpoints at ``steps``, and policies."""
    _, points = load_points(str(ROOT / "sweeps" / sweep_file))
    r = points[point].trial
    cfg = r.model.model_copy(update={"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 16})
    arts = TrialArtifacts(str(storage), key, "k")
    start = "start-k" if r.start is not None else None
    arts.write_meta(r.config.model_dump(), "pk", r.env, {"pretrain_seed": 0}, start_key=start, ppo=r.ppo.model_dump())

    def put(seed: int, rel: str) -> None:
        arts.store.put(save_checkpoint(storage / "m.pt", Transformer(cfg, seed=seed)), rel, checksum=True)

    put(0, "pretrain_cache/pk/model.pt")
    if start:
        put(1, f"pretrain_cache/{start}/model.pt")
    for step in steps:
        put(10 + step, f"pretrain_cache/pk/checkpoints/step_{step:07d}.pt")
    for it in iterations:
        arts.put_policy(save_checkpoint(storage / "m.pt", Transformer(cfg, seed=100 + it)), it)


#: (analysis, sweep file, trial, small params, pretraining checkpoints): every analysis of DEVICE_READY
STAND_INS = [
    ("weight_diff", "quickstart.yaml", 1, {}, ()),
    ("representation", "quickstart.yaml", 1, {"n_seq": 40}, ()),
    ("geometry", "geometry.yaml", 1, {"n_seq": 40, "lookup_k": [1], "n_random": 1}, ()),
    ("composition", "quickstart.yaml", 1, {"n_seq": 40, "lookup_k": [1]}, ()),
    ("policy_kl", "quickstart.yaml", 1, {"n_seq": 20}, ()),
    ("concept_vectors", "welfare.yaml", 0, {"n_seq": 60, "n_perm": 10, "n_random": 1}, ()),
    ("rare", "rare.yaml", 2, {"n_episodes": 10, "n_seq": 60}, ()),
    ("negation", "objective.yaml", 1, {"lambdas": [1], "iterations": 1, "n_seq": 20}, ()),
    (
        "llc",
        "development.yaml",
        0,
        {"num_burnin": 2, "num_draws": 8, "n_seq": 16, "batch_size": 16, "reward_episodes": 4},
        (0,),
    ),
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize(("name", "sweep", "point", "params", "steps"), STAND_INS, ids=[c[0] for c in STAND_INS])
def test_each_ready_analysis_runs_on_its_trials_device(
    tmp_path, monkeypatch, name, sweep, point, params, steps, device
):
    """On the stand-in GPU every model forward runs there and no op mixes devices; on the CPU (a gpu-0
    trial) nothing calls into torch.cuda. negation's retraining gets the trial's learner share and its
    model loads back to the device."""
    import matplotlib.pyplot as plt

    import models.checkpoint
    from rayexp import registry

    study_trial(tmp_path / "s", sweep, "t", point, steps)
    arts = TrialArtifacts(str(tmp_path / "s"), "t", "k", device=device)
    arts.learner_gpus = 0.25 if device == "meta" else 0.0
    retrained = {}

    def fake_ppo(settings, env, start, out, callback=None, gpu=0.0, **kw):
        retrained["gpu"] = gpu
        save_checkpoint(out, load_checkpoint(start)[0])

    def spy_load(path, map_location="cpu"):
        if str(path).endswith("_retrained.pt"):
            retrained["to"] = str(map_location)
        return load_checkpoint(path, map_location)

    monkeypatch.setattr("rayexp.ppo.train_ppo", fake_ppo)
    monkeypatch.setattr(models.checkpoint, "load_checkpoint", spy_load)
    raise_on_cuda(monkeypatch)
    fn = registry.get(name, "trial").fn
    if device == "meta":
        with StandInGPU() as gpu:
            fn(arts, registry.validate_params(name, params))
        assert set(gpu.forwards) == (set() if name == "weight_diff" else {"meta"})  # weight_diff reads weights only
    else:
        fn(arts, registry.validate_params(name, params))
    plt.close("all")
    assert not torch.cuda.is_initialized()
    if name == "negation":
        assert retrained == {"gpu": arts.learner_gpus, "to": device}


def test_a_trials_learner_share_reaches_its_artifacts(make_ctx):
    assert make_ctx("cuda", 0.25).artifacts.learner_gpus == 0.25
    assert make_ctx("cpu", 0.25).artifacts.learner_gpus == 0.0
    assert make_ctx("cpu").artifacts.on("meta").learner_gpus == 0.0  # another device's copy trains on the CPU
