"""Across trials: can the objective be read from the weights? (research note 002)

Runs over a finished sweep whose tasks all start from the same M_A (``task.start_from``) and each
fine-tune it on one reward R_B, several seeds each, plus a null task (``null_task``: R_A again with
another seed, so its update is what retraining alone writes). Per trial ``tau = theta_B - theta_A``
(:mod:`rayexp.studies.objective.task_vectors`). Metrics, logged as ``sweep/task_vectors/{group}/...``:

- ``norm/{task}/{module}``: mean per-module norm of tau over seeds (table ``task_vector_norms``);
- ``cos/{same_reward,other_reward,null,null_vs_reward}/{mean,ci_low,ci_high,n}``: cosines of
  pairs of task vectors from different seeds, and ``cos/other_reward_same_seed/...`` (trials of one
  seed share their streams, so their updates share noise; figure ``task_vector_cosines``: the full
  matrix); the interval is a leave-one-seed-out jackknife, Student-t (pairs sharing a seed are not
  independent, so pairs are not resampled as if they were); ``cos/{a}_minus_{b}/...`` (same_reward
  minus other_reward, same_reward minus null, null minus null_vs_reward): the difference of two
  such means with one jackknife over both, paired through the seeds; with a reward-free arm
  (``free_task``: PPO from M_A on a shuffled reward), ``cos/{free,free_vs_reward,free_vs_null}/...``
  and ``cos/{same_reward,null}_minus_free/...``: how much of those cosines any PPO update from M_A
  shares. The reward-free trials enter nothing else (classifier, superposition, negation, norms);
- ``classifier/{accuracy,chance,p_value,n}``: leave-one-seed-out nearest-centroid naming of the
  task from the vector, against a within-seed label permutation null; ``classifier/rewards_only/...``
  without the null task; ``classifier/module/{module}/{accuracy,p_value,p_holm}``: the same on one
  module, ``p_holm`` Holm-adjusted over the ``classifier/module/n_tested`` modules (all tested on the
  same trials: dependent tests, which Holm's family-wise control allows; :mod:`.inference`);
- superposition, per seed: mu = mean tau over the rewards (null excluded), residual_r = tau_r - mu:
  ``superpose/{task}/gain_{tau,residual,mean}``: exact return on R_B of M_A + tau (= M_B), of
  M_A + residual, of M_A + mu, minus M_A's, with ``/ci_low``, ``/ci_high`` over seeds;
  ``superpose/cos_mean_null`` (cos(mu, the same seed's null tau)), ``superpose/cos_mean_tau`` (cos(mu, tau_r))
  next to ``superpose/cos_mean_tau_if_orthogonal`` (what mutually orthogonal updates would give);
- negation (from each trial's ``negation`` analysis): ``negation/{task}/lam{l}/lean_B/{mean,ci_low,
  ci_high}`` over seeds, and ``.../lean_A``; ``negation/{task}/lam{l}/beyond_null/...``: the lean
  minus the null task's lean on the same R_B (its ``score_also``), per seed: a lean toward
  minimising R_B that generic damage from negating an update does not explain is below zero;
- ``similarity/{task}/{task}``: correlation of the two rewards' exact action values over contexts x
  actions (how different the chosen rewards are), ``return/{task}/optimum``.

Intervals over seeds are Student-t (docs/design.md §6 rule 4: a percentile bootstrap of 3-5 seeds
covers ~75-85 % at a nominal 95 %); ``.../n`` says how many values each rests on.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.stats import t_ci
from rayexp.studies.objective import inference
from rayexp.studies.objective import returns as rt
from rayexp.studies.objective import task_vectors as tv
from rayexp.studies.objective.exact_returns import ExactReturns, params_of, task_reward_spec, with_params


class TaskVectorParams(Params):
    null_task: str = Field("null", description="task name of the seed-only null (R_A retrained, other seed)")
    free_task: str = Field(
        "free",
        description="task name of the reward-free arm (PPO from M_A on a shuffled reward); set apart from "
        "every other result and compared by cosine only",
    )
    n_seq: int = Field(1000, ge=20, le=1_000_000, description="stream sequences of the exact evaluation")
    n_perm: int = Field(1000, ge=10, le=100_000, description="label permutations of the classifier's null")
    # Holm over ~16 modules needs p as small as 0.05 / 16 = 0.003 to reject anything; a permutation p is
    # at least 1 / (n_perm + 1), so 200 permutations could never reach it
    n_perm_module: int = Field(1000, ge=10, le=100_000, description="permutations per module classifier")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the evaluation sequences and the permutations")


def _ci(prefix: str, values, stat=None) -> dict[str, float]:
    """Mean and Student-t interval over seeds (or ``stat``, an interval computed otherwise)."""
    m, lo, hi = stat if stat is not None else t_ci(values)
    return {f"{prefix}/mean": m, f"{prefix}/ci_low": lo, f"{prefix}/ci_high": hi, f"{prefix}/n": float(len(values))}


def _free_cosines(X, labels, seeds, free_trials, theta_a, names, null, free, pairs) -> dict[str, float]:
    """``cos/{free,free_vs_reward,free_vs_null}/...`` and the paired differences that ask how much of
    the same-reward and seed-only cosines any PPO update from M_A shares (``cos/{same_reward,null}
    _minus_free/...``), from the reward-free arm's vectors beside the others."""
    Xf = np.stack([tv.flatten(tv.task_vector(theta_a, params_of(a.model_after())), names) for a in free_trials])
    labs = list(labels) + [free] * len(free_trials)
    sds = np.asarray(list(seeds) + [int(a.config["seed"]) for a in free_trials])
    C = tv.cosine_matrix(np.vstack([X, Xf]))
    out: dict[str, float] = {"norm/free/total": float(np.linalg.norm(Xf, axis=1).mean())}
    fp = {k: (C[i, j], sds[i], sds[j]) for k, (i, j) in tv.free_pair_index(labs, sds, free, null).items()}
    for kind, (vals, si, sj) in fp.items():
        if len(vals):
            out |= _ci(f"cos/{kind}", vals, inference.pair_jackknife_ci(vals, si, sj))
    for a in ("same_reward", "null"):
        if len(pairs.get(a, ((),))[0]) and len(fp["free"][0]):
            out |= _ci(f"cos/{a}_minus_free", pairs[a][0], inference.pair_difference_jackknife_ci(pairs[a], fp["free"]))
    return out


@analysis("task_vectors", params=TaskVectorParams, needs=("model_before", "model_after", "env"), scope="sweep")
def task_vectors(group, params: TaskVectorParams) -> AnalysisResult:
    """Task vectors over rewards and seeds: norms, cosines, a reward classifier, superposition, negation."""

    starts = {a.start_key for a in group}
    if len(starts) != 1 or None in starts:
        raise ValueError(f"task_vectors needs trials that all start from one M_A (task.start_from); got {starts}")
    trials = sorted(group, key=lambda a: (a.config["task"]["name"], a.config["seed"]))
    # the reward-free arm is a control of the cosines only: every other result is computed without it
    free_trials = [a for a in trials if a.config["task"]["name"] == params.free_task]
    trials = [a for a in trials if a.config["task"]["name"] != params.free_task]
    if not trials:
        raise ValueError(f"task_vectors: every trial is the reward-free task {params.free_task!r}")
    labels = [a.config["task"]["name"] for a in trials]
    seeds = [int(a.config["seed"]) for a in trials]
    m_a = trials[0].model_before()
    theta_a = params_of(m_a)
    taus = [tv.task_vector(theta_a, params_of(a.model_after())) for a in trials]
    names = sorted(theta_a)
    X = np.stack([tv.flatten(t, names) for t in taus])
    metrics: dict[str, float] = {}
    tables: dict[str, pa.Table] = {}
    figures = {}

    # norms per module
    norm_rows: dict[str, list] = {"task": [], "seed": [], "module": [], "norm": []}
    for lab, s, t, x in zip(labels, seeds, taus, X):
        for mod, n in (tv.module_norms(t) | {"total": float(np.linalg.norm(x))}).items():
            for k, v in zip(norm_rows, (lab, s, mod, n)):
                norm_rows[k].append(v)
    tables["task_vector_norms"] = pa.table(norm_rows)
    nt = {k: np.asarray(v) for k, v in norm_rows.items()}
    for lab in dict.fromkeys(labels):
        for mod in dict.fromkeys(norm_rows["module"]):
            sel = (nt["task"] == lab) & (nt["module"] == mod)
            metrics[f"norm/{lab}/{mod}"] = float(nt["norm"][sel].mean())

    # cosines
    C = tv.cosine_matrix(X)
    null = params.null_task if params.null_task in labels else None
    seed_arr = np.asarray(seeds)
    pairs = {kind: (C[i, j], seed_arr[i], seed_arr[j]) for kind, (i, j) in tv.pair_index(labels, seeds, null).items()}
    for kind, (vals, si, sj) in pairs.items():
        if len(vals):
            metrics |= _ci(f"cos/{kind}", vals, inference.pair_jackknife_ci(vals, si, sj))
    for a, b in (("same_reward", "other_reward"), ("same_reward", "null"), ("null", "null_vs_reward")):
        if len(pairs.get(a, ((),))[0]) and len(pairs.get(b, ((),))[0]):
            diff = inference.pair_difference_jackknife_ci(pairs[a], pairs[b])
            metrics |= _ci(f"cos/{a}_minus_{b}", pairs[a][0], diff)  # n: a's pairs
    if free_trials:
        metrics |= _free_cosines(X, labels, seeds, free_trials, theta_a, names, null, params.free_task, pairs)
    figures["task_vector_cosines"] = _heatmap(C, labels, seeds)
    tables["task_vector_cosines"] = pa.table(
        {"row": [f"{lab}/{s}" for lab, s in zip(labels, seeds)]}
        | {f"{lab}/{s}": C[:, i] for i, (lab, s) in enumerate(zip(labels, seeds))}
    )

    # classifier
    def classify(Xs, labs, grps, n_perm, prefix):
        acc, p, _ = tv.permutation_pvalue(Xs, labs, grps, n_perm=n_perm, seed=params.seed)
        k = len(set(labs))
        return {
            f"{prefix}/accuracy": acc,
            f"{prefix}/chance": 1.0 / k,
            f"{prefix}/p_value": p,
            f"{prefix}/n": float(len(labs)),
        }

    if len(set(seeds)) >= 2 and len(set(labels)) >= 2:
        metrics |= classify(X, labels, seeds, params.n_perm, "classifier")
        keep = [i for i, lab in enumerate(labels) if lab != null]
        if null is not None and len({labels[i] for i in keep}) >= 2:
            metrics |= classify(
                X[keep], [labels[i] for i in keep], [seeds[i] for i in keep], params.n_perm, "classifier/rewards_only"
            )
        p_modules = {}
        for mod, mnames in tv.module_names(taus[0]).items():
            Xm = np.stack([tv.flatten(t, mnames) for t in taus])
            got = classify(Xm, labels, seeds, params.n_perm_module, f"classifier/module/{mod}")
            metrics |= {k: v for k, v in got.items() if k.endswith(("accuracy", "p_value"))}
            p_modules[mod] = got[f"classifier/module/{mod}/p_value"]
        # every module is a test of the same question on the same trials: correct for all of them
        metrics |= {f"classifier/module/{mod}/p_holm": p for mod, p in inference.holm(p_modules).items()}
        metrics["classifier/module/n_tested"] = float(len(p_modules))

    # exact returns: every task's reward on one sample of the stream
    env = trials[0].env_config
    specs = {lab: task_reward_spec(a.env_config) for lab, a in zip(labels, trials)}
    ev = ExactReturns(env, specs, params.n_seq, params.seed)
    metrics |= {f"return/{lab}/optimum": v for lab, v in ev.optimum().items()}
    values = [ev.values[lab] for lab in dict.fromkeys(labels)]
    sim = rt.reward_similarity(values)
    uniq = list(dict.fromkeys(labels))
    for i, a in enumerate(uniq):
        for j, b in enumerate(uniq):
            if i < j:
                metrics[f"similarity/{a}/{b}"] = float(sim[i, j])
    base = ev.returns(m_a)
    metrics |= {f"return/{lab}/M_A": float(base[lab].mean()) for lab in uniq}

    # superposition per seed (rewards only)
    rewards = [lab for lab in uniq if lab != null]
    sup_rows: dict[str, list] = {"task": [], "seed": [], "model": [], "return": []}
    gains: dict[str, dict[str, list]] = {r: {"tau": [], "residual": [], "mean": []} for r in rewards}
    cos_mu_null, cos_mu_tau, cos_orth = [], [], []
    for s in sorted(set(seeds)):
        rows = [i for i, (lab, ss) in enumerate(zip(labels, seeds)) if ss == s and lab in rewards]
        if len(rows) < 2:
            continue
        by = {labels[i]: taus[i] for i in rows}
        mu, resid = tv.superpose(by)
        nulls = [i for i, (lab, ss) in enumerate(zip(labels, seeds)) if ss == s and lab == null]
        # flattening is linear, so mu's flat vector is the mean of the rows; one cosine matrix per seed
        cos = tv.cosine_matrix(np.vstack([X[rows].mean(0), X[rows], X[nulls]]))[0, 1:]
        cos_mu_tau += list(cos[: len(rows)])
        cos_mu_null += list(cos[len(rows) :])
        # were the updates mutually orthogonal, cos(mu, tau_r) would be |tau_r| / sqrt(sum |tau_i|^2)
        sq = (X[rows] ** 2).sum(1)
        cos_orth += list(np.sqrt(sq / sq.sum()))
        r_mean = ev.returns(with_params(m_a, tv.apply(theta_a, mu)))
        for r, t in by.items():
            got = {
                "tau": ev.returns(with_params(m_a, tv.apply(theta_a, t)))[r],
                "residual": ev.returns(with_params(m_a, tv.apply(theta_a, resid[r])))[r],
                "mean": r_mean[r],
            }
            for model, v in got.items():
                gains[r][model].append(float(v.mean() - base[r].mean()))
                sup_rows["task"].append(r)
                sup_rows["seed"].append(s)
                sup_rows["model"].append(f"M_A+{model}")
                sup_rows["return"].append(float(v.mean()))
    for r, g in gains.items():
        for model, vals in g.items():
            if vals:
                m, lo, hi = t_ci(vals)
                metrics |= {
                    f"superpose/{r}/gain_{model}": m,
                    f"superpose/{r}/gain_{model}/ci_low": lo,
                    f"superpose/{r}/gain_{model}/ci_high": hi,
                }
    if cos_mu_tau:
        metrics["superpose/cos_mean_tau"] = float(np.mean(cos_mu_tau))
        metrics["superpose/cos_mean_tau_if_orthogonal"] = float(np.mean(cos_orth))
    if cos_mu_null:
        metrics["superpose/cos_mean_null"] = float(np.mean(cos_mu_null))
    tables["superposition"] = pa.table(sup_rows)
    figures["superposition"] = _gain_figure(gains)

    # negation: each trial's own analysis, summarised over seeds
    by_seed = {(lab, s): a.analysis_metrics("negation") or {} for lab, s, a in zip(labels, seeds, trials)}
    neg: dict[str, list[float]] = {}
    for (lab, _), m in by_seed.items():
        for key, v in m.items():
            if "/lean_" in key and not key.endswith(("ci_low", "ci_high")):
                neg.setdefault(f"negation/{lab}/{key}", []).append(v)
    for key, vals in neg.items():
        metrics |= _ci(key, vals)
    # beyond the null: the task's lean on its own R_B minus the lean on that R_B of the null task's
    # negated model (same seed, same lambda): what negating an update *of no objective* does to R_B
    if null is not None:
        for lab in rewards:
            lams = sorted(
                {k.split("/")[0] for (lb, _), m in by_seed.items() if lb == lab for k in m if k.startswith("lam")}
            )
            for lam in lams:
                diffs = [
                    by_seed[(lab, s)][f"{lam}/lean_B"] - by_seed[(null, s)][f"{lam}/lean_{lab}"]
                    for s in sorted(set(seeds))
                    if f"{lam}/lean_B" in by_seed.get((lab, s), {})
                    and f"{lam}/lean_{lab}" in by_seed.get((null, s), {})
                ]
                if diffs:
                    metrics |= _ci(f"negation/{lab}/{lam}/beyond_null", diffs)
    if neg:
        figures["negation_lean"] = _negation_figure(metrics, uniq)
    return AnalysisResult(metrics=metrics, tables=tables, figures=figures)


def _heatmap(C, labels, seeds):
    from rayexp.figures import plt  # the Agg backend, set once there

    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r")
    ticks = [f"{lab}/{s}" for lab, s in zip(labels, seeds)]
    ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=6)
    ax.set_yticks(range(len(ticks)), ticks, fontsize=6)
    fig.colorbar(im, ax=ax, label="cos(tau_i, tau_j)")
    ax.set_title("task vectors theta_B - theta_A", fontsize=9)
    fig.tight_layout()
    return fig


def _gain_figure(gains):
    from rayexp.figures import plt  # the Agg backend, set once there

    fig, ax = plt.subplots(figsize=(6, 3))
    kinds = ("tau", "residual", "mean")
    for k, kind in enumerate(kinds):
        for i, (r, g) in enumerate(gains.items()):
            vals = g[kind]
            ax.plot([i + 0.25 * (k - 1)] * len(vals), vals, "o", color=f"C{k}", label=kind if i == 0 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(gains)), list(gains), fontsize=8)
    ax.set_ylabel("return on own R_B minus M_A's")
    ax.legend(fontsize=7, title="M_A + ...")
    fig.tight_layout()
    return fig


def _negation_figure(metrics, tasks):
    from rayexp.figures import plt  # the Agg backend, set once there

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    panels = (("lean_B", "R_B return: negated+retrained - control"), ("beyond_null", "... minus the null task's lean"))
    for ax, (kind, title) in zip(axes, panels):
        for i, task in enumerate(tasks):
            pre = f"negation/{task}/lam"
            lams = sorted(
                float(k[len(pre) :].split("/")[0]) for k in metrics if k.startswith(pre) and k.endswith(f"/{kind}/mean")
            )
            if not lams:
                continue
            mean = [metrics[f"{pre}{x:g}/{kind}/mean"] for x in lams]
            lo = [m - metrics[f"{pre}{x:g}/{kind}/ci_low"] for m, x in zip(mean, lams)]
            hi = [metrics[f"{pre}{x:g}/{kind}/ci_high"] - m for m, x in zip(mean, lams)]
            ax.errorbar(lams, mean, yerr=[lo, hi], fmt="o-", label=task, color=f"C{i}", capsize=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("lambda (theta_A - lambda tau)")
        ax.set_title(title, fontsize=8)
    axes[0].set_ylabel("change of exact R_B return")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
