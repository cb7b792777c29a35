"""Linear transforms to stereotaxic space: MINC .xfm, ITK and text matrices, and native volumes
in volumes.csv for scans that lie in stereotaxic space."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from inference_cases import infer_cfg, make_checkpoint, phantom, write_nifti

from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.errors import ScanError
from wmhseg.inference.runner import infer
from wmhseg.xfm import parse_minc_xfm, read_linear_transform, stereotaxic_scale

SCALE = np.diag([1.1, 1.2, 0.95, 1.0])  # native -> stereotaxic, |det| = 1.254


def _rigid(deg: float, shift) -> np.ndarray:
    a = np.deg2rad(deg)
    m = np.eye(4)
    m[:3, :3] = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    m[:3, 3] = shift
    return m


def _xfm_text(*parts: tuple[np.ndarray, bool]) -> str:
    """A MINC transform file holding linear transforms (matrix, inverted?) in order."""
    lines = ["MNI Transform File", "% written by the tests", ""]
    for matrix, inverted in parts:
        lines.append("Transform_Type = Linear;")
        if inverted:
            lines.append("Invert_Flag = True;")
        rows = [" ".join(f"{v:.10f}" for v in row) for row in matrix[:3]]
        lines.append("Linear_Transform =\n " + "\n ".join(rows) + ";")
    return "\n".join(lines) + "\n"


def test_minc_xfm_concatenation_and_inversion_follow_xfmconcat():
    rigid = _rigid(7.0, [3.0, -2.0, 10.0])
    matrix = parse_minc_xfm(_xfm_text((SCALE, False), (rigid, True)))
    np.testing.assert_allclose(matrix, np.linalg.inv(rigid) @ SCALE, atol=1e-9)  # first listed, first applied


def test_each_file_kind_gives_the_known_scale(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    m = _rigid(5.0, [1.0, 2.0, 3.0]) @ SCALE
    (tmp_path / "a.xfm").write_text(_xfm_text((m, False)))
    (tmp_path / "b.txt").write_text("\n".join(" ".join(str(v) for v in row) for row in m) + "\n")
    (tmp_path / "c.csv").write_text("# 3 x 4, commas\n" + "\n".join(",".join(str(v) for v in row) for row in m[:3]))
    # ITK: a registration of the scan (moving) to stereotaxic space (fixed) stores stx -> native, in LPS
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ np.linalg.inv(m) @ flip
    itk = sitk.AffineTransform(3)
    itk.SetMatrix(tuple(lps[:3, :3].ravel()))
    itk.SetTranslation(tuple(lps[:3, 3]))
    sitk.WriteTransform(itk, str(tmp_path / "d.txt"))
    sitk.WriteTransform(itk, str(tmp_path / "e.mat"))
    for name in ("a.xfm", "b.txt", "c.csv", "d.txt", "e.mat"):
        np.testing.assert_allclose(read_linear_transform(tmp_path / name), m, atol=1e-6, err_msg=name)
        assert stereotaxic_scale(tmp_path / name) == pytest.approx(1.1 * 1.2 * 0.95, rel=1e-6)


def test_non_linear_or_malformed_transforms_are_refused(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    grid = _xfm_text((SCALE, False)) + "Transform_Type = Grid_Transform;\nDisplacement_Volume = nl_grid_0.mnc;\n"
    (tmp_path / "nl.xfm").write_text(grid)
    with pytest.raises(ScanError, match=r"nl\.xfm: transform 2 is non-linear \(Grid_Transform\)"):
        read_linear_transform(tmp_path / "nl.xfm")
    sitk.WriteTransform(sitk.BSplineTransform(3), str(tmp_path / "bspline.txt"))
    with pytest.raises(ScanError, match="bspline.txt: the ITK transform .* is not linear"):
        read_linear_transform(tmp_path / "bspline.txt")
    (tmp_path / "shear.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0.5 0 1\n")
    with pytest.raises(ScanError, match="not an affine transform"):
        read_linear_transform(tmp_path / "shear.txt")
    (tmp_path / "flat.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 0 0\n")
    with pytest.raises(ScanError, match="singular"):
        read_linear_transform(tmp_path / "flat.txt")
    with pytest.raises(ScanError, match="transform file not found"):
        read_linear_transform(tmp_path / "missing.xfm")


def test_volumes_of_a_stereotaxic_scan_come_back_native(tmp_path):
    """The phantom in native space (1 mm) and the same phantom scaled into stereotaxic space by
    SCALE: wmh_mm3 of the stereotaxic scan is the native truth, wmh_stx_mm3 is truth x |det|."""
    t1, flair, label = phantom()
    truth = float((label == 9).sum())  # 1 mm^3 voxels
    stx_affine = SCALE.copy()
    stx_affine[:3, 3] = [-20.0, -22.0, -18.0]
    # the working grid equals the stereotaxic voxel grid, so no resampling blurs the known mask
    ckpt = make_checkpoint(tmp_path / "t.ckpt", spec=PreprocessSpec(spacing=(1.1, 1.2, 0.95),
                                                                    normalisation="none", crop_margin=2))
    files = {k: write_nifti(tmp_path / f"stx_{k}.nii.gz", a, stx_affine) for k, a in
             (("t1", t1), ("flair", flair))}
    (tmp_path / "to_stx.xfm").write_text(_xfm_text((SCALE, False)))
    (tmp_path / "nl.xfm").write_text("MNI Transform File\nTransform_Type = Grid_Transform;\n")
    rows = [{"subject_id": "stx", "session_id": "1", **files, "xfm": "to_stx.xfm"},
            {"subject_id": "plain", "session_id": "1", **files, "xfm": ""},
            {"subject_id": "nonlinear", "session_id": "1", **files, "xfm": "nl.xfm"}]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    assert infer(infer_cfg(ckpt, tmp_path / "manifest.csv", tmp_path / "out")) == 1
    vol = pd.read_csv(tmp_path / "out" / "volumes.csv", keep_default_na=False, na_values=[""]).set_index("subject_id")
    det = 1.1 * 1.2 * 0.95
    assert vol.loc["stx", "wmh_mm3"] == pytest.approx(truth, rel=1e-6)
    assert vol.loc["stx", "wmh_stx_mm3"] == pytest.approx(truth * det, rel=1e-6)
    assert vol.loc["stx", "stx_scale"] == pytest.approx(det, rel=1e-9)
    # without an xfm nothing changes: the volume is measured on the given grid
    assert vol.loc["plain", "wmh_mm3"] == pytest.approx(truth * det, rel=1e-6)
    assert np.isnan(vol.loc["plain", "wmh_stx_mm3"])
    assert vol.loc["nonlinear", "status"] == "error"
    assert "nl.xfm" in vol.loc["nonlinear", "error"] and "non-linear" in vol.loc["nonlinear", "error"]
