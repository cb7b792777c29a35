"""The longitudinal cohort simulator: schema, design, determinism, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wmhseg.schema import CLINICAL_COLUMNS, VOLUME_CORE
from wmhseg.stats.headline_models import HEADLINE_KEYS
from wmhseg.stats.study_data import classify_survival
from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(CohortParams(seed=11))


def test_schema_and_ids(cohort):
    assert tuple(cohort.volumes.columns) == VOLUME_CORE
    assert tuple(cohort.clinical.columns) == CLINICAL_COLUMNS
    assert (cohort.volumes["status"] == "ok").all() and (cohort.volumes["error"] == "").all()
    assert cohort.volumes["subject_id"].str.fullmatch(r"sub-\d{4}").all()
    assert cohort.volumes["session_id"].str.fullmatch(r"ses-\d{2}").all()
    assert cohort.volumes["subject_id"].iloc[0] == "sub-0001"
    pd.testing.assert_frame_equal(
        cohort.volumes[["subject_id", "session_id"]], cohort.clinical[["subject_id", "session_id"]]
    )
    assert set(cohort.truth) == set(HEADLINE_KEYS)


def test_study_design(cohort):
    subj = cohort.subjects
    assert (subj["group"] == "ALS").sum() == 232 and (subj["group"] == "control").sum() == 207
    base = cohort.clinical[cohort.clinical["years_since_baseline"] == 0]
    assert base["subject_id"].nunique() == 439
    span = cohort.clinical.groupby("subject_id")["years_since_baseline"].max()
    assert 1.0 <= span.max() <= 2.0
    wmh = cohort.volumes["wmh_mm3"]
    assert (wmh >= 0).all() and 1500 < wmh.median() < 6000
    clin = cohort.clinical.drop_duplicates("subject_id")
    als = clin[clin["group"] == "ALS"]
    status = classify_survival(
        als["survival_months"].to_numpy(), als["event"].to_numpy(dtype=float, na_value=np.nan)
    )
    n_short, n_long = (status == "short").sum(), (status == "long").sum()
    assert 85 <= n_short + n_long <= 135 and 30 <= n_short <= 65 and 45 <= n_long <= 85
    controls = cohort.clinical[cohort.clinical["group"] == "control"]
    assert controls[["alsfrs_r", "survival_months", "event"]].isna().all().all()


def test_alsfrs_range_and_clipping(cohort):
    frs = cohort.clinical["alsfrs_r"].dropna().astype(float)
    assert frs.between(0, 48).all() and (frs == frs.round()).all()
    assert ((frs == 0) | (frs == 48)).mean() < 0.03


def test_visits_before_outcome(cohort):
    """Every scan precedes the patient's outcome; the prognosis class matches the rule."""
    clin = cohort.clinical
    dead = clin[clin["event"] == 1]
    assert (dead["years_since_baseline"] * 12 < dead["survival_months"]).all()
    first = clin.drop_duplicates("subject_id").set_index("subject_id")
    subj = cohort.subjects.set_index("subject_id")
    als = subj[subj["group"] == "ALS"]
    status = classify_survival(
        first.loc[als.index, "survival_months"].to_numpy(),
        first.loc[als.index, "event"].to_numpy(dtype=float, na_value=np.nan),
        24.0,
    )
    expected = als["prognosis"].replace({"censored": "censored_before_cutoff", "unknown": "no_survival_data"})
    assert (status == expected.to_numpy()).all()


def test_slopes_match_truth(cohort):
    subj = cohort.subjects
    p = cohort.params
    als = subj[subj["group"] == "ALS"]
    assert np.isclose(als["wmh_slope"].mean() - p.control_slope, p.als_extra_slope)
    diff = (
        als.loc[als["prognosis"] == "short", "wmh_slope"].mean()
        - als.loc[als["prognosis"] == "long", "wmh_slope"].mean()
    )
    assert np.isclose(diff, p.short_extra_slope)


def test_deterministic_and_seeded():
    a = simulate_cohort(CohortParams(n_als=20, n_control=15, seed=5))
    b = simulate_cohort(CohortParams(n_als=20, n_control=15, seed=5))
    c = simulate_cohort(CohortParams(n_als=20, n_control=15, seed=6))
    pd.testing.assert_frame_equal(a.volumes, b.volumes)
    pd.testing.assert_frame_equal(a.clinical, b.clinical)
    assert not a.volumes["wmh_mm3"].equals(c.volumes["wmh_mm3"])
    assert a.subjects["subject_id"].nunique() == 35


def test_small_cohort_for_demo():
    c = simulate_cohort(CohortParams(n_als=15, n_control=15, seed=2))
    assert c.subjects.shape[0] == 30
    assert len(c.volumes) == len(c.clinical) >= 30


def test_write_cohort_round_trip(tmp_path, cohort):
    paths = write_cohort(cohort, tmp_path / "c")
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"volumes.csv", "clinical.csv", "truth.json"}
    vol = pd.read_csv(paths["volumes"], dtype={"subject_id": str, "session_id": str})
    assert vol["subject_id"].iloc[0] == "sub-0001" and len(vol) == len(cohort.volumes)
    clin = pd.read_csv(paths["clinical"], dtype=str, keep_default_na=False)
    assert set(clin["alsfrs_r"][clin["group"] == "control"]) == {""}
    assert json.loads(paths["truth"].read_text()) == cohort.truth


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_als": -1},
        {"n_als": 0, "n_control": 0},
        {"visit_probabilities": (0.5, 0.6)},
        {"visit_interval_years": 1.0},
        {"p_short": 0.8, "p_censored_early": 0.3},
        {"p_male_als": 1.5},
        {"max_followup_months": 12.0},
    ],
)
def test_bad_params(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        CohortParams(**kwargs)


def test_cohort_tables_are_those_of_the_unsplit_simulator():
    """simulate_cohort draws in the same order as before it was split into parts: the digest of a small
    cohort's two tables was taken from the one-function simulator (same NumPy and pandas)."""
    import hashlib

    c = simulate_cohort(CohortParams(n_als=12, n_control=8, seed=5))
    text = c.volumes.to_csv(index=False) + c.clinical.to_csv(index=False)
    assert hashlib.sha256(text.encode()).hexdigest() == "2fa140544a65c17e4232a25a438bbc98ff0d4bf030feec2c76e0a1b66c02117a"
