"""Deterministic preprocessing: geometry through affines, resampling, cropping, normalisation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from wmhseg.data.preprocessing import PreprocessSpec, crop_head, head_bbox, head_mask, preprocess_transforms
from wmhseg.errors import InputError, ScanError
from wmhseg.manifest import read_manifest

HEAD_C, HEAD_R = np.array([25.0, -30.0, 20.0]), np.array([20.0, 16.0, 24.0])
CUBE_C, CUBE_HALF = np.array([31.0, -26.0, 14.0]), 4.0


def _render(shape, affine) -> tuple[np.ndarray, np.ndarray]:
    """Head ellipsoid (100) with a bright cube (400) defined in world mm, sampled on a grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    head = (((world - HEAD_C) / HEAD_R) ** 2).sum(-1) < 1
    cube = np.abs(world - CUBE_C).max(-1) < CUBE_HALF
    img = np.where(head, 100.0, 0.0) + np.where(cube, 300.0, 0.0)
    label = np.where(cube, 9, np.where(head, 8, 0))
    return img.astype(np.float32), label.astype(np.uint8)


def _lps_affine(shape, spacing, first_voxel_world) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = first_voxel_world
    return aff


def _save(path: Path, data, affine) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def _world_centroid(mask: np.ndarray, affine) -> np.ndarray:
    ijk = np.argwhere(mask).mean(0)
    aff = np.asarray(affine, dtype=float)
    return aff[:3, :3] @ ijk + aff[:3, 3]


def test_world_geometry_is_preserved_from_lps_anisotropic_input(tmp_path: Path) -> None:
    # FLAIR + label: LPS, anisotropic voxels, origin far from zero.
    f_shape, f_spacing = (40, 44, 22), (1.2, 0.9, 2.5)
    f_aff = _lps_affine(f_shape, f_spacing, (52.0, -5.0, -10.0))
    flair, label = _render(f_shape, f_aff)
    # T1: RAS, 1 mm, another extent: resampled onto the FLAIR grid through the affines.
    t_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    t_aff[:3, 3] = (2.0, -52.0, -8.0)
    t1, _ = _render((50, 48, 56), t_aff)
    item = {"t1": _save(tmp_path / "t1.nii.gz", t1, t_aff), "flair": _save(tmp_path / "f.nii.gz", flair, f_aff),
            "label": _save(tmp_path / "l.nii.gz", label, f_aff)}
    out = preprocess_transforms(PreprocessSpec(spacing=(1.0, 1.0, 1.0)), with_label=True)(item)
    image, lab = out["image"], out["label"]
    aff = image.affine.numpy()
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    assert np.allclose(np.sqrt((aff[:3, :3] ** 2).sum(0)), 1.0)
    assert np.allclose(lab.affine.numpy(), aff) and lab.shape[1:] == image.shape[1:]
    # The cube's world centre as sampled on each native grid (independent of the pipeline).
    native = {0: _world_centroid(t1 > 200, t_aff), 1: _world_centroid(flair > 200, f_aff)}
    assert np.linalg.norm(native[0] - CUBE_C) < 0.6 and np.linalg.norm(native[1] - CUBE_C) < 1.3
    for channel in (0, 1):
        arr = image[channel].numpy()
        bright = arr > arr.min() + 0.6 * (arr.max() - arr.min())
        assert np.linalg.norm(_world_centroid(bright, aff) - native[1]) < 0.5, channel  # half a voxel
    assert np.linalg.norm(_world_centroid(lab[0].numpy() == 9, aff) - native[1]) < 0.5
    # the head (with its margin) is inside the cropped grid, and the grid is cropped
    head_box = np.abs(np.linalg.inv(aff)[:3, :3]) @ HEAD_R
    assert all(image.shape[1 + i] >= 2 * head_box[i] for i in range(3))
    assert image.shape[1] * image.shape[2] * image.shape[3] < 0.9 * 48 * 40 * 55


def test_resampling_to_spacing_is_linear_in_world(tmp_path: Path) -> None:
    shape, spacing = (24, 20, 12), (1.0, 1.0, 2.0)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-5.0, 3.0, 7.0)
    z = aff[2, 3] + spacing[2] * np.arange(shape[2])
    ramp = np.broadcast_to(10.0 + 3.0 * z, shape).astype(np.float32).copy()
    item = {"t1": _save(tmp_path / "t1.nii", ramp, aff), "flair": _save(tmp_path / "f.nii", ramp, aff)}
    spec = PreprocessSpec(spacing=(1.0, 1.0, 1.0), normalisation="none", crop_foreground=False)
    image = preprocess_transforms(spec, with_label=False)(item)["image"]
    out_aff = image.affine.numpy()
    assert np.allclose(out_aff[:3, :3], np.eye(3))
    assert np.allclose(out_aff[:3, 3], aff[:3, 3])  # first voxel centre kept
    assert image.shape[1:3] == (24, 20) and image.shape[3] in (23, 24)
    z_out = out_aff[2, 3] + np.arange(image.shape[3])
    inside = z_out <= z[-1]
    expected = 10.0 + 3.0 * z_out[inside]
    assert np.allclose(image[1, 5, 5, :].numpy()[inside], expected, atol=1e-3)


def test_zscore_inside_head_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    aff = np.eye(4)
    flair, _ = _render((32, 32, 32), aff @ np.diag([1, 1, 1, 1]) + np.array([[0, 0, 0, 9], [0, 0, 0, -46],
                                                                              [0, 0, 0, 4], [0, 0, 0, 0]]))
    flair = flair * rng.uniform(0.8, 1.2, flair.shape).astype(np.float32) + rng.uniform(0, 2, flair.shape).astype(np.float32)
    t1 = (1000.0 - flair * 2).astype(np.float32)
    item = {"t1": _save(tmp_path / "t1.nii", t1, aff), "flair": _save(tmp_path / "f.nii", flair, aff)}
    spec = PreprocessSpec(crop_foreground=False, clip_percentiles=(1.0, 99.0), head_threshold=0.05)
    image = preprocess_transforms(spec, with_label=False)(item)["image"].numpy()
    mask = flair > 0.05 * np.percentile(flair, 99)
    for c, raw in enumerate((t1, flair)):
        lo, hi = np.percentile(raw[mask], (1.0, 99.0))
        clipped = np.clip(raw, lo, hi)
        expected = (clipped - clipped[mask].mean()) / clipped[mask].std()
        assert np.allclose(image[c], expected, atol=1e-4)
        assert abs(image[c][mask].mean()) < 1e-4 and abs(image[c][mask].std() - 1) < 1e-4


def test_crop_keeps_head_bbox_plus_margin(tmp_path: Path) -> None:
    data = np.zeros((48, 48, 48), np.float32)
    data[10:30, 5:40, 12:20] = 50.0
    data[3, 45, 45] = 60.0  # one isolated noise voxel must not stretch the box
    aff = np.eye(4)
    item = {"t1": _save(tmp_path / "t1.nii", data, aff), "flair": _save(tmp_path / "f.nii", data, aff)}
    image = preprocess_transforms(PreprocessSpec(crop_margin=3, normalisation="none"), with_label=False)(item)["image"]
    assert tuple(image.shape[1:]) == (20 + 6, 35 + 6, 8 + 6)
    assert np.allclose(image.affine.numpy()[:3, 3], (10 - 3, 5 - 3, 12 - 3))
    assert float(image[1].max()) == 50.0


def _old_crop_box(flair: np.ndarray, voxel: np.ndarray, threshold: float, margin_mm: float) -> list[slice]:
    """The box the hand-written CropHeadd cut (before MONAI's CropForegroundd replaced it)."""
    box = head_bbox(head_mask(flair, threshold))
    margin = np.ceil(margin_mm / voxel - 1e-6).astype(int)
    return [slice(max(0, b0 - m), min(n, b1 + m)) for (b0, b1), m, n in zip(box, margin, flair.shape, strict=True)]


def test_crop_head_cuts_the_old_box_on_anisotropic_grids() -> None:
    rng = np.random.default_rng(3)
    flair = rng.uniform(0, 1, (40, 36, 20)).astype(np.float32)  # background noise below the threshold
    flair[2:30, 8:36, 1:12] += 80.0  # the head touches the upper y edge: the margin is clipped there
    flair[38, 0, 19] = 90.0  # a lone bright voxel must not stretch the box
    voxel = np.array([0.9, 0.9, 3.0])
    affine = torch.as_tensor(np.diag([*voxel, 1.0]))
    image = MetaTensor(torch.from_numpy(np.stack([flair * 2, flair])), affine=affine)
    label = MetaTensor(torch.from_numpy((flair > 40).astype(np.int16))[None], affine=affine)
    out = crop_head(["image", "label"], threshold=0.05, margin_mm=(4.0, 4.0, 4.0))({"image": image, "label": label})
    box = _old_crop_box(flair, voxel, 0.05, 4.0)
    assert box == [slice(0, 35), slice(3, 36), slice(0, 14)]  # margins of 5, 5 and 2 voxels
    assert torch.equal(out["image"].as_tensor(), image.as_tensor()[(slice(None), *box)])
    assert torch.equal(out["label"].as_tensor(), label.as_tensor()[(slice(None), *box)])
    assert np.allclose(out["image"].affine.numpy()[:3, 3], [0.0, 3 * 0.9, 0.0])
    assert set(out) == {"image", "label"}  # no foreground-coordinate keys added


def test_real_scan_label_values_and_nan_repair(tiny_dataset: Path, tmp_path: Path) -> None:
    scan = read_manifest(tiny_dataset)[0]
    img = nib.load(scan.flair)
    flair = np.asarray(img.dataobj, dtype=np.float32)
    flair[0, 0, 0] = np.nan
    item = {"t1": str(scan.t1), "flair": _save(tmp_path / "f.nii.gz", flair, img.affine), "label": str(scan.label)}
    out = preprocess_transforms(PreprocessSpec(), with_label=True)(item)
    assert torch.isfinite(out["image"]).all()
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int16
    raw = np.asarray(nib.load(scan.label).dataobj)
    assert set(out["label"].unique().tolist()) == set(np.unique(raw).tolist())
    assert int((out["label"] == 9).sum()) == int((raw == 9).sum())  # 1 mm -> 1 mm: nothing lost


def test_no_head_is_a_scan_error(tmp_path: Path) -> None:
    zeros = np.zeros((16, 16, 16), np.float32)
    item = {"t1": _save(tmp_path / "t1.nii", zeros, np.eye(4)), "flair": _save(tmp_path / "f.nii", zeros, np.eye(4))}
    with pytest.raises(ScanError, match="f.nii: no head found"):
        preprocess_transforms(PreprocessSpec(), with_label=False)(item)
    (tmp_path / "cut.nii.gz").write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(ScanError, match="cut.nii.gz: cannot read"):
        preprocess_transforms(PreprocessSpec(), with_label=False)({**item, "t1": str(tmp_path / "cut.nii.gz")})


def test_spec_round_trip_and_bad_values() -> None:
    spec = PreprocessSpec(spacing=(1.0, 1.0, 2.0), crop_margin=2)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InputError, match="preprocessing.spacing"):
        PreprocessSpec(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="unknown preprocessing setting 'spcing'; did you mean 'spacing'"):
        PreprocessSpec.from_dict({"spcing": [1, 1, 1]})
