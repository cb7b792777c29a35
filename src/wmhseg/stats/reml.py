"""REML fits of a linear mixed model in lme4's parametrisation: the restricted deviance and its
minimum, lme4's fixed-effect covariance and lmerTest's Satterthwaite degrees of freedom.

The model is ``y = X b + Z u + e`` with ``e ~ N(0, sigma^2 I)`` and, per participant,
``u_g ~ N(0, sigma^2 L L')``; ``L`` is lower triangular and ``theta`` lists its lower triangle
column by column (lme4's ``getME(fit, "theta")``). The variance parameters ``varpar`` are
``(theta..., sigma)`` as in lmerTest.

* :func:`minimise` finds the REML estimate of ``theta`` as lme4 does (the profiled deviance,
  ``sigma`` profiled out, with the diagonal of ``L`` bounded below by 0); :func:`polish` takes it
  to full precision.
* :meth:`RemlProblem.deviance` is lmerTest's ``devfun_vp`` for REML:
  ``log|V| + r'V^-1 r / sigma^2 + (n - p) log(2 pi sigma^2) + log|X'V^-1 X|`` with
  ``V = I + Z L L' Z'`` and ``r`` the GLS residual.
* :meth:`RemlProblem.fixed_cov` is lme4's ``vcov``: ``sigma^2 (X'V^-1 X)^-1``.
* :class:`Satterthwaite` holds the Jacobian of that covariance with respect to ``varpar`` and
  the asymptotic covariance of ``varpar`` (twice the inverse Hessian of the deviance), both by
  Richardson-extrapolated central differences as lmerTest's ``numDeriv`` calls; the degrees of
  freedom of a contrast ``l`` are ``2 (l'Cl)^2 / (g' A g)`` with ``g_k = l' dC/dvarpar_k l``.

Every quantity needs only per-participant sums (``Z'Z``, ``Z'X``, ``Z'y``) and batched
``q x q`` solves (Woodbury's identity), so a 439-participant model costs milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize

from wmhseg.stats.dist import norm_logsf, norm_ppf, t_logsf, t_ppf

__all__ = ["OPTIMIZERS", "RemlProblem", "Satterthwaite", "minimise", "polish", "theta_from_cov", "t_inference"]


def theta_from_cov(psi: np.ndarray) -> np.ndarray:
    """lme4's ``theta`` of a relative covariance ``Psi / sigma^2``: its Cholesky factor's lower
    triangle, column by column; a zero pivot (a singular fit) gives a zero column."""
    psi = np.atleast_2d(np.asarray(psi, dtype=float))
    q = len(psi)
    low = np.zeros((q, q))
    for j in range(q):
        pivot = psi[j, j] - low[j, :j] @ low[j, :j]
        low[j, j] = np.sqrt(max(pivot, 0.0))
        for i in range(j + 1, q):
            low[i, j] = (psi[i, j] - low[i, :j] @ low[j, :j]) / low[j, j] if low[j, j] > 0 else 0.0
    return low.T[np.triu_indices(q)]


class Gls(NamedTuple):
    """``log|V|``, ``log|X'V^-1 X|``, ``(X'V^-1 X)^-1``, the GLS ``beta`` and ``r'V^-1 r``."""

    logdet_v: float
    logdet_x: float
    xtvx_inv: np.ndarray
    beta: np.ndarray
    rss: float


def _spd_solve(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """``sum_g log|a_g|`` and ``a_g^-1 b_g`` for a stack of small positive definite ``a_g`` (g x q x q).

    In closed form for q = 1 and 2 (a random intercept, and with a slope): LAPACK's batched solve
    costs about ten times as much per 1 x 1 or 2 x 2 system, and these solves are most of a fit.
    """
    q = a.shape[1]
    if q == 1:
        return float(np.log(a[:, 0, 0]).sum()), b / a
    if q == 2:
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        inv = np.stack([np.stack([a[:, 1, 1], -a[:, 0, 1]], -1), np.stack([-a[:, 1, 0], a[:, 0, 0]], -1)], -2)
        return float(np.log(det).sum()), inv @ b / det[:, None, None]
    _, logdet = np.linalg.slogdet(a)
    return float(logdet.sum()), np.linalg.solve(a, b)


class RemlProblem:
    """A mixed model's data reduced to per-participant sums.

    Args:
        endog: outcome (n); exog: fixed-effects design (n x p); exog_re: random-effects design
            (n x q); groups: participant label per row.
    """

    def __init__(self, endog: np.ndarray, exog: np.ndarray, exog_re: np.ndarray, groups: np.ndarray) -> None:
        codes, _ = pd.factorize(np.asarray(groups))
        y = np.asarray(endog, dtype=float)
        x = np.asarray(exog, dtype=float)
        z = np.asarray(exog_re, dtype=float).reshape(len(y), -1)
        self.n, self.p = x.shape
        self.q = z.shape[1]
        n_groups = int(codes.max()) + 1
        # Work with X = Q R (orthonormal Q) and y minus its OLS fit: the same GLS residuals and
        # log|X'V^-1 X| up to 2 log|det R|, without the cancellation of large sums of squares.
        q_mat, self._r = np.linalg.qr(x)
        self._beta_ols = np.linalg.solve(self._r, q_mat.T @ y)
        self._logdet_r = 2.0 * float(np.sum(np.log(np.abs(np.diag(self._r)))))
        xy = np.column_stack([q_mat, y - x @ self._beta_ols])

        def group_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            out = np.empty((n_groups, a.shape[1], b.shape[1]))
            for i in range(a.shape[1]):
                for j in range(b.shape[1]):
                    out[:, i, j] = np.bincount(codes, a[:, i] * b[:, j], minlength=n_groups)
            return out

        self._zz = group_sums(z, z)
        self._zxy = group_sums(z, xy)
        self._full = xy.T @ xy
        self._cols = np.triu_indices(self.q)  # lower triangle of L, column by column, via L'

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """lme4's bounds on ``theta``: the diagonal of ``L`` is non-negative, the rest is free."""
        rows, cols = self._cols
        return [(0.0, None) if i == j else (None, None) for i, j in zip(rows, cols, strict=True)]

    def lower(self, theta: np.ndarray) -> np.ndarray:
        """The factor ``L`` from ``theta``."""
        upper = np.zeros((self.q, self.q))
        upper[self._cols] = np.asarray(theta, dtype=float)
        return upper.T

    def gls(self, theta: np.ndarray) -> Gls:
        """GLS quantities at ``theta`` (``V`` relative to ``sigma^2``).

        Raises:
            numpy.linalg.LinAlgError: ``X'V^-1 X`` is singular.
        """
        low = self.lower(theta)
        a = np.eye(self.q) + np.einsum("ji,gjk,kl->gil", low, self._zz, low)
        b = np.einsum("ji,gjk->gik", low, self._zxy)
        logdet_a, a_inv_b = _spd_solve(a, b)
        quad = self._full - np.einsum("gki,gkj->ij", b, a_inv_b)
        p = self.p
        qtvq, qtvy, ytvy = quad[:p, :p], quad[:p, p], quad[p, p]
        gamma = np.linalg.solve(qtvq, qtvy)
        beta = np.linalg.solve(self._r, gamma) + self._beta_ols
        sign, logdet_q = np.linalg.slogdet(qtvq)
        if sign <= 0:
            raise np.linalg.LinAlgError("X'V^-1 X is not positive definite")
        r_inv = np.linalg.inv(self._r)
        xtvx_inv = r_inv @ np.linalg.inv(qtvq) @ r_inv.T
        return Gls(logdet_a, logdet_q + self._logdet_r, xtvx_inv, beta, float(ytvy - gamma @ qtvy))

    def sigma(self, theta: np.ndarray) -> float:
        """The REML residual SD at ``theta``: ``sqrt(r'V^-1 r / (n - p))``."""
        return float(np.sqrt(self.gls(theta).rss / (self.n - self.p)))

    def deviance(self, varpar: np.ndarray) -> float:
        """REML deviance at ``varpar = (theta..., sigma)`` (lmerTest's ``devfun_vp``)."""
        theta, sigma2 = varpar[:-1], float(varpar[-1]) ** 2
        g = self.gls(theta)
        return g.logdet_v + g.rss / sigma2 + (self.n - self.p) * np.log(2 * np.pi * sigma2) + g.logdet_x

    def profiled_deviance(self, theta: np.ndarray) -> float:
        """The REML deviance with ``sigma`` profiled out (what lme4 minimises over ``theta``)."""
        try:
            g = self.gls(theta)
        except np.linalg.LinAlgError:
            return np.inf
        if g.rss <= 0:
            return np.inf
        dof = self.n - self.p
        return g.logdet_v + g.logdet_x + dof * (1.0 + np.log(2 * np.pi * g.rss / dof))

    def fixed_cov(self, varpar: np.ndarray) -> np.ndarray:
        """``sigma^2 (X'V^-1 X)^-1`` at ``varpar`` (lme4's ``vcov``)."""
        return float(varpar[-1]) ** 2 * self.gls(varpar[:-1]).xtvx_inv

    def varpar(self, psi: np.ndarray) -> np.ndarray:
        """``(theta..., sigma)`` at a relative covariance ``psi`` (sigma at its REML value)."""
        theta = theta_from_cov(psi)
        return np.r_[theta, self.sigma(theta)]


def polish(problem: RemlProblem, theta: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Newton steps on the profiled REML deviance from ``theta`` (central-difference gradient and
    Hessian), each kept only if the deviance falls; returns lme4's canonical ``theta`` (a
    non-negative diagonal). Takes an optimizer's answer to the optimum's full precision."""
    f = problem.profiled_deviance
    best = f(theta)
    for _ in range(iterations):
        h = 1e-4 * np.maximum(np.abs(theta), 1e-3)
        grad = np.array([(f(theta + e) - f(theta - e)) / (2 * e.sum()) for e in np.diag(h)])
        hess = _hessian(f, theta)
        try:
            step = np.linalg.solve(hess, grad) if np.all(np.linalg.eigvalsh(hess) > 0) else grad * 0
        except np.linalg.LinAlgError:
            break
        trial = theta - step
        value = f(trial)
        if not value < best:
            break
        theta, best = trial, value
    low = problem.lower(theta)
    return theta_from_cov(low @ low.T)


def _steps(x: np.ndarray) -> np.ndarray:
    return 1e-2 * np.maximum(np.abs(x), 1e-2)


def _hessian(f, x: np.ndarray) -> np.ndarray:
    """Central-difference Hessian, one Richardson step (error O(h^4))."""

    def at(h: np.ndarray) -> np.ndarray:
        k = len(x)
        out = np.empty((k, k))
        for i in range(k):
            for j in range(i, k):
                ei, ej = np.eye(k)[i] * h[i], np.eye(k)[j] * h[j]
                val = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h[i] * h[j])
                out[i, j] = out[j, i] = val
        return out

    h = _steps(x)
    return (4.0 * at(h / 2) - at(h)) / 3.0


def _jacobian(f, x: np.ndarray) -> np.ndarray:
    """Central-difference derivative of a matrix-valued ``f`` along each coordinate (Richardson)."""

    def at(h: np.ndarray) -> np.ndarray:
        return np.stack([(f(x + e) - f(x - e)) / (2 * e.sum()) for e in np.diag(h)])

    h = _steps(x)
    return (4.0 * at(h / 2) - at(h)) / 3.0


@dataclass(frozen=True)
class Satterthwaite:
    """lme4's fixed-effect covariance with what Satterthwaite's approximation needs.

    Attributes:
        varpar: ``(theta..., sigma)`` at the REML estimate.
        beta: GLS fixed effects; ``cov``: ``sigma^2 (X'V^-1 X)^-1``.
        jacobian: ``dC/dvarpar_k`` (k x p x p); ``varpar_cov``: ``2 H^-1`` (H the deviance Hessian).
        hessian_eigen_min: the Hessian's smallest eigenvalue (<= 0 at a boundary or a non-optimum).
    """

    varpar: np.ndarray
    beta: np.ndarray
    cov: np.ndarray
    jacobian: np.ndarray
    varpar_cov: np.ndarray
    hessian_eigen_min: float

    @classmethod
    def at(cls, problem: RemlProblem, varpar: np.ndarray) -> Satterthwaite:
        """Evaluate everything at ``varpar`` (the REML estimate)."""
        varpar = np.asarray(varpar, dtype=float)
        hess = _hessian(problem.deviance, varpar)
        eigen = np.linalg.eigvalsh(hess)
        return cls(
            varpar=varpar,
            beta=problem.gls(varpar[:-1]).beta,
            cov=problem.fixed_cov(varpar),
            jacobian=_jacobian(problem.fixed_cov, varpar),
            varpar_cov=2.0 * np.linalg.pinv(hess),
            hessian_eigen_min=float(eigen.min()),
        )

    def df(self, weights: np.ndarray) -> float:
        """Satterthwaite degrees of freedom of the contrast ``weights @ beta``."""
        w = np.asarray(weights, dtype=float)
        var = float(w @ self.cov @ w)
        grad = np.einsum("i,kij,j->k", w, self.jacobian, w)
        denom = float(grad @ self.varpar_cov @ grad)
        return 2.0 * var**2 / denom if denom > 0 else float("nan")


def t_inference(est: float, se: float, df: float | None, alpha: float) -> tuple[float, float, float]:
    """``(ci_low, ci_high, p)``: t intervals and two-sided p with ``df`` (normal when ``df`` is None).

    The p-value is computed from the log survival function, so it stays positive where the
    survival function underflows double precision (it is then the smallest positive double).
    """
    if not (np.isfinite(est) and np.isfinite(se) and se > 0) or (df is not None and not df > 0):
        nan = float("nan")
        return nan, nan, nan
    z = abs(est / se)
    q = float(norm_ppf(1.0 - alpha / 2.0) if df is None else t_ppf(1.0 - alpha / 2.0, df))
    log_p = float(norm_logsf(z) if df is None else t_logsf(z, df)) + np.log(2.0)
    p = float(np.exp(log_p)) if log_p < 0 else 1.0
    return est - q * se, est + q * se, max(p, float(np.nextafter(0.0, 1.0)))


OPTIMIZERS = ("powell", "cobyqa", "nelder-mead")
# Powell's relative tolerance on the deviance: its default (1e-4) stopped 0.058 above the optimum of the
# random-slope model 2 on the 439-subject simulated cohort; at 1e-10 it ends within 1e-8 of it (231
# evaluations) and costs a third of COBYQA's time on the random-intercept models
_OPTIONS = {"powell": {"ftol": 1e-10}}


def minimise(problem: RemlProblem, method: str = "powell") -> optimize.OptimizeResult:
    """Minimise :meth:`RemlProblem.profiled_deviance` over ``theta``, as lme4 does.

    From lme4's start (``L = I``) with the diagonal of ``L`` bounded below by 0, by a
    derivative-free method of :func:`scipy.optimize.minimize`: ``powell``, ``cobyqa`` (the
    successor of lme4's default, bobyqa) or ``nelder-mead``. (L-BFGS-B with finite-difference
    gradients stopped 0.12 above the optimum of the random-slope model 2 of the 360-subject R
    fixture.) :func:`polish` then takes the answer to full precision.

    Example:
        >>> rng = np.random.default_rng(0); g = np.repeat(np.arange(300), 3)
        >>> y = 2 * rng.normal(size=300)[g] + rng.normal(size=900)
        >>> res = minimise(RemlProblem(y, np.ones((900, 1)), np.ones((900, 1)), g))  # theta about [2]
    """
    start = theta_from_cov(np.eye(problem.q))
    return optimize.minimize(problem.profiled_deviance, start, method=method, bounds=problem.bounds(),
                             options=_OPTIONS.get(method))
