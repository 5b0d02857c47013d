"""What one trial's model and stream let the reweighting fit resolve: planted policies, scored by the
same fit as the post-RL policy (docs/design.md §4.1), on the same sequences.

The share a map of p_pre leaves unexplained is not in the same units from stream to stream or model to
model. A policy that acts composed a quarter of the time leaves 0.37-0.48 of its deviation to a map of an
exact model's p_pre on the PPO pairs' interleaves, and 0.33 on Mess3 x Z1R with a model that errs by
0.03 (where a fixed cap of 0.35 called it reweighting); a planted *sharp reweighting* leaves 0.00 with an
exact model and 0.07-0.58 with an imperfect one (the fit is coarse at twice the model's error). So each
trial scores five planted policies on its own pretrained model:

- ``sharp``: p_pre on the action tokens sharpened at :data:`BETA` (a reweighting by construction);
- ``quarter``: ``ALPHA * joint + (1 - ALPHA) * sharp``, the Bayes joint-target policy a quarter of the
  time (composed a quarter of the time);
- ``composed``: the Bayes joint-target policy itself (its argmax; ties by index). The joint target is the
  stream's composition task whatever the trial's reward: a negative control (next token) is asked the
  same question as its pair's positive control (:func:`joint_onto_actions`);
- ``soft``: the joint target's Bayes probabilities themselves, the softest composition: the J of the
  residual bound (:func:`.projection.share_max`), which no mass bound reaches;
- ``soft_quarter``: ``ALPHA * soft + (1 - ALPHA) * sharp``, the Bayes probabilities a quarter of the time.

The *bar* is halfway between what ``sharp`` leaves and the lesser of what ``quarter`` and ``soft_quarter``
leave, per held-out sequence. A soft composition spends less probability mass per step than a sharp one,
so ``soft_quarter`` usually leaves less: a bar built from ``quarter`` alone let the battery's soft quarter
through as a reweighting on redraws 1 and 2 of its Mess3 interleaves with a leaky model (c136ccb's
predictions, docs/results/composition.md), where its greedy choices are sharpened p_pre's and the reward
test cannot see it. A reweighting
verdict then needs the post-RL policy to leave clearly less than the bar: nearer a planted reweighting
than a planted quarter-composed policy, on this trial's own stream, model and sequences. Halfway, not at
``quarter`` itself, because a quarter mixture over another reweighting (argmax, a nonlinear map) leaves
0.62-1.6 times what ``quarter`` does (measured on the battery's draws; :mod:`.battery` plants them).
Where ``composed`` itself leaves less than ``u_max`` (a product stream, whose joint target is a map of
p_pre), composition is not visible to the fit and the bar does not apply (:mod:`.verdict`).

The bar says whether a policy is nearer a reweighting than a quarter composition; :func:`composed_share_max`
says how much composition a policy can hold at most. The map is linear in the policy it is fitted to
(each held-out prediction is a mean of training policies, chosen by p_pre alone), so for a mixture
``pi = a J + (1 - a) b`` of the joint-target policy ``J`` and any policy ``b`` its residual is
``a r_J + (1 - a) r_b``, and by the triangle inequality the mass it leaves is at least
``a m_J - (1 - a) m_b``. Where the map resolves ``b`` at least as well as it resolves the planted sharp
reweighting (``m_b <= m_sharp``), ``a <= (m_pi + m_sharp) / (m_J + m_sharp)``: exact, no calibration.
"""

from __future__ import annotations

import numpy as np

from rayexp.stats import ratio_values
from rayexp.studies.composition import classes

#: the planted mixture's composed share
ALPHA = 0.25
#: the planted reweighting's sharpening (the battery's graded mixtures use the same)
BETA = 10.0
#: scores this close to the maximum are a tie, broken toward the lowest index
TIE = 1e-9
PLANTED = ("sharp", "quarter", "composed", "soft", "soft_quarter")


def onehot_argmax(scores: np.ndarray) -> np.ndarray:
    """The argmax as a one-hot policy, exact ties broken by index. A tie (on products with Z1R: 12 % of
    steps for group sums, 23 % for p_pre itself, where Z1R's next bit is a coin) is otherwise broken by
    rounding noise of order 1e-17, a "map" of bits no model carries and no fit at any resolution can
    read; the battery once called a planted argmax of group sums composition for that reason."""
    top = scores >= scores.max(-1, keepdims=True) - TIE
    return np.eye(scores.shape[-1])[np.argmax(top, -1)]


def sharpen(p_act: np.ndarray, beta: float) -> np.ndarray:
    """softmax(beta * log p) along the last axis: ``p_act`` (..., A) sharpened (beta > 1) or flattened."""
    return classes.softmax(beta * np.log(np.asarray(p_act, dtype=np.float64) + 1e-12))


def joint_onto_actions(P_joint: np.ndarray, n_actions: int) -> np.ndarray:
    """(N, L, n_actions): the joint target's probabilities ``P_joint`` (N, L, m) placed on a task's own
    action tokens, target k on action k mod n_actions. On a joint-target task they are its own; on
    another task of the same stream (a next-token negative control) the planted composed policy still
    needs both factors at one step, which is all the bar asks of it."""
    P_joint = np.asarray(P_joint, dtype=np.float64)
    out = np.zeros((*P_joint.shape[:-1], n_actions))
    for k in range(P_joint.shape[-1]):
        out[..., k % n_actions] += P_joint[..., k]
    return out


def planted_policies(p_act: np.ndarray, P: np.ndarray, alpha: float = ALPHA, beta: float = BETA) -> dict:
    """{name: (N, L, A) policy} of :data:`PLANTED`, from the pretrained model's distribution on the action
    tokens ``p_act`` (N, L, A) and the exact joint-target probabilities ``P`` (N, L, A)."""
    sharp, joint = sharpen(p_act, beta), onehot_argmax(P)
    soft = np.asarray(P, dtype=np.float64)
    return {
        "sharp": sharp,
        "quarter": alpha * joint + (1 - alpha) * sharp,
        "composed": joint,
        "soft": soft,
        "soft_quarter": alpha * soft + (1 - alpha) * sharp,
    }


def planted_values(
    p_pre: np.ndarray,
    p_act: np.ndarray,
    P: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    resolution: float = classes.MIN_RESOLUTION,
) -> dict[str, np.ndarray]:
    """Per held-out sequence (n_test,): the share a map of ``p_pre`` (N, L, V), fitted at ``resolution``,
    leaves unexplained of each planted policy (``u_{name}``), that probability mass per step itself
    (``tv_{name}``), and ``bar``, halfway between ``u_sharp`` and the lesser of ``u_quarter`` and
    ``u_soft_quarter``; and each residual itself,
    (n_test, L, A) (``r_{name}``, the residual bound's inputs)."""
    out = {}
    for name, pi in planted_policies(p_act, P).items():
        fit = classes.reweighting_fit(p_pre, pi, train, test, resolution)
        out[f"u_{name}"] = classes.unexplained_values(pi[test], fit, classes.position_policy(pi, train, test))
        out[f"tv_{name}"] = classes.tv(pi[test], fit).mean(-1)
        out[f"r_{name}"] = pi[test] - fit
    out["bar"] = 0.5 * (out["u_sharp"] + np.minimum(out["u_quarter"], out["u_soft_quarter"]))
    return out


def capped(share):
    """A share bound capped at 1 (1 excludes nothing), NaN kept: Python's ``min(1.0, nan)`` is 1.0, which
    would read a missing bound as "nothing excluded"."""
    return np.minimum(1.0, share)


def composed_share_max(tv_policy: np.ndarray, tv_rest: np.ndarray, tv_composed: np.ndarray) -> np.ndarray:
    """Per held-out sequence, linearised so that the mean is the ratio of the sums (one policy, one share, so
    its mass is the mean over sequences; over seeds, each its own policy, :func:`.bounds.share_bound`): the
    largest share ``a`` of a mixture ``a J + (1 - a) b`` consistent with what the map leaves of the policy
    (``tv_policy``, mass per step), where ``J`` is the planted composed policy (leaving ``tv_composed``)
    and the map leaves of ``b`` no more than ``tv_rest``: the planted sharp reweighting's (a rest
    resolved as well as sharpened p_pre) or the shuffled-reward null's (a rest that drifts as PPO does
    without the task's reward). ``(m_pi + m_rest) / (m_J + m_rest)``, derived in the module docstring.
    Above 1 nothing is excluded: on a product stream ``J`` is itself nearly a map of p_pre."""
    t_pi, t_b = np.asarray(tv_policy, dtype=np.float64), np.asarray(tv_rest, dtype=np.float64)
    return ratio_values(t_pi + t_b, np.asarray(tv_composed, dtype=np.float64) + t_b)
