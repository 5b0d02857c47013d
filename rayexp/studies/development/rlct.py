"""Learning coefficients known in closed form: the known answers the LLC estimator is tested on.

- :func:`dln_rlct`: deep linear networks (products of matrices) with a true map of rank r, by
  Aoyagi's theorem (M. Aoyagi, "Consideration on the learning efficiency of multiple-layered neural
  networks with linear units", Neural Networks 172, 2024). With two matrices it is reduced-rank
  regression (Aoyagi & Watanabe 2005, four cases), which :func:`rrr_rlct` states separately so the
  two can check each other.
- :func:`normal_crossing_rlct`: K(w) = prod_i w_i^(2 k_i) at w = 0: lambda = min_i 1 / (2 k_i),
  multiplicity = how many i attain it (coordinates with k_i = 0 are flat and do not count).

Pure Python; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction


def dln_rlct(widths: Sequence[int], rank: int) -> float:
    """RLCT of x -> W_L ... W_1 x with layer widths ``widths`` = (input, hidden..., output), at a true
    map of rank ``rank`` (every width >= rank).

    Aoyagi's theorem: with M_j = H_j - r over all L + 1 widths, there is one subset S of l + 1 of
    them with max_S M < min_notS M, sum_S M >= l * max_S M and sum_S M < l * min_notS M. Then with
    m = ceil(sum_S M / l) and a = sum_S M - (m - 1) l,

        lambda = (r (H_1 + H_{L+1}) - r^2) / 2 + a (l - a) / (4 l)
                 - l (l - 1) / 4 * (sum_S M / l)^2 + 1/2 * sum_{i<j in S} M_i M_j.

    S is made of the smallest M's (first condition), so only prefixes of the sorted list are tried.
    Exact rational arithmetic, so an integer answer comes out as one.
    """
    widths = [int(h) for h in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths {widths}: at least an input and an output width, all >= 1")
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank {rank} must be in [0, min(widths) = {min(widths)}]")
    if len(widths) == 2:  # one matrix: a regular model on its H_1 * H_2 entries
        return widths[0] * widths[1] / 2
    ms = sorted(h - rank for h in widths)
    for size in range(2, len(ms) + 1):
        s, rest = ms[:size], ms[size:]
        ell, total = size - 1, sum(s)
        if rest and not max(s) < min(rest):
            continue
        if total >= ell * max(s) and (not rest or total < ell * min(rest)):
            break
    else:  # the theorem says this cannot happen
        raise AssertionError(f"no subset S satisfies Aoyagi's conditions for widths {widths}, rank {rank}")
    m = -(-total // ell)  # ceil
    a = total - (m - 1) * ell
    pairs = sum(s[i] * s[j] for i in range(len(s)) for j in range(i + 1, len(s)))
    lam = (
        Fraction(rank * (widths[0] + widths[-1]) - rank**2, 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        + Fraction(pairs, 2)
    )
    return float(lam)


def rrr_rlct(m: int, h: int, n: int, rank: int = 0) -> float:
    """Reduced-rank regression x (M) -> A (H x M) -> B (N x H), true rank r: Aoyagi & Watanabe's four cases.

    Case 1 (N + r <= M + H, M + r <= N + H, H + r <= M + N): with s = H + r,
    lambda = (2 s (M + N) - (M - N)^2 - s^2 + [M + H + N + r odd]) / 8;
    case 2 (M + H < N + r): (H M - H r + N r) / 2; case 3 (N + H < M + r): (H N - H r + M r) / 2;
    case 4 (M + N < H + r): M N / 2.
    """
    if m + h < n + rank:
        return (h * m - h * rank + n * rank) / 2
    if n + h < m + rank:
        return (h * n - h * rank + m * rank) / 2
    if m + n < h + rank:
        return m * n / 2
    s = h + rank
    return (2 * s * (m + n) - (m - n) ** 2 - s**2 + (m + h + n + rank) % 2) / 8


def normal_crossing_rlct(powers: Sequence[int]) -> tuple[float, int]:
    """(lambda, multiplicity) of K(w) = prod_i w_i^(2 k_i) at 0, with ``powers`` = (k_1, ..., k_d).

    The zeta function integral of K^z factorises over coordinates; coordinate i contributes a pole
    at z = -1 / (2 k_i). The largest pole is lambda, and its order (how many coordinates share it)
    the multiplicity.
    """
    ks = [int(k) for k in powers if k]
    if not ks or min(ks) < 0:
        raise ValueError(f"powers {list(powers)}: need at least one positive power, none negative")
    top = max(ks)
    return 1 / (2 * top), ks.count(top)
