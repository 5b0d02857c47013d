"""Sweep files: parsing, resolution of trials, and one-line errors for bad input."""

import copy
import re

import pytest
import yaml

from rayexp.checks import check_placement
from rayexp.config import (
    SweepError,
    check_cluster,
    flatten,
    grid_points,
    load_points,
    load_sweep,
    parse_sweep,
    resolve_trial,
)
from rayexp.resolved import FieldError
from rayexp.specs import process_label

TINY = {
    "name": "tiny",
    "storage_path": "results",
    "base": {
        "seed": 0,
        "process": {"name": "mess3", "x": 0.05, "a": 0.85},
        "model": {"n_layers": 1, "d_model": 16, "n_heads": 1, "d_head": 8, "d_mlp": 16, "n_ctx": 6},
        "ppo": {"iterations": 1, "train_batch_size": 60, "minibatch_size": 60},
    },
    "tasks": [{"name": "next", "reward": "next_token"}],
}


def write(tmp_path, data, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_shipped_sweeps_are_valid():
    for name in ("quickstart", "composition", "logic"):
        sweep, trials = load_sweep(f"sweeps/{name}.yaml")
        assert trials and all(t.task.name in {x.name for x in sweep.tasks} for t in trials)


def test_composition_grid_is_the_full_product():
    sweep, trials = load_sweep("sweeps/composition.yaml")
    n_grid = 1
    for values in sweep.axes.grid.values():
        n_grid *= len(values)
    assert len(trials) == n_grid * len(sweep.tasks)
    assert len(sweep.axes.grid["seed"]) >= 5 and sweep.resources.gpu > 0


def test_grid_and_tasks_resolve_to_trials(tmp_path):
    data = copy.deepcopy(TINY)
    data["axes"] = {"grid": {"seed": [0, 1, 2], "model.d_model": [16, 32]}}
    data["tasks"].append({"name": "other", "reward": "next_token", "context": 4})
    sweep, trials = load_sweep(write(tmp_path, data))
    assert len(trials) == 3 * 2 * 2
    assert {(t.seed, t.model.d_model, t.task.name) for t in trials} == {
        (s, d, n) for s in (0, 1, 2) for d in (16, 32) for n in ("next", "other")
    }
    assert len(grid_points(sweep)) == 6


def test_resolve_does_not_mutate_base():
    base = copy.deepcopy(TINY["base"])
    trial = resolve_trial(base, TINY["tasks"][0], {"model.d_model": 64, "pretrain.lr": 0.01})
    assert trial.model.d_model == 64 and trial.pretrain.lr == 0.01
    assert base == TINY["base"]


def test_flatten_and_labels():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": "{}"}
    spec = {"name": "mixture", "components": [{"name": "mess3"}, {"name": "rrxor"}]}
    assert process_label(spec) == "mixture(mess3,rrxor)"


def test_sampled_axis_checked_at_its_bounds(tmp_path):
    data = copy.deepcopy(TINY)
    data["axes"] = {"sample": {"ppo.lr": {"loguniform": [1e-5, 1e-3]}}, "num_samples": 3}
    _sweep, trials = load_sweep(write(tmp_path, data))
    assert [t.ppo.lr for t in trials] == [1e-5, 1e-3]


def test_cluster_checks():
    sweep = parse_sweep(yaml.safe_dump({**TINY, "resources": {"cpu": 1, "gpu": 0.5}}), "f.yaml")
    with pytest.raises(SweepError, match=r"^f.yaml: resources.gpu: .*no GPU"):
        check_cluster(sweep, "f.yaml", [{"CPU": 2.0}])
    check_cluster(sweep, "f.yaml", [{"CPU": 2.0, "GPU": 1.0}])
    sweep = parse_sweep(yaml.safe_dump({**TINY, "resources": {"cpu": 4}}), "f.yaml")
    with pytest.raises(SweepError, match="resources.cpu: 4 CPU per trial but the largest node has 2"):
        check_cluster(sweep, "f.yaml", [{"CPU": 2.0}, {"CPU": 2.0}])
    sweep = parse_sweep(yaml.safe_dump({**TINY, "resources": {"custom": {"node_b": 0.1}}}), "f.yaml")
    with pytest.raises(SweepError, match=r"resources.custom.node_b: .*no node_b"):
        check_cluster(sweep, "f.yaml", [{"CPU": 2.0}])
    sweep = parse_sweep(yaml.safe_dump({**TINY, "resources": {"cpu": 2, "gpu": 1}}), "f.yaml")
    with pytest.raises(SweepError, match=r"^f.yaml: resources: no node has 2 CPU, 1 GPU at once"):
        check_cluster(sweep, "f.yaml", [{"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}])


def _points(tmp_path, data):
    return load_points(write(tmp_path, data))


@pytest.mark.parametrize(
    "edit,runners,nodes,path",
    [
        ("base.ppo.num_env_runners", 64, [{"CPU": 2.0}], "base.ppo.num_env_runners"),
        ("tasks.0.ppo", {"num_env_runners": 2}, [{"CPU": 2.0}], "tasks[0].ppo.num_env_runners"),
        ("axes", {"grid": {"ppo.num_env_runners": [0, 3]}}, [{"CPU": 1.5}, {"CPU": 2.0}], None),
    ],
    ids=["base", "task", "axis"],
)
def test_the_cluster_check_counts_every_env_runner(tmp_path, edit, runners, nodes, path):
    """A trial holds its own CPUs and one per env runner (the learner is local: in its own bundle)."""
    sweep, points = _points(tmp_path, _set(copy.deepcopy(TINY), edit, runners))
    path = path or "axes.grid.ppo.num_env_runners[1]"
    with pytest.raises(SweepError, match=rf": {re.escape(path)}: a trial holds 1 CPU \+ \d+ env runners x 1 CPU"):
        check_cluster(sweep, "f.yaml", nodes, points)
    check_cluster(sweep, "f.yaml", [{"CPU": 1.0 + max(p.trial.ppo.num_env_runners for p in points)}], points)


def test_env_runners_may_spread_over_nodes_but_the_trial_bundle_may_not():
    bundles = [{"CPU": 2.0, "GPU": 1.0}] + [{"CPU": 1.0}] * 3
    check_placement(bundles, [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 3.0}], "r")  # runners on the other node
    with pytest.raises(FieldError):  # the GPU node has no CPU left for the trial's runners, the other 2
        check_placement(bundles, [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.5}], "r")
    check_placement([{"CPU": 0.5}] + [{"CPU": 1.0}] * 2, [{"CPU": 2.5}], "r")  # 0.5 + 2 fit in 2.5


def _set(data, dotted, value):
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return data


INTERLEAVE = {"name": "interleave", "factors": [{"name": "mess3"}, {"name": "rrxor"}]}
MIXTURE = {"name": "mixture", "components": [{"name": "mess3"}, {"name": "rrxor"}]}

# (edit to the tiny sweep, field path the error must name, words the message must contain)
MALFORMED = [
    ("base.model.n_layers", "two", "base.model.n_layers", "integer"),
    ("colour", "blue", "colour", "unknown key"),
    ("base.ppo.lrr", 0.1, "base.ppo.lrr", "unknown key"),
    ("base.ppo.lr", -1e-3, "base.ppo.lr", "learning rate must be >= 0"),
    ("base.pretrain.lr", -0.01, "base.pretrain.lr", ">= 0"),
    ("base.process.name", "mess4", "base.process", "unknown process name 'mess4'"),
    (
        "base.process",
        {"name": "mixture", "components": [{"name": "mess3", "x": 2}]},
        "base.process.components[0]",
        "x must be in",
    ),
    ("tasks.0.context", 64, "tasks[0].context", "exceeds model.n_ctx 6"),
    ("base.probe.seq_len", 7, "base.probe.seq_len", "exceeds model.n_ctx 6"),
    ("tasks.0.reward", "speed", "tasks[0].reward", "unknown reward 'speed'"),
    ("tasks.0.process", INTERLEAVE, "tasks[0].process", "vocabulary 5 exceeds the model's d_vocab 3"),
    ("base.analyses", ["weight_diff", "astrology"], "base.analyses[1].name", "analysis 'astrology'"),
    ("axes", {"grid": {"model.d_model": [16, "big"]}}, "axes.grid.model.d_model[1]", "integer"),
    ("axes", {"sample": {"ppo.lr": {"uniform": [0.1, 0.01]}}}, "axes.sample.ppo.lr", "low < high"),
    ("resources.gpu", -1, "resources.gpu", "greater than or equal to 0"),
    ("tasks", [], "tasks", "at least 1"),
    ("max_failures", 1.5, "max_failures", "integer"),
]


@pytest.mark.parametrize("edit,value,path,words", MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_sweep_names_file_field_and_problem(tmp_path, edit, value, path, words):
    data = _set(copy.deepcopy(TINY), edit, value)
    file = write(tmp_path, data)
    with pytest.raises(SweepError) as info:
        load_sweep(file)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{file}: {path}: "), msg
    assert words in msg, msg


def test_joint_target_needs_an_interleaved_stream(tmp_path):
    data = copy.deepcopy(TINY)
    data["base"]["process"] = MIXTURE
    data["tasks"] = [{"name": "pos", "reward": "joint_target", "process": MIXTURE}]
    with pytest.raises(SweepError, match=r"tasks\[0\].reward_params: .*joint_target"):
        load_sweep(write(tmp_path, data))
    data["tasks"][0]["process"] = INTERLEAVE
    _, trials = load_sweep(write(tmp_path, data))
    assert trials[0].task.process == INTERLEAVE


@pytest.mark.parametrize(
    "text,words",
    [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "YAML mapping"), ("", "YAML mapping")],
)
def test_unparseable_files(tmp_path, text, words):
    file = write(tmp_path, text)
    with pytest.raises(SweepError, match=words) as info:
        load_sweep(file)
    assert str(info.value).startswith(str(file))


def test_missing_file(tmp_path):
    with pytest.raises(SweepError, match="cannot read"):
        load_sweep(tmp_path / "nope.yaml")


def test_driver_resolves_each_trial_once_and_draws_sampled_axes_from_the_sweep_seed(tmp_path):
    from rayexp.config import load_points
    from rayexp.resolved import ResolvedTrial

    data = copy.deepcopy(TINY)
    data["axes"] = {"grid": {"seed": [0, 1]}, "sample": {"ppo.lr": {"loguniform": [1e-4, 1e-2]}}, "num_samples": 3}
    data["tasks"][0]["ppo"] = {"num_epochs": 2}
    path = write(tmp_path, data)
    _sweep, points = load_points(path)
    _, again = load_points(path)
    assert len(points) == 6 and [p.axes for p in points] == [p.axes for p in again]  # reproducible draws
    lrs = [p.axes["ppo.lr"] for p in points]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 6
    for p in points:
        t = p.trial
        assert t.ppo.lr == p.axes["ppo.lr"] and t.ppo.seed == t.seed == p.axes["seed"]  # unset seed follows
        assert t.ppo.num_epochs == 2 and t.model.d_vocab == 3 and t.env["action_tokens"] == [0, 1, 2]
        # what a worker receives: the dump, validated back to the same frozen object
        assert ResolvedTrial.model_validate(t.model_dump()) == t
    assert points[0].trial.config.task.ppo.model_dump() == {"num_epochs": 2}  # the task's overrides as written
