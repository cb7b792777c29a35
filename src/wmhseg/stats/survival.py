"""Survival analyses of ALS patients against their WMH, free of immortal-time bias: every
covariate is known at the time from which the patient is counted.

* Patients: ALS with ``survival_months`` and ``event`` and at least one analysed scan; time is
  months from the baseline MRI. The baseline scan is each patient's first analysed scan.
* ``cox_baseline``: WMH of the baseline scan (per 1000 mm3) and the study covariates.
* ``cox_time_varying``: counting-process rows ``(12 t_k, 12 t_k+1]`` per scan ``k`` (the last to
  ``survival_months``), WMH of the latest scan, the event on the last row only; scans at or after
  ``survival_months`` are dropped.
* ``landmark``: patients alive and uncensored at the landmark (default 12 months); their WMH
  slope from the scans up to the landmark (at least two distinct times), survival counted from
  the landmark.
* ``kaplan_meier``: split at the median baseline WMH (``low`` = at or below), log-rank test.
* ``prognostic_value``: see :mod:`wmhseg.stats.prognostic`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wmhseg.stats.cox import CoxData, CoxFit, design, fit_cox
from wmhseg.stats.kaplan import KMSplit, km_split
from wmhseg.stats.prognostic import PrognosticValue, prognostic_value
from wmhseg.stats.study_data import StudyData

__all__ = ["SurvivalResult", "patient_table", "counting_process", "landmark_table", "run_survival"]

PER = 1000.0
WMH_TERM = "wmh_per_1000mm3"
SLOPE_TERM = "wmh_slope_per_1000mm3_per_year"


@dataclass
class SurvivalResult:
    """Everything the survival analyses computed.

    Attributes:
        patients: one row per patient (baseline WMH and ALSFRS-R, covariates, survival).
        km: ``{"baseline_wmh": KMSplit}``; ``cox``: ``cox_baseline`` and ``cox_time_varying``.
        landmark: the landmark Cox model (``landmark_months`` in ``landmark_months``).
        prognostic: Harrell's C of the clinical model with and without baseline WMH.
        counts: the ``survival.json`` counts; ``notes``: what was left out and why.
    """

    patients: pd.DataFrame
    km: dict[str, KMSplit]
    cox: dict[str, CoxFit]
    landmark: CoxFit
    landmark_months: float
    prognostic: PrognosticValue
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def cox_models(self) -> dict[str, CoxFit]:
        """Every Cox model by its ``models.csv`` name."""
        return {**self.cox, f"cox_landmark_{self.landmark_months:g}_months": self.landmark}

    def to_dict(self, cutoff_months: float, alpha: float = 0.05) -> dict[str, object]:
        """The ``survival.json`` content."""
        return {
            "cutoff_months": cutoff_months,
            "counts": dict(self.counts),
            "kaplan_meier": {name: split.to_dict() for name, split in self.km.items()},
            "cox": {name: fit.to_dict(alpha) for name, fit in self.cox.items()},
            "landmark": {"landmark_months": self.landmark_months, **self.landmark.to_dict(alpha)},
            "prognostic_value": self.prognostic.to_dict(),
        }


def patient_table(study: StudyData) -> pd.DataFrame:
    """ALS patients with survival time and event: baseline scan values and survival."""
    scans = study.scans[(study.scans["group"] == "ALS")]
    scans = scans[scans["survival_months"].notna() & scans["event"].notna()]
    first = scans.drop_duplicates("subject_id", keep="first")  # scans are sorted by time
    cols = ["subject_id", "wmh_mm3", "alsfrs_r", "survival_months", "event", "survival_status", "age", "sex"]
    out = first[list(dict.fromkeys([*cols, *study.covariates]))].copy()
    out = out.rename(columns={"wmh_mm3": "baseline_wmh", "alsfrs_r": "baseline_alsfrs_r"})
    out["n_scans"] = scans.groupby("subject_id", sort=False).size().loc[out["subject_id"]].to_numpy()
    return out.reset_index(drop=True)


def counting_process(study: StudyData) -> pd.DataFrame:
    """One ``(start, stop]`` row per usable scan of each patient (months), as the module says."""
    scans = study.scans[(study.scans["group"] == "ALS")]
    scans = scans[scans["survival_months"].notna() & scans["event"].notna()].copy()
    scans["start"] = 12.0 * scans["years_since_baseline"].to_numpy(dtype=float)
    scans = scans[scans["start"] < scans["survival_months"]]
    scans = scans.drop_duplicates(["subject_id", "start"], keep="last")
    last = scans["subject_id"].ne(scans["subject_id"].shift(-1)).to_numpy()
    nxt = scans["start"].shift(-1).to_numpy()
    scans["stop"] = np.where(last, scans["survival_months"].to_numpy(dtype=float), nxt)
    scans["status"] = np.where(last, scans["event"].to_numpy(dtype=float), 0.0)
    return scans.reset_index(drop=True)


def landmark_table(study: StudyData, landmark_months: float) -> pd.DataFrame:
    """Patients alive and uncensored at the landmark with a WMH slope from scans up to it."""
    scans = study.scans[(study.scans["group"] == "ALS")]
    scans = scans[scans["survival_months"].notna() & scans["event"].notna()]
    early = scans[12.0 * scans["years_since_baseline"] <= landmark_months]
    t = early["years_since_baseline"].to_numpy(dtype=float)
    y = early["wmh_mm3"].to_numpy(dtype=float)
    codes, ids = pd.factorize(early["subject_id"])
    n = np.bincount(codes).astype(float)
    dt = t - (np.bincount(codes, t) / n)[codes]
    dy = y - (np.bincount(codes, y) / n)[codes]
    sxx = np.bincount(codes, dt * dt)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 1e-12, np.bincount(codes, dt * dy) / sxx, np.nan)
    first = early.drop_duplicates("subject_id", keep="first").set_index("subject_id").loc[list(ids)]
    out = first.reset_index().assign(wmh_slope=slope)
    out = out[(out["survival_months"] > landmark_months) & out["wmh_slope"].notna()].copy()
    out["time"] = out["survival_months"] - landmark_months
    return out.reset_index(drop=True)


def _covariate_columns(frame: pd.DataFrame, covariates: Sequence[str], notes: list[str], what: str) -> list[str]:
    """Covariates usable in ``frame``: a categorical one with a single level is dropped (noted)."""
    keep = []
    for name in covariates:
        col = frame[name]
        categorical = isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col)
        if categorical and col.astype(str).nunique() < 2:
            notes.append(f"{what}: covariate {name} dropped (a single level in these patients)")
            continue
        keep.append(name)
    return keep


def cox_data(frame: pd.DataFrame, terms: dict[str, str], covariates: Sequence[str], *, start: str | None,
             stop: str, event: str) -> CoxData:
    """CoxData from ``frame``: ``terms`` maps output name -> column (divided by 1000)."""
    x_cov, names = design(frame, covariates)
    n = len(frame)
    x_main = np.column_stack([frame[col].to_numpy(dtype=float) / PER for col in terms.values()] or [np.empty((n, 0))])
    return CoxData(
        start=np.zeros(n) if start is None else frame[start].to_numpy(dtype=float),
        stop=frame[stop].to_numpy(dtype=float),
        event=frame[event].to_numpy(dtype=float),
        x=np.column_stack([x_main, x_cov]),
        names=(*terms, *names),
        n_subjects=int(frame["subject_id"].nunique()),
    )


def run_survival(
    study: StudyData,
    alpha: float = 0.05,
    *,
    landmark_months: float = 12.0,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> SurvivalResult:
    """All survival analyses on the ALS patients with survival data (see the module docstring)."""
    notes: list[str] = []
    patients = patient_table(study)
    covs = _covariate_columns(patients, study.covariates, notes, "Cox models")
    c = study.counts
    counts = {
        "patients": len(patients),
        "events": int(patients["event"].sum()),
        "short": int((patients["survival_status"] == "short").sum()),
        "long": int((patients["survival_status"] == "long").sum()),
        "censored_before_cutoff": int((~patients["survival_status"].isin(["short", "long"])).sum()),
        "no_survival_data": int(c.get("als_no_survival_data", 0) + c.get("als_event_missing", 0)),
    }
    if counts["no_survival_data"]:
        notes.append(f"{counts['no_survival_data']} ALS patients without survival time or event are left out")
    rows = counting_process(study)
    dropped = int(
        ((study.scans["group"] == "ALS") & study.scans["survival_months"].notna() & study.scans["event"].notna()).sum()
    ) - len(rows)
    if dropped:
        notes.append(f"time-varying Cox model: {dropped} scans at or after the end of follow-up are dropped")
    cox = {
        "cox_baseline": fit_cox(
            cox_data(patients, {WMH_TERM: "baseline_wmh"}, covs, start=None, stop="survival_months", event="event")
        ),
        "cox_time_varying": fit_cox(
            cox_data(rows, {WMH_TERM: "wmh_mm3"}, covs, start="start", stop="stop", event="status")
        ),
    }
    land = landmark_table(study, landmark_months)
    landmark = fit_cox(
        cox_data(land, {SLOPE_TERM: "wmh_slope"}, _covariate_columns(land, covs, notes, "landmark model"),
                 start=None, stop="time", event="event")
    ) if len(land) else CoxFit((SLOPE_TERM,), error="no patient is alive, uncensored and has two scans by the landmark")
    prog = prognostic_value(patients, covs, bootstrap_samples=bootstrap_samples, seed=seed, alpha=alpha)
    return SurvivalResult(
        patients=patients,
        km={"baseline_wmh": km_split(patients, "baseline_wmh", alpha)},
        cox=cox,
        landmark=landmark,
        landmark_months=float(landmark_months),
        prognostic=prog,
        counts=counts,
        notes=notes,
    )
