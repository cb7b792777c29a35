"""Reading and checking the tables; survival groups; the ledger of left-out rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wmhseg.errors import InputError
from wmhseg.stats.study_data import build_dataset, classify_survival
from wmhseg.stats.tables import TableError, check_volumes, load_clinical, load_volumes

CLIN_HEADER = "subject_id,session_id,group,age,sex,years_since_baseline,alsfrs_r,survival_months,event\n"


def clinical_rows() -> list[str]:
    return [
        "001,01,ALS,60.2,M,0,40,30.5,1",
        "001,02,ALS,60.7,M,0.5,38,30.5,1",
        "002,01,control,55.0,F,0,,,",
        "002,02,control,55.5,F,0.5,,,",
        "003,01,ALS,70.0,F,0,35,12.0,1",
    ]


def volume_rows() -> list[str]:
    return [
        "001,01,3000,5,ok,",
        "001,02,3400,6,ok,",
        "002,01,2000,3,ok,",
        "002,02,2100,3,ok,",
        "003,01,,,error,003_01 FLAIR: file not found",
    ]


def write(tmp_path, name: str, header: str, rows: list[str]):
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def vol_file(tmp_path, rows=None):
    return write(
        tmp_path,
        "volumes.csv",
        "subject_id,session_id,wmh_mm3,n_lesions,status,error\n",
        rows or volume_rows(),
    )


def clin_file(tmp_path, rows=None, header=CLIN_HEADER):
    return write(tmp_path, "clinical.csv", header, rows or clinical_rows())


def test_load_keeps_string_ids_and_drops_failed_rows(tmp_path):
    vol = load_volumes(vol_file(tmp_path))
    assert vol.scans["subject_id"].tolist()[:2] == ["001", "001"]
    assert vol.scans["session_id"].tolist()[0] == "01"
    assert len(vol.scans) == 4 and len(vol.failed) == 1
    assert vol.failed.loc[0, "error"] == "003_01 FLAIR: file not found" and vol.failed.loc[0, "line"] == 6
    clin = load_clinical(clin_file(tmp_path))
    assert clin["subject_id"].iloc[0] == "001" and np.isnan(clin["alsfrs_r"].iloc[2])


def test_table_error_is_input_error():
    assert issubclass(TableError, InputError) and issubclass(TableError, ValueError)


@pytest.mark.parametrize(
    ("rows", "header", "pattern"),
    [
        (None, CLIN_HEADER.replace(",sex", ",Sex"), r"missing column sex \(found 'Sex' instead of 'sex'\?\)"),
        (
            [r.replace("control", "Control") for r in clinical_rows()],
            CLIN_HEADER,
            r"column group .*'Control'.*lines 4, 5.*did you mean 'control'",
        ),
        (
            [r.replace(",F,", ",female,") for r in clinical_rows()],
            CLIN_HEADER,
            r"column sex .*'female'.*lines 4, 5, 6",
        ),
        (
            [*clinical_rows(), "001,01,ALS,60.2,M,0,40,30.5,1"],
            CLIN_HEADER,
            r"more than once.*\(001, 01\).*lines 2, 7",
        ),
        (
            [*clinical_rows()[:4], "001,03,ALS,61,F,1.0,37,30.5,1"],
            CLIN_HEADER,
            r"column sex changes within subject 001 \(F, M\) on lines 2, 3, 6",
        ),
        (
            [*clinical_rows()[:4], "002,03,ALS,56,F,1.0,,,"],
            CLIN_HEADER,
            r"column group changes within subject 002",
        ),
        (
            [r.replace("60.7", "sixty") for r in clinical_rows()],
            CLIN_HEADER,
            r"column age has non-numeric values \('sixty'\) on line 3",
        ),
        (
            [r.replace(",38,", ",50,") for r in clinical_rows()],
            CLIN_HEADER,
            r"column alsfrs_r is above 48 on line 3",
        ),
        (
            [r.replace("30.5,1", "30.5,2") for r in clinical_rows()],
            CLIN_HEADER,
            r"column event must be one of 0, 1 on lines 2, 3",
        ),
        (
            [r.replace(",0.5,", ",-0.5,") for r in clinical_rows()],
            CLIN_HEADER,
            r"years_since_baseline is below 0 on lines 3, 5",
        ),
        (
            [r.replace("002,01,control,55.0", "002,01,control,") for r in clinical_rows()],
            CLIN_HEADER,
            r"age is missing on the baseline row .* subject 002, line 4",
        ),
        (
            [*clinical_rows()[:4], "001,03,ALS,61,M,1.0,37,31.5,1"],
            CLIN_HEADER,
            r"survival_months changes within subject 001",
        ),
    ],
)
def test_bad_clinical_tables(tmp_path, rows, header, pattern):
    path = clin_file(tmp_path, rows, header)
    with pytest.raises(TableError, match=pattern) as info:
        load_clinical(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ([*volume_rows(), "001,01,10,1,ok,"], r"more than once.*lines 2, 7"),
        (
            [r.replace("3400", "3.4e3x") for r in volume_rows()],
            r"column wmh_mm3 has non-numeric values \('3.4e3x'\) on line 3",
        ),
        ([r.replace("3400", "") for r in volume_rows()], r"column wmh_mm3 is missing on line 3"),
        ([r.replace("3400", "-1") for r in volume_rows()], r"wmh_mm3 is negative on line 3"),
        ([r.replace("002,02", ",02") for r in volume_rows()], r"column subject_id is empty on line 5"),
    ],
)
def test_bad_volume_tables(tmp_path, rows, pattern):
    path = vol_file(tmp_path, rows)
    with pytest.raises(TableError, match=pattern) as info:
        load_volumes(path)
    assert str(path) in str(info.value)


def test_missing_volume_column_and_file(tmp_path):
    path = write(tmp_path, "v.csv", "subject_id,session,wmh_mm3\n", ["1,1,1"])
    with pytest.raises(
        TableError, match=r"missing column session_id \(found 'session' instead of 'session_id'"
    ):
        load_volumes(path)
    with pytest.raises(TableError, match="file not found"):
        load_volumes(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match="empty"):
        load_clinical(tmp_path / "empty.csv")


def test_in_memory_frames_with_typed_columns():
    vol = check_volumes(
        pd.DataFrame({"subject_id": ["a"], "session_id": ["1"], "wmh_mm3": [np.nan], "status": ["error"]})
    )
    assert vol.scans.empty and len(vol.failed) == 1
    with pytest.raises(TableError, match=r"volume table: column wmh_mm3 is missing on line 2"):
        check_volumes(pd.DataFrame({"subject_id": ["a"], "session_id": ["1"], "wmh_mm3": [np.nan]}))


def test_orphans_are_reported_not_dropped_silently(tmp_path):
    vrows = [*volume_rows(), "004,01,1000,2,ok,"]  # a scan without clinical row
    crows = [*clinical_rows(), "002,03,control,56.0,F,1.0,,,"]  # a clinical row without scan
    study = build_dataset(load_volumes(vol_file(tmp_path, vrows)), load_clinical(clin_file(tmp_path, crows)))
    c = study.counts
    assert c["scans_failed"] == 1 and c["scans_without_clinical"] == 1
    assert c["clinical_without_scan"] == 1 and c["clinical_scan_failed"] == 1
    assert c["scans_used"] == 4 and c["subjects"] == 2
    everything = study.left_out[study.left_out["left_out_of"] == "all analyses"]
    got = {(r.table, r.subject_id, r.session_id, r.line) for r in everything.itertuples()}
    assert got == {
        ("volumes", "003", "01", 6),
        ("volumes", "004", "01", 7),
        ("clinical", "003", "01", 6),
        ("clinical", "002", "03", 7),
    }
    reasons = dict(zip(everything["subject_id"] + everything["table"], everything["reason"], strict=True))
    assert reasons["004volumes"] == "no clinical row for this scan"
    assert reasons["002clinical"] == "no scan in the volume table"
    assert reasons["003clinical"] == "the scan failed (status not ok)"
    assert reasons["003volumes"].startswith("status error: 003_01 FLAIR")


def test_no_matching_rows_is_an_error(tmp_path):
    vrows = ["999,01,1,1,ok,"]
    with pytest.raises(TableError, match="no row matches a usable scan"):
        build_dataset(load_volumes(vol_file(tmp_path, vrows)), load_clinical(clin_file(tmp_path)))


def test_baseline_age_and_categories(tmp_path):
    study = build_dataset(load_volumes(vol_file(tmp_path)), load_clinical(clin_file(tmp_path)))
    s = study.scans
    assert s.loc[s["subject_id"] == "001", "age"].tolist() == [60.2, 60.2]
    assert list(s["group"].cat.categories) == ["control", "ALS"]
    assert list(s["sex"].cat.categories) == ["F", "M"]
    assert list(s["cohort"].cat.categories) == ["control", "long", "short"]
    assert s.loc[s["subject_id"] == "001", "cohort"].tolist() == ["long", "long"]


@pytest.mark.parametrize(
    ("months", "event", "expected"),
    [
        (23.9, 0, "censored_before_cutoff"),
        (23.9, 1, "short"),
        (24.0, 1, "long"),
        (24.0, 0, "long"),
        (np.nan, np.nan, "no_survival_data"),
        (np.nan, 1, "no_survival_data"),
        (10.0, np.nan, "event_missing"),
        (0.0, 1, "short"),
    ],
)
def test_survival_group_rule(months, event, expected):
    assert classify_survival(np.array([months]), np.array([event]), 24.0)[0] == expected


def test_survival_cutoff_is_configurable():
    got = classify_survival(np.array([17.9, 18.0, 20.0]), np.array([1, 1, 1]), 18.0)
    assert got.tolist() == ["short", "long", "long"]
    with pytest.raises(ValueError, match="cutoff_months"):
        classify_survival(np.array([1.0]), np.array([1.0]), 0)


def test_survival_groups_in_dataset(tmp_path):
    rows = [
        "a,1,ALS,60,M,0,40,23.9,0",  # censored before 24: neither group
        "b,1,ALS,60,M,0,40,24,1",  # event at exactly 24: long
        "c,1,ALS,60,F,0,40,,",  # no survival data: neither
        "d,1,ALS,60,F,0,40,5,1",  # short
        "e,1,control,60,F,0,,,",
    ]
    vrows = [f"{x},1,100,1,ok," for x in "abcde"]
    study = build_dataset(load_volumes(vol_file(tmp_path, vrows)), load_clinical(clin_file(tmp_path, rows)))
    got = dict(zip(study.subjects["subject_id"], study.subjects["survival_status"], strict=True))
    assert got == {
        "a": "censored_before_cutoff",
        "b": "long",
        "c": "no_survival_data",
        "d": "short",
        "e": "control",
    }
    assert study.counts["als_short"] == 1 and study.counts["als_long"] == 1
    assert study.counts["als_censored_before_cutoff"] == 1 and study.counts["als_no_survival_data"] == 1
    ledger = study.left_out.set_index("subject_id")
    assert ledger.loc["a", "reason"] == "censored before the cut-off"
    assert ledger.loc["c", "reason"] == "no survival data"
    assert ledger.loc["a", "left_out_of"].startswith("survival-group models")


def test_extra_covariate_column(tmp_path):
    header = CLIN_HEADER.strip() + ",site\n"
    rows = [r + (",A" if i % 2 else ",B") for i, r in enumerate(clinical_rows())]
    study = build_dataset(
        load_volumes(vol_file(tmp_path)),
        load_clinical(clin_file(tmp_path, rows, header)),
        covariates=("age", "site"),
    )
    assert "site" in study.scans.columns
    with pytest.raises(TableError, match="covariate 'scanner' is not a column"):
        build_dataset(
            load_volumes(vol_file(tmp_path)), load_clinical(clin_file(tmp_path)), covariates=("scanner",)
        )


def test_n_lesions_stays_integer_with_failed_rows():
    frame = pd.DataFrame({"subject_id": ["1", "2", "3"], "session_id": ["a"] * 3, "wmh_mm3": ["1", "2", ""],
                          "n_lesions": ["3", "", ""], "status": ["ok", "ok", "error"]})
    scans = check_volumes(frame).scans
    assert str(scans["n_lesions"].dtype) == "Int64" and scans["n_lesions"].tolist() == [3, pd.NA]
    with pytest.raises(TableError, match="n_lesions is not a whole number on line 2"):
        check_volumes(frame.assign(n_lesions=["2.5", "", ""]))


def test_study_data_is_that_of_the_unsplit_build_dataset():
    """build_dataset in parts gives the data set, subjects, ledger and counts of the one-function version
    (digest taken from it on the 30-subject R fixture with an 18-month cut-off)."""
    import hashlib
    from pathlib import Path

    from wmhseg.stats.tables import check_clinical, read_table

    data = Path(__file__).parent / "data" / "r"
    st = build_dataset(check_volumes(read_table(data / "cohort30_volumes.csv", name="v")),
                       check_clinical(read_table(data / "cohort30_clinical.csv", name="c")), cutoff_months=18)
    text = (st.scans.to_csv(index=False) + st.subjects.to_csv(index=False) + st.left_out.to_csv(index=False)
            + repr(sorted(st.counts.items())))
    assert hashlib.sha256(text.encode()).hexdigest() == "faf07a3dfa165d09b1a680a73c11eb0d192fddbab78ca85dd38d5d5020d1e1d3"
