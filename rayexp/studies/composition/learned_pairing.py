"""Feeds :mod:`.learned_bound` a verdict group's stored trials: each task paired by seed with its pair's
learned composition, where both maps of p_pre were fitted on one model and sample, and the premises checked
on the residuals the two trials' composition analyses kept (``analyses/composition.npz``)."""

from __future__ import annotations

import functools

import numpy as np

from rayexp.studies.composition.bounds import NAN
from rayexp.studies.composition.composition_analysis import model_key, sample_of
from rayexp.studies.composition.learned_bound import inner_products, learned_bound, rest_min, same_fit
from rayexp.studies.composition.stream_setup import task_of
from rayexp.studies.composition.verdict import COMPOSITION, Thresholds


def fit_key(artifacts, signals: dict[str, float]) -> tuple:
    """(model key, sample, resolution, n_actions): what :func:`.learned_bound.same_fit` pairs trials by. The
    model is the one the analysis read p_pre from (the trial's start, else its pretraining), None where
    unknown; the sample is the composition analysis's (n_seq, seed), which a resolution clamped at its floor
    (a near-exact model) would not tell apart."""
    key = model_key(artifacts)
    env = artifacts.env_config
    try:
        n_actions = len(task_of(env, artifacts.stream())[0].action_tokens)
    except (KeyError, ValueError):  # a reward the composition analysis does not score either
        n_actions = None
    return key, sample_of(artifacts.config), signals["resolution"], n_actions


def with_learned(rows, null_cells, cells, trials, nulls, th: Thresholds, name: str) -> list:
    """``rows`` ((process, task, Verdict, columns)), each with its bounds against its pair's learned
    composition (:func:`_with_learned`); ``nulls[(process, task)]``: the null's columns paired with that task's
    seeds (None without a null). Each trial's kept arrays are read once and let go with the verdict."""
    composing = [(p, t) for p, t, w, _ in rows if w.code == COMPOSITION and (p, t) not in null_cells]
    try:
        return [_with_learned(row, composing, cells, trials, nulls, th, name) for row in rows]
    finally:
        _kept.cache_clear()


def _with_learned(row, composing, cells, trials, nulls, th: Thresholds, name: str):
    """``row`` with its bounds against its pair's learned composition: the first task (by name) of the same
    process called composition, other than ``row``'s own and never a null (a null called composition is the
    detector's failure, not a composition to measure by), paired by seed where both fits are one, with its
    premises checked on the residuals the two trials' ``name`` analyses stored."""
    process, task, v, col = row
    learned = [t for p, t in composing if p == process and t != task]
    if not learned:
        return row
    seeds = sorted(cells[(process, task)])
    ref, mine = (process, learned[0]), (process, task)

    def paired(s: int) -> bool:  # built only here: a pair with no composition verdict never builds its stream
        return s in cells[ref] and same_fit(
            fit_key(trials[ref][s], cells[ref][s]), fit_key(trials[mine][s], cells[mine][s])
        )

    ok = {s: paired(s) for s in seeds}
    tv_learned = [cells[ref][s]["unexplained_tv_reweighting"] if ok[s] else NAN for s in seeds]
    kept = np.array([_premises(trials[mine][s], trials[ref][s], name) if ok[s] else [NAN] * 4 for s in seeds])
    null = nulls[(process, task)]
    l2 = None if null is None else (kept[:, 1], kept[:, 2], kept[:, 3], null["residual_sq"])
    m_pi, m_sharp = col["unexplained_tv_reweighting"], col["unexplained_tv_planted_sharp"]
    tv_null = None if null is None else null["unexplained_tv_reweighting"]
    v = learned_bound(v, m_pi, m_sharp, tv_null, tv_learned, learned[0], th, least_rest=kept[:, 0], l2=l2)
    return process, task, v, col


@functools.cache
def _kept(artifacts, name: str) -> dict | None:
    """A trial's kept arrays, read once per verdict: a learned policy's are paired with every task of its pair."""
    return artifacts.analysis_arrays(name)


def _premises(mine, learned, name: str) -> list[float]:
    """[:func:`.learned_bound.rest_min`, then :func:`.learned_bound.inner_products`] from the two trials'
    stored residuals; NaN where either kept none (or they are on different held-out sets)."""
    a, b = _kept(mine, name), _kept(learned, name)
    if not a or not b or "residual_post" not in a or "residual_post" not in b:
        return [NAN] * 4
    args = (a["residual_post"], a["action_tokens"], b["residual_post"], b["action_tokens"])
    return [rest_min(*args), *inner_products(*args)]
