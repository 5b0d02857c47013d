"""SGLD chains around a point w*, plain or RMSprop-preconditioned: the sampler of the LLC estimate.

Each step moves the weights by Langevin dynamics on minibatch gradients towards the localised,
tempered posterior exp(-nbeta L(w) - gamma/2 |w - w*|^2) (Lau et al. 2023, after Welling & Teh 2011):

    w <- w - eps/2 * G * (nbeta * grad L_b(w) + gamma * (w - w*)) + sqrt(eps * G) * N(0, 1)

with G = 1 (plain SGLD) or the diagonal RMSprop preconditioner G = 1 / (delta + sqrt(V)), V the
running mean of grad L_b^2 (decay alpha, bias-corrected as in Adam; Li et al. 2016 "pSGLD", as in
devinterp 2.x). The preconditioner scales each weight's step by the size of its gradient, so one eps
suits weights whose curvature differs by orders of magnitude (a singular model's flat and stiff
directions, a transformer's embeddings and MLPs); delta caps the gain at 1 / delta where gradients
vanish.

**V adapts during the burn-in and is frozen for the draws.** With G tied to where the chain has just
been, the dynamics are no longer Langevin for the target (pSGLD drops the correction term that would
make them so), and the bias is large where the gradient scale changes across the posterior: on the
normal-crossing potential w1^2 w2^6 the always-adapting sampler gave 0.24 for a tempered truth of
0.148 (+60 %); with G frozen after the burn-in it gave 0.16, and 0.229 for 0.220 on w1^2 w2^4
(8 chains x 6000 draws). A constant G is an exact preconditioned Langevin sampler, whatever its value,
up to the discretisation; the burn-in is when it learns the scale (as Stan adapts its mass matrix
in warm-up).

Written here rather than taken from devinterp (1.3.2 has no frozen preconditioner; its sampler is
callback-driven and several times slower on the small models of the known answers): the chains,
burn-in, batch order and seeds are what the estimate and its convergence statistic are defined on,
so they are owned and tested here. torch is imported inside functions, so the analysis registry
stays torch-free.

Devices: the chains run where the model's parameters are (its state, drift and preconditioner stay
there); the noise is drawn from a CPU generator and moved to them, so a chain's noise is a function of
its seed alone: the same numbers on every device (and on the CPU the numbers this sampler always
drew), and a GPU estimate differs from a CPU one by the gradients' float rounding, not by Monte Carlo.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

LossFn = Callable[[Any, Any], Any]  # (model, batch) -> scalar torch tensor


@dataclass(frozen=True)
class SGLDSettings:
    """How the chains are run: one setting per study, never chosen per trial or per checkpoint."""

    lr: float  # eps, the step size
    localization: float  # gamma, the pull back to w*
    nbeta: float  # n * beta, the inverse temperature
    num_chains: int = 4
    num_burnin: int = 200  # steps per chain before the first draw (not part of the estimate)
    num_draws: int = 400  # draws per chain (one SGLD step each)
    preconditioner: Literal["identity", "rmsprop"] = "rmsprop"
    rms_alpha: float = 0.99  # decay of the running mean of squared gradients (burn-in only)
    rms_delta: float = 1e-4  # added to sqrt(V): caps the preconditioner at 1 / delta where gradients vanish
    seed: int = 0  # chain i's noise comes from SeedSequence(seed).spawn(num_chains)[i]

    def replace(self, **changes) -> SGLDSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_params(cls, params, **overrides) -> SGLDSettings:
        """The setting a study's params section states (any object with these fields), ``overrides`` on top."""
        fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(cls)}
        return cls(**(fields | overrides))


def batch_order(settings: SGLDSettings, n_batches: int) -> np.ndarray:
    """(D,) the batch each draw is taken on: step i uses batch i mod n_batches, draws follow the burn-in.

    Every chain visits the batches in this one order, so the starting point's loss on the same
    batches (:func:`sample`'s ``init_trace``) pairs with every draw and batch noise cancels.
    """
    return (settings.num_burnin + np.arange(settings.num_draws)) % n_batches


def _chain_seeds(settings: SGLDSettings) -> list[int]:
    children = np.random.SeedSequence(settings.seed).spawn(settings.num_chains)
    return [int(c.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1)) for c in children]


def sample(model, loss_fn: LossFn, batches: Sequence, settings: SGLDSettings) -> tuple[np.ndarray, np.ndarray]:
    """Run the chains from ``model``'s weights; the model is left as it was.

    Returns ``(traces, init_trace)``: (C, D) the loss of every draw on its batch, and (D,) the
    starting point's loss on the same batches. A chain whose loss becomes non-finite is stopped and
    its remaining draws are +inf, so a diverging setting shows in the traces instead of raising.
    """
    import torch

    batches = list(batches)
    if not batches:
        raise ValueError("sample needs at least one batch")
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()  # dropout off: the loss is a function of the weights alone
    which = batch_order(settings, len(batches))
    s = settings
    with torch.no_grad():
        per_batch = {int(i): float(loss_fn(model, batches[i])) for i in np.unique(which)}
    init_trace = np.array([per_batch[int(i)] for i in which])
    traces = np.full((s.num_chains, s.num_draws), math.inf)
    total = s.num_burnin + s.num_draws
    if s.preconditioner == "rmsprop" and s.num_burnin < 1:
        raise ValueError("the RMSprop preconditioner is learnt during the burn-in: num_burnin must be >= 1")
    sizes = [p.numel() for p in params]
    try:
        for c, seed in enumerate(_chain_seeds(s)):
            gen = torch.Generator().manual_seed(seed)  # on the CPU whatever the device: the same noise everywhere
            state = _State([torch.zeros_like(p) for p in params], None)
            for step in range(total):
                with torch.enable_grad():
                    loss = loss_fn(model, batches[step % len(batches)])
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                value = float(loss.detach())
                if not math.isfinite(value):
                    break
                if step >= s.num_burnin:
                    traces[c, step - s.num_burnin] = value
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
                with torch.no_grad():
                    _step(params, grads, start, state, step, s, gen, sizes)
            with torch.no_grad():
                torch._foreach_copy_(params, start)  # the next chain starts at w* too
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, start)
        model.train(was_training)
    return traces, init_trace


@dataclass
class _State:
    sq: list  # V: running mean of squared gradients, per parameter tensor
    frozen: list | None  # G once the burn-in is over


def _preconditioner(state: _State, grads, step: int, s: SGLDSettings) -> list:
    """G = 1 / (delta + sqrt(V)), V updated during the burn-in and frozen after it."""
    import torch

    if state.frozen is not None:
        return state.frozen
    torch._foreach_mul_(state.sq, s.rms_alpha)
    torch._foreach_addcmul_(state.sq, grads, grads, value=1 - s.rms_alpha)
    g = torch._foreach_sqrt(torch._foreach_div(state.sq, 1 - s.rms_alpha ** (step + 1)))  # Adam's bias correction
    torch._foreach_add_(g, s.rms_delta)
    torch._foreach_reciprocal_(g)
    if step + 1 == s.num_burnin:
        state.frozen = g
    return g


def _step(params, grads, start, state: _State, step: int, s: SGLDSettings, gen, sizes: list[int]) -> None:
    """One SGLD update of every parameter in place (torch's foreach kernels: one call per operation
    over all tensors, since per-tensor Python loops cost as much as the forward pass on small models)."""
    import torch

    drift = torch._foreach_mul(grads, s.nbeta)  # nbeta * grad + gamma * (w - w*)
    torch._foreach_add_(drift, torch._foreach_mul(torch._foreach_sub(params, start), s.localization))
    flat = torch.randn(sum(sizes), generator=gen, dtype=params[0].dtype).to(params[0].device)  # a CPU gen's draw
    noise = [n.view_as(p) for n, p in zip(flat.split(sizes), params, strict=True)]
    if s.preconditioner == "rmsprop":
        g = _preconditioner(state, grads, step, s)
        torch._foreach_mul_(drift, g)
        torch._foreach_mul_(noise, torch._foreach_sqrt(torch._foreach_mul(g, s.lr)))
    else:
        torch._foreach_mul_(noise, math.sqrt(s.lr))
    torch._foreach_add_(params, drift, alpha=-0.5 * s.lr)
    torch._foreach_add_(params, noise)
