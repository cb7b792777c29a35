"""Prognostic value of baseline WMH: Harrell's C of a clinical Cox model (the study covariates and
the ALSFRS-R of the baseline scan) against the same model plus baseline WMH, with a bootstrap
interval for the difference.

Patients are those with every covariate, a baseline ALSFRS-R and a baseline WMH. The bootstrap
resamples patients with replacement (``bootstrap_samples`` times, NumPy generator seeded with
``seed``), refits both models on each resample (Newton on the Efron likelihood, from the full-data
estimates) and takes the percentile interval of the
difference of their C on that resample (the apparent C, as Harrell's C is usually reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wmhseg.stats.cox import CoxData, concordance, design, fit_cox, newton
from wmhseg.stats.kaplan import risk_table

__all__ = ["PrognosticValue", "prognostic_value"]


@dataclass
class PrognosticValue:
    """Harrell's C with and without baseline WMH; NaN where not computed (``error`` says why).

    ``time_dependent_auc``: month -> ``{"auc_clinical", "auc_clinical_wmh"}``, the cumulative/dynamic
    AUC (Uno's IPCW estimator, as scikit-survival computes it) at 12, 24 and 36 months where follow-up
    reaches them.
    """

    n: int = 0
    events: int = 0
    c_clinical: float = float("nan")
    c_clinical_wmh: float = float("nan")
    c_difference: float = float("nan")
    c_difference_ci_low: float = float("nan")
    c_difference_ci_high: float = float("nan")
    bootstrap_samples: int = 0
    seed: int = 0
    time_dependent_auc: dict[str, dict[str, float | None]] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The ``survival.json`` entry (NaN -> None)."""
        out: dict[str, object] = {}
        for key, value in self.__dict__.items():
            out[key] = None if isinstance(value, float) and not np.isfinite(value) else value
        if self.error is None:
            out.pop("error")
        return out


def _data(frame: pd.DataFrame, covariates: Sequence[str], with_wmh: bool) -> CoxData:
    x, names = design(frame, [*covariates, "baseline_alsfrs_r"])
    if with_wmh:
        x = np.column_stack([x, frame["baseline_wmh"].to_numpy(dtype=float) / 1000.0])
        names = (*names, "wmh_per_1000mm3")
    n = len(frame)
    return CoxData(np.zeros(n), frame["survival_months"].to_numpy(float), frame["event"].to_numpy(float),
                   x, names, n)


def _resample(data: CoxData, rows: np.ndarray) -> CoxData:
    return CoxData(data.start[rows], data.stop[rows], data.event[rows], data.x[rows], data.names, len(rows))


def _apparent_c(data: CoxData, start: np.ndarray) -> float:
    """C of the Cox model refitted on ``data`` (Newton on the Efron likelihood from ``start``)."""
    with np.errstate(all="ignore"):
        try:
            beta, _, good = newton(data, start, tol=1e-5)
        except np.linalg.LinAlgError:
            return float("nan")
    return concordance(data, data.x @ beta) if good else float("nan")


AUC_MONTHS = (12.0, 24.0, 36.0)
_TIED = 1e-8  # risk scores closer than this count as tied (scikit-survival's ``tied_tol``)


def censoring_weights(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Inverse probability of censoring weights ``event / G(time)``: ``G`` is the Kaplan-Meier
    estimate of the censoring distribution, an event at a time counted before a censoring at it
    (scikit-survival's ``CensoringDistributionEstimator``); 0 for censored patients.

    Raises:
        ValueError: ``G`` is zero at an event time (everyone still at risk is censored there).
    """
    table = risk_table(time, event)
    censored = table.ending - table.events
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(censored > 0, censored / (table.at_risk - table.events), 0.0)
    g = np.cumprod(1.0 - ratio)[table.index]
    if np.any((g == 0) & (event == 1)):
        raise ValueError("the censoring survival function is zero at an event time")
    with np.errstate(divide="ignore"):
        return np.where(event == 1, 1.0 / g, 0.0)


def cumulative_dynamic_auc(time: np.ndarray, event: np.ndarray, score: np.ndarray, t: float,
                           weights: np.ndarray | None = None) -> float | None:
    """Uno's cumulative/dynamic AUC at ``t`` (scikit-survival's ``cumulative_dynamic_auc`` with the
    same patients for the censoring distribution and the test): the chance that a patient with an
    event by ``t``, weighted by :func:`censoring_weights` (``weights``, when already computed), has
    a higher score than one event-free after ``t``; tied scores count one half. None when there is
    no such case or control, or the censoring survival is zero at an event time.
    """
    time, event, score = (np.asarray(a, dtype=float) for a in (time, event, score))
    if weights is None:
        try:
            weights = censoring_weights(time, event)
        except ValueError:
            return None
    case = (time <= t) & (event == 1)
    controls = np.sort(score[time > t])
    if not case.any() or not len(controls):
        return None
    below = np.searchsorted(controls, score[case] - _TIED, side="left")
    tied = np.searchsorted(controls, score[case] + _TIED, side="right") - below
    w = weights[case]
    return float(np.sum(w * (below + 0.5 * tied)) / (w.sum() * len(controls)))


def time_dependent_auc(data: CoxData, scores: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Cumulative/dynamic AUC of each risk score at :data:`AUC_MONTHS` (those before the last
    follow-up time and after the first event), by Uno's IPCW estimator (:func:`cumulative_dynamic_auc`)."""
    events = data.stop[data.event == 1]
    times = [t for t in AUC_MONTHS if len(events) and events.min() <= t < data.stop.max()]
    try:
        weights = censoring_weights(data.stop, data.event)
    except ValueError:  # the censoring survival reaches 0 at an event time: no AUC at all
        return {f"{t:g}": dict.fromkeys(scores) for t in times}
    return {f"{t:g}": {name: cumulative_dynamic_auc(data.stop, data.event, score, t, weights)
                       for name, score in scores.items()} for t in times}


def prognostic_value(
    patients: pd.DataFrame,
    covariates: Sequence[str],
    *,
    bootstrap_samples: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> PrognosticValue:
    """Harrell's C of the clinical model, of clinical + baseline WMH, and their difference."""
    d = patients.dropna(subset=[*covariates, "baseline_alsfrs_r", "baseline_wmh"]).reset_index(drop=True)
    out = PrognosticValue(n=len(d), events=int(d["event"].sum()), bootstrap_samples=bootstrap_samples, seed=seed)
    data_clinical, data_full = _data(d, covariates, False), _data(d, covariates, True)
    clinical, full = fit_cox(data_clinical), fit_cox(data_full)
    if clinical.error or full.error:
        out.error = f"Cox model not fitted: {clinical.error or full.error}"
        return out
    out.c_clinical, out.c_clinical_wmh = clinical.concordance, full.concordance
    out.c_difference = full.concordance - clinical.concordance
    out.time_dependent_auc = time_dependent_auc(
        data_full, {"auc_clinical": data_clinical.x @ clinical.coef, "auc_clinical_wmh": data_full.x @ full.coef}
    )
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(bootstrap_samples):
        rows = rng.integers(0, len(d), len(d))
        if data_full.event[rows].sum() < 2:
            continue
        diffs.append(
            _apparent_c(_resample(data_full, rows), full.coef)
            - _apparent_c(_resample(data_clinical, rows), clinical.coef)
        )
    diffs = np.asarray(diffs)
    diffs = diffs[np.isfinite(diffs)]
    out.bootstrap_samples = len(diffs)  # the resamples where both models could be refitted
    if len(diffs) >= 20:
        low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
        out.c_difference_ci_low, out.c_difference_ci_high = float(low), float(high)
    return out
