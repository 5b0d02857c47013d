"""A two-node Ray cluster on one machine (two raylets, token auth on): trials run on both nodes,
and `ray job submit` of a tiny sweep lands its runs in MLflow. Every Ray process stays on
loopback, and the tests check that on the live sockets.

`ray start` cannot do this: Ray swaps a loopback node address for the machine's routable one
whenever multi-node clusters are enabled, and refuses a second node when they are disabled. So
the cluster comes from `ray.cluster_utils.Cluster` (nodes started in-process through
`ray._private.node.Node`, which has no such refusal) in a helper process that disables clusters
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) before importing Ray: `get_node_ip_address()` is then
127.0.0.1 for the helper, its GCS, raylets and workers (they inherit the environment) and for
the drivers, which get the same variable.

Ray also makes HTTP requests of its own to the outside (cloud metadata probes, usage notes);
the cluster's environment routes those to a dead proxy on loopback (see the fixture).

While the cluster runs, a watch samples `ss` and the tests assert that every socket of the
cluster's processes and of each client (listening or connected) is on loopback.

The helper runs in its own session; teardown stops the cluster (SIGTERM -> `Cluster.shutdown`),
then kills by pid whatever is left of the processes the watch saw in the helper's or a client's
family. The helper also shuts the cluster down if the test process dies. Nothing else is touched
(no `ray stop`, which would stop every Ray on the machine).
"""

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_sweep import tiny_sweep, trial_runs, write_sweep

ROOT = Path(__file__).resolve().parents[1]

CLUSTER_SCRIPT = r"""
import json, os, signal, sys, time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read once, when Ray is imported
import ray
import ray._private.ray_constants as ray_constants
import ray._private.utils
from ray.cluster_utils import Cluster

assert not ray_constants.ENABLE_RAY_CLUSTER
# Cluster records its address in /tmp/ray/ray_current_cluster, where any other `ray.init()` on
# the machine would find it and join this cluster instead of starting its own.
ray._private.utils.write_ray_address = lambda *args, **kwargs: None
temp_dir, dashboard_port = sys.argv[1], int(sys.argv[2])
cluster = Cluster(
    initialize_head=True,
    head_node_args=dict(
        num_cpus=1,
        node_ip_address="127.0.0.1",
        resources={"head_node": 1},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        temp_dir=temp_dir,
    ),
)
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", resources={"worker_node": 1})
cluster.wait_for_nodes()
signal.signal(signal.SIGTERM, lambda *_: (cluster.shutdown(), os._exit(0)))
print(json.dumps({"address": cluster.address, "dashboard": cluster.webui_url}), flush=True)
parent = os.getppid()
while os.getppid() == parent:  # the test process died without tearing down: stop anyway
    time.sleep(2)
cluster.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent, session, start time) for every live (not zombie) process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":  # fields after comm: state ppid pgrp session ... starttime (20th)
                table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def family(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """root, its descendants, and whatever shares its session (started with start_new_session, so
    a session is ours alone): Ray's job entrypoints get sessions of their own, reparented
    processes keep theirs."""
    members = {pid for pid, (_, sid, _) in table.items() if sid == root} | {root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in members} - members
        members |= more
        grew = bool(more)
    return {pid for pid in members if pid in table}


def _host(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0].strip("[]").split("%")[0]


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # "*" (any address) and names
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


class SocketWatch:
    """Samples `ss -tuanp` every second and keeps every socket owned by a watched process family:
    the cluster helper's (GCS, raylets, dashboard, workers, job entrypoints) and each client's.
    Sampling sees sockets that live a second or more; short-lived ones can slip between samples."""

    def __init__(self):
        self.roots: set[int] = set()
        self.seen: dict[tuple, tuple] = {}  # (proto, state, local, peer, pid) -> (root, command)
        self.members: dict[int, int] = {}  # every process seen in a watched family -> its start time
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(1.0)

    def sample(self):
        with self._lock:
            table = processes()
            owner_root = {pid: root for root in list(self.roots) for pid in family(root, table)}
            self.members.update({pid: table[pid][2] for pid in owner_root})
            out = subprocess.run(["ss", "-tuanpH"], check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) < 7:
                    continue
                proto, state, local, peer, users = parts[0], parts[1], parts[4], parts[5], " ".join(parts[6:])
                for owner in users.split("),("):
                    if "pid=" not in owner:
                        continue
                    pid = int(owner.split("pid=")[1].split(",")[0])
                    if pid in owner_root:
                        self.seen[(proto, state, local, peer, pid)] = (owner_root[pid], owner.split('"')[1])

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def alive(self) -> list[int]:
        """Watched processes still running (same pid and start time, so never a reused pid)."""
        table = processes()
        return [pid for pid, start in self.members.items() if pid in table and table[pid][2] == start]

    def violations(self) -> list[tuple]:
        """Sockets bound to, or talking to, anything but loopback."""
        bad = []
        for (proto, state, local, peer, pid), (_, cmd) in self.seen.items():
            remote_ok = (peer.endswith(":*") and _host(peer) in ("*", "0.0.0.0", "::")) or is_loopback(_host(peer))
            if not is_loopback(_host(local)) or not remote_ok:
                bad.append((proto, state, local, peer, pid, cmd))
        return bad

    def count(self, root: int | None = None, state: str | None = None, cmd: str | None = None) -> int:
        return sum(
            (root is None or r == root) and (state is None or k[1] == state) and (cmd is None or c == cmd)
            for k, (r, c) in self.seen.items()
        )


def run_client(cmd: list[str], watch: SocketWatch, timeout: float, **kw) -> tuple[subprocess.CompletedProcess, int]:
    """Runs a Ray client in its own session, its sockets watched; returns (result, its pid)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw
    )
    watch.roots.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    watch.sample()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.pid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU, resource head_node) + worker (1 CPU, resource worker_node), all on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("cluster")
    # Ray's unix sockets live under the temp dir, whose path must stay short (AF_UNIX: 107 bytes)
    ray_tmp = tempfile.mkdtemp(prefix="raycl", dir="/tmp")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Every Ray head's dashboard probes cloud metadata servers (169.254.169.254,
        # metadata.google.internal) and, for clusters not made by ray.init, posts a "usage
        # disabled" note to usage-stats.ray.io, all through `requests`. A dead proxy on loopback
        # stops those at 127.0.0.1 (and saves the DNS lookups). Upper case only: gRPC reads just
        # the lower-case variables, so Ray's own loopback gRPC is left alone.
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "OMP_NUM_THREADS": "1",
    }
    for key in ("RAY_ADDRESS", "http_proxy", "https_proxy", "all_proxy", "ALL_PROXY", "no_proxy", "grpc_proxy"):
        env.pop(key, None)
    watch = SocketWatch()
    info, log = tmp / "cluster.json", tmp / "cluster.log"
    helper = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_SCRIPT, ray_tmp, str(free_port())],
        env=env,
        stdout=info.open("w"),
        stderr=log.open("w"),
        start_new_session=True,
    )
    watch.roots.add(helper.pid)
    try:
        end = time.time() + 240
        while not info.read_text().strip():
            if helper.poll() is not None or time.time() > end:
                raise RuntimeError(f"cluster helper did not come up ({helper.poll()}): {log.read_text()[-3000:]}")
            time.sleep(1)
        up = json.loads(info.read_text())
        assert up["address"].startswith("127.0.0.1:") and up["dashboard"].startswith("127.0.0.1:")
        yield {
            "address": up["address"],
            "dashboard": f"http://{up['dashboard']}",
            "env": env,
            "watch": watch,
            "helper": helper.pid,
        }
    finally:
        watch.stop()
        helper.send_signal(signal.SIGTERM)
        try:
            helper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        end = time.time() + 30
        while (left := watch.alive()) and time.time() < end:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        helper.wait(timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not watch.alive(), "cluster or client processes outlived teardown"


def assert_loopback_only(watch: SocketWatch) -> None:
    watch.sample()
    pids = {k[4] for k in watch.seen}
    print(f"watched {len(watch.seen)} sockets ({watch.count(state='ESTAB')} established) of {len(pids)} processes")
    assert watch.violations() == []


def test_trials_run_on_both_nodes(cluster, tmp_path):
    path = write_sweep(tmp_path, tiny_sweep("twonode", storage_path=str(tmp_path / "results")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**cluster["env"], "MLFLOW_TRACKING_URI": uri}
    watch = cluster["watch"]
    proc, driver = run_client(
        [sys.executable, "-m", "rayexp", "run", str(path), "--address", cluster["address"]],
        watch,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = trial_runs(uri, "twonode")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    # one CPU per node and per trial: running both at once needs both nodes
    assert len({r.data.tags["rayexp.node_id"] for r in runs}) == 2
    assert all("analysis/weight_diff/rel_frobenius" in r.data.metrics for r in runs)
    # the watch saw the cluster and the driver: both raylets listening, the driver connected
    raylets = {k[4] for k, (s, c) in watch.seen.items() if c == "raylet" and k[1] == "LISTEN"}
    assert len(raylets) == 2
    assert watch.count(root=driver, state="ESTAB") > 0
    assert watch.count(root=cluster["helper"], state="ESTAB") > 20
    assert_loopback_only(watch)


def test_ray_job_submit_with_token_auth(cluster, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    sweep = tiny_sweep("job", storage_path=str(tmp_path / "results"), tasks=[{"name": "next", "reward": "next_token"}])
    write_sweep(job_dir, sweep)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    watch = cluster["watch"]
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
    denied, _ = run_client(
        ["ray", "job", "list", "--address", cluster["dashboard"]],
        watch,
        timeout=120,
        env={**cluster["env"], "RAY_AUTH_TOKEN": "wrong"},
    )
    assert denied.returncode != 0  # the cluster refuses a client without its token
    assert "AuthenticationError" in denied.stderr
    for _ in range(12):  # the head's job agent can come up after its dashboard: Ray says to try again later
        proc, client = run_client(submit, watch, timeout=400, env=cluster["env"])
        if proc.returncode == 0 or "No available agent to submit job" not in proc.stdout + proc.stderr:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert "1/1 trials finished" in proc.stdout
    runs = trial_runs(uri, "job")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "ppo/reward_per_step" in runs[0].data.metrics
    port = cluster["dashboard"].rsplit(":", 1)[1]
    assert any(r == client and k[3].endswith(f":{port}") for k, (r, c) in watch.seen.items())
    # the job's driver (`rayexp run` under the job supervisor, in a session of its own) was watched
    assert watch.count(root=cluster["helper"], state="ESTAB", cmd="rayexp") > 0
    assert_loopback_only(watch)


def _quickstart(tmp_path: Path, **edits) -> Path:
    sweep = yaml.safe_load((ROOT / "sweeps/quickstart.yaml").read_text())
    sweep["storage_path"] = str(tmp_path / "results")
    for section, values in edits.items():
        (sweep["base"] if section == "ppo" else sweep)[section].update(values)
    path = tmp_path / "placement.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(
    "edits,error",
    [
        (  # each node has 1 CPU: the trial takes one node, its two runners find one CPU on the other
            {"ppo": {"num_env_runners": 2}},
            (
                "base.ppo.num_env_runners: a trial holds 1 CPU + 2 env runners x 1 CPU = 3 CPUs, but the cluster "
                "(2 CPUs on 2 node(s)) can place 1 env runners beside the trial's own CPUs"
            ),
        ),
        ({"resources": {"custom": {"node_a": 1}}}, "resources.custom.node_a: 1 node_a per trial requested but "),
        ({"resources": {"custom": {"head_node": 1, "worker_node": 1}}}, "resources: no node has 1 CPU, 1 head_node, 1"),
    ],
    ids=["env_runners", "custom_missing", "custom_split"],
)
def test_what_no_node_can_place_is_refused_before_any_trial(cluster, tmp_path, edits, error):
    """Not a wait for resources that never come: exit 2, one line, no MLflow run, no results."""
    path = _quickstart(tmp_path, **edits)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "rayexp", "run", str(path), "--address", cluster["address"]]
    proc, _ = run_client(cmd, cluster["watch"], timeout=120, env={**cluster["env"], "MLFLOW_TRACKING_URI": uri})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: {error}"), errors
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_env_runners_past_the_local_machine_are_refused_before_any_trial(tmp_path, capsys, monkeypatch):
    """The embedded Ray has this machine's CPUs; 1024 env runners need 1025 (1 for the trial)."""
    import ray

    from rayexp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = _quickstart(tmp_path, ppo={"num_env_runners": 1024})
    assert main(["validate", str(path)]) == 0  # fine on paper: the cluster is not known yet
    t0 = time.time()
    assert main(["run", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "base.ppo.num_env_runners: a trial holds 1 CPU + 1024 env runners" in errors[0]
    assert time.time() - t0 < 120 and not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()
