"""Random-effects structure checked, not assumed: every run fits the WMH-progression models
(models 1 and 2) with a random intercept and with a random intercept and time slope per
participant, and compares them.

* The REML likelihood-ratio statistic ``chi2 = REML deviance(intercept) - REML deviance(slope)``
  (both models have the same fixed effects, so REML deviances are comparable).
* Its p-value is the boundary-corrected 50:50 mixture ``0.5 P(chi2_1 > x) + 0.5 P(chi2_2 > x)``
  (Self and Liang; Stram and Lee): the slope variance is tested on the boundary of its space.
* Both headline estimates are kept side by side. When the slope model fits better (p < alpha),
  the random-intercept intervals are too narrow: participants' slopes vary, and the
  random-intercept model treats repeated scans of a participant as independent evidence on
  the time slope. A singular slope fit or one that needed another optimizer is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wmhseg.stats.dist import chi2_sf
from wmhseg.stats.headline_models import MODEL_NAMES, TIME, fit_spec, headline_specs
from wmhseg.stats.mixed import Estimate, MixedFit
from wmhseg.stats.study_data import StudyData

__all__ = ["SlopeCheck", "mixture_p", "check_random_slopes"]


def mixture_p(chi2: float) -> float:
    """p-value of a REML LRT for one added random slope (variance and covariance): 50:50 chi2_1:chi2_2."""
    if not np.isfinite(chi2):
        return float("nan")
    x = max(chi2, 0.0)
    return float(0.5 * chi2_sf(x, 1) + 0.5 * chi2_sf(x, 2))


@dataclass
class SlopeCheck:
    """Random intercept against random intercept + slope for one headline.

    Attributes:
        key: the headline; ``intercept``/``slope``: the two fits and their headline estimates.
        chi2, p_value: REML likelihood-ratio test with the mixture p-value (NaN if not computed).
        error: why the comparison could not be made.
    """

    key: str
    intercept: MixedFit
    slope: MixedFit
    intercept_estimate: Estimate
    slope_estimate: Estimate
    chi2: float = float("nan")
    p_value: float = float("nan")
    error: str | None = None

    def verdict(self, alpha: float) -> str:
        """One plain sentence for the report."""
        if self.error:
            return f"the random-slope comparison could not be made, because {self.error}"
        if self.p_value < alpha:
            return (
                f"participants' WMH slopes vary (REML LRT χ² = {self.chi2:.2f}, mixture p = {self.p_value:.2g}): "
                "the random-intercept intervals are too narrow; read the random-slope estimate"
            )
        return (
            f"no evidence that participants' WMH slopes vary (REML LRT χ² = {self.chi2:.2f}, mixture "
            f"p = {self.p_value:.2g}); the random-intercept intervals are adequate"
        )


def _compare(key: str, intercept: MixedFit, slope: MixedFit, ri: Estimate, rs: Estimate) -> SlopeCheck:
    out = SlopeCheck(key, intercept, slope, ri, rs)
    if not (intercept.ok and slope.ok):
        out.error = intercept.error or slope.error or "a model gave no estimate"
    elif not (intercept.converged and slope.converged):
        which = "random-intercept" if not intercept.converged else "random-slope"
        out.error = f"the {which} model did not converge"
    else:
        out.chi2 = max(intercept.reml_deviance - slope.reml_deviance, 0.0)
        out.p_value = mixture_p(out.chi2)
    return out


def check_random_slopes(
    study: StudyData,
    fits: dict[str, MixedFit],
    headline: dict[str, Estimate],
    *,
    random_slope: bool = False,
    alpha: float = 0.05,
    method: str = "satterthwaite",
) -> dict[str, SlopeCheck]:
    """Fit the other random-effects structure of models 1 and 2 and compare (see the module).

    Args:
        study: the analysis data set; ``fits``/``headline``: the headline fits and estimates.
        random_slope: whether the headline fits have the random slope (then the intercept-only
            models are the ones fitted here).
    """
    out = {}
    for spec in headline_specs(study):
        if not spec.time_model:
            continue
        name = MODEL_NAMES[spec.key]
        other_name = f"{name}_random_{'intercept' if random_slope else 'slope'}"
        other, other_est = fit_spec(
            spec, study, re_formula=None if random_slope else f"~{TIME}", alpha=alpha, method=method,
            name=other_name,
        )
        if random_slope:
            out[spec.key] = _compare(spec.key, other, fits[name], other_est, headline[spec.key])
        else:
            out[spec.key] = _compare(spec.key, fits[name], other, headline[spec.key], other_est)
    return out
