"""Plain-text and CSV tables of result rows (dicts), as the console summary and reports print them."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path
from typing import Any

#: a terminal's width: wider tables are split into column blocks, each repeating the first columns
WIDTH = 120
#: a cell longer than this (a verdict's reason) is printed under the table as a numbered note
LONG = 48


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:40]
    return "-" if v is None else str(v)


def _render(cols: list[str], table: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() for t in table]
    return lines


def format_table(rows: list[dict[str, Any]], width: int = WIDTH, keep: int = 2) -> str:
    """Rows as a plain-text table no wider than ``width`` (unless one column and the first ``keep`` are
    wider on their own): long text cells become numbered notes under it, and columns that do not fit
    go to further blocks, each repeating the first ``keep`` columns."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    if not cols:
        return "(no trials)"
    table = [[_cell(r.get(c)) for c in cols] for r in rows]
    notes: list[str] = []
    for i, c in enumerate(cols):
        for t in table:
            if len(t[i]) > LONG:
                notes.append(textwrap.fill(f"[{len(notes) + 1}] {c}: {t[i]}", width, subsequent_indent="    "))
                t[i] = f"[{len(notes)}]"
    widths = [max(len(c), *(len(t[i]) for t in table)) + 2 for i, c in enumerate(cols)]
    keys = list(range(min(keep, len(cols))))
    blocks: list[list[int]] = []
    for i in range(len(keys), len(cols)):
        if blocks and sum(widths[j] for j in keys + blocks[-1]) + widths[i] <= width + 2:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    lines: list[str] = []
    for block in blocks or [[]]:
        picked = keys + block
        lines += ([""] if lines else []) + _render([cols[j] for j in picked], [[t[j] for j in picked] for t in table])
    return "\n".join(lines + ([""] + notes if notes else []))


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def mean_range(values: list[float]) -> str:
    """ "mean [min, max]" of a metric over seeds, signed to 3 decimals."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{sum(values) / len(values):+.3f} [{lo:+.3f}, {hi:+.3f}]"
