"""Stream specs the tests share: the PPO pairs' Mess3 factor (sweeps/composition_cpu.yaml) and their
interleave of two of them."""

MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}
INTERLEAVE = {"name": "interleave", "factors": [MESS3, MESS3]}
