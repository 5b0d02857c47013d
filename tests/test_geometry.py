"""Belief geometry and causal ablations (rayexp.studies.composition.geometry*), on planted cases whose
answer is known by construction: features that hold the factors' beliefs in known subspaces, with or
without their product, and a planted network that reads both subspaces to act on the joint target."""

import numpy as np
import pytest
import torch

from envs import build_process
from envs.rewards import make_reward
from rayexp.exact import targets
from rayexp.studies.composition import geometry as geo
from rayexp.studies.composition import representation as rep
from rayexp.studies.composition.composition_analysis import make_setup
from rayexp.studies.composition.geometry_analysis import (
    GeometryParams,
    ablations,
    belief_targets,
    geometry,
    layer_geometry,
)
from rayexp.studies.composition.geometry_summary import GeometrySummaryParams, geometry_summary

MESS3 = {"name": "mess3", "x": 0.05, "a": 0.85}
INTERLEAVE = {"name": "interleave", "factors": [MESS3, MESS3]}


def _setup(n=600, seed=0):
    hmm = build_process(INTERLEAVE)
    reward = make_reward("joint_target", hmm, {"m": 3})
    s = make_setup(hmm, reward, 8, n, seed)
    return hmm, reward, s, belief_targets(hmm, s.tokens)


def test_product_part_is_what_no_affine_map_of_the_factors_gives():
    rng = np.random.default_rng(0)
    b0, b1 = rng.dirichlet(np.ones(3), 5000), rng.dirichlet(np.ones(3), 5000)
    joint = rep.outer_beliefs([b0, b1])
    r = geo.product_part([b0, b1], joint)
    X = np.concatenate([b0, b1, np.ones((5000, 1))], 1)
    assert np.abs(X.T @ r).max() < 1e-8  # orthogonal to every affine function of the factor beliefs
    assert (r**2).sum() > 0.05 * ((joint - joint.mean(0)) ** 2).sum()  # and not nothing
    # a joint that *is* affine in the factors (here: their concatenation, twice) has no product part
    assert np.abs(geo.product_part([b0, b1], np.concatenate([b0, 2 * b1], 1))).max() < 1e-10


def test_erasure_leaves_no_affine_probe_and_a_random_subspace_does():
    rng = np.random.default_rng(1)
    z = rng.dirichlet(np.ones(3), 4000)  # (n, 3)
    E = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    X = 3 * z @ E[:, :3].T + 0.3 * rng.standard_normal((4000, 20))  # the target in a known 3-d subspace
    Q = geo.erasure_basis(X, z)
    assert Q.shape == (20, 2)  # beliefs sum to one: rank 2
    assert np.allclose(Q.T @ Q, np.eye(2), atol=1e-10)
    Xe = geo.erase(X, Q, X.mean(0))
    assert np.abs(geo.cross_covariance(Xe, z)).max() < 1e-12
    fit = lambda A: np.linalg.lstsq(np.c_[A, np.ones(len(A))], z, rcond=None)[0]
    r2 = lambda A: geo.held_out_r2(z, np.c_[A, np.ones(len(A))] @ fit(A))
    assert r2(X) > 0.5 and abs(r2(Xe)) < 1e-9
    kept = [r2(geo.erase(X, geo.random_basis(20, 2, rng), X.mean(0))) for _ in range(20)]
    assert np.mean(kept) > 0.6 * r2(X)
    assert np.allclose(geo.random_basis(5, 0, rng), np.zeros((5, 0)))
    with pytest.raises(ValueError):
        geo.random_basis(3, 4, rng)


def test_joint_only_basis_erases_the_joint_part_outside_the_factor_subspaces_and_keeps_the_factors():
    rng = np.random.default_rng(3)
    b0, b1 = rng.dirichlet(np.ones(3), 6000), rng.dirichlet(np.ones(3), 6000)
    jo = geo.product_part([b0, b1], rep.outer_beliefs([b0, b1]))  # (n, 9), rank 4
    E = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    X = 3 * np.c_[b0, b1] @ E[:, :6].T + 5 * jo @ E[:, 6:15].T + 0.05 * rng.standard_normal((6000, 24))
    F = np.linalg.qr(np.concatenate([geo.erasure_basis(X, b) for b in (b0, b1)], axis=1))[0]
    Q = geo.joint_only_basis(X, jo, F)
    assert Q.shape == (24, 4)  # the product part of two 3-state beliefs has rank (3 - 1)(3 - 1)
    assert np.allclose(Q.T @ Q, np.eye(4), atol=1e-10) and np.abs(F.T @ Q).max() < 1e-12
    Xe = geo.erase(X, Q, X.mean(0))
    for b in (b0, b1):  # the factors' covariance with the features is untouched
        assert np.allclose(geo.cross_covariance(Xe, b), geo.cross_covariance(X, b), atol=1e-12)
    # outside the factor subspaces nothing of the joint-only part is left
    Xp = Xe - (Xe @ F) @ F.T
    assert (
        np.abs(geo.cross_covariance(Xp, jo)).max()
        < 1e-12
        < np.abs(geo.cross_covariance(X @ (np.eye(24) - F @ F.T), jo)).max()
    )
    # features without a joint part give nothing but noise directions: a tiny covariance, not a structure
    Xf = 3 * np.c_[b0, b1] @ E[:, :6].T + 0.05 * rng.standard_normal((6000, 24))
    Qf = geo.joint_only_basis(Xf, jo, F)
    assert np.linalg.norm(geo.cross_covariance(Xf, jo) @ np.eye(9)) < 0.01 * np.linalg.norm(geo.cross_covariance(X, jo))
    assert Qf.shape[1] <= 4


def test_simplex_corners_and_removed_share():
    xy = geo.simplex_xy(np.eye(3))
    assert np.allclose(xy, [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    assert geo.removed_share(0.5, 1 / 3, 1 / 3) == pytest.approx(1.0)
    assert geo.removed_share(0.5, 0.5, 1 / 3) == 0.0
    assert np.isnan(geo.removed_share(0.335, 0.3, 1 / 3))  # a policy earning nothing has no share to remove


def test_layer_geometry_tells_factored_from_joint_features():
    _hmm, _, s, y = _setup()
    rng = np.random.default_rng(2)
    d = 32
    E = np.linalg.qr(rng.standard_normal((d, d)))[0]
    n, L = s.tokens.shape
    noise = 0.02 * rng.standard_normal((n, L, d))
    factored = y["factor0"] @ E[:, :3].T + y["factor1"] @ E[:, 3:6].T + noise
    joint = factored + y["joint"] @ E[:, 6:15].T
    rand = rng.standard_normal((n, L, d))  # a control that knows nothing
    g_fac = layer_geometry(factored, rand, y, s.train, s.test, 1e-3)
    g_joint = layer_geometry(joint, rand, y, s.train, s.test, 1e-3)
    exact_dim = rep.components_for(rep.explained_variance(y["joint"][s.test]), 0.95)
    for g in (g_fac, g_joint):
        assert g["r2/factor0"] > 0.98 and g["r2/factor1"] > 0.98 and g["skill/factor0"] > 0.98
    assert abs(g_fac["r2/joint_only"]) < 0.05  # factored: no joint-only direction (held out: ~0 +- noise)
    assert g_joint["r2/joint_only"] > 0.95  # the product terms are there
    assert g_fac["dim95"] <= 4 < g_joint["dim95"] == exact_dim  # sum(S_i - 1) = 4; the joint's own count
    # orthogonal subspaces: far below chance (not 0: the two factors' sampled beliefs correlate a little)
    assert g_fac["overlap"] < g_fac["overlap_random"] / 2 and g_fac["overlap_random"] == pytest.approx(2 / d)


def joint_target_logits(pab: np.ndarray) -> np.ndarray:
    """Logits (..., 6) of a sharp policy on P((a + b) mod 3 = k) from P(a, b) (..., 3, 3); tokens 3-5 off."""
    P = np.stack([sum(pab[..., a, (k - a) % 3] for a in range(3)) for k in range(3)], -1)
    logits = np.full(P.shape[:-1] + (6,), -50.0)
    logits[..., :3] = 30 * np.log(np.clip(P, 1e-9, None))
    return logits


class Planted(torch.nn.Module):
    """A network whose residual stream at ``blocks.0.hook_resid_post`` holds each factor's exact belief in
    a known 3-d subspace of R^16 and whose policy decodes them back (by the same known maps) and acts on
    the Bayes joint target (a + b) mod 3. Erasing either subspace must leave it nothing to earn."""

    hook_names = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "ln_final.hook_normalized")

    def __init__(self, hmm, d=16, seed=0, reads=(0, 1)):
        super().__init__()
        self.hmm, self.reads = hmm, reads
        self.E = torch.as_tensor(np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0][:, :6])
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def run_with_cache(self, x, names=None):
        cache = {n: None for n in names or self.hook_names}
        return self.run_with_hooks(x, {}, cache), cache

    def residual(self, x) -> torch.Tensor:
        """(B, T, d): the factors' exact beliefs in their known subspace."""
        fb = self.hmm.factor_beliefs(self.hmm.beliefs(x.numpy()))
        return torch.as_tensor(np.concatenate(fb, -1)) @ self.E.T

    def decide(self, dec: np.ndarray) -> np.ndarray:
        """Logits from the residual read back through E (the beliefs, or their means where erased)."""
        p = [dec[..., 3 * i : 3 * i + 3] @ f.T.sum(axis=2).T for i, f in enumerate(self.hmm.factors)]
        p = [pi if i in self.reads else np.full_like(pi, 1 / 3) for i, pi in enumerate(p)]
        return joint_target_logits(p[0][..., :, None] * p[1][..., None, :])

    def run_with_hooks(self, x, hooks, cache=None):
        h = self.residual(x)
        cache = {} if cache is None else cache
        for name in self.hook_names:
            if name == "blocks.0.hook_resid_post" and name in hooks:
                h = hooks[name](h.float()).double()
            if name in cache:
                cache[name] = h.float()
        return torch.as_tensor(self.decide((h @ self.E).numpy()))

    def forward(self, x):
        return self.run_with_hooks(x, {})


def test_ablating_the_read_subspaces_removes_the_reward_and_random_ones_do_not():
    hmm, reward, s, y = _setup(n=400)
    model = Planted(hmm)
    # the planted policy is the Bayes joint-target policy: its greedy reward is the optimum exactly
    logits = model(torch.as_tensor(s.tokens)).numpy()
    P_model = np.exp(logits[..., :3] / 30)
    assert np.allclose(
        P_model / P_model.sum(-1, keepdims=True),
        targets.target_probs(hmm, reward, hmm.beliefs(s.tokens), s.tokens),
        atol=1e-6,
    )
    acts = {h: model.run_with_cache(torch.as_tensor(s.tokens))[1][h].numpy() for h in model.hook_names}
    out = ablations(model, {"blocks.0.hook_resid_post": acts["blocks.0.hook_resid_post"]}, y, s, 1 / 3, 4, seed=0)
    assert out["none/expected"] > 0.45 and out["none/interaction"] > 0.5
    for cond in ("factor0", "factor1", "both"):
        # one factor alone earns 1/3 in expectation (sampling noise on 400 sequences: ~0.01 of 0.17)
        assert out[f"block0/{cond}/removed"] == pytest.approx(1.0, abs=0.1), cond
        assert out[f"block0/{cond}/dim"] == (2 if cond != "both" else 4)
    # nothing left to interact with (not exactly 0: the sampled factors correlate ~0.03, which tilts
    # the fitted subspace a little into the other factor's)
    assert out["block0/factor0/interaction"] < 0.1
    for cond in ("random0", "random1", "random_both"):
        assert out[f"block0/{cond}/removed"] < 0.6, cond
    assert out["block0/random0/removed"] < out["block0/factor0/removed"] - 0.4


class PlantedJoint(Planted):
    """Planted's residual plus the joint-only part of the joint belief in 9 more known directions (rank 4).
    ``reads="joint"``: the policy decodes the joint belief as the fixed affine map of the decoded factor
    beliefs plus the decoded joint-only part, and acts on the joint target from it; ``reads="factors"``:
    the joint directions are there but the policy is Planted's (the product formed from the factors)."""

    def __init__(self, hmm, coef, reads="joint", d=16, seed=0):
        super().__init__(hmm, d, seed)
        self.E = torch.as_tensor(np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0][:, :15])
        self.coef, self.joint_reads = coef, reads  # coef (7, 9): the joint's affine part from [b0, b1, 1]

    def residual(self, x) -> torch.Tensor:
        fb = np.concatenate(self.hmm.factor_beliefs(self.hmm.beliefs(x.numpy())), -1)
        aff = np.concatenate([fb, np.ones(fb.shape[:-1] + (1,))], -1) @ self.coef
        jo = rep.outer_beliefs([fb[..., :3], fb[..., 3:]]) - aff
        return torch.as_tensor(np.concatenate([fb, jo], -1)) @ self.E.T

    def decide(self, dec: np.ndarray) -> np.ndarray:
        if self.joint_reads != "joint":
            return super().decide(dec)
        M = [f.T.sum(axis=2).T for f in self.hmm.factors]  # (state, token): P(next token | state)
        J = np.concatenate([dec[..., :6], np.ones(dec.shape[:-1] + (1,))], -1) @ self.coef + dec[..., 6:15]
        return joint_target_logits(np.einsum("...ij,ia,jb->...ab", J.reshape(J.shape[:-1] + (3, 3)), M[0], M[1]))


def test_erasing_the_joint_only_subspace_removes_a_joint_readers_reward_and_not_a_factor_readers():
    hmm, reward, s, y = _setup(n=400)
    fb = np.concatenate([y["factor0"], y["factor1"]], -1).reshape(-1, 6)
    coef = np.linalg.lstsq(np.c_[fb, np.ones(len(fb))], y["joint"].reshape(-1, 9), rcond=None)[0]
    P_exact = targets.target_probs(hmm, reward, hmm.beliefs(s.tokens), s.tokens)
    hook = "blocks.0.hook_resid_post"
    out = {}
    for reads in ("joint", "factors"):
        model = PlantedJoint(hmm, coef, reads)
        logits = model(torch.as_tensor(s.tokens)).numpy()
        P_model = np.exp(logits[..., :3] / 30)
        # both read out the Bayes joint-target policy (the joint decoded exactly is the outer product)
        assert np.allclose(P_model / P_model.sum(-1, keepdims=True), P_exact, atol=1e-6), reads
        acts = model.run_with_cache(torch.as_tensor(s.tokens))[1][hook].numpy()
        out[reads] = ablations(model, {hook: acts}, y, s, 1 / 3, 4, seed=0)
    j, f = out["joint"], out["factors"]
    assert j["block0/joint_only/dim"] == 4 and j["block0/joint/dim"] == 8 and j["block0/random_joint_only/dim"] == 4
    # the must-say-no case: the joint directions are there, the policy does not read them
    assert abs(f["block0/joint_only/removed"]) < 0.05
    # the must-say-yes case: a policy that reads them loses much of its reward, random subspaces do not
    assert j["block0/joint_only/removed"] > 0.3
    assert j["block0/joint_only/removed"] > j["block0/random_joint_only/removed"] + 0.25
    # and a joint reader can lose almost nothing when only the factor subspaces go (here the joint-only
    # part alone fixes the target's argmax): a small "both" removal does not say the policy ignores beliefs
    assert j["block0/both/removed"] < 0.1 < f["block0/both/removed"]
    for r in (j, f):  # erasing everything an affine probe of the joint reads leaves nothing to earn
        assert r["block0/joint/removed"] == pytest.approx(1.0, abs=0.1)
    # the erasures did what they say, on held-out sequences: joint_only keeps the factors readable
    assert j["block0/joint_only/left_factor0"] > 0.95 and j["block0/joint_only/left_factor1"] > 0.95
    assert abs(j["block0/joint_only/left_joint_only"]) < 0.05
    assert abs(j["block0/both/left_factor0"]) < 0.05 and j["block0/both/left_joint_only"] > 0.95
    assert max(abs(j[f"block0/joint/left_{t}"]) for t in ("factor0", "factor1", "joint_only")) < 0.05


class _Trial:
    """What the geometry analysis reads from a trial's artifacts, held in memory (tiny transformers)."""

    def __init__(self, task="positive_control", seed=0):
        from models.transformer import Transformer, TransformerConfig

        cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=6)
        self.env_config = {
            "process": INTERLEAVE,
            "context": 8,
            "episode_len": 8,
            "reward": "joint_target",
            "reward_params": {"m": 3},
            "action_tokens": None,
        }
        self.config = {"process": INTERLEAVE, "task": {"name": task}, "seed": seed}
        self._m = {i: Transformer(cfg, seed=seed + 10 * i).eval() for i in range(3)}
        self._stored = {}

    def stream(self):
        return build_process(INTERLEAVE)

    def model_before(self):
        return self._m[0]

    def random_init(self):
        return self._m[2]

    def ppo_iterations(self):
        return [5]

    def policy(self, it):
        return self._m[0] if it == 0 else self._m[1]

    def model_after(self):
        return self._m[1]

    def metrics(self):
        return {f"analysis/geometry/{k}": v for k, v in self._stored.items()}

    def analysis_metrics(self, name):
        return None


def test_geometry_analysis_and_summary_end_to_end_on_tiny_models():
    trials = [_Trial(task, seed) for task in ("positive_control", "negative_control") for seed in (0, 1)]
    for t in trials:
        res = geometry(t, GeometryParams(n_seq=40, n_random=1, lookup_k=[2]))
        t._stored = res.metrics
    m = trials[0]._stored
    for key in ("pre/final/skill/factor0", "post/block1/r2/joint_only", "curve/it5/embed/dim95", "ceiling/lookup_k2",
                "ablation/post/none/expected", "ablation/pre/block1/factor0/drop", "ablation/post/embed/random_both/drop",
                "dims/factored", "dims/joint", "ablation/post/block0/joint_only/drop",
                "ablation/post/block0/random_joint/drop", "ablation/pre/embed/joint_only/left_factor0"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert m["dims/factored"] == 4 and m["dims/joint"] == 8
    # an untrained model earns nothing above uniform guessing: no share of it to remove
    assert (m["ablation/pre/none/expected"] - m["ceiling/uniform"] < 0.01) == np.isnan(
        m["ablation/pre/block1/factor0/removed"]
    )
    assert m["curve/it0/final/r2/factor0"] == m["pre/final/r2/factor0"]  # iteration 0 is the pretrained model
    assert m["curve/it5/final/r2/factor0"] == m["post/final/r2/factor0"]
    assert {"geometry_curve", "belief_simplex"} <= set(res.figures)
    summary = geometry_summary(trials, GeometrySummaryParams(layer="last"))
    curve = summary.tables["geometry_curve"].to_pydict()
    assert set(curve["task"]) == {"positive_control", "negative_control"} and set(curve["iteration"]) == {0, 5}
    assert set(curve["layer"]) == {"block1"}
    row = next(i for i, (t, it, q) in enumerate(zip(curve["task"], curve["iteration"], curve["quantity"]))
           if t == "positive_control" and it == 5 and q == "r2/joint_only")  # fmt: skip
    seeds = [
        t._stored["curve/it5/block1/r2/joint_only"] for t in trials if t.config["task"]["name"] == "positive_control"
    ]
    assert curve["mean"][row] == pytest.approx(np.mean(seeds)) and curve["ci_low"][row] < curve["mean"][row]
    abl = summary.tables["geometry_ablation"].to_pydict()
    assert {"model", "layer", "condition", "quantity", "mean", "ci_low", "ci_high"} <= set(abl)
    assert "positive_control/ablation/post/block1/factor0/removed" in summary.metrics
    assert "positive_control/ablation/post/block1/joint_only/removed" in summary.metrics
    assert {"left_factor0", "left_joint_only"} <= set(abl["quantity"])
    assert {"geometry_curve", "geometry_ablation"} == set(summary.figures)
    with pytest.raises(ValueError, match="no trial"):
        geometry_summary([_Trial()], GeometrySummaryParams())


def test_geometry_report_compacts_the_summary_tables():
    from rayexp.studies.composition.geometry_report import compact

    trials = [_Trial("positive_control", seed) for seed in (0, 1)]
    for t in trials:
        t._stored = geometry(t, GeometryParams(n_seq=30, n_random=1, lookup_k=[2], checkpoints=False)).metrics
    summary = geometry_summary(trials, GeometrySummaryParams())
    tables = {k: summary.tables[f"geometry_{k}"].to_pylist() for k in ("curve", "ablation")}
    (row,) = compact(tables)
    assert row["task"] == "positive_control" and row["layer"] == "block1"
    assert {"r2/joint_only pre", "r2/joint_only post", "dim95 post", "removed both", "removed random_both",
            "removed joint_only", "removed random_joint_only", "removed joint", "removed random_joint"} <= set(row)  # fmt: skip
    pre = np.mean([t._stored["pre/block1/r2/joint_only"] for t in trials])
    assert row["r2/joint_only pre"].startswith(f"{pre:.2f}")
