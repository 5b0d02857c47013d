"""A two-node Ray cluster on one machine (two raylets, token auth on): trials run on both nodes,
and `ray job submit` of a tiny sweep lands its runs in MLflow.

Nodes are started with ``--node-ip-address=127.0.0.1``; Ray itself replaces a loopback node
address by the machine's own address for any multi-node cluster (and refuses multi-node
clusters when told to stay on loopback), so the GCS and raylets listen on that address, behind
token auth. The dashboard / job server is bound to 127.0.0.1.

Each node is one `ray start --block` process in its own process group; the fixture kills both
groups, which takes the raylets, GCS, dashboard and workers with them (nothing else is touched:
no `ray stop`, which would stop every Ray on the machine).
"""

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import tiny_sweep, trial_runs, write_sweep

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node_ports(worker_port_base: int) -> list[str]:
    nm, om, agent, agent_grpc, metrics, renv = free_ports(6)
    return [
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={renv}",
        # below Linux's ephemeral range (32768+), where free_ports' picks come from
        f"--min-worker-port={worker_port_base}",
        f"--max-worker-port={worker_port_base + 150}",
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU, resource head_node) + worker (1 CPU, resource worker_node) on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("cluster")
    gcs, dashboard, client = free_ports(3)
    worker_ports = random.Random().randrange(11000, 29000, 400)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # multi-node needs Ray's default (enabled)
    common = [
        "ray",
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--disable-usage-stats",
    ]
    head = subprocess.Popen(
        [
            *common,
            "--head",
            f"--port={gcs}",
            f"--temp-dir={tmp / 'ray'}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            '--resources={"head_node": 1}',
            *node_ports(worker_ports),
        ],
        env=env,
        stdout=(tmp / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [head]
    try:
        address = f"127.0.0.1:{gcs}"
        _wait_nodes(address, env, 1, head, tmp / "head.log")
        worker = subprocess.Popen(
            [*common, f"--address={address}", '--resources={"worker_node": 1}', *node_ports(worker_ports + 200)],
            env=env,
            stdout=(tmp / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(worker)
        _wait_nodes(address, env, 2, worker, tmp / "worker.log")
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}", "env": env, "tmp": tmp}
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_nodes(address: str, env: dict, n: int, proc, log: Path, timeout: float = 240) -> None:
    """Until `ray start` says it is up and the cluster counts n live nodes."""
    probe = f"import ray; ray.init(address='{address}', log_to_driver=False); print(len([x for x in ray.nodes() if x['Alive']]))"
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if "Ray runtime started" in log.read_text():
            try:
                out = subprocess.run(
                    [sys.executable, "-c", probe], env=env, check=False, capture_output=True, text=True, timeout=60
                )
            except subprocess.TimeoutExpired:
                continue
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
        time.sleep(1)
    raise RuntimeError(f"cluster at {address} did not reach {n} nodes")


def test_trials_run_on_both_nodes(cluster, tmp_path):
    path = write_sweep(tmp_path, tiny_sweep("twonode", storage_path=str(tmp_path / "results")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**cluster["env"], "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [sys.executable, "-m", "rayexp", "run", str(path), "--address", cluster["address"]],
        env=env,
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = trial_runs(uri, "twonode")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    # one CPU per node and per trial: running both at once needs both nodes
    assert len({r.data.tags["rayexp.node_id"] for r in runs}) == 2
    assert all("analysis/weight_diff/rel_frobenius" in r.data.metrics for r in runs)


def test_ray_job_submit_with_token_auth(cluster, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    sweep = tiny_sweep("job", storage_path=str(tmp_path / "results"), tasks=[{"name": "next", "reward": "next_token"}])
    write_sweep(job_dir, sweep)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    submit = [
        "ray",
        "job",
        "submit",
        "--address",
        cluster["dashboard"],
        "--working-dir",
        str(job_dir),
        "--runtime-env-json",
        json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}}),
        "--",
        "rayexp",
        "run",
        "job.yaml",
    ]
    no_token = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN"}
    denied = subprocess.run(
        ["ray", "job", "list", "--address", cluster["dashboard"]],
        env={**no_token, "RAY_AUTH_TOKEN": "wrong"},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode != 0  # the cluster refuses a client without its token
    proc = subprocess.run(submit, env=cluster["env"], check=False, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert "1/1 trials finished" in proc.stdout
    runs = trial_runs(uri, "job")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "ppo/next/reward_per_step" in runs[0].data.metrics
