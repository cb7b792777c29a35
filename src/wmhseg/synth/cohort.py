"""Longitudinal ALS/control cohort simulator with known effects (pure NumPy/pandas).

The simulated cohort has the design of the CALSNIC study analysed by :mod:`wmhseg.stats`:
ALS patients and controls scanned one to four times over about one to two years, ALSFRS-R
scores for the patients, and survival from the baseline MRI with censoring. Its tables follow
the volume-table and clinical-table schemas, so ``python analyze.py`` runs on them unchanged,
and :attr:`Cohort.truth` holds the values the headline models should recover, keyed like
``headline.json``.

Data-generating process (subject ``i``, visit ``j`` at ``t_ij`` years from baseline):

* baseline WMH ``B_i = exp(log(median) + a*(age_i - 60) + m*male_i + N(0, log_sd))`` (mm^3);
* WMH ``w_ij = B_i + s_i * t_ij + N(0, residual_sd)``, clipped at 0, where ``s_i`` is
  ``control_slope`` for controls and ``control_slope + als_extra_slope + d_i`` for ALS;
* each ALS patient belongs to a prognosis class drawn before the survival times: ``short``
  (outcome before ``cutoff_months``), ``long`` (alive at the cut-off), ``censored`` (follow-up
  ends before the cut-off) or ``unknown`` (no survival data). ``d_i`` is ``+D * n_long / n``
  for short and ``-D * n_short / n`` for long survivors (``D = short_extra_slope``, ``n`` the
  classified count) and 0 otherwise, so the short-minus-long slope difference is exactly ``D``
  and the mean ALS extra slope is exactly ``als_extra_slope``;
* visit schedules are drawn independently of the class (survival times are drawn after them
  and always fall after the last visit), so the class does not change how much each subject
  informs the slope estimates;
* ALSFRS-R ``y_ij = c + g*(age_i - 60) + f*male_i + b_i * w_ij / 500 + u_i + N(0, res_sd)``,
  rounded and clipped to 0-48, with ``b_i = alsfrs_per_500mm3`` (plus
  ``alsfrs_slope_diff_short_vs_long`` for short survivors) and ``u_i ~ N(0, subject_sd)``;
  ALSFRS-R depends on time only through WMH, so ``alsfrs_r ~ wmh_mm3 + age + sex`` is the
  correctly specified model.

``volumes['wmh_mm3']`` is each scan's true WMH volume in this simulation (the value an imaging
simulator should paint into that scan).

Example:
    >>> from wmhseg.synth.cohort import CohortParams, simulate_cohort
    >>> cohort = simulate_cohort(CohortParams(n_als=30, n_control=30, seed=1))
    >>> sorted(cohort.truth)[0]
    'alsfrs_per_500mm3_wmh'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from wmhseg.files import atomic_write_csv, atomic_write_json

__all__ = ["CohortParams", "Cohort", "simulate_cohort", "write_cohort", "params_dict"]

_PROBABILITIES = (
    "p_male_als",
    "p_male_control",
    "p_alsfrs_measured",
    "p_survival_data",
    "p_short",
    "p_censored_early",
)
_POSITIVE = ("age_sd", "baseline_wmh_median_mm3", "survival_shape", "survival_scale_months", "cutoff_months")
_NON_NEGATIVE = ("baseline_wmh_log_sd", "wmh_residual_sd", "alsfrs_subject_sd", "alsfrs_residual_sd")


@dataclass(frozen=True)
class CohortParams:
    """Parameters of :func:`simulate_cohort`; defaults follow the CALSNIC study.

    Args:
        n_als, n_control: numbers of patients and controls (>= 0, at least one subject).
        visit_probabilities: probabilities of 1, 2, ... visits per subject (sum to 1).
        visit_interval_years: mean time between visits.
        visit_jitter_years: half-width of the uniform jitter added to each interval
            (< ``visit_interval_years``). The longest schedule must end before the cut-off.
        age_mean, age_sd, age_range: baseline age distribution (normal, clipped to the range).
        p_male_als, p_male_control: share of men.
        baseline_wmh_median_mm3: median baseline WMH of a 60-year-old woman.
        baseline_wmh_log_sd: between-subject spread of baseline WMH (log scale): the random
            intercept of the WMH trajectories.
        wmh_log_per_year_of_age, wmh_log_male: age and sex effects on baseline WMH (log scale).
        control_slope: WMH progression of controls (mm^3/year).
        als_extra_slope: mean extra progression of ALS patients (mm^3/year).
        short_extra_slope: progression of short minus long survivors (mm^3/year).
        wmh_residual_sd: visit-to-visit residual SD of WMH (mm^3).
        alsfrs_intercept: ALSFRS-R of a 60-year-old woman with no WMH.
        alsfrs_per_500mm3: ALSFRS-R change per 500 mm^3 of WMH (long survivors and
            unclassified patients).
        alsfrs_slope_diff_short_vs_long: extra ALSFRS-R change per 500 mm^3 in short survivors.
        alsfrs_age_per_year, alsfrs_male: covariate effects on ALSFRS-R.
        alsfrs_subject_sd, alsfrs_residual_sd: ALSFRS-R random intercept and residual SDs.
        p_alsfrs_measured: chance that a patient's visit has an ALSFRS-R score.
        p_survival_data: share of patients with survival data.
        p_short, p_censored_early: among patients with survival data, the shares who reach the
            outcome before the cut-off and who are censored before it (the rest are long).
        cutoff_months: survival-group cut-off.
        survival_shape, survival_scale_months: Weibull distribution of the outcome times.
        max_followup_months: end of follow-up for long survivors (censoring is uniform between
            the cut-off and this).
        seed: random seed; the same parameters give the same cohort.
    """

    # who, when, demographics
    n_als: int = 232
    n_control: int = 207
    visit_probabilities: tuple[float, ...] = (0.15, 0.25, 0.35, 0.25)
    visit_interval_years: float = 0.5
    visit_jitter_years: float = 0.1
    age_mean: float = 60.0
    age_sd: float = 10.0
    age_range: tuple[float, float] = (30.0, 85.0)
    p_male_als: float = 0.6
    p_male_control: float = 0.5
    # baseline WMH (log scale)
    baseline_wmh_median_mm3: float = 3000.0
    baseline_wmh_log_sd: float = 0.45
    wmh_log_per_year_of_age: float = 0.025
    wmh_log_male: float = 0.1
    # WMH progression (mm^3/year) and visit noise
    control_slope: float = 150.0
    als_extra_slope: float = 911.5
    short_extra_slope: float = 1006.0
    wmh_residual_sd: float = 300.0
    # ALSFRS-R against WMH, its noise and missingness
    alsfrs_intercept: float = 43.0
    alsfrs_per_500mm3: float = -1.0
    alsfrs_slope_diff_short_vs_long: float = 0.0
    alsfrs_age_per_year: float = -0.05
    alsfrs_male: float = 0.0
    alsfrs_subject_sd: float = 2.5
    alsfrs_residual_sd: float = 1.5
    p_alsfrs_measured: float = 0.9
    # survival and follow-up
    p_survival_data: float = 0.5
    p_short: float = 0.39
    p_censored_early: float = 0.05
    cutoff_months: float = 24.0
    survival_shape: float = 1.5
    survival_scale_months: float = 35.0
    max_followup_months: float = 72.0
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"CohortParams.{name}={getattr(self, name)!r}: {why}")

        for name in ("n_als", "n_control"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise bad(name, "must be a non-negative integer")
        if self.n_als + self.n_control == 0:
            raise bad("n_als", "the cohort needs at least one subject")
        probs = np.asarray(self.visit_probabilities, dtype=float)
        if probs.ndim != 1 or probs.size == 0 or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
            raise bad("visit_probabilities", "must be non-negative and sum to 1")
        if not 0 <= self.visit_jitter_years < self.visit_interval_years:
            raise bad("visit_jitter_years", "must be >= 0 and smaller than visit_interval_years")
        longest = (probs.size - 1) * (self.visit_interval_years + self.visit_jitter_years) * 12.0
        if longest >= self.cutoff_months - 1.0:
            raise bad("visit_interval_years", f"the longest visit schedule ({longest:.1f} months) must end at least "
                      f"a month before cutoff_months={self.cutoff_months}")
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be a probability in [0, 1]")
        if self.p_short + self.p_censored_early > 1.0:
            raise bad("p_short", "p_short + p_censored_early must not exceed 1")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        for name in _NON_NEGATIVE:
            if not getattr(self, name) >= 0:
                raise bad(name, "must be non-negative")
        if not self.age_range[0] < self.age_range[1]:
            raise bad("age_range", "must be (low, high) with low < high")
        if not self.max_followup_months > self.cutoff_months:
            raise bad("max_followup_months", "must exceed cutoff_months")


@dataclass
class Cohort:
    """A simulated cohort.

    Attributes:
        volumes: one row per scan in the volume-table schema (``status`` 'ok'); ``wmh_mm3`` is
            the scan's true WMH volume.
        clinical: one row per scan in the clinical-table schema.
        truth: the true headline values, keyed like ``headline.json``.
        subjects: one row per subject with the latent values (group, baseline age, sex, baseline
            WMH, WMH slope, prognosis class, ALSFRS-R intercept, number of visits).
        params: the parameters used.
    """

    volumes: pd.DataFrame
    clinical: pd.DataFrame
    truth: dict[str, float]
    subjects: pd.DataFrame
    params: CohortParams = field(default_factory=CohortParams)


def _visit_times(rng: np.random.Generator, p: CohortParams, n: int) -> list[np.ndarray]:
    n_visits = rng.choice(np.arange(1, len(p.visit_probabilities) + 1), size=n, p=p.visit_probabilities)
    times = []
    for k in n_visits:
        gaps = p.visit_interval_years + rng.uniform(-p.visit_jitter_years, p.visit_jitter_years, size=k - 1)
        times.append(np.concatenate([[0.0], np.cumsum(gaps)]))
    return times


def _weibull_between(
    rng: np.random.Generator, p: CohortParams, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Weibull outcome times truncated to [low, high) by inverse-CDF sampling."""
    k, lam = p.survival_shape, p.survival_scale_months
    cdf = lambda t: 1.0 - np.exp(-((np.asarray(t, dtype=float) / lam) ** k))  # noqa: E731
    u = rng.uniform(cdf(low), cdf(high))
    return lam * (-np.log1p(-u)) ** (1.0 / k)


def _survival(rng: np.random.Generator, p: CohortParams, classes: np.ndarray, last_visit_months: np.ndarray):
    """Survival months and event per subject, consistent with the class and the visits."""
    n = classes.size
    months = np.full(n, np.nan)
    event = np.full(n, np.nan)
    cut = p.cutoff_months
    lo = np.minimum(last_visit_months + 0.5, cut - 0.5)
    short = classes == "short"
    t = _weibull_between(rng, p, lo[short], np.full(short.sum(), cut))
    months[short] = np.floor(t * 10.0) / 10.0
    event[short] = 1
    cens = classes == "censored"
    months[cens] = np.floor(rng.uniform(lo[cens], cut) * 10.0) / 10.0
    event[cens] = 0
    long_ = classes == "long"
    t = _weibull_between(rng, p, np.full(long_.sum(), cut), np.full(long_.sum(), np.inf))
    c = rng.uniform(cut, p.max_followup_months, size=long_.sum())
    months[long_] = np.ceil(np.minimum(t, c) * 10.0) / 10.0
    event[long_] = (t <= c).astype(float)
    return months, event


class _Subjects(NamedTuple):
    """Per-subject draws: group, age, sex and baseline WMH."""

    is_als: np.ndarray
    age: np.ndarray
    male: np.ndarray
    baseline: np.ndarray


def _draw_subjects(rng: np.random.Generator, p: CohortParams, n: int) -> _Subjects:
    is_als = rng.permutation(np.r_[np.ones(p.n_als, bool), np.zeros(p.n_control, bool)])
    age = np.clip(rng.normal(p.age_mean, p.age_sd, n), *p.age_range)
    male = rng.random(n) < np.where(is_als, p.p_male_als, p.p_male_control)
    log_b = (
        np.log(p.baseline_wmh_median_mm3)
        + p.wmh_log_per_year_of_age * (age - 60.0)
        + p.wmh_log_male * male
        + rng.normal(0.0, p.baseline_wmh_log_sd, n)
    )
    return _Subjects(is_als, age, male, np.exp(log_b))


def _prognosis(rng: np.random.Generator, p: CohortParams, is_als: np.ndarray) -> np.ndarray:
    """Each subject's prognosis class: short, long, censored, unknown (ALS) or '' (controls)."""
    n = is_als.size
    classes = np.full(n, "", dtype=object)
    has_data = is_als & (rng.random(n) < p.p_survival_data)
    draw = rng.random(n)
    classes[is_als] = "unknown"
    classes[has_data & (draw < p.p_short)] = "short"
    classes[has_data & (draw >= p.p_short) & (draw < p.p_short + p.p_censored_early)] = "censored"
    classes[has_data & (draw >= p.p_short + p.p_censored_early)] = "long"
    return classes


def _wmh_slopes(p: CohortParams, classes: np.ndarray, is_als: np.ndarray) -> np.ndarray:
    """Per-subject WMH slopes: the short-minus-long difference and the ALS mean exactly as set."""
    n_short, n_long = int((classes == "short").sum()), int((classes == "long").sum())
    n_cls = n_short + n_long
    dev = np.zeros(classes.size)
    if n_cls:
        dev[classes == "short"] = p.short_extra_slope * n_long / n_cls
        dev[classes == "long"] = -p.short_extra_slope * n_short / n_cls
    return p.control_slope + is_als * (p.als_extra_slope + dev)


def _scans(rng: np.random.Generator, p: CohortParams, subj: _Subjects, slope: np.ndarray, alsfrs_b: np.ndarray,
           alsfrs_c: np.ndarray, times: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-scan values: subject row, years, visit number, WMH, ALSFRS-R (and whether measured), lesions."""
    n_visits = np.array([t.size for t in times])
    row = np.repeat(np.arange(n_visits.size), n_visits)
    years = np.concatenate(times)
    wmh = subj.baseline[row] + slope[row] * years + rng.normal(0.0, p.wmh_residual_sd, years.size)
    wmh = np.clip(wmh, 0.0, None)
    raw_alsfrs = alsfrs_c[row] + alsfrs_b[row] * wmh / 500.0 + rng.normal(0.0, p.alsfrs_residual_sd, years.size)
    measured = subj.is_als[row] & (rng.random(years.size) < p.p_alsfrs_measured)
    return {
        "row": row, "years": years, "wmh": wmh, "alsfrs": np.clip(np.rint(raw_alsfrs), 0, 48), "measured": measured,
        "visit": np.concatenate([np.arange(1, k + 1) for k in n_visits]),
        "n_lesions": np.maximum(rng.poisson(2.0 + wmh / 400.0), (wmh > 0).astype(int)),
    }


def _tables(ids: np.ndarray, subj: _Subjects, sc: dict[str, np.ndarray], months: np.ndarray,
            event: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The volume table and the clinical table of the scans."""
    row, years = sc["row"], sc["years"]
    sessions = np.array([f"ses-{v:02d}" for v in sc["visit"]])
    volumes = pd.DataFrame({
        "subject_id": ids[row], "session_id": sessions, "wmh_mm3": np.round(sc["wmh"], 1),
        "n_lesions": sc["n_lesions"].astype(int), "status": "ok", "error": "",
    })
    clinical = pd.DataFrame({
        "subject_id": ids[row],
        "session_id": sessions,
        "group": np.where(subj.is_als[row], "ALS", "control"),
        "age": np.round(subj.age[row] + years, 1),
        "sex": np.where(subj.male[row], "M", "F"),
        "years_since_baseline": np.round(years, 3),
        "alsfrs_r": pd.array(np.where(sc["measured"], sc["alsfrs"], np.nan), dtype="Int64"),
        "survival_months": months[row],
        "event": pd.array(event[row], dtype="Int64"),
    })
    return volumes, clinical


def simulate_cohort(params: CohortParams | None = None) -> Cohort:
    """Simulate a longitudinal ALS/control cohort with known effects.

    Args:
        params: the design and effects; ``CohortParams()`` (the study's design) when omitted.

    Returns:
        A :class:`Cohort` with ``volumes``, ``clinical``, ``truth`` and ``subjects``.

    Example:
        >>> cohort = simulate_cohort(CohortParams(n_als=20, n_control=20, seed=3))
        >>> cohort.volumes.columns.tolist()[:3]
        ['subject_id', 'session_id', 'wmh_mm3']
    """
    p = params if params is not None else CohortParams()
    rng = np.random.default_rng(p.seed)
    n = p.n_als + p.n_control
    subj = _draw_subjects(rng, p, n)
    ids = np.array([f"sub-{i + 1:0{max(4, len(str(n)))}d}" for i in range(n)])
    times = _visit_times(rng, p, n)
    classes = _prognosis(rng, p, subj.is_als)
    months, event = _survival(rng, p, classes, np.array([12.0 * t[-1] for t in times]))
    slope = _wmh_slopes(p, classes, subj.is_als)
    alsfrs_b = p.alsfrs_per_500mm3 + (classes == "short") * p.alsfrs_slope_diff_short_vs_long
    alsfrs_c = (p.alsfrs_intercept + p.alsfrs_age_per_year * (subj.age - 60.0) + p.alsfrs_male * subj.male
                + rng.normal(0.0, p.alsfrs_subject_sd, n))
    sc = _scans(rng, p, subj, slope, alsfrs_b, alsfrs_c, times)
    volumes, clinical = _tables(ids, subj, sc, months, event)
    is_als = subj.is_als
    subjects = pd.DataFrame({
        "subject_id": ids, "group": np.where(is_als, "ALS", "control"), "age": subj.age,
        "sex": np.where(subj.male, "M", "F"), "n_visits": np.array([t.size for t in times]),
        "baseline_wmh_mm3": subj.baseline, "wmh_slope": slope, "prognosis": np.where(is_als, classes, ""),
        "alsfrs_intercept": np.where(is_als, alsfrs_c, np.nan), "alsfrs_per_500mm3": np.where(is_als, alsfrs_b, np.nan),
    })
    # Model 3 pools every ALS visit with a score; its slope is the visit-weighted mean.
    measured = sc["measured"]
    pooled = float(np.mean(alsfrs_b[sc["row"]][measured])) if measured.any() else p.alsfrs_per_500mm3
    truth = {
        "wmh_progression_als_vs_control": float(p.als_extra_slope),
        "wmh_progression_short_vs_long": float(p.short_extra_slope),
        "alsfrs_per_500mm3_wmh": pooled,
        "alsfrs_wmh_slope_short_vs_long": float(p.alsfrs_slope_diff_short_vs_long),
    }
    return Cohort(volumes=volumes, clinical=clinical, truth=truth, subjects=subjects, params=p)


def write_cohort(cohort: Cohort, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``volumes.csv``, ``clinical.csv`` and ``truth.json`` into ``out_dir`` atomically.

    Args:
        cohort: a simulated cohort.
        out_dir: destination folder (created if missing).

    Returns:
        The written paths keyed ``volumes``, ``clinical`` and ``truth``.

    Example:
        >>> paths = write_cohort(simulate_cohort(CohortParams(n_als=5, n_control=5)), "/tmp/c")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"volumes": out / "volumes.csv", "clinical": out / "clinical.csv", "truth": out / "truth.json"}
    atomic_write_csv(paths["volumes"], cohort.volumes)
    atomic_write_csv(paths["clinical"], cohort.clinical)
    atomic_write_json(paths["truth"], cohort.truth)
    return paths


def params_dict(params: CohortParams) -> dict[str, Any]:
    """The parameters as a plain dict (tuples as lists), for provenance files."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}
