"""Linear mixed-effects fits (statsmodels MixedLM, REML) with estimates, contrasts and
convergence bookkeeping.

:func:`fit_mixed` fits one model with a random intercept per participant (optionally a random
slope). The relative random-effects covariance is first found by a fast vectorised REML profile
(:func:`reml_relative_cov`), and MixedLM starts from it; MixedLM's own optimizer still decides
convergence. An optimizer that fails or does not converge is followed by the next
in :data:`OPTIMIZERS`; every attempt and every warning is kept in the result, never hidden.

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
from scipy import optimize, stats

__all__ = ["OPTIMIZERS", "Estimate", "MixedFit", "fit_mixed", "clean_term", "reml_relative_cov"]

OPTIMIZERS = ("lbfgs", "bfgs", "powell", "nm")
_WRAPPED = re.compile(r"C\((\w+)(?:,\s*Treatment\([^()]*\))?\)")


def clean_term(name: str) -> str:
    """``"years_since_baseline:C(group, Treatment('control'))[T.ALS]"`` -> ``"years_since_baseline:group[T.ALS]"``."""
    return _WRAPPED.sub(r"\1", name)


@dataclass(frozen=True)
class Estimate:
    """One reported number with its uncertainty (the fields of a ``headline.json`` entry)."""

    estimate: float
    std_err: float
    ci_low: float
    ci_high: float
    p_value: float
    n_subjects: int
    n_obs: int

    @classmethod
    def from_normal(cls, est: float, se: float, alpha: float, n_subjects: int, n_obs: int) -> Estimate:
        """Wald estimate: ``est +- z * se`` and a two-sided normal p-value."""
        z = stats.norm.ppf(1.0 - alpha / 2.0)
        if np.isfinite(se) and se > 0:
            p = float(2.0 * stats.norm.sf(abs(est / se)))
        else:
            p = float("nan")
        return cls(
            float(est), float(se), float(est - z * se), float(est + z * se), p, int(n_subjects), int(n_obs)
        )

    @classmethod
    def unavailable(cls, n_subjects: int = 0, n_obs: int = 0) -> Estimate:
        nan = float("nan")
        return cls(nan, nan, nan, nan, nan, int(n_subjects), int(n_obs))

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain JSON-ready values; NaN becomes ``None``."""
        out: dict[str, float | int | None] = {}
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
        result: the statsmodels results object (for predictions).
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
    result: Any = None

    @property
    def ok(self) -> bool:
        """True when estimates exist (they may still come from a non-converged fit)."""
        return self.error is None and len(self.params) > 0

    def contrast(self, weights: Mapping[str, float], scale: float = 1.0) -> Estimate:
        """Linear combination ``scale * sum(w * beta)`` with SE from the covariance matrix.

        Args:
            weights: clean term name -> weight, e.g. ``{"a": 1, "b": -1}`` for a - b.
            scale: multiplies estimate, SE and CI (e.g. 500 for "per 500 mm3").

        Raises:
            KeyError: a term is not in the model.
        """
        if not self.ok:
            return Estimate.unavailable(self.n_subjects, self.n_obs)
        unknown = [t for t in weights if t not in self.params.index]
        if unknown:
            raise KeyError(f"{self.name}: no term {unknown[0]!r}; terms are {list(self.params.index)}")
        w = pd.Series(0.0, index=self.params.index)
        for term, value in weights.items():
            w[term] = float(value)
        est = float(w @ self.params) * scale
        var = float(w @ self.cov.loc[w.index, w.index].to_numpy() @ w)
        se = float(np.sqrt(var)) * abs(scale) if var >= 0 else float("nan")
        return Estimate.from_normal(est, se, self.alpha, self.n_subjects, self.n_obs)

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
    return {k: getattr(e, k) for k in ("estimate", "std_err", "ci_low", "ci_high", "p_value")}


def reml_relative_cov(
    endog: np.ndarray, exog: np.ndarray, exog_re: np.ndarray, groups: np.ndarray
) -> np.ndarray:
    """REML estimate of ``cov(random effects) / var(residual)`` (a ``q x q`` matrix).

    With ``Psi = L L'`` and per participant ``A_i = I + L' Z_i' Z_i L``, Woodbury's identity gives
    ``V_i^-1 = I - Z_i L A_i^-1 L' Z_i'`` and ``log|V_i| = log|A_i|``, so the restricted likelihood
    needs only per-participant sums (``Z'Z``, ``Z'X``, ``Z'y``) and batched ``q x q`` solves. It is
    maximised over the Cholesky factor ``L`` (over ``log Psi`` when ``q == 1``).

    Args:
        endog: outcome (n); exog: fixed-effects design (n x p); exog_re: random-effects design
            (n x q); groups: participant label per row.

    Example:
        >>> rng = np.random.default_rng(0); g = np.repeat(np.arange(300), 3)
        >>> y = 2 * rng.normal(size=300)[g] + rng.normal(size=900)
        >>> psi = reml_relative_cov(y, np.ones((900, 1)), np.ones((900, 1)), g)  # about [[4]]
    """
    codes, _ = pd.factorize(np.asarray(groups))
    y = np.asarray(endog, dtype=float)
    x = np.asarray(exog, dtype=float)
    z = np.asarray(exog_re, dtype=float).reshape(len(y), -1)
    n, p = x.shape
    q = z.shape[1]
    n_groups = int(codes.max()) + 1

    def group_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per participant: sum over rows of the outer products a_r b_r' (G x qa x qb)."""
        out = np.empty((n_groups, a.shape[1], b.shape[1]))
        for i in range(a.shape[1]):
            for j in range(b.shape[1]):
                out[:, i, j] = np.bincount(codes, a[:, i] * b[:, j], minlength=n_groups)
        return out

    zz = group_sums(z, z)
    zxy = group_sums(z, np.column_stack([x, y]))
    xy = np.column_stack([x, y])
    full = xy.T @ xy
    tril = np.tril_indices(q)
    eye = np.eye(q)

    def neg_loglike(theta: np.ndarray) -> float:
        lower = np.zeros((q, q))
        lower[tril] = theta
        a = eye + np.einsum("ji,gjk,kl->gil", lower, zz, lower)
        b = np.einsum("ji,gjk->gik", lower, zxy)
        sign, logdet_a = np.linalg.slogdet(a)
        if np.any(sign <= 0):
            return np.inf
        quad = full - np.einsum("gki,gkj->ij", b, np.linalg.solve(a, b))
        xtvx, xtvy, ytvy = quad[:p, :p], quad[:p, p], quad[p, p]
        try:
            beta = np.linalg.solve(xtvx, xtvy)
        except np.linalg.LinAlgError:
            return np.inf
        resid = ytvy - beta @ xtvy
        sign_x, logdet_x = np.linalg.slogdet(xtvx)
        if sign_x <= 0 or resid <= 0:
            return np.inf
        return 0.5 * (logdet_a.sum() + logdet_x + (n - p) * np.log(resid))

    if q == 1:
        res = optimize.minimize_scalar(
            lambda log_psi: neg_loglike(np.array([np.exp(0.5 * log_psi)])),
            bounds=(-14.0, 14.0),
            method="bounded",
            options={"xatol": 1e-6},
        )
        return np.array([[np.exp(res.x)]]) if np.isfinite(res.fun) else np.eye(1)
    start = eye[tril]
    res = optimize.minimize(neg_loglike, start, method="L-BFGS-B")
    lower = np.zeros((q, q))
    lower[tril] = res.x if np.isfinite(res.fun) else start
    return lower @ lower.T


def _texts(caught: list[warnings.WarningMessage], kinds: tuple[type[Warning], ...]) -> list[str]:
    return [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, kinds)]


def _start_params(model: Any) -> Any:
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    if model.k_vc != 0:
        return None
    psi = reml_relative_cov(model.endog, model.exog, model.exog_re, model.groups)
    psi = psi + 1e-6 * np.eye(len(psi))  # keep it positive definite for the Cholesky parametrisation
    return MixedLMParams.from_components(np.zeros(model.k_fe), cov_re=psi)


def fit_mixed(
    name: str,
    formula: str,
    data: pd.DataFrame,
    *,
    groups: str = "subject_id",
    re_formula: str | None = None,
    alpha: float = 0.05,
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
        optimizers: tried in order until one converges.

    Returns:
        A :class:`MixedFit`; when every optimizer fails, ``error`` says why and the fit with
        estimates (if any) is kept with ``converged=False``.

    Example:
        >>> fit = fit_mixed("m", "y ~ x", df)  # doctest: +SKIP
        >>> fit.estimate("x").ci_low  # doctest: +SKIP
    """
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    n_subjects = int(data[groups].nunique())
    out = MixedFit(name, formula, re_formula, n_subjects, len(data), alpha=alpha)
    try:
        model = smf.mixedlm(formula, data, groups=data[groups].to_numpy(), re_formula=re_formula)
    except Exception as exc:  # formula or design errors from patsy/formulaic
        out.error = f"the model could not be set up: {' '.join(str(exc).split())}"
        return out
    if np.ptp(model.endog) == 0:
        out.error = f"the outcome {model.endog_names} has the same value on every row"
        return out
    rank = np.linalg.matrix_rank(model.exog)
    if rank < model.exog.shape[1]:
        out.error = f"the fixed-effects design is rank-deficient (rank {rank} < {model.exog.shape[1]} terms)"
        return out
    kinds = (ConvergenceWarning, RuntimeWarning, UserWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = _start_params(model)
    out.messages.extend(f"start values: {m}" for m in dict.fromkeys(_texts(caught, kinds)))
    names = [clean_term(t) for t in model.exog_names]
    kept = None
    for method in optimizers:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = model.fit(reml=True, method=method, start_params=start)
                fe = np.asarray(res.fe_params, dtype=float)
                bse = np.asarray(res.bse_fe, dtype=float)
                cov = np.asarray(res.cov_params(), dtype=float)[: model.k_fe, : model.k_fe]
            except (np.linalg.LinAlgError, ValueError, FloatingPointError, ZeroDivisionError) as exc:
                out.attempts.append(f"{method}: failed ({' '.join(str(exc).split())})")
                continue
        good = bool(res.converged) and bool(np.all(np.isfinite(fe)) and np.all(np.isfinite(bse)))
        out.attempts.append(f"{method}: {'converged' if good else 'did not converge'}")
        out.messages.extend(f"{method}: {m}" for m in dict.fromkeys(_texts(caught, kinds)))
        if kept is None or good:
            kept = (method, res, good, fe, cov)
        if good:
            break
    if kept is None:
        out.error = "every optimizer failed: " + "; ".join(out.attempts)
        return out
    method, res, good, fe, cov = kept
    out.optimizer, out.converged, out.result = method, good, res
    out.params = pd.Series(fe, index=names)
    out.cov = pd.DataFrame(cov, index=names, columns=names)
    cov_re = pd.DataFrame(res.cov_re)
    re_names = ["intercept" if i == 0 else clean_term(str(n)) for i, n in enumerate(cov_re.index)]
    values = cov_re.to_numpy(dtype=float)
    for i, re_name in enumerate(re_names):
        out.variances[f"var(subject {re_name})"] = float(values[i, i])
    for i in range(len(re_names)):
        for j in range(i):
            out.variances[f"cov(subject {re_names[j]}, {re_names[i]})"] = float(values[i, j])
    out.variances["var(residual)"] = float(res.scale)
    if not good:
        out.messages.append(
            f"no optimizer converged; the estimates shown come from {method}, the first attempt that gave estimates"
        )
    return out
