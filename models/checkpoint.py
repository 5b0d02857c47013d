"""Checkpoints as plain dictionaries of tensors and builtins, loadable with ``weights_only=True``.

File layout: ``{"config": TransformerConfig.model_dump(), "state_dict": {...}, "extra": {...}}``.
``extra`` holds metadata (step, process spec, loss, ...); it must contain only types the
``weights_only`` unpickler accepts (dicts, lists, tuples, str, int, float, bool, None, tensors),
which :func:`save_checkpoint` checks before writing so a bad value fails at save time, not at load.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from models.transformer import Transformer, TransformerConfig

_SAFE = (str, int, float, bool, type(None), torch.Tensor)


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
    os.replace(tmp, path)  # a reader never sees a half-written checkpoint
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[Transformer, dict]:
    """``(model in eval mode, extra)`` from a file written by :func:`save_checkpoint`."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    model = Transformer(TransformerConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval(), payload.get("extra", {})
