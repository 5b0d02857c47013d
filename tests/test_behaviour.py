"""A redesign must not change what a trial measures: each tiny sweep in tests/goldens/behaviour/
runs through the real CLI and every metric it logs to MLflow (trial and parent runs, every step)
must equal the one captured before (tests/behaviour.py says how they were made)."""

import json

import pytest
from behaviour import differences, same_machine, sweep_files


@pytest.mark.slow
@pytest.mark.parametrize("sweep", sweep_files(), ids=lambda p: p.stem)
def test_every_logged_metric_is_unchanged(sweep, golden_sweep):
    want = json.loads(sweep.with_suffix(".json").read_text())
    got = golden_sweep(sweep.stem).metrics  # the run tests/test_studies.py checks too
    assert sum(len(m) for m in got.values()) > 100  # the sweep really logged its analyses
    same = same_machine()
    diff = differences(want, got, same)
    where = "this machine" if same else "another machine (float noise between machines allowed, tests/behaviour.py)"
    assert not diff, f"goldens captured on {where}:\n" + "\n".join(diff[:30])


def test_a_changed_metric_is_reported():
    want = {"parent": {"a": [[0, 1.0]], "b": [[0, 2.0], [1, 3.0]]}, "trial/x": {"c": [[0, float("nan")]]}}
    assert differences(want, json.loads(json.dumps(want))) == []
    got = {"parent": {"a": [[0, 1.0 + 1e-3]], "b": [[0, 2.0]]}, "trial/x": {"c": [[0, float("nan")]], "d": [[0, 1.0]]}}
    diff = differences(want, got)
    assert any(" a @ 0" in d for d in diff) and any(" b: steps" in d for d in diff)
    assert any(" d: new metric" in d for d in diff)
    # on another machine float noise passes, a change of behaviour does not
    noise = {"parent": {"a": [[0, 1.0 + 2e-5]], "b": [[0, 2.0], [1, 3.0 * (1 + 5e-4)]]}, "trial/x": want["trial/x"]}
    assert differences(want, noise) != [] and differences(want, noise, same=False) == []
    moved = {"parent": {"a": [[0, 1.01]], "b": want["parent"]["b"]}, "trial/x": want["trial/x"]}
    assert any(" a @ 0" in d for d in differences(want, moved, same=False))
    chains = {"trial/x": {"analysis/llc/pretrain/final_rhat": [[0, 1.93]]}}
    near = {"trial/x": {"analysis/llc/pretrain/final_rhat": [[0, 1.91]]}}
    assert differences(chains, near, same=False) == [] and differences(chains, near) != []
