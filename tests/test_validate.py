"""`rayexp validate` is torch- and RLlib-free, and every section's typos and out-of-range sizes get
one line naming the field and exit code 2; the memory estimate behind the size check is exact on
a constructed case."""

import copy
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from test_config import _set

from models.config import (
    MAX_BATCH,
    MAX_D_HEAD,
    MAX_D_MLP,
    MAX_D_MODEL,
    MAX_D_VOCAB,
    MAX_N_CTX,
    MAX_N_HEADS,
    MAX_N_LAYERS,
    MAX_STEPS,
    TransformerConfig,
    activation_floats,
    param_count,
    train_memory_bytes,
)
from rayexp.checks import MEMORY_ENV
from rayexp.cli import main
from rayexp.config import load_sweep, resolve_trial
from rayexp.ppo_settings import MAX_ENV_RUNNERS, MAX_ENVS_PER_RUNNER, MAX_TRAIN_BATCH
from rayexp.settings import MAX_EPISODE_LEN, MAX_PROBE_SEQ, AnalysisRef, BaseTrial, SweepAnalysisRef

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
HEAVY = ("torch", "ray.rllib", "ray.tune")

TINY = {
    "name": "tiny",
    "base": {
        "process": {"name": "mess3", "x": 0.05, "a": 0.85},
        "model": {"n_layers": 1, "d_model": 16, "n_heads": 1, "d_head": 8, "d_mlp": 16, "n_ctx": 6},
        "ppo": {"iterations": 1, "train_batch_size": 60, "minibatch_size": 60},
    },
    "tasks": [{"name": "next", "reward": "next_token"}],
}


def validate(tmp_path, capsys, data) -> tuple[int, str, list[str]]:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(data))
    code = main(["validate", str(file)])
    return code, str(file), capsys.readouterr().err.strip().splitlines()


def assert_refused(tmp_path, capsys, data, path, words):
    code, file, err = validate(tmp_path, capsys, data)
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {file}: {path}: "), err[0]
    assert words in err[0], err[0]


@pytest.mark.parametrize("sweep", SWEEPS, ids=[s.stem for s in SWEEPS])
def test_validate_imports_neither_torch_nor_rllib(sweep):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rayexp", "validate", str(sweep.relative_to(ROOT))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ": ok: " in proc.stdout
    # -X importtime writes "import time: self | cumulative | <indent>module" per imported module
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"rayexp validate imported {heavy}"


# (edit to the tiny sweep, value, the path the one error line names)
TYPOS = [
    ("colour", "blue", "colour"),
    ("base.seeed", 1, "base.seeed"),
    ("base.model.d_modle", 16, "base.model.d_modle"),
    ("base.pretrain.stpes", 10, "base.pretrain.stpes"),
    ("base.probe.nseq", 100, "base.probe.nseq"),
    ("base.ppo.lrr", 0.1, "base.ppo.lrr"),
    ("base.artifacts.retension", "all", "base.artifacts.retension"),
    ("base.analyses", [{"name": "weight_diff", "parms": {}}], "base.analyses[0].parms"),
    ("base.analyses", [{"name": "weight_diff", "params": {"toll": 0.1}}], "base.analyses[0].params.toll"),
    ("tasks.0.rewardd", "next_token", "tasks[0].rewardd"),
    ("tasks.0.ppo", {"lrr": 0.1}, "tasks[0].ppo.lrr"),
    ("axes", {"gird": {"seed": [0, 1]}}, "axes.gird"),
    ("axes", {"grid": {"model.d_modle": [16]}}, "axes.grid.model.d_modle[0]"),
    ("resources.cpus", 1, "resources.cpus"),
    ("sweep_analyses", [{"name": "seed_spread", "group_byy": ["task"]}], "sweep_analyses[0].group_byy"),
    ("sweep_analyses", [{"name": "seed_spread", "params": {"n_bootz": 100}}], "sweep_analyses[0].params.n_bootz"),
]


@pytest.mark.parametrize("edit,value,path", TYPOS, ids=[t[2] for t in TYPOS])
def test_a_typo_in_any_section_is_one_line_exit_2(tmp_path, capsys, edit, value, path):
    assert_refused(tmp_path, capsys, _set(copy.deepcopy(TINY), edit, value), path, "unknown key")


# (edit, a value past the documented maximum, the path named, the maximum)
TOO_BIG = [
    ("base.model.n_ctx", 1_000_000, "base.model.n_ctx", MAX_N_CTX),
    ("base.model.d_model", 100_000, "base.model.d_model", MAX_D_MODEL),
    ("base.model.n_layers", 1000, "base.model.n_layers", MAX_N_LAYERS),
    ("base.model.n_heads", 1000, "base.model.n_heads", MAX_N_HEADS),
    ("base.model.d_head", 10_000, "base.model.d_head", MAX_D_HEAD),
    ("base.model.d_mlp", 1_000_000, "base.model.d_mlp", MAX_D_MLP),
    ("base.model.d_vocab", 1_000_000, "base.model.d_vocab", MAX_D_VOCAB),
    ("base.pretrain.batch_size", 1_000_000, "base.pretrain.batch_size", MAX_BATCH),
    ("base.pretrain.seq_len", 100_000, "base.pretrain.seq_len", MAX_N_CTX),
    ("base.pretrain.steps", 10**9, "base.pretrain.steps", MAX_STEPS),
    ("base.ppo.train_batch_size", 10**7, "base.ppo.train_batch_size", MAX_TRAIN_BATCH),
    ("base.ppo.minibatch_size", 10**6, "base.ppo.minibatch_size", MAX_BATCH),
    ("base.ppo.num_envs_per_env_runner", 100_000, "base.ppo.num_envs_per_env_runner", MAX_ENVS_PER_RUNNER),
    ("base.ppo.num_env_runners", 100_000, "base.ppo.num_env_runners", MAX_ENV_RUNNERS),
    ("base.probe.n_seq", 10**7, "base.probe.n_seq", MAX_PROBE_SEQ),
    ("base.probe.seq_len", 100_000, "base.probe.seq_len", MAX_N_CTX),
    ("base.artifacts.pretrain_checkpoints", 1000, "base.artifacts.pretrain_checkpoints", 200),
    ("base.artifacts.rollouts", 10**6, "base.artifacts.rollouts", 100_000),
    ("tasks.0.context", 100_000, "tasks[0].context", MAX_N_CTX),
    ("tasks.0.episode_len", 10**9, "tasks[0].episode_len", MAX_EPISODE_LEN),
    ("tasks.0.ppo", {"minibatch_size": 10**6}, "tasks[0].ppo.minibatch_size", MAX_BATCH),
    ("axes", {"grid": {"model.n_ctx": [6, 1_000_000]}}, "axes.grid.model.n_ctx[1]", MAX_N_CTX),
]


@pytest.mark.parametrize("edit,value,path,maximum", TOO_BIG, ids=[t[2] for t in TOO_BIG])
def test_a_size_past_its_maximum_is_one_line_exit_2(tmp_path, capsys, edit, value, path, maximum):
    data = _set(copy.deepcopy(TINY), edit, value)
    leaf = value if not isinstance(value, dict) else 10**6  # the nested cases all use a million
    assert_refused(tmp_path, capsys, data, path, f"less than or equal to {maximum} (got {leaf})")


# Within every maximum, but a 24-layer 1024-wide model over 1024 positions keeps ~3 MB of
# activations per sequence: 8 sequences fit in 64 GB, 512 do not.
BIG_MODEL = {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_head": 64, "d_mlp": 4096, "n_ctx": 1024}


def _big(pretrain_batch, ppo_minibatch, task_minibatch=None):
    data = copy.deepcopy(TINY)
    data["base"]["model"] = dict(BIG_MODEL)
    data["base"]["pretrain"] = {"batch_size": pretrain_batch}
    data["base"]["ppo"] = {"train_batch_size": 512, "minibatch_size": ppo_minibatch}
    if task_minibatch is not None:
        data["tasks"][0]["ppo"] = {"minibatch_size": task_minibatch}
    return data


def test_a_batch_that_does_not_fit_in_memory_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert validate(tmp_path, capsys, _big(8, 8))[0] == 0
    assert_refused(tmp_path, capsys, _big(512, 8), "base.pretrain.batch_size", "exceeds the budget of 64 GB")
    assert_refused(tmp_path, capsys, _big(8, 512), "base.ppo.minibatch_size", "exceeds the budget of 64 GB")
    assert_refused(tmp_path, capsys, _big(8, 8, 512), "tasks[0].ppo.minibatch_size", "GB (512 x 1024 positions")
    monkeypatch.setenv(MEMORY_ENV, "10000")
    assert validate(tmp_path, capsys, _big(512, 512))[0] == 0


def test_the_memory_budget_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "0.000001")
    assert_refused(tmp_path, capsys, TINY, "base.pretrain.batch_size", "exceeds the budget of 1e-06 GB")
    monkeypatch.setenv(MEMORY_ENV, "lots")
    code, _, err = validate(tmp_path, capsys, TINY)
    assert code == 2 and err == [f"error: {MEMORY_ENV}: must be a positive number of GB, got 'lots'"]


def test_memory_estimate_on_a_constructed_case():
    # 1 block, D=2, one head of width 2, F=4, V=3, 4 positions. Parameters: embeddings 3*2 + 4*2,
    # block 2 LayerNorms (2*4) + qkv (2*6 + 6) + out (2*2 + 2) + MLP (2*4 + 4 + 4*2 + 2) = 54,
    # final LayerNorm 4, unembed 2*3 + 3: 81.
    cfg = TransformerConfig(n_layers=1, d_model=2, n_heads=1, d_head=2, d_mlp=4, n_ctx=4, d_vocab=3)
    assert param_count(cfg) == 81
    # per position: block 2 * (2D + 2) + 3HE + HT + HE + F = 12 + 6 + 4 + 2 + 4 = 28, final LayerNorm 6, loss 3
    assert activation_floats(cfg, batch=2, seq_len=4) == 2 * 4 * 37
    # weights + grads + AdamW's two moments, and the activations, 4 bytes each
    assert train_memory_bytes(cfg, 2, 4, optimizer_states=2) == 4 * (4 * 81 + 296)
    assert train_memory_bytes(cfg, 2, 4, optimizer_states=0) == 4 * (2 * 81 + 296)


@pytest.mark.parametrize(
    "cfg",
    [
        TransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=5),
        TransformerConfig(n_layers=3, d_model=24, n_heads=2, d_head=16, d_mlp=40, n_ctx=12, d_vocab=7, act="gelu"),
        TransformerConfig(n_layers=1, d_model=16, n_heads=3, d_head=4, d_mlp=32, n_ctx=8, d_vocab=4, ln=False),
    ],
    ids=["relu", "gelu", "no_ln"],
)
def test_memory_estimate_counts_what_autograd_keeps(cfg):
    torch = pytest.importorskip("torch")
    from models.transformer import Transformer

    model = Transformer(cfg, seed=0)
    assert param_count(cfg) == model.num_params()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.is_floating_point() and t.dim() > 0 and t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    batch, seq_len = 3, cfg.n_ctx
    tokens = torch.randint(0, cfg.d_vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens[:, :-1])  # (B, T, V)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert sum(saved.values()) == activation_floats(cfg, batch, seq_len)


def test_a_bare_analysis_name_is_a_ref_without_params():
    assert AnalysisRef.model_validate("weight_diff") == AnalysisRef(name="weight_diff", params={})
    base = BaseTrial.model_validate(
        {"process": {"name": "mess3"}, "model": {}, "analyses": ["weight_diff", {"name": "policy_kl"}]}
    )
    assert [(a.name, a.params) for a in base.analyses] == [("weight_diff", {}), ("policy_kl", {})]
    assert BaseTrial.model_validate({"process": {"name": "mess3"}, "model": {}}).analyses == [
        AnalysisRef(name="weight_diff")
    ]
    assert SweepAnalysisRef.model_validate("seed_spread").group_by == ["task"]


SEMANTIC = [
    ("base.analyses", ["weight_diff", "weight_diff"], "base.analyses[1].name", "listed twice"),
    ("base.analyses", [{"name": "weight_diff", "params": {"tol": -1}}], "base.analyses[0].params.tol", "greater"),
    ("base.analyses", ["seed_spread"], "base.analyses[0].name", "unknown trial-level analysis"),
    ("sweep_analyses", ["weight_diff"], "sweep_analyses[0].name", "unknown sweep-level analysis"),
    ("sweep_analyses", [{"name": "seed_spread", "group_by": ["model.width"]}], "sweep_analyses[0].group_by[0]", ""),
    ("tasks.0.env", "maze", "tasks[0].env", "unknown env 'maze'"),
    ("tasks.0.env", "active_gated", "tasks[0].env", "needs a gated RL stream"),
    ("tasks.0.ppo", {"minibatch_size": 100}, "tasks[0].ppo", "exceeds train_batch_size 60"),
    ("base.model.d_vocab", 2, "base.model.d_vocab", "smaller than the process vocabulary 3"),
    (
        "base.analyses",
        [{"name": "negation", "params": {"score_also": {"x": {"reward": "nope"}}}}],
        "base.analyses[0].params.score_also.x.reward",
        "unknown reward 'nope'",
    ),
    ("tasks.0.env", "outcome", "tasks[0].env", "needs an outcome RL stream"),
    ("tasks.0.reward", "outcome", "tasks[0].env", "runs in env 'outcome'"),
    ("tasks.0.start_from", {"reward": "nope", "iterations": 2}, "tasks[0].start_from.reward", "unknown reward 'nope'"),
    ("tasks.0.start_from", {"reward": "next_token", "iterations": 0}, "tasks[0].start_from.iterations", "greater"),
    (
        "tasks.0.start_from",
        {"reward": "next_token", "iterations": 2, "reward_params": {"x": 1}},
        "tasks[0].start_from.reward_params",
        "unknown params",
    ),
    (
        "tasks.0",
        {"name": "p", "reward": "payoff", "reward_params": {"matrix": [[1, 0]]}},
        "tasks[0].reward_params",
        "payoff",
    ),
]


@pytest.mark.parametrize("edit,value,path,words", SEMANTIC, ids=[s[2] for s in SEMANTIC])
def test_cross_section_checks_name_the_field(tmp_path, capsys, edit, value, path, words):
    assert_refused(tmp_path, capsys, _set(copy.deepcopy(TINY), edit, value), path, words)


def test_new_sections_accept_what_they_document(tmp_path):
    data = copy.deepcopy(TINY)
    gated = {"name": "gated", "a": {"name": "mess3"}, "b": {"name": "rrxor"}, "trigger": 0}
    data["tasks"].append({"name": "rare", "env": "active_gated", "reward": "next_token", "process": gated})
    data["tasks"].append(dict(data["tasks"][-1], name="rare_null", shuffle_reward=True))  # the shadow-stream null
    data["base"]["artifacts"] = {"pretrain_checkpoints": 0, "retention": "final", "rollouts": 64}
    data["base"]["ppo"]["save_every"] = 0
    data["sweep_analyses"] = [{"name": "seed_spread", "group_by": ["task", "process", "model.d_model", "seed"]}]
    data["base"]["model"]["d_vocab"] = 12
    outcome = {"name": "outcome", "base": {"name": "mess3"}}
    data["tasks"].append({"name": "welfare", "env": "outcome", "reward": "outcome", "process": outcome})
    data["tasks"].append(dict(data["tasks"][-1], name="welfare_null", shuffle_reward=True))  # paid from a shadow
    start = {"reward": "next_token", "iterations": 3, "seed": 7}
    data["tasks"].append(
        {
            "name": "anti",
            "reward": "payoff",
            "reward_params": {"matrix": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
            "start_from": start,
        }
    )
    file = tmp_path / "ok.yaml"
    file.write_text(yaml.safe_dump(data))
    sweep, trials = load_sweep(file)
    assert [t.task.env for t in trials] == [
        "sequence",
        "active_gated",
        "active_gated",
        "outcome",
        "outcome",
        "sequence",
    ]
    assert [t.task.shuffle_reward for t in trials[1:5]] == [False, True, False, True]
    assert trials[-1].task.start_from.seed == 7 and trials[-1].task.start_from.iterations == 3
    assert sweep.base.artifacts.retention == "final" and sweep.base.ppo.save_every == 0


def test_a_dumped_base_resolves_to_the_same_trial():
    """Unset section fields follow the trial (pretrain and PPO seeds, d_vocab) after a dump and reload."""
    sweep, _ = load_sweep(ROOT / "sweeps/composition.yaml")
    base = sweep.base.model_dump()
    assert "seed" not in base["pretrain"] and "seed" not in base["ppo"] and "d_vocab" not in base["model"]
    trial = resolve_trial(base, sweep.tasks[0].model_dump(), {"seed": 3})
    again = resolve_trial(trial.model_dump(), sweep.tasks[0].model_dump(), {})
    assert again == trial
    assert "seed" not in trial.pretrain.model_fields_set and trial.model.d_vocab is None
    assert trial.model.resolve(5).d_vocab == 5


def test_hook_names_match_the_transformer():
    pytest.importorskip("torch")
    from models.config import hook_names
    from models.transformer import hook_names_for

    cfg = TransformerConfig(n_layers=3)
    assert hook_names(cfg) == hook_names_for(cfg)


@pytest.mark.parametrize("replicate", ["composition_z1r", "composition_replicate"])
def test_a_replication_sweep_is_composition_cpu_on_new_seeds(replicate):
    # a replication is a test of the rule only if nothing but the seeds (and which pairs) changed
    full = yaml.safe_load((ROOT / "sweeps" / "composition_cpu.yaml").read_text())
    rep = yaml.safe_load((ROOT / "sweeps" / f"{replicate}.yaml").read_text())
    f_grid, r_grid = full["axes"].pop("grid"), rep["axes"].pop("grid")
    assert not set(f_grid["seed"]) & set(r_grid["seed"]) and len(r_grid["seed"]) == 5
    assert all(p in f_grid["process"] for p in r_grid["process"])
    assert rep.pop("experiment") == replicate
    for key in ("name", "description", "experiment"):
        full.pop(key, None), rep.pop(key, None)
    assert rep == full


def test_a_shuffled_task_starts_from_the_same_m_a_as_the_others():
    """M_A is PPO on start_from's reward as it is: the reward-free arm of sweeps/objective.yaml shuffles
    its own reward, never M_A's, so every task shares one M_A (one cache key)."""
    from rayexp.config import load_points

    _, points = load_points(ROOT / "sweeps" / "objective.yaml")
    by_task = {p.trial.task.name: p.trial for p in points if p.trial.seed == 1}
    free = by_task["free"]
    assert free.env["shuffle_reward"] is True and "shuffle_reward" not in free.start.env
    assert all(t.start == free.start for t in by_task.values()), {k: t.start.env for k, t in by_task.items()}
