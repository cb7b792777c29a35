"""Linear mixed-effects fits (REML, lme4's method and inference), contrasts and convergence
bookkeeping.

:func:`fit_mixed` fits one model with a random intercept per participant (optionally a random
slope). The design is built from the formula as statsmodels' ``mixedlm`` builds it; the REML estimate is found
as lme4 finds it, by minimising the profiled REML deviance over the relative covariance factor
(:func:`~wmhseg.stats.reml.minimise`, polished by Newton steps). An optimizer that fails or does
not converge is followed by the next in :data:`OPTIMIZERS`; every attempt and every warning is
kept in the result, never hidden.

Inference is lme4's and lmerTest's: the fixed effects are the GLS estimates, their covariance is
``sigma^2 (X'V^-1 X)^-1`` and each term or contrast gets Satterthwaite degrees of freedom with
t-based p-values and intervals (``method="satterthwaite"``), or normal ones (``method="wald"``,
``df`` None). See :mod:`wmhseg.stats.reml`.

Term names are statsmodels' with the ``C(x, Treatment(...))`` wrapper removed, e.g.
``years_since_baseline:group[T.ALS]``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wmhseg.stats.reml import (
    OPTIMIZERS,
    RemlProblem,
    Satterthwaite,
    minimise,
    polish,
    t_inference,
)

__all__ = ["OPTIMIZERS", "Design", "Estimate", "MixedFit", "fit_mixed", "clean_term"]

_WRAPPED = re.compile(r"C\((\w+)(?:,\s*Treatment\([^()]*\))?\)")


def clean_term(name: str) -> str:
    """``"years_since_baseline:C(group, Treatment('control'))[T.ALS]"`` -> ``"years_since_baseline:group[T.ALS]"``."""
    return _WRAPPED.sub(r"\1", name)


@dataclass(frozen=True)
class Estimate:
    """One reported number with its uncertainty (the fields of a ``headline.json`` entry).

    ``df`` is the Satterthwaite degrees of freedom (None for ``method="wald"``).
    """

    estimate: float
    std_err: float
    df: float | None
    ci_low: float
    ci_high: float
    p_value: float
    n_subjects: int
    n_obs: int
    method: str = "satterthwaite"

    @classmethod
    def from_t(
        cls, est: float, se: float, df: float | None, alpha: float, n_subjects: int, n_obs: int
    ) -> Estimate:
        """``est +- q * se`` with ``q`` from t(df) (the normal when ``df`` is None), two-sided p."""
        low, high, p = t_inference(est, se, df, alpha)
        method = "wald" if df is None else "satterthwaite"
        return cls(float(est), float(se), df, low, high, p, int(n_subjects), int(n_obs), method)

    @classmethod
    def unavailable(cls, n_subjects: int = 0, n_obs: int = 0, method: str = "satterthwaite") -> Estimate:
        nan = float("nan")
        return cls(nan, nan, None, nan, nan, nan, int(n_subjects), int(n_obs), method)

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain JSON-ready values; NaN becomes ``None``."""
        out: dict[str, float | int | str | None] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, float) and not np.isfinite(value):
                out[key] = None
            else:
                out[key] = value
        return out


@dataclass
class MixedFit:
    """A fitted (or failed) mixed model.

    Attributes:
        name: the model's name in outputs.
        formula, re_formula: as given to MixedLM (``re_formula`` None = random intercept).
        n_subjects, n_obs: participants and observations used.
        params: fixed effects by clean term name; ``cov``: their covariance.
        variances: random-effect variances and the residual variance (``scale``).
        converged: the final optimizer converged and gave finite standard errors.
        optimizer: the optimizer of the kept fit; ``attempts``: one line per optimizer tried.
        messages: warnings raised while fitting (boundary estimates, retries ...).
        error: why the model could not be fitted (then ``params`` is empty).
        alpha: 1 - confidence level of the intervals.
        method: ``satterthwaite`` (t with Satterthwaite df) or ``wald`` (normal).
        inference: lme4's covariance and what Satterthwaite's df need (None when not fitted).
        reml_deviance: the REML deviance at the estimate (lme4's ``REMLcrit``).
        singular: a random-effect variance (or correlation) is on its boundary.
        model: the :class:`Design` (its data, matrices and formula).
    """

    name: str
    formula: str
    re_formula: str | None
    n_subjects: int
    n_obs: int
    params: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    cov: pd.DataFrame = field(default_factory=pd.DataFrame)
    variances: dict[str, float] = field(default_factory=dict)
    converged: bool = False
    optimizer: str = ""
    attempts: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    alpha: float = 0.05
    method: str = "satterthwaite"
    inference: Satterthwaite | None = None
    reml_deviance: float = float("nan")
    singular: bool = False
    model: Design | None = None

    @property
    def ok(self) -> bool:
        """True when estimates exist (they may still come from a non-converged fit)."""
        return self.error is None and len(self.params) > 0

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Fixed-effects prediction ``X beta`` for the rows of ``frame`` (the formula's columns), with the
        design built as ``MixedLMResults.predict`` builds it."""
        return self.model.predict_exog(frame) @ self.params.to_numpy()

    def contrast(self, weights: Mapping[str, float], scale: float = 1.0) -> Estimate:
        """Linear combination ``scale * sum(w * beta)``: lme4's SE, Satterthwaite df (or Wald).

        Not ``MixedLMResults.t_test``: its covariance is the inverse of MixedLM's joint information
        of fixed and variance parameters, and its tests are normal. On the R fixtures its SE of
        model 3's WMH slope is 7.2% above lme4's (30 subjects; 0.01% with 360), and its p-values
        are z-based: 0.0040 for the 30-subject short-minus-long contrast where lmerTest's
        ``contest1D`` gives 0.0063 on 41.8 Satterthwaite df.

        Args:
            weights: clean term name -> weight, e.g. ``{"a": 1, "b": -1}`` for a - b.
            scale: multiplies estimate, SE and CI (e.g. 500 for "per 500 mm3").

        Raises:
            KeyError: a term is not in the model.
        """
        if not self.ok or self.inference is None:
            return Estimate.unavailable(self.n_subjects, self.n_obs, self.method)
        unknown = [t for t in weights if t not in self.params.index]
        if unknown:
            raise KeyError(f"{self.name}: no term {unknown[0]!r}; terms are {list(self.params.index)}")
        w = np.zeros(len(self.params))
        for term, value in weights.items():
            w[self.params.index.get_loc(term)] = float(value)
        est = float(w @ self.params.to_numpy()) * scale
        var = float(w @ self.cov.to_numpy() @ w)
        se = float(np.sqrt(var)) * abs(scale) if var >= 0 else float("nan")
        df = self.inference.df(w) if self.method == "satterthwaite" else None
        if df is not None and not np.isfinite(df):  # the estimate stands; its test does not
            nan = float("nan")
            return Estimate(est, se, None, nan, nan, nan, self.n_subjects, self.n_obs, self.method)
        return Estimate.from_t(est, se, df, self.alpha, self.n_subjects, self.n_obs)

    def estimate(self, term: str, scale: float = 1.0) -> Estimate:
        """One fixed-effect term, optionally rescaled."""
        return self.contrast({term: 1.0}, scale)

    def table(self) -> pd.DataFrame:
        """Every fixed effect and variance component, one row each (``models.csv`` rows)."""
        base = {
            "model": self.name,
            "n_subjects": self.n_subjects,
            "n_obs": self.n_obs,
            "converged": self.converged,
            "optimizer": self.optimizer,
            "formula": self.formula + (f" | random: {self.re_formula}" if self.re_formula else ""),
        }
        rows = []
        for term in self.params.index:
            e = self.estimate(term)
            rows.append({**base, "kind": "fixed", "term": term, **_fields(e)})
        for term, value in self.variances.items():
            rows.append({**base, "kind": "variance", "term": term, "estimate": value})
        if not rows:
            rows.append({**base, "kind": "not fitted", "term": "", "note": self.error or ""})
        return pd.DataFrame(rows)


def _fields(e: Estimate) -> dict[str, float]:
    return {k: getattr(e, k) for k in ("estimate", "std_err", "df", "ci_low", "ci_high", "p_value", "method")}


def _texts(caught: list[warnings.WarningMessage], kinds: tuple[type[Warning], ...]) -> list[str]:
    return [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, kinds)]


@dataclass(frozen=True)
class Design:
    """A mixed model's design, built from its formulas as ``MixedLM.from_formula`` builds it (the
    same columns, order and names) without loading statsmodels' models.

    ``frame`` is the data the design came from; ``spec`` rebuilds the fixed-effects columns for
    new rows (:meth:`MixedFit.predict`).
    """

    frame: pd.DataFrame
    endog: np.ndarray
    exog: np.ndarray
    exog_re: np.ndarray
    groups: np.ndarray
    endog_name: str
    exog_names: list[str]
    exog_re_names: list[str]
    spec: Any

    @classmethod
    def from_formula(cls, formula: str, data: pd.DataFrame, groups: str, re_formula: str | None) -> Design:
        """Raises the formula engine's error for a bad formula or a missing value."""
        from statsmodels.formula._manager import FormulaManager

        manager = FormulaManager()
        lhs, rhs = manager.get_matrices(formula, data, na_action="raise")
        if re_formula is None:
            exog_re, re_names = np.ones((len(data), 1)), ["Intercept"]
        else:
            re_frame = FormulaManager().get_matrices(re_formula, data, na_action="raise")
            exog_re, re_names = re_frame.to_numpy(dtype=float), [str(c) for c in re_frame.columns]
        return cls(data, lhs.iloc[:, 0].to_numpy(dtype=float), rhs.to_numpy(dtype=float), exog_re,
                   data[groups].to_numpy(), str(lhs.columns[0]), [str(c) for c in rhs.columns], re_names,
                   manager.get_model_spec(rhs))

    def predict_exog(self, frame: pd.DataFrame) -> np.ndarray:
        """The fixed-effects design of new rows (the formula's columns)."""
        from statsmodels.formula._manager import FormulaManager

        return np.asarray(FormulaManager().get_matrices(self.spec, frame, pandas=False, prediction=True), dtype=float)


def _design(out: MixedFit, formula: str, data: pd.DataFrame, groups: str, re_formula: str | None) -> Design | None:
    """The model's :class:`Design`, or None with ``out.error`` set."""
    try:
        model = Design.from_formula(formula, data, groups, re_formula)
    except Exception as exc:  # formula or design errors from patsy/formulaic
        out.error = f"the model could not be set up: {' '.join(str(exc).split())}"
        return None
    if np.ptp(model.endog) == 0:
        out.error = f"the outcome {model.endog_name} has the same value on every row"
        return None
    rank = np.linalg.matrix_rank(model.exog)
    if rank < model.exog.shape[1]:
        out.error = f"the fixed-effects design is rank-deficient (rank {rank} < {model.exog.shape[1]} terms)"
        return None
    return model


def fit_mixed(
    name: str,
    formula: str,
    data: pd.DataFrame,
    *,
    groups: str = "subject_id",
    re_formula: str | None = None,
    alpha: float = 0.05,
    method: str = "satterthwaite",
    optimizers: Sequence[str] = OPTIMIZERS,
) -> MixedFit:
    """Fit ``formula`` by REML with a random intercept per ``groups`` value.

    Args:
        name: the model's name in outputs.
        formula: fixed effects, statsmodels formula syntax.
        data: one row per observation, no missing values in the formula's columns.
        groups: the participant column.
        re_formula: random-effects formula (e.g. ``"~years_since_baseline"`` for a random slope);
            None for a random intercept.
        alpha: 1 - confidence level.
        method: ``satterthwaite`` or ``wald`` (how p-values and intervals are computed).
        optimizers: :func:`scipy.optimize.minimize` methods, tried in order until one converges.

    Returns:
        A :class:`MixedFit`; when every optimizer fails, ``error`` says why and the fit with
        estimates (if any) is kept with ``converged=False``.

    Example:
        >>> fit = fit_mixed("m", "y ~ x", df)  # doctest: +SKIP
        >>> fit.estimate("x").ci_low  # doctest: +SKIP
    """
    n_subjects = int(data[groups].nunique())
    out = MixedFit(name, formula, re_formula, n_subjects, len(data), alpha=alpha, method=method)
    out.model = model = _design(out, formula, data, groups, re_formula)
    if model is None:
        return out
    problem = RemlProblem(model.endog, model.exog, model.exog_re, model.groups)
    kept = _fit_with_retries(problem, optimizers, out)
    if kept is None:
        out.error = "every optimizer failed: " + "; ".join(out.attempts)
        return out
    out.optimizer, theta, out.converged = kept
    re_names = ["intercept" if i == 0 else clean_term(n) for i, n in enumerate(model.exog_re_names)]
    try:
        _attach_inference(out, problem, theta, [clean_term(t) for t in model.exog_names], re_names)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        out.error = f"lme4's fixed-effect covariance could not be computed: {' '.join(str(exc).split())}"
        out.converged = False
        return out
    if not out.converged:
        out.messages.append(
            f"no optimizer converged; the estimates shown come from {out.optimizer}, "
            "the first attempt that gave estimates"
        )
    return out


def _fit_with_retries(
    problem: RemlProblem, optimizers: Sequence[str], out: MixedFit
) -> tuple[str, np.ndarray, bool] | None:
    """REML fits with each optimizer in turn until one converges, attempts and warnings noted in
    ``out``: ``(optimizer, theta, converged)`` of the kept fit (the first with estimates when
    none converges), None when every optimizer failed."""
    kept = None
    for method in optimizers:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = minimise(problem, method)
                theta = polish(problem, np.asarray(res.x, dtype=float))
                good = bool(res.success) and bool(np.isfinite(problem.profiled_deviance(theta)))
            except (np.linalg.LinAlgError, ValueError, FloatingPointError, ZeroDivisionError) as exc:
                out.attempts.append(f"{method}: failed ({' '.join(str(exc).split())})")
                continue
        out.attempts.append(f"{method}: {'converged' if good else 'did not converge'}")
        out.messages.extend(f"{method}: {m}" for m in dict.fromkeys(_texts(caught, (RuntimeWarning, UserWarning))))
        if kept is None or good:
            kept = (method, theta, good)
        if good:
            break
    return kept


def _attach_inference(out: MixedFit, problem: RemlProblem, theta: np.ndarray, names: list[str],
                      re_names: list[str]) -> None:
    """lme4's estimates, covariance, variance components and Satterthwaite pieces at ``theta``."""
    inf = Satterthwaite.at(problem, np.r_[theta, problem.sigma(theta)])
    out.inference = inf
    out.reml_deviance = problem.profiled_deviance(theta)
    out.params = pd.Series(inf.beta, index=names)
    out.cov = pd.DataFrame(inf.cov, index=names, columns=names)
    low = problem.lower(theta)
    sigma2 = float(inf.varpar[-1]) ** 2
    values = sigma2 * low @ low.T
    for i, re_name in enumerate(re_names):
        out.variances[f"var(subject {re_name})"] = float(values[i, i])
    for i in range(len(re_names)):
        for j in range(i):
            out.variances[f"cov(subject {re_names[j]}, {re_names[i]})"] = float(values[i, j])
    out.variances["var(residual)"] = sigma2
    diag = np.abs(np.diag(low))
    out.singular = bool(np.any(diag < 1e-4 * max(diag.max(), 1e-12)) or np.any(diag < 1e-8))
    if inf.hessian_eigen_min <= 0 and not out.singular:
        out.messages.append(
            "the REML deviance's Hessian is not positive definite at the estimate (as lmerTest warns: the fit "
            "may not be at a minimum); Satterthwaite df use its pseudo-inverse"
        )
    if out.singular:
        out.messages.append(
            "singular fit: a random-effect variance is estimated at (or next to) zero; "
            "the model is over-parametrised for these data"
        )
