"""The whole analysis: tables -> data set -> headline models + survival -> outputs.

Computation (:func:`run_analysis`) is separate from writing (:func:`write_outputs`);
:func:`analyze` does both from a config, as ``analyze.py`` does.

Outputs in ``out_dir`` (each written atomically):

* ``headline.json``: the four headline estimates (keys in :data:`HEADLINE_KEYS`), each
  ``{estimate, std_err, ci_low, ci_high, p_value, n_subjects, n_obs}`` (NaN -> null);
* ``models.csv``: every term of every model (fixed effects, variance components, the
  short-minus-long contrast, the headline values as reported, the Cox terms);
* ``left_out.csv``: every row left out of some analysis and why;
* ``survival.json``: Kaplan-Meier split, Cox models (baseline, time-varying, landmark), PH tests,
  prognostic value (see :mod:`wmhseg.stats.survival`);
* ``survival_patients.csv``: per ALS patient baseline WMH, baseline ALSFRS-R and survival;
* ``figures/``: trajectories, ALSFRS-R vs WMH, Kaplan-Meier curves;
* ``report.md`` (or ``report.html``).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wmhseg.files import atomic_write_csv, atomic_write_json, atomic_write_text
from wmhseg.stats.analyze_config import AnalysisSettings, AnalyzeConfig, SettingsError
from wmhseg.stats.headline_models import HEADLINE_KEYS, MODEL_NAMES, fit_study_models
from wmhseg.stats.mixed import Estimate, MixedFit
from wmhseg.stats.models_table import models_table
from wmhseg.stats.sensitivity import Sensitivity, run_sensitivity
from wmhseg.stats.structure import SlopeCheck, check_random_slopes
from wmhseg.stats.study_data import StudyData, build_dataset
from wmhseg.stats.survival import SurvivalResult, run_survival
from wmhseg.stats.tables import check_clinical, check_volumes, load_clinical, load_volumes

__all__ = ["AnalysisResult", "run_analysis", "write_outputs", "analyze"]

log = logging.getLogger(__name__)

@dataclass
class AnalysisResult:
    """Everything the analysis computed; nothing written yet.

    Attributes:
        settings: the settings used; ``sources``: names of the two input tables.
        study: the joined data set with its ledger of left-out rows.
        fits: the four mixed models; ``headline``: their headline estimates.
        slopes: random intercept vs random slope for models 1 and 2 (both fits, REML LRT).
        sensitivity: the headlines under alternative analyses, flagged where a conclusion changes.
        survival: per-patient summaries, Kaplan-Meier splits and the Cox model.
        seconds: wall time of each stage; ``provenance``: versions and settings for the report.
    """

    settings: AnalysisSettings
    sources: dict[str, str]
    study: StudyData
    fits: dict[str, MixedFit]
    headline: dict[str, Estimate]
    survival: SurvivalResult
    slopes: dict[str, SlopeCheck] = field(default_factory=dict)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)

    def headline_dict(self) -> dict[str, dict[str, float | int | None]]:
        """The ``headline.json`` content."""
        return {key: self.headline[key].to_dict() for key in HEADLINE_KEYS}

    def models_table(self) -> pd.DataFrame:
        """The ``models.csv`` content: one row per term of every model."""
        return models_table(self)


def _provenance(
    settings: AnalysisSettings, sources: Mapping[str, str], seconds: Mapping[str, float]
) -> dict[str, str]:
    from importlib.metadata import version  # not ``import matplotlib``: a run without figures never loads it

    from wmhseg import __version__

    return {
        "volume table": sources["volumes"],
        "clinical table": sources["clinical"],
        "settings": ", ".join(f"{k}={v}" for k, v in settings.as_dict().items()),
        "software": (
            f"wmhseg {__version__}, statsmodels {version('statsmodels')}, pandas {version('pandas')}, "
            f"numpy {version('numpy')}, scipy {version('scipy')}, matplotlib {version('matplotlib')}, "
            f"Python {platform.python_version()}"
        ),
        "computation time": ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
    }


def run_analysis(
    volumes: pd.DataFrame,
    clinical: pd.DataFrame,
    settings: AnalysisSettings | None = None,
    *,
    volumes_source: str = "volume table",
    clinical_source: str = "clinical table",
) -> AnalysisResult:
    """Check the tables, join them, fit the headline models and run the survival analyses.

    Args:
        volumes: a volume table (text cells as from :func:`~wmhseg.stats.tables.read_table`,
            or typed columns).
        clinical: a clinical table, likewise.
        settings: analysis settings (defaults when omitted).
        volumes_source, clinical_source: the tables' names in messages and the report.

    Returns:
        An :class:`AnalysisResult`; nothing is written.

    Raises:
        TableError: a table is unusable (names the table, column and rows).

    Example:
        >>> from wmhseg.synth.cohort import simulate_cohort
        >>> c = simulate_cohort()
        >>> run_analysis(c.volumes, c.clinical).headline_dict()["wmh_progression_als_vs_control"]  # doctest: +SKIP
    """
    settings = settings or AnalysisSettings()
    t0 = time.perf_counter()
    vol = check_volumes(volumes, source=volumes_source)
    clin = check_clinical(clinical, source=clinical_source)
    return _run(vol, clin, settings, {"volumes": volumes_source, "clinical": clinical_source}, t0)


def _run(vol, clin, settings: AnalysisSettings, sources: dict[str, str], t0: float) -> AnalysisResult:
    study = build_dataset(
        vol,
        clin,
        cutoff_months=settings.cutoff_months,
        covariates=settings.covariates,
        clinical_source=sources["clinical"],
    )
    t1 = time.perf_counter()
    fits, headline = fit_study_models(
        study, random_slope=settings.random_slope, alpha=settings.alpha, method=settings.inference
    )
    slopes = check_random_slopes(
        study, fits, headline, random_slope=settings.random_slope, alpha=settings.alpha, method=settings.inference
    )
    sensitivity = run_sensitivity(study, headline, alpha=settings.alpha, method=settings.inference)
    t2 = time.perf_counter()
    survival = run_survival(
        study,
        alpha=settings.alpha,
        landmark_months=settings.landmark_months,
        bootstrap_samples=settings.bootstrap_samples,
        seed=settings.seed,
    )
    t3 = time.perf_counter()
    seconds = {"tables": t1 - t0, "mixed models": t2 - t1, "survival": t3 - t2}
    every = {f.name: f for c in slopes.values() for f in (c.intercept, c.slope)} | fits
    for fit in every.values():
        if fit.error and not fit.ok:
            log.warning("%s not fitted: %s", fit.name, fit.error)
        elif not fit.converged:
            log.warning("%s did not converge (%s)", fit.name, "; ".join(fit.attempts))
    return AnalysisResult(
        settings=settings,
        sources=sources,
        study=study,
        fits=fits,
        headline=headline,
        survival=survival,
        slopes=slopes,
        sensitivity=sensitivity,
        seconds=seconds,
        provenance=_provenance(settings, sources, seconds),
    )


def _figures(result: AnalysisResult, fig_dir: Path, models: pd.DataFrame) -> tuple[dict[str, Path], dict[str, Path]]:
    """Render each figure once; save it in ``figure_format`` and as PNG. Returns both path maps."""
    from wmhseg.stats.figures import alsfrs_figure, km_figure, save_figure, trajectory_figure
    from wmhseg.stats.forest import forest_figure

    st = result.settings
    scans = result.study.scans
    fits = result.fits
    figs = {
        "wmh_trajectories_als_vs_control": lambda: trajectory_figure(
            scans,
            fits[MODEL_NAMES["wmh_progression_als_vs_control"]],
            "group",
            ["control", "ALS"],
            "WMH volume over time: ALS vs controls",
        ),
        "wmh_trajectories_by_survival_group": lambda: trajectory_figure(
            scans[scans["cohort"].notna()],
            fits[MODEL_NAMES["wmh_progression_short_vs_long"]],
            "cohort",
            ["control", "long", "short"],
            f"WMH volume over time: survival groups ({st.cutoff_months:g} months)",
        ),
        "alsfrs_vs_wmh": lambda: alsfrs_figure(
            scans,
            fits[MODEL_NAMES["alsfrs_per_500mm3_wmh"]],
            fits[MODEL_NAMES["alsfrs_wmh_slope_short_vs_long"]],
        ),
        "kaplan_meier": lambda: km_figure(result.survival.km),
        "forest_plot": lambda: forest_figure(models, st.alpha),
    }
    paths, pngs = {}, {}
    for name, build in figs.items():
        fig = build()
        paths[name] = save_figure(fig, fig_dir / f"{name}.{st.figure_format}", st.figure_format, st.figure_dpi)
        pngs[name] = paths[name] if st.figure_format == "png" else save_figure(
            fig, fig_dir / f"{name}.png", "png", st.figure_dpi
        )
    return paths, pngs


def write_outputs(result: AnalysisResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write every output file of ``result`` into ``out_dir`` (created if missing).

    Returns:
        Output name -> path (``headline``, ``models``, ``left_out``, ``survival_patients``,
        ``report_md``, ``report_html`` (figures embedded), ``report`` (the one of
        ``report_format``) and one entry per figure).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = result.models_table()
    paths: dict[str, Path] = {
        "headline": atomic_write_json(out / "headline.json", result.headline_dict()),
        "survival": atomic_write_json(
            out / "survival.json", result.survival.to_dict(result.settings.cutoff_months, result.settings.alpha)
        ),
        "models": atomic_write_csv(out / "models.csv", models),
        "left_out": atomic_write_csv(out / "left_out.csv", result.study.left_out),
        "survival_patients": atomic_write_csv(out / "survival_patients.csv", result.survival.patients),
    }
    figures, pngs = _figures(result, out / "figures", models) if result.settings.figures else ({}, {})
    paths.update(figures)
    result.seconds["figures"] = time.perf_counter() - t0
    result.provenance = _provenance(result.settings, result.sources, result.seconds)
    from wmhseg.stats.html import write_html_report
    from wmhseg.stats.report import render_report

    def relative(figs: dict[str, Path]) -> dict[str, str]:
        return {k: str(p.relative_to(out)) for k, p in figs.items()}

    paths["report_md"] = atomic_write_text(out / "report.md", render_report(result, relative(figures), "md"))
    paths["report_html"] = write_html_report(out / "report.html", render_report(result, relative(pngs), "html"))
    paths["report"] = paths[f"report_{result.settings.report_format}"]
    return paths


def left_out_line(study: StudyData, path: str | os.PathLike) -> str:
    """One line with the counts of rows left out after the joins, and where they are listed."""
    left = study.left_out
    if not len(left):
        return "left out: no rows"
    by_table = left.groupby("table").size()
    parts = [f"{n} {table} rows" for table, n in by_table.items()]  # "3 volumes rows, 40 clinical rows"
    everywhere = int((left["left_out_of"] == "all analyses").sum())
    return f"left out: {', '.join(parts)} ({everywhere} of all analyses, the rest of some); listed in {path}"


def _config(cfg: Any) -> AnalyzeConfig:
    """The config as :class:`AnalyzeConfig`, from Hydra's composed config or a plain mapping."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        missing = [k for k in ("volumes", "clinical", "out_dir") if k in cfg.keys() and OmegaConf.is_missing(cfg, k)]
        if missing:
            raise SettingsError(
                f"missing required setting{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (give e.g. {missing[0]}=PATH on the command line)"
            )
        cfg = OmegaConf.to_container(cfg, resolve=True)
    conf = AnalyzeConfig.from_mapping(cfg)
    for key in ("volumes", "clinical", "out_dir"):
        if getattr(conf, key) in ("???", "", None):
            raise SettingsError(f"missing required setting {key} (give {key}=PATH on the command line)")
    return conf


def analyze(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run the analysis described by a config and write its outputs.

    Args:
        cfg: a mapping (Hydra config or dict) with ``volumes`` and ``clinical`` (CSV paths),
            ``out_dir``, and any :class:`AnalysisSettings` field.

    Returns:
        ``{"left_out": <one line>, "headline": <headline.json content>, "outputs": {name: path},
        "seconds": {...}}``.

    Raises:
        SettingsError: a setting is missing or invalid.
        TableError: a table is unusable.

    Example:
        >>> analyze({"volumes": "v.csv", "clinical": "c.csv", "out_dir": "out"})  # doctest: +SKIP
    """
    conf = _config(cfg)
    t0 = time.perf_counter()
    vol = load_volumes(conf.volumes)
    clin = load_clinical(conf.clinical)
    sources = {"volumes": str(conf.volumes), "clinical": str(conf.clinical)}
    result = _run(vol, clin, conf, sources, t0)
    paths = write_outputs(result, conf.out_dir)
    log.info("analysis written to %s in %.2f s", conf.out_dir, sum(result.seconds.values()))
    return {
        "left_out": left_out_line(result.study, paths["left_out"]),
        "headline": result.headline_dict(),
        "outputs": {k: str(v) for k, v in paths.items()},
        "seconds": dict(result.seconds),
    }
