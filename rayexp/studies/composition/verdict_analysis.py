"""Across trials: reweighting / elicitation / composition / inconclusive for each task of each pair.

Reads each trial's ``composition`` analysis metrics and applies the rule of
:mod:`rayexp.studies.composition.verdict` (stated there with its reasoning) over the seeds of each
(process, task), with the same process's shuffled-reward null (``shuffle_reward`` tasks) paired by
seed as the reference. Run it grouped by process, so each group holds a pair's tasks and its null::

    rayexp analyze EXPERIMENT --analysis verdict --group-by process

(grouped by task too, a group has no null, and the rule falls back to absolute thresholds, saying so).

Metrics per group and task: ``{task}/verdict_code`` (-1 reweighting, 0 inconclusive, +1 composition,
+2 elicitation), ``{task}/score`` with ``/ci_low`` and ``/ci_high`` (the probability mass per step neither class
explains, in the same units for every task), ``{task}/score_excess`` with its CI (the score minus the
null's, paired by seed; NaN without a null), ``{task}/n_seeds``. Table ``verdict``: one row per task (process, task, n_seeds, score and
CI, verdict, reason, each class's unexplained share, the margin and the reward ``shortfall`` of the map
of p_pre with their intervals, ``spec`` (how
much more a random-init network's features leave unexplained than the pretrained ones: the readout's
control) with its interval, ``share_max`` (the largest composed share the policy leaves room for,
:func:`.resolution.composed_share_max`) with its interval, the other bounds (``share_max_drift``,
``share_max_learned``, ``share_max_learned_drift``, ``share_max_learned_l2``, ``share_max_soft_drift``),
``beyond_lookup`` (the greedy reward beyond the best last-k-token lookup, :mod:`.caveats`) with its
interval, and the seeds refuting each premise (``refuted_sharp``, ``refuted_drift``, ``refuted_soft``,
``refuted_learned_sharp``, ``refuted_learned_drift``, ``refuted_learned_l2``: :mod:`.bounds`,
:mod:`.learned_bound`, paired by :mod:`.learned_pairing`), and the mean over seeds of each signal in
:data:`SIGNALS`). Figure ``verdict``: the deciding signals per task,
seeds as points.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.console import OneLineError
from rayexp.exact.ceilings import MARGIN_EPS
from rayexp.specs import metric_segment, process_label
from rayexp.studies.composition.bounds import Residuals
from rayexp.studies.composition.caveats import beyond_lookup
from rayexp.studies.composition.learned_pairing import with_learned
from rayexp.studies.composition.verdict import Interval, Thresholds, decide

#: table column -> key of the per-trial composition analysis
SIGNALS = {
    "unexplained_reweighting": "classes/reweighting/unexplained/post",
    "unexplained_elicitation": "classes/elicitation/unexplained/post",
    "margin_phase_greedy": "margin_phase_greedy/post",
    "unexplained_tv_reweighting": "classes/reweighting/unexplained_tv/post",
    "unexplained_tv_elicitation": "classes/elicitation/unexplained_tv/post",
    "unexplained_reweighting_ci_low": "classes/reweighting/unexplained/post/ci_low",
    "unexplained_reweighting_ci_high": "classes/reweighting/unexplained/post/ci_high",
    "unexplained_elicitation_ci_low": "classes/elicitation/unexplained/post/ci_low",
    "unexplained_elicitation_ci_high": "classes/elicitation/unexplained/post/ci_high",
    "unexplained_tv_reweighting_ci_low": "classes/reweighting/unexplained_tv/post/ci_low",
    "unexplained_tv_reweighting_ci_high": "classes/reweighting/unexplained_tv/post/ci_high",
    "unexplained_tv_elicitation_ci_low": "classes/elicitation/unexplained_tv/post/ci_low",
    "unexplained_tv_elicitation_ci_high": "classes/elicitation/unexplained_tv/post/ci_high",
    "margin_phase_greedy_ci_low": "margin_phase_greedy/post/ci_low",
    "margin_phase_greedy_ci_high": "margin_phase_greedy/post/ci_high",
    "unexplained_readout_random_init": "classes/elicitation_random_init/unexplained/post",
    "readout_excess_ci_low": "classes/elicitation_excess/post/ci_low",
    "readout_excess_ci_high": "classes/elicitation_excess/post/ci_high",
    "fit_reward_reweighting": "classes/reweighting/fit_reward/post",
    "reward_shortfall": "classes/reweighting/shortfall/post",
    "reward_shortfall_ci_low": "classes/reweighting/shortfall/post/ci_low",
    "reward_shortfall_ci_high": "classes/reweighting/shortfall/post/ci_high",
    "fit_reward_elicitation": "classes/elicitation/fit_reward/post",
    "below_bar": "classes/reweighting/below_bar/post",
    "below_bar_ci_low": "classes/reweighting/below_bar/post/ci_low",
    "below_bar_ci_high": "classes/reweighting/below_bar/post/ci_high",
    "resolution_bar": "classes/reweighting/bar",
    "unexplained_planted_sharp": "classes/planted/sharp/unexplained",
    "unexplained_planted_quarter": "classes/planted/quarter/unexplained",
    "unexplained_planted_soft_quarter": "classes/planted/soft_quarter/unexplained",
    "unexplained_planted_composed": "classes/planted/composed/unexplained",
    "planted_defined": "classes/planted/defined",
    "unexplained_tv_planted_composed": "classes/planted/composed/unexplained_tv",
    "unexplained_tv_planted_sharp": "classes/planted/sharp/unexplained_tv",
    "resolution": "classes/resolution",
    "composed_share_max": "classes/composed_share_max/post",
    "composed_share_max_ci_low": "classes/composed_share_max/post/ci_low",
    "composed_share_max_ci_high": "classes/composed_share_max/post/ci_high",
    # the bounds' premises and the residual bound (:mod:`.bounds`)
    "rest_min": "classes/composed_share_max/rest_min/post",
    "residual_sq": "classes/residual/sq/post",
    "residual_dot_soft": "classes/residual/dot_soft/post",
    "residual_dot_composed": "classes/residual/dot_composed/post",
    "residual_share_max_soft": "classes/residual/share_max_soft/post",
    "residual_share_max_composed": "classes/residual/share_max_composed/post",
    "residual_sq_planted_sharp": "classes/planted/sharp/residual_sq",
    "residual_sq_planted_composed": "classes/planted/composed/residual_sq",
    "residual_sq_planted_soft": "classes/planted/soft/residual_sq",
    "unexplained_tv_planted_soft": "classes/planted/soft/unexplained_tv",
    "kl_reweighting": "classes/reweighting/kl/post",
    "kl_elicitation": "classes/elicitation/kl/post",
    "kl_position": "classes/position/kl/post",  # how far the policy moves from its position-only one
    "reward_post_greedy": "reward/post/greedy",
    "reward_pre_greedy": "reward/pre/greedy",
    "ceiling_optimum": "ceiling/optimum",
    "ceiling_single_per_phase": "ceiling/single_per_phase",
    "margin_greedy_post": "margin_greedy/post",
    "interaction_post": "interaction/post",
    "composed_post": "composed/post",
    "reweighting_r2_post": "reweighting_r2/post",
    "pass_at_1_pre": "support/pass_at_1/pre",
    "pass_at_1024_pre": "support/pass_at_1024/pre",
    "pass_at_1_post": "support/pass_at_1/post",
    "pass_at_1024_post": "support/pass_at_1024/post",
    "pass_at_1024_uniform": "support/pass_at_1024/uniform",
    "pre_prob_of_post_choice": "support/pre_prob_of_post_choice",
    "support_discovered": "support/discovered",
    "support_lost": "support/lost",
}


class VerdictParams(Params):
    analysis: str = Field("composition", description="name of the per-trial analysis whose metrics are read")
    tol: float = Field(
        Thresholds.tol, ge=0, lt=1, description="explained: the paired excess over the null's CI high below it"
    )
    u_max: float = Field(
        Thresholds.u_max, gt=0, le=1, description="explained also needs the unexplained share's CI high below it"
    )
    u_abs: float = Field(
        Thresholds.u_abs, gt=0, lt=1, description="without a null: explained below, unexplained above it"
    )
    margin_min: float = Field(
        Thresholds.margin_min, ge=-1, le=1, description="composition needs the per-phase margin's CI low above it"
    )
    shortfall_min: float = Field(
        Thresholds.shortfall_min,
        ge=-1,
        le=1,
        description="composition needs the reward shortfall of the map of p_pre's CI low above it",
    )
    min_seeds: int = Field(
        Thresholds.min_seeds, ge=1, description="fewer seeds: intervals over one trial's held-out contexts"
    )
    ci: float = Field(Thresholds.ci, gt=0, lt=1, description="interval coverage (Student-t over seeds)")
    kl_still: float = Field(
        Thresholds.kl_still,
        ge=0,
        description="a reweighting or elicitation reason says the policy barely moved when its mean KL from its "
        "position-only policy (nats per step) is below it",
    )


def trial_signals(artifacts, analysis_name: str = "composition") -> dict[str, float]:
    """{column: value} of one trial (NaN where the analysis did not log it)."""
    prefix = f"analysis/{analysis_name}/"
    found = {k[len(prefix) :]: v for k, v in artifacts.metrics().items() if k.startswith(prefix)}
    if not found:
        found = artifacts.analysis_metrics(analysis_name) or {}
    out = {col: float(found.get(key, float("nan"))) for col, key in SIGNALS.items()}
    if not np.isfinite(out["reward_shortfall"]):  # trials logged before the metric: nearly the same from its parts
        gap = out["ceiling_optimum"] - out["ceiling_single_per_phase"]
        if (
            gap >= MARGIN_EPS
        ):  # (a ratio of means; the post reward over every sequence, the fit's over the held-out half)
            out["reward_shortfall"] = (out["reward_post_greedy"] - out["fit_reward_reweighting"]) / gap
    lookups = [v for k, v in found.items() if k.startswith("ceiling/lookup_k")]
    out["reward_beyond_lookup"] = float(
        beyond_lookup(
            [out["reward_post_greedy"]],
            [[v] for v in lookups] or [[np.nan]],
            out["ceiling_optimum"],
            out["ceiling_single_per_phase"],
        )[0]
    )
    return out


def _seed(artifacts) -> int:
    return int(artifacts.config.get("seed", 0))


def _is_null(artifacts) -> bool:
    return bool(artifacts.env_config.get("shuffle_reward"))


def _context(t: dict[str, float]) -> dict[str, Interval]:
    def iv(col: str) -> Interval:
        return Interval(t[col], t[f"{col}_ci_low"], t[f"{col}_ci_high"])

    out = {
        "u_rw": iv("unexplained_reweighting"),
        "u_el": iv("unexplained_elicitation"),
        "margin": iv("margin_phase_greedy"),
    }
    if np.isfinite(t["unexplained_tv_reweighting_ci_low"]):  # trials logged before these CIs lack them
        out["tv_rw"], out["tv_el"] = iv("unexplained_tv_reweighting"), iv("unexplained_tv_elicitation")
    if np.isfinite(t["reward_shortfall_ci_low"]):
        out["shortfall"] = iv("reward_shortfall")
    elif np.isfinite(t["reward_shortfall"]):  # derived from its parts (older trial): a point value, no bounds
        out["shortfall"] = Interval(t["reward_shortfall"])
    if np.isfinite(t["below_bar_ci_low"]):
        out["below_bar"] = iv("below_bar")
    if np.isfinite(t["composed_share_max_ci_low"]):
        out["share_max"] = iv("composed_share_max")
    if np.isfinite(t["reward_beyond_lookup"]):  # one trial's reward against exact ceilings: a point value
        out["beyond_lookup"] = Interval(t["reward_beyond_lookup"])
    excess = t["unexplained_readout_random_init"] - t["unexplained_elicitation"]
    if np.isfinite(t["readout_excess_ci_low"]):
        out["spec"] = Interval(excess, t["readout_excess_ci_low"], t["readout_excess_ci_high"])
    return out


def _difference(x, y, path: str = "") -> tuple[str, object, object] | None:
    """The first (sorted) dotted path where two configs differ, with the two values; None where equal."""
    if isinstance(x, dict) and isinstance(y, dict):
        for key in sorted(x.keys() | y.keys()):
            found = _difference(x.get(key), y.get(key), f"{path}{key}.")
            if found:
                return found
        return None
    return None if x == y else (path[:-1], x, y)


def _once(by_seed: dict[int, object], a, cell: str) -> None:
    """Refuse a second trial for one seed of a cell: the rule pairs by seed, so one would silently
    replace the other (a sweep with a size axis grouped by process alone). Names the setting that tells
    them apart, so the user can group by it (exit 2, one line)."""
    first = by_seed.get(_seed(a))
    if first is None:
        return
    found = _difference(first.config, a.config)
    if not found:
        hint = "they ran the same settings (two sweeps pooled?)"
    elif _is_null(a):  # grouping by the task would take the null out of every task's group
        hint = f"they differ in {found[0]} ({found[1]} vs {found[2]}): keep one null task per pair, or give them "
        hint += "distinct seeds"
    else:
        hint = f"they differ in {found[0]} ({found[1]} vs {found[2]}): group by it too, --group-by process,{found[0]}"
    raise OneLineError(f"verdict: {cell}: two trials of this group ran seed {_seed(a)}; {hint}", code=2)


def _null_of(ref: dict[int, dict[str, float]] | None, seeds: list[int], key: str) -> list[float] | None:
    """The null's values of ``key`` for ``seeds`` (NaN where a seed has no null trial), None without a null."""
    return None if ref is None else [ref.get(s, {}).get(key, float("nan")) for s in seeds]


def verdicts(group, params: VerdictParams) -> list[tuple[str, str, object, dict[str, np.ndarray]]]:
    """(process, task, Verdict, per-seed signal columns) for each (process, task) of ``group``; a pair with
    a composition verdict states every other task's bound against that learned policy (:mod:`.learned_bound`)."""
    th = Thresholds(**params.model_dump(include=set(dataclasses.asdict(Thresholds()))))
    cells: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    trials: dict[tuple[str, str], dict[int, object]] = {}  # the artifacts, for the learned bound's pairing
    nulls: dict[str, dict[int, dict[str, float]]] = {}
    null_cells: set[tuple[str, str]] = set()
    paired_null: dict[tuple[str, str], dict | None] = {}  # the null's columns, paired with each task's seeds
    for a in group:
        process, task = process_label(a.config["process"]), a.config["task"]["name"]
        _once(trials.get((process, task), {}), a, f"{process} {task}")
        if _is_null(a):  # two null tasks of one pair would replace each other's seeds as well
            _once(
                {s: t for (p, _), ts in trials.items() if p == process for s, t in ts.items() if _is_null(t)},
                a,
                f"{process} null",
            )
        signals = trial_signals(a, params.analysis)
        cells.setdefault((process, task), {})[_seed(a)] = signals
        trials.setdefault((process, task), {})[_seed(a)] = a
        if _is_null(a):
            nulls.setdefault(process, {})[_seed(a)] = signals
            null_cells.add((process, task))
    out = []
    for (process, task), by_seed in sorted(cells.items()):
        seeds = sorted(by_seed)
        col = {c: np.array([by_seed[s][c] for s in seeds]) for c in (*SIGNALS, "reward_beyond_lookup")}
        # the null task itself is judged on absolute thresholds: it cannot be its own reference
        ref = None if (process, task) in null_cells else nulls.get(process)

        tv = (
            col["unexplained_tv_reweighting"],
            col["unexplained_tv_elicitation"],
            _null_of(ref, seeds, "unexplained_tv_reweighting"),
            _null_of(ref, seeds, "unexplained_tv_elicitation"),
        )
        v = decide(
            col["unexplained_reweighting"],
            col["unexplained_elicitation"],
            col["margin_phase_greedy"],
            _null_of(ref, seeds, "unexplained_reweighting"),
            _null_of(ref, seeds, "unexplained_elicitation"),
            th,
            context=_context(by_seed[seeds[0]]) if len(seeds) == 1 else None,
            tv=tv,
            u_el_random=col["unexplained_readout_random_init"],
            shortfall=col["reward_shortfall"],
            kl_position=col["kl_position"],
            below_bar=col["below_bar"],
            u_composed=col["unexplained_planted_composed"],
            planted_defined=col["planted_defined"],
            share_max=col["composed_share_max"],
            tv_composed=col["unexplained_tv_planted_composed"],
            residuals=Residuals(
                sq=col["residual_sq"],
                dot_soft=col["residual_dot_soft"],
                sq_soft=col["residual_sq_planted_soft"],
                rest_min=col["rest_min"],
                tv_sharp=col["unexplained_tv_planted_sharp"],
                sq_null=_null_of(ref, seeds, "residual_sq"),
                tv_null=tv[2],
            ),
            beyond_lookup=col["reward_beyond_lookup"],
        )
        out.append((process, task, v, col))
        paired_null[(process, task)] = None if ref is None else {
            k: _null_of(ref, seeds, k) for k in ("unexplained_tv_reweighting", "residual_sq")
        }  # fmt: skip
    return with_learned(out, null_cells, cells, trials, paired_null, th, params.analysis)


@analysis("verdict", params=VerdictParams, scope="sweep")
def verdict(group, params: VerdictParams) -> AnalysisResult:
    """Reweighting / elicitation / composition / inconclusive per task, against the pair's null."""
    rows: dict[str, list] = {}
    metrics: dict[str, float] = {}
    results = verdicts(group, params)
    # a group holding several processes (grouped by task alone) keys its metrics by process too, or
    # one pair's verdict would overwrite another's under the same name
    several = len({process for process, *_ in results}) > 1
    for process, task, v, col in results:
        row = {
            "process": process,
            "task": task,
            "n_seeds": v.n_seeds,
            "score": v.score.mean,
            "score_ci_low": v.score.lo,
            "score_ci_high": v.score.hi,
            "excess": v.excess.mean,
            "excess_ci_low": v.excess.lo,
            "excess_ci_high": v.excess.hi,
            "verdict": v.label,
            "reason": v.reason,
            "reference": v.reference,
            **{
                f"{k}{s}": getattr(getattr(v, k), a)
                for k in (
                    "u_rw",
                    "u_el",
                    "d_rw",
                    "d_el",
                    "margin",
                    "spec",
                    "shortfall",
                    "below_bar",
                    "share_max",
                    "share_max_drift",
                    "share_max_learned",
                    "share_max_learned_drift",
                    "share_max_learned_l2",
                    "share_max_soft_drift",
                    "beyond_lookup",
                )
                for s, a in (("", "mean"), ("_lo", "lo"), ("_hi", "hi"))
            },
            **{
                f"refuted_{p}": getattr(v, f"refuted_{p}")
                for p in ("sharp", "drift", "soft", "learned_sharp", "learned_drift", "learned_l2")
            },
            **{c: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan") for c, x in col.items()},
        }
        for k, val in row.items():
            rows.setdefault(k, []).append(val)
        prefix = f"{metric_segment(process)}/{task}" if several else task
        metrics |= {
            f"{prefix}/verdict_code": float(v.code),
            f"{prefix}/score": v.score.mean,
            f"{prefix}/score/ci_low": v.score.lo,
            f"{prefix}/score/ci_high": v.score.hi,
            f"{prefix}/score_excess": v.excess.mean,
            f"{prefix}/score_excess/ci_low": v.excess.lo,
            f"{prefix}/score_excess/ci_high": v.excess.hi,
            f"{prefix}/n_seeds": float(v.n_seeds),
            f"{prefix}/beyond_lookup": v.beyond_lookup.mean,
        }
    return AnalysisResult(metrics=metrics, tables={"verdict": pa.table(rows)}, figures={"verdict": _figure(results)})


def _figure(results):
    from rayexp.figures import plt  # matplotlib, Agg backend set once there

    shown = ("unexplained_reweighting", "unexplained_elicitation", "margin_phase_greedy", "reward_shortfall")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.6), squeeze=False)
    for ax, name in zip(axes[0], shown):
        for i, (_, task, _v, col) in enumerate(results):
            x = col[name]
            ax.plot(np.full(len(x), i) + np.linspace(-0.15, 0.15, len(x)), x, "o", alpha=0.7)
            if np.isfinite(x).any():
                ax.plot([i - 0.25, i + 0.25], [np.nanmean(x)] * 2, "k-")
        ax.set_xticks(
            range(len(results)), [f"{r[1]}\n{r[2].label}" for r in results], rotation=45, ha="right", fontsize=7
        )
        ax.set_title(name, fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
    fig.tight_layout()
    return fig
