"""Figures in the spirit of the study's: WMH trajectories with model fits, ALSFRS-R against WMH,
and Kaplan-Meier curves.

Figures are built with matplotlib's object-oriented :class:`~matplotlib.figure.Figure` (no
pyplot, no global state, no display needed). Model lines are marginal means: the model's
prediction averaged over the covariates of the participants it was fitted on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from wmhseg.files import atomic_path
from wmhseg.stats.analyze_config import FIGURE_FORMATS
from wmhseg.stats.kaplan import KMSplit
from wmhseg.stats.mixed import MixedFit

__all__ = ["FIGURE_FORMATS", "COLORS", "trajectory_figure", "alsfrs_figure", "km_figure", "save_figure"]

COLORS = {
    "control": "#4c72b0",
    "ALS": "#c44e52",
    "long": "#55a868",
    "short": "#8172b2",
    "low": "#4c72b0",
    "high": "#c44e52",
}
TIME = "years_since_baseline"


def _marginal_line(fit: MixedFit, column: str, level: str, x: np.ndarray, x_col: str) -> np.ndarray | None:
    """Prediction at each ``x`` averaged over the fitted participants' covariates."""
    if fit is None or not fit.ok or fit.model is None:
        return None
    data = fit.model.frame
    subjects = data.drop_duplicates("subject_id")
    grid = subjects.loc[subjects.index.repeat(len(x))].copy()
    grid[x_col] = np.tile(x, len(subjects))
    if column:
        grid[column] = pd.Categorical([level] * len(grid), categories=data[column].cat.categories)
    pred = fit.predict(grid).reshape(len(subjects), len(x))
    return pred.mean(axis=0)


def _spaghetti(ax, scans: pd.DataFrame, color: str) -> None:
    """One thin line per participant (a dot for a single scan)."""
    s = scans.sort_values(["subject_id", TIME], kind="stable")
    codes, _ = pd.factorize(s["subject_id"], sort=False)
    xy = s[[TIME, "wmh_mm3"]].to_numpy(dtype=float)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    parts = np.split(xy, starts[1:])
    ax.add_collection(
        LineCollection([p for p in parts if len(p) > 1], colors=color, alpha=0.18, linewidths=0.7)
    )
    single = np.array([p[0] for p in parts if len(p) == 1]).reshape(-1, 2)
    ax.scatter(single[:, 0], single[:, 1], s=4, color=color, alpha=0.3, linewidths=0)


def trajectory_figure(
    scans: pd.DataFrame, fit: MixedFit | None, column: str, levels: list[str], title: str
) -> Figure:
    """WMH volume over time per participant (thin lines) with the model's mean line per level.

    Args:
        scans: the model's scans (``subject_id, years_since_baseline, wmh_mm3`` and ``column``).
        fit: the fitted model (lines are left out when it was not fitted).
        column: the grouping column (``group`` or ``cohort``); ``levels``: its levels in order.
        title: the figure title.
    """
    fig = Figure(figsize=(7.0, 4.6))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.92)
    ax = fig.add_subplot()
    t_max = float(scans[TIME].max()) if len(scans) else 1.0
    x = np.array([0.0, max(t_max, 1e-3)])
    for level in levels:
        sub = scans[scans[column] == level]
        if sub.empty:
            continue
        color = COLORS.get(level, "0.3")
        _spaghetti(ax, sub, color)
        line = _marginal_line(fit, column, level, x, TIME)
        n = sub["subject_id"].nunique()
        if line is not None:
            slope = (line[1] - line[0]) / (x[1] - x[0])
            ax.plot(x, line, color=color, lw=2.6, label=f"{level} (n={n}): {slope:,.0f} mm³/year")
        else:
            ax.plot([], [], color=color, lw=2.6, label=f"{level} (n={n}), model not fitted")
    ax.autoscale_view()
    ax.set_xlabel("Years since baseline MRI")
    ax.set_ylabel("WMH volume (mm³)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return fig


def alsfrs_figure(scans: pd.DataFrame, fit_all: MixedFit | None, fit_groups: MixedFit | None) -> Figure:
    """ALSFRS-R against WMH volume: all ALS (left) and by survival group (right), with model lines."""
    fig = Figure(figsize=(10.0, 4.4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.91, wspace=0.06)
    left, right = fig.subplots(1, 2, sharey=True)
    als = scans[(scans["group"] == "ALS") & scans["alsfrs_r"].notna()]
    w_max = float(als["wmh_mm3"].max()) if len(als) else 1.0
    x = np.linspace(0.0, max(w_max, 1.0), 2)
    left.scatter(als["wmh_mm3"], als["alsfrs_r"], s=8, color=COLORS["ALS"], alpha=0.35, linewidths=0)
    line = _marginal_line(fit_all, "", "", x, "wmh_mm3")
    if line is not None:
        per500 = (line[1] - line[0]) / (x[1] - x[0]) * 500.0
        left.plot(x, line, color="k", lw=2.2, label=f"{per500:+.2f} points per 500 mm³")
        left.legend(loc="lower left", fontsize=8, frameon=False)
    left.set_title(f"ALS (n={als['subject_id'].nunique()})")
    classified = als[als["survival_group"].notna()]
    for level in ("long", "short"):
        sub = classified[classified["survival_group"] == level]
        if sub.empty:
            continue
        right.scatter(sub["wmh_mm3"], sub["alsfrs_r"], s=8, color=COLORS[level], alpha=0.4, linewidths=0)
        line = _marginal_line(fit_groups, "survival_group", level, x, "wmh_mm3")
        label = f"{level} (n={sub['subject_id'].nunique()})"
        if line is not None:
            label += f": {(line[1] - line[0]) / (x[1] - x[0]) * 500.0:+.2f} per 500 mm³"
            right.plot(x, line, color=COLORS[level], lw=2.2, label=label)
        else:
            right.plot([], [], color=COLORS[level], lw=2.2, label=label)
    right.set_title("By survival group")
    right.legend(loc="lower left", fontsize=8, frameon=False)
    for ax in (left, right):
        ax.set_xlabel("WMH volume (mm³)")
        ax.set_ylim(-1, 49)
    left.set_ylabel("ALSFRS-R")
    return fig


_KM_TITLES = {"baseline_wmh": "Baseline WMH", "wmh_slope": "WMH progression"}
_KM_UNITS = {"baseline_wmh": "mm³", "wmh_slope": "mm³/year"}


def km_figure(splits: dict[str, KMSplit]) -> Figure:
    """Kaplan-Meier curves (with pointwise bands) for each median split, log-rank p in the title."""
    fig = Figure(figsize=(10.0, 4.2))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.91, wspace=0.06)
    axes = fig.subplots(1, max(len(splits), 1), sharey=True, squeeze=False)[0]
    for ax, (var, split) in zip(axes, splits.items(), strict=False):
        name = _KM_TITLES.get(var, var)
        if split.error:
            ax.text(0.5, 0.5, split.error, ha="center", va="center", wrap=True, transform=ax.transAxes)
            ax.set_title(name)
            continue
        for lab, curve in split.curves.items():
            sign = ">" if lab == "high" else "≤"
            label = f"{lab}: {sign} {split.median:,.0f} {_KM_UNITS.get(var, '')} (n={curve.n}, {curve.events} events)"
            table = curve.table
            ax.step(table["time"], table["survival"], where="post", color=COLORS[lab], lw=2, label=label)
            band = table.dropna(subset=["ci_low", "ci_high"])
            ax.fill_between(
                band["time"], band["ci_low"], band["ci_high"], step="post", color=COLORS[lab], alpha=0.15
            )
        p = split.p_value
        ax.set_title(f"{name}: log-rank p = {p:.2g}" if np.isfinite(p) else name)
        ax.set_xlabel("Months from baseline MRI")
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    axes[0].set_ylabel("Proportion without outcome")
    axes[0].set_ylim(0, 1.02)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, fmt: str = "png", dpi: int = 110) -> Path:
    """Save a figure atomically in ``fmt`` (one of :data:`FIGURE_FORMATS`)."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r}: must be one of {', '.join(FIGURE_FORMATS)}")
    with atomic_path(path) as tmp:
        extra = {"pil_kwargs": {"compress_level": 3}} if fmt == "png" else {}
        fig.savefig(tmp, format=fmt, dpi=dpi, **extra)
    return Path(path)
