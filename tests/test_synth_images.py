"""Synthetic T1/FLAIR/BISON-label generator: volumes, contrasts, geometry, determinism, files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from same_images import assert_same_sets

from wmhseg.errors import InputError
from wmhseg.synth.anatomy import Grid, Pose, ProceduralHead
from wmhseg.synth.images import generate_subject, write_dataset, write_scan
from wmhseg.synth.lesions import MIN_LESION_MM3


@pytest.mark.parametrize(("spacing", "volume"), [((1, 1, 1), 300.0), ((1, 1, 2), 555.0), ((0.8, 1.2, 1.5), 0.0)])
def test_requested_wmh_volume_is_met(spacing, volume) -> None:
    scan = generate_subject(shape=(40, 40, 32), spacing=spacing, seed=3, wmh_volume_mm3=volume)
    voxel = float(np.prod(spacing))
    measured = float((scan.label == 9).sum()) * voxel
    assert scan.wmh_mm3 == pytest.approx(measured)
    assert abs(measured - volume) <= voxel / 2 + 1e-6
    assert np.allclose(np.abs(np.diag(scan.affine))[:3], spacing)


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_heavy_loads_are_lesions_not_specks(seed) -> None:
    # 40 cm^3 at 2 mm: a cut this low meets the deep white matter, where the score is flat but for
    # its roughness; it once left up to 1300 specks of one or two voxels there
    from scipy import ndimage

    grid = dict(shape=(80, 96, 80), spacing=(2.0, 2.0, 2.0), subject_seed=seed)
    heavy = generate_subject(seed=seed, wmh_volume_mm3=40000.0, **grid)
    labels, n = ndimage.label(heavy.label == 9, np.ones((3, 3, 3)))
    sizes_mm3 = np.bincount(labels.ravel())[1:] * 8.0
    assert sizes_mm3.min() >= MIN_LESION_MM3, np.sort(sizes_mm3)[:5]
    assert n < 150  # confluent lesions
    assert abs(heavy.wmh_mm3 - 40000.0) <= 4.0  # still the volume asked for, to within half a voxel
    lighter = generate_subject(seed=seed + 100, wmh_volume_mm3=20000.0, **grid)
    assert np.all(heavy.label[lighter.label == 9] == 9)  # and nested


def test_label_classes_and_shapes() -> None:
    scan = generate_subject(shape=(48, 48, 48), seed=1, wmh_volume_mm3=500.0)
    assert scan.t1.shape == scan.flair.shape == scan.label.shape == (48, 48, 48)
    assert scan.t1.dtype == scan.flair.dtype == np.float32 and scan.label.dtype == np.uint8
    counts = np.bincount(scan.label.ravel(), minlength=10)
    assert counts.size == 10 and np.all(counts[1:] > 0), counts  # every BISON class present
    assert np.all(np.isfinite(scan.t1)) and scan.t1.min() >= 0 and scan.flair.min() >= 0


def test_wmh_contrast_is_not_a_single_channel_threshold() -> None:
    scan = generate_subject(shape=(64, 64, 64), seed=2, wmh_volume_mm3=2000.0, noise=0.0, bias_field=0.0)
    lab, t1, flair = scan.label, scan.t1, scan.flair
    wm_f, wmh_f = np.median(flair[lab == 8]), np.median(flair[lab == 9])
    assert wmh_f > 1.3 * wm_f  # bright on FLAIR
    assert np.median(t1[lab == 9]) < 0.95 * np.median(t1[lab == 8])  # darker on T1
    assert np.median(flair[lab == 7]) > wm_f  # cortex brighter than WM on FLAIR
    # some non-WMH voxels are as bright on FLAIR as the median lesion (CSF flow, bright cortex)
    look_alikes = (lab != 9) & (flair >= wmh_f)
    assert look_alikes.sum() > 0.1 * (lab == 9).sum()
    # periventricular: a good share of the lesion lies within 3 voxels of the ventricles
    from scipy import ndimage

    near = ndimage.distance_transform_edt(lab != 1) <= 3
    assert (near & (lab == 9)).sum() > 0.2 * (lab == 9).sum()


def test_seeds_are_deterministic_and_longitudinal_lesions_grow_in_place() -> None:
    a = generate_subject(seed=5, wmh_volume_mm3=200.0)
    b = generate_subject(seed=5, wmh_volume_mm3=200.0)
    c = generate_subject(seed=6, wmh_volume_mm3=200.0)
    assert np.array_equal(a.flair, b.flair) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.flair, c.flair)
    small = generate_subject(seed=10, subject_seed=77, wmh_volume_mm3=150.0)
    large = generate_subject(seed=11, subject_seed=77, wmh_volume_mm3=450.0)
    assert np.array_equal(small.label != 9, large.label != 9) is False
    assert np.all(large.label[small.label == 9] == 9)  # nested: every early lesion voxel is still WMH
    assert np.array_equal(np.where(small.label == 9, 8, small.label), np.where(large.label == 9, 8, large.label))


def test_orientation_and_origin_change_only_the_storage() -> None:
    ras = generate_subject(shape=(32, 36, 28), spacing=(1.0, 1.5, 2.0), seed=4, wmh_volume_mm3=200.0)
    lps = generate_subject(shape=(32, 36, 28), spacing=(1.0, 1.5, 2.0), seed=4, wmh_volume_mm3=200.0,
                           orientation="LPS")
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    canon = nib.as_closest_canonical(nib.Nifti1Image(lps.flair, lps.affine))
    assert np.allclose(canon.affine, ras.affine)
    assert np.array_equal(np.asarray(canon.dataobj), ras.flair)
    psr = generate_subject(shape=(32, 36, 28), seed=4, orientation="PSR", centre_mm=(10.0, -20.0, 30.0))
    assert nib.aff2axcodes(psr.affine) == ("P", "S", "R")
    centre_voxel = (np.asarray(psr.label.shape) - 1) / 2
    assert np.allclose(psr.affine[:3, :3] @ centre_voxel + psr.affine[:3, 3], (10.0, -20.0, 30.0))


def test_separate_t1_grid_covers_the_same_head() -> None:
    scan = generate_subject(shape=(32, 32, 16), spacing=(1.0, 1.0, 2.0), t1_spacing=(1.0, 1.0, 1.0), seed=1,
                            wmh_volume_mm3=200.0)
    assert scan.t1.shape == (32, 32, 32) and scan.flair.shape == (32, 32, 16)
    assert np.allclose(np.diag(scan.t1_affine)[:3], 1.0)
    centre = lambda shape, aff: aff[:3, :3] @ ((np.asarray(shape) - 1) / 2) + aff[:3, 3]  # noqa: E731
    assert np.allclose(centre(scan.t1.shape, scan.t1_affine), centre(scan.flair.shape, scan.affine))


def test_rotation_keeps_volume() -> None:
    scan = generate_subject(seed=8, rotation_deg=12.0, wmh_volume_mm3=250.0)
    assert scan.wmh_mm3 == pytest.approx(250.0, abs=1.0)


@pytest.mark.slow
def test_mni_anatomy_2mm() -> None:
    scan = generate_subject(anatomy="mni", spacing=(2.0, 2.0, 2.0), seed=1, wmh_volume_mm3=8000.0)
    assert scan.label.shape == (99, 117, 95)
    assert scan.wmh_mm3 == pytest.approx(8000.0, abs=8.0)
    vol = np.bincount(scan.label.ravel(), minlength=10) * 8.0 / 1000.0  # ml
    assert 400 < vol[8] + vol[9] < 900 and 500 < vol[7] < 1300 and 10 < vol[1] < 80  # WM, cortex, ventricles
    rotated = generate_subject(anatomy="mni", spacing=(2.0, 2.0, 2.0), seed=2, rotation_deg=5.0, wmh_volume_mm3=8000.0)
    assert rotated.wmh_mm3 == pytest.approx(8000.0, abs=8.0)


def test_procedural_hemispheres_split_above_the_corpus_callosum_and_join_below() -> None:
    """Real brains: a CSF fissure lined by medial cortex between the hemispheres above the corpus
    callosum, and white matter (the callosum) crossing the midline below it."""
    head = ProceduralHead(np.random.default_rng(4), (70.0, 85.0, 65.0))
    grid = Grid.centred((141, 171, 131), (1.0, 1.0, 1.0))  # voxel 70 lies on the midline x = 0
    codes, _, _ = head.sample(grid, Pose(np.eye(3), np.zeros(3)))
    brain = (codes >= 1) & (codes <= 8)
    z = grid.axes()[2][None, :] / 65.0  # height in units of the head's z radius
    mid, medial = codes[70], codes[70 + int(np.ceil(head.fissure_mm)) + 1]
    upper = brain[70] & (z > 0.5)
    assert upper.sum() > 500 and (mid[upper] == 2).all()  # the fissure reaches down to there
    beside = brain[70 + int(np.ceil(head.fissure_mm)) + 1] & (z > 0.5)
    assert np.isin(medial[beside], (2, 7)).mean() > 0.9  # medial cortex (and its sulci), no white matter
    callosum = (mid == 8) & (z > 0) & (z < 0.45)
    assert callosum.sum() > 100  # white matter crossing the midline above the ventricles


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="anatomy='brain' is not one of"):
        generate_subject(anatomy="brain")
    with pytest.raises(InputError, match="more than 60% of the white matter"):
        generate_subject(wmh_volume_mm3=1e6)
    with pytest.raises(InputError, match="wmh_volume_mm3=-1"):
        generate_subject(wmh_volume_mm3=-1.0)
    with pytest.raises(InputError, match="orientation='XYZ'"):
        generate_subject(orientation="XYZ")
    with pytest.raises(InputError, match="subject_id"):
        write_scan("/tmp", "../evil", "01", 10.0)


def test_write_dataset_does_not_depend_on_the_worker_count(tmp_path: Path) -> None:
    kw = dict(n_subjects=3, n_sessions=2, shape=(32, 32, 32), seed=4, wmh_volume_mm3=(100.0, 900.0))
    assert_same_sets(write_dataset(tmp_path / "one", workers=1, **kw), write_dataset(tmp_path / "two", workers=2, **kw))


def test_write_dataset_manifest_and_files(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "d", n_subjects=3, n_sessions=2, shape=(32, 32, 32), seed=1,
                             wmh_volume_mm3=200.0, growth_per_session=0.5)
    frame = pd.read_csv(manifest, dtype=str)
    assert list(frame.columns) == ["subject_id", "session_id", "t1", "flair", "label", "wmh_mm3"]
    assert frame.subject_id.tolist() == ["001", "001", "002", "002", "003", "003"]
    assert frame.session_id.tolist() == ["01", "02"] * 3
    for rec in frame.itertuples():
        assert not Path(rec.label).is_absolute()
        img = nib.load(manifest.parent / rec.label)
        measured = float((np.asarray(img.dataobj) == 9).sum()) * float(np.prod(img.header.get_zooms()[:3]))
        assert measured == pytest.approx(float(rec.wmh_mm3))
    assert frame.wmh_mm3.astype(float).tolist()[:2] == pytest.approx([200.0, 300.0], abs=1.0)
    stamp = manifest.stat().st_mtime_ns
    assert write_dataset(tmp_path / "d", n_subjects=3, n_sessions=2, shape=(32, 32, 32), seed=1,
                         wmh_volume_mm3=200.0, growth_per_session=0.5) == manifest
    assert manifest.stat().st_mtime_ns == stamp  # same arguments: reused, not rewritten
    write_dataset(tmp_path / "d", n_subjects=2, shape=(32, 32, 32), seed=1)
    assert len(pd.read_csv(manifest)) == 2
