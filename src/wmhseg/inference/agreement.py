"""Volume agreement between the network and the teacher (BISON) across scans.

- Intraclass correlation (McGraw & Wong 1996; Shrout & Fleiss 1979) from a two-way ANOVA of the
  ``(n scans, k raters)`` table: ``ICC(A,1)`` (absolute agreement, single rater; a constant
  offset between methods lowers it) with its F-based 95% confidence interval, and ``ICC(C,1)``
  (consistency; offsets ignored).
- Bland-Altman: bias (mean of network - teacher), standard deviation of the differences,
  95% limits of agreement (bias +/- 1.96 SD), and a PNG plot drawn by statsmodels'
  ``mean_diff_plot`` (matplotlib and statsmodels are imported only when a plot is drawn).

NumPy/SciPy at import; figures are drawn on the Agg canvas directly (no pyplot state).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from wmhseg.files import atomic_path

__all__ = ["icc", "bland_altman", "bland_altman_figure", "bland_altman_plot", "volume_agreement"]


def icc(ratings: np.ndarray, *, alpha: float = 0.05) -> dict[str, float]:
    """Intraclass correlations of an ``(n_targets, k_raters)`` table.

    Args:
        ratings: one row per target (scan), one column per rater (method); finite values.
        alpha: 1 - confidence level of the interval for ``ICC(A,1)``.

    Returns:
        ``icc_a1``, ``icc_a1_ci_low``, ``icc_a1_ci_high``, ``icc_c1``, ``n``; NaN where the
        table is too small (fewer than 2 targets) or has no variance.

    Example (Shrout & Fleiss 1979, table 2: ICC(2,1) = 0.29, ICC(3,1) = 0.71):
        >>> x = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
        >>> r = icc(x); round(r["icc_a1"], 2), round(r["icc_c1"], 2)
        (0.29, 0.71)
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be (n_targets, k_raters >= 2), got shape {x.shape}")
    x = x[np.all(np.isfinite(x), axis=1)]
    n, k = x.shape
    nan = float("nan")
    out = {"icc_a1": nan, "icc_a1_ci_low": nan, "icc_a1_ci_high": nan, "icc_c1": nan, "n": int(n)}
    if n < 2:
        return out
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    denom_a = msr + (k - 1) * mse + k * (msc - mse) / n
    denom_c = msr + (k - 1) * mse
    if denom_a <= 0 or denom_c <= 0:
        return out
    icc_a = (msr - mse) / denom_a
    out["icc_a1"] = float(icc_a)
    out["icc_c1"] = float((msr - mse) / denom_c)
    if icc_a < 1 and mse > 0:
        from scipy import stats

        a = k * icc_a / (n * (1 - icc_a))
        b = 1 + k * icc_a * (n - 1) / (n * (1 - icc_a))
        v_den = (a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1))
        v = (a * msc + b * mse) ** 2 / v_den if v_den > 0 else math.inf
        f_up = stats.f.ppf(1 - alpha / 2, n - 1, v)
        f_lo = stats.f.ppf(1 - alpha / 2, v, n - 1)
        c = k * msc + (k * n - k - n) * mse
        out["icc_a1_ci_low"] = float(n * (msr - f_up * mse) / (f_up * c + n * msr))
        out["icc_a1_ci_high"] = float(n * (f_lo * msr - mse) / (c + n * f_lo * msr))
    return out


def bland_altman(method: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Bland-Altman statistics of ``method - reference``.

    Returns:
        ``bias``, ``sd_diff``, ``loa_low``, ``loa_high`` (bias -/+ 1.96 SD) and ``n``.

    Example:
        >>> bland_altman(np.array([2.0, 4.0]), np.array([1.0, 1.0]))["bias"]
        2.0
    """
    m, r = np.asarray(method, np.float64), np.asarray(reference, np.float64)
    keep = np.isfinite(m) & np.isfinite(r)
    d = m[keep] - r[keep]
    n = int(d.size)
    bias = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    return {"bias": bias, "sd_diff": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd, "n": n}


def bland_altman_figure(method: np.ndarray, reference: np.ndarray, *, unit: str = "mL", scale: float = 1e-3,
                        title: str = "WMH volume: network vs BISON"):
    """A Bland-Altman plot (difference against mean) on its own Agg figure (no pyplot state).

    Drawn by ``statsmodels.graphics.agreement.mean_diff_plot`` with the limits of
    :func:`bland_altman` (bias -/+ 1.96 sample SD, as in ``agreement.json``): statsmodels takes the
    population SD (``ddof=0``), so its ``sd_limit`` is widened by ``sqrt(n / (n - 1))`` and its
    two limit labels are rewritten to say 1.96 SD. The y range is widened where a point lies beyond
    statsmodels' fixed range. matplotlib and statsmodels are imported here, not at start-up.

    Args:
        method, reference: paired volumes in mm^3 (pairs with a NaN are left out; at least 2).
        unit, scale: axis unit and the factor from mm^3 to it (default mL).
        title: figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from statsmodels.graphics.agreement import mean_diff_plot

    m = np.asarray(method, np.float64) * scale
    r = np.asarray(reference, np.float64) * scale
    keep = np.isfinite(m) & np.isfinite(r)
    m, r = m[keep], r[keep]
    ba = bland_altman(m, r)
    if ba["n"] < 2:
        raise ValueError(f"a Bland-Altman plot needs at least 2 paired values, got {ba['n']}")
    fig = Figure(figsize=(5.5, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    mean_diff_plot(m, r, sd_limit=1.96 * math.sqrt(ba["n"] / (ba["n"] - 1)), ax=ax,
                   scatter_kwds={"s": 18, "alpha": 0.8, "color": "tab:blue"},
                   mean_line_kwds={"color": "tab:red", "linestyle": "-"}, limit_lines_kwds={"color": "tab:red"})
    for text in ax.texts:
        if " SD: " in text.get_text():
            sign, value = ("-", ba["loa_low"]) if text.get_text().startswith("-") else ("+", ba["loa_high"])
            text.set_text(f"{sign}1.96 SD: {value:.3g}")
        text.set_fontsize(8)
    low, high = ax.get_ylim()  # statsmodels fixes them at bias -/+ 1.5 limits: keep outliers in view
    d = m - r
    pad = 0.05 * (max(high, d.max()) - min(low, d.min()))
    ax.set_ylim(min(low, d.min() - pad), max(high, d.max() + pad))
    ax.tick_params(labelsize=8)
    ax.set_xlabel(f"mean of network and BISON ({unit})", fontsize=9)
    ax.set_ylabel(f"network - BISON ({unit})", fontsize=9)
    ax.set_title(f"{title} (n={ba['n']})", fontsize=10)
    fig.tight_layout()
    return fig


def bland_altman_plot(method: np.ndarray, reference: np.ndarray, path: str | os.PathLike, *,
                      unit: str = "mL", scale: float = 1e-3, title: str = "WMH volume: network vs BISON") -> Path:
    """Draw :func:`bland_altman_figure` and write it atomically as PNG to ``path``."""
    fig = bland_altman_figure(method, reference, unit=unit, scale=scale, title=title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def volume_agreement(method: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """ICC and Bland-Altman figures (mm^3) of paired volumes, NaN pairs dropped."""
    m, r = np.asarray(method, np.float64), np.asarray(reference, np.float64)
    out = icc(np.column_stack([m, r]))
    out.update(bland_altman(m, r))
    keep = np.isfinite(m) & np.isfinite(r)
    out["pearson_r"] = float(np.corrcoef(m[keep], r[keep])[0, 1]) if keep.sum() > 2 and np.std(m[keep]) > 0 \
        and np.std(r[keep]) > 0 else float("nan")
    return out
