"""Longitudinal mixed-effects and survival statistics of WMH volumes, from CSV tables alone.

Never imports torch. The pieces, along the data flow:

* :mod:`~wmhseg.stats.tables`: read and check the volume and clinical tables (:class:`TableError`);
* :mod:`~wmhseg.stats.study_data`: join them, baseline covariates, survival groups, left-out ledger;
* :mod:`~wmhseg.stats.mixed`: REML fits (lme4's estimates, lmerTest's inference) with retries, estimates and contrasts;
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

import importlib
from typing import Any

# name -> module; the modules load on first use, so that importing the settings (or --help) stays cheap
_EXPORTS = {
    "AnalysisResult": "analysis", "analyze": "analysis", "run_analysis": "analysis", "write_outputs": "analysis",
    "StudyData": "study_data", "build_dataset": "study_data", "classify_survival": "study_data",
    "Estimate": "mixed", "MixedFit": "mixed", "fit_mixed": "mixed",
    "HEADLINE_KEYS": "headline_models", "fit_study_models": "headline_models",
    "AnalysisSettings": "analyze_config", "SettingsError": "analyze_config",
    "SurvivalResult": "survival", "run_survival": "survival",
    "TableError": "tables", "check_clinical": "tables", "check_volumes": "tables", "load_clinical": "tables",
    "load_volumes": "tables", "read_table": "tables",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
