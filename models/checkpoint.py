"""Checkpoints as plain dictionaries of tensors and builtins, loadable with ``weights_only=True``.

File layout: ``{"config": TransformerConfig.model_dump(), "state_dict": {...}, "extra": {...}}``.
``extra`` holds metadata (step, process spec, loss, ...); it must contain only types the
``weights_only`` unpickler accepts (dicts, lists, tuples, str, int, float, bool, None, tensors),
which :func:`save_checkpoint` checks before writing so a bad value fails at save time, not at load.

Every checkpoint is written with a sidecar ``{name}.sha256`` holding the SHA-256 of its bytes, in
coreutils' format (``sha256sum -c`` checks it by hand), and :func:`load_checkpoint` verifies it: a
checkpoint whose bytes changed after it was written (a bad disk, a copy cut short, noise written
into a weight matrix) is refused with one line naming the file, never loaded. torch's zip reader
alone notices truncation but not changed tensor bytes, and its error does not name the file.
``rayexp/storage.py`` writes and checks the same sidecars for files in a sweep's storage.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch

from models.transformer import Transformer, TransformerConfig

_SAFE = (str, int, float, bool, type(None), torch.Tensor)
SUFFIX = ".sha256"


class CorruptCheckpoint(ValueError):
    """A checkpoint that is not what was written: bytes changed or cut short, or unreadable by torch."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def recorded_checksum(path: str | os.PathLike) -> str | None:
    """The digest the sidecar of ``path`` records (None without a sidecar)."""
    side = checksum_path(path)
    if not side.exists():
        return None
    words = side.read_text().split()
    return words[0] if words else ""  # an empty sidecar (cut short) matches nothing


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` matches its sidecar, False when it has none; CorruptCheckpoint otherwise."""
    want = recorded_checksum(path)
    if want is None:
        return False
    got = sha256_file(path)
    if got != want:
        raise CorruptCheckpoint(
            f"{path}: corrupt checkpoint (sha256 {got[:12]}, recorded {want[:12] or 'nothing'} when it was "
            "written: its bytes changed or were cut short since)"
        )
    return True


def _check_safe(obj, where: str = "extra") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be str or int")
            _check_safe(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
    elif not isinstance(obj, _SAFE):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints take only builtins and tensors")


def save_checkpoint(path: str | os.PathLike, model: Transformer, extra: dict | None = None) -> Path:
    """Write ``model`` (config + weights, moved to CPU) and ``extra`` metadata to ``path`` atomically."""
    extra = dict(extra or {})
    _check_safe(extra)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    payload = {"config": model.cfg.model_dump(), "state_dict": state, "extra": extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    # the digest of the bytes on disk, not of the payload: what a reader will hash. The sidecar goes
    # in first, so a checkpoint never exists without one; a reader racing an overwrite of the same
    # path sees a mismatch and fails loudly, never loads a mix.
    side_tmp = checksum_path(tmp)
    side_tmp.write_text(f"{sha256_file(tmp)}  {path.name}\n")
    os.replace(side_tmp, checksum_path(path))
    os.replace(tmp, path)  # a reader never sees a half-written checkpoint
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[Transformer, dict]:
    """``(model in eval mode on the device ``map_location``, extra)`` from a file written by :func:`save_checkpoint`.

    The file is read to the CPU and the built model moved once: reading straight to a GPU would only
    copy every tensor back into the CPU-built model and out again. ``extra``'s tensors stay on the CPU.

    Verified against its sidecar first (:class:`CorruptCheckpoint`, one line naming the file). A
    checkpoint without a sidecar (written before checksums) loads unverified: there is nothing to
    compare it with, and refusing would make older sweeps' policies unreadable; it still fails with
    the file named when torch cannot read it. The pretrain cache does not take that path: it rebuilds
    entries without checksums (rayexp/cache.py).
    """
    verify_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # not about the bytes: said well enough already
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:  # a cut zip: EINVAL or zip errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpoint(f"{path}: not a readable checkpoint ({first})") from err
    model = Transformer(TransformerConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval(), payload.get("extra", {})
