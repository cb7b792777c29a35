"""Analysis settings: the structured config of ``analyze.py`` (Hydra checks the types and the
keys) and the checks of the values, run when the settings are built.

:class:`AnalyzeConfig` is the schema ``configs/analyze.yaml`` extends (registered in Hydra's
ConfigStore by :mod:`wmhseg.config_store`): an unknown key or a value of the wrong type is
reported by Hydra/OmegaConf, naming the key. The values are checked when the dataclass is built
(``OmegaConf.to_object`` or keyword arguments): a bad choice names the closest allowed value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import MISSING

from wmhseg.errors import InputError, check_known_keys, did_you_mean

__all__ = ["SettingsError", "AnalysisSettings", "AnalyzeConfig", "register_configs", "REPORT_FORMATS", "FIGURE_FORMATS",
           "INFERENCE_METHODS"]

REPORT_FORMATS = ("md", "html")
INFERENCE_METHODS = ("satterthwaite", "wald")
FIGURE_FORMATS = ("png", "svg", "pdf")
_RESERVED = frozenset({"subject_id", "session_id", "wmh_mm3", "alsfrs_r", "years_since_baseline", "group",
                       "survival_months", "event", "cohort", "survival_group"})


class SettingsError(InputError):
    """A configuration value is unusable; the message names the setting and the value."""


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise SettingsError(f"{name}={value!r}: must be one of {', '.join(allowed)}{did_you_mean(text, allowed)}")
    return text


def _number(name: str, value: Any, low: float, high: float, what: str) -> float:
    """``value`` as a float strictly between ``low`` and ``high``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and low < number < high):
        raise SettingsError(f"{name}={value!r}: {what}")
    return number


def _integer(name: str, value: Any, low: int, high: float = math.inf) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"between {low} and {high:g}"
        raise SettingsError(f"{name}={value!r}: must be an integer {bound}")
    return value


def _covariates(value: Any) -> tuple[str, ...]:
    covs = () if value is None else value
    if isinstance(covs, str):
        covs = [c.strip() for c in covs.split(",") if c.strip()]
    covs = tuple(str(c) for c in covs)
    if len(set(covs)) != len(covs):
        raise SettingsError(f"covariates={list(covs)}: a covariate is listed twice")
    bad = [c for c in covs if c in _RESERVED or not c.isidentifier()]
    if bad:
        raise SettingsError(f"covariates={list(covs)}: {bad[0]!r} cannot be a covariate")
    return covs


@dataclass
class AnalysisSettings:
    """How the analysis runs.

    Args:
        cutoff_months: survival-group cut-off in months (> 0).
        covariates: covariates of every model; ``age`` (age at baseline) and ``sex`` are built
            in, other names must be clinical-table columns. May be empty.
        random_slope: give the WMH models (models 1 and 2) a random slope for time in the
            headline (the random-slope fit is always run and reported beside it).
        inference: ``satterthwaite`` (t tests and intervals with Satterthwaite degrees of
            freedom, as lmerTest) or ``wald`` (normal; ``df`` null).
        alpha: 1 - confidence level of every interval, and the significance level the report
            uses (0 < alpha < 1).
        landmark_months: landmark of the survival analysis of WMH progression (> 0).
        bootstrap_samples: resamples for the interval of the C-index difference (0 = none).
        seed: seed of the bootstrap.
        figures: draw figures.
        figure_format: ``png``, ``svg`` or ``pdf``; ``figure_dpi``: resolution of PNGs.
        report_format: ``md`` or ``html``.

    Raises:
        SettingsError: a value is out of range or not one of the choices (named).

    Example:
        >>> AnalysisSettings(cutoff_months=18, covariates=["age"]).covariates
        ('age',)
    """

    cutoff_months: float = 24.0
    covariates: tuple[str, ...] = ("age", "sex")
    random_slope: bool = False
    inference: str = "satterthwaite"
    alpha: float = 0.05
    landmark_months: float = 12.0
    bootstrap_samples: int = 200
    seed: int = 0
    figures: bool = True
    figure_format: str = "png"
    figure_dpi: int = 110
    report_format: str = "md"

    def __post_init__(self) -> None:
        months = "must be a positive number of months"
        self.cutoff_months = _number("cutoff_months", self.cutoff_months, 0.0, math.inf, months)
        self.covariates = _covariates(self.covariates)
        self.alpha = _number("alpha", self.alpha, 0.0, 1.0, "must be between 0 and 1 (e.g. 0.05)")
        for name in ("random_slope", "figures"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name}={getattr(self, name)!r}: must be true or false")
        self.figure_format = _choice("figure_format", self.figure_format, FIGURE_FORMATS)
        self.report_format = _choice("report_format", self.report_format, REPORT_FORMATS)
        self.inference = _choice("inference", self.inference, INFERENCE_METHODS)
        self.landmark_months = _number("landmark_months", self.landmark_months, 0.0, math.inf, months)
        self.bootstrap_samples = _integer("bootstrap_samples", self.bootstrap_samples, 0)
        self.seed = _integer("seed", self.seed, 0)
        self.figure_dpi = _integer("figure_dpi", self.figure_dpi, 20, 1200)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> AnalysisSettings:
        """Build from a mapping of settings; an unknown key is an error naming the closest setting.

        Keys of :class:`AnalyzeConfig` that are not settings (the paths) and ``hydra`` are skipped.
        """
        try:
            check_known_keys([k for k in cfg if k != "hydra"], [f.name for f in fields(AnalyzeConfig)], "analysis")
        except InputError as exc:
            raise SettingsError(str(exc)) from None
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    def as_dict(self) -> dict[str, Any]:
        """The settings (not the paths) as plain values, in field order."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(AnalysisSettings)}


@dataclass
class _Inputs:
    volumes: str = MISSING
    clinical: str = MISSING
    out_dir: str = MISSING


@dataclass
class AnalyzeConfig(AnalysisSettings, _Inputs):
    """``analyze.py``'s config: the two tables, the output folder (``???`` until given) and the settings."""


def register_configs() -> None:
    """Store :class:`AnalyzeConfig` in Hydra's ConfigStore as ``analyze_schema``, the schema that
    ``configs/analyze.yaml`` names first in its defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="analyze_schema", node=AnalyzeConfig)
