"""The sweep file's ``axes`` section: what varies between trials (grid values and sampled
distributions), split from :mod:`rayexp.settings`, which holds the trial's own sections.

A grid point is one trial per task, so a value listed twice would run the same trial twice under
one name (and count twice in every across-seed statistic): repeats are an error; repeats with new
seeds are a seed axis.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import Field, Strict, field_validator, model_validator

from models.config import StrictModel

MAX_TRIALS = 10_000  # trials of one sweep; validation checks each, and Tune keeps each one's state


class Distribution(StrictModel):
    """A sampled axis: exactly one of the keys."""

    # Strict(False): the YAML list [low, high] is the pair (each end stays strict and finite)
    uniform: Annotated[tuple[float, float], Strict(False)] | None = Field(default=None, description="[low, high].")
    loguniform: Annotated[tuple[float, float], Strict(False)] | None = Field(
        default=None, description="[low, high], log-uniform, low > 0."
    )
    randint: Annotated[tuple[int, int], Strict(False)] | None = Field(default=None, description="[low, high), ints.")
    choice: list[Any] | None = Field(default=None, min_length=1, description="Values drawn uniformly.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        set_keys = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice")
        lo_hi = getattr(self, set_keys[0])
        if set_keys[0] != "choice" and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"{set_keys[0]} needs low < high, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    def endpoints(self) -> list[Any]:
        """Values that bound what the distribution can produce, for validation."""
        if self.choice is not None:
            return list(self.choice)
        if self.randint is not None:
            return [self.randint[0], self.randint[1] - 1]
        return list(self.uniform or self.loguniform)  # type: ignore[arg-type]

    def draw(self, rng) -> Any:
        """One value, from a numpy Generator (the driver draws every trial's, seeded by the sweep)."""
        if self.uniform is not None:
            return float(rng.uniform(*self.uniform))
        if self.loguniform is not None:
            lo, hi = self.loguniform
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if self.randint is not None:
            return int(rng.integers(*self.randint))
        return self.choice[int(rng.integers(len(self.choice)))]


class Axes(StrictModel):
    """What varies between trials. Keys are dotted paths into the base trial, e.g. model.d_model."""

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Every combination is run.")
    sample: dict[str, Distribution] = Field(default_factory=dict, description="Drawn num_samples times.")
    num_samples: int = Field(
        default=1, ge=1, le=MAX_TRIALS, description="Repeats of the grid (each with fresh samples)."
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_and_distinct(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
            seen: dict[str, int] = {}
            for i, value in enumerate(values):
                try:
                    text = json.dumps(value, sort_keys=True, default=str)
                except TypeError:  # keys of mixed types cannot be sorted; the schema refuses them later
                    text = repr(value)
                if text in seen:
                    raise ValueError(
                        f"axis {key!r} lists {value!r} twice (at {seen[text]} and {i}): each value is a trial; "
                        "for repeats, add a seed axis"
                    )
                seen[text] = i
        return grid
