"""The welfare study's across-seed readings (issue 22): steering effect against a control, and
cos(v_R, v_P) against its shuffled-label null, paired by seed."""

import numpy as np
import pytest

from rayexp.studies.welfare import concepts as cv


def test_effect_against_control_ratio_and_difference():
    from scipy import stats

    from rayexp.studies.welfare.summary import effect_vs_control

    got = effect_vs_control([0.2, 0.4, 0.3], [0.02, 0.04, 0.03])
    assert got["ratio"] == pytest.approx((10.0, 10.0, 10.0))  # the same ratio in every seed
    diffs = np.array([0.18, 0.36, 0.27])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert got["diff"] == pytest.approx((0.27, 0.27 - half, 0.27 + half))
    # a 10x and a 0.1x seed: the geometric mean is 1x (an arithmetic mean of ratios would say 5x)
    assert effect_vs_control([1.0, 0.1], [0.1, 1.0])["ratio"][0] == pytest.approx(1.0)
    # a zero control leaves that seed out of the ratio, not of the difference
    z = effect_vs_control([0.2, 0.4, 0.3], [0.02, 0.0, 0.03])
    assert z["ratio"][0] == pytest.approx(10.0) and z["diff"][0] == pytest.approx(np.mean([0.18, 0.4, 0.27]))
    with pytest.raises(ValueError, match="one value per seed"):
        effect_vs_control([0.1], [0.1, 0.2])


def test_cos_reading_reads_the_mean_over_seeds_against_the_nulls_mean_paired_by_seed():
    from rayexp.studies.welfare.summary import cos_reading

    lo, hi = [-0.6] * 5, [0.97] * 5
    # README's pre-RL +0.58, band [-0.6, +0.97], each seed about its own null's mean
    inside = cos_reading([0.52, 0.66, 0.55, 0.60, 0.57], lo, hi, [0.60, 0.55, 0.62, 0.52, 0.60])
    assert inside["reading"].endswith("no sign claim)") and inside["reading"].startswith("not antiparallel")
    assert inside["seeds"] == {"below": 0, "inside": 5, "above": 0}
    assert inside["band"] == pytest.approx((-0.6, 0.97)) and inside["null"] == pytest.approx(0.578)
    assert inside["minus_null"][0] == pytest.approx(0.002) and inside["minus_null"][1] < 0 < inside["minus_null"][2]
    # five seeds at -0.30, each inside its band but all far below the null's mean of +0.5: antiparallel
    # (read against one seed's band, a mean over five seeds could never leave it)
    tight = cos_reading([-0.30, -0.35, -0.25, -0.28, -0.32], lo, hi, [0.5] * 5)
    assert tight["reading"] == "antiparallel (below the shuffled-label null)" and tight["seeds"]["inside"] == 5
    below = cos_reading([-0.9, -0.85, -0.95, -0.92, -0.88], lo, hi, [0.5] * 5)
    assert below["reading"].startswith("antiparallel") and below["seeds"]["below"] == 5
    above = cos_reading([0.99, 0.995, 0.98, 0.99, 0.985], [0.1] * 5, [0.9] * 5, [0.5] * 5)
    assert above["reading"] == "not antiparallel; same-signed beyond the shuffled-label null"
    straddle = cos_reading([-0.9, -0.2, -0.7, 0.1, -0.5], lo, hi, [0.5] * 5)  # below the null, sign not shown
    assert straddle["reading"] == "undecided (below the shuffled-label null, not shown negative)"
    wide = cos_reading([-0.8, 0.9, 0.5, -0.7, 0.6], lo, hi, [0.1] * 5)  # the null's, but reaching below the band
    assert wide["reading"].startswith("undecided (the interval reaches below")
    with pytest.raises(ValueError, match="per seed"):
        cos_reading([0.1, 0.2], lo[:2], hi[:2], [0.5])


def _planted_seeds(strength: float, p_sign: float, seeds) -> list[list[float]]:
    """(cos, q025, q975, null mean) per seed, as the analysis logs them, on low-rank activations (the
    shuffled-label band is then nearly [-1, +1], as after RL) with ``strength`` * u added to the
    rewarded rows and ``p_sign * strength`` * u to the punished ones."""
    d, n = 12, 300
    out = []
    for s in seeds:
        rng = np.random.default_rng(s)
        basis = np.linalg.qr(rng.standard_normal((d, 2)))[0]
        labels = rng.permutation(np.repeat([cv.REWARDED, cv.PUNISHED, cv.NEUTRAL], n // 3))
        sign = np.select([labels == cv.REWARDED, labels == cv.PUNISHED], [1.0, p_sign], 0.0)
        acts = strength * sign[:, None] * basis[:, 0] + rng.standard_normal((n, 2)) @ basis.T
        null = cv.shuffled_cosines(acts, labels, 200, seed=s)
        out.append((cv.cosine(*cv.concept_vectors(acts, labels)), *np.quantile(null, [0.025, 0.975]), null.mean()))
    return [list(x) for x in zip(*out)]


def test_cos_reading_finds_a_planted_sign_that_no_single_seeds_band_shows():
    from rayexp.studies.welfare.summary import cos_reading

    anti = cos_reading(*_planted_seeds(0.4, -1.0, range(5)))
    assert anti["cos"][2] < -0.5 and anti["seeds"]["inside"] >= 4  # clearly antiparallel; most seeds in band
    assert anti["reading"] == "antiparallel (below the shuffled-label null)"
    same = cos_reading(*_planted_seeds(0.3, 1.0, range(5)))
    assert same["cos"][1] > 0.5 and same["seeds"]["above"] == 0  # no seed leaves a band reaching +1
    assert same["reading"] == "not antiparallel; same-signed beyond the shuffled-label null"
    null = cos_reading(*_planted_seeds(0.0, -1.0, range(5)))  # labels that carry nothing
    assert null["minus_null"][1] < 0 < null["minus_null"][2]
    assert null["reading"] == "not antiparallel (not beyond the shuffled-label null: no sign claim)"


def test_welfare_report_reads_controls_and_cosines_per_seed():
    from types import SimpleNamespace

    from rayexp.stats import t_ci
    from rayexp.studies.welfare.report import control_rows, cos_rows
    from rayexp.studies.welfare.summary import cell

    pre = "analysis/concept_vectors/"
    h = "blocks.1.hook_resid_post"

    def run(effect, ctrl, cos, cos_post, null_post):
        m = {f"{pre}steer/post/v_P/effect": effect, f"{pre}steer/post/v_P/control/shuffled": ctrl}
        m |= {f"{pre}cos/pre/{h}": cos, f"{pre}cos/post/{h}": cos_post}
        m |= {f"{pre}null/{model}/{h}/q025": -0.6 for model in ("pre", "post")}
        m |= {f"{pre}null/{model}/{h}/q975": 0.97 for model in ("pre", "post")}
        m |= {f"{pre}null/pre/{h}/mean": 0.5, f"{pre}null/post/{h}/mean": null_post}
        return SimpleNamespace(data=SimpleNamespace(metrics=m))

    # after RL each seed's cosine and its own null's mean differ from before, and from the other seed's
    runs = [run(0.2, 0.1, 0.5, -0.3, 0.45), run(0.4, 0.2, 0.6, -0.35, 0.55)]
    runs.append(SimpleNamespace(data=SimpleNamespace(metrics={})))
    (row,) = control_rows(runs)  # only the control these runs hold
    assert row["vector"] == "v_P" and row["control"] == "shuffled" and row["seeds"] == 2
    assert row["ratio (geometric mean)"].startswith("2.0 [2.0, 2.0]")
    rows = cos_rows(runs)
    assert [r["model"] for r in rows] == ["pre", "post"] and rows[0]["seeds below/inside/above"] == "0/2/0"
    assert rows[0]["reading"].startswith("not antiparallel")
    assert rows[0]["shuffled-label null mean"] == "+0.50" and rows[0]["cos - null mean (paired)"].startswith("+0.050 [")
    assert row["difference"] == cell(t_ci([0.2 - 0.1, 0.4 - 0.2]))  # effect - control, seed by seed
    assert rows[0]["cos(v_R, v_P)"] == cell(t_ci([0.5, 0.6]))  # pre's own cosines, not post's
    assert rows[1]["cos(v_R, v_P)"] == cell(t_ci([-0.3, -0.35]))
    assert rows[1]["shuffled-label null mean"] == "+0.50"
    # each seed's post cosine against its own post null: -0.75 and -0.90 (crossed: -0.85, -0.80)
    assert rows[1]["cos - null mean (paired)"] == cell(t_ci([-0.3 - 0.45, -0.35 - 0.55]))
    assert rows[1]["reading"].startswith("undecided (the interval reaches below")  # 2 seeds: t interval wide
