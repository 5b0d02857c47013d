"""Registry of named process factories, and :func:`build_process`, which builds one from a spec dict.

Each factory is a pure function of its (validated) parameters returning an :class:`HMM` that
records what it is (``hmm.family``, ``hmm.params``), so code recognises a process by name rather
than by comparing matrices; :func:`from_matrices` records nothing, whatever its matrices.
:func:`build` checks names and parameters against the registry and the factory signature, so a
typo gets an error that lists what is valid. The spec builder lives here, not in a module of its
own, because the two need each other: ``outcome`` and ``rare_token`` take a nested process spec.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np

from envs import compose
from envs.outcome import outcome_hmm
from envs.process import HMM, from_matrices


def _check_range(process: str, param: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{process}: {param} must be a number in [{lo}, {hi}]; got {value!r}")  # noqa: TRY004 (spec errors are ValueErrors by contract)
    value = float(value)
    if not (lo <= value <= hi) or math.isnan(value):
        raise ValueError(f"{process}: {param} must be in [{lo}, {hi}]; got {value}")
    return value


def _registered(hmm: HMM, family: str, **params) -> HMM:
    """``hmm`` labelled with the factory that built it and its validated parameters."""
    return dataclasses.replace(hmm, family=family, params=params)


def mess3(x: float = 0.15, a: float = 0.6) -> HMM:
    """Mess3 (3 states, 3 tokens, non-unifilar). 0 <= x <= 0.5, 0 <= a <= 1.

    ``x`` sets how often the state moves, ``a`` how strongly a state emits its own token. The
    stationary distribution is uniform by symmetry and is set exactly (at x = 0 the chain never
    moves and has no unique stationary distribution).
    """
    x = _check_range("mess3", "x", x, 0.0, 0.5)
    a = _check_range("mess3", "a", a, 0.0, 1.0)
    b = (1 - a) / 2
    y = 1 - 2 * x
    T = np.array(
        [
            [[a * y, b * x, b * x], [a * x, b * y, b * x], [a * x, b * x, b * y]],
            [[b * y, a * x, b * x], [b * x, a * y, b * x], [b * x, a * x, b * y]],
            [[b * y, b * x, a * x], [b * x, b * y, a * x], [b * x, b * x, a * y]],
        ]
    )
    return _registered(from_matrices(T, np.full(3, 1 / 3), name=f"mess3(x={x:g}, a={a:g})"), "mess3", x=x, a=a)


def rrxor() -> HMM:
    """Random-random-XOR: two fair random bits, then their XOR. States S, 0, 1, T, F.

    Stationary distribution [2, 1, 1, 1, 1] / 6; its mixed-state presentation has 36 beliefs.
    """
    S, Z, O, Tt, F = range(5)
    T = np.zeros((2, 5, 5))
    T[0, S, Z] = T[1, S, O] = 0.5
    T[0, Z, F] = T[1, Z, Tt] = 0.5  # second bit 0 -> xor 0 -> F; 1 -> xor 1 -> T
    T[0, O, Tt] = T[1, O, F] = 0.5
    T[1, Tt, S] = 1.0
    T[0, F, S] = 1.0
    return _registered(from_matrices(T, name="rrxor"), "rrxor")


def z1r() -> HMM:
    """Zero-one-random: 0, then 1, then a fair random bit, repeated. States Z, O, R."""
    Z, O, R = range(3)
    T = np.zeros((2, 3, 3))
    T[0, Z, O] = 1.0
    T[1, O, R] = 1.0
    T[0, R, Z] = T[1, R, Z] = 0.5
    return _registered(from_matrices(T, name="z1r"), "z1r")


def noisy_not(eps: float = 0.1) -> HMM:
    """Bits in pairs (x, NOT x), x a fair random bit, the second bit flipped w.p. eps (0 <= eps <= 1).

    States: S (start of a pair), X0 / X1 (first bit was 0 / 1).
    """
    eps = _check_range("noisy_not", "eps", eps, 0.0, 1.0)
    S, X0, X1 = range(3)
    T = np.zeros((2, 3, 3))
    T[0, S, X0] = T[1, S, X1] = 0.5
    T[1, X0, S], T[0, X0, S] = 1 - eps, eps
    T[0, X1, S], T[1, X1, S] = 1 - eps, eps
    return _registered(from_matrices(T, name=f"noisy_not(eps={eps:g})"), "noisy_not", eps=eps)


#: noisy_and's hidden states by name: S starts a triple, X0 / X1 hold the first bit, P0 / P1 the AND
NOISY_AND_STATES = {"S": 0, "X0": 1, "X1": 2, "P0": 3, "P1": 4}
#: which of noisy_and's states emit each bit of a triple (x, y, and the noisy output x AND y)
NOISY_AND_EMITS = {"x": ("S",), "y": ("X0", "X1"), "out": ("P0", "P1")}


def noisy_and_states(bit: str) -> np.ndarray:
    """noisy_and's state ids that emit ``bit`` ("x", "y" or "out") of a triple."""
    return np.array([NOISY_AND_STATES[s] for s in NOISY_AND_EMITS[bit]], dtype=np.int64)


def noisy_and(eps: float = 0.1) -> HMM:
    """Bits in triples (x, y, x AND y), x and y fair random bits, the third flipped w.p. eps.

    States (:data:`NOISY_AND_STATES`): S (start of a triple), X0 / X1 (first bit), P0 / P1 (the AND
    of the two bits).
    """
    eps = _check_range("noisy_and", "eps", eps, 0.0, 1.0)
    S, X0, X1, P0, P1 = (NOISY_AND_STATES[k] for k in ("S", "X0", "X1", "P0", "P1"))
    T = np.zeros((2, 5, 5))
    T[0, S, X0] = T[1, S, X1] = 0.5
    T[0, X0, P0] = T[1, X0, P0] = 0.5
    T[0, X1, P0] = T[1, X1, P1] = 0.5
    T[0, P0, S], T[1, P0, S] = 1 - eps, eps
    T[1, P1, S], T[0, P1, S] = 1 - eps, eps
    return _registered(from_matrices(T, name=f"noisy_and(eps={eps:g})"), "noisy_and", eps=eps)


def outcome(base: dict | HMM | None = None) -> HMM:
    """A base process whose every token is followed by an action token and that action's outcome
    (rewarded / punished / neutral), research note 004; layout and rule in :mod:`envs.outcome`.

    ``base``: a process spec dict or an HMM with at least 3 states (default mess3 with its defaults).
    ``params["base"]`` records the spec (``{"name": family, **params}`` when given a registry HMM)
    so the process rebuilds from ``{"name": "outcome", **params}``.
    """
    spec, built = _nested("outcome", {"name": "mess3"} if base is None else base)
    return _registered(outcome_hmm(built), "outcome", base=spec)


def _nested(process: str, base) -> tuple[object, HMM]:
    """(spec to record, built HMM) of a nested ``base`` given as a spec dict or an HMM."""
    if isinstance(base, dict):
        return dict(base), build_process(base, "base")
    if isinstance(base, HMM):
        return ({"name": base.family, **base.params} if base.family else base), base
    raise ValueError(f"{process}: base must be a process spec dict or an HMM; got {base!r}")


def rare_token(base: dict | HMM | None = None, eps: float = 0.01) -> HMM:
    """``base`` plus one extra token (id ``base.vocab_size``) that it emits with probability ``eps``
    at every step, leaving its state where it was (the rare-capability study, research note 000
    §1.5.3). As ``gated``'s trigger it sets how often the rare factor shows up without an agent:
    a sequence of L tokens contains it with probability ``1 - (1 - eps)**L``; ``eps = 0`` never.
    """
    spec, built = _nested("rare_token", {"name": "mess3"} if base is None else base)
    eps = _check_range("rare_token", "eps", eps, 0.0, 0.5)
    S = built.n_states
    T = np.concatenate([(1 - eps) * built.T, eps * np.eye(S)[None]], axis=0)  # (V+1, S, S)
    names = (*built.token_names, "rare") if built.token_names else ()
    hmm = from_matrices(T, built.init, name=f"rare_token({built.name}, eps={eps:g})", token_names=names)
    return _registered(hmm, "rare_token", base=spec, eps=eps)


PROCESSES = {
    "mess3": mess3,
    "rrxor": rrxor,
    "z1r": z1r,
    "noisy_not": noisy_not,
    "noisy_and": noisy_and,
    "outcome": outcome,
    "rare_token": rare_token,
    "from_matrices": from_matrices,
}


def signature_of(name: str) -> str:
    sig = inspect.signature(PROCESSES[name], eval_str=True)
    return f"{name}{sig.replace(return_annotation=inspect.Signature.empty)}"


def build(name: str, **params) -> HMM:
    """``PROCESSES[name](**params)`` with the name and parameter names checked first."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
    sig = inspect.signature(PROCESSES[name])
    valid = [p for p, v in sig.parameters.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; valid signature: {signature_of(name)}")
    try:
        sig.bind(**params)
    except TypeError as e:
        raise ValueError(f"{name}: {e}; valid signature: {signature_of(name)}") from None
    return PROCESSES[name](**params)


# ---------------------------------------------------------------------------------------------
# Specs: build a process from a YAML-style spec dict, recursively.
#
#     {"name": "mess3", "x": 0.05, "a": 0.85}
#     {"name": "mixture", "components": [spec, spec], "weights": [0.5, 0.5]}
#     {"name": "interleave", "factors": [spec, spec]}      # also "product"
#     {"name": "gated", "a": spec, "b": spec, "trigger": 0}
#     {"name": "outcome", "base": spec}                    # a registered process over a nested one
#     {"name": "rare_token", "base": spec, "eps": 0.001}   # (also)
#
# Every error names the offending key (with its path inside the spec) and lists what is valid.

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
