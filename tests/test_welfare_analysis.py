"""The ``concept_vectors`` analysis (the trial adapter) on planted models whose answers are known.

A stand-in model's residual stream at a token is that token's embedding E[x] (then fixed linear maps, one
per layer), so the concept vectors at an outcome token are the planted rows E[rewarded] - E[neutral] and
E[punished] - E[neutral] mapped to the hook, and every cosine has a value computed here without labels or
positions. Its policy at a decision reads the base state's exact belief, filtered here from the base
tokens and the outcomes (not through the outcome process' matrices): it prefers the punished action with
a strength ``beta0 + c * |steering push|``. Every control of a vector's norm then moves it exactly as the
vector does, and the effects are known. The answers catch vectors read at the wrong positions, v_R and v_P
swapped, a p-value's side swapped, reward and punishment swapped, a random move of the wrong model and a
control of the wrong norm."""

import numpy as np
import pytest
import torch
from streams import MESS3

from envs.processes import build_process
from rayexp.studies.welfare import concepts as cv
from rayexp.studies.welfare.concept_vectors_analysis import ConceptParams, OutcomeContexts, concept_vectors

OUTCOME = {"name": "outcome", "base": MESS3}
S, ACTIONS, REW, PUN, NEU = 3, 3, 6, 7, 8  # base tokens 0-2, actions 3-5, outcomes 6-8
D, CONTEXT = 5, 12
HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
STEER = HOOKS[1]  # the analysis' default: the middle residual stream


def base_beliefs(tokens: np.ndarray) -> np.ndarray:
    """(N, L, S) the base state's belief after x_t: Mess3's filter on the base tokens, and an outcome
    keeps the states where the action just taken gets it (rewarded: a == s, punished: a == s + 1)."""
    base = build_process(MESS3)
    tokens = np.asarray(tokens)
    belief = np.tile(base.init, (len(tokens), 1))  # (N, S)
    action = np.zeros(len(tokens), dtype=int)
    out = np.empty((*tokens.shape, S))
    s = np.arange(S)
    for t in range(tokens.shape[1]):
        x = tokens[:, t]
        for i in np.flatnonzero(x < S):
            belief[i] = belief[i] @ base.T[x[i]]
        action = np.where((x >= ACTIONS) & (x < REW), x - ACTIONS, action)
        for i in np.flatnonzero(x >= REW):
            k = x[i] - REW
            got = np.where(action[i] == s, 0, np.where(action[i] == (s + 1) % S, 1, 2))  # outcome per state
            belief[i] = belief[i] * (got == k)
        belief /= belief.sum(1, keepdims=True)
        out[:, t] = belief
    return out


def punished_share(b: np.ndarray, beta: float) -> tuple[float, float]:
    """(reward rate, P(punished)) over decisions with beliefs ``b`` (n, S) of the policy with logits
    beta * P(action a is punished) = beta * b[a - 1]."""
    pun = b[:, (np.arange(S) - 1) % S]  # (n, A) P(punished | a)
    logits = beta * pun
    pi = np.exp(logits - logits.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    return float(np.mean((pi * (b - pun)).sum(1))), float(np.mean((pi * pun).sum(1)))


class Planted(torch.nn.Module):
    def __init__(self, E, maps, beta0=0.0, c=0.0):
        super().__init__()
        self.hook_names = ["hook_embed", *HOOKS, "ln_final.hook_normalized"]
        self.E = torch.nn.Parameter(torch.as_tensor(E, dtype=torch.float64))  # (9, D)
        self.register_buffer("M1", torch.as_tensor(maps[0], dtype=torch.float64))
        self.register_buffer("M2", torch.as_tensor(maps[1], dtype=torch.float64))
        self.beta0, self.c = beta0, c
        self.inputs: list[np.ndarray] = []

    def _run(self, x, hooks=None):
        hooks = hooks or {}
        assert set(hooks) <= {STEER}, hooks
        self.inputs.append(x.cpu().numpy())
        h0 = self.E[x]  # (N, L, D)
        clean = h0 @ self.M1
        h1 = hooks[STEER](clean) if STEER in hooks else clean
        h2 = h1 @ self.M2
        push = torch.linalg.vector_norm(h1 - clean, dim=-1).numpy()  # (N, L)
        beta = self.beta0 + self.c * push
        pun = base_beliefs(x.cpu().numpy())[..., (np.arange(S) - 1) % S]  # (N, L, A)
        logits = np.zeros((*x.shape, 9))
        logits[..., ACTIONS : ACTIONS + S] = beta[..., None] * pun
        return torch.as_tensor(logits), dict(zip(HOOKS, (h0, h1, h2)))

    def forward(self, x):
        return self._run(x)[0]

    def run_with_cache(self, x, names=None):
        logits, acts = self._run(x)
        return logits, {n: acts[n] for n in names}

    def run_with_hooks(self, x, hooks):
        return self._run(x, hooks)[0]


RNG = np.random.default_rng(11)
MAPS = [RNG.standard_normal((D, D)) for _ in range(2)]


def embedding(r, p):
    """E with the neutral outcome's row n, the rewarded one's n + r and the punished one's n + p."""
    E = RNG.standard_normal((9, D))
    E[REW], E[PUN] = E[NEU] + r, E[NEU] + p
    return E


def hook_map(h: str) -> np.ndarray:
    """(D, D) the linear map from the embedding to hook ``h``."""
    m = np.eye(D)
    for step in MAPS[: HOOKS.index(h)]:
        m = m @ step
    return m


def planted_vectors(E) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{hook: (v_R, v_P)} by hand: the planted rows' differences, through the hook's maps."""
    r, p = E[REW] - E[NEU], E[PUN] - E[NEU]
    return {h: (r @ hook_map(h), p @ hook_map(h)) for h in HOOKS}


class Artifacts:
    def __init__(self, models):
        self.models = models
        self.env_config, self.config = {"context": CONTEXT}, {"seed": 4}

    def stream(self):
        return build_process(OUTCOME)

    def random_init(self):
        return self.models["random_init"]

    def model_before(self):
        return self.models["pre"]

    def model_after(self):
        return self.models["post"]

    def ppo_iterations(self):
        return [5]

    def policy(self, iteration):
        return self.models["pre" if iteration == 0 else "post"]


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_concept_vectors_reads_planted_vectors_rates_and_norm_matched_controls():
    u, w, z = np.linalg.qr(RNG.standard_normal((D, 3)))[0].T  # orthonormal
    E = {
        "random_init": embedding(z, w),  # v_R orthogonal to v_P at the embedding
        "pre": embedding(u, -0.5 * u + 0.3 * w),  # antiparallel-leaning
        "post": embedding(2.0 * (0.6 * u + 0.8 * z), 0.4 * u - 0.7 * w),  # R kept in part, P turned; |v_R| > |v_P|
    }
    models = {
        "random_init": Planted(E["random_init"], MAPS),
        "pre": Planted(E["pre"], MAPS),  # a uniform policy
        "post": Planted(E["post"], MAPS, beta0=1.0, c=0.05),  # leans to the punished action, more when pushed
    }
    params = ConceptParams(n_seq=80, n_perm=20, n_random=2, alphas=[-1.0, 0.0, 1.0, 4.0], seed=2)
    got = concept_vectors(Artifacts(models), params)
    m = got.metrics
    want = {name: planted_vectors(e) for name, e in E.items()}

    # the vectors at the outcome tokens are the planted ones: their cosine per model and hook
    for name in E:
        for h in HOOKS:
            assert m[f"cos/{name}/{h}"] == pytest.approx(_cos(*want[name][h]), abs=1e-9), (name, h)
    assert m[f"cos/random_init/{HOOKS[0]}"] == pytest.approx(0.0, abs=1e-9)  # orthogonal by construction
    for h in HOOKS:  # RL's rotation of each vector, R and P apart
        assert m[f"align/{h}/R"] == pytest.approx(_cos(want["pre"][h][0], want["post"][h][0]), abs=1e-9)
        assert m[f"align/{h}/P"] == pytest.approx(_cos(want["pre"][h][1], want["post"][h][1]), abs=1e-9)
    assert m[f"align/{HOOKS[0]}/R"] == pytest.approx(0.6)  # by hand, at the embedding
    assert m[f"align/{HOOKS[0]}/P"] == pytest.approx((-0.2 - 0.21) / np.sqrt(0.34 * 0.65))
    assert m["steer/v_P_norm_post"] == pytest.approx(np.linalg.norm(want["post"][STEER][1]), rel=1e-9)
    assert m["steer/v_R_norm_post"] == pytest.approx(np.linalg.norm(want["post"][STEER][0]), rel=1e-9)
    assert m["update_norm"] == pytest.approx(np.linalg.norm(E["post"] - E["pre"]), rel=1e-9)

    # the null's p-values, each on its own side: the labels' shuffles of the planted rows, redrawn here
    data = OutcomeContexts(build_process(OUTCOME), CONTEXT, params.n_seq, params.seed)
    for name in E:
        for h in HOOKS:
            acts = E[name][REW + data.labels] @ hook_map(h)  # (n_out, D) the rows at the outcome tokens
            null = cv.shuffled_cosines(acts, data.labels, params.n_perm, seed=params.seed)
            c = m[f"cos/{name}/{h}"]
            below, above = (1 + np.sum(null <= c)) / (1 + len(null)), (1 + np.sum(null >= c)) / (1 + len(null))
            assert (m[f"null/{name}/{h}/p_below"], m[f"null/{name}/{h}/p_above"]) == pytest.approx((below, above))
    assert m[f"null/pre/{HOOKS[0]}/p_below"] < 0.2 and m[f"null/pre/{HOOKS[0]}/p_above"] > 0.8  # the sides differ

    # exact rates at the decisions, from the base state's belief filtered here
    (tokens,) = {x.tobytes(): x for x in models["pre"].inputs if x.shape == (params.n_seq, CONTEXT)}.values()
    b = base_beliefs(tokens)[tokens < S]  # (n_dec, S): after each base token, a decision
    assert (m["reward/pre"], m["punish/pre"]) == pytest.approx((0.0, 1 / 3), abs=1e-12)  # uniform policy
    reward_post, p0 = punished_share(b, 1.0)
    assert (m["reward/post"], m["punish/post"]) == pytest.approx((reward_post, p0), rel=1e-9)
    assert p0 > 0.4 and reward_post < -0.1  # it does lean to the punished action
    assert m["reward/perturbed"] == pytest.approx(0.0, abs=1e-12)  # pre moved at random: its policy stays uniform

    # steering: each vector's effect at the largest alpha, and every control of that vector's norm moves
    # the policy exactly as much (ratio 1), on the manifold and off it, for v_P and for v_R (longer than v_P)
    a_max = max(params.alphas)
    for target, vec in (("v_P", 1), ("v_R", 0)):
        push = a_max * np.linalg.norm(want["post"][STEER][vec])
        effect = abs(punished_share(b, 1.0 + 0.05 * push)[1] - p0)
        assert m[f"steer/post/{target}/effect"] == pytest.approx(effect, rel=1e-5)
        for kind in ("random", "orthogonal", "shuffled", "group"):
            assert m[f"steer/post/{target}/control/{kind}"] == pytest.approx(effect, rel=1e-5), (target, kind)
            assert m[f"steer/post/{target}/vs_{kind}/ratio"] == pytest.approx(1.0, rel=1e-5), (target, kind)
    assert m["steer/post/v_R/effect"] > 1.5 * m["steer/post/v_P/effect"] > 0.05
    assert m["steer/post/v_P/dpunish_max"] == pytest.approx(m["steer/post/v_P/effect"], rel=1e-9)
    # the concept curve: the last checkpoint is post (cosine 1 with the final vectors); iteration 0 is pre
    curve = got.tables["concept_curve"].to_pydict()
    rows = {(it, h): i for i, (it, h) in enumerate(zip(curve["iteration"], curve["hook"]))}
    for h in HOOKS:
        assert curve["cos_P_final"][rows[(5, h)]] == pytest.approx(1.0)
        assert curve["cos_R_final"][rows[(0, h)]] == pytest.approx(m[f"align/{h}/R"], abs=1e-9)


class Trial:
    """What matched_null reads from a trial: its task, seed, start and models (a straight PPO path)."""

    def __init__(self, task, seed, pre, post):
        self.config = {"task": {"name": task}, "seed": seed, "process": OUTCOME}
        self.env_config, self.pretrain_key = {"context": CONTEXT}, "pretrained"
        self._pre, self._post = pre, post

    def stream(self):
        return build_process(OUTCOME)

    def model_before(self):
        return self._pre

    def model_after(self):
        return self._post

    def ppo_iterations(self):
        return [30]

    def policy(self, iteration):
        return self._pre if iteration == 0 else self._post


def test_matched_null_pairs_each_seeds_rl_with_its_own_null_at_rls_norm_by_hand():
    """Planted embeddings: the concept vectors are linear in E, so the null's update scaled to RL's norm,
    E_pre + t (E_null - E_pre) with t = |E_rl - E_pre| / |E_null - E_pre|, has v_pre + t (v_null - v_pre),
    and every column is a cosine of planted vectors. The trials come in an order that pairs wrongly by
    position; seeds differ so a mispairing or a swapped rl / null shows."""
    from rayexp.stats import t_ci
    from rayexp.studies.welfare.matched_null_analysis import MatchedNullParams, matched_null

    rng = np.random.default_rng(5)
    E, trials = {}, {}
    for seed in (0, 1):
        E[seed, "pre"] = rng.standard_normal((9, D))
        E[seed, "rl"] = E[seed, "pre"] + (0.3 + seed) * rng.standard_normal((9, D))
        E[seed, "null"] = E[seed, "pre"] + (2.0 + seed) * rng.standard_normal((9, D))
        pre = Planted(E[seed, "pre"], MAPS)
        for task, k in (("outcome_rl", "rl"), ("shuffled_null", "null")):
            trials[seed, k] = Trial(task, seed, pre, Planted(E[seed, k], MAPS))
    group = [trials[1, "null"], trials[0, "rl"], trials[1, "rl"], trials[0, "null"]]
    got = matched_null(group, MatchedNullParams(n_seq=60))
    table = got.tables["matched_rotation"].to_pydict()

    want: dict[tuple, float] = {}
    for seed in (0, 1):
        d_rl, d_null = (np.linalg.norm(E[seed, k] - E[seed, "pre"]) for k in ("rl", "null"))
        t = d_rl / d_null
        E[seed, "null_matched"] = E[seed, "pre"] + t * (E[seed, "null"] - E[seed, "pre"])
        v = {k: planted_vectors(E[seed, k]) for k in ("pre", "rl", "null", "null_matched")}
        for h in HOOKS:
            for name, i in (("R", 0), ("P", 1)):
                for col in ("rl", "null", "null_matched"):
                    want[seed, h, name, col] = _cos(v["pre"][h][i], v[col][h][i])
    assert got.metrics["norm/rl"] == pytest.approx(
        np.mean([np.linalg.norm(E[s, "rl"] - E[s, "pre"]) for s in (0, 1)]), rel=1e-9
    )
    assert got.metrics["norm/null"] == pytest.approx(
        np.mean([np.linalg.norm(E[s, "null"] - E[s, "pre"]) for s in (0, 1)]), rel=1e-9
    )
    assert len(table["seed"]) == 2 * len(HOOKS) * 2
    for i, (seed, h, name) in enumerate(zip(table["seed"], table["hook"], table["vector"])):
        for col in ("rl", "null", "null_matched"):
            assert table[col][i] == pytest.approx(want[seed, h, name, col], abs=1e-9), (seed, h, name, col)
        assert table["null_path"][i] == pytest.approx(want[seed, h, name, "null_matched"], abs=1e-9)  # straight
    for h in HOOKS:
        for name in ("R", "P"):
            for col in ("null_matched", ""):
                diffs = [want[s, h, name, "rl"] - want[s, h, name, col or "null"] for s in (0, 1)]
                key = f"{h}/{name}/rl_minus_{col or 'null'}"
                assert (got.metrics[key], got.metrics[f"{key}/ci_low"]) == pytest.approx(t_ci(diffs)[:2], abs=1e-9)
