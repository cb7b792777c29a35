"""Longitudinal mixed-effects and survival statistics of WMH volumes, from CSV tables alone.

Never imports torch. The pieces, along the data flow:

* :mod:`~wmhseg.stats.tables`: read and check the volume and clinical tables (:class:`TableError`);
* :mod:`~wmhseg.stats.study_data`: join them, baseline covariates, survival groups, left-out ledger;
* :mod:`~wmhseg.stats.mixed`: MixedLM fits with retries, estimates and contrasts;
* :mod:`~wmhseg.stats.headline_models`: the study's four headline models;
* :mod:`~wmhseg.stats.survival`: per-patient WMH slopes, Kaplan-Meier, log-rank, Cox;
* :mod:`~wmhseg.stats.figures`, :mod:`~wmhseg.stats.report`: figures and the written report;
* :mod:`~wmhseg.stats.analysis`: :func:`run_analysis` (compute), :func:`write_outputs`, :func:`analyze`.

Example:
    >>> from wmhseg.stats import AnalysisSettings, run_analysis, write_outputs
    >>> result = run_analysis(volumes_df, clinical_df, AnalysisSettings())  # doctest: +SKIP
    >>> write_outputs(result, "out")  # doctest: +SKIP
"""

from __future__ import annotations

from wmhseg.stats.analysis import AnalysisResult, analyze, run_analysis, write_outputs
from wmhseg.stats.headline_models import HEADLINE_KEYS, fit_study_models
from wmhseg.stats.mixed import Estimate, MixedFit, fit_mixed
from wmhseg.stats.settings import AnalysisSettings, SettingsError
from wmhseg.stats.study_data import StudyData, build_dataset, classify_survival
from wmhseg.stats.survival import SurvivalResult, run_survival
from wmhseg.stats.tables import (
    TableError,
    check_clinical,
    check_volumes,
    load_clinical,
    load_volumes,
    read_table,
)

__all__ = [
    "AnalysisResult",
    "AnalysisSettings",
    "Estimate",
    "HEADLINE_KEYS",
    "MixedFit",
    "SettingsError",
    "StudyData",
    "SurvivalResult",
    "TableError",
    "analyze",
    "build_dataset",
    "check_clinical",
    "check_volumes",
    "classify_survival",
    "fit_mixed",
    "fit_study_models",
    "load_clinical",
    "load_volumes",
    "read_table",
    "run_analysis",
    "run_survival",
    "write_outputs",
]
