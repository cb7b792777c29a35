"""Sensitivity analyses of the headline models, with a flag where a conclusion changes.

* ``log WMH``: the four models on ``log(WMH + 1 mm3)`` (outcome of models 1-2, predictor of 3-4;
  models 3-4 then per unit of log WMH): is a result carried by a few large volumes?
* ``% ICV``: on WMH as a percentage of intracranial volume (``icv_mm3``, a column of the volume or
  clinical table), when present (models 3-4 per 0.1% of ICV): is it head size?
* ``model 3 + time``: ``alsfrs_r ~ wmh_mm3 + years_since_baseline + covariates``, because WMH growth
  and the decline of ALSFRS-R share the time axis.

A conclusion is "significant at alpha, and its sign"; it changes when significance differs from
the headline's, or both are significant with opposite signs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wmhseg.stats.headline_models import MODEL_NAMES, TIME, fit_spec, headline_specs
from wmhseg.stats.mixed import Estimate, MixedFit
from wmhseg.stats.study_data import StudyData

__all__ = ["Sensitivity", "run_sensitivity", "conclusion"]


def conclusion(e: Estimate, alpha: float) -> str:
    """``"positive"``, ``"negative"``, ``"not significant"`` or ``"not estimated"``."""
    if not np.isfinite(e.p_value):
        return "not estimated"
    if e.p_value >= alpha:
        return "not significant"
    return "positive" if e.estimate > 0 else "negative"


@dataclass
class Sensitivity:
    """One headline re-estimated under one alternative analysis.

    Attributes:
        key: the headline; ``analysis``: which alternative; ``unit``: the estimate's unit.
        fit, estimate: the alternative model and its estimate of the headline quantity.
        headline: the conclusion of the headline; ``alternative``: that of this analysis.
    """

    key: str
    analysis: str
    unit: str
    fit: MixedFit
    estimate: Estimate
    headline: str
    alternative: str

    @property
    def changed(self) -> bool:
        return "not estimated" not in (self.headline, self.alternative) and self.headline != self.alternative


def _icv_column(study: StudyData) -> pd.Series | None:
    if "icv_mm3" not in study.scans.columns:
        return None
    icv = pd.to_numeric(study.scans["icv_mm3"], errors="coerce")
    return icv.where(icv > 0)


def run_sensitivity(
    study: StudyData, headline: dict[str, Estimate], *, alpha: float = 0.05, method: str = "satterthwaite"
) -> list[Sensitivity]:
    """Every sensitivity analysis the data allow (see the module docstring)."""
    variants = [("log WMH", "log_wmh", 1.0, "per unit of log(WMH + 1)", np.log1p(study.scans["wmh_mm3"]))]
    icv = _icv_column(study)
    if icv is not None and icv.notna().any():
        variants.append(("% ICV", "wmh_pct_icv", 0.1, "per 0.1% of ICV", 100.0 * study.scans["wmh_mm3"] / icv))
    out = []
    for label, column, per_unit, unit, values in variants:
        scans = study.scans.assign(**{column: values})
        alt = dataclasses.replace(study, scans=scans[scans[column].notna()])
        for spec in headline_specs(alt, outcome_column=column, per_unit=per_unit):
            name = f"{MODEL_NAMES[spec.key]}_{column}"
            fit, e = fit_spec(spec, alt, alpha=alpha, method=method, name=name)
            what = "%/year" if column == "wmh_pct_icv" and spec.time_model else unit
            if spec.time_model and column == "log_wmh":
                what = "log units/year"
            out.append(Sensitivity(spec.key, label, what, fit, e, conclusion(headline[spec.key], alpha),
                                   conclusion(e, alpha)))
    spec = headline_specs(study)[2]
    spec = spec._replace(design=f"{spec.design} + {TIME}")
    fit, e = fit_spec(spec, study, alpha=alpha, method=method, name=f"{MODEL_NAMES[spec.key]}_with_time")
    out.append(Sensitivity(spec.key, "model 3 + time", "points per 500 mm3", fit, e,
                           conclusion(headline[spec.key], alpha), conclusion(e, alpha)))
    return out
