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
from wmhseg.stats.headline_models import MODEL_NAMES
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


def r_term(name: str) -> str:
    return name.replace("sex_M", "sex[T.M]")


def check_cox(got: dict, want: dict) -> None:
    assert got["converged"] and got["error"] is None and got["events"] == want["events"]
    assert set(map(r_term, got["terms"])) == set(want["terms"])
    for term, g in got["terms"].items():
        w = want["terms"][r_term(term)]
        assert abs(g["coef"] - w["coef"]) <= 1e-6 * max(abs(w["coef"]), w["std_err"]), term
        assert close(g["std_err"], w["std_err"], 1e-3), term
        assert close(g["p_value"], w["p_value"], 2e-2), term
        assert close(g["ph_chi2"], w["ph_chi2"], 1e-3), (term, g["ph_chi2"], w["ph_chi2"])
        assert close(g["ph_p_value"], w["ph_p_value"], 2e-2), term
    assert close(got["ph_global_chi2"], want["ph_global_chi2"], 1e-3)
    assert close(got["ph_global_p"], want["ph_global_p"], 2e-2)
    assert abs(got["concordance"] - want["concordance"]) <= 1e-3


def test_cox_models_match_r(cohort):
    ref, result = cohort
    got = result.survival.to_dict(24.0)
    want = ref["survival"]
    for name in ("cox_baseline", "cox_time_varying"):
        check_cox(got["cox"][name], want["cox"][name])
    assert got["cox"]["cox_baseline"]["n"] == want["cox"]["cox_baseline"]["n"]
    check_cox(got["landmark"], want["landmark"])
    assert got["landmark"]["n"] == want["landmark"]["n"]


def test_kaplan_meier_and_logrank_match_r(cohort):
    ref, result = cohort
    got = result.survival.to_dict(24.0)["kaplan_meier"]["baseline_wmh"]
    want = ref["survival"]["kaplan_meier"]["baseline_wmh"]
    assert got["split_at"] == pytest.approx(want["split_at"], rel=1e-12)
    assert close(got["logrank_chi2"], want["logrank_chi2"], 1e-6)
    assert close(got["logrank_p"], want["logrank_p"], 2e-2)
    for label in ("low", "high"):
        g, w = got["groups"][label], want["groups"][label]
        for key in ("n", "events", "median_months", "median_ci_low", "median_ci_high"):
            assert g[key] == (None if w[key] is None else pytest.approx(w[key], rel=1e-12)), (label, key)


def test_concordance_matches_r(cohort):
    ref, result = cohort
    got = result.survival.prognostic.to_dict()
    want = ref["survival"]["prognostic_value"]
    assert (got["n"], got["events"]) == (want["n"], want["events"])
    assert abs(got["c_clinical"] - want["c_clinical"]) <= 1e-3
    assert abs(got["c_clinical_wmh"] - want["c_clinical_wmh"]) <= 1e-3


@pytest.mark.parametrize("key", ["wmh_progression_als_vs_control", "wmh_progression_short_vs_long"])
def test_random_slope_fits_and_lrt_match_lme4(cohort, key):
    ref, result = cohort
    check = result.slopes[key]
    want = ref["mixed"][f"{MODEL_NAMES[key].split('_')[0]}_random_slope"]
    fit = check.slope
    assert fit.singular == want["singular"]
    assert fit.reml_deviance == pytest.approx(want["reml_deviance"], rel=1e-9, abs=1e-7)
    for term, w in want["terms"].items():
        e = fit.estimate(term)
        assert abs(e.estimate - w["estimate"]) <= 1e-6 * max(abs(w["estimate"]), w["std_err"]), term
        assert close(e.std_err, w["std_err"], 1e-3) and close(e.df, w["df"], 1e-2), term
        assert close(e.p_value, w["p_value"], 2e-2), term
    assert check.chi2 == pytest.approx(want["slope_lrt"]["chi2"], rel=1e-6, abs=1e-6)
    assert close(check.p_value, want["slope_lrt"]["p_value"], 2e-2)


def test_sensitivity_models_match_lmertest(cohort):
    """Model 3 with time and the four models on log(WMH + 1)."""
    ref, result = cohort
    fits = {"model3_with_time": next(s for s in result.sensitivity if s.analysis == "model 3 + time").fit}
    fits.update({s.fit.name: s.fit for s in result.sensitivity if s.analysis == "log WMH"})
    assert len(fits) == 5
    for name, fit in fits.items():
        for term, w in ref["mixed"][name]["terms"].items():
            e = fit.estimate(term)
            assert abs(e.estimate - w["estimate"]) <= 1e-6 * max(abs(w["estimate"]), w["std_err"]), (name, term)
            assert close(e.std_err, w["std_err"], 1e-3) and close(e.df, w["df"], 1e-2), (name, term)
            assert close(e.p_value, w["p_value"], 2e-2), (name, term)
