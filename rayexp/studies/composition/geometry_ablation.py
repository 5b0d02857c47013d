"""The causal half of the geometry analysis (:mod:`.geometry_analysis`): erase a belief subspace at
one residual layer of a model and score the policy exactly, on every sequence and on the held-out
half the bases were not fitted on. What each condition erases, and its controls, is in
:mod:`.geometry_analysis`'s docstring; the maths of each basis in :mod:`.geometry`."""

from __future__ import annotations

import numpy as np

from rayexp.probes import FINAL, layer_name
from rayexp.ridge import fit_probes, ridge_fit
from rayexp.studies.composition import geometry as geo
from rayexp.studies.composition.composition_analysis import policy_values

CHECKED = ("factor0", "factor1", "joint_only")  # probes refitted after each non-random erasure


def hooked_forward(model, hook: str | None, Q: np.ndarray | None, mu: np.ndarray | None, batch_size: int = 4096):
    """A :data:`.composition_analysis.Forward` of ``model`` with span(Q) mean-replaced at ``hook``."""
    import torch

    device = next(model.parameters()).device
    hooks = {}
    if hook is not None and Q is not None and Q.shape[1] > 0:
        Qt = torch.as_tensor(Q, dtype=torch.float32, device=device)
        mut = torch.as_tensor(mu, dtype=torch.float32, device=device)

        def erase(x: torch.Tensor) -> torch.Tensor:
            return x - ((x.float() - mut) @ Qt @ Qt.T).to(x.dtype)

        hooks[hook] = erase

    def run(tokens: np.ndarray, with_features: bool):
        out = []
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                x = torch.as_tensor(tokens[start : start + batch_size], dtype=torch.long, device=device)
                out.append(model.run_with_hooks(x, hooks) if hooks else model(x))
        return torch.cat(out).double().cpu().numpy(), {}

    return run


def _policy_summary(s, forward, floor: float) -> dict[str, float]:
    v = policy_values(s, forward)
    out = {"expected": float(v["expected"].mean()), "greedy": float(v["greedy"].mean())}
    # the erasures are fitted on the training half: the same reward on the held-out half alone
    out["expected_test"] = float(v["expected"][s.test].mean())
    if "ia_num" in v:
        den = float(v["ia_den"].sum())
        out["interaction"] = float(v["ia_num"].sum()) / den if den > 0 else float("nan")
    out["floor"] = floor
    return out


def erased_probes(x: np.ndarray, Q: np.ndarray, mu: np.ndarray, y: dict, s, alpha: float) -> dict[str, float]:
    """Held-out R^2 of each :data:`CHECKED` target's probe refitted on features with span(Q) erased.
    The joint-only target here is ``y["joint_only"]`` (fitted on all sequences), not the training half's
    own (:func:`joint_only_on`) the bases were fitted to: they differ by an affine part of the factors
    that a refitted probe reads through the factors left in place, about 0.002 of its variance."""
    xe = geo.erase(x, Q, mu)
    ytr, yte = {t: y[t][s.train] for t in CHECKED}, {t: y[t][s.test] for t in CHECKED}
    fits = fit_probes(xe[s.train], ytr, xe[s.test], yte, alpha)
    return {f"left_{t}": geo.held_out_r2(yte[t], fits[t].pred) for t in CHECKED}


def joint_only_on(y: dict, rows) -> np.ndarray:
    """The joint-only target of ``rows`` (their sequences), its affine map of the factors fitted on
    those rows alone: what the ablations' bases are fitted to, built as the re-paired control's is.
    ``y["joint_only"]`` is fitted on every sequence, so on half of them it keeps a small affine part of
    the factor beliefs (4.3 % of its norm on the Mess3 interleave at n_seq 1000, a 500-sequence
    training half), which a basis fitted there would erase beside the joint-only part."""
    return geo.product_part([y["factor0"][rows], y["factor1"][rows]], y["joint"][rows])


def factor_probe_weights(
    xt: np.ndarray, y: dict, train, alpha: float, degree: int = 1, gate: np.ndarray | None = None
) -> np.ndarray:
    """(D, m): ridge weights of probes for every degree-``degree`` monomial of each factor's belief
    (:func:`.geometry.factor_monomials`; degree 1 is the beliefs themselves, the probes whose outputs
    ``beyond_factors`` leaves unchanged; higher, the read-outs ``beyond_factor_poly`` keeps), fitted on
    the training half's features ``xt``. ``gate`` (the training half's (n, L, G) one-hot): each
    monomial times each gate column (:func:`.geometry.gated`), the read-outs ``beyond_factor_emitter``
    keeps."""
    rows = xt.reshape(-1, xt.shape[-1])
    parts = [geo.factor_monomials(y[f"factor{i}"][train], degree) for i in (0, 1)]
    if gate is not None:
        parts = [geo.gated(m, gate) for m in parts]
    target = np.concatenate(parts, axis=-1)
    return ridge_fit(rows, target.reshape(len(rows), -1), alpha).coef


def emitter_gate(hmm, tokens: np.ndarray) -> np.ndarray | None:
    """(N, L, F) one-hot of the factor that emitted each token (a phase in an interleaved stream); None
    where every token carries every factor (a product stream), so no read-out can differ by emitter."""
    layout = hmm.layout
    if layout is None or not layout.disjoint:
        return None
    return np.eye(layout.n_factors)[layout.token_owner[np.asarray(tokens)]]


def ablations(
    model,
    acts: dict[str, np.ndarray],
    y: dict,
    s,
    floor: float,
    n_random: int,
    seed: int,
    alpha: float = 1e-3,
    floor_test: float | None = None,
    poly_degree: int = 2,
) -> dict:
    """``{layer}/{cond}/{expected,greedy,interaction,removed,drop,dim}``, ``{layer}/{cond}/left_*`` for
    the non-random conditions, and ``none/...`` for one model. ``expected_test`` and ``removed_test``:
    the same on the held-out half of the sequences only (``floor_test`` its uniform floor; default
    ``floor``), where no basis was fitted."""
    floor_test = floor if floor_test is None else floor_test
    rng = np.random.default_rng(seed)
    # the joint conditions draw from their own stream, so that adding them left the factor
    # conditions' random subspaces, and every number reported before, as they were
    rng_joint = np.random.default_rng([seed, 1])
    rng_beyond = np.random.default_rng([seed, 2])
    rng_placebo = np.random.default_rng([seed, 3])
    rng_repair = np.random.default_rng([seed, 4])
    none = _policy_summary(s, hooked_forward(model, None, None, None), floor)
    out = {f"none/{k}": v for k, v in none.items() if k != "floor"}
    target = joint_only_on(y, s.train)  # a property of the stream: the same at every layer
    gate = emitter_gate(s.hmm, s.tokens)
    for hook, x in acts.items():
        if hook == FINAL:  # ln_final re-normalises: erase in the residual stream it reads instead
            continue
        xt = x[s.train]
        mu = xt.reshape(-1, xt.shape[-1]).mean(0)
        q = [geo.erasure_basis(xt, y[f"factor{i}"][s.train]) for i in (0, 1)]
        both = np.linalg.qr(np.concatenate(q, axis=1))[0]
        jo = geo.joint_only_basis(xt, target, both)
        joint = np.concatenate([both, jo], axis=1)  # orthonormal: jo is orthogonal to span(both)
        W = factor_probe_weights(xt, y, s.train, alpha)
        beyond = geo.beyond_probes_basis(xt, target, W)
        d = x.shape[-1]
        bases = {"factor0": [q[0]], "factor1": [q[1]], "both": [both], "joint_only": [jo], "joint": [joint]}
        bases["beyond_factors"] = [beyond]
        for name, k in (("random0", q[0]), ("random1", q[1]), ("random_both", both)):
            bases[name] = [geo.random_basis(d, k.shape[1], rng) for _ in range(n_random)]
        for name, k in (("random_joint_only", jo), ("random_joint", joint)):
            bases[name] = [geo.random_basis(d, k.shape[1], rng_joint) for _ in range(n_random)]
        k = beyond.shape[1]
        bases["random_beyond_factors"] = [geo.random_basis_outside(d, k, W, rng_beyond) for _ in range(n_random)]
        # placebo targets: the same construction fed noise, whose covariance with the features leans on
        # their high-variance directions just as a target the features do not hold does
        rows = len(xt.reshape(-1, d))
        noise = [rng_placebo.standard_normal((rows, max(jo.shape[1], beyond.shape[1], 1))) for _ in range(n_random)]
        bases["placebo_joint_only"] = [geo.joint_only_basis(xt, g[:, : jo.shape[1]], both) for g in noise]
        bases["placebo_beyond_factors"] = [geo.beyond_probes_basis(xt, g[:, : beyond.shape[1]], W) for g in noise]
        # re-paired targets: the real joint-only part with the factors' pairing broken, each draw
        # re-pairing the other factor in turn (the margins, heavy tails and position structure stay)
        fbs = [y["factor0"][s.train], y["factor1"][s.train]]
        repaired = [
            geo.repaired_product_part(fbs, r % 2, geo.derangement(len(xt), rng_repair)).reshape(rows, -1)
            for r in range(n_random)
        ]
        bases["repaired_joint_only"] = [geo.joint_only_basis(xt, z, both) for z in repaired]
        bases["repaired_beyond_factors"] = [geo.beyond_probes_basis(xt, z, W) for z in repaired]
        # held to each factor's polynomial read-outs, not only its linear probe's (no random draws: every
        # other condition's subspaces stay as they were)
        Wp = factor_probe_weights(xt, y, s.train, alpha, poly_degree)
        bases["beyond_factor_poly"] = [geo.beyond_probes_basis(xt, target, Wp)]
        bases["repaired_beyond_factor_poly"] = [geo.beyond_probes_basis(xt, z, Wp) for z in repaired]
        # held to each factor's linear read-outs within each phase (which factor just spoke), which a
        # policy that must read the next speaker's belief can use and a global probe does not keep
        if gate is not None:
            We = factor_probe_weights(xt, y, s.train, alpha, gate=gate[s.train])
            bases["beyond_factor_emitter"] = [geo.beyond_probes_basis(xt, target, We)]
            bases["repaired_beyond_factor_emitter"] = [geo.beyond_probes_basis(xt, z, We) for z in repaired]
        layer = layer_name(hook)
        for cond, qs in bases.items():
            runs = [_policy_summary(s, hooked_forward(model, hook, Q, mu), floor) for Q in qs]
            for k in ("expected", "greedy", "interaction"):
                vals = [r.get(k, float("nan")) for r in runs]
                out[f"{layer}/{cond}/{k}"] = float(np.mean(vals))
            out[f"{layer}/{cond}/removed"] = geo.removed_share(none["expected"], out[f"{layer}/{cond}/expected"], floor)
            out[f"{layer}/{cond}/drop"] = none["expected"] - out[f"{layer}/{cond}/expected"]
            out[f"{layer}/{cond}/expected_test"] = float(np.mean([r["expected_test"] for r in runs]))
            out[f"{layer}/{cond}/removed_test"] = geo.removed_share(
                none["expected_test"], out[f"{layer}/{cond}/expected_test"], floor_test
            )
            out[f"{layer}/{cond}/dim"] = float(qs[0].shape[1])
            if not cond.startswith("random"):
                left = erased_probes(x, qs[0], mu, y, s, alpha)
                out |= {f"{layer}/{cond}/{k}": v for k, v in left.items()}
    return out
