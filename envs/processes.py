"""Registry of named process factories (reference subset; the full registry comes with issue 2)."""

from __future__ import annotations

import numpy as np

from envs.process import HMM, from_matrices


def mess3(x: float = 0.15, a: float = 0.6) -> HMM:
    b = (1 - a) / 2
    y = 1 - 2 * x
    T = np.array(
        [
            [[a * y, b * x, b * x], [a * x, b * y, b * x], [a * x, b * x, b * y]],
            [[b * y, a * x, b * x], [b * x, a * y, b * x], [b * x, a * x, b * y]],
            [[b * y, b * x, a * x], [b * x, b * y, a * x], [b * x, b * x, a * y]],
        ]
    )
    return from_matrices(T, name=f"mess3(x={x}, a={a})")


def rrxor() -> HMM:
    S, Z, O, Tt, F = range(5)
    T = np.zeros((2, 5, 5))
    T[0, S, Z] = T[1, S, O] = 0.5
    T[0, Z, F] = T[1, Z, Tt] = 0.5  # second bit 0 -> xor 0 -> F; 1 -> xor 1 -> T
    T[0, O, Tt] = T[1, O, F] = 0.5
    T[1, Tt, S] = 1.0
    T[0, F, S] = 1.0
    return from_matrices(T, name="rrxor")


PROCESSES = {"mess3": mess3, "rrxor": rrxor}


def build(name: str, **params) -> HMM:
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
    return PROCESSES[name](**params)
