"""Manifest reading (CSV and BIDS) and early validation of every scan."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wmhseg.errors import ManifestError, ScanError
from wmhseg.labels import LabelSpec
from wmhseg.manifest import Scan, check_scan, read_manifest, validate_scans


def _copy_scan(tiny_dataset: Path, dest: Path) -> Scan:
    """Copy the first scan of the tiny dataset into ``dest`` and return it as a Scan."""
    src = read_manifest(tiny_dataset)[0]
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in ("t1", "flair", "label"):
        paths[kind] = dest / Path(getattr(src, kind)).name
        shutil.copy(getattr(src, kind), paths[kind])
    return Scan("001", "01", paths["t1"], paths["flair"], paths["label"], row=1)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_ids_stay_strings_and_paths_resolve(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the manifest's folder, not the cwd
    scans = read_manifest(tiny_dataset)
    assert len(scans) == 8
    assert [s.subject_id for s in scans[:2]] == ["001", "001"]
    assert [s.session_id for s in scans[:2]] == ["01", "02"]
    assert scans[0].key == "001_01"
    assert [s.row for s in scans] == list(range(1, 9))
    for s in scans:
        assert s.t1.is_absolute() and s.t1.is_file() and s.flair.is_file() and s.label.is_file()
    validate_scans(scans, LabelSpec(), read_data=True, require_label=True)


def test_bids_folder_gives_the_same_scans(tiny_dataset: Path) -> None:
    csv = read_manifest(tiny_dataset)
    bids = read_manifest(tiny_dataset.parent)
    assert [(s.subject_id, s.session_id) for s in bids] == [(s.subject_id, s.session_id) for s in csv]
    assert [s.label for s in bids] == [s.label.resolve() for s in csv]


def test_bids_without_sessions_and_ambiguous_files(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = _copy_scan(tiny_dataset, tmp_path / "sub-07" / "anat")
    (scan.label).rename(scan.label.with_name("sub-07_dseg.nii.gz"))
    scans = read_manifest(tmp_path)
    assert [(s.subject_id, s.session_id) for s in scans] == [("07", "1")]
    assert scans[0].label.name == "sub-07_dseg.nii.gz"
    shutil.copy(scan.t1, scan.t1.with_name("sub-07_run-2_T1w.nii.gz"))
    (ambiguous,) = read_manifest(tmp_path)
    assert "2 t1 files" in ambiguous.problem and "bids_filters" in ambiguous.problem
    with pytest.raises(ScanError, match="2 t1 files"):
        check_scan(ambiguous)
    (chosen,) = read_manifest(tmp_path, bids_filters={"t1": {"run": "2"}})
    assert chosen.problem is None and chosen.t1.name == "sub-07_run-2_T1w.nii.gz"
    (plain,) = read_manifest(tmp_path, bids_filters={"t1": {"run": None}})  # null: without the entity
    assert plain.problem is None and plain.t1.name == scan.t1.name
    (none_left,) = read_manifest(tmp_path, bids_filters={"t1": {"run": "3"}})
    assert "no t1 file matches bids_filters.t1={'run': '3'}" in none_left.problem
    with pytest.raises(ManifestError, match="bids_filters.T1w"):
        read_manifest(tmp_path, bids_filters={"T1w": {"acq": "3D"}})


def test_incomplete_bids_visits_are_listed_with_their_problem(tiny_dataset: Path, tmp_path: Path) -> None:
    """Each visit stands alone: no anat folder, no FLAIR, or two FLAIRs spoil that visit only."""
    good = _copy_scan(tiny_dataset, tmp_path / "sub-01" / "ses-1" / "anat")
    no_flair = _copy_scan(tiny_dataset, tmp_path / "sub-01" / "ses-2" / "anat")
    no_flair.flair.unlink()
    (tmp_path / "sub-02" / "ses-1").mkdir(parents=True)  # a session without anat
    two = _copy_scan(tiny_dataset, tmp_path / "sub-03" / "anat")
    for acq in ("2D", "3D"):
        shutil.copy(two.flair, two.flair.with_name(f"sub-03_acq-{acq}_FLAIR.nii.gz"))
    two.flair.unlink()
    scans = read_manifest(tmp_path)
    assert [(s.subject_id, s.session_id) for s in scans] == [("01", "1"), ("01", "2"), ("02", "1"), ("03", "1")]
    assert scans[0].problem is None and scans[0].flair == good.flair.resolve()
    assert "no flair file" in scans[1].problem and scans[1].t1 is not None
    assert "missing 'anat' folder" in scans[2].problem
    assert "2 flair files (sub-03_acq-2D_FLAIR.nii.gz, sub-03_acq-3D_FLAIR.nii.gz)" in scans[3].problem
    with pytest.raises(ManifestError, match="3 of 4 scans failed") as info:
        validate_scans(scans, read_data=False)
    assert "row 2 (subject '01', session '2')" in str(info.value)
    chosen = read_manifest(tmp_path, bids_filters={"flair": {"acq": "3D"}})[3]
    assert chosen.problem is None and chosen.flair.name == "sub-03_acq-3D_FLAIR.nii.gz"


def test_missing_column_names_it(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "m.csv", [{"subject_id": "1", "session_id": "1", "t1": "a.nii"}])
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['flair'\]"):
        read_manifest(path)


def test_empty_cell_and_duplicate_name_the_row(tmp_path: Path) -> None:
    rows = [{"subject_id": "01", "session_id": "1", "t1": "a.nii", "flair": "b.nii"},
            {"subject_id": "02", "session_id": "", "t1": "a.nii", "flair": "b.nii"}]
    (_, empty) = read_manifest(_write_csv(tmp_path / "m.csv", rows))  # an incomplete row fails alone
    with pytest.raises(ScanError, match=r"row 2: empty value in column\(s\) \['session_id'\]"):
        check_scan(empty)
    rows[1]["session_id"] = "1"
    rows.append({"subject_id": "01", "session_id": "1", "t1": "c.nii", "flair": "d.nii"})
    with pytest.raises(ManifestError, match="row 3: duplicate scan.*'01'.*row 1"):
        read_manifest(_write_csv(tmp_path / "m.csv", rows))
    # "01" and "1" are different subjects: IDs are strings.
    rows[2]["subject_id"] = "1"
    assert len(read_manifest(_write_csv(tmp_path / "m.csv", rows))) == 3


def test_missing_manifest_and_missing_file(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    scan = _copy_scan(tiny_dataset, tmp_path / "s")
    rows = [{"subject_id": "001", "session_id": "01", "t1": scan.t1.name, "flair": "missing_FLAIR.nii.gz",
             "label": scan.label.name}]
    scans = read_manifest(_write_csv(tmp_path / "s" / "m.csv", rows))
    with pytest.raises(ManifestError, match=r"row 1 \(subject '001', session '01'\): .*missing_FLAIR.nii.gz: file not found"):
        validate_scans(scans, read_data=False)


def test_truncated_gzip_is_caught_when_reading_data(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = _copy_scan(tiny_dataset, tmp_path)
    raw = scan.flair.read_bytes()
    scan.flair.write_bytes(raw[: len(raw) // 2])
    check_scan(scan, read_data=False)  # the header is intact
    with pytest.raises(ScanError, match="FLAIR.nii.gz: cannot read the image data, the file is truncated"):
        check_scan(scan, read_data=True)
    with pytest.raises(ManifestError, match="row 1 .*truncated"):
        validate_scans([scan], read_data=True)


@pytest.mark.parametrize("bad", [7.5, 12.0])
def test_unknown_label_value_names_row_and_value(tiny_dataset: Path, tmp_path: Path, bad: float) -> None:
    scan = _copy_scan(tiny_dataset, tmp_path)
    img = nib.load(scan.label)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = bad
    nib.save(nib.Nifti1Image(data, img.affine), scan.label)
    shown = "7.5" if bad == 7.5 else "12"
    with pytest.raises(ManifestError, match=rf"row 1 .*label.nii.gz: unknown label value\(s\) {shown}\b"):
        validate_scans([scan], LabelSpec(), read_data=True)
    if bad == 12.0:  # a value declared known passes
        validate_scans([scan], LabelSpec(known_values=(*range(10), 12)), read_data=True)


def test_known_values_pass(tiny_dataset: Path) -> None:
    scan = read_manifest(tiny_dataset)[0]
    check_scan(scan, LabelSpec(), read_data=True)
    values = set(np.unique(np.asarray(nib.load(scan.label).dataobj)).tolist())
    assert 9 in values and values <= set(range(10))


def test_grids_that_cannot_be_matched(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = _copy_scan(tiny_dataset, tmp_path)
    img = nib.load(scan.t1)
    far = img.affine.copy()
    far[:3, 3] += 500.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far), scan.t1)
    with pytest.raises(ScanError, match="T1 and FLAIR .* cannot be matched: .* overlap by 0%"):
        check_scan(scan)
    # a T1 on another grid that covers the same head is fine (it gets resampled)
    half = img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    half[:3, 3] = img.affine[:3, 3]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], half), scan.t1)
    check_scan(scan, read_data=True)


def test_label_off_the_flair_grid(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = _copy_scan(tiny_dataset, tmp_path)
    img = nib.load(scan.label)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :30], img.affine), scan.label)
    with pytest.raises(ScanError, match=r"the label is not on the FLAIR grid: shape \(32, 32, 30\)"):
        check_scan(scan)


def test_validate_reports_every_failing_row(tiny_dataset: Path, tmp_path: Path) -> None:
    scans = read_manifest(tiny_dataset)
    broken = [Scan(s.subject_id, s.session_id, tmp_path / f"gone{s.row}.nii.gz", s.flair, s.label, s.row)
              if s.row in (2, 5) else s for s in scans]
    with pytest.raises(ManifestError, match="2 of 8 scans failed") as info:
        validate_scans(broken, read_data=False)
    assert "row 2 " in str(info.value) and "row 5 " in str(info.value) and "row 3 " not in str(info.value)
    no_label = [Scan(s.subject_id, s.session_id, s.t1, s.flair, None, s.row) for s in scans[:1]]
    with pytest.raises(ManifestError, match="row 1 .*no label file"):
        validate_scans(no_label, read_data=False, require_label=True)


def test_gzip_fixture_files_are_complete(tiny_dataset: Path) -> None:
    scan = read_manifest(tiny_dataset)[0]
    with gzip.open(scan.flair) as fh:
        assert len(fh.read()) >= 32**3 * 4


def test_binary_mask_given_as_label_map_is_refused_with_the_hint(tiny_dataset: Path, tmp_path: Path) -> None:
    """{0, 1} is a binary WMH mask: in BISON 1 means ventricles, so training would see no WMH at all."""
    scan = _copy_scan(tiny_dataset, tmp_path)
    img = nib.load(scan.label)
    binary = (np.asarray(img.dataobj) == 9).astype(np.uint8)
    assert set(np.unique(binary)) == {0, 1}
    nib.save(nib.Nifti1Image(binary, img.affine), str(scan.label))
    with pytest.raises(ManifestError, match=r"only the values 0 and 1.*data.labels.wmh_values=\[1\]"):
        validate_scans([scan], LabelSpec(), read_data=True)
    validate_scans([scan], LabelSpec(wmh_values=(1,)), read_data=True)  # what the hint says to do


def test_the_same_file_as_t1_and_flair_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = _copy_scan(tiny_dataset, tmp_path)
    link = tmp_path / "link_T1w.nii.gz"
    link.symlink_to(scan.flair)
    for t1 in (scan.flair, link):
        with pytest.raises(ScanError, match="the same file is given as T1 and as FLAIR"):
            check_scan(Scan("001", "01", t1, scan.flair, None, row=1))
