"""Native-grid resampling, mask writing, per-scan measures and volume agreement."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from wmhseg.inference.agreement import (
    bland_altman,
    bland_altman_figure,
    bland_altman_plot,
    icc,
    volume_agreement,
)
from wmhseg.inference.export import resample_to_grid, voxel_mapping, write_mask
from wmhseg.inference.measures import NO_PV_RULE, periventricular_split, tissue_volumes, wmh_measures


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def test_identity_grid_is_exact():
    data = torch.rand(2, 7, 8, 9)
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = [10.3, -4.2, 7.7]
    out = resample_to_grid(data, affine, (7, 8, 9), affine)
    assert torch.equal(out, data)


def test_reoriented_and_cropped_grid_is_copied_voxel_for_voxel():
    rng = np.random.default_rng(0)
    native_shape = (10, 12, 8)
    native = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS storage
    native[:3, 3] = [30.5, 12.25, -7.0]
    ras_values = rng.random(native_shape[::-1][::-1]).astype(np.float32)
    # working grid: the same voxels in RAS order, cropped by 2 voxels at the start of x
    lps_values = ras_values[::-1, ::-1, :]
    work_affine = native @ np.array([[-1, 0, 0, 9], [0, -1, 0, 11], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    work_affine = work_affine @ np.array([[1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    work = torch.from_numpy(np.ascontiguousarray(ras_values[2:]))[None]
    out = resample_to_grid(work, work_affine, native_shape, native)[0].numpy()
    expected = lps_values.copy()
    expected[-2:] = 0.0  # x = 8, 9 in LPS storage are RAS x = 1, 0: cropped away
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("spacing, deg", [((0.9, 0.9, 3.0), 0.0), ((1.0, 1.0, 1.0), 17.0), ((1.3, 0.7, 2.1), 8.0)])
def test_general_grid_matches_trilinear_reference(spacing, deg):
    rng = np.random.default_rng(1)
    src = ndimage.gaussian_filter(rng.random((20, 22, 18)), 2).astype(np.float32)
    src_affine = np.eye(4)
    src_affine[:3, 3] = [-10, -11, -9]
    dst_affine = np.eye(4)
    dst_affine[:3, :3] = _rotation(deg, deg / 2) @ np.diag(spacing)
    dst_affine[:3, 3] = [-8.3, -9.1, -6.6]
    dst_shape = (16, 17, 6)
    out = resample_to_grid(torch.from_numpy(src)[None], src_affine, dst_shape, dst_affine, footprint=False)[0].numpy()
    m = voxel_mapping(src_affine, dst_affine)
    idx = np.indices(dst_shape).reshape(3, -1)
    coords = m[:3, :3] @ idx + m[:3, 3:4]
    ref = ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0).reshape(dst_shape)
    inside = np.all((coords >= 0) & (coords <= np.array(src.shape)[:, None] - 1), axis=0).reshape(dst_shape)
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-4)
    assert inside.mean() > 0.5


def test_voxels_outside_the_working_grid_get_zero():
    src = torch.ones(1, 4, 4, 4)
    dst = np.eye(4)
    dst[:3, 3] = [-20.3, 0, 0]  # native grid mostly left of the working grid
    out = resample_to_grid(src, np.eye(4), (30, 4, 4), dst)
    assert float(out[0, :19].max()) == 0.0
    assert float(out[0, 21:24].min()) == pytest.approx(1.0)
    assert float(out[0, 25:].max()) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        resample_to_grid(torch.ones(1, 2, 2, 2), np.eye(4), (2, 2, 2), np.eye(4), mode="cubic")
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        resample_to_grid(torch.ones(2, 2, 2), np.eye(4), (2, 2, 2), np.eye(4))


def test_write_mask_keeps_the_reference_grid_exactly(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(11.0, -23.0) @ np.diag([0.9, 0.9, 3.0])
    affine[:3, 3] = [101.7, -3.3, 55.1]
    ref = nib.Nifti1Image(np.random.default_rng(0).random((9, 8, 7)).astype(np.float32), affine)
    ref.header.set_qform(affine, code=1)
    ref.header.set_sform(affine, code=4)
    nib.save(ref, tmp_path / "flair.nii.gz")
    ref = nib.load(tmp_path / "flair.nii.gz")
    mask = np.zeros((9, 8, 7), bool)
    mask[2:4, 1:3, 5] = True
    out = write_mask(mask, tmp_path / "flair.nii.gz", tmp_path / "masks" / "m_wmh.nii.gz")
    img = nib.load(out)
    assert img.shape == ref.shape
    np.testing.assert_array_equal(img.affine, ref.affine)
    np.testing.assert_array_equal(img.header.get_qform(), ref.header.get_qform())
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 4)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask.astype(np.uint8))
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["m_wmh.nii.gz"]  # no temporary left


def test_wmh_measures_known_volumes():
    mask = np.zeros((20, 20, 10), bool)
    mask[2:5, 2:5, 2:4] = True  # 18 voxels
    mask[10, 10, 5] = True
    mask[15:17, 15, 8] = True  # 2 voxels
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    prob = np.where(mask, 0.8, 0.1)
    r = wmh_measures(mask, affine, probability=prob)
    assert r["wmh_voxels"] == 21 and r["n_lesions"] == 3
    assert r["wmh_mm3"] == pytest.approx(21 * 0.9 * 0.9 * 3.0)
    assert r["mean_lesion_prob"] == pytest.approx(0.8)
    assert np.isnan(r["wmh_periventricular_mm3"]) and r["pv_rule"] == NO_PV_RULE
    assert (r["voxel_x_mm"], r["voxel_z_mm"]) == (pytest.approx(0.9), pytest.approx(3.0))
    empty = wmh_measures(np.zeros((4, 4, 4), bool), np.eye(4), probability=np.zeros((4, 4, 4)))
    assert empty["wmh_mm3"] == 0 and empty["n_lesions"] == 0 and np.isnan(empty["mean_lesion_prob"])


def test_periventricular_split_against_brute_force():
    rng = np.random.default_rng(3)
    vent = np.zeros((40, 40, 20), bool)
    vent[18:22, 15:25, 8:12] = True
    mask = (rng.random(vent.shape) > 0.97) & ~vent
    spacing = (1.0, 1.0, 2.0)
    n_pv, n_deep = periventricular_split(mask, vent, spacing, 10.0)
    vox = np.argwhere(vent) * spacing
    les = np.argwhere(mask) * spacing
    d = np.sqrt(((les[:, None, :] - vox[None]) ** 2).sum(-1)).min(1)
    assert (n_pv, n_deep) == (int((d <= 10).sum()), int((d > 10).sum()))
    assert n_pv > 0 and n_deep > 0
    assert periventricular_split(mask, np.zeros_like(vent), spacing) == (0, int(mask.sum()))


def test_tissue_volumes():
    classes = np.array([[0, 1, 2], [3, 8, 9]])
    assert tissue_volumes(classes, 0.5) == {"icv_mm3": 2.5, "brain_mm3": 1.5}


def test_icc_matches_shrout_fleiss_and_pingouin():
    x = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    r = icc(x)
    assert r["icc_a1"] == pytest.approx(0.2898, abs=1e-4)  # Shrout & Fleiss 1979: ICC(2,1) = 0.29
    assert r["icc_c1"] == pytest.approx(0.7148, abs=1e-4)  # ICC(3,1) = 0.71
    assert (round(r["icc_a1_ci_low"], 2), round(r["icc_a1_ci_high"], 2)) == (0.02, 0.76)  # pingouin ICC2 CI
    perfect = icc(np.column_stack([np.arange(5.0), np.arange(5.0)]))
    assert perfect["icc_a1"] == pytest.approx(1.0)
    offset = icc(np.column_stack([np.arange(5.0), np.arange(5.0) + 3]))
    assert offset["icc_c1"] == pytest.approx(1.0) and offset["icc_a1"] < 0.5
    assert np.isnan(icc(np.array([[1.0, 2.0]]))["icc_a1"])
    with pytest.raises(ValueError, match="ratings"):
        icc(np.arange(3.0))


def test_bland_altman_and_plot(tmp_path):
    m, r = np.array([110.0, 205.0, 290.0, np.nan]), np.array([100.0, 200.0, 300.0, 5.0])
    # the NaN pair is left out; differences 10, 5, -10: bias 5/3; deviations 25/3, 10/3, -35/3 ->
    # sample variance (625 + 100 + 1225) / 9 / 2 = 325/3, SD 10.4083; limits 5/3 -/+ 1.96 * 10.4083
    bias, half = 5 / 3, 1.96 * math.sqrt(325 / 3)
    ba = bland_altman(m, r)
    assert ba["n"] == 3 and ba["bias"] == pytest.approx(bias) and ba["sd_diff"] == pytest.approx(math.sqrt(325 / 3))
    assert (ba["loa_low"], ba["loa_high"]) == (pytest.approx(bias - half), pytest.approx(bias + half))
    assert (round(bias - half, 3), round(bias + half, 3)) == (-18.734, 22.067)
    # ICC(A,1) of rows (110, 100), (205, 200), (290, 300): MSR = 18054.17, MSC = 4.17, MSE = 54.17,
    # (MSR - MSE) / (MSR + MSE + 2 (MSC - MSE) / 3) = 18000 / 18075; ICC(C,1) = 18000 / 18108.33
    agreement = volume_agreement(m, r)
    assert agreement["n"] == 3 and agreement["icc_a1"] == pytest.approx(18000 / 18075)
    assert agreement["icc_c1"] == pytest.approx(18000 / (18054 + 1 / 6 + 54 + 1 / 6))
    # the figure: points at (mean, difference), lines at the bias and the limits above
    ax = bland_altman_figure(m, r, scale=1.0, unit="mm^3").axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[105, 10], [202.5, 5], [295, -10]])
    assert sorted(line.get_ydata()[0] for line in ax.lines) == pytest.approx([bias - half, bias, bias + half])
    texts = {t.get_text() for t in ax.texts}
    assert {"-1.96 SD: -18.7", "+1.96 SD: 22.1"} <= texts and ax.get_title().endswith("(n=3)")
    # one outlier among 20 (difference 100, bias 5, SD sqrt(500) = 22.4) lies beyond statsmodels'
    # y range (bias + 1.5 * 1.96 SD = 70.7); the range grows to show it
    outlier = bland_altman_figure(np.r_[np.zeros(19), 100.0], np.zeros(20), scale=1.0).axes[0]
    assert outlier.get_ylim()[1] > 100 and outlier.get_ylim()[0] == pytest.approx(5 - 1.5 * 1.96 * math.sqrt(500))
    png = bland_altman_plot(m, r, tmp_path / "bland_altman.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bland_altman.png"]  # no temporary left
    with pytest.raises(ValueError, match="at least 2"):
        bland_altman_plot(m[:1], r[:1], tmp_path / "one.png")


def test_write_mask_keeps_a_single_volume_4d_shape(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7, 1), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "f.nii")
    out = write_mask(np.ones((5, 6, 7), bool), tmp_path / "f.nii", tmp_path / "m.nii.gz")
    assert nib.load(out).shape == (5, 6, 7, 1)
