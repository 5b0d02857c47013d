"""The welfare study's across-seed summary, pure (no MLflow): per-seed values in, intervals and one
reading per claim out.

- :func:`effect_vs_control`: a steering effect against a control's, per seed, as a paired difference
  (Student-t over seeds) and a ratio (geometric mean over seeds, Student-t on the log ratios, so
  the interval stays positive and a 10x and a 0.1x seed average to 1x, not 5x);
- :func:`cos_reading`: cos(v_R, v_P) against its shuffled-label band: "antiparallel" only when the
  cosine sits below the band, otherwise "not antiparallel", and "same-signed" only when it sits above.

Intervals over seeds are Student-t (:func:`rayexp.stats.t_ci`, docs/design.md §6 rule 4).
"""

from __future__ import annotations

import numpy as np

from rayexp.stats import t_ci


def cell(stat: tuple[float, float, float], fmt: str = "+.3f") -> str:
    """The cell "mean [low, high]"; "-" without a mean; "[n/a]" bounds with one seed."""
    m, lo, hi = stat
    if not np.isfinite(m):
        return "-"
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if np.isfinite(lo) and np.isfinite(hi) else f"{m:{fmt}} [n/a]"


def effect_vs_control(effect, control, ci: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """Per-seed effect sizes (n,) against the same seeds' control effect sizes (n,), both >= 0:

    - ``diff``: mean of effect - control, Student-t interval (paired over seeds);
    - ``ratio``: exp(mean log(effect / control)), interval exp(t interval of the logs); seeds with a
      zero on either side are left out of the ratio (a ratio with nothing is undefined)."""
    e, c = np.asarray(effect, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if e.shape != c.shape:
        raise ValueError(f"effect and control need one value per seed each; got {e.shape} and {c.shape}")
    ok = np.isfinite(e) & np.isfinite(c)
    diff = t_ci(e[ok] - c[ok], ci)
    pos = ok & (e > 0) & (c > 0)
    m, lo, hi = t_ci(np.log(e[pos] / c[pos]), ci)
    return {"diff": diff, "ratio": (float(np.exp(m)), float(np.exp(lo)), float(np.exp(hi)))}


def cos_reading(cos, q025, q975, ci: float = 0.95) -> dict:
    """cos(v_R, v_P) per seed (n,) against each seed's shuffled-label band [q025, q975] (n,).

    Returns the mean cosine with its t interval, the mean band, how many seeds fall below, inside and
    above their own band, and the reading. "antiparallel" needs the cosine negative and its whole t
    interval below the mean band's lower edge; "not antiparallel, same-signed beyond the null"
    needs the interval above the upper edge; an interval inside the band reads "not antiparallel"
    and no more, since the null (two difference vectors sharing the neutral mean, centred near +0.5)
    spans it; one reaching below the band's lower edge is undecided."""
    c, lo, hi = (np.asarray(x, dtype=np.float64) for x in (cos, q025, q975))
    m, clo, chi = t_ci(c, ci)
    band = (float(np.nanmean(lo)), float(np.nanmean(hi))) if len(lo) else (float("nan"), float("nan"))
    counts = {"below": int(np.sum(c < lo)), "inside": int(np.sum((c >= lo) & (c <= hi))), "above": int(np.sum(c > hi))}
    if np.isfinite(chi) and chi < band[0] and m < 0:
        reading = "antiparallel (below the shuffled-label band)"
    elif np.isfinite(clo) and clo > band[1]:
        reading = "not antiparallel; same-signed beyond the shuffled-label band"
    elif np.isfinite(clo) and clo >= band[0]:
        reading = "not antiparallel (inside the shuffled-label band: no sign claim)"
    else:
        reading = "undecided (the interval reaches below the shuffled-label band)"
    return {"cos": (m, clo, chi), "band": band, "seeds": counts, "reading": reading}
