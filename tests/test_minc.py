"""MINC input: files written here (MINC2 with h5py, MINC1 with SciPy's netCDF writer) are read
like NIfTI everywhere, and infer() writes NIfTI masks on the MINC FLAIR's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_cases import infer_cfg, make_checkpoint, phantom, reorient

from wmhseg.errors import ScanError
from wmhseg.image_io import load_nifti, read_header
from wmhseg.inference.runner import infer
from wmhseg.manifest import check_scan, read_bids_folder
from wmhseg.synth.minc import write_minc1, write_minc2

IDS = {"subject_id": str, "session_id": str}
WRITERS = {"minc1": write_minc1, "minc2": write_minc2}


def _oblique_affine(rotation_deg: float = 0.0, spacing=(0.9, 1.1, 1.3)) -> tuple[np.ndarray, np.ndarray]:
    """A phantom's world affine: ``spacing`` mm, rotated about z, shifted."""
    a = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = [-17.0, 25.5, -9.25]
    return affine, rot


def _world_of(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Sorted world coordinates (mm, rounded to 1 um) of a mask's voxels: independent of storage order."""
    ijk = np.argwhere(mask)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return np.array(sorted(map(tuple, np.round(xyz, 3))))


def _write_case(folder, name, writer, codes, rotation_deg):
    t1, flair, label = phantom()
    affine, _ = _oblique_affine(rotation_deg, spacing=(1.0, 1.0, 1.0))  # the network's grid: no blurring
    paths = {}
    for kind, arr in (("t1", t1), ("flair", flair), ("label", label.astype(np.int16))):
        data, aff = reorient(arr, affine, codes)
        paths[kind] = writer(folder / f"{name}_{kind}.mnc", data, aff)
    truth = float((label == 9).sum()) * abs(np.linalg.det(affine[:3, :3]))
    return {**paths, "wmh_mm3": truth, "label_ras": label, "affine_ras": affine}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_minc_reads_with_the_world_geometry_it_was_written_with(tmp_path, fmt):
    _, _, label = phantom()
    affine, _ = _oblique_affine(rotation_deg=20.0)
    data, aff = reorient(label.astype(np.int16), affine, "PSR")
    path = WRITERS[fmt](tmp_path / "label.mnc", data, aff)
    shape, header_affine = read_header(path)
    read, read_affine = load_nifti(path)
    np.testing.assert_allclose(read_affine, header_affine)
    assert tuple(shape) == read.shape
    assert abs(np.linalg.det(read_affine[:3, :3])) == pytest.approx(0.9 * 1.1 * 1.3)
    for value in (8, 9):  # the same voxels sit at the same world positions as in the RAS original
        np.testing.assert_allclose(_world_of(read == value, read_affine), _world_of(label == value, affine), atol=2e-3)


def test_minc2_geometry_agrees_with_libminc_through_simpleitk(tmp_path):
    """SimpleITK reads MINC2 with libminc (not nibabel); it reports MINC's RAS world unchanged."""
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(0)
    data = rng.integers(0, 10, (6, 7, 8)).astype(np.int16)
    affine, _ = _oblique_affine(rotation_deg=10.0)
    affine[:3, :3] = affine[:3, :3][:, [2, 0, 1]] @ np.diag([1.0, -1.0, 1.0])  # permuted, one axis flipped
    path = write_minc2(tmp_path / "v.mnc", data, affine)
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    for ijk in np.ndindex(*data.shape):
        world = affine[:3, :3] @ np.asarray(ijk, float) + affine[:3, 3]
        index = img.TransformPhysicalPointToIndex(tuple(world))
        assert arr[index[::-1]] == data[ijk]


def test_bids_folder_and_checks_accept_minc(tmp_path):
    anat = tmp_path / "bids" / "sub-01" / "ses-02" / "anat"
    anat.mkdir(parents=True)
    case = _write_case(anat, "sub-01_ses-02", write_minc2, "LPS", 0.0)
    for kind, suffix in (("t1", "T1w"), ("flair", "FLAIR"), ("label", "label")):
        case[kind].rename(anat / f"sub-01_ses-02_{suffix}.mnc")
    (scan,) = read_bids_folder(tmp_path / "bids")
    assert (scan.subject_id, scan.session_id, scan.flair.name) == ("01", "02", "sub-01_ses-02_FLAIR.mnc")
    check_scan(scan, read_data=True)
    scan.flair.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature and nothing else
    with pytest.raises(ScanError, match=r"FLAIR\.mnc: not a readable MINC file"):
        check_scan(scan)


@pytest.fixture(scope="module")
def minc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("minc")
    ckpt = make_checkpoint(root / "threshold.ckpt")
    cases = {"minc1_lps": _write_case(root, "a", write_minc1, "LPS", 0.0),
             "minc2_psr_oblique": _write_case(root, "b", write_minc2, "PSR", 15.0),
             "minc2_ras": _write_case(root, "c", write_minc2, "RAS", 0.0)}
    rows = [{"subject_id": name, "session_id": "1", **{k: str(c[k]) for k in ("t1", "flair", "label")}}
            for name, c in cases.items()]
    broken = root / "broken_flair.mnc"
    broken.write_bytes(cases["minc2_ras"]["flair"].read_bytes()[:300])
    rows.append({"subject_id": "broken", "session_id": "1", "t1": str(cases["minc2_ras"]["t1"]),
                 "flair": str(broken), "label": ""})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = root / "out"
    code = infer(infer_cfg(ckpt, manifest, out, register_t1="auto"))  # the run's choice over the checkpoint's
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False, na_values=[""])
    return code, out, cases, vol


def test_infer_on_minc_writes_nifti_masks_on_the_minc_flair_grid(minc_run):
    code, out, cases, vol = minc_run
    assert code == 1  # the broken row
    for name, case in cases.items():
        row = vol.set_index("subject_id").loc[name]
        assert row.status == "ok", row.error
        mask_img = nib.load(out / row["mask"])
        flair = nib.load(case["flair"])
        assert isinstance(mask_img, nib.Nifti1Image) and str(row["mask"]).endswith(".nii.gz")
        assert mask_img.shape == flair.shape
        np.testing.assert_allclose(mask_img.affine, flair.affine, atol=1e-5)
        mask = np.asarray(mask_img.dataobj) > 0
        np.testing.assert_array_equal(mask, np.asarray(nib.load(case["label"]).dataobj) == 9)
        np.testing.assert_allclose(_world_of(mask, mask_img.affine),
                                   _world_of(case["label_ras"] == 9, case["affine_ras"]), atol=2e-3)
        assert row.wmh_mm3 == pytest.approx(case["wmh_mm3"], rel=1e-6)
        # T1 and FLAIR share one grid: the alignment check finds nothing to correct
        assert row.t1_registration == "checked" and row.t1_shift_mm < 1.0, row.t1_shift_mm
        assert row.t1_align_mi_after == row.t1_align_mi_before and row.t_register_s > 0


def test_an_unreadable_minc_file_fails_its_row_only(minc_run):
    _, _, _, vol = minc_run
    row = vol.set_index("subject_id").loc["broken"]
    assert row.status == "error"
    assert "broken_flair.mnc" in row.error and "MINC" in row.error
