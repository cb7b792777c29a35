"""Calibration of the WMH-progression inference on cohorts from a simulator that does not share the
models' assumptions (per-participant random slopes, deaths between visits, dropout, censoring).

A modest number of cohorts keeps the suite fast; the acceptance bounds come from the binomial
distribution for that number, so a correct method fails with probability below 0.2%.
``benchmarks/calibration.py`` runs the same scenarios over 200 seeds and more.
"""

from __future__ import annotations

import pytest
from scipy import stats

from wmhseg.stats.headline_models import fit_spec, headline_specs
from wmhseg.stats.study_data import build_dataset
from wmhseg.stats.tables import check_clinical, check_volumes
from wmhseg.synth.disease import DiseaseParams, simulate_disease

SEEDS = 16
ALPHA = 0.05
# the most false positives, and the fewest covering intervals, that a calibrated 5% test gives
# with probability above 0.1% in SEEDS cohorts
MAX_HITS = int(stats.binom.ppf(0.999, SEEDS, ALPHA))
MIN_COVERED = int(stats.binom.ppf(0.001, SEEDS, 1 - ALPHA))


def tally(**changes) -> dict[str, list[int]]:
    """Per headline: [p < alpha, interval covers the truth] counts of the random-slope model."""
    counts = {key: [0, 0] for key in ("wmh_progression_als_vs_control", "wmh_progression_short_vs_long")}
    for seed in range(SEEDS):
        cohort = simulate_disease(DiseaseParams(n_als=40, n_control=35, seed=500 + seed, **changes))
        study = build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical))
        for spec in headline_specs(study)[:2]:
            _, e = fit_spec(spec, study, re_formula="~years_since_baseline")
            counts[spec.key][0] += e.p_value < ALPHA
            counts[spec.key][1] += e.ci_low <= cohort.truth[spec.key] <= e.ci_high
    return counts


@pytest.mark.slow
def test_random_slope_model_false_positive_rate_with_slope_heterogeneity():
    counts = tally(als_extra_slope=0.0, short_extra_slope=0.0, slope_sd=300.0)
    assert all(hits <= MAX_HITS for hits, _ in counts.values()), (counts, MAX_HITS)


@pytest.mark.slow
def test_random_slope_model_coverage_with_effects():
    """The study's ALS-vs-control effect with varying slopes. Progression does not depend on
    prognosis here: where it does, fast progressors die early and leave fewer scans, and model 1
    (which does not condition on survival group) is pulled toward the long survivors' slope, an
    informative-dropout bias documented from benchmarks/calibration.py."""
    counts = tally(slope_sd=300.0, short_extra_slope=0.0)
    assert all(covered >= MIN_COVERED for _, covered in counts.values()), (counts, MIN_COVERED)


def test_simulator_truths_and_layout():
    cohort = simulate_disease(DiseaseParams(n_als=40, n_control=30, seed=1))
    study = build_dataset(check_volumes(cohort.volumes), check_clinical(cohort.clinical))
    subjects = cohort.subjects.set_index("subject_id")
    als = study.subjects[study.subjects["group"] == "ALS"].set_index("subject_id")
    # short survivors are exactly the fast progressors whose death was observed, long ones slow
    assert subjects.loc[als.index[als["survival_status"] == "short"], "fast"].all()
    assert not subjects.loc[als.index[als["survival_status"] == "long"], "fast"].any()
    # no scan after the outcome or the end of follow-up
    scans = study.scans[study.scans["survival_months"].notna()]
    assert (12 * scans["years_since_baseline"] < scans["survival_months"]).all()
    assert cohort.truth["wmh_progression_short_vs_long"] == DiseaseParams().short_extra_slope
