"""Kaplan-Meier and log-rank, R's median rules, Cox models and their PH tests, survival data layouts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wmhseg.stats.cox import CoxData, design, fit_cox
from wmhseg.stats.kaplan import km_curve, km_split
from wmhseg.stats.study_data import build_dataset
from wmhseg.stats.survival import counting_process, landmark_table, run_survival
from wmhseg.stats.tables import check_clinical, check_volumes
from wmhseg.synth.cohort import CohortParams, simulate_cohort


def logrank_chi2(time, event, group):
    """Two-group log-rank statistic computed directly from its definition."""
    o_minus_e, var = 0.0, 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & (group == 1)).sum()
        d = ((time == t) & (event == 1)).sum()
        d1 = ((time == t) & (event == 1) & (group == 1)).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return o_minus_e**2 / var


def test_km_split_and_logrank_against_definition():
    rng = np.random.default_rng(3)
    n = 60
    x = rng.normal(size=n)
    time = np.round(rng.exponential(20 * np.exp(-0.8 * x)), 1) + 0.1
    event = (rng.random(n) < 0.8).astype(float)
    patients = pd.DataFrame({"survival_months": time, "event": event, "baseline_wmh": x})
    split = km_split(patients, "baseline_wmh")
    high = (x > np.median(x)).astype(int)
    assert (split.curves["low"].n, split.curves["high"].n) == (int((high == 0).sum()), int(high.sum()))
    assert np.isclose(split.chi2, logrank_chi2(time, event, high), rtol=1e-6)
    assert np.isclose(split.p_value, stats.chi2.sf(split.chi2, 1))
    # Kaplan-Meier product-limit estimate at the first event time of the high group
    curve = split.curves["high"].table
    th, eh = time[high == 1], event[high == 1]
    t1 = np.min(th[eh == 1])
    expected = 1 - ((th == t1) & (eh == 1)).sum() / (th >= t1).sum()
    assert np.isclose(curve.loc[curve["time"] == t1, "survival"].iloc[0], expected)
    assert curve["survival"].iloc[0] == 1.0 and (np.diff(curve["survival"]) <= 1e-12).all()
    band = curve.dropna()  # limits are undefined where the curve reaches 0 (as in R)
    assert (band["ci_low"] <= band["survival"] + 1e-12).all()
    assert (band["ci_high"] >= band["survival"] - 1e-12).all()
    assert curve["survival"].iloc[-1] > 0 or curve["ci_low"].isna().iloc[-1]


def test_km_split_degenerate_inputs():
    few = pd.DataFrame({"survival_months": [1.0, 2.0], "event": [1.0, 0.0], "v": [1.0, 2.0]})
    assert "too few" in km_split(few, "v").error
    same = pd.DataFrame({"survival_months": [1.0, 2.0, 3.0, 4.0], "event": [1.0] * 4, "v": [5.0] * 4})
    assert "does not vary" in km_split(same, "v").error


@pytest.mark.parametrize(
    ("time", "event", "median", "ci_low"),  # R 3.5-3: summary(survfit(Surv(time, event) ~ 1))$table
    [
        ([1, 2, 3, 4, 5, 6], [1] * 6, 3.5, 2.0),  # S = 5/6 * 4/5 * 3/4 = 0.5000000000000001: a flat at 0.5
        ([1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 1, 1, 0, 0, 0, 0], 4.0, 3.0),  # flat at 0.5 to the end of follow-up
        ([1, 2, 3, 4, 5, 5.5, 6, 7, 8, 9], [1, 1, 1, 1, 1, 0, 1, 0, 1, 1], 5.5, 3.0),
    ],
)
def test_km_median_follows_r_rules(time, event, median, ci_low):
    curve = km_curve(np.array(time, float), np.array(event, float))
    assert curve.median == median and curve.median_ci_low == ci_low and np.isnan(curve.median_ci_high)


def cox_frame(n: int, beta: np.ndarray, seed: int, ph: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wmh = rng.lognormal(np.log(3000), 0.5, n)
    age = rng.normal(60, 10, n)
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    lin = beta[0] * (wmh / 1000 - 3) + beta[1] * (age - 60) + beta[2] * (sex == "M")
    if ph:
        t = rng.exponential(30 * np.exp(-lin))
    else:  # the covariate effect reverses after 10 months: hazards are not proportional
        u = rng.exponential(1.0, n)
        h1, h2 = np.exp(lin) / 20, np.exp(-lin) / 20
        t = np.where(u < 10 * h1, u / h1, 10 + (u - 10 * h1) / h2)
    c = rng.uniform(10, 80, n)
    return pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(float), "wmh": wmh / 1000,
                         "age": age, "sex": pd.Categorical(sex, categories=["F", "M"])})


def as_cox(frame: pd.DataFrame) -> CoxData:
    x, names = design(frame, ["wmh", "age", "sex"])
    return CoxData(np.zeros(len(frame)), frame["time"].to_numpy(), frame["event"].to_numpy(), x, names, len(frame))


def test_cox_recovers_hazard_ratios_and_ph_holds():
    beta = np.array([0.2, 0.03, -0.4])
    fit = fit_cox(as_cox(cox_frame(600, beta, seed=1)))
    assert fit.error is None and fit.converged and fit.names == ("wmh", "age", "sex_M")
    terms = fit.to_dict()["terms"]
    # each estimate within 3.5 SE of the truth (a false failure has probability < 0.15%)
    assert np.all(np.abs(fit.coef - beta) < 3.5 * fit.std_err), (fit.coef, fit.std_err)
    assert all(np.isclose(t["hazard_ratio"], np.exp(c)) for t, c in zip(terms.values(), fit.coef, strict=True))
    # under proportional hazards 4 tests all above p = 0.001 fail together with probability < 0.4%
    assert all(t["ph_p_value"] > 0.001 for t in terms.values()) and fit.ph_global_p > 0.001


def test_ph_test_detects_crossing_hazards():
    fit = fit_cox(as_cox(cox_frame(600, np.array([0.5, 0.0, 0.0]), seed=2, ph=False)))
    assert fit.ph_p[0] < 0.001 and fit.ph_global_p < 0.001


def test_cox_that_cannot_be_fitted_keeps_its_key_with_nulls():
    few = cox_frame(30, np.zeros(3), seed=3).assign(event=0.0)
    few.loc[:2, "event"] = 1.0
    assert "too few events" in fit_cox(as_cox(few)).error
    separated = cox_frame(60, np.zeros(3), seed=4)
    # each patient who fails has the largest WMH of those still at risk: the estimate is infinite
    separated["wmh"] = np.where(separated["event"] == 1, 10.0, 0.0) - separated["time"].rank().to_numpy() * 1e-3
    fit = fit_cox(as_cox(separated))
    out = fit.to_dict()
    assert out["converged"] is False and out["error"] and out["ph_global_p"] is None
    assert set(out["terms"]) == {"wmh", "age", "sex_M"}
    assert all(v is None for t in out["terms"].values() for v in t.values())


@pytest.fixture(scope="module")
def survival():
    cohort = simulate_cohort(CohortParams(n_als=120, n_control=40, p_survival_data=0.7, seed=4))
    study = build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical))
    return study, run_survival(study, bootstrap_samples=50)


def test_run_survival_counts_and_json(survival):
    study, result = survival
    als = study.subjects[study.subjects["group"] == "ALS"]
    with_data = als["survival_months"].notna() & als["event"].notna()
    out = result.to_dict(24.0)
    c = out["counts"]
    assert c["patients"] == with_data.sum() and c["no_survival_data"] == (~with_data).sum()
    assert c["short"] + c["long"] + c["censored_before_cutoff"] == c["patients"]
    assert c["events"] == int(als.loc[with_data, "event"].sum())
    assert set(out) == {"cutoff_months", "counts", "kaplan_meier", "cox", "landmark", "prognostic_value"}
    assert set(out["cox"]) == {"cox_baseline", "cox_time_varying"}
    for cox in out["cox"].values():
        assert set(cox["terms"]) == {"wmh_per_1000mm3", "age", "sex_M"} and cox["converged"]
        assert set(cox["terms"]["age"]) == {"coef", "std_err", "hazard_ratio", "ci_low", "ci_high", "p_value",
                                            "ph_chi2", "ph_p_value"}
    pv = out["prognostic_value"]
    assert pv["c_difference_ci_low"] <= pv["c_difference"] <= pv["c_difference_ci_high"]
    assert set(out["kaplan_meier"]["baseline_wmh"]["groups"]) == {"low", "high"}


def test_counting_process_rows_by_hand():
    scans = pd.DataFrame({
        "subject_id": ["a", "a", "a", "b", "b"], "group": "ALS", "years_since_baseline": [0.0, 0.5, 2.0, 0.0, 1.0],
        "wmh_mm3": [1000.0, 1500.0, 2500.0, 800.0, 900.0], "survival_months": [18.0] * 3 + [30.0] * 2,
        "event": [1.0] * 3 + [0.0] * 2,
    })
    study = SimpleNamespace(scans=scans)
    rows = counting_process(study)
    # a: (0, 6], (6, 18] with the event; its scan at 24 months is after death and dropped; b: (0, 12], (12, 30]
    assert rows[["subject_id", "start", "stop", "status", "wmh_mm3"]].values.tolist() == [
        ["a", 0.0, 6.0, 0.0, 1000.0], ["a", 6.0, 18.0, 1.0, 1500.0],
        ["b", 0.0, 12.0, 0.0, 800.0], ["b", 12.0, 30.0, 0.0, 900.0],
    ]
    land = landmark_table(study, 12.0)
    # a: scans at 0 and 6 months, slope 1000 mm3/year, 6 months after the landmark; b: scans at 0 and 12
    assert land[["subject_id", "wmh_slope", "time"]].values.tolist() == [["a", 1000.0, 6.0], ["b", 100.0, 18.0]]


def test_time_dependent_auc_matches_its_definition():
    """Uno's cumulative/dynamic AUC: events by t (weighted by 1 / censoring KM) against those event-free
    after t, computed here from the definition (continuous times: no ties to resolve)."""
    from wmhseg.stats.prognostic import time_dependent_auc

    rng = np.random.default_rng(5)
    n = 80
    score = rng.normal(size=n)
    t_event = rng.exponential(20 * np.exp(-0.7 * score))
    t_cens = rng.uniform(5, 60, n)
    time, event = np.minimum(t_event, t_cens), (t_event <= t_cens).astype(float)
    data = CoxData(np.zeros(n), time, event, score[:, None], ("s",), n)
    got = time_dependent_auc(data, {"auc": score})
    for label, values in got.items():
        t = float(label)
        censor_km = np.array([np.prod([1 - 1 / np.sum(time >= c) for c in time[(event == 0) & (time < u)]])
                              for u in time])  # censoring survival just before each time
        case = (time <= t) & (event == 1)
        w = np.where(case, 1 / censor_km, 0.0)
        control = time > t
        num = sum(w[i] * np.sum(control & (score <= score[i])) for i in np.flatnonzero(case))
        assert values["auc"] == pytest.approx(num / (control.sum() * w.sum()), rel=1e-10), label
    assert set(got) == {"12", "24", "36"}


def test_efron_ties_where_everyone_at_risk_dies():
    """Three deaths tied at the last time with nobody else at risk: the Efron sums stay finite and
    equal the definition (weights of the tied deaths scaled by 1, 2/3, 1/3)."""
    from wmhseg.stats.cox import efron_sums

    x = np.array([[0.0], [1.0], [2.0], [0.5], [1.5]])
    data = CoxData(np.zeros(5), np.array([1.0, 2.0, 3.0, 3.0, 3.0]), np.ones(5), x, ("x",), 5)
    beta = np.array([0.3])
    score, info, times = efron_sums(data, beta)
    assert np.all(np.isfinite(score)) and np.all(np.isfinite(info))
    xc = x[:, 0] - x[:, 0].mean()
    w = np.exp(beta[0] * xc)
    tied = np.array([2, 3, 4])
    want_u, want_i = xc[tied].sum(), 0.0
    for r in range(3):
        wt = w[tied] * (1 - r / 3)
        m = wt @ xc[tied] / wt.sum()
        want_u -= m
        want_i += wt @ (xc[tied] - m) ** 2 / wt.sum()
    assert score[-1, 0] == pytest.approx(want_u, rel=1e-12) and info[-1, 0, 0] == pytest.approx(want_i, rel=1e-12)


def tied_survival(n: int, seed: int):
    """Survival times on a coarse grid (many ties, censorings at event times) and a discrete score; the
    last 3 patients are followed to 50 without an event, so that the censoring survival stays positive."""
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 5, n).astype(float)
    t_event = np.ceil(rng.exponential(12 * np.exp(-0.3 * score)))
    t_cens = np.ceil(rng.uniform(3, 40, n))
    t_event[-3:], t_cens[-3:] = 99.0, 50.0
    return np.minimum(t_event, t_cens), (t_event <= t_cens).astype(float), score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_product_limit_and_logrank_match_statsmodels(seed):
    from statsmodels.duration.survfunc import SurvfuncRight, survdiff

    from wmhseg.stats.kaplan import logrank, product_limit

    time, event, score = tied_survival(70, seed)
    t, s, se = product_limit(time, event)
    ref = SurvfuncRight(time, event)
    np.testing.assert_array_equal(t, ref.surv_times)
    np.testing.assert_allclose(s, ref.surv_prob, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(se, ref.surv_prob_se, rtol=1e-10, atol=1e-15)  # NaN where everyone left dies
    group = np.where(score > 2, "high", "low")
    np.testing.assert_allclose(logrank(time, event, group), survdiff(time, event, group), rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_time_dependent_auc_matches_scikit_survival_with_ties(seed):
    from sksurv.metrics import cumulative_dynamic_auc as reference
    from sksurv.util import Surv

    from wmhseg.stats.prognostic import cumulative_dynamic_auc

    time, event, score = tied_survival(90, seed)
    y = Surv.from_arrays(event=event.astype(bool), time=time)
    checked = 0
    for t in (6.0, 12.0, 18.0):
        try:
            want = float(reference(y, y, score, [t])[0][0])
        except ValueError:  # scikit-survival refuses (the censoring survival reaches 0)
            want = None
        got = cumulative_dynamic_auc(time, event, score, t)
        assert (got is None) == (want is None), (t, got, want)
        if want is not None:
            assert got == pytest.approx(want, rel=1e-12), t
            checked += 1
    assert checked == 3
    # an event and the last censoring at the same time: the censoring survival is 0 there; both refuse
    time, event = np.array([1.0, 2.0, 2.0]), np.array([1.0, 1.0, 0.0])
    y = Surv.from_arrays(event=event.astype(bool), time=time)
    with pytest.raises(ValueError, match="censoring survival"):
        reference(y, y, np.arange(3.0), [1.5])
    assert cumulative_dynamic_auc(time, event, np.arange(3.0), 1.5) is None


def test_efron_likelihood_and_newton_from_zero_match_statsmodels_phreg():
    """The Efron log partial likelihood (tied times, delayed entry) equals PHReg's, and Newton from
    zero with step halving reaches PHReg's maximum."""
    from statsmodels.duration.hazard_regression import PHReg

    from wmhseg.stats.cox import _efron, _layout, newton

    rng = np.random.default_rng(7)
    n = 150
    x = np.column_stack([rng.normal(size=n), rng.integers(0, 2, n)])
    # entries between the whole-month event times: where an entry equals an event time PHReg keeps the
    # patient in that risk set, R's (start, stop] (and this module, tested against R) does not
    start = np.where(rng.random(n) < 0.3, np.round(rng.uniform(0, 5, n)) + 0.5, 0.0)
    stop = np.ceil(start) + np.ceil(rng.exponential(10 * np.exp(-0.8 * x[:, 0] + 0.5 * x[:, 1])))
    event = (rng.random(n) < 0.8).astype(float)
    data = CoxData(start, stop, event, x, ("a", "b"), n)
    ref = PHReg(stop, x, status=event, entry=start, ties="efron")
    for beta in (np.zeros(2), np.array([0.7, -1.2]), np.array([-3.0, 4.0])):
        assert _efron(data, beta, _layout(data))[2] == pytest.approx(ref.loglike(beta), rel=1e-10)
    beta, _, converged = newton(data, np.zeros(2), tol=1e-9)
    assert converged
    np.testing.assert_allclose(beta, ref.fit().params, rtol=1e-5)
