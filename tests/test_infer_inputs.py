"""infer() on the inputs a busy lab gives it: incomplete BIDS visits, files changed in place between
runs, and inputs that would change the volume silently (each now warned or refused)."""

from __future__ import annotations

import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_cases import (
    FLAIR_THRESHOLD,
    infer_cfg,
    make_checkpoint,
    phantom,
    write_case,
    write_manifest,
    write_nifti,
)

from wmhseg.inference.runner import infer
from wmhseg.input_checks import swapped_contrast_warning
from wmhseg.synth.images import generate_subject

IDS = {"subject_id": str, "session_id": str}


def _table(out):
    return pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False)


def test_bids_cohort_with_incomplete_visits_processes_the_others(tmp_path):
    ckpt = make_checkpoint(tmp_path / "threshold.ckpt")
    case = write_case(tmp_path / "src", "c")
    root = tmp_path / "bids"

    def visit(sub: str, ses: str | None, kinds=("T1w", "FLAIR"), acq: tuple[str, ...] = ()) -> None:
        anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        for kind in kinds:
            for a in acq or ("",):
                name = f"{stem}{f'_acq-{a}' if a else ''}_{kind}.nii.gz"
                shutil.copy(case["t1" if kind == "T1w" else "flair"], anat / name)

    visit("01", "1")
    visit("01", "2", kinds=("T1w",))  # a session without FLAIR
    (root / "sub-02" / "ses-1").mkdir(parents=True)  # a session without anat
    visit("03", None, kinds=("T1w",))
    visit("03", None, kinds=("FLAIR",), acq=("2D", "3D"))  # two candidate FLAIRs
    out = tmp_path / "out"
    assert infer(infer_cfg(ckpt, root, out)) == 1
    vol = _table(out).set_index(["subject_id", "session_id"])
    assert vol.loc[("01", "1"), "status"] == "ok" and float(vol.loc[("01", "1"), "wmh_mm3"]) == case["wmh_mm3"]
    assert "no flair file" in vol.loc[("01", "2"), "error"]
    assert "missing 'anat' folder" in vol.loc[("02", "1"), "error"]
    assert "2 flair files" in vol.loc[("03", "1"), "error"] and "bids_filters" in vol.loc[("03", "1"), "error"]
    # the documented rule settles the two FLAIRs; the finished visit is not redone
    assert infer(infer_cfg(ckpt, root, out, bids_filters={"flair": {"acq": "3D"}})) == 1
    vol = _table(out).set_index(["subject_id", "session_id"])
    assert vol.loc[("03", "1"), "status"] == "ok" and float(vol.loc[("03", "1"), "wmh_mm3"]) == case["wmh_mm3"]
    assert sorted(vol["status"]) == ["error", "error", "ok", "ok"]


def test_a_file_changed_in_place_is_redone(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path / "threshold.ckpt")
    case = write_case(tmp_path / "data", "c")
    manifest = write_manifest(tmp_path / "m.csv", [{"subject_id": "1", "session_id": "1", "t1": case["t1"],
                                                    "flair": case["flair"]}])
    out = tmp_path / "out"
    assert infer(infer_cfg(ckpt, manifest, out)) == 0
    first = _table(out).iloc[0]
    assert float(first["wmh_mm3"]) == case["wmh_mm3"]
    # rewritten with the same content (new mtime): the hash says unchanged, the scan stays done
    data = case["flair"].read_bytes()
    case["flair"].write_bytes(data)
    os.utime(case["flair"], ns=(1_000_000_000, 1_000_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wmhseg.infer"):
        assert infer(infer_cfg(ckpt, manifest, out)) == 0
    assert "1 already done" in caplog.text and "changed since" not in caplog.text
    # re-exported at the same path with one more lesion voxel block (same size on disk is not assumed)
    img = nib.load(case["flair"])
    arr = np.asarray(img.dataobj).copy()
    added = arr[10:13, 10:13, 10:13]
    n_new = int((added <= FLAIR_THRESHOLD).sum())
    arr[10:13, 10:13, 10:13] = FLAIR_THRESHOLD + 100
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(case["flair"]))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wmhseg.infer"):
        assert infer(infer_cfg(ckpt, manifest, out)) == 0
    assert f"{case['flair']} changed since it was processed; redoing it" in caplog.text
    voxel = float(abs(np.linalg.det(img.affine[:3, :3])))
    assert float(_table(out).iloc[0]["wmh_mm3"]) == pytest.approx(case["wmh_mm3"] + n_new * voxel)


def _synthetic_pair(folder, name, seed):
    scan = generate_subject(shape=(48, 56, 48), spacing=(2.0, 2.0, 2.0), seed=seed, wmh_volume_mm3=2000.0)
    return (write_nifti(folder / f"{name}_T1w.nii.gz", scan.t1, scan.t1_affine),
            write_nifti(folder / f"{name}_FLAIR.nii.gz", scan.flair, scan.affine))


@pytest.mark.parametrize("seed", range(4))
def test_swapped_contrast_is_told_from_the_right_order(seed):
    scan = generate_subject(shape=(48, 56, 48), spacing=(2.0, 2.0, 2.0), seed=seed, wmh_volume_mm3=2000.0)
    from pathlib import Path

    t1, flair = Path("t1.nii.gz"), Path("flair.nii.gz")
    assert swapped_contrast_warning(scan.t1, scan.flair, t1, flair) is None
    assert "columns are not swapped" in swapped_contrast_warning(scan.flair, scan.t1, t1, flair)
    same = phantom()[1]
    assert swapped_contrast_warning(same, same, t1, flair) is None  # identical contrasts: not flagged


@pytest.mark.slow
def test_silent_inputs_are_warned_or_refused(tmp_path):
    ckpt = make_checkpoint(tmp_path / "threshold.ckpt")
    data = tmp_path / "data"
    good = write_case(data, "good")
    t1, flair, label = phantom()
    affine = nib.load(good["flair"]).affine
    rows = {"good": (good["t1"], good["flair"], good["label"])}
    # a T1 covering only the lower half of the head (in z)
    half = affine.copy()
    rows["partial_t1"] = (write_nifti(data / "half_T1w.nii.gz", t1[:, :, :18], half), good["flair"], "")
    # qform and sform codes both 0
    img = nib.Nifti1Image(flair, affine)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(data / "nocode_FLAIR.nii.gz"))
    rows["no_orientation"] = (good["t1"], data / "nocode_FLAIR.nii.gz", "")
    # 5 mm slices against the checkpoint's 1 mm working grid
    thick = np.diag([1.0, 1.0, 5.0, 1.0])
    rows["thick"] = (write_nifti(data / "thick_T1w.nii.gz", t1, thick), write_nifti(data / "thick_FLAIR.nii.gz",
                                                                                    flair, thick), "")
    rows["swapped"] = tuple(reversed(_synthetic_pair(data, "syn", 0))) + ("",)
    rows["right_order"] = _synthetic_pair(data, "syn", 0) + ("",)
    rows["same_file"] = (good["flair"], good["flair"], "")
    rows["same_image"] = (write_nifti(data / "copy_T1w.nii.gz", flair, affine), good["flair"], "")
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    rows["label_off_grid"] = (good["t1"], good["flair"], write_nifti(data / "off_label.nii.gz", label, shifted))
    rows["NA"] = (good["t1"], good["flair"], "")
    manifest = write_manifest(tmp_path / "m.csv", [
        {"subject_id": name, "session_id": "1", "t1": t, "flair": f, "label": lab} for name, (t, f, lab) in rows.items()])
    out = tmp_path / "out"
    assert infer(infer_cfg(ckpt, manifest, out)) == 1
    vol = _table(out).set_index("subject_id")
    assert vol.loc["good", "warnings"] == "" and vol.loc["right_order", "warnings"] == ""
    expect_warning = {"partial_t1": "the T1 covers only 50% of the FLAIR's head",
                      "no_orientation": "qform and sform codes are both 0",
                      "thick": "voxels of 1 x 1 x 5 mm are far coarser than the working resolution (1 mm)",
                      "swapped": "check that the columns are not swapped",
                      "label_off_grid": "off_label.nii.gz: the label is not on the FLAIR grid"}
    for name, text in expect_warning.items():
        assert vol.loc[name, "status"] == "ok" and text in vol.loc[name, "warnings"], (name, vol.loc[name, "warnings"])
    assert float(vol.loc["label_off_grid", "wmh_mm3"]) == good["wmh_mm3"]  # the segmentation itself is kept
    met = pd.read_csv(out / "metrics.csv", dtype=IDS).set_index("subject_id")
    assert met.loc["good", "dice"] == 1.0 and np.isnan(met.loc["label_off_grid", "dice"])
    assert vol.loc["same_file", "status"] == "error" and "same file" in vol.loc["same_file", "error"]
    assert vol.loc["same_image", "status"] == "error" and "same image" in vol.loc["same_image", "error"]
    assert vol.loc["NA", "status"] == "error" and "reads as a missing value" in vol.loc["NA", "error"]
    ok = vol[vol["status"] == "ok"]
    assert ok["n_lesions"].str.fullmatch(r"\d+").all() and (vol.loc[vol["status"] == "error", "n_lesions"] == "").all()


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    out = np.eye(4)
    out[:3, :3] = [[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]]
    return out


@pytest.mark.parametrize(("t1_shape", "degrees"), [((70, 70, 60), 10.0), ((70, 70, 24), 10.0), ((40, 70, 60), -25.0)])
def test_t1_coverage_counts_the_head_voxels_inside_the_t1_grid(t1_shape, degrees):
    """Against every head voxel mapped to the T1's grid: the corner shortcut (whole head covered) and
    the voxel count (part of it) give the same fraction."""
    from wmhseg.input_checks import t1_coverage

    grid = np.indices((48, 56, 44)).reshape(3, -1).T.astype(float)
    head = (np.sum(((grid - [24, 28, 22]) / [18, 22, 17]) ** 2, axis=1) < 1).reshape(48, 56, 44)
    flair_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    flair_affine[:3, 3] = [-48, -56, -44]
    t1_affine = _rotation(degrees) @ np.diag([1.6, 1.6, 1.6, 1.0])
    t1_affine[:3, 3] = [-56, -56, -20 if t1_shape[2] < 30 else -48]
    vox = (np.argwhere(head) @ flair_affine[:3, :3].T + flair_affine[:3, 3] - t1_affine[:3, 3]) @ np.linalg.inv(
        t1_affine[:3, :3]).T
    want = np.mean(np.all((vox >= -0.5) & (vox <= np.asarray(t1_shape) - 0.5), axis=1))
    assert t1_coverage(head, flair_affine, t1_shape, t1_affine) == pytest.approx(want, abs=1e-12)
    assert (want == 1.0) == (t1_shape == (70, 70, 60))  # both paths are exercised


def test_central_rank_is_its_definition():
    from wmhseg.input_checks import central_rank

    rng = np.random.default_rng(0)
    image = rng.normal(size=(30, 34, 28)).astype(np.float32)
    foreground = np.zeros(image.shape, bool)
    foreground[4:27, 6:30, 3:22] = rng.random((23, 24, 19)) < 0.7
    idx = np.argwhere(foreground)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a + (b - a) // 3, b - (b - a) // 3) for a, b in zip(lo, hi, strict=True))
    want = np.mean(image[foreground] < np.percentile(image[box][foreground[box]], 75))
    assert central_rank(image, foreground) == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_gzipped_nifti_reads_as_nibabel_reads_it(tmp_path, dtype):
    """The fast gzip path (ISA-L, then nibabel from the bytes) gives nibabel's own array and affine:
    scaled integers (scl_slope / scl_inter), an oblique sform, a file of two gzip members; a cut
    file is a ScanError naming it."""
    import gzip

    import nibabel as nib

    from wmhseg.errors import ScanError
    from wmhseg.image_io import load_nifti

    rng = np.random.default_rng(1)
    data = (rng.normal(300, 80, (20, 22, 18))).astype(dtype)
    affine = _rotation(12.0) @ np.diag([0.9, 0.9, 3.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    if dtype is np.int16:
        img.header.set_slope_inter(0.25, 7.0)
    path = tmp_path / "a.nii.gz"
    nib.save(img, path)
    want = nib.load(path)
    got, got_affine = load_nifti(path)
    np.testing.assert_array_equal(got, np.asarray(want.dataobj, dtype=np.float32))
    np.testing.assert_array_equal(got_affine, want.affine)
    raw = gzip.decompress(path.read_bytes())
    two = tmp_path / "two_members.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(load_nifti(two)[0], got)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])
    with pytest.raises(ScanError, match="cut.nii.gz.*truncated or corrupt"):
        load_nifti(cut)
