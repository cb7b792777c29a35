"""Kaplan-Meier curves with R ``survfit``'s medians and confidence limits, and a two-group split
at a variable's median with a log-rank test (R ``survdiff``'s statistic).

The product-limit estimate, Greenwood's variance and the log-rank sums are a few cumulative sums
over the distinct times, written out here rather than imported from statsmodels' ``survfunc``,
whose import (with :mod:`scipy.stats`) cost a fresh ``analyze.py`` more than all of them.

Medians follow R's ``survfit`` print and summary table: the first time the curve is below
0.5 + ``sqrt(machine epsilon)``; where it is flat at 0.5 (within that tolerance: a product of
fractions may give 0.5000000000000001) and falls lower later, the midpoint of the flat. The
confidence limits apply the same rule to the pointwise limits of ``conf.type="log"``
(``S exp(+-z se(log S))``, Greenwood's variance); a limit the curve never reaches is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from wmhseg.stats.dist import chi2_sf, norm_ppf

__all__ = ["KMSplit", "KMCurve", "RiskTable", "km_curve", "logrank", "product_limit", "risk_table", "survfit_median",
           "km_split"]

_TOL = float(np.sqrt(np.finfo(float).eps))


def survfit_median(times: np.ndarray, surv: np.ndarray) -> float:
    """R's median of a step curve (``print.survfit``): the first of ``times`` where ``surv`` is
    below 0.5 + tol; when the curve is at 0.5 (within tol) there and falls lower later, the
    midpoint between that time and the time it falls; NaN when it never gets there.

    Example:
        >>> survfit_median(np.array([1.0, 2.0, 3.0]), np.array([0.75, 0.5, 0.25]))
        2.5
    """
    y = np.asarray(surv, dtype=float)
    x = np.asarray(times, dtype=float)
    keep = np.isfinite(y) & (y < 0.5 + _TOL)
    if not keep.any():
        return float("nan")
    x, y = x[keep], y[keep]
    lower = np.flatnonzero(y < y[0])
    if abs(y[0] - 0.5) < _TOL and len(lower):
        return float((x[0] + x[lower[0]]) / 2.0)
    return float(x[0])


class RiskTable(NamedTuple):
    """Per distinct time of ``time`` (``times``; ``index`` maps each row to its time): the rows
    still followed at that time (``time >= t``), the rows ending there and the events there."""

    times: np.ndarray
    index: np.ndarray
    at_risk: np.ndarray
    ending: np.ndarray
    events: np.ndarray


def risk_table(time: np.ndarray, status: np.ndarray, rows: np.ndarray | None = None) -> RiskTable:
    """The counts at each distinct time of ``time``, over all rows or over the ``rows`` given as a
    0/1 weight per row (the times stay those of all rows, so two tables line up)."""
    times, index = np.unique(np.asarray(time, dtype=float), return_inverse=True)
    weight = np.ones(len(index)) if rows is None else np.asarray(rows, dtype=float)
    ending = np.bincount(index, weights=weight, minlength=len(times))
    events = np.bincount(index, weights=weight * np.asarray(status, dtype=float), minlength=len(times))
    return RiskTable(times, index, np.cumsum(ending[::-1])[::-1], ending, events)


def product_limit(time: np.ndarray, status: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate at each distinct event time: ``(times, survival, se)``, ``se`` the
    standard error of the survival by Greenwood's formula (NaN from a time where everyone at risk
    has the event).

    Example:
        >>> product_limit(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0, 1.0]))[1]
        array([0.75, 0.5 , 0.  ])
    """
    table = risk_table(time, status)
    keep = table.events > 0
    t, d, n = table.times[keep], table.events[keep], table.at_risk[keep]
    surv = np.cumprod(1.0 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(n > d, d / (n * (n - d)), np.nan)
    se = surv * np.sqrt(np.cumsum(terms))
    return t, surv, se


def logrank(time: np.ndarray, status: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Log-rank test of two groups (R ``survdiff``, ``rho = 0``): ``(chi2, p)`` on 1 degree of freedom.

    The observed minus expected events of one group, summed over the distinct event times, and its
    hypergeometric variance ``d (n1 / n) (1 - n1 / n) (n - d) / (n - 1)``.
    """
    labels, codes = np.unique(np.asarray(group), return_inverse=True)
    if len(labels) != 2:
        raise ValueError(f"the log-rank test here compares 2 groups, not {len(labels)}")
    pooled, first = risk_table(time, status), risk_table(time, status, rows=codes == 0)
    events = pooled.events > 0
    n, d = pooled.at_risk[events], pooled.events[events]
    n1, d1 = first.at_risk[events], first.events[events]
    observed_minus_expected = float(np.sum(d1 - d * n1 / n))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = float(np.sum(np.where(n > 1, d * (n1 / n) * (1.0 - n1 / n) * (n - d) / (n - 1.0), 0.0)))
    chi2 = observed_minus_expected**2 / var if var > 0 else float("nan")
    return chi2, float(chi2_sf(chi2, 1))


@dataclass
class KMCurve:
    """One Kaplan-Meier curve: ``table`` has ``time, survival, ci_low, ci_high`` from time 0 to
    the last follow-up; ``median`` and its limits in the time unit (NaN when not reached)."""

    n: int
    events: int
    table: pd.DataFrame
    median: float
    median_ci_low: float
    median_ci_high: float


def km_curve(time: np.ndarray, status: np.ndarray, alpha: float = 0.05) -> KMCurve:
    """Kaplan-Meier estimate with log-type pointwise limits and R's median rules."""
    time, status = np.asarray(time, dtype=float), np.asarray(status, dtype=float)
    last = float(time.max())
    if status.sum() == 0:
        table = pd.DataFrame({"time": [0.0, last], "survival": 1.0, "ci_low": 1.0, "ci_high": 1.0})
        nan = float("nan")
        return KMCurve(len(time), 0, table, nan, nan, nan)
    t, s, se = product_limit(time, status)
    z = norm_ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_log = se / s
        low = np.where(s > 0, s * np.exp(-z * se_log), np.nan)
        high = np.where(s > 0, np.minimum(1.0, s * np.exp(z * se_log)), np.nan)
    table = pd.DataFrame(
        {
            "time": np.r_[0.0, t, last],
            "survival": np.r_[1.0, s, s[-1]],
            "ci_low": np.r_[1.0, low, low[-1]],
            "ci_high": np.r_[1.0, high, high[-1]],
        }
    )
    return KMCurve(
        n=len(time),
        events=int(status.sum()),
        table=table,
        median=survfit_median(t, s),
        median_ci_low=survfit_median(t, low),
        median_ci_high=survfit_median(t, high),
    )


@dataclass
class KMSplit:
    """Kaplan-Meier curves of the patients at or below (``low``) and above (``high``) the median
    of ``variable``, with a log-rank test; ``error`` says why it was not computed."""

    variable: str
    median: float = float("nan")
    curves: dict[str, KMCurve] = field(default_factory=dict)
    chi2: float = float("nan")
    p_value: float = float("nan")
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The ``survival.json`` entry (NaN -> None)."""

        def num(v: float) -> float | None:
            return float(v) if v is not None and np.isfinite(v) else None

        groups = {
            label: {
                "n": c.n,
                "events": c.events,
                "median_months": num(c.median),
                "median_ci_low": num(c.median_ci_low),
                "median_ci_high": num(c.median_ci_high),
            }
            for label, c in self.curves.items()
        }
        out: dict[str, object] = {
            "split_at": num(self.median),
            "logrank_chi2": num(self.chi2),
            "logrank_p": num(self.p_value),
            "groups": groups,
        }
        if self.error:
            out["error"] = self.error
        return out


def km_split(patients: pd.DataFrame, variable: str, alpha: float = 0.05) -> KMSplit:
    """Split ``patients`` (``survival_months``, ``event``, ``variable``) at the median of
    ``variable``: ``low`` = at or below, ``high`` = above; NaN rows are skipped."""
    out = KMSplit(variable)
    d = patients[["survival_months", "event", variable]].dropna()
    if len(d) < 4:
        out.error = f"too few patients with survival data and {variable} ({len(d)})"
        return out
    out.median = float(d[variable].median())
    label = np.where(d[variable].to_numpy() > out.median, "high", "low")
    if len(set(label)) < 2:
        out.error = f"{variable} does not vary enough to split at its median"
        return out
    time = d["survival_months"].to_numpy(dtype=float)
    status = d["event"].to_numpy(dtype=float)
    for lab in ("low", "high"):
        m = label == lab
        out.curves[lab] = km_curve(time[m], status[m], alpha)
    if status.sum() == 0:
        out.error = "no events: the log-rank test is undefined"
        return out
    chi2, p = logrank(time, status, label)
    out.chi2, out.p_value = float(chi2), float(p)
    return out
