"""Connecting to Ray: join a cluster, or start an embedded Ray that never leaves 127.0.0.1.

Its own module so that both the sweep driver and a trial's debug path use it without importing
each other.
"""

from __future__ import annotations

import os

# Ray's usage-stats code, run by every head even with usage stats off, probes cloud metadata
# (169.254.169.254, metadata.google.internal) through `requests`. A local Ray on a laptop or CI
# has no business leaving the machine, so while it starts, `requests` is pointed at a dead
# loopback proxy; Ray's own gRPC reads only the lower-case proxy variables and is unaffected.
_NO_EGRESS = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1",
}


def start_local_ray(num_cpus: int | None = None, include_dashboard: bool = False) -> None:
    """Start an embedded Ray whose every process (GCS, raylet, workers, dashboard) stays on 127.0.0.1."""
    import ray
    import ray._private.ray_constants

    # Ray maps 127.0.0.1 to the machine's routable address unless clusters are "disabled", as on
    # macOS/Windows; that switch keeps an embedded Ray on loopback. The environment is restored
    # after start-up (the Ray processes keep their copy), so later clusters are unaffected.
    overrides = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if not any(os.environ.get(k) or os.environ.get(k.lower()) for k in ("HTTP_PROXY", "HTTPS_PROXY")):
        overrides.update(_NO_EGRESS)  # a user's own proxy settings are left alone
    before = {k: os.environ.get(k) for k in overrides}
    constants = ray._private.ray_constants
    enabled = constants.ENABLE_RAY_CLUSTER
    os.environ.update(overrides)
    constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            dashboard_host="127.0.0.1",
            include_dashboard=include_dashboard,
        )
    finally:
        constants.ENABLE_RAY_CLUSTER = enabled
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_HERE = os.path.dirname(os.path.realpath(__file__))  # the rayexp package this process runs


def shadowing_checkout(cwd: str | None = None) -> str | None:
    """The ``rayexp`` package in ``cwd`` when it is not the one this process imported, else None.

    Ray puts the driver's working directory on its workers' import path, so workers started from a
    directory holding another checkout import *that* code while the driver runs this one: one run,
    two versions (seen: ``rayexp analyze`` run inside an old clone computed the old metrics)."""
    there = os.path.join(os.path.realpath(cwd or os.getcwd()), "rayexp")
    if os.path.isfile(os.path.join(there, "__init__.py")) and there != _HERE:
        return there
    return None


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join a cluster, or start an embedded Ray on 127.0.0.1."""
    import sys

    import ray

    if other := shadowing_checkout():
        print(
            f"warning: this directory holds another rayexp ({other}) than the one running ({_HERE}); Ray "
            "workers import from the working directory, so they would run that code. Run from elsewhere, "
            "or install this checkout (pip install -e .).",
            file=sys.stderr,
        )

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        start_local_ray(num_cpus, include_dashboard=os.environ.get("RAYEXP_DASHBOARD", "0") == "1")
