"""Survival analyses of ALS patients against their WMH: per-patient baseline WMH and WMH
progression, Kaplan-Meier curves split at the median of each with a log-rank test, and a Cox
proportional-hazards model with a proportional-hazards check (statsmodels ``duration``).

* Baseline WMH: the WMH of the patient's first usable scan (smallest ``years_since_baseline``).
* WMH progression: the least-squares slope of WMH on ``years_since_baseline`` over the patient's
  scans (mm3/year); needs two scans at different times.
* Patients used: ALS with ``survival_months`` and ``event`` (censored patients count as
  censored at their time, whatever the cut-off).
* Kaplan-Meier split: "high" = above the median, "low" = at or below it.
* Cox model: time = ``survival_months``, status = ``event``, covariates baseline WMH (per
  1000 mm3), WMH progression (per 1000 mm3/year) and the study covariates at baseline.
* Proportional-hazards check: for each covariate, the Grambsch-Therneau score test of a trend of
  the scaled Schoenfeld residuals against the rank of the event time (chi-square, 1 df).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from wmhseg.stats.dataset import StudyData

__all__ = [
    "KMSplit",
    "CoxFit",
    "SurvivalResult",
    "subject_wmh_summary",
    "km_split",
    "fit_cox",
    "run_survival",
]

PER = 1000.0


@dataclass
class KMSplit:
    """Kaplan-Meier curves of two halves split at a variable's median, with a log-rank test.

    Attributes:
        variable: the split variable; ``median``: the split point.
        curves: label (``low``/``high``) -> DataFrame ``time, survival, ci_low, ci_high``
            (starting at time 0, survival 1).
        n, events: per label; ``median_survival``: per label (NaN if not reached).
        chi2, p_value: log-rank test; ``error``: why it was not computed.
    """

    variable: str
    median: float = float("nan")
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    median_survival: dict[str, float] = field(default_factory=dict)
    chi2: float = float("nan")
    p_value: float = float("nan")
    error: str | None = None


@dataclass
class CoxFit:
    """A Cox model: ``terms`` has ``term, coef, std_err, hazard_ratio, hr_ci_low, hr_ci_high,
    p_value, ph_chi2, ph_p_value``; ``ph_global_*`` is the sum over terms. ``converged``: the
    partial-likelihood score is zero at the estimate; ``messages``: warnings while fitting."""

    formula: str
    n_subjects: int = 0
    n_events: int = 0
    terms: pd.DataFrame = field(default_factory=pd.DataFrame)
    ph_global_chi2: float = float("nan")
    ph_global_p_value: float = float("nan")
    converged: bool = False
    messages: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class SurvivalResult:
    """Per-patient WMH summaries, Kaplan-Meier splits and the Cox model."""

    patients: pd.DataFrame
    km: dict[str, KMSplit]
    cox: CoxFit
    notes: list[str] = field(default_factory=list)


def subject_wmh_summary(scans: pd.DataFrame) -> pd.DataFrame:
    """Per subject: ``baseline_wmh`` (first scan), ``wmh_slope`` (OLS, NaN with fewer than two
    distinct times) and ``n_scans``.

    Example:
        >>> s = pd.DataFrame({"subject_id": ["a", "a", "b"], "years_since_baseline": [0, 1, 0],
        ...                   "wmh_mm3": [10.0, 30.0, 5.0]})
        >>> subject_wmh_summary(s)["wmh_slope"].tolist()
        [20.0, nan]
    """
    s = scans.sort_values(["subject_id", "years_since_baseline"], kind="stable")
    codes, ids = pd.factorize(s["subject_id"], sort=False)
    t = s["years_since_baseline"].to_numpy(dtype=float)
    y = s["wmh_mm3"].to_numpy(dtype=float)
    n = np.bincount(codes).astype(float)
    mt, my = np.bincount(codes, t) / n, np.bincount(codes, y) / n
    dt = t - mt[codes]
    sxx = np.bincount(codes, dt * dt)
    sxy = np.bincount(codes, dt * (y - my[codes]))
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 1e-12, sxy / sxx, np.nan)
    first = np.r_[True, codes[1:] != codes[:-1]]
    return pd.DataFrame(
        {
            "subject_id": np.asarray(ids),
            "baseline_wmh": y[first],
            "wmh_slope": slope,
            "n_scans": n.astype(int),
        }
    )


def km_split(patients: pd.DataFrame, variable: str, alpha: float = 0.05) -> KMSplit:
    """Kaplan-Meier curves for patients at or below vs above the median of ``variable``.

    Args:
        patients: rows with ``survival_months``, ``event`` and ``variable``; NaNs are skipped.
        variable: the column to split on.
        alpha: 1 - confidence level of the pointwise bands.
    """
    from statsmodels.duration.survfunc import SurvfuncRight, survdiff

    out = KMSplit(variable)
    d = patients[["survival_months", "event", variable]].dropna()
    if len(d) < 4:
        out.error = f"too few patients with survival data and {variable} ({len(d)})"
        return out
    out.median = float(d[variable].median())
    label = np.where(d[variable].to_numpy() > out.median, "high", "low")
    if len(set(label)) < 2:
        out.error = f"{variable} does not vary enough to split at its median"
        return out
    time = d["survival_months"].to_numpy(dtype=float)
    status = d["event"].to_numpy(dtype=float)
    for lab in ("low", "high"):
        m = label == lab
        sf = SurvfuncRight(time[m], status[m])
        out.n[lab], out.events[lab] = int(m.sum()), int(status[m].sum())
        if out.events[lab]:
            lo, hi = _pointwise(sf, alpha)
            curve = pd.DataFrame(
                {"time": sf.surv_times, "survival": sf.surv_prob, "ci_low": lo, "ci_high": hi}
            )
        else:
            curve = pd.DataFrame({"time": [], "survival": [], "ci_low": [], "ci_high": []})
        start = pd.DataFrame({"time": [0.0], "survival": [1.0], "ci_low": [1.0], "ci_high": [1.0]})
        last = curve.iloc[-1] if len(curve) else start.iloc[0]
        end = pd.DataFrame(
            {
                "time": [float(time[m].max())],
                "survival": [last["survival"]],
                "ci_low": [last["ci_low"]],
                "ci_high": [last["ci_high"]],
            }
        )
        out.curves[lab] = pd.concat([start, curve, end], ignore_index=True)
        below = np.flatnonzero(sf.surv_prob <= 0.5) if out.events[lab] else []
        out.median_survival[lab] = float(sf.surv_times[below[0]]) if len(below) else float("nan")
    if status.sum() == 0:
        out.error = "no events: the log-rank test is undefined"
        return out
    chi2, p = survdiff(time, status, label)
    out.chi2, out.p_value = float(chi2), float(p)
    return out


def _pointwise(sf, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise log-log confidence band of a Kaplan-Meier curve (Greenwood variance)."""
    z = stats.norm.ppf(1 - alpha / 2)
    s = np.asarray(sf.surv_prob, dtype=float)
    se = np.asarray(sf.surv_prob_se, dtype=float)
    lo, hi = s.copy(), s.copy()
    inner = (s > 0) & (s < 1) & np.isfinite(se)
    theta = se[inner] / (s[inner] * np.abs(np.log(s[inner])))
    lo[inner] = s[inner] ** np.exp(z * theta)
    hi[inner] = s[inner] ** np.exp(-z * theta)
    return lo, hi


def _ph_test(res, time: np.ndarray, status: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grambsch-Therneau statistics per covariate (rank-of-time transform) and their p-values."""
    resid = np.asarray(res.schoenfeld_residuals, dtype=float)
    rows = (status == 1) & np.all(np.isfinite(resid), axis=1)
    r = resid[rows]
    n_events = r.shape[0]
    cov = np.asarray(res.cov_params(), dtype=float)
    scaled = n_events * r @ cov + np.asarray(res.params, dtype=float)
    g = stats.rankdata(time[rows])
    g = g - g.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = (g @ scaled) ** 2 / (n_events * np.diag(cov) * (g @ g))
    return chi2, stats.chi2.sf(chi2, 1)


def fit_cox(patients: pd.DataFrame, covariates: Sequence[str], alpha: float = 0.05) -> CoxFit:
    """Cox model of ``survival_months``/``event`` on baseline WMH, WMH progression and covariates.

    Args:
        patients: one row per patient with ``survival_months, event, baseline_wmh, wmh_slope``
            and the covariate columns; rows with a missing value are skipped.
        covariates: study covariates (categorical ones with a single level are dropped).
        alpha: 1 - confidence level of the hazard-ratio intervals.
    """
    from statsmodels.duration.hazard_regression import PHReg

    d = patients.dropna(subset=["survival_months", "event", "baseline_wmh", "wmh_slope", *covariates]).copy()
    d["baseline_wmh_per_1000mm3"] = d["baseline_wmh"] / PER
    d["wmh_slope_per_1000mm3_per_year"] = d["wmh_slope"] / PER
    terms = ["baseline_wmh_per_1000mm3", "wmh_slope_per_1000mm3_per_year"]
    for name in covariates:
        col = d[name]
        if isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col):
            levels = pd.unique(col.astype(str))
            if len(levels) > 1:
                ref = "F" if name == "sex" else sorted(levels)[0]
                terms.append(f"C({name}, Treatment({ref!r}))")
        else:
            terms.append(name)
    formula = "survival_months ~ " + " + ".join(terms)
    out = CoxFit(formula, n_subjects=len(d), n_events=int(d["event"].sum()))
    if out.n_events < len(terms) + 2:
        out.error = f"too few events ({out.n_events}) for {len(terms)} covariates"
        return out
    for col in d.columns:
        if isinstance(d[col].dtype, pd.CategoricalDtype):
            d[col] = d[col].cat.remove_unused_categories()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PHReg.from_formula(formula, d, status=d["event"].to_numpy(dtype=float), ties="efron")
            res = model.fit()
            score = np.asarray(model.score(np.asarray(res.params)), dtype=float)
        except (np.linalg.LinAlgError, ValueError) as exc:
            out.error = f"the Cox model failed: {' '.join(str(exc).split())}"
            return out
    out.messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    out.converged = bool(np.all(np.isfinite(score)) and np.max(np.abs(score)) < 1e-4 * max(out.n_events, 1))
    from wmhseg.stats.mixed import clean_term

    names = [clean_term(n) for n in model.exog_names]
    coef = np.asarray(res.params, dtype=float)
    se = np.asarray(res.bse, dtype=float)
    z = stats.norm.ppf(1 - alpha / 2)
    ph_chi2, ph_p = _ph_test(res, d["survival_months"].to_numpy(float), d["event"].to_numpy(float))
    out.terms = pd.DataFrame(
        {
            "term": names,
            "coef": coef,
            "std_err": se,
            "hazard_ratio": np.exp(coef),
            "hr_ci_low": np.exp(coef - z * se),
            "hr_ci_high": np.exp(coef + z * se),
            "p_value": np.asarray(res.pvalues, dtype=float),
            "ph_chi2": ph_chi2,
            "ph_p_value": ph_p,
        }
    )
    out.ph_global_chi2 = float(np.nansum(ph_chi2))
    out.ph_global_p_value = float(stats.chi2.sf(out.ph_global_chi2, len(names)))
    return out


def run_survival(study: StudyData, alpha: float = 0.05) -> SurvivalResult:
    """All survival analyses on the ALS patients with survival data.

    Args:
        study: the analysis data set.
        alpha: 1 - confidence level.
    """
    als = study.scans[study.scans["group"] == "ALS"]
    summary = subject_wmh_summary(als)
    subj = study.subjects[study.subjects["group"] == "ALS"].drop(columns=["n_scans"])
    patients = subj.merge(summary, on="subject_id", how="inner")
    has_data = patients["survival_months"].notna() & patients["event"].notna()
    notes = []
    n_no = int((~has_data).sum())
    if n_no:
        notes.append(
            f"{n_no} ALS patients without survival time and event are left out of the survival analyses"
        )
    patients = patients[has_data].reset_index(drop=True)
    n_one = int(patients["wmh_slope"].isna().sum())
    if n_one:
        notes.append(
            f"{n_one} ALS patients with survival data have no WMH progression (scans at a single time) and are "
            "left out of the progression split and the Cox model"
        )
    km = {v: km_split(patients, v, alpha) for v in ("baseline_wmh", "wmh_slope")}
    cox = fit_cox(patients, list(study.covariates), alpha)
    return SurvivalResult(patients=patients, km=km, cox=cox, notes=notes)
