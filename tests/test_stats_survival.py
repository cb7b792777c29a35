"""Per-patient WMH summaries, Kaplan-Meier and log-rank, Cox model and its PH check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wmhseg.stats.dataset import build_dataset
from wmhseg.stats.survival import fit_cox, km_split, run_survival, subject_wmh_summary
from wmhseg.stats.tables import check_clinical, check_volumes
from wmhseg.synth.cohort import CohortParams, simulate_cohort


def test_subject_summary_matches_polyfit():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(12):
        n = 1 + s % 4
        for t in np.sort(rng.uniform(0, 2, n)) - (0 if n == 1 else 0):
            rows.append(
                {"subject_id": f"s{s:02d}", "years_since_baseline": t, "wmh_mm3": rng.uniform(500, 9000)}
            )
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # order must not matter
    got = subject_wmh_summary(frame).set_index("subject_id")
    for sid, g in frame.groupby("subject_id"):
        g = g.sort_values("years_since_baseline")
        assert got.loc[sid, "baseline_wmh"] == g["wmh_mm3"].iloc[0]
        assert got.loc[sid, "n_scans"] == len(g)
        if len(g) > 1:
            assert np.isclose(
                got.loc[sid, "wmh_slope"], np.polyfit(g["years_since_baseline"], g["wmh_mm3"], 1)[0]
            )
        else:
            assert np.isnan(got.loc[sid, "wmh_slope"])


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
    assert split.n == {"low": int((high == 0).sum()), "high": int(high.sum())}
    assert np.isclose(split.chi2, logrank_chi2(time, event, high), rtol=1e-6)
    assert np.isclose(split.p_value, stats.chi2.sf(split.chi2, 1))
    # Kaplan-Meier product-limit estimate at the first event time of the high group
    curve = split.curves["high"]
    th, eh = time[high == 1], event[high == 1]
    t1 = np.min(th[eh == 1])
    expected = 1 - ((th == t1) & (eh == 1)).sum() / (th >= t1).sum()
    assert np.isclose(curve.loc[curve["time"] == t1, "survival"].iloc[0], expected)
    assert curve["survival"].iloc[0] == 1.0 and (np.diff(curve["survival"]) <= 1e-12).all()
    assert (curve["ci_low"] <= curve["survival"] + 1e-12).all()
    assert (curve["ci_high"] >= curve["survival"] - 1e-12).all()


def test_km_split_degenerate_inputs():
    few = pd.DataFrame({"survival_months": [1.0, 2.0], "event": [1.0, 0.0], "v": [1.0, 2.0]})
    assert "too few" in km_split(few, "v").error
    same = pd.DataFrame({"survival_months": [1.0, 2.0, 3.0, 4.0], "event": [1.0] * 4, "v": [5.0] * 4})
    assert "does not vary" in km_split(same, "v").error


def cox_data(n: int, beta: np.ndarray, seed: int, ph: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(np.log(3000), 0.5, n)
    slope = rng.normal(900, 400, n)
    age = rng.normal(60, 10, n)
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    lin = beta[0] * base / 1000 + beta[1] * slope / 1000 + beta[2] * (age - 60) + beta[3] * (sex == "M")
    if ph:
        t = rng.exponential(30 * np.exp(-lin))
    else:  # the covariate effect reverses after 10 months: hazards are not proportional
        u = rng.exponential(1.0, n)
        h1, h2 = np.exp(lin) / 60, np.exp(-lin) / 60
        t = np.where(u < 10 * h1, u / h1, 10 + (u - 10 * h1) / h2)
    c = rng.uniform(10, 80, n)
    return pd.DataFrame(
        {
            "survival_months": np.minimum(t, c),
            "event": (t <= c).astype(float),
            "baseline_wmh": base,
            "wmh_slope": slope,
            "age": age,
            "sex": pd.Categorical(sex, categories=["F", "M"]),
        }
    )


def test_cox_recovers_hazard_ratios_and_ph_holds():
    beta = np.array([0.2, 0.8, 0.03, -0.4])
    fit = fit_cox(cox_data(600, beta, seed=1), ["age", "sex"])
    assert fit.error is None and fit.n_subjects == 600 and fit.converged
    terms = fit.terms.set_index("term")
    truth = {
        "baseline_wmh_per_1000mm3": beta[0],
        "wmh_slope_per_1000mm3_per_year": beta[1],
        "age": beta[2],
        "sex[T.M]": beta[3],
    }
    for term, b in truth.items():
        assert terms.loc[term, "hr_ci_low"] <= np.exp(b) <= terms.loc[term, "hr_ci_high"], term
    assert np.allclose(terms["hazard_ratio"], np.exp(terms["coef"]))
    assert (terms["ph_p_value"] > 0.01).all() and fit.ph_global_p_value > 0.01


def test_ph_check_detects_crossing_hazards():
    data = cox_data(600, np.array([0.0, 1.5, 0.0, 0.0]), seed=2, ph=False)
    fit = fit_cox(data, [])
    terms = fit.terms.set_index("term")
    assert terms.loc["wmh_slope_per_1000mm3_per_year", "ph_p_value"] < 0.001


def test_cox_too_few_events():
    data = cox_data(30, np.zeros(4), seed=3).assign(event=0.0)
    data.loc[:2, "event"] = 1.0
    assert "too few events" in fit_cox(data, ["age", "sex"]).error


@pytest.fixture(scope="module")
def survival():
    cohort = simulate_cohort(CohortParams(n_als=120, n_control=40, p_survival_data=0.7, seed=4))
    study = build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical))
    return study, run_survival(study)


def test_run_survival_counts(survival):
    study, result = survival
    als = study.subjects[study.subjects["group"] == "ALS"]
    with_data = als["survival_months"].notna() & als["event"].notna()
    assert len(result.patients) == with_data.sum()
    assert any(f"{(~with_data).sum()} ALS patients without survival" in n for n in result.notes)
    assert result.cox.n_subjects == result.patients["wmh_slope"].notna().sum()
    assert set(result.km) == {"baseline_wmh", "wmh_slope"}
    assert all(k.error is None and np.isfinite(k.p_value) for k in result.km.values())
    # the simulated short survivors progress faster: the progression split separates survival
    assert result.km["wmh_slope"].p_value < 0.05
