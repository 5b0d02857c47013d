"""Session-wide test settings.

Ray resolves 127.0.0.1 to the machine's routable address (and then talks to itself over it)
unless it believes clusters are disabled; tests must keep every byte on loopback, so this is set
before any test module imports ray, and subprocesses (CLI runs, `ray job submit`, raylets)
inherit it. Measured: with it, every Ray socket of a local cluster is on 127.0.0.1; without it,
a single `ray.init(_node_ip_address="127.0.0.1")` opened ~24 connections over the host address.
"""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
