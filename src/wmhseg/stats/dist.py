"""The few distribution functions the statistics need, from :mod:`scipy.special`.

They are the functions that :mod:`scipy.stats`' distributions call (``norm.ppf`` is ``ndtri``,
``t.sf`` is ``stdtr(df, -x)``, ``chi2.sf`` is ``chdtrc``), without importing :mod:`scipy.stats`,
which builds every distribution's documentation at import and costs a fresh ``analyze.py`` about
0.3 s.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["chi2_sf", "norm_logsf", "norm_ppf", "norm_sf", "t_logsf", "t_ppf"]


def norm_ppf(q):
    """Standard normal quantile (``scipy.stats.norm.ppf``)."""
    return special.ndtri(q)


def norm_sf(x):
    """Standard normal survival function (``scipy.stats.norm.sf``)."""
    return special.ndtr(-np.asarray(x, dtype=float))


def norm_logsf(x):
    """Log of the standard normal survival function, finite where it underflows."""
    return special.log_ndtr(-np.asarray(x, dtype=float))


def t_ppf(q, df):
    """Student t quantile (``scipy.stats.t.ppf``)."""
    return special.stdtrit(df, q)


def t_logsf(x, df):
    """Log of Student t's survival function (``scipy.stats.t.logsf``)."""
    with np.errstate(divide="ignore"):
        return np.log(special.stdtr(df, -np.asarray(x, dtype=float)))


def chi2_sf(x, k):
    """Chi-squared survival function with ``k`` degrees of freedom (``scipy.stats.chi2.sf``)."""
    return special.chdtrc(k, x)
