"""Session-wide test settings.

Ray resolves 127.0.0.1 to the machine's routable address (and then talks to itself over it)
unless it believes clusters are disabled; tests must keep every byte on loopback, so this is set
before any test module imports ray, and subprocesses (CLI runs, `ray job submit`, raylets)
inherit it. Measured: with it, every Ray socket of a local cluster is on 127.0.0.1; without it,
a single `ray.init(_node_ip_address="127.0.0.1")` opened ~24 connections over the host address.
"""

import os

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Every Ray head probes cloud metadata (169.254.169.254, metadata.google.internal) through
# `requests`, usage stats or not; a dead loopback proxy stops that. Ray's gRPC reads only the
# lower-case proxy variables, and loopback (the dashboard, job server) is exempt.
os.environ["HTTP_PROXY"] = os.environ["HTTPS_PROXY"] = "http://127.0.0.1:9"
os.environ["NO_PROXY"] = "127.0.0.1,localhost,::1"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store, no cluster address inherited."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path
