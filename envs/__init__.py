"""Hidden Markov processes with exact belief states (numpy + numba only)."""

from envs.process import HMM, from_matrices
from envs.processes import PROCESSES, build_process

__all__ = ["HMM", "PROCESSES", "build_process", "from_matrices"]
