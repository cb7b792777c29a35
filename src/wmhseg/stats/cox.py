"""Cox proportional-hazards models (Efron ties, delayed entry) with R's ``cox.zph``
proportional-hazards tests and Harrell's concordance.

Data are counting-process rows ``(start, stop]`` with an event flag on the row that ends in the
event (``start = 0`` for ordinary survival data).

* :func:`fit_cox` maximises the Efron partial likelihood as R's ``coxph`` does: Newton-Raphson
  from zero with step halving (score and information from :func:`efron_sums`), until the score is
  below 1e-9 per event; a fit whose score does not vanish is not converged.
* PH tests (:func:`zph_tests`) are R's ``cox.zph`` with its default ``transform="km"``: the score
  test of ``beta_j * g(t)`` terms, ``g(t) = 1 - KM(t-)`` centred over the events, using the
  information of the model augmented with those terms, per term and for all terms at once
  (``GLOBAL``).
* :func:`concordance` is Harrell's C as R's ``concordance`` computes it for a Cox model: at each
  event time the patient who failed is compared with each patient still at risk (a censoring at
  the same time counts as later); higher risk score = concordant, tied scores count one half, tied
  event times are not compared.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from wmhseg.stats.dist import chi2_sf, norm_ppf, norm_sf

# a hazard ratio above exp(15) per standard deviation of a covariate is not a finite estimate but
# the sign of separation (the partial likelihood keeps rising as the coefficient grows)
_MAX_LOG_HR_PER_SD = 15.0

__all__ = ["CoxFit", "CoxData", "efron_sums", "fit_cox", "newton", "zph_tests", "concordance", "design"]


@dataclass(frozen=True)
class CoxData:
    """Counting-process rows: ``start < stop``, ``event`` 0/1, covariates ``x`` named ``names``."""

    start: np.ndarray
    stop: np.ndarray
    event: np.ndarray
    x: np.ndarray
    names: tuple[str, ...]
    n_subjects: int

    @property
    def n_events(self) -> int:
        return int(self.event.sum())


@dataclass
class CoxFit:
    """A fitted (or failed) Cox model; NaN where a number could not be computed.

    Attributes:
        names: covariates; ``coef``, ``std_err``: log hazard ratios and their SEs.
        ph_chi2, ph_p: per-covariate ``cox.zph`` tests; ``ph_global_chi2``, ``ph_global_p``: GLOBAL.
        concordance: Harrell's C of the linear predictor.
        converged: the partial-likelihood score vanishes at the estimate; ``error``: why not fitted.
        messages: warnings raised while fitting.
    """

    names: tuple[str, ...]
    n: int = 0
    events: int = 0
    coef: np.ndarray = field(default_factory=lambda: np.array([]))
    std_err: np.ndarray = field(default_factory=lambda: np.array([]))
    ph_chi2: np.ndarray = field(default_factory=lambda: np.array([]))
    ph_p: np.ndarray = field(default_factory=lambda: np.array([]))
    ph_global_chi2: float = float("nan")
    ph_global_p: float = float("nan")
    concordance: float = float("nan")
    converged: bool = False
    error: str | None = None
    messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("coef", "std_err", "ph_chi2", "ph_p"):
            if len(getattr(self, name)) != len(self.names):
                setattr(self, name, np.full(len(self.names), np.nan))

    def to_dict(self, alpha: float = 0.05) -> dict[str, object]:
        """The ``survival.json`` entry of this model; NaN -> None, ``error`` None when fitted."""

        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        z = norm_ppf(1 - alpha / 2)
        p = self.p_values()
        terms = {
            name: {
                "coef": num(self.coef[i]),
                "std_err": num(self.std_err[i]),
                "hazard_ratio": num(np.exp(self.coef[i])),
                "ci_low": num(np.exp(self.coef[i] - z * self.std_err[i])),
                "ci_high": num(np.exp(self.coef[i] + z * self.std_err[i])),
                "p_value": num(p[i]),
                "ph_chi2": num(self.ph_chi2[i]),
                "ph_p_value": num(self.ph_p[i]),
            }
            for i, name in enumerate(self.names)
        }
        return {
            "n": self.n,
            "events": self.events,
            "converged": self.converged,
            "ph_global_chi2": num(self.ph_global_chi2),
            "ph_global_p": num(self.ph_global_p),
            "concordance": num(self.concordance),
            "terms": terms,
            "error": self.error,
        }

    def p_values(self) -> np.ndarray:
        """Two-sided Wald p-values of the coefficients."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2.0 * norm_sf(np.abs(self.coef / self.std_err))


class _Layout(NamedTuple):
    """What :func:`efron_sums` needs that does not depend on ``beta`` (computed once per data set)."""

    x: np.ndarray  # centred covariates
    times: np.ndarray  # distinct event times
    stop_order: np.ndarray
    stop_at: np.ndarray  # per event time: first row (in stop order) with stop at or after it
    start_order: np.ndarray | None  # delayed entry only
    start_at: np.ndarray | None
    dead: np.ndarray  # event rows, by event time
    first: np.ndarray  # first of each time's deaths in ``dead``
    n_dead: np.ndarray


def _layout(data: CoxData) -> _Layout:
    times = np.unique(data.stop[data.event == 1])

    def order_at(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(keys, kind="stable")
        return order, np.searchsorted(keys[order], times, side="left")

    stop_order, stop_at = order_at(data.stop)
    start_order, start_at = order_at(data.start) if np.any(data.start >= times[0]) else (None, None)
    dead = np.flatnonzero(data.event == 1)
    dead = dead[np.argsort(data.stop[dead], kind="stable")]
    k = np.searchsorted(times, data.stop[dead])
    first = np.r_[0, np.flatnonzero(np.diff(k)) + 1]
    return _Layout(data.x - data.x.mean(axis=0), times, stop_order, stop_at, start_order, start_at, dead, first,
                   np.diff(np.r_[first, len(dead)]))


def _at_or_after(order: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Column sums of ``values`` over the rows whose key is at or after each time (``order``, ``at``
    from :func:`_layout`)."""
    suffix = np.cumsum(values[order][::-1], axis=0)[::-1]
    return np.concatenate([suffix, np.zeros((1, values.shape[1]))])[at]


def efron_sums(
    data: CoxData, beta: np.ndarray, layout: _Layout | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct event time ``t``: the score ``sum_dead x - sum_r xbar_r`` (k x p), the Efron
    information ``sum_r V_r`` (k x p x p) and ``t`` itself (k), ``r = 0..d-1`` over the ``d`` tied
    deaths whose weights are scaled by ``1 - r/d``. The risk set at ``t`` is ``start < t <= stop``.
    ``layout`` (from :func:`_layout`) saves recomputing what does not depend on ``beta``."""
    lay = layout or _layout(data)
    score, info, _ = _efron(data, beta, lay)
    return score, info, lay.times


def _efron(data: CoxData, beta: np.ndarray, lay: _Layout) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`efron_sums`' score and information per event time, and the Efron log partial likelihood."""
    x = lay.x
    n, p = x.shape
    eta = x @ beta
    shift = float(eta.max())
    w = np.exp(eta - shift)
    # the moments w, w x, w x x' side by side: one cumulative sum serves all three
    moments = np.column_stack([w, w[:, None] * x, ((w[:, None] * x)[:, :, None] * x[:, None, :]).reshape(n, p * p)])
    risk = _at_or_after(lay.stop_order, lay.stop_at, moments)
    if lay.start_order is not None:  # delayed entry: remove those who enter at or after t
        risk = risk - _at_or_after(lay.start_order, lay.start_at, moments)
    died = np.add.reduceat(moments[lay.dead], lay.first, axis=0)
    n_dead = lay.n_dead
    score, info = np.add.reduceat(x[lay.dead], lay.first, axis=0), np.zeros((len(lay.times), p, p))
    loglik = float(eta[lay.dead].sum())
    for r in range(int(n_dead.max())):
        active = (r < n_dead).astype(float)
        a = risk - (active * r / n_dead)[:, None] * died  # times with fewer deaths: an unused term
        mean = a[:, 1 : 1 + p] / a[:, :1]
        second = a[:, 1 + p :].reshape(-1, p, p) / a[:, 0, None, None]
        score = score - active[:, None] * mean
        info = info + active[:, None, None] * (second - mean[:, :, None] * mean[:, None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            loglik -= float(np.sum(np.where(active > 0, np.log(a[:, 0]) + shift, 0.0)))
    return score, info, loglik


def _km_left(data: CoxData, times: np.ndarray) -> np.ndarray:
    """Kaplan-Meier survival just before each of ``times`` (the event times), with delayed entry."""
    surv, out = 1.0, np.empty(len(times))
    for k, t in enumerate(times):
        out[k] = surv
        n_risk = np.sum((data.start < t) & (data.stop >= t))
        surv *= 1.0 - np.sum((data.stop == t) & (data.event == 1)) / n_risk
    return out


def zph_tests(data: CoxData, beta: np.ndarray) -> tuple[np.ndarray, float]:
    """``cox.zph`` (transform ``km``) chi-square statistics: one per covariate, and GLOBAL."""
    score, info, times = efron_sums(data, beta)
    g = 1.0 - _km_left(data, times)
    deaths = np.array([np.sum((data.stop == t) & (data.event == 1)) for t in times])
    g = g - np.sum(g * deaths) / deaths.sum()
    p = data.x.shape[1]
    u = np.r_[np.zeros(p), g @ score]
    imat = np.block(
        [
            [info.sum(0), np.einsum("k,kij->ij", g, info)],
            [np.einsum("k,kij->ij", g, info), np.einsum("k,kij->ij", g * g, info)],
        ]
    )
    per_term = np.empty(p)
    for j in range(p):
        kk = np.r_[np.arange(p), p + j]
        uj = u[kk]
        per_term[j] = uj @ np.linalg.solve(imat[np.ix_(kk, kk)], uj)
    return per_term, float(u @ np.linalg.solve(imat, u))


def concordance(data: CoxData, risk: np.ndarray) -> float:
    """Harrell's C of a risk score (higher = earlier event), R's ``concordance`` rules."""
    dead = np.flatnonzero(data.event == 1)
    t = data.stop[dead][:, None]
    other = (data.start[None, :] < t) & (
        (data.stop[None, :] > t) | ((data.stop[None, :] == t) & (data.event[None, :] == 0))
    )
    diff = risk[dead][:, None] - risk[None, :]
    tol = 1e-10 * np.maximum(np.abs(risk[dead])[:, None], 1.0)
    agree = np.sum(other & (diff > tol))
    disagree = np.sum(other & (diff < -tol))
    tied = np.sum(other & (np.abs(diff) <= tol))
    total = agree + disagree + tied
    return float((agree + 0.5 * tied) / total) if total else float("nan")


def newton(
    data: CoxData, beta: np.ndarray, steps: int = 30, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Newton-Raphson on the Efron partial likelihood from ``beta``, halving a step that lowers the
    likelihood (as R's ``coxph`` does), until the score is below ``tol`` per event:
    ``(beta, information, converged)``."""
    limit = tol * max(data.n_events, 1)
    layout = _layout(data)
    score, info, loglik = _efron(data, beta, layout)
    u, imat = score.sum(0), info.sum(0)
    for _ in range(steps):
        if not (np.all(np.isfinite(u)) and np.isfinite(loglik)):
            break
        if np.max(np.abs(u), initial=0.0) < limit:
            return beta, imat, bool(np.all(np.isfinite(beta)))
        step = np.linalg.solve(imat, u)
        for _halving in range(30):
            trial = beta + step
            score, info, trial_loglik = _efron(data, trial, layout)
            if np.isfinite(trial_loglik) and trial_loglik >= loglik - 1e-12 * abs(loglik):
                break
            step = step / 2.0
        else:
            break
        beta, loglik, u, imat = trial, trial_loglik, score.sum(0), info.sum(0)
    return beta, imat, False


def fit_cox(data: CoxData, min_events_per_term: float = 1.0) -> CoxFit:
    """Fit a Cox model with Efron ties; never raises for data that cannot support it.

    Args:
        data: counting-process rows.
        min_events_per_term: fewer than ``terms * this + 1`` events is an error (not fitted).
    """
    out = CoxFit(data.names, n=data.n_subjects, events=data.n_events)
    p = len(data.names)
    if out.events < p * min_events_per_term + 1:
        out.error = f"too few events ({out.events}) for {p} covariates"
        return out
    constant = [n for n, col in zip(data.names, data.x.T, strict=True) if np.ptp(col) == 0]
    if constant:
        out.error = f"covariate {constant[0]} has the same value for every patient"
        return out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            beta, imat, good = newton(data, np.zeros(p), tol=1e-9)
            cov = np.linalg.inv(imat)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
            out.error = f"the Cox model could not be fitted: {' '.join(str(exc).split())}"
            return out
    out.messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    spread = data.x.std(axis=0)
    infinite = [n for n, b, sd in zip(data.names, beta, spread, strict=True) if abs(b) * sd > _MAX_LOG_HR_PER_SD]
    if not good or np.any(np.diag(cov) <= 0) or infinite:
        what = f"the coefficient of {infinite[0]} runs to infinity" if infinite else "Newton's method did not converge"
        out.error = f"the partial likelihood has no finite maximum ({what}; a covariate may separate events)"
        return out
    out.converged = True
    out.coef, out.std_err = beta, np.sqrt(np.diag(cov))
    out.ph_chi2, out.ph_global_chi2 = zph_tests(data, beta)
    out.ph_p = chi2_sf(out.ph_chi2, 1)
    out.ph_global_p = float(chi2_sf(out.ph_global_chi2, p))
    out.concordance = concordance(data, data.x @ beta)
    return out


def design(frame, columns: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Numeric covariate matrix from ``frame``: numbers as they are, ``sex`` as ``sex_M`` (1 = M),
    other categorical columns as ``<col>_<level>`` indicators against their first level."""
    import pandas as pd

    blocks, names = [], []
    for col in columns:
        values = frame[col]
        if isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values):
            text = values.astype(str)
            levels = ["F", "M"] if col == "sex" else sorted(pd.unique(text))
            for level in levels[1:]:
                blocks.append((text == level).to_numpy(dtype=float))
                names.append(f"{col}_{level}")
        else:
            blocks.append(values.to_numpy(dtype=float))
            names.append(col)
    return np.column_stack(blocks) if blocks else np.empty((len(frame), 0)), tuple(names)
