"""Files under a ``storage_path``: a local dir, an NFS mount or any pyarrow.fs URI (``s3://...``).

One small wrapper so the pretrain cache, the sweep state and the trial artifacts read and write
the same way everywhere; readers that need a real file (``torch.load``) get a local path, which
for remote storage is a download into a scratch directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


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

    def put(self, local: str | Path, rel: str) -> None:
        """Copy a local file to ``rel`` (written to a temporary name first where the store allows it)."""
        self.fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)
        tmp = self.path(rel) + ".tmp" if self.local is not None else self.path(rel)
        with open(local, "rb") as src, self.fs.open_output_stream(tmp) as out:
            shutil.copyfileobj(src, out)
        if tmp != self.path(rel):
            self.fs.move(tmp, self.path(rel))  # a reader never sees a half-written file

    def put_tree(self, local_dir: str | Path, rel: str) -> None:
        for f in sorted(Path(local_dir).rglob("*")):
            if f.is_file():
                self.put(f, f"{rel}/{f.relative_to(local_dir).as_posix()}")

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
        """A local path holding ``rel``: the file itself on local storage, else a downloaded copy."""
        if self.local is not None:
            return Path(self.path(rel))
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="rayexp-storage-"))
        dest = self._scratch / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(self.path(rel)) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        return dest

    def delete(self, rel: str) -> None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))
