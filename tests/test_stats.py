"""The exact sign-flip test (rayexp.stats.sign_flip_p) against brute-force enumeration of sign patterns."""

import itertools
import math

import numpy as np
import pytest

from rayexp.stats import sign_flip_p


def _brute(x: np.ndarray) -> float:
    obs = abs(x.mean())
    flips = [abs((x * np.array(s)).mean()) for s in itertools.product((-1.0, 1.0), repeat=len(x))]
    return sum(f >= obs - 1e-12 for f in flips) / len(flips)


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme(n):
    rng = np.random.default_rng(n)
    for shift in (0.0, 0.5, 2.0):
        x = rng.normal(shift, 1.0, size=n)
        assert sign_flip_p(x) == pytest.approx(_brute(x))


def test_sign_flip_p_floor_and_edges():
    # every log ratio above 0: the floor 2 / 2^n, which 3 seeds cannot take below 0.25
    assert sign_flip_p([0.3, 0.5, 0.4]) == pytest.approx(0.25)
    assert sign_flip_p([0.3, 0.5, 0.4, 0.2, 0.6]) == pytest.approx(0.0625)
    assert sign_flip_p([0.3, -0.5, math.nan, 0.4]) == pytest.approx(_brute(np.array([0.3, -0.5, 0.4])))
    assert math.isnan(sign_flip_p([math.nan]))
