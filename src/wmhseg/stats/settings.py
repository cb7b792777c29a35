"""Analysis settings, checked when built (from keyword arguments or a Hydra/OmegaConf config)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from wmhseg.errors import InputError

__all__ = ["SettingsError", "AnalysisSettings", "REPORT_FORMATS", "FIGURE_FORMATS", "INFERENCE_METHODS"]

REPORT_FORMATS = ("md", "html")
INFERENCE_METHODS = ("satterthwaite", "wald")
FIGURE_FORMATS = ("png", "svg", "pdf")
_BUILTIN_COVARIATES = ("age", "sex")


class SettingsError(InputError):
    """A configuration value is unusable; the message names the setting and the value."""


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        close = difflib.get_close_matches(text, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SettingsError(f"{name}={value!r}: must be one of {', '.join(allowed)}{hint}")
    return text


@dataclass(frozen=True)
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
        try:
            cutoff = float(self.cutoff_months)
        except (TypeError, ValueError):
            cutoff = math.nan
        if not math.isfinite(cutoff) or cutoff <= 0:
            raise SettingsError(f"cutoff_months={self.cutoff_months!r}: must be a positive number of months")
        object.__setattr__(self, "cutoff_months", cutoff)
        covs = self.covariates
        if covs is None:
            covs = ()
        if isinstance(covs, str):
            covs = tuple(c.strip() for c in covs.split(",") if c.strip())
        covs = tuple(str(c) for c in covs)
        if len(set(covs)) != len(covs):
            raise SettingsError(f"covariates={list(covs)}: a covariate is listed twice")
        reserved = {
            "subject_id",
            "session_id",
            "wmh_mm3",
            "alsfrs_r",
            "years_since_baseline",
            "group",
            "survival_months",
            "event",
            "cohort",
            "survival_group",
        }
        bad = [c for c in covs if c in reserved or not c.isidentifier()]
        if bad:
            raise SettingsError(f"covariates={list(covs)}: {bad[0]!r} cannot be a covariate")
        object.__setattr__(self, "covariates", covs)
        try:
            alpha = float(self.alpha)
        except (TypeError, ValueError):
            alpha = math.nan
        if not 0.0 < alpha < 1.0:
            raise SettingsError(f"alpha={self.alpha!r}: must be between 0 and 1 (e.g. 0.05)")
        object.__setattr__(self, "alpha", alpha)
        for name in ("random_slope", "figures"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name}={getattr(self, name)!r}: must be true or false")
        object.__setattr__(
            self, "figure_format", _choice("figure_format", self.figure_format, FIGURE_FORMATS)
        )
        object.__setattr__(
            self, "report_format", _choice("report_format", self.report_format, REPORT_FORMATS)
        )
        object.__setattr__(self, "inference", _choice("inference", self.inference, INFERENCE_METHODS))
        try:
            landmark = float(self.landmark_months)
        except (TypeError, ValueError):
            landmark = math.nan
        if not math.isfinite(landmark) or landmark <= 0:
            raise SettingsError(f"landmark_months={self.landmark_months!r}: must be a positive number of months")
        object.__setattr__(self, "landmark_months", landmark)
        for name, low in (("bootstrap_samples", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SettingsError(f"{name}={value!r}: must be an integer >= {low}")
        if (
            not isinstance(self.figure_dpi, int)
            or isinstance(self.figure_dpi, bool)
            or not 20 <= self.figure_dpi <= 1200
        ):
            raise SettingsError(f"figure_dpi={self.figure_dpi!r}: must be an integer between 20 and 1200")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> AnalysisSettings:
        """Build from a config mapping; keys that are not settings (paths, ``hydra``) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: cfg[k] for k in names if k in cfg}
        if (
            "covariates" in kwargs
            and kwargs["covariates"] is not None
            and not isinstance(kwargs["covariates"], str)
        ):
            kwargs["covariates"] = tuple(kwargs["covariates"])
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)
        }
