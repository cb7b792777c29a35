"""A cohort simulator that does not share the analysis models' assumptions (pure NumPy/pandas).

It checks the statistics against data they were not built around:

* per-participant random WMH slopes (``slope_sd``; 0 switches the heterogeneity off) on top of
  the group means, with log-normal baseline WMH whose log grows with age;
* ALSFRS-R that declines with time at a per-patient rate (faster in fast progressors), plus a
  WMH effect ``alsfrs_per_500mm3`` conditional on time;
* deaths between visits: fast progressors die between 3 and 24 months, slow ones after 24; a
  visit after death or after the end of follow-up does not happen;
* missed visits, permanent dropout, administrative censoring (end of follow-up uniform over
  12-72 months, so some patients are censored before the cut-off) and patients without
  survival data.

Truths (``Cohort.truth``, keyed like ``headline.json``): ``wmh_progression_als_vs_control`` =
``als_extra_slope`` and ``wmh_progression_short_vs_long`` = ``short_extra_slope`` (short
survivors are exactly the fast progressors whose death was observed, long survivors the slow ones
followed past the cut-off); ``alsfrs_per_500mm3_wmh_given_time`` = ``alsfrs_per_500mm3``, the
effect that ``alsfrs_r ~ wmh_mm3 + years_since_baseline + ...`` estimates (the study's model 3,
without time, mixes in the time course).

Example:
    >>> cohort = simulate_disease(DiseaseParams(n_als=30, n_control=20, seed=1))
    >>> sorted(cohort.truth)[0]
    'alsfrs_per_500mm3_wmh_given_time'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wmhseg.synth.cohort import Cohort

__all__ = ["DiseaseParams", "simulate_disease"]

CUTOFF_MONTHS = 24.0


@dataclass(frozen=True)
class DiseaseParams:
    """Parameters of :func:`simulate_disease` (WMH in mm3, time in years unless named months)."""

    # who
    n_als: int = 120
    n_control: int = 100
    p_male: float = 0.55
    # visits, missed visits and dropout
    max_visits: int = 4
    visit_interval_years: float = 0.5
    visit_jitter_years: float = 0.1
    p_missed_visit: float = 0.1
    p_dropout_per_visit: float = 0.08
    # baseline WMH (log scale)
    baseline_wmh_median_mm3: float = 3000.0
    baseline_wmh_log_sd: float = 0.5
    wmh_log_per_year_of_age: float = 0.03
    # WMH progression (mm3/year): group means, per-participant spread, visit noise
    control_slope: float = 150.0
    als_extra_slope: float = 911.5
    short_extra_slope: float = 1006.0
    slope_sd: float = 300.0
    wmh_residual_sd: float = 250.0
    # ALSFRS-R decline, slow and fast progressors
    p_fast: float = 0.4
    alsfrs_baseline_mean: float = 40.0
    alsfrs_decline_per_year: tuple[float, float] = (4.0, 9.0)  # slow, fast progressors
    alsfrs_decline_sd: float = 2.0
    # ALSFRS-R against WMH, survival data, the random stream
    alsfrs_per_500mm3: float = -1.0
    alsfrs_residual_sd: float = 1.5
    p_survival_data: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_als < 2 or self.n_control < 2:
            raise ValueError(f"n_als={self.n_als}, n_control={self.n_control}: need at least 2 of each")
        for name in ("p_missed_visit", "p_dropout_per_visit", "p_male", "p_fast", "p_survival_data"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a probability")
        if self.slope_sd < 0 or self.wmh_residual_sd < 0:
            raise ValueError("slope_sd and wmh_residual_sd must be >= 0")


def _visits(rng: np.random.Generator, p: DiseaseParams, end_years: float) -> np.ndarray:
    """Visit times before ``end_years``: planned every interval (jittered), missed or dropped out."""
    planned = np.arange(p.max_visits) * p.visit_interval_years
    planned[1:] += rng.uniform(-p.visit_jitter_years, p.visit_jitter_years, p.max_visits - 1)
    kept = [0.0]
    for t in planned[1:]:
        if t >= end_years or rng.random() < p.p_dropout_per_visit:
            break
        if rng.random() >= p.p_missed_visit:
            kept.append(float(t))
    return np.array(kept)


def _survival(rng: np.random.Generator, fast: bool) -> tuple[float, float, float]:
    """(death months, end of follow-up months, observed months) of one patient."""
    death = rng.uniform(3.0, CUTOFF_MONTHS) if fast else CUTOFF_MONTHS + rng.weibull(1.3) * 30.0
    follow_up = rng.uniform(12.0, 72.0)
    return death, follow_up, min(death, follow_up)


def simulate_disease(params: DiseaseParams | None = None) -> Cohort:
    """Simulate volume and clinical tables (the schemas of ``analyze.py``) with known truths."""
    p = params or DiseaseParams()
    rng = np.random.default_rng(p.seed)
    vol_rows, clin_rows, subjects = [], [], []
    n = p.n_als + p.n_control
    for i in range(n):
        als = i < p.n_als
        sid = f"sub-{i + 1:04d}"
        age = float(np.clip(rng.normal(60, 10), 30, 85))
        sex = "M" if rng.random() < p.p_male else "F"
        base = p.baseline_wmh_median_mm3 * np.exp(
            p.wmh_log_per_year_of_age * (age - 60) + rng.normal(0, p.baseline_wmh_log_sd)
        )
        fast = als and rng.random() < p.p_fast
        slope = p.control_slope + rng.normal(0, p.slope_sd)
        end_years, months, event = np.inf, np.nan, np.nan
        if als:
            shift = p.short_extra_slope * ((1 - p.p_fast) if fast else -p.p_fast)
            slope += p.als_extra_slope + shift
            death, follow_up, observed = _survival(rng, fast)
            end_years = observed / 12.0
            if rng.random() < p.p_survival_data:
                months, event = round(observed, 2), float(death <= follow_up)
            decline = rng.normal(p.alsfrs_decline_per_year[int(fast)], p.alsfrs_decline_sd)
            frs0 = rng.normal(p.alsfrs_baseline_mean, 3.0)
        visits = _visits(rng, p, end_years)
        subjects.append({"subject_id": sid, "group": "ALS" if als else "control", "age": age, "sex": sex,
                         "baseline_wmh": base, "wmh_slope": slope, "fast": fast, "n_visits": len(visits)})
        for k, t in enumerate(visits):
            wmh = max(base + slope * t + rng.normal(0, p.wmh_residual_sd), 0.0)
            ses = f"ses-{k + 1:02d}"
            frs = np.nan
            if als:
                frs = frs0 - decline * t + p.alsfrs_per_500mm3 * wmh / 500 + rng.normal(0, p.alsfrs_residual_sd)
                frs = float(np.clip(np.round(frs), 0, 48))
            vol_rows.append({"subject_id": sid, "session_id": ses, "wmh_mm3": round(wmh, 1), "n_lesions": 1,
                             "status": "ok", "error": ""})
            clin_rows.append({"subject_id": sid, "session_id": ses, "group": "ALS" if als else "control",
                              "age": round(age + t, 2), "sex": sex, "years_since_baseline": round(t, 3),
                              "alsfrs_r": frs, "survival_months": months, "event": event})
    truth = {
        "wmh_progression_als_vs_control": p.als_extra_slope,
        "wmh_progression_short_vs_long": p.short_extra_slope,
        "alsfrs_per_500mm3_wmh_given_time": p.alsfrs_per_500mm3,
    }
    return Cohort(volumes=pd.DataFrame(vol_rows), clinical=pd.DataFrame(clin_rows), truth=truth,
                  subjects=pd.DataFrame(subjects), params=p)  # type: ignore[arg-type]
