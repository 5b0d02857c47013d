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

Checksums: every file of an entry is stored with a ``{name}.sha256`` sidecar (rayexp/storage.py),
and every use of an entry first verifies all of them (a few MB of hashing for the CPU models; a
disk or a copy that changed a byte would otherwise hand a trial wrong weights beside a stale
``history.json``, with nothing said). An entry that fails is reported in one warning naming the
file, moved aside to ``{key}.corrupt-{time}/`` (removed where the store cannot rename
directories) so that no retry reuses it, and pretrained again. An entry written before checksums
existed has no sidecars and is rebuilt the same way rather than trusted on first use: hashing it
then would vouch for whatever bytes it holds, and the silently corrupted entries that prompted the
checksums were exactly such entries; the price is one pretraining per old entry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rayexp.storage import CHECKSUM_SUFFIX, Storage

CACHE_VERSION = 1
CACHE_DIR = "pretrain_cache"
FILES = ("model.pt", "history.json", "meta.json")
logger = logging.getLogger(__name__)


def pretrain_key(process: dict[str, Any], model: dict[str, Any], pretrain: dict[str, Any], seed: int) -> str:
    blob = json.dumps(
        {"v": CACHE_VERSION, "process": process, "model": model, "pretrain": pretrain, "seed": seed},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


#: seconds between two ``waiting()`` calls while a trial waits on another's pretraining
WAIT_BEAT_S = 30.0


@contextlib.contextmanager
def _locked(lock_path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """The key's exclusive lock; ``waiting()`` is called every WAIT_BEAT_S seconds while another holds it
    (the trial's heartbeat for the driver's stall watchdog, rayexp.monitor)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        if waiting is None:
            fcntl.lockf(handle, fcntl.LOCK_EX)
        else:
            beat = time.monotonic() + WAIT_BEAT_S
            while True:
                try:
                    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                if time.monotonic() >= beat:
                    waiting()
                    beat = time.monotonic() + WAIT_BEAT_S
                time.sleep(0.2)
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

    def problem(self, key: str) -> str | None:
        """None when the complete entry ``key`` is intact, else what is wrong in one line naming the file.

        Every file of the entry (FILES and the checkpoints) must match its sidecar, and every sidecar
        must have its file (a checkpoint deleted from an entry is a damaged entry, too).
        """
        import pyarrow.fs as pafs

        rel = f"{CACHE_DIR}/{key}"
        infos = self.fs.get_file_info(pafs.FileSelector(self.storage.path(rel), recursive=True, allow_not_found=True))
        names = {i.path[len(self.storage.path(rel)) + 1 :] for i in infos if i.type == pafs.FileType.File} - {"DONE"}
        data = {n for n in names if not n.endswith((CHECKSUM_SUFFIX, ".tmp"))}
        sidecars = {n[: -len(CHECKSUM_SUFFIX)] for n in names if n.endswith(CHECKSUM_SUFFIX)}
        if not sidecars:
            return f"{self.storage.path(rel)}: written before checksums existed (no .sha256 files)"
        ranked = {name: i for i, name in enumerate(FILES)}  # model.pt first: what matters most
        for name in sorted(data | set(FILES) | sidecars, key=lambda n: (ranked.get(n, len(FILES)), n)):
            found = self.storage.verify(f"{rel}/{name}")
            if found is not None:
                return found
        return None

    def discard(self, key: str, reason: str, then: str = "pretraining it again") -> str | None:
        """Move a damaged entry aside (or remove it) so no trial uses it again; returns where it went.

        ``DONE`` goes first: from then on every reader treats the key as a miss and waits for the lock.
        """
        rel = f"{CACHE_DIR}/{key}"
        entry = self.storage.path(rel)
        aside = f"{entry}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(f"{entry}/DONE")
        try:
            self.fs.move(entry, aside)
            where = f"moved aside to {aside}"
        except (OSError, NotImplementedError):  # object stores cannot rename a directory
            self.storage.delete(rel)
            aside, where = None, "removed"
        logger.warning("pretrain cache: %s; entry %s, %s", reason, where, then)
        return aside

    def repair(self, key: str) -> bool:
        """Under the key's lock: discard the entry if it is (still) damaged; True if it was.

        For readers that find a damaged file after the pretrain stage (rayexp/artifacts.py): their own
        trial fails, and the next trial that needs the entry pretrains it again.
        """
        with _locked(self._lock_path(key)):
            if not self._exists(f"{self.root}/{key}/DONE"):
                return False
            found = self.problem(key)
            if found is None:
                return False
            self.discard(key, found, then="the next trial that needs it pretrains it again")
            return True

    def _fetch(self, key: str, dest: Path) -> Path:
        """The entry's files as a local directory (a download for remote storage)."""
        entry = f"{self.root}/{key}"
        if self.local is not None:
            return Path(entry)
        dest.mkdir(parents=True, exist_ok=True)
        for name in (n + s for n in FILES for s in (CHECKSUM_SUFFIX, "")):  # sidecars too: copies stay checkable
            with self.fs.open_input_stream(f"{entry}/{name}") as src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)
        return dest

    def get_or_create(
        self, key: str, build: Callable[[Path], None], scratch: Path, waiting: Callable[[], None] | None = None
    ) -> tuple[Path, bool]:
        """Local directory of the entry, and whether it was a hit.

        `build(out_dir)` must write FILES into out_dir; it runs at most once per key at a time.
        `waiting()` is called every WAIT_BEAT_S seconds while another process builds the entry.
        """
        entry = f"{self.root}/{key}"
        # checked outside the lock first so the common case (an intact hit) never waits on it; a
        # damaged entry is reported and moved aside only under the lock, by one trial
        if self._exists(f"{entry}/DONE") and self.problem(key) is None:
            return self._fetch(key, scratch / key), True
        with _locked(self._lock_path(key), waiting):
            if self._exists(f"{entry}/DONE"):
                found = self.problem(key)
                if found is None:
                    return self._fetch(key, scratch / key), True
                self.discard(key, found)
            staging = Path(tempfile.mkdtemp(prefix=f"pretrain-{key}-", dir=scratch))
            build(staging)
            missing = [n for n in FILES if not (staging / n).exists()]
            if missing:
                raise RuntimeError(f"pretrain cache build wrote no {missing}")
            # everything the build wrote (FILES, and checkpoints/ when asked for), each with its
            # checksum, then DONE
            self.storage.put_tree(staging, f"{CACHE_DIR}/{key}", checksum=True)
            with self.fs.open_output_stream(f"{entry}/DONE") as out:
                out.write(str(os.getpid()).encode())
            shutil.rmtree(staging, ignore_errors=True)
        return self._fetch(key, scratch / key), False
