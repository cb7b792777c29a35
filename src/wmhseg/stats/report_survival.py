"""The survival section of the report: Kaplan-Meier split, Cox models with their PH tests,
landmark model and prognostic value, each stated with its numbers or with why it is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wmhseg.stats.report_doc import Doc, fmt, format_p

if TYPE_CHECKING:
    from wmhseg.stats.analysis import AnalysisResult

__all__ = ["survival_section"]


def _verdict_p(p: float, alpha: float) -> str:
    return "significant" if np.isfinite(p) and p < alpha else "not significant"


_COX_TITLES = {
    "cox_baseline": "Cox model from the baseline MRI (baseline WMH)",
    "cox_time_varying": "Cox model with time-varying WMH (the latest scan's WMH; counting-process rows)",
}


def _months(v: float) -> str:
    return f"{v:.1f}" if np.isfinite(v) else "not reached"


def _km_item(split, a: float) -> str:
    if split.error:
        return f"Kaplan-Meier split at the median baseline WMH: could not be computed, because {split.error}."
    parts = []
    for lab, sign in (("low", "at or below"), ("high", "above")):
        c = split.curves[lab]
        parts.append(
            f"{sign} (n={c.n}, {c.events} events): median {_months(c.median)} months "
            f"({round(100 * (1 - a), 1):g}% CI {_months(c.median_ci_low)} to {_months(c.median_ci_high)})"
        )
    return (
        f"Kaplan-Meier split at the median baseline WMH ({split.median:,.1f} mm³): {'; '.join(parts)}; log-rank "
        f"χ² = {split.chi2:.2f}, {format_p(split.p_value)} ({_verdict_p(split.p_value, a)})."
    )


def _cox_block(doc: Doc, title: str, cox, a: float) -> None:
    if cox.error:
        doc.p(f"{title}: could not be estimated, because {cox.error}. No hazard ratio or PH test is reported.")
        return
    doc.p(
        f"{title}: {cox.n} patients, {cox.events} events, Efron ties; Harrell's C = {fmt(cox.concordance)}. "
        f"Proportional hazards (R cox.zph, KM transform): global χ² = {cox.ph_global_chi2:.2f}, "
        f"{format_p(cox.ph_global_p)}."
    )
    terms = cox.to_dict(a)["terms"]
    rows = [{"term": k, **{c: fmt(v if v is not None else float("nan")) for c, v in t.items()}} for k, t in terms.items()]
    doc.table(pd.DataFrame(rows))
    flagged = [k for k, t in terms.items() if t["ph_p_value"] is not None and t["ph_p_value"] < a]
    if flagged or cox.ph_global_p < a:
        doc.p(
            f"Possible violation of proportional hazards (p < {a:g}) for: {', '.join(flagged) or 'the model as a whole'}; "
            "read those hazard ratios as averages over follow-up."
        )
    doc.ul([f"warning while fitting: {m}" for m in cox.messages])


def survival_section(doc: Doc, result: AnalysisResult) -> None:
    sv = result.survival
    a = result.settings.alpha
    c = sv.counts
    doc.section(
        "Survival analyses",
        f"{c['patients']} ALS patients have a survival time, an event flag and an analysed scan ({c['events']} "
        f"reached the outcome; {c['short']} short and {c['long']} long survivors, {c['censored_before_cutoff']} "
        f"censored before the cut-off); {c['no_survival_data']} ALS patients have no survival data. Time is counted "
        "from the baseline MRI and every covariate is known at the time it is used, so no patient has to survive to "
        "a later scan to be counted."
    )
    doc.ul(sv.notes)
    doc.ul([_km_item(split, a) for split in sv.km.values()])
    for name, cox in sv.cox.items():
        _cox_block(doc, _COX_TITLES.get(name, name), cox, a)
    _cox_block(
        doc,
        f"Landmark analysis at {sv.landmark_months:g} months (WMH slope from the scans up to the landmark, per "
        "1000 mm³/year; survival counted from the landmark among patients alive and uncensored then)",
        sv.landmark,
        a,
    )
    pv = sv.prognostic
    if pv.error:
        doc.p(f"Prognostic value of baseline WMH: could not be estimated, because {pv.error}.")
    else:
        doc.p(
            f"Prognostic value of baseline WMH ({pv.n} patients with baseline ALSFRS-R, {pv.events} events): Harrell's "
            f"C {pv.c_clinical:.3f} for the clinical model ({', '.join(result.study.covariates)}, baseline ALSFRS-R) and "
            f"{pv.c_clinical_wmh:.3f} with baseline WMH added; difference {pv.c_difference:+.3f} "
            f"({round(100 * (1 - a), 1):g}% bootstrap interval {fmt(pv.c_difference_ci_low)} to "
            f"{fmt(pv.c_difference_ci_high)}, {pv.bootstrap_samples} resamples of patients, seed {pv.seed})."
        )
        auc = [
            f"{months} months: {fmt(v['auc_clinical'] or float('nan'))} clinical, "
            f"{fmt(v['auc_clinical_wmh'] or float('nan'))} with WMH"
            for months, v in (pv.time_dependent_auc or {}).items()
        ]
        if auc:
            doc.p("Time-dependent AUC (cumulative/dynamic, IPCW): " + "; ".join(auc) + ".")


