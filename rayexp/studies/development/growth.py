"""How far RL moved the LLC, and whether a task moved it further than its shuffled-reward null.

Pure maths on the rows of the ``llc`` analysis's ``llc_rl`` table (iteration, llc_mean, healthy,
reward); :mod:`.report` feeds it a sweep's trials. DESIGN rule 6: a rise of the LLC under PPO is
credited to what the reward asks for only against the same PPO on a reward that asks nothing (the
shuffled null), seed by seed, since the arms of a seed start from the same pretrained weights.

- :func:`rl_growth`: one trial. ``start`` is the LLC at iteration 0 (the pretrained model, the
  same number in every arm of a seed); ``last`` the last *healthy* estimate after it (unsettled or
  diverged ones are not values, :mod:`.llc`), at ``last_iteration``; ``growth = last / start``.
  NaN when the start is not healthy or no later estimate is.
- :func:`matched_ratio`: one seed's task against its null *at the same iteration*, the last at which
  both estimates are healthy: (LLC_task / start_task) / (LLC_null / start_null). Comparing each arm's
  own last healthy estimate would set a task whose late estimates diverge (a sharpened policy) at
  iteration 10 against the null at 40.
- :func:`paired_growth`: over seeds, the mean log of those ratios with its Student-t interval,
  reported as a ratio (exp): ``above`` when the whole interval is above 1; ``p``, the exact sign-flip
  test of the same logs, which does not lean on their normality (its floor is 2 / 2^seeds).
"""

from __future__ import annotations

import math

import numpy as np

from rayexp.stats import sign_flip_p, t_ci


def rl_growth(rows: dict[str, list]) -> dict[str, float]:
    """``rows``: the ``llc_rl`` table as columns. The trial's start, last healthy LLC and growth."""
    it = [int(i) for i in rows["iteration"]]
    llc = [float(v) for v in rows["llc_mean"]]
    ok = [bool(h) for h in rows["healthy"]]
    reward = [float(v) for v in rows.get("reward", [math.nan] * len(it))]
    order = sorted(range(len(it)), key=it.__getitem__)
    if not order or it[order[0]] != 0:
        raise ValueError(f"llc_rl has no iteration 0 (the pretrained model): iterations {sorted(it)}")
    first = order[0]
    later = [i for i in order[1:] if ok[i] and np.isfinite(llc[i])]
    start, start_ok = llc[first], ok[first]
    last = llc[later[-1]] if later else math.nan
    return {
        "start": start,
        "start_healthy": float(start_ok),
        "last": last,
        "last_iteration": float(it[later[-1]]) if later else math.nan,
        "growth": last / start if start_ok and later and start > 0 else math.nan,
        "healthy": float(sum(ok[i] for i in order[1:])),
        "estimates": float(len(order) - 1),
        "reward_start": reward[first],
        "reward_final": reward[order[-1]],
    }


def matched_ratio(task: dict[str, list], null: dict[str, list]) -> dict[str, float]:
    """``task``, ``null``: the ``llc_rl`` tables (columns) of one seed's task and null trials. Their growth
    ratio at the last iteration after 0 at which both are healthy (NaN, iteration NaN, if none, or if
    either start is not healthy)."""

    def healthy(rows) -> dict[int, float]:
        return {
            int(i): float(v)
            for i, v, h in zip(rows["iteration"], rows["llc_mean"], rows["healthy"])
            if h and np.isfinite(v)
        }

    t, n = healthy(task), healthy(null)
    both = sorted(i for i in t.keys() & n.keys() if i > 0)
    if 0 not in t or 0 not in n or not both or t[0] <= 0 or n[0] <= 0:
        return {"ratio": math.nan, "iteration": math.nan}
    it = both[-1]
    return {"ratio": (t[it] / t[0]) / (n[it] / n[0]), "iteration": float(it)}


def paired_growth(ratios: dict[int, float], ci: float = 0.95) -> dict[str, float]:
    """``ratios``: :func:`matched_ratio` by seed. Their geometric mean with the Student-t interval of the
    mean log ratio; ``above`` = 1.0 when the interval's low end is above 1 (the task moved the LLC
    further than PPO on a reward that asks nothing), 0.0 when it is not, NaN with fewer than two seeds;
    ``p``: the exact two-sided sign-flip p-value of the mean log ratio; ``seeds``: how many ratios all of
    it rests on (the finite, positive ones; a seed without one is left out)."""
    logs = [math.log(r) for r in ratios.values() if np.isfinite(r) and r > 0]
    if len(logs) < 2:
        m = math.exp(logs[0]) if logs else math.nan
        nan = math.nan
        return {"ratio": m, "low": nan, "high": nan, "seeds": float(len(logs)), "above": nan, "p": nan}
    m, lo, hi = t_ci(logs, ci)
    return {
        "ratio": math.exp(m),
        "low": math.exp(lo),
        "high": math.exp(hi),
        "seeds": float(len(logs)),
        "above": float(lo > 0),
        "p": sign_flip_p(logs),
    }
