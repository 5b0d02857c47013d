"""Bad input derived from the shipped sweep files: malformed values, YAML and files are refused
before any Ray work, each with exit 2 and one line naming the field or line and the cause (issue 23).
The walk over every leaf of every shipped sweep is tests/test_malformed.py."""

import pathlib
import sys
import time

import pytest
import yaml
from pydantic import ValidationError
from test_config import _set

from rayexp.cli import main
from rayexp.config import load_sweep
from rayexp.registry import validate_params

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Bad input derived from sweeps/quickstart.yaml (issue 23): each is exit 2 and one line on stderr
# naming the field or line and the cause, with no traceback and nothing launched.

QUICKSTART = (ROOT / "sweeps/quickstart.yaml").read_text()
INF, NAN = float("inf"), float("nan")


def quickstart(tmp_path) -> dict:
    data = yaml.safe_load(QUICKSTART)
    data["storage_path"] = str(tmp_path / "results")
    return data


def refused(tmp_path, capsys, monkeypatch, content) -> str:
    """Validate ``content`` (a sweep dict, YAML text or raw bytes); return the one error line."""
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "bad.yaml"
    if isinstance(content, dict):
        content = yaml.safe_dump(content)
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["validate", str(file)])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out
    assert len(lines) == 1 and "Traceback" not in out.err and not out.out, out
    assert lines[0].startswith(f"error: {file}: "), lines[0]
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
    return lines[0][len(f"error: {file}: ") :]


def _product(n: int) -> dict:
    return {"name": "product", "factors": [{"name": "mess3", "x": 0.05, "a": 0.85}] * n}


# (edit to quickstart, value, the path the error names, words of the cause)
BAD_VALUES = [
    ("base.ppo.entropy_coeff", INF, "base.ppo.entropy_coeff", "finite number"),
    ("base.ppo.grad_clip", NAN, "base.ppo.grad_clip", "finite number"),
    ("base.ppo.grad_clip", -1.0, "base.ppo.grad_clip", "greater than 0"),
    ("axes", {"grid": {"ppo.lr": [1e-3, INF]}}, "axes.grid.ppo.lr[1]", "finite number"),
    ("axes", {"grid": {"ppo.lr": [NAN]}}, "axes.grid.ppo.lr[0]", "finite number"),
    ("axes", {"sample": {"ppo.lr": {"uniform": [1e-4, INF]}}}, "axes.sample.ppo.lr.uniform[1]", "finite number"),
    ("axes", {"sample": {"ppo.lr": {"choice": [1e-3, NAN]}}}, "axes.sample.ppo.lr", "finite number"),
    ("base.pretrain.betas", [1.5, -0.1], "base.pretrain.betas[0]", "less than 1"),
    ("base.pretrain.betas", [0.9, -0.1], "base.pretrain.betas[1]", "greater than or equal to 0"),
    ("base.pretrain.weight_decay", INF, "base.pretrain.weight_decay", "finite number"),
    ("base.seed", 2**70, "base.seed", "less than or equal to 2147483647"),
    ("tasks.0.ppo", {"seed": 2**32}, "tasks[0].ppo.seed", "less than or equal to 2147483647"),
    ("base.model.n_heads", True, "base.model.n_heads", "valid integer"),
    ("base.ppo.lr", True, "base.ppo.lr", "valid number"),
    ("base.pretrain.steps", 800.0, "base.pretrain.steps", "valid integer"),
    ("resources.cpu", INF, "resources.cpu", "finite number"),
    ("resources.gpu", 1.5, "resources.gpu", "whole number"),
    ("resources.custom", {"node_a": -1}, "resources.custom.node_a", "greater than 0"),
    ("tasks.0.action_tokens", [0, 0, 0], "tasks[0].action_tokens", "[0] listed more than once"),
    ("base.probe.hooks", ["blocks.9.hook_resid_post"], "base.probe.hooks", "unknown hook(s)"),
    ("tasks.1.reward_params", {"factors": [0, INF]}, "tasks[1].reward_params.factors[1]", "finite number"),
    ("base.analyses.2.params.n_seq", INF, "base.analyses[2].params.n_seq", "finite number"),
    ("base.process", _product(8), "base.process", "6_561 hidden states"),
    ("tasks.0.process", _product(8), "tasks[0].process", "the caps are 4096 states and 1 GiB"),
    ("axes", {"grid": {"seed": list(range(100)), "pretrain.steps": list(range(1, 101))}}, "axes", "30_000 trials"),
    ("axes", {"num_samples": 5000}, "axes", "15_000 trials"),
    ("axes", {"num_samples": 10**6}, "axes.num_samples", "less than or equal to 10000"),
    ("max_failures", 10**9, "max_failures", "less than or equal to 100"),
    # found by walking every leaf of the shipped sweeps (tests/test_malformed.py)
    ("axes", {"grid": {"seed": [0, 1, 0]}}, "axes.grid", "lists 0 twice (at 0 and 2)"),
    ("sweep_analyses.0.group_by", ["process", "process"], "sweep_analyses[0].group_by", "listed more than once"),
    ("storage_path", "", "storage_path", "at least 1 character"),
    ("base.ppo.lr", 5.0, "base.ppo.lr", "less than or equal to 1"),
    ("base.pretrain.lr", 1e30, "base.pretrain.lr", "less than or equal to 1000"),
    ("base.pretrain.lr", 1.5, "base.pretrain", "lr 1.5 exceeds 1 with adamw"),
    ("base.pretrain.warmup_steps", 10**30, "base.pretrain.warmup_steps", "less than or equal to 10000000"),
    ("resources.cpu", 1e30, "resources.cpu", "less than or equal to 4096"),
    ("tasks.1.reward_params", {"factors": [0, True]}, "tasks[1].reward_params", "factors"),
    ("base.analyses.2.params.n_seq", True, "base.analyses[2].params.n_seq", "valid integer"),
]


@pytest.mark.parametrize("edit,value,path,words", BAD_VALUES, ids=[f"{b[2]}={b[1]!r:.20}" for b in BAD_VALUES])
def test_a_malformed_quickstart_is_refused_in_one_line(tmp_path, capsys, monkeypatch, edit, value, path, words):
    error = refused(tmp_path, capsys, monkeypatch, _set(quickstart(tmp_path), edit, value))
    assert error.startswith(f"{path}: ") and words in error, error


def test_a_base_value_that_an_axis_replaces_is_still_checked(tmp_path, capsys, monkeypatch):
    data = _set(quickstart(tmp_path), "base.process.factors.0.x", NAN)
    data["axes"] = {"grid": {"process": [{"name": "mess3", "x": 0.05, "a": 0.85}]}}
    error = refused(tmp_path, capsys, monkeypatch, data)
    assert error.startswith("base.process.factors[0].x: ") and "finite number" in error, error


def test_a_placeholder_base_process_under_a_process_grid_is_fine(tmp_path):
    data = quickstart(tmp_path)
    data["axes"] = {"grid": {"process": [data["base"]["process"]]}}
    data["base"]["process"] = {"name": "mess3"}  # no joint target on a leaf; every trial replaces it
    file = tmp_path / "ok.yaml"
    file.write_text(yaml.safe_dump(data))
    assert len(load_sweep(file)[1]) == 3


def test_score_also_is_built_on_the_env_action_set(tmp_path, capsys, monkeypatch):
    """The task's joint target acts on A's 3 tokens of the 6: an extra payoff has one row per action."""
    data = quickstart(tmp_path)
    rows = [[int(k == v) for v in range(6)] for k in range(3)]
    negation = {"name": "negation", "params": {"score_also": {"pay": {"reward": "payoff", "reward_params": {}}}}}
    data["base"]["analyses"], data["sweep_analyses"] = [negation], []
    data["tasks"] = [{"name": "b", "reward": "joint_target", "start_from": {"reward": "joint_target", "iterations": 1}}]
    negation["params"]["score_also"]["pay"]["reward_params"]["matrix"] = rows
    file = tmp_path / "ok.yaml"
    file.write_text(yaml.safe_dump(data))
    assert len(load_sweep(file)[1]) == 1
    negation["params"]["score_also"]["pay"]["reward_params"]["matrix"] = rows + rows
    error = refused(tmp_path, capsys, monkeypatch, data)
    assert error.startswith("base.analyses[0].params.score_also.pay.reward_params: ") and "shape (3, 6)" in error


def test_score_also_takes_reward_specs_only():
    with pytest.raises(ValidationError) as err:
        validate_params("negation", {"score_also": {"x": {"reward": ["payoff"]}}})
    assert "score_also.x.reward" in str(err.value)
    with pytest.raises(ValidationError):
        validate_params("negation", {"score_also": {"bad name": {"reward": "payoff"}}})
    with pytest.raises(ValidationError):
        validate_params("negation", {"lambdas": [0.5, 1e30]})


def test_a_huge_grid_is_refused_before_its_trials_are_built(tmp_path, capsys, monkeypatch):
    data = quickstart(tmp_path)
    data["axes"] = {
        "grid": {"seed": list(range(500)), "model.d_model": list(range(1, 501)), "pretrain.steps": [1, 2, 3]}
    }
    t0 = time.perf_counter()
    error = refused(tmp_path, capsys, monkeypatch, data)
    assert error.startswith("axes: 500 x 3 x 500 x 3 = 2_250_000 trials") and time.perf_counter() - t0 < 10


def test_a_storage_path_that_cannot_hold_results_is_refused(tmp_path, capsys, monkeypatch):
    data = quickstart(tmp_path)
    (tmp_path / "a_file").write_text("")
    data["storage_path"] = str(tmp_path / "a_file")
    assert (
        refused(tmp_path, capsys, monkeypatch, data)
        == f"storage_path: {tmp_path / 'a_file'} is a file, not a directory"
    )
    data["storage_path"] = str(tmp_path / "a_file" / "results")
    assert "is under" in refused(tmp_path, capsys, monkeypatch, data)
    data["storage_path"] = "/proc/rayexp_results"
    assert refused(tmp_path, capsys, monkeypatch, data).startswith("storage_path: cannot create directories in /proc")
    assert not list(tmp_path.glob(".rayexp-probe-*"))


def _bomb(levels: int = 9) -> str:
    """A "billion laughs": level k repeats level k-1 nine times, 9**levels values in all."""
    rows = ["{l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels)]
    return ", ".join(rows) + "}"


def _text(tmp_path, old: str, new: str) -> str:
    text = QUICKSTART.replace("storage_path: rayexp_results", f"storage_path: {tmp_path / 'results'}")
    assert text.count(old) == 1, old
    return text.replace(old, new)


POSITIVE = "  - name: positive_control\n    reward: joint_target\n"
DEEP = "{x: " + "[" * 5000 + "]" * 5000 + "}"
TEXT_CASES = [  # (old text of quickstart, new text, the error's words; LINE: the line of the new text)
    ("experiment: quickstart\n", "experiment: quickstart\nname: again\n", "duplicate key 'name' at line LINE"),
    ("  seed: 0\n", "  seed: 0\n  seed: 1\n", "duplicate key 'seed' at line LINE"),
    (POSITIVE, POSITIVE + f"    reward_params: {_bomb()}\n", "expands to more than 100_000 values"),
    ("    - representation\n", f"    - {{name: representation, params: {_bomb()}}}\n", "each alias counted"),
    (POSITIVE, POSITIVE + f"    reward_params: {DEEP}\n", "nested more than 64 levels deep"),
]


@pytest.mark.parametrize("old,new,words", TEXT_CASES, ids=["top_key", "nested_key", "bomb", "bomb2", "deep"])
def test_malformed_yaml_is_refused_in_one_line(tmp_path, capsys, monkeypatch, old, new, words):
    text = _text(tmp_path, old, new)
    line = text[: text.index(new) + len(new.rstrip())].count("\n") + 1  # the last line of the new text
    t0 = time.perf_counter()
    error = refused(tmp_path, capsys, monkeypatch, text)
    assert error.startswith(f"line {line}: ") and words.replace("LINE", str(line)) in error, error
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_file_that_is_not_utf8_is_refused(tmp_path, capsys, monkeypatch, encoding):
    text = _text(tmp_path, "# The flagship", "# The flagship (café)")
    assert "not UTF-8 text at byte" in refused(tmp_path, capsys, monkeypatch, text.encode(encoding))


def test_a_file_past_1_mib_is_refused_unread(tmp_path, capsys, monkeypatch):
    seeds = "[" + ", ".join(map(str, range(750_000))) + "]"  # the 750k-seed grid: 5.9 MB
    text = _text(tmp_path, "sweep_analyses:", f"axes: {{grid: {{seed: {seeds}}}}}\nsweep_analyses:")
    assert (
        refused(tmp_path, capsys, monkeypatch, text) == "larger than 1_048_576 bytes; a sweep file is a few kB of YAML"
    )


def test_exponents_are_numbers_and_merge_keys_may_override(tmp_path):
    file = tmp_path / "ok.yaml"
    file.write_text(_text(tmp_path, "lr: 1.0e-3, save_every", "lr: 1e-3, save_every"))  # YAML 1.1: a string
    sweep, _ = load_sweep(file)
    assert sweep.base.ppo.lr == 1e-3
    tasks = QUICKSTART[QUICKSTART.index("tasks:") : QUICKSTART.index("sweep_analyses:")]
    merged = "tasks:\n  - &neg {name: negative_control, reward: next_token}\n  - {<<: *neg, name: other}\n"
    file.write_text(_text(tmp_path, tasks, merged))  # a merge key's value overridden is no duplicate
    sweep, _ = load_sweep(file)
    assert [t.name for t in sweep.tasks] == ["negative_control", "other"]
