"""T1-to-FLAIR alignment: a T1 moved by a known rigid transform is registered back; an aligned
T1 is left alone under ``auto``; failures name the file; the step runs inside the preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.errors import InputError, ScanError
from wmhseg.inference.loading import prepare_scan
from wmhseg.registration import align_t1
from wmhseg.synth.anatomy import rotation_matrix
from wmhseg.synth.images import generate_subject

pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def subject():
    """A brain-like MNI-based scan at 3 mm (T1 and FLAIR on one grid) and its head voxels (RAS mm)."""
    scan = generate_subject(shape=(32, 32, 32), spacing=(3.0, 3.0, 3.0), seed=3, anatomy="mni")
    head = np.argwhere(scan.label > 0)
    return scan, head @ scan.affine[:3, :3].T + scan.affine[:3, 3]


def _motion(scan, degrees: float, shift_mm: float) -> np.ndarray:
    """World motion of the head between FLAIR and T1: ``degrees`` about the x axis through the
    grid centre, then ``shift_mm`` along x."""
    centre = scan.affine[:3, :3] @ ((np.asarray(scan.flair.shape) - 1) / 2) + scan.affine[:3, 3]
    m = np.eye(4)
    m[:3, :3] = rotation_matrix([degrees, 0.0, 0.0])
    m[:3, 3] = centre - m[:3, :3] @ centre + [shift_mm, 0.0, 0.0]
    return m


def _residual_mm(correction: np.ndarray, motion: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance between where the correction and the true motion send each head point."""
    diff = points @ (correction[:3, :3] - motion[:3, :3]).T + (correction[:3, 3] - motion[:3, 3])
    return np.linalg.norm(diff, axis=1)


@pytest.mark.slow
def test_a_t1_rotated_5_degrees_and_shifted_4_mm_is_registered_back(subject):
    scan, points = subject
    motion = _motion(scan, 5.0, 4.0)
    moved_affine = motion @ scan.t1_affine  # the T1's voxels now sit 5 degrees / 4 mm away in the world
    before = _residual_mm(np.eye(4), motion, points)
    result = align_t1(scan.t1, moved_affine, scan.flair, scan.affine, mode="auto")
    residual = _residual_mm(result.correction, motion, points)
    print(f"head moved {before.mean():.2f} mm (max {before.max():.2f}); after registration residual "
          f"{residual.mean():.3f} mm (max {residual.max():.3f}); MI {result.score_before:.3f} -> "
          f"{result.score_after:.3f}; {result.seconds:.1f} s")
    assert before.mean() > 4.0
    assert result.registered and result.score_after > result.score_before
    assert residual.max() < 1.0
    assert result.shift_mm == pytest.approx(before.mean(), abs=1.0)
    np.testing.assert_allclose(result.t1_affine, np.linalg.inv(result.correction) @ moved_affine)
    record = result.record()
    assert record["t1_registration"] == "registered" and len(record["t1_transform"].split()) == 12


@pytest.mark.slow
def test_at_1_mm_too(subject):
    """At 1 mm the coarse levels run on images shrunk to 2 mm, then one level at full resolution:
    the central part of the 3 mm scan, interpolated to 1 mm, is registered back the same way."""
    from scipy.ndimage import zoom

    scan, _ = subject
    box = tuple(slice(n // 2 - 15, n // 2 + 15) for n in scan.flair.shape)
    t1, flair = (zoom(a[box], 3.0, order=1) for a in (scan.t1, scan.flair))
    affine = scan.affine @ np.diag([1 / 3, 1 / 3, 1 / 3, 1.0])
    affine[:3, 3] = scan.affine[:3, :3] @ [b.start for b in box] + scan.affine[:3, 3]
    centre = affine[:3, :3] @ ((np.asarray(flair.shape) - 1) / 2) + affine[:3, 3]
    motion = np.eye(4)
    motion[:3, :3] = rotation_matrix([5.0, 0.0, 0.0])
    motion[:3, 3] = centre - motion[:3, :3] @ centre + [4.0, 0.0, 0.0]
    head = np.argwhere(flair > 0.2 * np.percentile(flair, 99))[::50]
    points = head @ affine[:3, :3].T + affine[:3, 3]
    result = align_t1(t1, motion @ affine, flair, affine, mode="always")
    residual = _residual_mm(result.correction, motion, points)
    print(f"1 mm: residual {residual.mean():.3f} mm (max {residual.max():.3f}); {result.seconds:.1f} s")
    assert result.registered and residual.max() < 1.0


@pytest.mark.slow
def test_auto_leaves_an_aligned_t1_alone_and_never_does_nothing(subject):
    scan, _ = subject
    result = align_t1(scan.t1, scan.t1_affine, scan.flair, scan.affine, mode="auto")
    assert not result.registered and result.shift_mm < 1.0
    np.testing.assert_array_equal(result.t1_affine, scan.t1_affine)
    assert result.record()["t1_registration"] == "checked"
    assert align_t1(scan.t1, scan.t1_affine, scan.flair, scan.affine, mode="never").record()["t1_registration"] == "never"
    with pytest.raises(InputError, match="register_t1='sometimes'"):
        align_t1(scan.t1, scan.t1_affine, scan.flair, scan.affine, mode="sometimes")


@pytest.mark.slow
def test_a_registration_that_diverges_is_an_error(subject):
    scan, _ = subject
    moved = _motion(scan, 0.0, 4.0) @ scan.t1_affine
    with pytest.raises(ScanError, match="did not converge"):  # any real correction exceeds 0.5 mm here
        align_t1(scan.t1, moved, scan.flair, scan.affine, mode="always", max_shift_mm=0.5)


@pytest.mark.slow
def test_the_preprocessing_registers_and_reports_it(subject, tmp_path):
    """The same step inside prepare_scan (inference) and the training pipeline: the T1 channel of
    the moved scan matches the aligned one after registration."""
    import nibabel as nib

    scan, _ = subject
    moved_affine = _motion(scan, 5.0, 4.0) @ scan.t1_affine
    paths = {}
    for name, arr, aff in (("t1", scan.t1, scan.t1_affine), ("moved", scan.t1, moved_affine),
                           ("flair", scan.flair, scan.affine)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, aff), str(paths[name]))
    spec = PreprocessSpec(spacing=(3.0, 3.0, 3.0), normalisation="none")
    aligned = prepare_scan(paths["t1"], paths["flair"], spec)
    moved = prepare_scan(paths["moved"], paths["flair"], spec)
    fixed = prepare_scan(paths["moved"], paths["flair"], PreprocessSpec(**{**spec.to_dict(), "register_t1": "always"}))
    assert aligned.alignment == {} and fixed.alignment["t1_registration"] == "registered"
    t1 = [np.asarray(p.image[0]) for p in (aligned, moved, fixed)]
    head = np.asarray(aligned.image[1]) > 0.2 * float(np.percentile(np.asarray(aligned.image[1]), 99))
    err_moved = np.abs(t1[1] - t1[0])[head].mean()
    err_fixed = np.abs(t1[2] - t1[0])[head].mean()
    assert err_fixed < 0.25 * err_moved
