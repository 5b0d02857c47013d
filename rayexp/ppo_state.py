"""Where a PPO run's resumable state lives: RLlib's algorithm state and ``progress.json`` beside it. Torch-
and RLlib-free (the algorithm only needs ``save_to_path``), so a stage can ask what was saved without
importing them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def save_state(algo, state_dir: Path, iteration: int, steps: int, history: list[dict]) -> None:
    """RLlib's algorithm state under ``algo_{iteration}``, then ``progress.json`` naming it (atomic rename),
    then older states removed: a kill at any point leaves one complete state to resume from."""
    name = f"algo_{iteration:06d}"
    algo.save_to_path(str(state_dir / name))
    tmp = state_dir / "progress.json.tmp"
    tmp.write_text(json.dumps({"iteration": iteration, "steps": steps, "algo": name, "history": history}))
    os.replace(tmp, state_dir / "progress.json")
    for old in state_dir.glob("algo_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def progress(state_dir: Path | None) -> dict | None:
    path = state_dir / "progress.json" if state_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None


def saved_iteration(state_dir: str | Path) -> int | None:
    """The last iteration whose state ``train_ppo`` saved in ``state_dir`` (it resumes after it), or None."""
    state = progress(Path(state_dir))
    return None if state is None else int(state["iteration"])
