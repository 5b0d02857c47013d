"""The composition adapters: per-trial signals from models (oracle numpy policies and tiny
transformers) and the across-trial verdict, on stand-ins for a trial's stored artifacts."""

import copy
import subprocess
import sys

import numpy as np
import pytest
from streams import INTERLEAVE

from envs import build_process
from envs.rewards import make_reward
from rayexp.exact import targets
from rayexp.studies import composition as composition_study
from rayexp.studies.composition import interaction as ia
from rayexp.studies.composition import projection
from rayexp.studies.composition.composition_analysis import CompositionParams, Scorer, composition
from rayexp.studies.composition.stream_setup import make_setup, task_of
from rayexp.studies.composition.verdict import REWEIGHTING, decide
from rayexp.studies.composition.verdict_analysis import SIGNALS, VerdictParams, verdict


def oracle(hmm, logits_of_beliefs):
    """A Forward from exact beliefs: the policy a model would have if it computed this function exactly;
    its features are the factors' beliefs side by side (the factored representation)."""

    def run(tokens, with_features):
        b = hmm.beliefs(tokens)
        feats = np.concatenate(hmm.factor_beliefs(b), -1)
        return logits_of_beliefs(b), ({"final": feats, "concat": feats} if with_features else {})

    return run


def test_scorer_on_oracle_policies():
    hmm = build_process(INTERLEAVE)
    joint = make_reward("joint_target", hmm, {"m": 3})
    s = make_setup(hmm, joint, 10, 1500, seed=0)
    log_p = lambda b: np.log(np.maximum(hmm.next_token_probs(b), 1e-6))  # the oracle pretrained model

    def composer(b):  # the Bayes-optimal joint policy, sharpened: acts on argmax P((a + b) mod 3)
        out = np.full(b.shape[:-1] + (hmm.vocab_size,), -100.0)
        out[..., :3] = 50 * np.log(targets.target_probs(hmm, joint, b))
        return out

    sharpen = lambda b: 2 * log_p(b)  # a fixed function of the pretrained distribution
    scorer = Scorer(s, oracle(hmm, log_p), CompositionParams())
    ceil = scorer.ceiling_metrics()
    assert ceil["ceiling/single_factor0"] == ceil["ceiling/single_factor1"] == pytest.approx(1 / 3, abs=1e-12)
    assert ceil["ceiling/optimum"] == pytest.approx(0.498, abs=0.004)

    m_pre, _ = scorer.score("pre", oracle(hmm, log_p))
    m_opt, v_opt = scorer.score("post", oracle(hmm, composer))
    m_rw, _ = scorer.score("rw", oracle(hmm, sharpen))
    assert m_opt["margin_greedy/post"] == pytest.approx(1.0, abs=1e-12)
    assert m_opt["margin/post"] == pytest.approx(1.0, abs=1e-3)
    assert m_opt["interaction/post"] == pytest.approx(1.0, abs=0.06)
    assert m_opt["reweighting_r2/post"] < 0.05
    assert m_opt["composed/post"] == pytest.approx(1.0, abs=0.08)
    assert abs(m_pre["margin_greedy/pre"]) < 0.1  # the pretrained policy reads one factor at a time
    assert m_pre["reweighting_r2/pre"] > 0.99
    # the reweighted policy: R^2 ~ 1, and the interaction of that function (additive here: 0)
    assert m_rw["reweighting_r2/rw"] > 0.99
    f = [ia.centred(sharpen(hmm.beliefs(c))[..., :3]) for c in [s.tokens, *s.cells]]
    assert m_rw["interaction/rw"] == pytest.approx(ia.interaction_share(*f), abs=1e-9)
    assert m_rw["interaction/rw"] < 0.01 and m_rw["composed/rw"] < 0.01
    assert np.isfinite(v_opt["margin"]).all() and v_opt["margin"].mean() == pytest.approx(m_opt["margin/post"])
    # the policy classes: the composer is neither a map of p_pre nor a readout of factored beliefs and
    # earns its reward by both factors at one step; the sharpened policy is a map of p_pre
    assert m_opt["classes/reweighting/unexplained/post"] > 0.6 and m_opt["classes/elicitation/unexplained/post"] > 0.6
    assert m_opt["margin_phase_greedy/post"] == pytest.approx(1.0, abs=1e-12)
    assert m_rw["classes/reweighting/unexplained/rw"] < 0.05
    assert m_rw["classes/reweighting/fit_reward/rw"] == pytest.approx(m_rw["reward/rw/greedy"], abs=0.02)
    assert ceil["ceiling/single_per_phase"] == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("task_reward", ["joint_target", "next_token"])
def test_the_resolution_bar_asks_every_task_of_a_stream_about_its_joint_target(task_reward):
    # a next-token negative control is asked the same question as its pair's positive control: the
    # planted composed policy is the stream's joint target (first found logging the task's own target,
    # a map of p_pre on next_token, so the bar never applied to the negative controls)
    hmm = build_process(INTERLEAVE)
    reward = make_reward(task_reward, hmm, {"m": 3} if task_reward == "joint_target" else {})
    s = make_setup(hmm, reward, 10, 1000, seed=0)
    log_p = lambda b: np.log(np.maximum(hmm.next_token_probs(b), 1e-6))  # the oracle pretrained model
    scorer = Scorer(s, oracle(hmm, log_p), CompositionParams())
    ceil = scorer.ceiling_metrics()
    assert ceil["classes/planted/composed/unexplained"] > 0.7  # both factors at one step: no map of p_pre
    assert ceil["classes/planted/sharp/unexplained"] < 0.02 and ceil["classes/planted/quarter/unexplained"] > 0.2
    m, _ = scorer.score("rw", oracle(hmm, lambda b: 3 * log_p(b)))  # a reweighting: well below the bar
    # (the bar goes halfway to the soft quarter, which leaves less than the sharp one: 0.05-0.08 below it here)
    assert m["classes/reweighting/below_bar/rw"] > 0.03
    assert ceil["classes/planted/soft_quarter/unexplained"] < ceil["classes/planted/quarter/unexplained"]
    # and it holds the joint-target policy hardly ever: the exact map leaves next to nothing of it
    assert ceil["classes/planted/composed/unexplained_tv"] > 0.3 and m["classes/composed_share_max/rw"] < 0.05
    if task_reward == "next_token":  # the joint target sits on the first m of the task's 6 actions
        assert s.P_joint.shape == s.P.shape and np.allclose(s.P_joint[..., 3:], 0) and np.allclose(s.P_joint.sum(-1), 1)
    else:
        assert s.P_joint is s.P


def test_a_stream_without_two_factors_has_no_bar_and_the_verdict_says_not_tested():
    hmm = build_process({"name": "mess3", "x": 0.05, "a": 0.85})
    s = make_setup(hmm, make_reward("next_token", hmm), 8, 200, seed=0)

    def model(scale):  # the oracle of one factor: its features are its belief
        def run(tokens, with_features):
            b = hmm.beliefs(tokens)
            logits = scale * np.log(np.maximum(hmm.next_token_probs(b), 1e-6))
            return logits, ({"final": b, "concat": b} if with_features else {})

        return run

    scorer = Scorer(s, model(1.0), CompositionParams())
    ceil = scorer.ceiling_metrics()
    assert s.P_joint is None and ceil.pop("classes/planted/defined") == 0.0
    assert not any("planted" in k or "bar" in k for k in ceil)
    m, _ = scorer.score("post", model(3.0))
    assert not any("bar" in k for k in m)
    # the verdict tells this stream's missing bar from a trial logged before the bar
    n = 3
    v = decide([0.1] * n, [0.5] * n, [np.nan] * n, [0.6] * n, [0.6] * n, planted_defined=[0.0] * n)
    assert v.code == REWEIGHTING and "no joint target" in v.reason and "not tested" in v.reason


def _tiny(seed=0):
    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
    return Transformer(cfg, seed=seed).eval()


class FakeTrial:
    """What the composition analysis reads from rayexp.artifacts.TrialArtifacts, held in memory."""

    def __init__(
        self,
        reward="joint_target",
        reward_params=None,
        stored_metrics=None,
        seed=0,
        task="positive_control",
        null=False,
        arrays=None,
    ):
        import torch

        self.env_config = {
            "process": INTERLEAVE,
            "context": 8,
            "episode_len": 8,
            "reward": reward,
            "reward_params": reward_params if reward_params is not None else {"m": 3},
            "action_tokens": None,
            **({"shuffle_reward": True} if null else {}),
        }
        self.config = {"process": INTERLEAVE, "task": {"name": task}, "seed": seed}
        self.key = f"trial{seed}"
        self._pre = _tiny()
        self._policies = {}
        for it, scale in ((1, 0.5), (2, 1.0)):  # RL moves only the unembedding
            m = copy.deepcopy(self._pre)
            with torch.no_grad():
                m.unembed_proj.weight.add_(scale * torch.ones_like(m.unembed_proj.weight).cumsum(0) / 6)
            self._policies[it] = m
        self._metrics = stored_metrics or {}
        self._arrays = arrays  # what its composition analysis kept (None: stored before it kept any)

    def stream(self):
        return build_process(self.env_config["process"])

    def model_before(self):
        return self._pre

    def model_after(self):
        return self._policies[2]

    def random_init(self):
        return _tiny(seed=1)

    def ppo_iterations(self):
        return sorted(self._policies)

    def policy(self, it):
        return self._pre if it == 0 else self._policies[it]

    def metrics(self):
        return {f"analysis/composition/{k}": v for k, v in self._metrics.items()}

    def analysis_metrics(self, name):
        return None

    def analysis_arrays(self, name):
        return self._arrays


def test_composition_analysis_end_to_end_on_tiny_models():
    result = composition(FakeTrial(), CompositionParams(n_seq=60, lookup_k=[1, 2]))
    m = result.metrics
    for key in (
        "reward/pre/expected", "reward/post/greedy", "reward/perturbed/expected", "ceiling/optimum",
        "ceiling/single_factor0", "ceiling/single_factor1", "ceiling/lookup_k1", "ceiling/lookup_k2",
        "ceiling/uniform", "margin/pre", "margin/post", "margin_greedy/post", "interaction/pre",
        "interaction/post", "interaction/perturbed", "reweighting_r2/post", "reweighting_r2/perturbed",
        "composed/pre", "composed/post", "composed/perturbed", "delta/composed",
        "readout/final/pretrained", "readout/concat/random_init", "update_norm", "sparsity/frac_changed",
        "delta/margin", "delta/margin/ci_low", "delta/interaction/ci_high",
    ):  # fmt: skip
        assert np.isfinite(m[key]), key
    # random init is a control of the readouts only (of features, and of the elicitation class)
    assert not any("random_init" in k for k in m if not k.startswith(("readout/", "classes/elicitation_random_init/")))
    assert 0 <= m["classes/elicitation_random_init/unexplained/post"] and np.isfinite(m["classes/resolution"])
    # the resolution bar: planted policies on this model, halfway between the sharp and the quarter-composed
    u = {k: m[f"classes/planted/{k}/unexplained"] for k in ("sharp", "quarter", "composed", "soft_quarter")}
    assert all(np.isfinite(x) for x in u.values()), u
    assert m["classes/planted/defined"] == 1.0
    # (per sequence, halfway to the lesser of the two quarter compositions: at most either half over the means)
    assert m["classes/reweighting/bar"] <= min(u["sharp"] + u["quarter"], u["sharp"] + u["soft_quarter"]) / 2 + 1e-12
    bar_gap = m["classes/reweighting/bar"] - m["classes/reweighting/unexplained/post"]
    assert m["classes/reweighting/below_bar/post"] == pytest.approx(bar_gap)
    assert m["classes/reweighting/below_bar/post/ci_low"] <= bar_gap <= m["classes/reweighting/below_bar/post/ci_high"]
    most = m["classes/composed_share_max/post"]
    assert 0 <= m["classes/composed_share_max/post/ci_low"] <= most <= m["classes/composed_share_max/post/ci_high"] <= 1
    assert all(np.isfinite(m[f"classes/planted/{k}/unexplained_tv"]) for k in ("sharp", "quarter", "composed"))
    # the update is confined to the unembedding: frozen-feature readouts of pre and post are identical
    assert m["readout/final/pretrained"] == m["readout/final/post"]
    assert m["readout/concat/pretrained"] == m["readout/concat/post"]
    assert m["sparsity/frac_changed/block0"] == m["sparsity/frac_changed/block1"] == 0.0
    assert m["sparsity/norm_share/unembed"] == 1.0
    assert m["delta/interaction"] == pytest.approx(m["interaction/post"] - m["interaction/pre"], abs=1e-9)
    curve = result.tables["composition_curve"].to_pydict()
    assert curve["iteration"] == [0, 1, 2]
    assert curve["expected_reward"][0] == pytest.approx(m["reward/pre/expected"])
    assert curve["expected_reward"][2] == pytest.approx(m["reward/post/expected"])
    assert curve["interaction"][2] == pytest.approx(m["interaction/post"])
    assert "composition_curve" in result.figures
    no_curve = composition(FakeTrial(), CompositionParams(n_seq=60, lookup_k=[1], checkpoints=False))
    assert no_curve.tables["composition_curve"].num_rows == 1


def test_composition_analysis_refuses_unsupported_rewards():
    with pytest.raises(targets.UnsupportedReward, match="reward_punish"):
        composition(FakeTrial("reward_punish", {"rewarded": [0]}), CompositionParams(n_seq=20))


def test_verdict_analysis_pairs_each_task_with_its_null_by_seed():
    keys = ("classes/reweighting/unexplained/post", "classes/elicitation/unexplained/post", "margin_phase_greedy/post")

    def trials(u_rw, u_el, margin, task, null=False):
        return [
            FakeTrial(stored_metrics=dict(zip(keys, vals)), seed=s, task=task, null=null)
            for s, vals in enumerate(zip(u_rw, u_el, margin))
        ]

    null = trials([0.20, 0.25, 0.18, 0.22, 0.21], [0.15, 0.2, 0.14, 0.18, 0.16], [0.0] * 5, "null", null=True)
    pos = trials([0.8, 0.78, 0.83, 0.81, 0.77], [0.7, 0.72, 0.69, 0.75, 0.7], [0.9, 0.95, 0.92, 0.88, 0.91], "pos")
    neg = trials([0.05, 0.04, 0.06, 0.05, 0.03], [0.1, 0.1, 0.1, 0.1, 0.1], [np.nan] * 5, "neg")
    # beyond the null for a map of p_pre, but no more than the null for a readout of the features
    elicited = trials([0.41, 0.46, 0.4, 0.42, 0.4], [0.15, 0.2, 0.13, 0.18, 0.15], [0.0] * 5, "elicited")
    result = verdict(null + pos + neg + elicited, VerdictParams())
    row = result.tables["verdict"].to_pydict()
    got = dict(zip(row["task"], row["verdict"]))
    # the null itself, on absolute thresholds: its drift leaves 0.21 [0.18, 0.24] < 0.25 unexplained
    assert got == {"pos": "composition", "neg": "reweighting", "elicited": "elicitation", "null": "reweighting"}
    by_task = dict(zip(row["task"], row["reference"]))
    assert by_task["pos"] == "null" and by_task["null"] == "absolute"  # the null is never its own reference
    assert result.metrics["pos/verdict_code"] == 1 and result.metrics["pos/n_seeds"] == 5
    # the score is absolute (here in shares: the trials log no probability mass); the excess is paired
    assert result.metrics["pos/score"] == pytest.approx(np.mean([0.7, 0.72, 0.69, 0.75, 0.7]))
    assert result.metrics["pos/score_excess"] == pytest.approx(
        np.mean(np.array([0.7, 0.72, 0.69, 0.75, 0.7]) - [0.15, 0.2, 0.14, 0.18, 0.16])
    )
    assert np.isnan(result.metrics["null/score_excess"])  # the null has no null of its own
    assert {"n_seeds", "score", "score_ci_low", "score_ci_high", "excess", *SIGNALS} <= set(row)
    assert "verdict" in result.figures
    # one seed: intervals over held-out contexts (here none were stored, so no verdict)
    one = verdict(trials([0.8], [0.7], [1.0], "pos"), VerdictParams())
    assert one.metrics["pos/verdict_code"] == 0
    # grouped by task alone, one group holds two pairs: each keeps its own metrics (keyed by process too)
    product = {"name": "product", "factors": INTERLEAVE["factors"]}
    sharp = trials([0.05, 0.04, 0.06, 0.05, 0.03], [0.1] * 5, [0.9] * 5, "pos")
    other_null = trials([0.3] * 5, [0.2, 0.21, 0.19, 0.2, 0.2], [0.0] * 5, "null", null=True)
    for t in sharp + other_null:
        t.config["process"] = product
    mixed = verdict(null + pos + other_null + sharp, VerdictParams())
    table = mixed.tables["verdict"].to_pydict()
    got = {(p.split("(")[0], t): v for p, t, v in zip(table["process"], table["task"], table["verdict"])}
    assert got[("interleave", "pos")] == "composition" and got[("product", "pos")] == "reweighting"
    codes = {k: v for k, v in mixed.metrics.items() if k.endswith("/pos/verdict_code")}
    assert sorted(codes.values()) == [-1.0, 1.0] and len({k.split("/")[0] for k in codes}) == 2, codes


def test_analysis_modules_import_without_torch():
    code = (
        "import sys, rayexp.registry as a; assert {'composition', 'verdict'} <= set(a.ANALYSES); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


#: what the verdict's rule reads of each trial: the classes' shares, the margin and the resolution bar
RULE_KEYS = (
    "classes/reweighting/unexplained/post",
    "classes/elicitation/unexplained/post",
    "margin_phase_greedy/post",
    "classes/reweighting/below_bar/post",
    "classes/planted/composed/unexplained",
)


#: the rule's keys and what the composed-share bounds read
SHARE_KEYS = (
    *RULE_KEYS,
    "classes/composed_share_max/post",
    "classes/reweighting/unexplained_tv/post",
    "classes/elicitation/unexplained_tv/post",
    "classes/planted/composed/unexplained_tv",
)


def _trials(keys, rows, task, null=False):
    """One stored trial per row (its seed the row's index), ``keys`` -> the row's values."""
    return [FakeTrial(stored_metrics=dict(zip(keys, r)), seed=s, task=task, null=null) for s, r in enumerate(rows)]


def test_the_verdict_reads_each_trials_composed_share_bound():
    def trials(rows, task, null=False):
        return _trials(SHARE_KEYS, rows, task, null)

    null = trials([(0.6, 0.6, 0.0, -0.3, 0.9, 0.7, m, 0.3, 0.5) for m in (0.2, 0.25, 0.3)], "null", null=True)
    neg = trials([(0.05, 0.5, np.nan, 0.2, 0.9, m, 0.05, 0.4, 0.5) for m in (0.08, 0.1, 0.12)], "neg")
    table = verdict(null + neg, VerdictParams()).tables["verdict"].to_pydict()
    row = {k: v[table["task"].index("neg")] for k, v in table.items()}
    assert row["verdict"] == "reweighting" and row["share_max"] == pytest.approx(0.1)
    assert row["share_max_lo"] < 0.1 < row["share_max_hi"] and f"at most {row['share_max_hi']:.2f}" in row["reason"]
    # with the null's mass as the rest's, paired by seed: (0.05 + m_null) / (0.5 + m_null), their mean
    assert row["share_max_drift"] == pytest.approx(np.mean([0.25 / 0.7, 0.3 / 0.75, 0.35 / 0.8]))
    assert f"at most {row['share_max_drift_hi']:.2f} for a rest that drifts" in row["reason"]
    # every column the trial runs are tagged with (rayexp.verdict.*) is one the verdict table has
    section, columns = composition_study.STUDY.run_annotations["verdict"]
    assert section == "verdict" and set(columns) <= set(table), set(columns) - set(table)


def test_the_verdict_withholds_a_bound_whose_premise_the_policy_refutes_and_states_the_residual_bound():
    keys = (
        *SHARE_KEYS,
        "classes/planted/sharp/unexplained_tv",
        "classes/composed_share_max/rest_min/post",
        "classes/residual/sq/post",
        "classes/residual/dot_soft/post",
        "classes/planted/soft/residual_sq",
    )

    def trials(rows, task, null=False):
        return _trials(keys, rows, task, null)

    sq_null = (1.0, 1.2, 0.9)
    null = trials([(0.6, 0.6, 0.0, -0.3, 0.9, 0.7, m, 0.3, 0.5, 0.05, 0.6, q, 0.2, 4.0) for m, q in
                   zip((0.2, 0.25, 0.3), sq_null)], "null", null=True)  # fmt: skip
    # the negative control's rest leaves at least 0.15 per step at any share of J, three times the planted
    # sharp reweighting's 0.05: the sharp rest's premise is refuted on every seed, the null's (0.2-0.3) holds
    neg = trials([(0.05, 0.5, np.nan, 0.2, 0.9, m, 0.05, 0.4, 0.5, 0.05, 0.15, 0.5, d, 4.0) for m, d in
                  zip((0.08, 0.1, 0.12), (0.3, 0.4, 0.5))], "neg")  # fmt: skip
    table = verdict(null + neg, VerdictParams()).tables["verdict"].to_pydict()
    row = {k: v[table["task"].index("neg")] for k, v in table.items()}
    assert row["verdict"] == "reweighting" and row["refuted_sharp"] == 3 and row["refuted_drift"] == 0
    assert f"at most {row['share_max_hi']:.2f} of the time" not in row["reason"]
    assert "refutes the premise of a rest this map resolves as well as a sharpened p_pre on 3/3 seeds" in row["reason"]
    assert f"policy at most {row['share_max_drift_hi']:.2f} of the time for a rest that drifts" in row["reason"]
    each = [projection.share_max_of(0.5, d, 4.0, np.sqrt(q)) for d, q in zip((0.3, 0.4, 0.5), sq_null)]
    assert row["refuted_soft"] == 0 and row["share_max_soft_drift"] == pytest.approx(np.mean(each))
    assert f"Bayes probabilities (a soft composition) at most {row['share_max_soft_drift_hi']:.2f}" in row["reason"]
    null_row = {k: v[table["task"].index("null")] for k, v in table.items()}
    assert np.isnan(null_row["share_max_soft_drift"]) and np.isnan(null_row["refuted_drift"])  # not its own rest


def test_the_verdict_checks_the_learned_premise_on_the_residuals_the_trials_stored():
    keys = (
        *RULE_KEYS,
        "classes/reweighting/unexplained_tv/post",
        "classes/elicitation/unexplained_tv/post",
        "classes/planted/sharp/unexplained_tv",
        "classes/resolution",
        "classes/residual/sq/post",
    )
    probe = FakeTrial("next_token", {})
    tokens = list(task_of(probe.env_config, probe.stream())[0].action_tokens)  # the next-token task's actions
    joint = list(task_of(FakeTrial().env_config, FakeTrial().stream())[0].action_tokens)  # the m joint targets
    shape = (4, 8)  # (held-out sequences, steps)
    # the learned policy leaves the map nothing, so any share of it leaves the rest what the policy leaves:
    # seed 1's 0.02 per step is more than its planted sharp reweighting's 0.01 and less than its null's 0.24
    spread = np.zeros((*shape, len(tokens)))
    spread[..., 0], spread[..., 1] = 1.0, -1.0
    masses = (0.005, 0.02, 0.005)

    def trials(rows, task, reward, null=False, arrays=None, sq=np.nan):
        out = []
        for s, r in enumerate(rows):
            t = FakeTrial(reward, {"m": 3} if reward == "joint_target" else {}, stored_metrics=dict(zip(keys, (*r, sq[s] if np.ndim(sq) else sq))),
                          seed=s, task=task, null=null, arrays=arrays(s) if arrays else None)  # fmt: skip
            t.pretrain_key = f"pre{s}"
            out.append(t)
        return out

    res = (0.031, 0.027, 0.035)
    null = trials([(0.6, 0.6, 0.0, -0.3, 0.9, 0.24, 0.3, 0.01, r) for r in res], "null", "joint_target", True, sq=1e-3)
    pos = trials(
        [(0.95, 0.8, 0.9, -0.6, 0.9, m, 0.5, 0.01, r) for m, r in zip((0.55, 0.56, 0.58), res)], "pos", "joint_target",
        arrays=lambda s: {"residual_post": np.zeros((*shape, len(joint))), "action_tokens": np.array(joint)},
    )  # fmt: skip
    neg = trials(
        [(0.09, 0.5, np.nan, 0.1, 0.9, m, 0.3, 0.01, r) for m, r in zip((0.05, 0.06, 0.055), res)], "neg", "next_token",
        arrays=lambda s: {"residual_post": spread * masses[s], "action_tokens": np.array(tokens)},
    )  # fmt: skip
    assert [projection.mass(t.analysis_arrays("composition")["residual_post"]) for t in neg] == pytest.approx(masses)
    table = verdict(null + pos + neg, VerdictParams()).tables["verdict"].to_pydict()
    row = {k: v[table["task"].index("neg")] for k, v in table.items()}
    assert row["verdict"] == "reweighting" and row["refuted_learned_sharp"] == 1 and row["refuted_learned_drift"] == 0
    assert f"at most {row['share_max_learned_hi']:.2f} of the time (" not in row["reason"]
    assert (
        f"pos's learned composition at most {row['share_max_learned_drift_hi']:.2f} of the time for a drifting"
        in (row["reason"])
    )
    assert "a premise this policy refutes against that policy on 1/3 seeds, not stated)" in row["reason"]
    assert "not checked" not in row["reason"]
    # the residual bound against it: the learned policy leaves the map nothing, so a share a leaves the rest
    # the policy's residual over (1 - a); seed 1's (16 x 0.02^2 per sequence) is above the null's 1e-3 at any
    # share, the others' (16 x 0.005^2) below it up to a = 1 - sqrt(0.4)
    assert row["refuted_learned_l2"] == 1  # the seeds allowing it keep their bound in the table, not the reason
    assert row["share_max_learned_l2"] == pytest.approx(1 - np.sqrt(0.4), rel=1e-9)
    assert f"at most {row['share_max_learned_l2_hi']:.2f}" not in row["reason"]
    assert (
        "no mixture of pos's learned composition and a rest whose residual is no larger than the null's gives this "
        "policy on 1/3 seeds, so that bound is not stated" in row["reason"]
    )
    # a learned policy that leaves the map something, and a null whose size differs by seed: the bound is each
    # seed's share_max_of on the products of the task's residual with the learned one placed on its tokens
    learned = np.zeros((*shape, len(joint)))
    learned[..., 0], learned[..., 2] = 0.01, -0.01
    placed = np.zeros((*shape, len(tokens)))
    placed[..., [tokens.index(x) for x in joint]] = learned
    sq_null = (2e-3, 9e-3, 1.5e-3)
    pos2 = trials(
        [(0.95, 0.8, 0.9, -0.6, 0.9, m, 0.5, 0.01, r) for m, r in zip((0.55, 0.56, 0.58), res)], "pos", "joint_target",
        arrays=lambda s: {"residual_post": learned, "action_tokens": np.array(joint)},
    )  # fmt: skip
    null2 = trials(
        [(0.6, 0.6, 0.0, -0.3, 0.9, 0.24, 0.3, 0.01, r) for r in res], "null", "joint_target", True, sq=sq_null
    )
    table = verdict(null2 + pos2 + neg, VerdictParams()).tables["verdict"].to_pydict()
    row = {k: v[table["task"].index("neg")] for k, v in table.items()}
    each = []
    for s, q in enumerate(sq_null):
        r = spread * masses[s]
        each.append(projection.share_max_of((r * r).sum(), (r * placed).sum(), (placed * placed).sum(), np.sqrt(q * 4)))
    assert row["refuted_learned_l2"] == 0 and row["share_max_learned_l2"] == pytest.approx(np.mean(each), rel=1e-9)
    # without a null there is no reference rest: no residual bound against the learned policy
    table = verdict(pos2 + neg, VerdictParams()).tables["verdict"].to_pydict()
    row = {k: v[table["task"].index("neg")] for k, v in table.items()}
    assert np.isfinite(row["share_max_learned"]) and np.isnan(row["share_max_learned_l2"])
    assert np.isnan(row["refuted_learned_l2"]) and "residual is no larger" not in row["reason"]


def test_the_verdict_bounds_each_task_by_its_pairs_learned_composition_on_the_same_fit():
    keys = (
        *RULE_KEYS,
        "classes/reweighting/unexplained_tv/post",
        "classes/elicitation/unexplained_tv/post",
        "classes/planted/sharp/unexplained_tv",
        "classes/resolution",
    )

    def trials(rows, task, reward="joint_target", null=False, model="pre"):
        out = []
        for s, r in enumerate(rows):
            params = {"m": 3} if reward == "joint_target" else {}
            t = FakeTrial(reward, params, stored_metrics=dict(zip(keys, r)), seed=s, task=task, null=null)
            t.pretrain_key = f"{model}{s}"  # one pretrained model per seed, shared by the seed's tasks
            out.append(t)
        return out

    res = (0.031, 0.027, 0.035)  # the resolution each seed's fit used: its model's error on one sample
    null = trials([(0.6, 0.6, 0.0, -0.3, 0.9, 0.24, 0.3, 0.01, r) for r in res], "null", null=True)
    pos = trials([(0.95, 0.8, 0.9, -0.6, 0.9, m, 0.5, 0.01, r) for m, r in zip((0.55, 0.56, 0.58), res)], "pos")
    neg_rows = [(0.09, 0.5, np.nan, 0.1, 0.9, m, 0.3, 0.01, r) for m, r in zip((0.05, 0.06, 0.055), res)]
    table = verdict(null + pos + trials(neg_rows, "neg", "next_token"), VerdictParams()).tables["verdict"].to_pydict()
    row = {k: v[table["task"].index("neg")] for k, v in table.items()}
    assert dict(zip(table["task"], table["verdict"]))["pos"] == "composition" and row["verdict"] == "reweighting"
    # each seed's (m_pi + m_sharp) / (m_learned + m_sharp), their mean over the three seeds
    each = [(m + 0.01) / (j + 0.01) for m, j in zip((0.05, 0.06, 0.055), (0.55, 0.56, 0.58))]
    assert row["share_max_learned"] == pytest.approx(np.mean(each))
    assert f"pos's learned composition at most {row['share_max_learned_hi']:.2f}" in row["reason"]
    assert "(that premise not checked on 3/3 seeds: no residual kept" in row["reason"]
    assert np.isnan(row["refuted_learned_sharp"])  # trials stored without their residuals: not checked
    drift = [(m + 0.24) / (j + 0.24) for m, j in zip((0.05, 0.06, 0.055), (0.55, 0.56, 0.58))]
    assert row["share_max_learned_drift"] == pytest.approx(np.mean(drift))
    pos_row = {k: v[table["task"].index("pos")] for k, v in table.items()}
    assert np.isnan(pos_row["share_max_learned"])  # its own policy is no bound on itself
    # the same models and resolutions, but the composing task's analysis drew another sample: not paired
    other = trials([(0.95, 0.8, 0.9, -0.6, 0.9, m, 0.5, 0.01, r) for m, r in zip((0.55, 0.56, 0.58), res)], "pos")
    for t in other:
        t.config["analyses"] = [{"name": "composition", "params": {"seed": 1}}]
    table = verdict(null + other + trials(neg_rows, "neg", "next_token"), VerdictParams()).tables["verdict"]
    table = table.to_pydict()
    assert np.isnan(table["share_max_learned"][table["task"].index("neg")])
    # a null called composition (on its absolute thresholds) is the detector failing, not a reference
    composed_null = trials([(0.9, 0.8, 0.9, -0.6, 0.9, 0.5, 0.5, 0.01, r) for r in res], "null", null=True)
    table = verdict(composed_null + trials(neg_rows, "neg", "next_token"), VerdictParams()).tables["verdict"]
    table = table.to_pydict()
    assert dict(zip(table["task"], table["verdict"]))["null"] == "composition"
    assert np.isnan(table["share_max_learned"][table["task"].index("neg")])
    # another pretrained model per seed (a sweep that pretrained again), or another sample: no pairing
    for other in (trials(neg_rows, "neg", "next_token", model="other"),
                  trials([r[:-1] + (r[-1] + 0.001,) for r in neg_rows], "neg", "next_token")):  # fmt: skip
        table = verdict(null + pos + other, VerdictParams()).tables["verdict"].to_pydict()
        row = {k: v[table["task"].index("neg")] for k, v in table.items()}
        assert row["verdict"] == "reweighting" and np.isnan(row["share_max_learned"]), row
        assert "learned composition" not in row["reason"]


def test_the_composition_analysis_keeps_the_residual_the_direction_command_recomputes():
    from rayexp.studies.composition import direction
    from rayexp.studies.composition.learned_bound import rest_min

    params = CompositionParams(n_seq=60, lookup_k=[1], checkpoints=False)
    neg, pos = FakeTrial("next_token", {}, task="neg"), FakeTrial(task="pos")
    kept = {}
    for t in (neg, pos):
        t.pretrain_key = "pre0"
        t.config["analyses"] = [{"name": "composition", "params": {"n_seq": 60}}]  # the sample direction draws
        kept[t.config["task"]["name"]] = composition(t, params).arrays
    direction._fit.cache_clear()
    direction._post_residual.cache_clear()
    for name, t in (("neg", neg), ("pos", pos)):
        assert list(kept[name]["action_tokens"]) == direction._fit(t)[1]
        # (the trial's softmax of centred logits and the command's differ in the last bit)
        np.testing.assert_allclose(kept[name]["residual_post"], direction._post_residual(t), rtol=0, atol=1e-14)
    # the verdict's check of the learned premise from the kept arrays is the command's from the models
    from_arrays = rest_min(kept["neg"]["residual_post"], kept["neg"]["action_tokens"],
                           kept["pos"]["residual_post"], kept["pos"]["action_tokens"])  # fmt: skip
    assert np.isfinite(from_arrays)
    assert from_arrays == pytest.approx(direction.learned_rest_min(neg, pos), rel=1e-9, abs=1e-14)
