"""``models.csv``: one row per term of every model of an analysis.

Rows, in order: the fixed effects and variance components of each headline model, the
short-minus-long contrast, the headline values as ``headline.json`` reports them, the other fit
of each random-slope comparison with its likelihood-ratio test, the sensitivity analyses and the
Cox models (estimate = log hazard ratio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from wmhseg.schema import MODELS_COLUMNS
from wmhseg.stats.cox import CoxFit
from wmhseg.stats.dist import norm_ppf
from wmhseg.stats.headline_models import HEADLINE_KEYS, MODEL_NAMES, PER_WMH, TIME
from wmhseg.stats.mixed import Estimate, MixedFit

if TYPE_CHECKING:
    from wmhseg.stats.analysis import AnalysisResult

__all__ = ["models_table"]



def models_table(result: AnalysisResult) -> pd.DataFrame:
    """The ``models.csv`` content of ``result``: one row per term of every model."""
    parts = [fit.table() for fit in result.fits.values()]
    m2 = result.fits[MODEL_NAMES["wmh_progression_short_vs_long"]]
    if m2.ok:
        e = result.headline["wmh_progression_short_vs_long"]
        parts.append(_row(m2, "contrast", f"{TIME}:cohort[T.short] - {TIME}:cohort[T.long]", e))
    for key in HEADLINE_KEYS:
        fit = result.fits[MODEL_NAMES[key]]
        scale = f" (x{PER_WMH:g}: points per {PER_WMH:g} mm3)" if key.startswith("alsfrs") else ""
        parts.append(_row(fit, "headline", key, result.headline[key], note=f"headline.json value{scale}"))
    for check in result.slopes.values():
        other = check.slope if check.slope.name not in result.fits else check.intercept
        parts.append(other.table())
        note = "REML likelihood-ratio test of a random time slope; p from the 50:50 chi2(1):chi2(2) mixture"
        lrt = pd.DataFrame([{"model": check.slope.name, "term": "random slope LRT", "estimate": check.chi2,
                             "p_value": check.p_value, "kind": "lrt", "converged": check.slope.converged,
                             "note": check.error or note}])
        parts.append(lrt)
    for sens in result.sensitivity:
        flag = "CONCLUSION CHANGES" if sens.changed else "same conclusion"
        note = f"{sens.analysis} ({sens.unit}): {sens.alternative} vs headline {sens.headline}: {flag}"
        parts.append(_row(sens.fit, "sensitivity", sens.key, sens.estimate, note=note))
    for name, cox in result.survival.cox_models().items():
        parts.append(_cox_rows(name, cox, result.settings.alpha))
    table = pd.concat(parts, ignore_index=True)
    for col in MODELS_COLUMNS:
        if col not in table.columns:
            table[col] = pd.NA
    for col in ("n_subjects", "n_obs"):
        table[col] = pd.array(pd.to_numeric(table[col]), dtype="Float64").astype("Int64")
    return table[list(MODELS_COLUMNS)]




def _cox_rows(name: str, cox: CoxFit, alpha: float) -> pd.DataFrame:
    """``models.csv`` rows of a Cox model (estimate = log hazard ratio); one row if not fitted."""
    base = {"model": name, "n_subjects": cox.n, "n_obs": cox.n, "converged": cox.converged,
            "optimizer": "newton", "method": "wald", "kind": "cox", "formula": " + ".join(cox.names)}
    if cox.error:
        return pd.DataFrame([{**base, "kind": "not fitted", "term": "", "note": cox.error}])
    terms = cox.to_dict(alpha)["terms"]
    z = norm_ppf(1 - alpha / 2)
    rows = []
    for i, term in enumerate(cox.names):
        t = terms[term]
        rows.append({**base, "term": term, "estimate": cox.coef[i], "std_err": cox.std_err[i],
                     "ci_low": cox.coef[i] - z * cox.std_err[i], "ci_high": cox.coef[i] + z * cox.std_err[i],
                     "p_value": t["p_value"], "hazard_ratio": t["hazard_ratio"], "hr_ci_low": t["ci_low"],
                     "hr_ci_high": t["ci_high"], "ph_p_value": t["ph_p_value"],
                     "note": f"estimate = log hazard ratio; {cox.events} events"})
    return pd.DataFrame(rows)


def _row(fit: MixedFit, kind: str, term: str, e: Estimate, note: str = "") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": fit.name,
                "term": term,
                "estimate": e.estimate,
                "std_err": e.std_err,
                "df": e.df,
                "ci_low": e.ci_low,
                "ci_high": e.ci_high,
                "p_value": e.p_value,
                "n_subjects": e.n_subjects,
                "n_obs": e.n_obs,
                "converged": fit.converged,
                "optimizer": fit.optimizer,
                "method": e.method,
                "kind": kind,
                "formula": fit.formula,
                "note": note,
            }
        ]
    )
