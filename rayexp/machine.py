"""What a trial ran on, as MLflow tags: the things that move numbers without moving the experiment.

bf16 pretraining rounds otherwise on a CPU with bf16 matrix instructions than on one without
(docs/reproducibility.md, "Another CPU"), and a torch or numpy release can change a kernel. A result
that does not reproduce is traced by comparing these tags; without them, which machine made an
earlier number is not on record.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

# the instructions that decide how bf16 matrix products round: x86 (flags), then ARM (Features)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "bf16", "svebf16")


def parse_cpuinfo(text: str) -> tuple[str, list[str] | None]:
    """(the first processor's model, which of :data:`BF16_FLAGS` it has) from ``/proc/cpuinfo``'s text. The
    model is x86's ``model name``, else ARM's implementer and part codes, else ""; the instructions None where
    the text lists none (no ``flags`` or ``Features`` line: unknown, not absent)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    model = fields.get("model name", "")
    if not model and "CPU part" in fields:
        model = f"implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    listed = fields.get("flags", fields.get("Features"))
    return model, None if listed is None else [f for f in BF16_FLAGS if f in listed.split()]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def machine_tags(device: str = "cpu", cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """``rayexp.cpu`` (model), ``rayexp.cpu_bf16`` (its bf16 instructions, comma-joined, ``none``, or
    ``unknown``), ``rayexp.torch`` and ``rayexp.numpy`` (versions), and ``rayexp.gpu_name`` where ``device``
    is CUDA. A tag is no result of the trial: whatever cannot be read is left out, never raised."""
    try:
        model, bf16 = parse_cpuinfo(cpuinfo.read_text())
    except OSError:  # not Linux: the model platform gives, instructions unknown
        model, bf16 = "", None
    tags = {
        "rayexp.cpu": model or platform.processor() or platform.machine(),
        "rayexp.cpu_bf16": "unknown" if bf16 is None else (",".join(bf16) or "none"),
        "rayexp.torch": _version("torch"),
        "rayexp.numpy": _version("numpy"),
    }
    if device.startswith("cuda"):
        try:
            import torch  # heavy; a CUDA trial has it loaded already

            tags["rayexp.gpu_name"] = torch.cuda.get_device_name(torch.device(device))
        except Exception as e:  # noqa: BLE001 (a driver error must not fail the trial over a tag)
            logger.warning("GPU name not read: %s", e)
    return tags


def summary(tags: list[dict[str, str]]) -> list[str]:
    """Lines for a report: each distinct machine setting among trial runs' ``tags`` (the pretraining's CPU and
    bf16 instructions and precision, then where the trial ran and its torch), with how many trials; a
    warning first where there is more than one, since their numbers can differ beyond seed noise."""
    keys = (
        ("pretrained on", "rayexp.pretrain_cpu"),
        ("bf16 instructions", "rayexp.pretrain_cpu_bf16"),
        ("precision", "rayexp.pretrain_precision"),
        ("ran on", "rayexp.cpu"),
        ("torch", "rayexp.torch"),
    )
    counts: dict[str, int] = {}
    for t in tags:
        line = ", ".join(f"{label} {t.get(key, 'not recorded')}" for label, key in keys)
        counts[line] = counts.get(line, 0) + 1
    lines = [f"machine: {n} trial{'' if n == 1 else 's'} {line}" for line, n in counts.items()]
    if len(counts) > 1:
        lines.insert(0, f"warning: these trials come from {len(counts)} machine settings; between them numbers can "
                        "differ beyond seed noise (docs/reproducibility.md)")  # fmt: skip
    return lines
