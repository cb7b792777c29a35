"""Sensitivity analyses: log WMH, WMH as % of intracranial volume, model 3 with time."""

from __future__ import annotations

import numpy as np
import pytest

from wmhseg.stats.headline_models import fit_study_models
from wmhseg.stats.mixed import Estimate
from wmhseg.stats.sensitivity import Sensitivity, conclusion, run_sensitivity
from wmhseg.stats.study_data import build_dataset
from wmhseg.stats.tables import check_clinical, check_volumes
from wmhseg.synth.disease import DiseaseParams, simulate_disease


@pytest.fixture(scope="module")
def disease():
    cohort = simulate_disease(DiseaseParams(n_als=80, n_control=40, seed=7))
    volumes = cohort.volumes.assign(icv_mm3=1.5e6)  # one head size: % ICV is WMH rescaled
    study = build_dataset(check_volumes(volumes), check_clinical(cohort.clinical))
    _, headline = fit_study_models(study)
    return cohort, study, headline, run_sensitivity(study, headline)


def test_every_analysis_is_run(disease):
    _, _, _, sens = disease
    assert [s.analysis for s in sens].count("log WMH") == 4
    assert [s.analysis for s in sens].count("% ICV") == 4
    assert [s.analysis for s in sens] [-1] == "model 3 + time"


def test_a_constant_icv_changes_units_not_conclusions(disease):
    _, _, headline, sens = disease
    for s in (s for s in sens if s.analysis == "% ICV"):
        h = headline[s.key]
        assert s.estimate.p_value == pytest.approx(h.p_value, rel=1e-5), s.key
        assert s.estimate.df == pytest.approx(h.df, rel=1e-4) and not s.changed


def test_model3_with_time_recovers_the_effect_given_time(disease):
    """ALSFRS-R falls with time and WMH grows with time: only the model with time estimates the
    WMH effect itself (within 4 SE; a false failure has probability 6e-5)."""
    cohort, _, headline, sens = disease
    with_time = sens[-1].estimate
    truth = cohort.truth["alsfrs_per_500mm3_wmh_given_time"]
    assert abs(with_time.estimate - truth) < 4 * with_time.std_err
    assert headline["alsfrs_per_500mm3_wmh"].estimate < truth  # the time course is mixed in


def test_conclusion_flags():
    def est(value: float, p: float) -> Estimate:
        return Estimate(value, 1.0, 10.0, value - 2, value + 2, p, 10, 20)

    assert conclusion(est(2.0, 0.01), 0.05) == "positive" and conclusion(est(-2.0, 0.2), 0.05) == "not significant"
    assert conclusion(est(1.0, float("nan")), 0.05) == "not estimated"
    flag = Sensitivity("k", "a", "u", None, est(1.0, 0.2), "positive", "not significant")
    assert flag.changed
    assert not Sensitivity("k", "a", "u", None, est(1.0, np.nan), "positive", "not estimated").changed
