"""Every leaf of every shipped sweep file, replaced by a value that cannot be right, is refused by
`rayexp validate` with exit 2 and one line naming it: no traceback, no hang, nothing launched.

The issue-23 corpus of hand-made malformed files is not in the project; this walks the files
themselves instead, each base dumped in full so the defaults' fields are mutated too. Values that
are merely unusual (0, -1, an empty list, a new name) may be accepted, but then nothing may crash.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib

import pytest
import yaml

from rayexp.cli import main
from rayexp.config import load_sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
# quickstart: every mutation; the others hold the free-form sections (process specs, reward and
# analysis params) that no schema field types, where a bad value is easiest to miss
SWEEPS = ["quickstart", "objective", "rare", "welfare", "development", "geometry"]
NAN, INF = float("nan"), float("inf")


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    if path:
        yield path, node


def _with(data, path, value):
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _wrong(value) -> list:
    """Values no field of this kind can take."""
    if isinstance(value, bool):
        return ["maybe", 2, [value], {"a": 1}]
    if isinstance(value, (int, float)):
        return [NAN, INF, -INF, "abc", {"a": 1}, {1: 2, "a": 1}]
    if isinstance(value, str):
        return [{"a": 1}, [value]]
    if isinstance(value, dict):
        return ["x", 5, {**value, "zz_unknown": 1}] if value else ["x", 5]
    if isinstance(value, list):
        return ["x", {"a": 1}]
    return []


def _unusual(value) -> list:
    """Values that may or may not be right for the field: accepted or refused, never a crash."""
    if isinstance(value, bool):
        return [None]
    if isinstance(value, (int, float)):
        return [0, -1, 10**30, 10**400, True, None, [value]]
    if isinstance(value, str):
        return ["", "no_such_name", 123, None, True]
    if isinstance(value, list):
        return [None, [], value + value]
    if isinstance(value, dict):
        return [None, {}, []]
    return []


def _cases(name: str, full: bool):
    text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    sweep, _ = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    data["base"] = json.loads(json.dumps(sweep.base.model_dump(mode="json")))
    for path, value in _leaves(data):
        if path[0] in ("name", "experiment", "description", "storage_path"):
            continue
        for bad in _wrong(value):
            yield data, path, bad, True
        if full:
            for odd in _unusual(value):
                yield data, path, odd, False


def _validate(tmp_path, capsys, data) -> tuple[int, list[str], str]:
    data = {**data, "storage_path": str(tmp_path / "results")}
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(data))
    code = main(["validate", str(file)])
    out = capsys.readouterr()
    return code, out.err.strip().splitlines(), out.err


@pytest.mark.parametrize("name", SWEEPS)
def test_every_leaf_of_a_shipped_sweep_refuses_a_wrong_value(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    accepted, crashed, checked = [], [], 0
    for data, path, value, must_refuse in _cases(name, full=name == "quickstart"):
        where = ".".join(map(str, path))
        code, lines, err = _validate(tmp_path, capsys, _with(data, path, value))
        checked += 1
        if code == 2 and len(lines) == 1 and "Traceback" not in err:
            continue
        if code == 0 and not must_refuse:
            continue
        (accepted if code == 0 else crashed).append(f"{where}={value!r}: rc {code}, {lines[:2]}")
    assert not crashed, crashed[:10]
    assert not accepted, accepted[:10]
    assert checked > 100 and not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_walk_reaches_the_free_form_sections():
    paths = {".".join(map(str, p)) for _, p, _, _ in _cases("objective", full=False)}
    assert "base.analyses.0.params.score_also.anti.reward_params.matrix.0.0" in paths
    assert any(p.startswith("tasks.") and ".reward_params." in p for p in paths)
    assert math.isnan(next(v for _, p, v, _ in _cases("quickstart", full=False) if p == ("base", "seed")))
