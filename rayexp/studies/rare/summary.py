"""The rare-capability study's across-seed summary, pure (no MLflow): per exposure group, values of a
trial metric over seeds in, table rows and one plain sentence out.

Intervals over seeds are Student-t (:func:`rayexp.stats.t_ci`; docs/design.md §6 rule 4: with 5 seeds a
percentile bootstrap covers ~85 % at a nominal 95 %). A change within a trial (post - pre RL) is the
per-trial difference, so its interval is paired. Exposure groups hold different trials (each its
own pretraining), so a difference between exposures is unpaired: Welch's t interval.
"""

from __future__ import annotations

import numpy as np

from rayexp.stats import sign_flip_p, t_ci

Groups = dict[str, dict[str, list[float]]]  # group label -> metric -> values over seeds
BySeed = dict[str, dict[str, dict[str, float]]]  # group label -> seed -> metric -> value

#: what the task's excess over its shuffled-reward null is reported for (metric, column name)
NULL_METRICS = (
    ("post/capability", "B skill post"),
    ("delta/capability", "B skill change"),
    ("post/b_accuracy", "B hit rate post"),
    ("post/trigger_rate", "trigger rate post"),
    # what the skill is made of: the choice among B's tokens (0 for a policy blind to B) and the mass put
    # on them, which alone can lift the skill above a null that puts none there
    ("post/tracking", "B tracking post"),
    ("post/b_mass", "mass on B post"),
)

#: random init reading B's belief this well leaves a probe no room to show what pretraining added
PROBE_CEILING_R2 = 0.9


def welch_ci(a, b, ci: float = 0.95) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high): Welch's t interval of a difference of means of two unpaired
    samples (non-finite values dropped); NaN bounds when either has fewer than two values."""
    from scipy import stats  # scipy's import is slow; only summaries need it

    x, y = (np.asarray(v, dtype=np.float64) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not x.size or not y.size:
        return float("nan"), float("nan"), float("nan")
    d = float(y.mean() - x.mean())
    if x.size < 2 or y.size < 2:
        return d, float("nan"), float("nan")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    if se == 0:
        return d, d, d
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + ci / 2, df) * se)
    return d, d - half, d + half


def cell(stat: tuple[float, float, float]) -> str:
    """The cell "mean [low, high]", signed to 3 decimals; "-" without a mean; "n/a" bounds with one seed."""
    m, lo, hi = stat
    if not np.isfinite(m):
        return "-"
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) and np.isfinite(hi) else f"{m:+.3f} [n/a]"


def _t(values) -> str:
    return cell(t_ci(values))


def capability_rows(groups: Groups) -> list[dict]:
    """Did RL find the rare capability? B-prediction skill at the trigger (0 = chance, 1 = the exact ceiling)
    before and after RL and its paired change, per group; the hit rate beside its references, and what the skill
    is made of: tracking (the choice among B's tokens) and mass on B. Trigger seeking is *not* here
    (:func:`seeking_rows`)."""
    rows = []
    for label, g in groups.items():
        rows.append(
            {
                "group": label,
                "seeds": len(g.get("post/capability", [])),
                "B skill at trigger pre": _t(g.get("pre/capability", [])),
                "post": _t(g.get("post/capability", [])),
                "post - pre (paired)": _t(g.get("delta/capability", [])),
                "greedy post": _t(g.get("post/capability_greedy", [])),
                "B hit rate post": _t(g.get("post/b_accuracy", [])),
                "B tracking post": _t(g.get("post/tracking", [])),
                "mass on B post": _t(g.get("post/b_mass", [])),
                "ceiling / chance": _refs(g),
            }
        )
    return rows


def _refs(g: dict[str, list[float]]) -> str:
    ceil, chance = g.get("b_ceiling", []), g.get("b_chance", [])
    return f"{np.mean(ceil):.3f} / {np.mean(chance):.3f}" if ceil and chance else "-"


def seeking_rows(groups: Groups) -> list[dict]:
    """Trigger seeking, its own row: the share of actions that were the trigger, and the reward."""
    return [
        {
            "group": label,
            "seeds": len(g.get("post/trigger_rate", [])),
            "trigger rate pre": _t(g.get("pre/trigger_rate", [])),
            "trigger rate post": _t(g.get("post/trigger_rate", [])),
            "post - pre (paired)": _t(g.get("delta/trigger_rate", [])),
            "reward/step post": _t(g.get("post/reward", [])),
        }
        for label, g in groups.items()
    ]


def exposure_rows(groups: Groups, reference: str | None = None) -> list[dict]:
    """Before RL, per exposure: B skill at the trigger (behaviour, against ceiling and chance) and the
    probe's skill against random init (1 - MSE / MSE_random-init, docs/design.md §6 rule 2), each
    with its Welch difference from ``reference`` (default: the first group, the lowest exposure when
    groups are sorted). Raw R² is shown only next to random init's, never alone."""
    if not groups:
        return []
    reference = reference if reference in groups else next(iter(groups))
    ref = groups[reference]
    rows = []
    for label, g in groups.items():
        row = {"group": label, "B skill at trigger pre": _t(g.get("pre/capability", []))}
        row[f"minus {reference}"] = _welch(ref, g, "pre/capability") if label != reference else "(reference)"
        row["probe skill vs random init, at trigger, pre"] = _t(g.get("pre/skill_B/at", []))
        row[f"probe: minus {reference}"] = _welch(ref, g, "pre/skill_B/at") if label != reference else "(reference)"
        row["R2 pre / random init"] = _r2(g)
        rows.append(row)
    return rows


def _welch(ref: dict[str, list[float]], g: dict[str, list[float]], key: str) -> str:
    return cell(welch_ci(ref.get(key, []), g.get(key, [])))


def _r2(g: dict[str, list[float]]) -> str:
    pre, rnd = g.get("pre/r2_B/at", []), g.get("r2_B_random_init/at", [])
    return f"{np.mean(pre):.2f} / {np.mean(rnd):.2f}" if pre and rnd else "-"


def probe_reading(groups: Groups) -> str:
    """One plain sentence: can the probe show an exposure effect at the trigger?

    It cannot when random init already reads B's belief at R² >= :data:`PROBE_CEILING_R2` and every
    exposure's pre-RL skill against it is at or below zero (its t interval's top <= 0): then
    pretraining added nothing a probe can see over random features, whatever the raw R² says."""
    rnd = [v for g in groups.values() for v in g.get("r2_B_random_init/at", []) if np.isfinite(v)]
    skills = {label: t_ci(g.get("pre/skill_B/at", [])) for label, g in groups.items()}
    if not rnd or not skills:
        return "probe: no probe metrics to read."
    r2 = float(np.mean(rnd))
    if r2 >= PROBE_CEILING_R2 and all(_not_above_zero(s) for s in skills.values()):
        return (
            f"probe: cannot show an exposure effect. Random init already reads B's belief at the trigger "
            f"at R2 {r2:.2f}, and before RL no exposure's probe beats it (skill against random init <= 0 "
            f"in every group); differences in raw R2 between exposures are not evidence. Read the "
            f"exposure effect from B skill at the trigger (behaviour, against the exact ceiling) instead."
        )
    return (
        f"probe: random init reads B's belief at the trigger at R2 {r2:.2f}; the exposure effect on the "
        f"probe is its skill against random init per group (table above), not raw R2."
    )


def _not_above_zero(stat: tuple[float, float, float]) -> bool:
    """The interval's top is at or below 0 (with one seed, no interval: the mean is)."""
    m, _, hi = stat
    top = hi if np.isfinite(hi) else m
    return bool(np.isfinite(top) and top <= 0)


def beyond_null(diffs) -> str:
    """The reading of task - null over seeds (paired): "above" where the 95 % t-interval lies above 0,
    "below" where it lies below, "not shown" where it holds 0 (or has fewer than two seeds). On a task
    that is exchangeable with its null, "above" comes out at most 2.5 % of the time under normality,
    which tests/test_rare.py measures on skewed, two-cluster draws like the study's."""
    _, lo, hi = t_ci(diffs)
    if np.isfinite(lo) and lo > 0:
        return "above"
    if np.isfinite(hi) and hi < 0:
        return "below"
    return "not shown"


def _seed_key(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def null_rows(task: BySeed, null: BySeed) -> list[dict]:
    """The task against its shuffled-reward null (docs/design.md §6 rule 6), per exposure group: for
    each of :data:`NULL_METRICS`, the null's own mean [t-interval] and the task minus the null, paired
    by seed (a seed's task and null trials start from one pretrained model), with a paired t-interval.
    For B skill after RL, the study's capability, also its reading (:func:`beyond_null`) and the exact
    sign-flip p beside it, which does not rest on normality (floor 2 / 2^seeds: 0.0625 with 5).
    Groups or seeds without both are left out; a group with no pair is not a row."""
    rows = []
    for label, seeds in task.items():
        shared = sorted(set(seeds) & set(null.get(label, {})))
        if not shared:
            continue
        row: dict = {"group": label, "seeds paired": len(shared)}
        for key, name in NULL_METRICS:
            got = [(s, seeds[s].get(key), null[label][s].get(key)) for s in sorted(shared, key=_seed_key)]
            got = [(s, a, b) for s, a, b in got if a is not None and b is not None]
            diffs = [a - b for _, a, b in got]
            row[f"{name}: null"] = _t([b for _, _, b in got])
            row[f"{name}: task - null (paired)"] = _t(diffs)
            if key == NULL_METRICS[0][0]:
                row[f"{name}: beyond the null"] = beyond_null(diffs)
                row[f"{name}: sign-flip p"] = f"{sign_flip_p(diffs):.3f}" if diffs else "-"
                row[f"{name}: task - null by seed"] = ", ".join(
                    f"s{s} {d:+.2f}" for (s, _, _), d in zip(got, diffs, strict=True)
                )
        rows.append(row)
    return rows


def null_exposure_rows(
    task: BySeed, null: BySeed, key: str = "post/capability", lineage: dict[str, dict[str, str]] | None = None
) -> list[dict]:
    """The exposures compared with each other on what the null leaves: per group (in the order given,
    lowest exposure first), the task's excess over its null on ``key``, paired by seed, and its
    difference from the previous group's and from the first group's excess. Groups of different trials
    (each exposure its own pretraining) differ unpaired: Welch's t interval. Two groups whose every seed
    ran on one pretrained model (``lineage``: group -> seed -> pretrain key; e.g. 40 and 120 PPO
    iterations of one run, identical for the first 40) differ paired by seed: a Welch interval there
    would treat one trial's two readings as independent draws."""
    excess: dict[str, dict[str, float]] = {}
    for label, seeds in task.items():
        shared = sorted(set(seeds) & set(null.get(label, {})))
        diffs = {s: seeds[s].get(key, np.nan) - null[label][s].get(key, np.nan) for s in shared}
        diffs = {s: d for s, d in diffs.items() if np.isfinite(d)}  # a seed without the metric is no pair
        if diffs:
            excess[label] = diffs

    def minus(a: str, b: str) -> str:
        la, lb = (lineage or {}).get(a, {}), (lineage or {}).get(b, {})
        same = set(excess[a]) == set(excess[b]) and all(
            la.get(s) is not None and la.get(s) == lb.get(s) for s in excess[a]
        )
        if same:
            return cell(t_ci([excess[b][s] - excess[a][s] for s in sorted(excess[a])])) + " (paired)"
        return cell(welch_ci(list(excess[a].values()), list(excess[b].values()))) + " (Welch)"

    rows, labels = [], list(excess)
    for i, label in enumerate(labels):
        row = {"group": label, "seeds paired": len(excess[label])}
        row[f"{key}: task - null"] = _t(list(excess[label].values()))
        row["minus the previous group"] = minus(labels[i - 1], label) if i else "-"
        row[f"minus {labels[0]}"] = minus(labels[0], label) if i else "(reference)"
        rows.append(row)
    return rows
