"""Process specs (the YAML dicts ``envs.build_process`` reads): built once per spec, and named."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from envs import build_process as _build


@lru_cache(maxsize=256)
def _build_cached(spec_json: str):
    return _build(json.loads(spec_json))


def build_process(spec: dict[str, Any]):
    """envs.build_process, memoised by spec (validation builds the same spec for every grid point)."""
    return _build_cached(json.dumps(spec, sort_keys=True))


def process_label(spec: dict[str, Any]) -> str:
    """Short readable name of a process spec, e.g. mixture(mess3,rrxor)."""
    name = spec.get("name", "?")
    parts = spec.get("components") or spec.get("factors")
    if parts:
        return f"{name}({','.join(process_label(p) for p in parts)})"
    if name == "gated":
        return f"gated({process_label(spec.get('a', {}))},{process_label(spec.get('b', {}))})"
    return str(name)


def axis_label(value: Any) -> Any:
    """A sweep axis value as the console and summary show it: a process spec as its short label
    (mixture(mess3,rrxor)), anything else as it is."""
    return process_label(value) if isinstance(value, dict) and "name" in value else value


def metric_segment(text: Any) -> str:
    """``text`` as one segment of an MLflow metric name (keys allow [\\w./ :-]; '/' would nest), e.g.
    interleave(mess3,mess3) -> interleave_mess3_mess3 ('' for nothing left)."""
    return re.sub(r"[^\w.\-]+", "_", str(text)).strip("_")
