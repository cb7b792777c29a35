"""The written report: each result as a sentence with its numbers, the counts of subjects and
scans used and left out, model diagnostics, and the figures. Rendered as Markdown or HTML from
the same content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wmhseg.stats.headline_models import MODEL_NAMES
from wmhseg.stats.mixed import Estimate
from wmhseg.stats.report_doc import Doc, fmt, format_p
from wmhseg.stats.report_survival import survival_section

if TYPE_CHECKING:
    from wmhseg.stats.analysis import AnalysisResult

__all__ = ["headline_sentences", "render_report", "format_p"]

_LIST_LIMIT = 30
_CAPTIONS = {
    "wmh_trajectories_als_vs_control": "(The study's Figure 2A.) WMH volume over time in ALS patients and controls: thin lines are "
    "participants, thick lines the mean trajectories of model 1.",
    "wmh_trajectories_by_survival_group": "(The study's Figure 2B.) WMH volume over time in controls, long and short survivors: thin lines "
    "are participants, thick lines the mean trajectories of model 2.",
    "alsfrs_vs_wmh": "(The study's Figures 3A and 3B.) ALSFRS-R against WMH volume in ALS patients (left, model 3) and by survival group (right, "
    "model 4); lines are the models' mean fits.",
    "forest_plot": "The key term of every model with its {level}% confidence interval: the four headline "
    "estimates (zero marked) and the WMH hazard ratios of the Cox models (one marked, log axis).",
    "kaplan_meier": "Kaplan-Meier curves of time to outcome for patients above vs at or below the median baseline "
    "WMH, with pointwise {level}% bands and the log-rank p-value.",
}


def _ci(e: Estimate, digits: int, alpha: float) -> str:
    level = round(100 * (1 - alpha), 1)
    test = f"t test, Satterthwaite df {e.df:.1f}" if e.df is not None else "Wald z test"
    return (
        f"SE {e.std_err:,.{digits}f}; {level:g}% CI {e.ci_low:,.{digits}f} to {e.ci_high:,.{digits}f}; "
        f"{format_p(e.p_value)}, {test}"
    )


def _verdict(e: Estimate, alpha: float) -> str:
    if not np.isfinite(e.p_value):
        return "its p-value could not be computed"
    return "significant" if e.p_value < alpha else "not significant"


# each headline's sentence; the fields come from :func:`_sentence_fields`
_SENTENCES = {
    "wmh_progression_als_vs_control": (
        "WMH volume grew {size1} mm³/year {faster} in ALS patients than in controls ({ci1}; {verdict} at α = {alpha}), "
        "from {n_subjects} participants ({subjects_als} ALS, {subjects_control} controls) and {n_obs} scans."
    ),
    "wmh_progression_short_vs_long": (
        "WMH volume grew {size1} mm³/year {faster} in short survivors than in long survivors (difference of the two "
        "time slopes, short minus long; {ci1}; {verdict}), from {n_subjects} participants ({als_short} short, "
        "{als_long} long survivors and the controls) and {n_obs} scans."
    ),
    "alsfrs_per_500mm3_wmh": (
        "In ALS patients, ALSFRS-R was {size2} points {lower} per 500 mm³ more WMH (slope x 500 = {signed} points; "
        "{ci2}; {verdict}), from {n_subjects} patients and {n_obs} visits with an ALSFRS-R score."
    ),
    "alsfrs_wmh_slope_short_vs_long": (
        "The ALSFRS-R-vs-WMH slope of short survivors differed from that of long survivors by {signed} points per "
        "500 mm³ (interaction x 500, short minus long; {ci2}; {difference}), from {n_subjects} patients and "
        "{n_obs} visits."
    ),
}


def _sentence_fields(e: Estimate, counts: dict[str, int], alpha: float) -> dict[str, object]:
    verdict = _verdict(e, alpha)
    return {
        **counts, "alpha": f"{alpha:g}", "n_subjects": e.n_subjects, "n_obs": e.n_obs, "verdict": verdict,
        "size1": f"{abs(e.estimate):,.1f}", "size2": f"{abs(e.estimate):.2f}", "signed": f"{e.estimate:+.2f}",
        "faster": "faster" if e.estimate >= 0 else "slower", "lower": "lower" if e.estimate < 0 else "higher",
        "ci1": _ci(e, 1, alpha), "ci2": _ci(e, 2, alpha),
        "difference": "a significant difference" if verdict == "significant" else "no significant difference",
    }


def _unavailable(key: str, e: Estimate, fit) -> str | None:
    """Why a headline has no estimate, SE or p-value (None when it has them all)."""
    if not np.isfinite(e.estimate):
        return f"{key}: could not be estimated, because {fit.error or 'the model gave no estimate'}."
    if not np.isfinite(e.std_err) or not np.isfinite(e.p_value):
        why = (
            "the model did not converge"
            if not fit.converged
            else "its variance is not positive"
            if not np.isfinite(e.std_err)
            else "the Satterthwaite degrees of freedom could not be computed (a singular fit?)"
        )
        return (
            f"{key}: estimate {e.estimate:,.3g}, but its standard error and p-value could not be "
            f"estimated ({why}; {'; '.join(fit.attempts) or 'no optimizer ran'})."
        )
    return None


def headline_sentences(result: AnalysisResult) -> dict[str, str]:
    """One sentence per headline, keyed like ``headline.json``."""
    a, counts = result.settings.alpha, result.study.counts
    out: dict[str, str] = {}
    for key, sentence in _SENTENCES.items():
        e = result.headline[key]
        out[key] = _unavailable(key, e, result.fits[MODEL_NAMES[key]]) or sentence.format(**_sentence_fields(e, counts, a))
    return out


def _data_section(doc: Doc, result: AnalysisResult) -> None:
    c = result.study.counts
    s = result.sources
    doc.section(
        "Data",
        f"The volume table ({s['volumes']}) has {c['volume_rows']} rows, of which {c['scans_failed']} have a status "
        f"other than ok and are left out. The clinical table ({s['clinical']}) has {c['clinical_rows']} rows. "
        f"{c['scans_used']} scans of {c['subjects']} participants ({c['subjects_als']} ALS with {c['scans_als']} scans, "
        f"{c['subjects_control']} controls with {c['scans_control']} scans) are analysed."
    )
    doc.ul(
        [
            f"Scans without a clinical row (left out): {c['scans_without_clinical']}.",
            f"Clinical rows without a scan in the volume table (left out): {c['clinical_without_scan']}.",
            f"Clinical rows whose scan failed (left out): {c['clinical_scan_failed']}.",
            f"ALS scans without an ALSFRS-R score (left out of the ALSFRS-R models): {c['als_scans_without_alsfrs']}.",
            f"Survival groups at {result.study.cutoff_months:g} months: {c['als_short']} short and {c['als_long']} "
            f"long survivors; left out of the survival-group analyses: {c['als_censored_before_cutoff']} censored "
            f"before the cut-off, {c['als_event_missing']} with a time before the cut-off but no event flag, "
            f"{c['als_no_survival_data']} without survival data.",
        ]
        + (
            [f"Controls with survival data (ignored): {c['controls_with_survival_data']}."]
            if c["controls_with_survival_data"]
            else []
        )
    )
    left = result.study.left_out
    if len(left):
        summary = left.groupby(["table", "left_out_of", "reason"], sort=False).size().reset_index(name="rows")
        doc.p("Rows left out, by reason (every row is listed in left_out.csv):")
        doc.table(summary)
        dropped = left[left["left_out_of"] == "all analyses"]
        shown = dropped.head(_LIST_LIMIT)
        if len(shown):
            doc.p(
                f"The first {len(shown)} of {len(dropped)} rows left out of all analyses:"
                if len(dropped) > len(shown)
                else "Rows left out of all analyses:"
            )
            doc.table(shown)


def _models_section(doc: Doc, result: AnalysisResult) -> None:
    doc.h(2, "Models")
    rows = []
    for fit in result.fits.values():
        rows.append(
            {
                "model": fit.name,
                "formula": fit.formula,
                "random effects": f"participant: {fit.re_formula or '1'}",
                "participants": fit.n_subjects,
                "observations": fit.n_obs,
                "converged": "not fitted" if fit.error and not fit.ok else ("yes" if fit.converged else "NO"),
                "optimizer attempts": "; ".join(fit.attempts),
            }
        )
    doc.table(pd.DataFrame(rows))
    notes = [
        f"{fit.name}: {m}"
        for fit in result.fits.values()
        for m in ([fit.error] if fit.error else []) + fit.messages
    ]
    tests = (
        "t tests and intervals with Satterthwaite degrees of freedom (as lmerTest)"
        if result.settings.inference == "satterthwaite"
        else "Wald z tests and normal intervals"
    )
    doc.p(
        "All models are linear mixed models fitted by REML as lme4 fits them (the profiled REML deviance minimised "
        f"over the random-effects covariance factor); fixed-effect standard errors are lme4's, sigma² (X'V⁻¹X)⁻¹ at the REML estimate, with {tests}; every term is in models.csv."
    )
    if notes:
        doc.p("Fitting notes and warnings:")
        doc.ul(notes)
    else:
        doc.p("Every model converged with the first optimizer, without warnings.")


def _structure_section(doc: Doc, result: AnalysisResult) -> None:
    """Random intercept vs random slope for models 1 and 2, both estimates side by side."""
    if not result.slopes:
        return
    a = result.settings.alpha
    doc.section(
        "Random-effects structure",
        "The WMH-progression models are fitted with a random intercept per participant (as in the study) and with "
        "a random intercept and time slope; the REML likelihood-ratio test has the boundary-corrected 50:50 "
        f"χ²(1):χ²(2) mixture p-value. The headline uses the {'random-slope' if result.settings.random_slope else 'random-intercept'} "
        "model (setting random_slope)."
    )
    rows, items = [], []
    for key, check in result.slopes.items():
        for label, fit, e in (("random intercept", check.intercept, check.intercept_estimate),
                              ("random intercept + slope", check.slope, check.slope_estimate)):
            rows.append({"headline": key, "random effects": label, "estimate": fmt(e.estimate, 4),
                         "SE": fmt(e.std_err, 4), "df": fmt(e.df if e.df is not None else float("nan"), 4),
                         "CI": f"{fmt(e.ci_low, 4)} to {fmt(e.ci_high, 4)}", "p": format_p(e.p_value),
                         "fit": "singular" if fit.singular else ("converged" if fit.converged else "NOT converged")})
        items.append(f"{key}: {check.verdict(a)}.")
        for fit in (check.intercept, check.slope):
            if fit.singular or (fit.attempts and len(fit.attempts) > 1):
                items.append(f"{fit.name}: optimizer attempts {'; '.join(fit.attempts)}"
                             + ("; singular fit" if fit.singular else "") + ".")
    doc.table(pd.DataFrame(rows))
    doc.ul(items)


def _sensitivity_section(doc: Doc, result: AnalysisResult) -> None:
    """The headlines under the alternative analyses, each flagged where its conclusion changes."""
    if result.sensitivity:
        doc.section("Sensitivity analyses", (
            "Each headline re-estimated on log(WMH + 1 mm³), on WMH as % of intracranial volume (when icv_mm3 is "
            "given) and, for model 3, with years since baseline as a covariate (WMH growth and ALSFRS-R decline "
            f"share the time axis). A conclusion (significant at α = {result.settings.alpha:g} and its sign) that "
            "differs from the headline's is flagged."))
        _sensitivity_table(doc, result)


def _sensitivity_table(doc: Doc, result: AnalysisResult) -> None:
    rows = [
        {"headline": s.key, "analysis": s.analysis, "unit": s.unit, "estimate": fmt(s.estimate.estimate, 4),
         "CI": f"{fmt(s.estimate.ci_low, 4)} to {fmt(s.estimate.ci_high, 4)}", "p": format_p(s.estimate.p_value),
         "conclusion": s.alternative, "headline conclusion": s.headline, "changed": "YES" if s.changed else "no"}
        for s in result.sensitivity
    ]
    doc.table(pd.DataFrame(rows))
    changed = [f"{s.key} ({s.analysis})" for s in result.sensitivity if s.changed]
    doc.p(
        f"Conclusions that change: {', '.join(changed)}." if changed
        else "No conclusion changes under these analyses."
    )


def render_report(result: AnalysisResult, figures: dict[str, str], fmt: str = "md") -> str:
    """The report text.

    Args:
        result: the analysis result.
        figures: figure name -> path relative to the report.
        fmt: ``md`` or ``html``.
    """
    doc = Doc()
    st = result.settings
    doc.h(1, "WMH longitudinal and survival analysis")
    doc.p(
        f"Inputs: volume table {result.sources['volumes']}, clinical table {result.sources['clinical']}. "
        f"Covariates: {', '.join(st.covariates) or 'none'} (age = age at each participant's baseline row). "
        f"Random effects: participant intercept{' and time slope (models 1-2)' if st.random_slope else ''}. "
        f"Survival cut-off {st.cutoff_months:g} months; α = {st.alpha:g}."
    )
    doc.h(2, "Headline results")
    doc.ul(list(headline_sentences(result).values()))
    unconverged = [f.name for f in result.fits.values() if f.ok and not f.converged]
    if unconverged:
        doc.p(
            f"Warning: {', '.join(unconverged)} did not converge; treat their estimates with caution (see Models)."
        )
    _structure_section(doc, result)
    _sensitivity_section(doc, result)
    _data_section(doc, result)
    survival_section(doc, result)
    _models_section(doc, result)
    if figures:
        doc.h(2, "Figures")
        for number, (name, path) in enumerate(figures.items(), start=1):
            caption = _CAPTIONS.get(name, name.replace("_", " ")).format(level=f"{100 * (1 - st.alpha):g}")
            doc.p(f"Figure {number}. {caption}")
            doc.img(path, name)
    doc.h(2, "Provenance")
    doc.ul([f"{k}: {v}" for k, v in result.provenance.items()])
    return doc.html("WMH analysis") if fmt == "html" else doc.markdown()
