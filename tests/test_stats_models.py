"""The headline mixed models on simulated cohorts with known effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

import wmhseg.stats.mixed as mixed
from wmhseg.stats import AnalysisSettings, run_analysis
from wmhseg.stats.headline_models import HEADLINE_KEYS, MODEL_NAMES, fit_study_models
from wmhseg.stats.mixed import fit_mixed
from wmhseg.stats.reml import RemlProblem, t_inference, theta_from_cov
from wmhseg.stats.report import headline_sentences
from wmhseg.stats.structure import mixture_p
from wmhseg.stats.study_data import build_dataset
from wmhseg.stats.tables import check_clinical, check_volumes
from wmhseg.synth.cohort import CohortParams, simulate_cohort

# models.csv's leading columns, as the README's contract fixes them (spelled out here, not taken from the code)
MODELS_CSV_HEAD = ["model", "term", "estimate", "std_err", "df", "ci_low", "ci_high", "p_value", "n_subjects", "n_obs",
                   "converged", "optimizer", "method"]

def study_of(cohort, **kwargs):
    return build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical), **kwargs)


@pytest.fixture(scope="module")
def full():
    """The study's design (232 ALS / 207 controls) with the study's effects (default seed)."""
    cohort = simulate_cohort(CohortParams())
    return cohort, run_analysis(cohort.volumes, cohort.clinical)


def test_full_cohort_recovers_every_headline(full):
    cohort, result = full
    headline = result.headline_dict()
    assert tuple(headline) == HEADLINE_KEYS
    for key, truth in cohort.truth.items():
        h = headline[key]
        # within 4 standard errors of the truth: a false failure has probability 6e-5 per headline
        # (interval coverage over many cohorts is checked in test_stats_calibration.py)
        assert abs(h["estimate"] - truth) < 4 * h["std_err"], (key, h, truth)
        assert set(h) == {"estimate", "std_err", "df", "ci_low", "ci_high", "p_value", "n_subjects", "n_obs",
                          "method"}
        assert h["method"] == "satterthwaite" and h["df"] > 10
        assert isinstance(h["n_subjects"], int) and isinstance(h["estimate"], float)
    assert headline["wmh_progression_als_vs_control"]["p_value"] < 1e-4
    assert headline["wmh_progression_short_vs_long"]["p_value"] < 1e-4
    assert headline["alsfrs_per_500mm3_wmh"]["p_value"] < 1e-3
    assert headline["wmh_progression_als_vs_control"]["n_subjects"] == 439
    assert headline["wmh_progression_als_vs_control"]["n_obs"] == len(cohort.volumes)
    assert all(f.converged for f in result.fits.values())


def dense_fixed_cov(fit):
    """sigma^2 (X'V^-1 X)^-1 with V = I + Z Psi Z' / sigma^2 built as a dense matrix."""
    model = fit.model
    x, groups = model.exog, np.asarray(model.groups)
    z = np.asarray(model.exog_re)
    sigma2 = fit.variances["var(residual)"]
    psi = np.array([[fit.variances["var(subject intercept)"]]])
    same = groups[:, None] == groups[None, :]
    v = np.eye(len(x)) * sigma2 + same * (z @ psi @ z.T)
    return np.linalg.inv(x.T @ np.linalg.solve(v, x))


def test_headline_numbers_match_the_fitted_terms(full):
    """Estimates, SEs and intervals follow from lme4's covariance, computed here with dense matrices."""
    _, result = full
    m2 = result.fits[MODEL_NAMES["wmh_progression_short_vs_long"]]
    names = list(m2.params.index)
    w = np.zeros(len(names))
    w[names.index("years_since_baseline:cohort[T.short]")] = 1.0
    w[names.index("years_since_baseline:cohort[T.long]")] = -1.0
    cov = dense_fixed_cov(m2)
    h = result.headline["wmh_progression_short_vs_long"]
    assert np.isclose(h.estimate, w @ m2.params.to_numpy())
    assert np.isclose(h.std_err, np.sqrt(w @ cov @ w), rtol=1e-8)
    assert np.isclose(h.ci_high - h.estimate, stats.t.ppf(0.975, h.df) * h.std_err, rtol=1e-10)
    assert np.isclose(h.p_value, 2 * stats.t.sf(abs(h.estimate / h.std_err), h.df), rtol=1e-10)
    m3 = result.fits[MODEL_NAMES["alsfrs_per_500mm3_wmh"]]
    h3 = result.headline["alsfrs_per_500mm3_wmh"]
    i = list(m3.params.index).index("wmh_mm3")
    assert np.isclose(h3.estimate, 500 * m3.params.iloc[i])
    assert np.isclose(h3.std_err, 500 * np.sqrt(dense_fixed_cov(m3)[i, i]), rtol=1e-8)
    m4 = result.fits[MODEL_NAMES["alsfrs_wmh_slope_short_vs_long"]]
    assert "wmh_mm3:survival_group[T.short]" in m4.params.index


@pytest.mark.slow
def test_wald_option_gives_normal_intervals_and_no_df(full):
    cohort, result = full
    wald = run_analysis(cohort.volumes, cohort.clinical, AnalysisSettings(figures=False, inference="wald"))
    for key in HEADLINE_KEYS:
        h, s = wald.headline[key], result.headline[key]
        assert h.method == "wald" and h.df is None and h.to_dict()["df"] is None
        assert h.std_err == pytest.approx(s.std_err, rel=1e-9)
        assert h.ci_high - h.estimate == pytest.approx(stats.norm.ppf(0.975) * h.std_err, rel=1e-10)
        assert h.p_value <= s.p_value  # the normal is lighter-tailed than any t


def test_models_table_lists_every_term(full):
    _, result = full
    table = result.models_table()
    assert list(table.columns[:len(MODELS_CSV_HEAD)]) == MODELS_CSV_HEAD
    m1 = table[table["model"] == MODEL_NAMES["wmh_progression_als_vs_control"]]
    assert {
        "Intercept",
        "group[T.ALS]",
        "years_since_baseline",
        "years_since_baseline:group[T.ALS]",
        "age",
        "sex[T.M]",
    } <= set(m1["term"])
    assert {"var(subject intercept)", "var(residual)"} <= set(m1["term"])
    assert set(table["kind"]) == {"fixed", "variance", "contrast", "headline", "cox", "lrt", "sensitivity"}
    heads = table[table["kind"] == "headline"].set_index("term")
    assert np.isclose(
        heads.loc["alsfrs_per_500mm3_wmh", "estimate"], result.headline["alsfrs_per_500mm3_wmh"].estimate
    )


@pytest.mark.parametrize("re_formula", [None, "~years_since_baseline"])
def test_reml_fit_matches_statsmodels_mixedlm(re_formula):
    """The REML fit (lme4's profiled deviance) against statsmodels MixedLM's REML fit, which it replaced:
    the same optimum (MixedLM stops within about 1e-3 of it), never a worse one."""
    cohort = simulate_cohort(CohortParams(n_als=60, n_control=60, seed=4))
    study = study_of(cohort)
    formula = "wmh_mm3 ~ years_since_baseline * group + age + sex"
    model = smf.mixedlm(formula, study.scans, groups=study.scans["subject_id"], re_formula=re_formula)
    ref = model.fit(reml=True, method="lbfgs")
    fit = fit_mixed("m", formula, study.scans, re_formula=re_formula)
    assert fit.converged and fit.attempts == ["powell: converged"]
    np.testing.assert_allclose(fit.params.to_numpy(), ref.fe_params.to_numpy(), rtol=1e-3, atol=1e-2)
    variances = [v for k, v in fit.variances.items() if k.startswith("var(subject")]
    np.testing.assert_allclose(variances, np.diag(ref.cov_re.to_numpy()), rtol=2e-2)
    assert fit.variances["var(residual)"] == pytest.approx(ref.scale, rel=1e-3)
    problem = RemlProblem(model.endog, model.exog, model.exog_re, model.groups)
    at_ref = problem.profiled_deviance(theta_from_cov(ref.cov_re.to_numpy() / ref.scale))
    assert fit.reml_deviance <= at_ref + 1e-9


@pytest.mark.parametrize("re_formula", [None, "~years_since_baseline"])
def test_design_is_mixedlms(re_formula):
    """The design built without statsmodels' models is MixedLM.from_formula's, column for column, and
    predicts new rows as MixedLMResults.predict does."""
    cohort = simulate_cohort(CohortParams(n_als=20, n_control=20, seed=6))
    scans = study_of(cohort).scans
    formula = "wmh_mm3 ~ years_since_baseline * C(group, Treatment('control')) + age + C(sex, Treatment('F'))"
    ref = smf.mixedlm(formula, scans, groups=scans["subject_id"], re_formula=re_formula)
    got = mixed.Design.from_formula(formula, scans, "subject_id", re_formula)
    assert got.exog_names == list(ref.exog_names) and got.endog_name == ref.endog_names
    np.testing.assert_array_equal(got.exog, ref.exog)
    np.testing.assert_array_equal(got.endog, ref.endog)
    np.testing.assert_array_equal(got.exog_re, ref.exog_re)
    np.testing.assert_array_equal(got.groups, np.asarray(ref.groups))
    assert got.exog_re_names[1:] == ref.data.exog_re_names[1:]
    fitted = ref.fit(reml=True, method="lbfgs")
    new = scans.iloc[::7]
    np.testing.assert_allclose(got.predict_exog(new) @ fitted.fe_params.to_numpy(), fitted.predict(new), rtol=1e-12)


def test_design_refuses_missing_values():
    scans = study_of(simulate_cohort(CohortParams(n_als=10, n_control=10, seed=6))).scans.copy()
    scans.loc[scans.index[3], "age"] = np.nan
    fit = fit_mixed("m", "wmh_mm3 ~ years_since_baseline + age", scans)
    assert not fit.ok and "could not be set up" in fit.error and "missing" in fit.error


def test_alsfrs_interaction_is_recovered():
    params = CohortParams(
        n_als=160, n_control=20, alsfrs_slope_diff_short_vs_long=-0.5, p_survival_data=0.9, seed=8
    )
    cohort = simulate_cohort(params)
    _, headline = fit_study_models(study_of(cohort))
    h = headline["alsfrs_wmh_slope_short_vs_long"]
    assert h.ci_low <= -0.5 <= h.ci_high and h.p_value < 0.05


def test_random_slope_option():
    cohort = simulate_cohort(CohortParams(n_als=80, n_control=70, seed=9))
    fits, headline = fit_study_models(study_of(cohort), random_slope=True)
    m1 = fits[MODEL_NAMES["wmh_progression_als_vs_control"]]
    assert m1.re_formula == "~years_since_baseline" and "var(subject years_since_baseline)" in m1.variances
    assert fits[MODEL_NAMES["alsfrs_per_500mm3_wmh"]].re_formula is None
    h = headline["wmh_progression_als_vs_control"]
    assert h.ci_low <= cohort.truth["wmh_progression_als_vs_control"] <= h.ci_high


def test_failed_optimizer_is_retried_and_reported(monkeypatch):
    cohort = simulate_cohort(CohortParams(n_als=40, n_control=40, seed=3))
    study = study_of(cohort)
    ref = fit_mixed("m", "wmh_mm3 ~ years_since_baseline * group", study.scans)
    original = mixed.minimise

    def flaky(problem, method="powell"):
        if method == "powell":
            raise np.linalg.LinAlgError("Singular matrix")
        return original(problem, method)

    monkeypatch.setattr(mixed, "minimise", flaky)
    fit = fit_mixed("m", "wmh_mm3 ~ years_since_baseline * group", study.scans)
    assert fit.converged and fit.optimizer == "cobyqa"
    assert fit.attempts == ["powell: failed (Singular matrix)", "cobyqa: converged"]
    np.testing.assert_allclose(fit.params.to_numpy(), ref.params.to_numpy(), rtol=1e-6)


def test_non_convergence_is_reported_not_hidden(monkeypatch):
    cohort = simulate_cohort(CohortParams(n_als=20, n_control=20, seed=3))
    original = mixed.minimise

    def stuck(problem, method="powell"):
        res = original(problem, method)
        res.success = False
        return res

    monkeypatch.setattr(mixed, "minimise", stuck)
    result = run_analysis(cohort.volumes, cohort.clinical, AnalysisSettings(figures=False))
    fit = result.fits[MODEL_NAMES["wmh_progression_als_vs_control"]]
    assert not fit.converged and len(fit.attempts) == 3
    assert any("no optimizer converged" in m for m in fit.messages)
    assert np.isfinite(result.headline["wmh_progression_als_vs_control"].estimate)
    table = result.models_table()
    assert not table.loc[table["kind"] != "cox", "converged"].any()


def test_models_not_fitted_without_survival_groups():
    cohort = simulate_cohort(CohortParams(n_als=30, n_control=30, p_survival_data=0.0, seed=2))
    result = run_analysis(cohort.volumes, cohort.clinical, AnalysisSettings(figures=False))
    head = result.headline_dict()
    assert head["wmh_progression_short_vs_long"]["estimate"] is None
    assert head["alsfrs_wmh_slope_short_vs_long"]["p_value"] is None
    assert head["wmh_progression_als_vs_control"]["estimate"] is not None
    fit = result.fits[MODEL_NAMES["wmh_progression_short_vs_long"]]
    assert "at least 2 participants per level" in fit.error and "long (0)" in fit.error
    sentence = headline_sentences(result)["wmh_progression_short_vs_long"]
    assert "could not be estimated, because needs at least 2 participants" in sentence
    assert "not significant" not in sentence
    table = result.models_table()
    assert (table.loc[table["model"] == fit.name, "kind"] == "not fitted").any()


def test_single_level_covariate_is_dropped_and_noted():
    cohort = simulate_cohort(CohortParams(n_als=40, n_control=40, p_male_als=1.0, p_male_control=1.0, seed=5))
    fits, headline = fit_study_models(study_of(cohort))
    fit = fits[MODEL_NAMES["wmh_progression_als_vs_control"]]
    assert "sex" not in fit.formula and any("covariate sex dropped" in m for m in fit.messages)
    assert np.isfinite(headline["wmh_progression_als_vs_control"].estimate)


def test_covariates_setting():
    cohort = simulate_cohort(CohortParams(n_als=40, n_control=40, seed=6))
    site = np.where(cohort.clinical["subject_id"].str[-1].isin(list("01234")), "A", "B")
    clinical = cohort.clinical.assign(site=site)
    study = build_dataset(check_volumes(cohort.volumes), check_clinical(clinical), covariates=("age", "site"))
    fits, _ = fit_study_models(study)
    terms = set(fits[MODEL_NAMES["alsfrs_per_500mm3_wmh"]].params.index)
    assert {"age", "site[T.B]"} <= terms and "sex[T.M]" not in terms
    empty = build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical), covariates=())
    fits, _ = fit_study_models(empty)
    assert fits[MODEL_NAMES["alsfrs_per_500mm3_wmh"]].formula == "alsfrs_r ~ wmh_mm3"


def test_satterthwaite_df_of_a_balanced_design_is_the_anova_df():
    """Balanced random-intercept design: a between-subject slope has exactly n_subjects - 2 df and a
    within-subject slope (n_obs - n_subjects - 1) df, the classical split-plot ANOVA denominators."""
    rng = np.random.default_rng(0)
    n_subj, m = 24, 4
    subject = np.repeat(np.arange(n_subj), m)
    x_between = rng.normal(size=n_subj)[subject]
    x_within = np.tile(np.arange(m, dtype=float), n_subj)
    y = 1 + 0.5 * x_between + 0.2 * x_within + 2.0 * rng.normal(size=n_subj)[subject] + rng.normal(size=n_subj * m)
    data = pd.DataFrame({"y": y, "xb": x_between, "xw": x_within, "subject_id": subject.astype(str)})
    fit = fit_mixed("balanced", "y ~ xb + xw", data)
    assert fit.estimate("xb").df == pytest.approx(n_subj - 2, rel=1e-4)
    assert fit.estimate("xw").df == pytest.approx(n_subj * m - n_subj - 1, rel=1e-4)


@pytest.mark.parametrize(
    ("t", "df", "p_r"),  # 2 * pt(-t, df) and 2 * pnorm(-t) from R 4.2
    [(30.0, 100.0, 8.3803325586883361e-52), (45.0, 500.0, 5.9854693168859122e-178), (30.0, None, 9.8134278542963744e-198)],
)
def test_tiny_p_values_do_not_underflow(t, df, p_r):
    low, high, p = t_inference(t, 1.0, df, 0.05)
    assert p == pytest.approx(p_r, rel=1e-9)
    assert t_inference(80.0, 1.0, None, 0.05)[2] > 0.0  # below double precision: the smallest positive double


def test_t_interval_matches_r_quantile():
    low, high, _ = t_inference(1.0, 2.0, 7.5, 0.05)
    assert high - 1.0 == pytest.approx(2 * 2.3330396268649736, rel=1e-12)  # qt(0.975, 7.5) in R


def test_mixture_p_value():
    assert mixture_p(0.0) == 1.0
    # 0.5 P(chi2_1 > 3.84) + 0.5 P(chi2_2 > 3.84): the 50:50 mixture's 5% point is 5.14, not 3.84
    assert mixture_p(5.1384) == pytest.approx(0.05, abs=1e-4)
    assert mixture_p(3.8415) == pytest.approx(0.5 * 0.05 + 0.5 * np.exp(-3.8415 / 2), rel=1e-4)


@pytest.mark.parametrize("q", [1, 2, 3])
def test_small_spd_solves_match_lapack(q):
    """The closed-form 1 x 1 and 2 x 2 solves of the REML sums against NumPy's batched LAPACK solve."""
    from wmhseg.stats.reml import _spd_solve

    rng = np.random.default_rng(q)
    z = rng.normal(size=(50, q, q))
    a = np.eye(q) + z @ z.transpose(0, 2, 1)
    b = rng.normal(size=(50, q, 4))
    logdet, x = _spd_solve(a, b)
    assert logdet == pytest.approx(np.linalg.slogdet(a)[1].sum(), rel=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)


def test_distribution_functions_are_scipy_stats():
    """wmhseg.stats.dist (scipy.special, no scipy.stats import) against scipy.stats' distributions."""
    from wmhseg.stats import dist

    x = np.array([0.0, 0.3, 1.96, 4.0, 12.0, 38.0])
    q = np.array([0.5, 0.9, 0.975, 0.999])
    for df in (1.5, 7.5, 41.8, 400.0):
        np.testing.assert_allclose(dist.t_ppf(q, df), stats.t.ppf(q, df), rtol=1e-12)
        np.testing.assert_allclose(dist.t_logsf(x, df), stats.t.logsf(x, df), rtol=1e-12)
    np.testing.assert_allclose(dist.norm_ppf(q), stats.norm.ppf(q), rtol=1e-14)
    np.testing.assert_allclose(dist.norm_sf(x), stats.norm.sf(x), rtol=1e-12, atol=0)
    np.testing.assert_allclose(dist.norm_logsf(x), stats.norm.logsf(x), rtol=1e-12)
    for k in (1, 2, 5):
        np.testing.assert_allclose(dist.chi2_sf(x**2, k), stats.chi2.sf(x**2, k), rtol=1e-12, atol=0)
