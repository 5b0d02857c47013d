"""Session-wide test settings.

Ray resolves 127.0.0.1 to the machine's routable address (and then talks to itself over it)
unless it believes clusters are disabled; tests must keep every byte on loopback, so this is set
before any test module imports ray, and subprocesses (CLI runs, `ray job submit`, raylets)
inherit it. Measured: with it, every Ray socket of a local cluster is on 127.0.0.1; without it,
a single `ray.init(_node_ip_address="127.0.0.1")` opened ~24 connections over the host address.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Every Ray head probes cloud metadata (169.254.169.254, metadata.google.internal) through
# `requests`, usage stats or not; a dead loopback proxy stops that. Ray's gRPC reads only the
# lower-case proxy variables, and loopback (the dashboard, job server) is exempt.
os.environ["HTTP_PROXY"] = os.environ["HTTPS_PROXY"] = "http://127.0.0.1:9"
os.environ["NO_PROXY"] = "127.0.0.1,localhost,::1"


#: test modules whose tests start Ray, in process or through the CLI. With pytest-xdist (``-n 2``, the
#: default in pyproject.toml) they all run on one worker, one after another and first, while the other
#: worker takes every other test: two local Rays at once on 2 cores would only slow each other down
#: (and put the monitor tests' timeouts at risk), and the golden sweeps, session fixtures, are then run
#: once, not once per worker. The Ray tests wait on process start-ups for much of their time, which is
#: what the other worker fills. A module that starts Ray belongs here (tests/test_suite_layout.py
#: checks it is).
RAY_MODULES = frozenset(
    {
        "test_behaviour",
        "test_cli",
        "test_cluster",
        "test_device_e2e",
        "test_monitor",
        "test_ppo",
        "test_studies",
        "test_sweep",
        "test_tms",
        "test_trial_artifacts",
    }
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.path.stem in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
    items.sort(key=lambda item: item.path.stem not in RAY_MODULES)  # the longest chain starts first (stable)


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_xdist_worker():
    """Under xdist, each worker computes on one thread (torch, and numpy's BLAS through threadpoolctl): the
    other worker and the Ray tests' trial processes share the same 2 cores, and two threads per worker
    only make them take turns. Tests that set threads themselves restore this on the way out."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store, no cluster address inherited."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


@dataclass(frozen=True)
class GoldenRun:
    """One golden sweep (tests/goldens/behaviour/NAME.yaml) run through the real CLI: its working
    directory (storage under ``results/``), MLflow store, experiment and every metric it logged."""

    dir: Path
    uri: str
    experiment: str
    metrics: dict

    def parent_run_id(self) -> str:
        from mlflow.tracking import MlflowClient

        c = MlflowClient(self.uri)
        exp = c.get_experiment_by_name(self.experiment)
        (run,) = c.search_runs([exp.experiment_id], filter_string="tags.`rayexp.kind` = 'sweep'")
        return run.info.run_id


@pytest.fixture(scope="session")
def golden_sweep(tmp_path_factory):
    """``golden_sweep(name)``: that golden sweep, run at most once per session. The behaviour test
    compares its metrics with the golden JSON; the study tests check the same run's artifacts and
    MLflow records, so each tiny sweep is paid for once (they were the same configs run twice)."""
    import yaml
    from behaviour import GOLDENS, run

    done: dict[str, GoldenRun | Exception] = {}

    def get(name: str) -> GoldenRun:
        if name not in done:
            sweep = GOLDENS / f"{name}.yaml"
            work = tmp_path_factory.mktemp(f"golden-{name}")
            try:
                metrics = run(sweep, work)
            except RuntimeError as e:  # a failed sweep fails every test that reads it, once, not once each
                done[name] = e
            else:
                experiment = yaml.safe_load(sweep.read_text())["experiment"]
                done[name] = GoldenRun(work, f"sqlite:///{work}/mlflow.db", experiment, metrics)
        if isinstance(done[name], Exception):
            raise done[name]
        return done[name]

    return get


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny models: more threads only add overhead on a shared machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
