"""The toy model of superposition (TMS), its supervised trainer, and the PPO policy around it (torch).

The model (Elhage et al. 2022; Chen et al. 2023): x_hat = ReLU(W^T W x + b), W in R^{m x F}, b in R^F,
with F features squeezed through m hidden dimensions (default F = 6, m = 2). Its parameters are
(W, b) and nothing else, so the LLC of a checkpoint is the LLC of (W, b).

- :class:`TMS`, :func:`init_tms` (W ~ N(0, init_scale^2) entrywise, b = 0, from a seed: both arms of
  a seed start from these weights);
- :func:`mse` (the supervised loss E||x_hat - x||^2, summed over features, mean over the batch) and
  :func:`exact_loss` (the same expectation in closed form for ``one_hot`` data, Chen et al.'s
  high-sparsity limit: x = lambda e_i, i uniform, lambda ~ U[0, 1]; piecewise-quadratic integrals);
- :func:`k_count` (columns of W with norm > 0.5: features the model represents; Chen et al.'s k of a
  k-gon) and :func:`phase_label` (k with the sign of each unrepresented feature's bias, "5+" or "4+-");
- :func:`train_supervised` (Adam on fresh minibatches, checkpoints at given steps);
- :class:`TMSPolicy` (the PPO policy: a Gaussian with mean x_hat(x), a fixed or learned log-std, and a
  value MLP on x that shares nothing with W, b). The RLlib module around it is in
  ``rayexp/studies/development/tms_rl.py`` (RLlib stays out of ``models/`` but ``rl_module.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class TMS(nn.Module):
    """x_hat = ReLU(W^T W x + b), batched over the leading dimension of x."""

    def __init__(self, n_features: int = 6, n_hidden: int = 2):
        super().__init__()
        self.n_features, self.n_hidden = int(n_features), int(n_hidden)
        self.W = nn.Parameter(torch.zeros(self.n_hidden, self.n_features))
        self.b = nn.Parameter(torch.zeros(self.n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W.T @ self.W + self.b)  # (B, F)

    def weights(self) -> dict[str, np.ndarray]:
        """(W, b) as float64 numpy copies: what a checkpoint stores."""
        return {"W": self.W.detach().double().cpu().numpy().copy(), "b": self.b.detach().double().cpu().numpy().copy()}

    def load_weights(self, W, b) -> TMS:
        with torch.no_grad():
            self.W.copy_(torch.as_tensor(np.asarray(W), dtype=self.W.dtype))
            self.b.copy_(torch.as_tensor(np.asarray(b), dtype=self.b.dtype))
        return self


def init_tms(n_features: int, n_hidden: int, seed: int, init_scale: float = 0.1) -> TMS:
    """W ~ N(0, init_scale^2) entrywise, b = 0, drawn from ``seed`` alone (the same for every arm)."""
    model = TMS(n_features, n_hidden)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        model.W.copy_(init_scale * torch.randn(n_hidden, n_features, generator=gen))
    return model


def from_weights(W, b) -> TMS:
    W = np.asarray(W)
    return TMS(W.shape[1], W.shape[0]).load_weights(W, b)


def mse(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||x_hat - x||^2 (summed over features): the supervised loss, and minus the
    reward of acting with the policy's mean."""
    return ((model(x) - x) ** 2).sum(-1).mean()


def _integral_sq(c: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """int_lo^hi (c t + d)^2 dt, elementwise (0 where hi <= lo)."""
    hi = np.maximum(hi, lo)
    return c * c * (hi**3 - lo**3) / 3 + c * d * (hi**2 - lo**2) + d * d * (hi - lo)


def exact_loss(W, b) -> float:
    """E||x_hat - x||^2 for ``one_hot`` data, in closed form.

    For x = lambda e_i the output is ReLU(lambda a_ij + b_j) with a = W^T W, and the loss is
    sum_j int_0^1 (ReLU(lambda a_ij + b_j) - lambda delta_ij)^2 d lambda, averaged over i. Each term
    is the integral of a quadratic over the interval where a_ij lambda + b_j > 0 plus that of
    (lambda delta_ij)^2 over the rest.
    """
    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a = W.T @ W  # (F, F): row i is what feature i writes into every output j
    F = a.shape[0]
    bj = np.broadcast_to(b, (F, F))
    t = np.eye(F)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.where(a != 0, -bj / a, np.nan)
    zero, one = np.zeros((F, F)), np.ones((F, F))
    # active interval [lo, hi] of lambda in [0, 1] where a lambda + b > 0
    lo = np.where(a > 0, np.clip(root, 0, 1), 0.0)
    hi = np.where(a < 0, np.clip(root, 0, 1), 1.0)
    flat = a == 0
    lo = np.where(flat, 0.0, lo)
    hi = np.where(flat, np.where(bj > 0, 1.0, 0.0), hi)
    active = _integral_sq(a - t, bj, lo, hi)
    inactive = _integral_sq(t, zero, zero, one) - _integral_sq(t, zero, lo, hi)
    return float((active + inactive).sum() / F)


def k_count(W, threshold: float = 0.5) -> int:
    """Columns of W with norm above ``threshold``: the features the model represents (the k of a k-gon)."""
    return int((np.linalg.norm(np.asarray(W), axis=0) > threshold).sum())


def phase_label(W, b, threshold: float = 0.5) -> str:
    """k followed by the sign of each unrepresented feature's bias, sorted (+ first): e.g. "5+", "4+-".

    Chen et al. label the critical points of TMS this way: an unrepresented feature with b > 0 outputs
    the constant b (its best constant is E x_i), one with b <= 0 outputs 0.
    """
    W, b = np.asarray(W), np.asarray(b)
    dead = np.linalg.norm(W, axis=0) <= threshold
    signs = sorted("+" if v > 0 else "-" for v in b[dead])
    return f"{int((~dead).sum())}{''.join(signs)}"


@dataclass(frozen=True)
class SupervisedSettings:
    steps: int = 4000
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0  # the data stream's seed


def train_supervised(
    model: TMS,
    data: Callable[[int, np.random.Generator], np.ndarray],
    settings: SupervisedSettings,
    save_at: Sequence[int],
    on_checkpoint: Callable[[int, TMS], None] | None = None,
) -> list[dict]:
    """Adam on fresh minibatches ``data(batch_size, rng)``; returns ``[{"step", "W", "b"}]`` at ``save_at``.

    Step 0 is the starting point; a checkpoint at step s holds the weights after s updates.
    ``on_checkpoint(step, model)`` is called at each (progress lines, metrics).
    """
    save = sorted({int(s) for s in save_at})
    if save and (save[0] < 0 or save[-1] > settings.steps):
        raise ValueError(f"checkpoint steps must lie in 0..{settings.steps}; got {save[0]}..{save[-1]}")
    rng = np.random.default_rng(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    out, want = [], set(save)

    def keep(step: int) -> None:
        out.append({"step": step, **model.weights()})
        if on_checkpoint is not None:
            on_checkpoint(step, model)

    if 0 in want:
        keep(0)
    for step in range(1, settings.steps + 1):
        x = torch.from_numpy(data(settings.batch_size, rng))
        loss = mse(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in want:
            keep(step)
    return out


class TMSPolicy(nn.Module):
    """A Gaussian policy N(x_hat(x), diag sigma^2) on the TMS, and a value MLP on x beside it.

    ``tms`` holds W, b (the LLC's parameters). ``log_std`` is a parameter when ``learn_std`` else a
    buffer, initialised to ``log_std``. The value MLP reads x itself, so the value loss never moves
    W or b and the policy's weights are the TMS's alone.
    """

    def __init__(
        self, n_features: int, n_hidden: int, log_std: float = -2.0, learn_std: bool = False, value_hidden: int = 64
    ):
        super().__init__()
        self.tms = TMS(n_features, n_hidden)
        init = torch.full((n_features,), float(log_std))
        if learn_std:
            self.log_std = nn.Parameter(init)
        else:
            self.register_buffer("log_std", init)
        self.value = nn.Sequential(nn.Linear(n_features, value_hidden), nn.Tanh(), nn.Linear(value_hidden, 1))

    def dist_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2F): the mean, then the log-std (RLlib's diagonal-Gaussian layout)."""
        mean = self.tms(x)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x).squeeze(-1)  # (B,)
