"""wmhseg's statistics against R (lme4 1.1-31, lmerTest 3.1-3, survival 3.5-3) on two committed cohorts.

The references are tests/data/r/<cohort>_reference.json, written by ``Rscript tests/r/fit_models.R``
from tests/data/r/<cohort>_{volumes,clinical}.csv (simulated by tests/r/make_cohorts.py); R is needed
only to regenerate them. Tolerances: estimates 1e-6 relative (relative to the larger of the estimate
and its standard error, since an estimate near zero has no relative precision), standard errors 0.1%,
Satterthwaite df 1%, p-values 2% relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wmhseg.stats import AnalysisSettings, run_analysis
from wmhseg.stats.models import MODEL_NAMES
from wmhseg.stats.tables import read_table

DATA = Path(__file__).parent / "data" / "r"
COHORTS = ("cohort360", "cohort30")


def load(name: str):
    ref = json.loads((DATA / f"{name}_reference.json").read_text())
    result = run_analysis(
        read_table(DATA / f"{name}_volumes.csv", name="volume table"),
        read_table(DATA / f"{name}_clinical.csv", name="clinical table"),
        AnalysisSettings(figures=False),
    )
    return ref, result


@pytest.fixture(scope="module", params=COHORTS)
def cohort(request):
    return load(request.param)


def close(got: float, want: float, rtol: float) -> bool:
    return abs(got - want) <= rtol * abs(want)


def test_every_fixed_effect_matches_lmertest(cohort):
    ref, result = cohort
    for name, fit in result.fits.items():
        r = ref["mixed"][name]
        assert (fit.n_obs, fit.n_subjects) == (r["n_obs"], r["n_subjects"]), name
        assert set(fit.params.index) == set(r["terms"]), name
        assert fit.reml_deviance == pytest.approx(r["reml_deviance"], rel=1e-9, abs=1e-7)
        for term, want in r["terms"].items():
            e = fit.estimate(term)
            assert abs(e.estimate - want["estimate"]) <= 1e-6 * max(abs(want["estimate"]), want["std_err"]), term
            assert close(e.std_err, want["std_err"], 1e-3), (name, term, e.std_err, want["std_err"])
            assert close(e.df, want["df"], 1e-2), (name, term, e.df, want["df"])
            assert close(e.p_value, want["p_value"], 2e-2), (name, term, e.p_value, want["p_value"])


def test_short_minus_long_contrast_matches_contest1d(cohort):
    ref, result = cohort
    want = ref["mixed"][MODEL_NAMES["wmh_progression_short_vs_long"]]["contrast"]
    got = result.headline["wmh_progression_short_vs_long"]
    assert abs(got.estimate - want["estimate"]) <= 1e-6 * abs(want["estimate"])
    assert close(got.std_err, want["std_err"], 1e-3)
    assert close(got.df, want["df"], 1e-2)
    assert close(got.p_value, want["p_value"], 2e-2)


def test_headline_json_values_are_lmertest_values(cohort):
    ref, result = cohort
    head = result.headline_dict()
    m3 = ref["mixed"][MODEL_NAMES["alsfrs_per_500mm3_wmh"]]["terms"]["wmh_mm3"]
    assert head["alsfrs_per_500mm3_wmh"]["estimate"] == pytest.approx(500 * m3["estimate"], rel=1e-6)
    assert head["alsfrs_per_500mm3_wmh"]["df"] == pytest.approx(m3["df"], rel=1e-2)
    m4 = ref["mixed"][MODEL_NAMES["alsfrs_wmh_slope_short_vs_long"]]["terms"]["wmh_mm3:survival_group[T.short]"]
    assert head["alsfrs_wmh_slope_short_vs_long"]["std_err"] == pytest.approx(500 * m4["std_err"], rel=1e-3)
    assert head["alsfrs_wmh_slope_short_vs_long"]["p_value"] == pytest.approx(m4["p_value"], rel=2e-2)
    assert all(h["method"] == "satterthwaite" for h in head.values())
