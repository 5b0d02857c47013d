"""Negation against the seed-only null's update at each reward's size (sweep scope, research note 002).

``task_vectors``' ``beyond_null`` subtracts, at one lambda, the lean of negating the null task's own
update; that update is shorter (norm 4.5 against 5.8-8.2 on ``sweeps/objective.yaml``), so at one
lambda a reward's negated model lies 1.3-1.8x as far from theta_A, and part of a lean "beyond the
null" can be distance (docs/design.md §6 rule 6). Here, per seed and reward task, the null's update is
negated at ``lambda * |tau_task| / |tau_null|``: its own direction, as far from theta_A as the task's
negated model at ``lambda``. It is retrained on R_A and scored exactly as the trials' ``negation``
analysis does it (its :class:`~.negation_analysis.Retraining`, :func:`~.negation_analysis.evaluator`
and :func:`~.negation_analysis.negated_returns`, with the parameters the null trial's config gave
that analysis), and the task's own lean is the one its trial stored. Where a task's update has the
null's norm the matched null is the null's own negation, so the two columns agree.

Metrics, each a mean over seeds with its Student-t interval (``/mean``, ``/ci_low``, ``/ci_high``,
``/n``; ``lam{l}`` as in ``negation``):

- ``negation/{task}/lam{l}/beyond_matched_null``: the task's lean on its R_B (``lean_B``) minus the
  lean on that R_B of the null negated as far, paired by seed (< 0: a lean distance does not explain);
- ``negation/{task}/lam{l}/beyond_null``: the unmatched difference on the same seeds (``task_vectors``');
- ``negation/{task}/lam{l}/null_matched_lean``: the matched null's lean on the task's R_B;
- ``negation/{task}/norm_ratio``: |tau_task| / |tau_null|;
- ``n_seeds``; ``control_drift``: the largest |difference| between the control (M_A retrained,
  recomputed here) and the null trial's stored one, over seeds and rewards (0 where PPO reproduces,
  as on the CPU; otherwise the matched leans carry retraining noise of about that size; NaN where the
  null trial stored no control to compare, a comparison not made).

A task is matched only where the null's ``score_also`` entry of its name is its own reward, and each
lambda's two differences are over the same seeds (a seed missing any of the three leans is left out).

Table ``matched_negation``: one row per seed, task and lambda (``lambda_null`` the null's).

How to run, on a finished objective sweep: ``rayexp analyze objective --analysis matched_negation
--group-by ''``. Cost: per seed one control and one retraining per (task, nonzero lambda), each a
PPO run of ``negation``'s ``iterations`` (13 per seed on objective.yaml); ``tasks`` restricts it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.stats import paired_mean, t_ci
from rayexp.studies.objective import task_vectors as tv
from rayexp.studies.objective.exact_returns import params_of, task_reward_spec
from rayexp.studies.objective.negation_analysis import (
    NegationParams,
    Retraining,
    evaluator,
    lam_name,
    negated_returns,
)

COLUMNS = ("seed", "task", "lambda", "lambda_null", "norm_task", "norm_null", "lean_task", "lean_null")


class MatchedNegationParams(Params):
    null_task: str = Field("null", description="task name of the seed-only null (R_A retrained, other seed)")
    tasks: list[str] = Field(
        default_factory=list,
        description="reward tasks to match (each a score_also name of the null's negation); [] = every such task",
    )
    ci: float = Field(0.95, gt=0, lt=1, description="interval coverage (Student-t over seeds)")


def matched_lambdas(lambdas, norm_task: float, norm_null: float) -> list[float]:
    """The null's negation strengths that put ``theta_A - l * tau_null`` as far from theta_A as
    ``theta_A - lambda * tau_task``: ``l = lambda * |tau_task| / |tau_null|``."""
    if not norm_null > 0:
        raise ValueError(f"the null's update has norm {norm_null}: nothing to scale")
    return [lam * norm_task / norm_null for lam in lambdas]


def summarise(table: dict[str, np.ndarray], ci: float = 0.95) -> dict[str, float]:
    """Per task and lambda, the seeds' paired differences (``table`` holds :data:`COLUMNS` and
    ``lean_null_matched``, one row per seed, task, lambda) as means with Student-t intervals."""
    out: dict[str, float] = {}

    def put(prefix: str, values: np.ndarray) -> None:
        m, lo, hi = t_ci(values, ci)  # non-finite values (a lean a trial did not store) dropped
        n = float(np.isfinite(values).sum())
        out.update({f"{prefix}/mean": m, f"{prefix}/ci_low": lo, f"{prefix}/ci_high": hi, f"{prefix}/n": n})

    for task in dict.fromkeys(table["task"].tolist()):
        mine = table["task"] == task
        first = mine & (table["lambda"] == table["lambda"][mine][0])  # one row per seed
        put(f"negation/{task}/norm_ratio", table["norm_task"][first] / table["norm_null"][first])
        for lam in sorted(set(table["lambda"][mine].tolist())):
            sel = mine & (table["lambda"] == lam)
            # the two differences on the same seeds: a seed missing either lean is left out of both
            sel &= (
                np.isfinite(table["lean_task"])
                & np.isfinite(table["lean_null"])
                & np.isfinite(table["lean_null_matched"])
            )
            stem = f"negation/{task}/{lam_name(lam)}"
            put(f"{stem}/beyond_matched_null", table["lean_task"][sel] - table["lean_null_matched"][sel])
            put(f"{stem}/beyond_null", table["lean_task"][sel] - table["lean_null"][sel])
            put(f"{stem}/null_matched_lean", table["lean_null_matched"][sel])
    return out


def negation_params(trial) -> NegationParams:
    """The parameters a trial's config gave its ``negation`` analysis."""
    entry = next((a for a in trial.config.get("analyses", []) if a["name"] == "negation"), None)
    if entry is None:
        raise ValueError(f"matched_negation: trial {trial.config['task']['name']!r} ran no negation analysis")
    return NegationParams.model_validate(entry.get("params") or {})


def _pairs(group, params: MatchedNegationParams) -> dict[int, tuple]:
    """{seed: (null trial, {task: trial})} for the seeds whose null and tasks finished ``negation``."""
    by_seed: dict[int, dict[str, object]] = {}
    for a in group:
        by_seed.setdefault(int(a.config["seed"]), {})[a.config["task"]["name"]] = a
    out = {}
    for seed, trials in sorted(by_seed.items()):
        null = trials.get(params.null_task)
        if null is None or null.analysis_metrics("negation") is None:
            continue
        neg = negation_params(null)
        wanted = params.tasks or list(neg.score_also)
        missing = sorted(set(wanted) - set(neg.score_also))
        if missing:
            raise ValueError(f"matched_negation: the null's negation does not score {missing} (its score_also)")
        tasks = {t: trials[t] for t in wanted if t in trials and trials[t].analysis_metrics("negation") is not None}
        for t, trial in tasks.items():
            if trial.start_key != null.start_key:
                raise ValueError(f"matched_negation: seed {seed}'s {t!r} and null start from different models")
            theirs = negation_params(trial)
            if (theirs.iterations, theirs.n_seq, theirs.seed) != (neg.iterations, neg.n_seq, neg.seed):
                raise ValueError(f"matched_negation: seed {seed}'s {t!r} ran negation with other settings")
            if neg.score_also[t].model_dump() != task_reward_spec(trial.env_config):
                raise ValueError(
                    f"matched_negation: the null scores {t!r} as {neg.score_also[t].model_dump()}, but that task's "
                    f"reward is {task_reward_spec(trial.env_config)}"
                )
        if tasks:
            out[seed] = (null, tasks)
    if not out:
        raise ValueError(
            f"matched_negation needs, for some seed, a {params.null_task!r} trial and a reward task's, both with "
            f"negation finished; tasks found: {sorted({a.config['task']['name'] for a in group})}"
        )
    return out


def _norm(tau: tv.Params) -> float:
    """An update's norm as ``task_vectors`` reports it (the whole vector, flattened)."""
    return float(np.linalg.norm(tv.flatten(tau)))


@analysis("matched_negation", params=MatchedNegationParams, needs=("model_before", "model_after", "env"), scope="sweep")
def matched_negation(group, params: MatchedNegationParams) -> AnalysisResult:
    """Each reward's negation lean against the null's update negated as far from theta_A, per seed."""
    rows: dict[str, list] = {k: [] for k in (*COLUMNS, "lean_null_matched")}
    gaps: list[float] = []
    for seed, (null, tasks) in _pairs(group, params).items():
        neg, stored = negation_params(null), null.analysis_metrics("negation")
        m_a = null.model_before()
        theta_a = params_of(m_a)
        tau_null = tv.task_vector(theta_a, params_of(null.model_after()))
        norm_null = _norm(tau_null)
        ev, retrain = evaluator(null, neg), Retraining.of(null, neg.iterations)
        with tempfile.TemporaryDirectory(prefix="rayexp-matched-negation-") as tmp:
            control = negated_returns(m_a, tau_null, [0.0], retrain, ev, Path(tmp))[0.0]["retrained"]
            # the stored control's returns must all be there: a missing one is a comparison not made, not a 0
            gaps += [abs(float(v.mean()) - stored.get(f"lam0/retrained/{k}", np.nan)) for k, v in control.items()]
            for task, trial in tasks.items():
                own = trial.analysis_metrics("negation")
                lams = [lam for lam in sorted(set(neg.lambdas) - {0.0}) if f"{lam_name(lam)}/lean_B" in own]
                norm_task = _norm(tv.task_vector(theta_a, params_of(trial.model_after())))
                scaled = matched_lambdas(lams, norm_task, norm_null)
                (Path(tmp) / task).mkdir()
                got = negated_returns(m_a, tau_null, scaled, retrain, ev, Path(tmp) / task)
                for lam, lam_null in zip(lams, scaled):
                    matched = paired_mean(control[task], got[lam_null]["retrained"][task])  # negation's point
                    row = (seed, task, lam, lam_null, norm_task, norm_null)
                    row += (own[f"{lam_name(lam)}/lean_B"], stored.get(f"{lam_name(lam)}/lean_{task}", np.nan), matched)
                    for k, v in zip(rows, row):
                        rows[k].append(v)
    table = {k: np.asarray(v) for k, v in rows.items()}
    drift = float(max(gaps)) if gaps and np.isfinite(gaps).all() else float("nan")
    metrics = summarise(table, params.ci) | {"n_seeds": float(len(set(rows["seed"]))), "control_drift": drift}
    return AnalysisResult(metrics=metrics, tables={"matched_negation": pa.table(rows)})
