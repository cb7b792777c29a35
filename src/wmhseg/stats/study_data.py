"""The analysis data set: scans joined to clinical rows, baseline covariates, survival groups,
and a ledger of every row left out and why.

Survival groups (cut-off ``c`` months, default 24): ``short`` = event 1 and
``survival_months < c``; ``long`` = ``survival_months >= c``; an ALS patient censored before
``c``, with an event before ``c`` but no event flag, or without survival data belongs to
neither and is left out of the survival-group models (and counted).

The ``age`` covariate is each subject's age at baseline: the ``age`` on the subject's clinical
row with the smallest ``years_since_baseline``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wmhseg.schema import LEFT_OUT_COLUMNS, SEXES
from wmhseg.stats.tables import TableError, VolumeTable, is_missing, lines

__all__ = [
    "SURVIVAL_STATUSES",
    "StudyData",
    "classify_survival",
    "build_dataset",
]

SURVIVAL_STATUSES = ("short", "long", "censored_before_cutoff", "event_missing", "no_survival_data")
_STATUS_TEXT = {
    "censored_before_cutoff": "censored before the cut-off",
    "event_missing": "survival time before the cut-off without an event flag",
    "no_survival_data": "no survival data",
}


def classify_survival(months: np.ndarray, event: np.ndarray, cutoff_months: float = 24.0) -> np.ndarray:
    """Survival status of each patient: one of :data:`SURVIVAL_STATUSES`.

    Args:
        months: survival months (NaN when unknown).
        event: 1 = outcome reached, 0 = censored, NaN = unknown.
        cutoff_months: the cut-off (> 0).

    Example:
        >>> classify_survival(np.array([23.9, 24.0, 23.9, np.nan]), np.array([0, 1, 1, np.nan]))
        array(['censored_before_cutoff', 'long', 'short', 'no_survival_data'], dtype='<U22')
    """
    months = np.asarray(months, dtype=float)
    event = np.asarray(event, dtype=float)
    if not np.isfinite(cutoff_months) or cutoff_months <= 0:
        raise ValueError(f"cutoff_months={cutoff_months!r}: must be a positive number of months")
    out = np.full(months.shape, "no_survival_data", dtype="<U22")
    known = ~np.isnan(months)
    out[known & (months >= cutoff_months)] = "long"
    before = known & (months < cutoff_months)
    out[before & (event == 1)] = "short"
    out[before & (event == 0)] = "censored_before_cutoff"
    out[before & np.isnan(event)] = "event_missing"
    return out


@dataclass
class StudyData:
    """The joined data used by every model.

    Attributes:
        scans: one row per usable scan: ``subject_id, session_id, years_since_baseline,
            wmh_mm3, group, sex, age, alsfrs_r, survival_months, event, survival_status,
            survival_group, cohort`` plus extra covariates. ``group`` is categorical with
            ``control`` first, ``sex`` with ``F`` first, ``survival_group`` with ``long`` first
            and ``cohort`` (control/long/short) with ``control`` first.
        subjects: one row per subject in ``scans`` (baseline values, survival status).
        left_out: every row left out of some analysis: ``table, line, subject_id, session_id,
            left_out_of, reason``.
        counts: the numbers the report states.
        covariates: the covariate columns used by the models.
        cutoff_months: the survival-group cut-off.
    """

    scans: pd.DataFrame
    subjects: pd.DataFrame
    left_out: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    covariates: tuple[str, ...] = ("age", "sex")
    cutoff_months: float = 24.0


def _baseline_rows(clinical: pd.DataFrame) -> pd.DataFrame:
    """Each subject's clinical row with the smallest ``years_since_baseline``."""
    order = clinical.sort_values(["subject_id", "years_since_baseline", "line"], kind="stable")
    return order.drop_duplicates("subject_id", keep="first").set_index("subject_id")


def _extra_covariate(clinical: pd.DataFrame, name: str, source: str) -> pd.Series:
    if name not in clinical.columns:
        raise TableError(
            f"{source}: covariate {name!r} is not a column (columns: {', '.join(map(str, clinical.columns))})"
        )
    col = clinical[name]
    missing = is_missing(col)
    if missing.any():
        raise TableError(f"{source}: covariate column {name} is missing on {lines(np.flatnonzero(missing))}")
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(float)
    return col.astype(str).str.strip().astype("category")


_KEYS = ["subject_id", "session_id"]


class _Ledger:
    """The rows left out of some analysis, and why."""

    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []

    def record(self, frame: pd.DataFrame, table: str, scope: str, reason: str | pd.Series, line: str = "line") -> None:
        if len(frame):
            self.parts.append(pd.DataFrame({
                "table": table,
                "line": frame[line].to_numpy(),
                "subject_id": frame["subject_id"].to_numpy(),
                "session_id": frame["session_id"].to_numpy(),
                "left_out_of": scope,
                "reason": reason if isinstance(reason, str) else reason.to_numpy(),
            }))

    def frame(self) -> pd.DataFrame:
        return pd.concat(self.parts, ignore_index=True) if self.parts else pd.DataFrame(columns=list(LEFT_OUT_COLUMNS))


def _record_unjoined(volumes: VolumeTable, clinical: pd.DataFrame, ledger: _Ledger) -> dict[str, int]:
    """Ledger the failed scans, scans without a clinical row and clinical rows without a usable scan."""
    scans, failed = volumes.scans, volumes.failed
    ledger.record(failed, "volumes", "all analyses",
                  "status " + failed["status"].astype(str) + ": " + failed["error"].astype(str))
    clin_keys = pd.MultiIndex.from_frame(clinical[_KEYS])
    scan_keys = pd.MultiIndex.from_frame(scans[_KEYS])
    failed_keys = (pd.MultiIndex.from_frame(failed[_KEYS]) if len(failed)
                   else pd.MultiIndex.from_tuples([], names=_KEYS))
    no_clin = scans[~scan_keys.isin(clin_keys)]
    ledger.record(no_clin, "volumes", "all analyses", "no clinical row for this scan")
    orphan = clinical[~clin_keys.isin(scan_keys)]
    scan_failed = pd.MultiIndex.from_frame(orphan[_KEYS]).isin(failed_keys)
    ledger.record(orphan[scan_failed], "clinical", "all analyses", "the scan failed (status not ok)")
    ledger.record(orphan[~scan_failed], "clinical", "all analyses", "no scan in the volume table")
    return {
        "volume_rows": len(scans) + len(failed),
        "scans_failed": len(failed),
        "scans_without_clinical": len(no_clin),
        "clinical_rows": len(clinical),
        "clinical_without_scan": int((~scan_failed).sum()),
        "clinical_scan_failed": int(scan_failed.sum()),
    }


def _add_groups(merged: pd.DataFrame, cutoff_months: float) -> np.ndarray:
    """Survival status and group, cohort, typed ``group`` and ``sex``; returns the ALS mask."""
    status = classify_survival(merged["survival_months"].to_numpy(), merged["event"].to_numpy(), cutoff_months)
    is_als = (merged["group"] == "ALS").to_numpy()
    status = np.where(is_als, status, "control")
    merged["survival_status"] = status
    merged["survival_group"] = pd.Categorical(
        np.where(np.isin(status, ("short", "long")), status, None), categories=["long", "short"]
    )
    merged["cohort"] = pd.Categorical(
        np.where(is_als, merged["survival_group"].astype(object), "control"),
        categories=["control", "long", "short"],
    )
    merged["group"] = pd.Categorical(merged["group"], categories=["control", "ALS"])
    merged["sex"] = pd.Categorical(merged["sex"], categories=list(SEXES))
    return is_als


def _per_subject(data: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    per_subject = ["group", "sex", "age", "survival_months", "event", "survival_status", "survival_group", "cohort",
                   *extra]
    subjects = data.groupby("subject_id", sort=False, observed=True)[per_subject].first().reset_index()
    subjects["n_scans"] = data.groupby("subject_id", sort=False).size().to_numpy()
    return subjects


def _subject_counts(subjects: pd.DataFrame) -> dict[str, int]:
    als = subjects[subjects["group"] == "ALS"]
    control = subjects["group"] == "control"
    counts = {
        "subjects": len(subjects),
        "subjects_als": len(als),
        "subjects_control": int(control.sum()),
        "controls_with_survival_data": int((control & subjects["survival_months"].notna()).sum()),
    }
    for s in SURVIVAL_STATUSES:
        counts[f"als_{s}"] = int((als["survival_status"] == s).sum())
    return counts


def build_dataset(
    volumes: VolumeTable,
    clinical: pd.DataFrame,
    *,
    cutoff_months: float = 24.0,
    covariates: Sequence[str] = ("age", "sex"),
    clinical_source: str = "clinical table",
) -> StudyData:
    """Join checked volume and clinical tables into the analysis data set.

    Args:
        volumes: from :func:`~wmhseg.stats.tables.check_volumes`.
        clinical: from :func:`~wmhseg.stats.tables.check_clinical`.
        cutoff_months: survival-group cut-off.
        covariates: covariate columns; ``age`` (baseline age) and ``sex`` are built in, any other
            clinical column can be named (numeric if every value is, else categorical).
        clinical_source: the clinical table's name in messages.

    Raises:
        TableError: a named covariate column is absent or has missing values; no scan joins a
            clinical row.
    """
    covariates = tuple(dict.fromkeys(covariates))
    extra = [c for c in covariates if c not in ("age", "sex")]
    scans = volumes.scans
    merged = scans.merge(clinical, on=_KEYS, how="inner", suffixes=("", "_clinical"), validate="one_to_one")
    ledger = _Ledger()
    counts = _record_unjoined(volumes, clinical, ledger)
    if merged.empty:
        raise TableError(
            f"{clinical_source}: no row matches a usable scan of {volumes.source} on subject_id and session_id "
            f"({len(scans)} usable scans, {len(clinical)} clinical rows)"
        )
    merged["age"] = _baseline_rows(clinical).loc[merged["subject_id"], "age"].to_numpy(dtype=float)
    for name in extra:
        merged[name] = _extra_covariate(merged, name, clinical_source).to_numpy()
    is_als = _add_groups(merged, cutoff_months)
    unclassified = merged[is_als & ~merged["survival_group"].notna().to_numpy()]
    ledger.record(unclassified, "clinical", "survival-group models and Kaplan-Meier/Cox analyses",
                  unclassified["survival_status"].map(lambda s: _STATUS_TEXT.get(s, s)), line="line_clinical")
    no_frs = merged[is_als & merged["alsfrs_r"].isna().to_numpy()]
    ledger.record(no_frs, "clinical", "ALSFRS-R models", "no ALSFRS-R score", line="line_clinical")

    columns = ["subject_id", "session_id", "years_since_baseline", "wmh_mm3", "n_lesions", "group", "sex", "age",
               "alsfrs_r", "survival_months", "event", "survival_status", "survival_group", "cohort", *extra]
    if "icv_mm3" in merged.columns:  # from the volume table, or else the clinical table
        merged["icv_mm3"] = pd.to_numeric(merged["icv_mm3"], errors="coerce")
        columns.append("icv_mm3")
    data = merged[columns].sort_values(["subject_id", "years_since_baseline"], kind="stable").reset_index(drop=True)
    subjects = _per_subject(data, extra)
    counts |= {"scans_used": len(data), "scans_als": int(is_als.sum()), "scans_control": int((~is_als).sum()),
               "als_scans_without_alsfrs": len(no_frs)} | _subject_counts(subjects)
    return StudyData(scans=data, subjects=subjects, left_out=ledger.frame(), counts=counts,
                     covariates=covariates, cutoff_months=float(cutoff_months))
