"""The written report: each result as a sentence with its numbers, the counts of subjects and
scans used and left out, model diagnostics, and the figures. Rendered as Markdown or HTML from
the same content.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wmhseg.stats.mixed import Estimate
from wmhseg.stats.models import MODEL_NAMES

if TYPE_CHECKING:
    from wmhseg.stats.analysis import AnalysisResult

__all__ = ["headline_sentences", "render_report", "format_p"]

_LIST_LIMIT = 30
_CAPTIONS = {
    "wmh_trajectories_als_vs_control": "WMH volume over time in ALS patients and controls: thin lines are "
    "participants, thick lines the mean trajectories of model 1.",
    "wmh_trajectories_by_survival_group": "WMH volume over time in controls, long and short survivors: thin lines "
    "are participants, thick lines the mean trajectories of model 2.",
    "alsfrs_vs_wmh": "ALSFRS-R against WMH volume in ALS patients (left, model 3) and by survival group (right, "
    "model 4); lines are the models' mean fits.",
    "kaplan_meier": "Kaplan-Meier curves of time to outcome for patients above vs at or below the median baseline "
    "WMH, with pointwise {level}% bands and the log-rank p-value.",
}


def format_p(p: float) -> str:
    """``'p < 0.0001'`` or ``'p = 0.032'``; ``'p n/a'`` when undefined."""
    if p is None or not np.isfinite(p):
        return "p n/a"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}" if p < 0.001 else f"p = {p:.3f}"


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


def headline_sentences(result: AnalysisResult) -> dict[str, str]:
    """One sentence per headline, keyed like ``headline.json``."""
    a = result.settings.alpha
    h = result.headline
    out: dict[str, str] = {}
    fits = result.fits
    counts = result.study.counts

    def unavailable(key: str) -> str | None:
        fit = fits[MODEL_NAMES[key]]
        if not np.isfinite(h[key].estimate):
            return f"{key}: could not be estimated, because {fit.error or 'the model gave no estimate'}."
        if not np.isfinite(h[key].std_err) or not np.isfinite(h[key].p_value):
            why = "the model did not converge" if not fit.converged else "its variance is not positive"
            return (
                f"{key}: estimate {h[key].estimate:,.3g}, but its standard error and p-value could not be "
                f"estimated ({why}; {'; '.join(fit.attempts) or 'no optimizer ran'})."
            )
        return None

    e = h["wmh_progression_als_vs_control"]
    out["wmh_progression_als_vs_control"] = unavailable("wmh_progression_als_vs_control") or (
        f"WMH volume grew {abs(e.estimate):,.1f} mm³/year {'faster' if e.estimate >= 0 else 'slower'} in ALS "
        f"patients than in controls ({_ci(e, 1, a)}; {_verdict(e, a)} at α = {a:g}), from {e.n_subjects} "
        f"participants ({counts['subjects_als']} ALS, {counts['subjects_control']} controls) and {e.n_obs} scans."
    )
    e = h["wmh_progression_short_vs_long"]
    out["wmh_progression_short_vs_long"] = unavailable("wmh_progression_short_vs_long") or (
        f"WMH volume grew {abs(e.estimate):,.1f} mm³/year {'faster' if e.estimate >= 0 else 'slower'} in short "
        f"survivors than in long survivors (difference of the two time slopes, short minus long; {_ci(e, 1, a)}; "
        f"{_verdict(e, a)}), from {e.n_subjects} participants ({counts['als_short']} short, {counts['als_long']} "
        f"long survivors and the controls) and {e.n_obs} scans."
    )
    e = h["alsfrs_per_500mm3_wmh"]
    out["alsfrs_per_500mm3_wmh"] = unavailable("alsfrs_per_500mm3_wmh") or (
        f"In ALS patients, ALSFRS-R was {abs(e.estimate):.2f} points {'lower' if e.estimate < 0 else 'higher'} "
        f"per 500 mm³ more WMH (slope x 500 = {e.estimate:+.2f} points; {_ci(e, 2, a)}; {_verdict(e, a)}), "
        f"from {e.n_subjects} patients and {e.n_obs} visits with an ALSFRS-R score."
    )
    e = h["alsfrs_wmh_slope_short_vs_long"]
    out["alsfrs_wmh_slope_short_vs_long"] = unavailable("alsfrs_wmh_slope_short_vs_long") or (
        f"The ALSFRS-R-vs-WMH slope of short survivors differed from that of long survivors by "
        f"{e.estimate:+.2f} points per 500 mm³ (interaction x 500, short minus long; {_ci(e, 2, a)}; "
        f"{'a significant difference' if _verdict(e, a) == 'significant' else 'no significant difference'}), "
        f"from {e.n_subjects} patients and {e.n_obs} visits."
    )
    return out


class _Doc:
    """Minimal document model rendered to Markdown or HTML."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, object]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self.blocks.append(("table", frame))

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "h":
                parts.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "p":
                parts.append(str(value))
            elif kind == "ul":
                parts.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                frame = value.astype(str).apply(lambda c: c.str.replace("|", "\\|"))
                head = "| " + " | ".join(map(str, frame.columns)) + " |"
                rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
                body = ["| " + " | ".join(row) + " |" for row in frame.to_numpy().tolist()]
                parts.append("\n".join([head, rule, *body]))
            elif kind == "img":
                parts.append(f"![{value[1]}]({value[0]})")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        esc = html.escape
        parts = [
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%}img{max-width:100%}</style></head><body>",
        ]
        for kind, value in self.blocks:
            if kind == "h":
                parts.append(f"<h{value[0]}>{esc(value[1])}</h{value[0]}>")
            elif kind == "p":
                parts.append(f"<p>{esc(str(value))}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                parts.append(value.to_html(index=False, escape=True, border=0))
            elif kind == "img":
                parts.append(f"<img src='{esc(value[0])}' alt='{esc(value[1])}'>")
        parts.append("</body></html>\n")
        return "\n".join(parts)


def _fmt(x: object, digits: int = 3) -> str:
    if isinstance(x, (float, np.floating)):
        if not np.isfinite(x):
            return ""
        return (
            f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e5 else f"{x:.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(x)


def _data_section(doc: _Doc, result: AnalysisResult) -> None:
    c = result.study.counts
    s = result.sources
    doc.h(2, "Data")
    doc.p(
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


def _cox_block(doc: _Doc, title: str, cox, a: float) -> None:
    if cox.error:
        doc.p(f"{title}: could not be estimated, because {cox.error}. No hazard ratio or PH test is reported.")
        return
    doc.p(
        f"{title}: {cox.n} patients, {cox.events} events, Efron ties; Harrell's C = {_fmt(cox.concordance)}. "
        f"Proportional hazards (R cox.zph, KM transform): global χ² = {cox.ph_global_chi2:.2f}, "
        f"{format_p(cox.ph_global_p)}."
    )
    terms = cox.to_dict(a)["terms"]
    rows = [{"term": k, **{c: _fmt(v if v is not None else float("nan")) for c, v in t.items()}} for k, t in terms.items()]
    doc.table(pd.DataFrame(rows))
    flagged = [k for k, t in terms.items() if t["ph_p_value"] is not None and t["ph_p_value"] < a]
    if flagged or cox.ph_global_p < a:
        doc.p(
            f"Possible violation of proportional hazards (p < {a:g}) for: {', '.join(flagged) or 'the model as a whole'}; "
            "read those hazard ratios as averages over follow-up."
        )
    doc.ul([f"warning while fitting: {m}" for m in cox.messages])


def _survival_section(doc: _Doc, result: AnalysisResult) -> None:
    sv = result.survival
    a = result.settings.alpha
    c = sv.counts
    doc.h(2, "Survival analyses")
    doc.p(
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
            f"({round(100 * (1 - a), 1):g}% bootstrap interval {_fmt(pv.c_difference_ci_low)} to "
            f"{_fmt(pv.c_difference_ci_high)}, {pv.bootstrap_samples} resamples of patients, seed {pv.seed})."
        )


def _verdict_p(p: float, alpha: float) -> str:
    return "significant" if np.isfinite(p) and p < alpha else "not significant"


def _models_section(doc: _Doc, result: AnalysisResult) -> None:
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
        "All models are REML linear mixed models fitted by statsmodels MixedLM; fixed-effect standard errors are "
        f"lme4's, sigma² (X'V⁻¹X)⁻¹ at the REML estimate, with {tests}; every term is in models.csv."
    )
    if notes:
        doc.p("Fitting notes and warnings:")
        doc.ul(notes)
    else:
        doc.p("Every model converged with the first optimizer, without warnings.")


def _structure_section(doc: _Doc, result: AnalysisResult) -> None:
    """Random intercept vs random slope for models 1 and 2, both estimates side by side."""
    if not result.slopes:
        return
    a = result.settings.alpha
    doc.h(2, "Random-effects structure")
    doc.p(
        "The WMH-progression models are fitted with a random intercept per participant (as in the study) and with "
        "a random intercept and time slope; the REML likelihood-ratio test has the boundary-corrected 50:50 "
        f"χ²(1):χ²(2) mixture p-value. The headline uses the {'random-slope' if result.settings.random_slope else 'random-intercept'} "
        "model (setting random_slope)."
    )
    rows, items = [], []
    for key, check in result.slopes.items():
        for label, fit, e in (("random intercept", check.intercept, check.intercept_estimate),
                              ("random intercept + slope", check.slope, check.slope_estimate)):
            rows.append({"headline": key, "random effects": label, "estimate": _fmt(e.estimate, 4),
                         "SE": _fmt(e.std_err, 4), "df": _fmt(e.df if e.df is not None else float("nan"), 4),
                         "CI": f"{_fmt(e.ci_low, 4)} to {_fmt(e.ci_high, 4)}", "p": format_p(e.p_value),
                         "fit": "singular" if fit.singular else ("converged" if fit.converged else "NOT converged")})
        items.append(f"{key}: {check.verdict(a)}.")
        for fit in (check.intercept, check.slope):
            if fit.singular or (fit.attempts and len(fit.attempts) > 1):
                items.append(f"{fit.name}: optimizer attempts {'; '.join(fit.attempts)}"
                             + ("; singular fit" if fit.singular else "") + ".")
    doc.table(pd.DataFrame(rows))
    doc.ul(items)


def _sensitivity_section(doc: _Doc, result: AnalysisResult) -> None:
    if not result.sensitivity:
        return
    a = result.settings.alpha
    doc.h(2, "Sensitivity analyses")
    doc.p(
        "Each headline re-estimated on log(WMH + 1 mm³), on WMH as % of intracranial volume (when icv_mm3 is "
        "given) and, for model 3, with years since baseline as a covariate (WMH growth and ALSFRS-R decline share "
        f"the time axis). A conclusion (significant at α = {a:g} and its sign) that differs from the headline's is "
        "flagged."
    )
    rows = [
        {"headline": s.key, "analysis": s.analysis, "unit": s.unit, "estimate": _fmt(s.estimate.estimate, 4),
         "CI": f"{_fmt(s.estimate.ci_low, 4)} to {_fmt(s.estimate.ci_high, 4)}", "p": format_p(s.estimate.p_value),
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
    doc = _Doc()
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
    _survival_section(doc, result)
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
