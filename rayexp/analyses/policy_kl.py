"""How far RL moved the model's predictions: forward KL(pre || post) on held-out streams.

RL's Razor (Shenfeld et al. 2025): the forward KL from the pretrained to the post-trained policy,
measured on the new task's distribution, predicts forgetting where weight-space distances do not.
For every position of ``n_seq`` fresh sequences (seeded), two divergences, each averaged over
positions and reported with a bootstrap CI over sequences:

- ``policy_kl``: between the *policies* (softmax over the env's action tokens) on the RL stream;
- ``lm_kl/{stream}``: between the full next-token distributions (over the stream's vocabulary),
  on the RL stream and on the pretraining process.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from models.config import MAX_SEED
from rayexp.analysis import AnalysisResult, Params, analysis
from rayexp.policy import action_probs
from rayexp.stats import bootstrap_ci


class PolicyKLParams(Params):
    n_seq: int = Field(1000, ge=10, le=1_000_000, description="fresh sequences per stream")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the sampled sequences and the bootstrap")


def forward_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis, in nats; 0 log 0 = 0, and p > 0 where q = 0 gives inf."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def kl_on(before, after, tokens: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """(N,) per-sequence mean forward KL between the two models' distributions over ``vocab``."""
    lp, lq = action_probs(before, tokens, vocab, log=True), action_probs(after, tokens, vocab, log=True)
    return forward_kl(np.exp(lp), np.exp(lq)).mean(axis=1)


@analysis("policy_kl", params=PolicyKLParams, needs=("model_before", "model_after", "env"))
def policy_kl(artifacts, params: PolicyKLParams) -> AnalysisResult:
    """Forward KL(pre || post) of the policy and of the full next-token distribution."""
    before, after = artifacts.model_before(), artifacts.model_after()
    env = artifacts.env_config
    rng = np.random.default_rng(params.seed)
    metrics: dict[str, float] = {}

    def put(name: str, per_seq: np.ndarray) -> None:
        mean, lo, hi = bootstrap_ci(per_seq, seed=params.seed)
        metrics.update({name: mean, f"{name}/ci_low": lo, f"{name}/ci_high": hi})

    stream = artifacts.stream()
    tokens, _ = stream.sample(params.n_seq, env["context"], rng)  # (N, K)
    put("policy_kl", kl_on(before, after, tokens, np.asarray(env["action_tokens"])))
    streams = {"rl": stream, "pretrain": artifacts.process()}
    for name, hmm in streams.items():
        toks = tokens if name == "rl" else hmm.sample(params.n_seq, env["context"], rng)[0]
        put(f"lm_kl/{name}", kl_on(before, after, toks, np.arange(hmm.vocab_size)))
    return AnalysisResult(metrics=metrics)
