"""The study's four headline models and the headline numbers taken from them.

All are REML linear mixed models with a random intercept per participant and the configured
covariates (default: age at baseline and sex):

1. ``wmh_mm3 ~ years_since_baseline * group + covariates`` (all subjects, control reference):
   the ``years_since_baseline:group[T.ALS]`` term, mm3/year.
2. ``wmh_mm3 ~ years_since_baseline * cohort + covariates`` with cohort in control/long/short
   (controls and classified ALS, control reference): the contrast
   ``years:cohort[T.short] - years:cohort[T.long]``, mm3/year, SE from the covariance matrix.
3. ``alsfrs_r ~ wmh_mm3 + covariates`` (ALS scans with ALSFRS-R): the ``wmh_mm3`` slope x 500,
   points per 500 mm3.
4. ``alsfrs_r ~ wmh_mm3 * survival_group + covariates`` (classified ALS with ALSFRS-R, long
   reference): the ``wmh_mm3:survival_group[T.short]`` term x 500, short minus long.

``random_slope=True`` adds a random slope for time to models 1 and 2 (models 3 and 4 have no
time term). A categorical covariate with a single level in a model's data is dropped from that
model and the drop is noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd

from wmhseg.schema import HEADLINE_KEYS
from wmhseg.stats.mixed import Estimate, MixedFit, fit_mixed
from wmhseg.stats.study_data import StudyData

__all__ = ["HEADLINE_KEYS", "MODEL_NAMES", "PER_WMH", "fit_study_models", "fit_spec", "headline_specs", "covariate_terms"]

MODEL_NAMES = {
    "wmh_progression_als_vs_control": "model1_wmh_als_vs_control",
    "wmh_progression_short_vs_long": "model2_wmh_by_survival_group",
    "alsfrs_per_500mm3_wmh": "model3_alsfrs_vs_wmh",
    "alsfrs_wmh_slope_short_vs_long": "model4_alsfrs_vs_wmh_by_survival_group",
}
PER_WMH = 500.0
TIME = "years_since_baseline"


class _Spec(NamedTuple):
    """One headline model: its data, design and the combination of terms reported."""

    key: str
    outcome: str
    design: str
    data: pd.DataFrame
    time_model: bool
    shortage: str | None
    weights: dict[str, float]
    scale: float = 1.0


def covariate_terms(data: pd.DataFrame, covariates: Sequence[str]) -> tuple[list[str], list[str]]:
    """Formula terms for the covariates, and notes on those dropped for having one level."""
    terms, notes = [], []
    for name in covariates:
        col = data[name]
        categorical = isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col)
        if categorical:
            levels = pd.unique(col.dropna().astype(str))
            if len(levels) < 2:
                notes.append(
                    f"covariate {name} dropped: a single level ({', '.join(levels)}) in this model's data"
                )
                continue
            ref = "F" if name == "sex" else sorted(levels)[0]
            terms.append(f"C({name}, Treatment({ref!r}))")
        else:
            terms.append(name)
    return terms, notes


def _shortage(data: pd.DataFrame, column: str, levels: Sequence[str], what: str) -> str | None:
    """A reason the model cannot be fitted when a level has fewer than 2 participants."""
    counts = data.groupby(column, observed=False)["subject_id"].nunique()
    thin = [f"{lvl} ({int(counts.get(lvl, 0))})" for lvl in levels if counts.get(lvl, 0) < 2]
    if thin:
        return f"needs at least 2 {what} per level; participants: {', '.join(thin)}"
    return None


def _fit(
    name: str,
    lhs: str,
    rhs: str,
    data: pd.DataFrame,
    covariates: Sequence[str],
    re_formula: str | None,
    alpha: float,
    shortage: str | None,
    method: str = "satterthwaite",
) -> MixedFit:
    data = data.copy()
    for col in data.columns:
        if isinstance(data[col].dtype, pd.CategoricalDtype):
            data[col] = data[col].cat.remove_unused_categories()
    terms, notes = covariate_terms(data, covariates)
    formula = " + ".join([f"{lhs} ~ {rhs}", *terms])
    n_subj = int(data["subject_id"].nunique())
    if shortage is None and len(data) <= n_subj + 1:
        shortage = f"too few observations ({len(data)}) for {n_subj} participants"
    if shortage is not None:
        return MixedFit(
            name, formula, re_formula, n_subj, len(data), error=shortage, alpha=alpha, messages=notes,
            method=method,
        )
    fit = fit_mixed(name, formula, data, re_formula=re_formula, alpha=alpha, method=method)
    fit.messages[:0] = notes
    return fit


def headline_specs(study: StudyData, outcome_column: str = "wmh_mm3", per_unit: float = PER_WMH) -> list[_Spec]:
    """The four headline models' data and designs.

    Args:
        study: the analysis data set.
        outcome_column: the WMH column (``wmh_mm3``, or a transformed copy added to ``study.scans``
            for a sensitivity analysis): the outcome of models 1-2 and the predictor of models 3-4.
        per_unit: models 3-4 report their WMH slope per this many units of that column.
    """
    scans = study.scans
    survivors = scans[scans["cohort"].notna()]
    als_frs = scans[(scans["group"] == "ALS") & scans["alsfrs_r"].notna()]
    als_frs_groups = als_frs[als_frs["survival_group"].notna()]
    frs_shortage = (
        None if als_frs["subject_id"].nunique() >= 2 else "needs ALSFRS-R scores from 2 ALS patients"
    )
    specs = [
        _Spec(
            "wmh_progression_als_vs_control",
            outcome_column,
            f"{TIME} * C(group, Treatment('control'))",
            scans,
            True,
            _shortage(scans, "group", ["control", "ALS"], "participants"),
            {f"{TIME}:group[T.ALS]": 1.0},
        ),
        _Spec(
            "wmh_progression_short_vs_long",
            outcome_column,
            f"{TIME} * C(cohort, Treatment('control'))",
            survivors,
            True,
            _shortage(survivors, "cohort", ["control", "long", "short"], "participants"),
            {f"{TIME}:cohort[T.short]": 1.0, f"{TIME}:cohort[T.long]": -1.0},
        ),
        _Spec(
            "alsfrs_per_500mm3_wmh",
            "alsfrs_r",
            outcome_column,
            als_frs,
            False,
            frs_shortage,
            {outcome_column: 1.0},
            per_unit,
        ),
        _Spec(
            "alsfrs_wmh_slope_short_vs_long",
            "alsfrs_r",
            f"{outcome_column} * C(survival_group, Treatment('long'))",
            als_frs_groups,
            False,
            _shortage(als_frs_groups, "survival_group", ["long", "short"], "participants with ALSFRS-R"),
            {f"{outcome_column}:survival_group[T.short]": 1.0},
            per_unit,
        ),
    ]
    return specs


def fit_spec(
    spec: _Spec,
    study: StudyData,
    *,
    re_formula: str | None = None,
    alpha: float = 0.05,
    method: str = "satterthwaite",
    name: str | None = None,
) -> tuple[MixedFit, Estimate]:
    """Fit one headline model and take its headline estimate."""
    fit = _fit(
        name or MODEL_NAMES[spec.key],
        spec.outcome,
        spec.design,
        spec.data,
        study.covariates,
        re_formula,
        alpha,
        spec.shortage,
        method,
    )
    return fit, fit.contrast(spec.weights, spec.scale)


def fit_study_models(
    study: StudyData, *, random_slope: bool = False, alpha: float = 0.05, method: str = "satterthwaite"
) -> tuple[dict[str, MixedFit], dict[str, Estimate]]:
    """Fit the four headline models and extract the headline estimates.

    Args:
        study: the analysis data set from :func:`~wmhseg.stats.study_data.build_dataset`.
        random_slope: add a random slope for time to models 1 and 2.
        alpha: 1 - confidence level of the intervals.
        method: ``satterthwaite`` (default) or ``wald``.

    Returns:
        ``(fits, headline)``: fits keyed by model name, estimates keyed by
        :data:`HEADLINE_KEYS` (NaN values when a model could not be fitted).
    """
    fits: dict[str, MixedFit] = {}
    headline: dict[str, Estimate] = {}
    for spec in headline_specs(study):
        re_formula = f"~{TIME}" if (random_slope and spec.time_model) else None
        fit, headline[spec.key] = fit_spec(spec, study, re_formula=re_formula, alpha=alpha, method=method)
        fits[fit.name] = fit
    return fits, headline
