"""Files under a ``storage_path``: a local dir, an NFS mount or any pyarrow.fs URI (``s3://...``).

One small wrapper so the pretrain cache, the sweep state and the trial artifacts read and write
the same way everywhere; readers that need a real file (``torch.load``) get a local path, which
for remote storage is a download into a scratch directory.

Checksums: ``put(..., checksum=True)`` stores a sidecar ``{name}.sha256`` (SHA-256 of the bytes, in
coreutils' ``sha256sum`` format, the same sidecar ``models/checkpoint.py`` writes next to every
checkpoint) and :meth:`Storage.verify` checks a stored file against it. The pretrain cache and the
policy checkpoints use them, so a file that changed after it was written is found, never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

CHECKSUM_SUFFIX = ".sha256"


class CorruptFile(ValueError):
    """A stored file whose bytes are not those its checksum recorded (or that lacks a checksum)."""


def sha256_local(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest_of_sidecar(text: str) -> str:
    words = text.split()
    return words[0] if words else ""  # an empty sidecar (cut short) matches nothing


def filesystem(storage_path: str):
    """(pyarrow filesystem, root path within it, local Path or None)."""
    import pyarrow.fs as pafs

    if "://" not in storage_path or storage_path.startswith("file://"):
        local = Path(storage_path.removeprefix("file://")).expanduser().resolve()
        return pafs.LocalFileSystem(), str(local), local
    fs, root = pafs.FileSystem.from_uri(storage_path)
    return fs, root.rstrip("/"), None


class Storage:
    """Paths are '/'-joined strings relative to the storage root."""

    def __init__(self, storage_path: str):
        self.uri = storage_path
        self.fs, self.root, self.local = filesystem(storage_path)
        self._scratch: Path | None = None

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(i.base_name for i in infos)

    def size(self, rel: str) -> int:
        """Bytes under ``rel`` (a file or a whole tree)."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.File:
            return int(info.size)
        if info.type != pafs.FileType.Directory:
            return 0
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=True))
        return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)

    def put(self, local: str | Path, rel: str, checksum: bool = False) -> None:
        """Copy a local file to ``rel`` (written to a temporary name first where the store allows it).

        ``checksum``: also store ``rel.sha256``. A sidecar already next to the local file (every
        checkpoint has one) is checked first, so bytes that changed between writing and storing
        are refused (CorruptFile) rather than given a checksum that vouches for them.
        """
        self.fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)
        if checksum:
            digest = sha256_local(local)
            side = Path(str(local) + CHECKSUM_SUFFIX)
            if side.exists() and _digest_of_sidecar(side.read_text()) != digest:
                raise CorruptFile(f"{local}: its bytes no longer match the checksum written with it")
            # the sidecar before the file: a reader never finds a checked file without its sidecar
            self._write(f"{rel}{CHECKSUM_SUFFIX}", f"{digest}  {rel.rsplit('/', 1)[-1]}\n".encode())
        with open(local, "rb") as src:
            self._write(rel, src)

    def _write(self, rel: str, data) -> None:
        tmp = self.path(rel) + ".tmp" if self.local is not None else self.path(rel)
        with self.fs.open_output_stream(tmp) as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                shutil.copyfileobj(data, out)
        if tmp != self.path(rel):
            self.fs.move(tmp, self.path(rel))  # a reader never sees a half-written file

    def put_tree(self, local_dir: str | Path, rel: str, checksum: bool = False) -> None:
        """Every file under ``local_dir`` to ``rel/...``; with ``checksum``, local sidecars are
        checked and stored sidecars written for every file (see :meth:`put`)."""
        for f in sorted(Path(local_dir).rglob("*")):
            if f.is_file() and not (checksum and f.name.endswith(CHECKSUM_SUFFIX)):
                self.put(f, f"{rel}/{f.relative_to(local_dir).as_posix()}", checksum=checksum)

    def sha256(self, rel: str) -> str:
        """SHA-256 of a stored file's bytes (streamed: nothing is downloaded to disk)."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(rel)) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def verify(self, rel: str) -> str | None:
        """None when ``rel`` matches its stored sidecar, else what is wrong, in one line naming it."""
        if not self.exists(rel):
            return f"{self.path(rel)}: missing"
        if not self.exists(rel + CHECKSUM_SUFFIX):
            return f"{self.path(rel)}: no checksum recorded (written before checksums, or cut short)"
        with self.fs.open_input_stream(self.path(rel + CHECKSUM_SUFFIX)) as f:
            want = _digest_of_sidecar(f.read().decode(errors="replace"))
        got = self.sha256(rel)
        if got != want:
            return (
                f"{self.path(rel)}: sha256 {got[:12]} does not match the {want[:12] or 'empty'} recorded when it "
                "was written (its bytes changed or were cut short)"
            )
        return None

    def write_json(self, rel: str, obj: Any) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(obj, f, default=str)
        try:
            self.put(f.name, rel)
        finally:
            Path(f.name).unlink(missing_ok=True)

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return json.loads(f.read().decode())

    def local_file(self, rel: str) -> Path:
        """A local path holding ``rel``: the file itself on local storage, else a downloaded copy
        (with its checksum sidecar beside it, when it has one, so a reader can verify the copy)."""
        if self.local is not None:
            return Path(self.path(rel))
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="rayexp-storage-"))
        dest = self._scratch / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            names = [rel] + ([rel + CHECKSUM_SUFFIX] if self.exists(rel + CHECKSUM_SUFFIX) else [])
            for name in reversed(names):  # the sidecar first: `dest` existing means both are here
                with self.fs.open_input_stream(self.path(name)) as src, open(self._scratch / name, "wb") as out:
                    shutil.copyfileobj(src, out)
        return dest

    def delete(self, rel: str) -> None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))
            if self.exists(rel + CHECKSUM_SUFFIX):
                self.fs.delete_file(self.path(rel + CHECKSUM_SUFFIX))
