"""Build a process from a YAML-style spec dict, recursively.

    {"name": "mess3", "x": 0.05, "a": 0.85}
    {"name": "mixture", "components": [spec, spec], "weights": [0.5, 0.5]}
    {"name": "interleave", "factors": [spec, spec]}      # also "product"
    {"name": "gated", "a": spec, "b": spec, "trigger": 0}
    {"name": "outcome", "base": spec}                    # a registered process over a nested one
    {"name": "rare_token", "base": spec, "eps": 0.001}   # (also)

Every error names the offending key (with its path inside the spec) and lists what is valid.
"""

from __future__ import annotations

from envs import compose
from envs.process import HMM
from envs.processes import PROCESSES, build, signature_of

# composition name -> (required keys, optional keys)
COMPOSITIONS = {
    "product": (("factors",), ()),
    "interleave": (("factors",), ()),
    "mixture": (("components",), ("weights",)),
    "gated": (("a", "b", "trigger"), ()),
}
#: registered processes with parameters that are process specs, built here so errors name their path
NESTED = {"outcome": ("base",), "rare_token": ("base",)}


def valid_names() -> list[str]:
    return sorted(PROCESSES) + sorted(COMPOSITIONS)


def build_process(spec: dict, _path: str = "process") -> HMM:
    """An :class:`HMM` from a spec dict (see module docstring); ValueError naming the bad key."""
    if isinstance(spec, HMM):
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"{_path}: a process spec must be a dict with a 'name' key; got {spec!r}")  # noqa: TRY004 (spec errors are ValueErrors by contract)
    if "name" not in spec:
        raise ValueError(f"{_path}: missing key 'name'; valid names: {valid_names()}")
    name = spec["name"]
    params = {k: v for k, v in spec.items() if k != "name"}
    if name in COMPOSITIONS:
        required, optional = COMPOSITIONS[name]
        unknown = sorted(set(params) - set(required) - set(optional))
        if unknown:
            raise ValueError(
                f"{_path}: unknown key(s) {unknown} for {name!r}; valid keys: {['name', *required, *optional]}"
            )
        missing = [k for k in required if k not in params]
        if missing:
            raise ValueError(
                f"{_path}: missing key(s) {missing} for {name!r}; valid keys: {['name', *required, *optional]}"
            )
        if name == "gated":
            a = build_process(params["a"], f"{_path}.a")
            b = build_process(params["b"], f"{_path}.b")
            return _wrap(_path, compose.gated, a, b, params["trigger"])
        key = required[0]
        subs = params[key]
        if not isinstance(subs, (list, tuple)) or not subs:
            raise ValueError(f"{_path}.{key}: must be a non-empty list of process specs; got {subs!r}")
        built = [build_process(s, f"{_path}.{key}[{i}]") for i, s in enumerate(subs)]
        if name == "mixture":
            return _wrap(_path, compose.mixture, built, params.get("weights"))
        return _wrap(_path, getattr(compose, name), *built)
    if name not in PROCESSES:
        raise ValueError(f"{_path}: unknown process name {name!r}; valid names: {valid_names()}")
    for key in NESTED.get(name, ()):
        if key in params:
            params[key] = build_process(params[key], f"{_path}.{key}")
    try:
        return build(name, **params)
    except ValueError as e:
        raise ValueError(f"{_path}: {e}") from None


def _wrap(path, fn, *args):
    try:
        return fn(*args)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


__all__ = ["COMPOSITIONS", "NESTED", "build_process", "signature_of", "valid_names"]
