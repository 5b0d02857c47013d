"""Plain-text and CSV tables of result rows (dicts), as the console summary and reports print them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (dict, list)):
            return json.dumps(v)[:40]
        return "-" if v is None else str(v)

    table = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)) for t in table]
    return "\n".join(lines)


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
