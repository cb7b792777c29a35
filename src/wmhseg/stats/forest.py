"""Forest plot of every model's key term, read from the ``models.csv`` table.

Key terms: the four headline estimates (rows of kind ``headline``; mm³/year for the two WMH
progression models, ALSFRS-R points per 500 mm³ for the two ALSFRS-R models), the same terms of
the sensitivity models (kind ``sensitivity``, one panel per unit as their ``note`` names it) and
every Cox model's WMH terms (rows of kind ``cox`` whose term names WMH; hazard ratios on a log
axis).
Each unit gets its own panel, with the null value (0, or a hazard ratio of 1) marked. An
estimate whose interval is not finite (a model that did not converge) is written as such.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["key_terms", "forest_figure"]

_UNITS = {
    "wmh_progression_als_vs_control": ("WMH progression (mm³/year)", "ALS minus controls"),
    "wmh_progression_short_vs_long": ("WMH progression (mm³/year)", "short minus long survivors"),
    "alsfrs_per_500mm3_wmh": ("ALSFRS-R points per 500 mm³ WMH", "ALS patients"),
    "alsfrs_wmh_slope_short_vs_long": ("ALSFRS-R points per 500 mm³ WMH", "slope, short minus long"),
}
_HR_PANEL = "Hazard ratio (log scale)"


def key_terms(models: pd.DataFrame) -> pd.DataFrame:
    """One row per key term: ``panel, label, estimate, ci_low, ci_high, p_value, null``.

    Args:
        models: the ``models.csv`` table (``model, term, kind, estimate, ci_low, ci_high,
            p_value, hazard_ratio, hr_ci_low, hr_ci_high``).
    """
    rows = []
    for r in models[models["kind"] == "headline"].itertuples():
        panel, label = _UNITS.get(str(r.term), (str(r.term), str(r.model)))
        rows.append({"panel": panel, "label": f"{label} ({r.model.split('_')[0]})", "estimate": r.estimate,
                     "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value, "null": 0.0})
    for r in models[models["kind"] == "sensitivity"].itertuples():
        unit = str(r.note).split(":")[0] if isinstance(r.note, str) and r.note else str(r.model)
        rows.append({"panel": f"Sensitivity: {unit}", "label": f"{_UNITS.get(str(r.term), ('', r.term))[1]} "
                     f"({r.model.split('_')[0]})", "estimate": r.estimate, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "p_value": r.p_value, "null": 0.0})
    cox = models[(models["kind"] == "cox") & models["term"].astype(str).str.contains("wmh", case=False)]
    for r in cox.itertuples():
        rows.append({"panel": _HR_PANEL, "label": f"{_term_label(str(r.term))} ({r.model})", "estimate": r.hazard_ratio,
                     "ci_low": r.hr_ci_low, "ci_high": r.hr_ci_high, "p_value": r.p_value, "null": 1.0})
    out = pd.DataFrame(rows, columns=["panel", "label", "estimate", "ci_low", "ci_high", "p_value", "null"])
    for col in ("estimate", "ci_low", "ci_high", "p_value"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


def _num(x: float) -> str:
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _text(r) -> str:
    if not np.isfinite(r.estimate):
        return "not estimated"
    p = "p < 0.0001" if r.p_value < 1e-4 else f"p = {r.p_value:.2g}" if np.isfinite(r.p_value) else "p n/a"
    if not (np.isfinite(r.ci_low) and np.isfinite(r.ci_high)):
        return f"{_num(r.estimate)}, interval not finite (not converged?)"
    return f"{_num(r.estimate)} [{_num(r.ci_low)}, {_num(r.ci_high)}], {p}"


def _term_label(term: str) -> str:
    return term.replace("_per_1000mm3", " per 1000 mm³").replace("_per_year", " per year").replace("_", " ").replace("wmh", "WMH")


def _panel(ax, rows: pd.DataFrame, title: str) -> None:
    log = title == _HR_PANEL
    y = np.arange(len(rows))[::-1]
    finite = [v for v in np.r_[rows["estimate"], rows["ci_low"], rows["ci_high"], rows["null"]]
              if np.isfinite(v) and (v > 0 or not log)]
    lo, hi = (min(finite), max(finite)) if finite else (0.5, 2.0)
    if log:
        lo, hi = max(lo, 1e-3), min(hi, 1e3)
        pad = (hi / lo) ** 0.08
        limits = (lo / pad, hi * pad)
    else:
        pad = 0.08 * (hi - lo or 1.0)
        limits = (lo - pad, hi + pad)
    est, low, high = (rows[c].to_numpy(dtype=float) for c in ("estimate", "ci_low", "ci_high"))
    has_ci = np.isfinite(est) & np.isfinite(low) & np.isfinite(high)
    # one collection of intervals and one marker line per panel, not two artists per row
    ax.hlines(y[has_ci], np.maximum(low[has_ci], limits[0]), np.minimum(high[has_ci], limits[1]), color="0.25", lw=1.6)
    shown = np.isfinite(est)
    ax.plot(np.clip(est[shown], *limits), y[shown], "s", color="#c44e52", ms=6, ls="none")
    for yi, r in zip(y, rows.itertuples(), strict=True):
        ax.text(1.02, yi, _text(r), transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.axvline(rows["null"].iloc[0], color="0.5", ls="--", lw=1)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(*limits)
    ax.set_yticks(y, rows["label"], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_title(title, fontsize=9, loc="left")


def forest_figure(models: pd.DataFrame, alpha: float = 0.05) -> Figure:
    """Key term of every model with its confidence interval, one panel per unit."""
    terms = key_terms(models)
    panels = list(dict.fromkeys(terms["panel"]))
    heights = [max(len(terms[terms["panel"] == p]), 1) + 1.2 for p in panels] or [1]
    fig = Figure(figsize=(11.0, 0.32 * sum(heights) + 1.2))
    fig.subplots_adjust(left=0.38, right=0.70, top=0.88, bottom=0.06, hspace=0.9)
    fig.suptitle(f"Key term of every model with its {100 * (1 - alpha):g}% confidence interval", fontsize=10, y=0.99)
    if not panels:
        fig.text(0.5, 0.5, "no model was fitted", ha="center")
        return fig
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        _panel(ax, terms[terms["panel"] == panel].reset_index(drop=True), panel)
    return fig
