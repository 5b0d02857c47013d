"""The welfare study's across-seed summary, pure (no MLflow): per-seed values in, intervals and one
reading per claim out.

- :func:`effect_vs_control`: a steering effect against a control's, per seed, as a paired difference
  (Student-t over seeds) and a ratio (geometric mean over seeds, Student-t on the log ratios, so
  the interval stays positive and a 10x and a 0.1x seed average to 1x, not 5x);
- :func:`cos_reading`: cos(v_R, v_P) against its shuffled-label null, each seed paired with its own
  null's mean: "antiparallel" only when the mean over seeds is negative and below the null's,
  "same-signed" only when it is positive and above it, otherwise no sign claim.

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


def cos_reading(cos, q025, q975, null_mean, ci: float = 0.95) -> dict:
    """cos(v_R, v_P) per seed (n,) against each seed's shuffled-label null: its mean (n,) and band
    [q025, q975] (n,).

    A mean over seeds is read against the null of a mean over seeds, not against one seed's band: the
    runs log each null's mean and quantiles, not its draws, so each seed's cosine is paired with its own
    null's mean and the differences take a Student-t interval over seeds (under the null each
    difference has mean 0, whatever the seed's band). "antiparallel" needs that interval below 0 and
    the cosine's own interval below 0; "not antiparallel, same-signed beyond the null" needs both
    above 0. Otherwise: below the null but not shown negative is undecided; a cosine interval reaching
    below the mean band's lower edge is undecided; else "not antiparallel" and no more, since the null
    (two difference vectors sharing the neutral mean, centred near +0.5) holds it. Also returned: the
    mean cosine and the paired difference with their t intervals, the mean null and band, and how many
    seeds fall below, inside and above their own band (the per-seed view)."""
    c, lo, hi, m0 = (np.asarray(x, dtype=np.float64) for x in (cos, q025, q975, null_mean))
    if not c.shape == lo.shape == hi.shape == m0.shape:
        raise ValueError(f"one cosine, band and null mean per seed; got {c.shape}, {lo.shape}, {hi.shape}, {m0.shape}")
    m, clo, chi = t_ci(c, ci)
    d, dlo, dhi = t_ci(c - m0, ci)
    band = (float(np.nanmean(lo)), float(np.nanmean(hi))) if len(lo) else (float("nan"), float("nan"))
    null = float(np.nanmean(m0)) if len(m0) else float("nan")
    counts = {"below": int(np.sum(c < lo)), "inside": int(np.sum((c >= lo) & (c <= hi))), "above": int(np.sum(c > hi))}
    if dhi < 0 and chi < 0:
        reading = "antiparallel (below the shuffled-label null)"
    elif dlo > 0 and clo > 0:
        reading = "not antiparallel; same-signed beyond the shuffled-label null"
    elif dhi < 0:
        reading = "undecided (below the shuffled-label null, not shown negative)"
    elif clo >= band[0]:
        reading = "not antiparallel (not beyond the shuffled-label null: no sign claim)"
    else:
        reading = "undecided (the interval reaches below the shuffled-label band)"
    return {
        "cos": (m, clo, chi),
        "minus_null": (d, dlo, dhi),
        "null": null,
        "band": band,
        "seeds": counts,
        "reading": reading,
    }
