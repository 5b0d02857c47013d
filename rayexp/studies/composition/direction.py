"""The direction of what a map of p_pre leaves, on the battery's planted policies and on stored trials:
a measure tried against soft composition and not used, and the composed-share bound it gives.

Why it was tried. The resolution bar, the ``u_max`` cap and the mass bounds count probability mass, and
a soft composition spends little of it: the Bayes joint-target policy's own probabilities a quarter of
the time over sharpened p_pre leave a map 0.165 on the Mess3 interleave, under the sharp quarter's bar
(0.242). On a joint-target task the reward test caught it; on a next-token task (the negative controls)
composing earns nothing and no test applies (README, "What it can miss"). Since 1fa7798 the bar plants
that soft quarter itself, after the battery's redraws let it through (:mod:`.resolution`). The maths is
:mod:`.projection`'s.

As a measure, the projection of a policy's residual on the joint target's is exactly the composed share
where the map resolves the rest, but it fails its must-say-no cases. On the battery (the command below,
seeds 0-2, 600 sequences; min to max over seeds), with an exact model every planted reweighting
projects 0.000 (within 0.002) and the soft quarter 0.250, but the planted drift (sharpened p_pre plus a
random function of the last two tokens, which the joint target reads too) already projects -0.18 to
+0.09. With a model that errs by 0.03 (its error carries every factor's belief, as a real model's can)
sharpened p_pre and its argmax project -0.21 to +0.07 and the drift null -0.30 to +0.37, against 0.11 to
0.30 for the soft quarter. So the verdict does not use it.

As a bound (:func:`.projection.share_max`: the largest share a mixture of J and a rest no larger than a
premise's can have and give the policy) it is exact, holds for J the Bayes probabilities, and the
command checks it on every planted mixture with the planted sharp reweighting's size as the premise
(exit code 1 if it falls below the share where the mixture's rest meets the premise). On stored trials
it is stated for J the Bayes probabilities and the Bayes argmax, with the rest no larger than the
planted sharp reweighting's or than the pair's shuffled null's (paired by seed on one pretrained model),
and counts the seeds whose policy refutes the premise. Tables: docs/results/composition.md.

How to run: ``python -m rayexp.studies.composition.direction [--model-error E] [--seeds 3] [--n-seq 600]
[--draw D]``: one row per (interleave, planted policy of :mod:`.battery_cases`, and the drift null).
``--runs STORAGE:SWEEP[+SWEEP...]`` scores stored PPO trials instead (:func:`trial_projection`, on the
composition analysis' own sequences and split).
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

from rayexp.artifacts import find_trials
from rayexp.specs import process_label
from rayexp.stats import t_ci
from rayexp.studies.composition import bounds, classes, resolution
from rayexp.studies.composition.battery import MAP_SEED, NULLS
from rayexp.studies.composition.battery_cases import CASES, INTERLEAVE, sharpen
from rayexp.studies.composition.battery_streams import Sample, sample
from rayexp.studies.composition.composition_analysis import model_forward, model_key, sample_of
from rayexp.studies.composition.projection import (
    mass,
    norm,
    projection,
    residual,
    rest_mass_min,
    share_max,
    share_max_of,
)
from rayexp.studies.composition.stream_setup import make_setup, task_of
from rayexp.tables import format_table

DRIFT_NULL = "drift null"
POSITIVE = "positive_control"  # the task whose post-RL policy is the learned composition of its pair


def sample_residual(s: Sample, pi: np.ndarray) -> np.ndarray:
    return residual(s.p_pre, pi, s.train, s.test, s.resolution)


@functools.cache
def _fit(artifacts):
    """A stored trial's setup, p_pre and the resolution its composition analysis fits at, on that analysis's
    own sequences and split; once per trial (the trial's table and the learned premise both read it)."""
    hmm = artifacts.stream()
    reward, length = task_of(artifacts.env_config, hmm)
    s = make_setup(hmm, reward, length, *sample_of(artifacts.config))
    p_pre = classes.softmax(model_forward(artifacts.model_before())(s.tokens, False)[0])
    return s, list(reward.action_tokens), p_pre, classes.resolution_of(p_pre, s.p_next)


@functools.cache
def _post_residual(artifacts, on=None) -> np.ndarray:
    """What the map of p_pre leaves of ``artifacts``' post-RL policy on ``on``'s fit (its own by default),
    its actions placed on the tokens they claim among ``on``'s actions (a fixed placement: the map, a mean
    of training policies, fits each action apart, so the placed policy's residual is the placed residual);
    once per pair of trials (a trial's own is read by its table and by its learned premise)."""
    s, act, p_pre, res = _fit(artifacts if on is None else on)
    tokens = act if on is None else list(task_of(artifacts.env_config, artifacts.stream())[0].action_tokens)
    pi = np.zeros((*s.tokens.shape, len(act)))
    pi[..., [act.index(x) for x in tokens]] = classes.softmax(
        model_forward(artifacts.model_after())(s.tokens, False)[0][..., tokens]
    )
    return residual(p_pre, pi, s.train, s.test, res)


def trial_projection(artifacts) -> dict[str, float]:
    """One stored trial, on the sequences and split its composition analysis drew, at the resolution it
    fits: the projections on the joint target's Bayes probabilities (``pre``, ``post``, and ``sharp``, the
    planted sharp reweighting: p_pre sharpened at :data:`.resolution.BETA` on the trial's actions), the
    post-RL policy's on the Bayes argmax (``post_argmax``), the residual norms the bound takes
    (``norm_post``, ``norm_sharp``, ``norm_soft``, ``norm_argmax``), and for the mass bound's premise the
    least mass per step any share of the Bayes argmax leaves the rest (``mass_rest_min``) beside the planted
    sharp reweighting's (``mass_sharp``) and the policy's own (``mass_post``: a null's is its pair's
    drifting rest); NaN where the stream has no joint target."""
    keys = ("pre", "post", "sharp", "post_argmax", "norm_post", "norm_sharp", "norm_soft", "norm_argmax")
    keys += ("mass_rest_min", "mass_sharp", "mass_post")
    s, act, p_pre, res = _fit(artifacts)
    if s.P_joint is None:
        return dict.fromkeys(keys, float("nan"))
    # J (the Bayes probabilities and argmax) and the planted sharp reweighting, fitted as the analysis fits them
    planted = resolution.planted_values(p_pre, p_pre[..., act], s.P_joint, s.train, s.test, res)
    r_soft, r_argmax, r_sharp = planted["r_soft"], planted["r_composed"], planted["r_sharp"]
    r_post = _post_residual(artifacts)
    r_pre = residual(p_pre, p_pre[..., act] / p_pre[..., act].sum(-1, keepdims=True), s.train, s.test, res)
    out = {k: float(projection(r, r_soft).mean()) for k, r in (("pre", r_pre), ("post", r_post), ("sharp", r_sharp))}
    out["post_argmax"] = float(projection(r_post, r_argmax).mean())
    out |= {
        f"norm_{k}": norm(r) for k, r in (("post", r_post), ("sharp", r_sharp), ("soft", r_soft), ("argmax", r_argmax))
    }
    # the mass bound's premise (a rest the map leaves no more mass of than the planted sharp reweighting),
    # checked the same way: the least mass per step any share of the Bayes argmax leaves the rest
    out["mass_rest_min"], out["mass_sharp"] = rest_mass_min(r_post, r_argmax), mass(r_sharp)
    out["mass_post"] = mass(r_post)
    return out


def learned_rest_min(artifacts, learned) -> float:
    """The least mass per step any share of ``learned``'s post-RL policy (the pair's learned composition,
    placed on the tokens its actions claim among ``artifacts``' actions) leaves the rest of ``artifacts``'
    post-RL policy, on ``artifacts``' fit: the learned bound's premise recomputed from the models, the learned
    policy placed before the map is fitted to it (the verdict places the residual the trial kept instead,
    :func:`.learned_bound.rest_min`: by the map's linearity the same, which tests/test_composition_analysis.py
    checks through these two routes; for trials stored without residuals only this one exists). NaN unless
    both read one pretrained model on one sample and ``learned``'s action tokens are among ``artifacts``'."""
    if model_key(learned) != model_key(artifacts) or sample_of(learned.config) != sample_of(artifacts.config):
        return float("nan")
    other = task_of(learned.env_config, learned.stream())[0].action_tokens
    if not set(other) <= set(_fit(artifacts)[1]):
        return float("nan")
    return rest_mass_min(_post_residual(artifacts), _post_residual(learned, on=artifacts))


def _bounds(v: dict[str, float], norm_null: float) -> dict[str, float]:
    """One trial's composed-share bounds (:func:`.projection.share_max`) for J the Bayes probabilities
    (soft) and the Bayes argmax, for a rest no larger than the planted sharp reweighting's or the null's."""
    out = {}
    for j, proj in (("soft", v["post"]), ("argmax", v["post_argmax"])):
        jj = v[f"norm_{j}"] ** 2
        stats = (v["norm_post"] ** 2, proj * jj, jj)
        out[f"{j}_sharp"] = share_max_of(*stats, v["norm_sharp"])
        out[f"{j}_null"] = share_max_of(*stats, norm_null)
    return out


def trial_rows(storage: str, sweeps: list[str]) -> list[dict]:
    """Per (process, task) of stored trials: the post-RL projection over seeds (Student-t 95 %), the planted
    sharp reweighting's on the same models, and the bounds, each seed's rest no larger than that seed's
    planted sharp reweighting's or its pair's shuffled null's (paired by seed on one pretrained model);
    and on how many seeds the policy refutes the mass bound's premise (a rest the map leaves no more mass
    of than the planted sharp reweighting: :func:`.bounds.refuted` on the exact least rest), against the
    Bayes argmax and against the pair's learned composition (:func:`learned_rest_min`)."""
    trials = [t for sweep in sweeps for t in find_trials(storage, sweep)]
    vals = {id(t): trial_projection(t) for t in trials}

    def pair(t) -> tuple:  # a trial's pair partners: same process and seed, on one pretrained model
        return process_label(t.env_config["process"]), t.config["seed"], model_key(t)

    nulls = {pair(t): vals[id(t)] for t in trials if t.config["task"].get("shuffle_reward")}
    # the pair's learned composition: its positive control's post-RL policy
    positive = {pair(t): t for t in trials if t.config["task"]["name"] == POSITIVE}
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for t in trials:
        null, own_null = nulls.get(pair(t), {}), bool(t.config["task"].get("shuffle_reward"))
        v = vals[id(t)] | {"mass_null": null.get("mass_post", float("nan")), "learned_rest_min": float("nan")}
        norm_null = float("nan") if own_null else null.get("norm_post", float("nan"))  # not against itself
        learned = positive.get(pair(t))
        if learned is not None and learned is not t and not own_null:
            v["learned_rest_min"] = learned_rest_min(t, learned)
        groups.setdefault((pair(t)[0], t.config["task"]["name"]), []).append(v | _bounds(v, norm_null))

    def hi(vs: list[dict], key: str) -> str:
        """mean (t-interval high end, capped at 1) over the seeds whose premise the policy allows; the
        seeds where no mixture with a rest that small gives the policy are counted as refuted."""
        x = np.array([v[key] for v in vs])
        refuted = int(np.isnan(x).sum()) if not all(np.isnan(v["norm_post"]) for v in vs) else 0
        mean, _, high = t_ci(x)
        text = f"{mean:.2f} ({float(np.minimum(1.0, high)):.2f})" if np.isfinite(mean) else "-"  # NaN kept
        return text + (f"; refuted {refuted}/{len(x)}" if refuted else "")

    _fit.cache_clear()  # every trial's fit is read: let the arrays go
    _post_residual.cache_clear()
    rows = []
    for (process, task), vs in sorted(groups.items()):
        mean, lo, high = t_ci([v["post"] for v in vs])
        sharp = [v["sharp"] for v in vs]
        rows.append(
            {
                "process": process,
                "task": task,
                "seeds": len(vs),
                "post": f"{mean:.3f} [{lo:.3f}, {high:.3f}]",
                "pre": f"{np.mean([v['pre'] for v in vs]):.3f}",
                "planted sharp": f"{np.mean(sharp):.3f} ({np.min(sharp):.3f} to {np.max(sharp):.3f})",
                "soft J <= (sharp rest)": hi(vs, "soft_sharp"),
                "soft J <= (null rest)": hi(vs, "soft_null"),
                "argmax J <= (sharp rest)": hi(vs, "argmax_sharp"),
                "argmax J <= (null rest)": hi(vs, "argmax_null"),
                "mass premise (sharp rest) refuted": "{}/{}".format(
                    *bounds.refuted([v["mass_rest_min"] for v in vs], [v["mass_sharp"] for v in vs])
                ),
                "learned J premise refuted (sharp; null rest)": "{}/{}; {}/{}".format(
                    *bounds.refuted([v["learned_rest_min"] for v in vs], [v["mass_sharp"] for v in vs]),
                    *bounds.refuted([v["learned_rest_min"] for v in vs], [v["mass_null"] for v in vs]),
                ),
            }
        )
    return rows


def must_say_no(name: str) -> bool:
    """The planted policies with no composed part: the reweightings, the drifts and the drift null."""
    case = next((c for c in CASES if c.name == name), None)
    return name == DRIFT_NULL or name.startswith("drift") or (case is not None and case.expect == ("reweighting",))


def run(seeds: int = 3, n_seq: int = 600, model_error: float = 0.0, draw: int = 0) -> list[dict]:
    """One row per (interleave, planted policy): its projection on the Bayes probabilities' residual over
    ``seeds``, and for a planted mixture the bound on its share with its own composed policy as J and the
    planted sharp reweighting's residual as the rest's size, with ``broken``: the seeds where the bound
    fell below the share while the mixture's rest was no larger than that (the premise held)."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for stream in INTERLEAVE:
        for seed in range(seeds):
            s = sample(stream, n_seq, seed, model_error, draw)
            r_soft = sample_residual(s, s.P)
            r_argmax = sample_residual(s, resolution.onehot_argmax(s.P))  # J of every mixture without its own
            norm_sharp = norm(sample_residual(s, sharpen(s, resolution.BETA)))
            cases = {c.name: c for c in CASES if stream in c.streams}
            policies = {name: c.policy(s, np.random.default_rng(MAP_SEED + draw)) for name, c in cases.items()}
            policies[DRIFT_NULL] = NULLS["drift"](s, stream, model_error)
            for name, pi in policies.items():
                r_pi = sample_residual(s, pi)
                v = values.setdefault((stream, name), {"projection": [], "bound": [], "broken": []})
                v["projection"].append(float(projection(r_pi, r_soft).mean()))
                case = cases.get(name)
                if case is None or case.share <= 0:
                    continue
                r_j = r_argmax
                if case.composed is not None:
                    r_j = sample_residual(s, case.composed(s, np.random.default_rng(MAP_SEED + draw)))
                bound = share_max(r_pi, r_j, norm_sharp)
                v["bound"].append(bound)
                if not bound >= case.share - 1e-9:  # NaN too: the premise refuted where it held
                    rest = case.rest(s, np.random.default_rng(MAP_SEED + draw)) if case.rest else None
                    premise = rest is None or norm(sample_residual(s, rest)) <= norm_sharp
                    v["broken"].append(float(premise))
    rows = []
    for (stream, name), v in values.items():
        case = next((c for c in CASES if c.name == name), None)
        bound = f"{np.mean(v['bound']):.2f} ({case.share:g})" if v["bound"] else ""
        rows.append(
            {
                "stream": stream,
                "planted": name,
                "must say no": "yes" if must_say_no(name) else "",
                "projection": float(np.mean(v["projection"])),
                "min": float(np.min(v["projection"])),
                "max": float(np.max(v["projection"])),
                "share <= (sharp rest)": bound,
                "broken": int(sum(v["broken"])),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds per case (default 3)")
    parser.add_argument("--n-seq", type=int, default=600, help="sequences per seed (default 600)")
    parser.add_argument("--model-error", type=float, default=0.0, help="the pretrained model's mean L1 error")
    parser.add_argument("--draw", type=int, default=0, help="a replicate draw of the battery's random choices")
    parser.add_argument(
        "--runs", default=None, help="STORAGE:SWEEP[+SWEEP...]: score stored PPO trials instead of planted policies"
    )
    args = parser.parse_args(argv)
    if args.runs is not None:
        storage, _, sweeps = args.runs.rpartition(":")
        if not storage or not sweeps:
            parser.error(f"--runs wants STORAGE:SWEEP[+SWEEP...], got {args.runs!r}")
        print(format_table(trial_rows(storage, sweeps.split("+"))))
        return 0
    if args.seeds < 1 or args.n_seq < 20 or args.draw < 0 or not 0 <= args.model_error < 0.5:
        parser.error("need --seeds >= 1, --n-seq >= 20, --draw >= 0 and 0 <= --model-error < 0.5")
    rows = run(args.seeds, args.n_seq, args.model_error, args.draw)
    shown = [{k: v for k, v in r.items() if k != "broken"} for r in rows]
    print(format_table([r | {k: f"{r[k]:.3f}" for k in ("projection", "min", "max")} for r in shown]))
    no = [r for r in rows if r["must say no"]]
    soft = [r for r in rows if r["planted"] == "soft beta=1 alpha=0.25"]
    reach = max(max(abs(r["min"]), abs(r["max"])) for r in no)
    print(
        f"planted policies that must say no reach |projection| {reach:.3f}; the soft quarter (beta 1, alpha 0.25) "
        f"projects {min(r['min'] for r in soft):.3f}-{max(r['max'] for r in soft):.3f}"
    )
    broken = sum(r["broken"] for r in rows)
    mixtures = sum(1 for r in rows if r["share <= (sharp rest)"])
    print(
        f"projection bound below the planted share: {broken} seed(s) where its premise held "
        f"({mixtures} planted mixtures x {args.seeds} seeds)"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
