"""Content-addressed pretraining cache under the sweep's storage path.

A pretrained model is determined by (process spec, model config, pretrain config, seed) and the
cache format version; its key is a hash of exactly those. Entries live at
``{storage_path}/pretrain_cache/{key}/`` (local dir, NFS or any pyarrow.fs URI such as s3://)
and are complete once ``DONE`` exists, which is written last. Besides FILES an entry holds
``checkpoints/step_{step:07d}.pt`` when the pretrain config asks for checkpoints (they are part
of the key); ``rayexp.artifacts`` reads them.

Trials that need the same entry at the same moment pretrain once: the first takes an
exclusive ``fcntl.lockf`` lock on ``{key}.lock`` (POSIX locks also hold on NFS), the others
block, then find ``DONE``. A trial that dies while holding the lock releases it with its
process. For object stores, where no lock file exists, the lock is node-local: two nodes may
both pretrain the same deterministic entry, and the entry is still consistent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rayexp.storage import Storage

CACHE_VERSION = 1
CACHE_DIR = "pretrain_cache"
FILES = ("model.pt", "history.json", "meta.json")


def pretrain_key(process: dict[str, Any], model: dict[str, Any], pretrain: dict[str, Any], seed: int) -> str:
    blob = json.dumps(
        {"v": CACHE_VERSION, "process": process, "model": model, "pretrain": pretrain, "seed": seed},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


class PretrainCache:
    def __init__(self, storage_path: str):
        self.storage = Storage(storage_path)
        self.fs, self.root, self.local = self.storage.fs, self.storage.root, self.storage.local
        self.root = f"{self.root}/{CACHE_DIR}"

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _lock_path(self, key: str) -> Path:
        if self.local is not None:
            return Path(self.root) / f"{key}.lock"
        return Path(tempfile.gettempdir()) / "rayexp_pretrain_locks" / f"{key}.lock"

    def _fetch(self, key: str, dest: Path) -> Path:
        """The entry's files as a local directory (a download for remote storage)."""
        entry = f"{self.root}/{key}"
        if self.local is not None:
            return Path(entry)
        dest.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            with self.fs.open_input_stream(f"{entry}/{name}") as src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)
        return dest

    def get_or_create(self, key: str, build: Callable[[Path], None], scratch: Path) -> tuple[Path, bool]:
        """Local directory of the entry, and whether it was a hit.

        `build(out_dir)` must write FILES into out_dir; it runs at most once per key at a time.
        """
        entry = f"{self.root}/{key}"
        if self._exists(f"{entry}/DONE"):
            return self._fetch(key, scratch / key), True
        with _locked(self._lock_path(key)):
            if self._exists(f"{entry}/DONE"):
                return self._fetch(key, scratch / key), True
            staging = Path(tempfile.mkdtemp(prefix=f"pretrain-{key}-", dir=scratch))
            build(staging)
            missing = [n for n in FILES if not (staging / n).exists()]
            if missing:
                raise RuntimeError(f"pretrain cache build wrote no {missing}")
            # everything the build wrote (FILES, and checkpoints/ when asked for), then DONE
            self.storage.put_tree(staging, f"{CACHE_DIR}/{key}")
            with self.fs.open_output_stream(f"{entry}/DONE") as out:
                out.write(str(os.getpid()).encode())
            shutil.rmtree(staging, ignore_errors=True)
        return self._fetch(key, scratch / key), False
