"""The composition adapters: per-trial signals from models (oracle numpy policies and tiny
transformers) and the across-trial verdict, on stand-ins for a trial's stored artifacts."""

import copy
import subprocess
import sys

import numpy as np
import pytest

from envs import build_process
from envs.rewards import make_reward
from rayexp.exact import targets
from rayexp.studies.composition import interaction as ia
from rayexp.studies.composition.composition_analysis import CompositionParams, Scorer, composition, make_setup
from rayexp.studies.composition.verdict_analysis import SIGNALS, VerdictParams, verdict

MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}
INTERLEAVE = {"name": "interleave", "factors": [MESS3, MESS3]}


def oracle(hmm, logits_of_beliefs):
    """A Forward from exact beliefs: the policy a model would have if it computed this function exactly."""
    return lambda tokens, with_features: (logits_of_beliefs(hmm.beliefs(tokens)), {})


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


def _tiny(seed=0):
    from models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
    return Transformer(cfg, seed=seed).eval()


class FakeTrial:
    """What the composition analysis reads from rayexp.artifacts.TrialArtifacts, held in memory."""

    def __init__(self, reward="joint_target", reward_params=None, stored_metrics=None, seed=0, task="positive_control"):
        import torch

        self.env_config = {
            "process": INTERLEAVE,
            "context": 8,
            "episode_len": 8,
            "reward": reward,
            "reward_params": reward_params if reward_params is not None else {"m": 3},
            "action_tokens": None,
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
    assert not any("random_init" in k for k in m if not k.startswith("readout/"))
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


def test_verdict_analysis_over_seeds():
    def trials(eta, r2, margin, task):
        return [
            FakeTrial(
                stored_metrics={"composed/post": e, "reweighting_r2/post": r, "margin_greedy/post": g},
                seed=s,
                task=task,
            )
            for s, (e, r, g) in enumerate(zip(eta, r2, margin))
        ]

    pos = verdict(
        trials([0.9, 0.88, 0.93, 0.91, 0.87], [0.1, 0.12, 0.08, 0.1, 0.11], [0.97] * 5, "pos"), VerdictParams()
    )  # kappa, R^2, greedy margin per seed
    assert pos.metrics["verdict_code"] == 1 and pos.metrics["n_seeds"] == 5
    assert pos.metrics["score_ci_low"] > 0.85 and pos.metrics["score"] == pytest.approx(0.898)
    row = pos.tables["verdict"].to_pydict()
    assert (
        row["verdict"] == ["composition"] and row["task"] == ["pos"] and row["process"] == ["interleave(mess3,mess3)"]
    )
    assert {"n_seeds", "score", "score_ci_low", "score_ci_high", *SIGNALS} <= set(row)
    assert row["composed_post"][0] == pytest.approx(0.898) and np.isnan(row["interaction_post"][0])
    assert "verdict" in pos.figures
    neg = verdict(trials([0.001] * 4, [0.95, 0.96, 0.94, 0.97], [0.9] * 4, "neg"), VerdictParams())
    assert neg.metrics["verdict_code"] == -1
    one = verdict(trials([0.8], [0.1], [1.0], "pos"), VerdictParams())
    assert one.metrics["verdict_code"] == 0 and one.metrics["score"] == pytest.approx(0.8)
    assert np.isnan(one.metrics["score_ci_low"]) and "1 seed" in one.tables["verdict"].to_pydict()["reason"][0]


def test_analysis_modules_import_without_torch():
    code = (
        "import sys, rayexp.registry as a; assert {'composition', 'verdict'} <= set(a.ANALYSES); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
