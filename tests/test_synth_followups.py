"""Realistic follow-ups: known head motion, a scanner change, and the true change of every lesion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wmhseg.changes import CHANGE_CODES, lesion_changes
from wmhseg.manifest import read_manifest
from wmhseg.synth.cohort import CohortParams
from wmhseg.synth.followups import FollowUps
from wmhseg.synth.study import write_study

FOLLOWUPS = FollowUps(rotation_deg=4.0, shift_mm=5.0, p_scanner_change=1.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    params = CohortParams(n_als=2, n_control=1, seed=5, visit_probabilities=(0.0, 0.0, 0.0, 1.0))
    write_study(out, params, anatomy="procedural", shape=(40, 48, 40), spacing=2.0, followups=FOLLOWUPS, workers=1)
    return out


def _read(path):
    return pd.read_csv(path, dtype={"subject_id": str, "session_id": str, "session_from": str, "session_to": str})


def test_motion_and_scanner_change_are_recorded_exactly(study):
    scans = read_manifest(study / "manifest.csv")
    acq = _read(study / "acquisitions.csv")
    assert len(acq) == len(scans) == 12
    baseline = {}
    for scan, row in zip(scans, acq.itertuples(index=False), strict=True):
        flair = nib.load(scan.flair)
        motion = np.eye(4)
        motion[:3] = np.array(row.world_from_reference.split(), float).reshape(3, 4)
        rotation = motion[:3, :3]
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) and np.linalg.det(rotation) == pytest.approx(1)
        angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
        assert angle <= np.sqrt(3) * FOLLOWUPS.rotation_deg + 1e-6
        assert np.all(np.abs(motion[:3, 3]) <= FOLLOWUPS.shift_mm)
        unmoved = np.linalg.inv(motion) @ flair.affine  # the grid in the subject's reference frame
        visit = int(row.session_id.split("-")[1])
        if visit == 1:
            assert np.allclose(motion, np.eye(4)) and row.scanner == "A"
            baseline[scan.subject_id] = unmoved
            continue
        # four visits: the scanner changes at visit 3 (n // 2 + 1), voxels 2.5 x 2 x 2.5 mm
        assert row.scanner == ("A" if visit == 2 else "B")
        if visit == 2:
            assert np.allclose(unmoved, baseline[scan.subject_id], atol=1e-4)
            continue
        sizes = np.linalg.norm(flair.affine[:3, :3], axis=0)
        assert sizes == pytest.approx([2.5, 2.0, 2.5])
        # same field of view, same centre in the reference frame: the head did not change size
        ref = baseline[scan.subject_id]
        centre = lambda aff, shape: aff[:3, :3] @ ((np.asarray(shape) - 1) / 2) + aff[:3, 3]  # noqa: E731
        assert centre(unmoved, flair.shape) == pytest.approx(centre(ref, (40, 48, 40)), abs=1e-3)
        for path in (scan.t1, scan.label):
            assert np.allclose(nib.load(path).affine, flair.affine, atol=1e-4), "one motion per visit, all its images"


def test_true_lesion_changes_match_the_painted_labels(study):
    """Visits 1 and 2 (scanner A) share a voxel grid once the known motion is undone, so their
    true change map is recomputed from the label files alone; every pair's lesions add up to the
    later visit's painted volume (on the 2 mm reference grid, within a voxel)."""
    scans = read_manifest(study / "manifest.csv")
    changes = _read(study / "lesion_changes.csv")
    true = _read(study / "true_volumes.csv").set_index(["subject_id", "session_id"])["wmh_mm3"]
    assert set(changes["change"]) <= set(CHANGE_CODES) and "new" in set(changes["change"])
    by_subject: dict[str, list] = {}
    for scan in scans:
        by_subject.setdefault(scan.subject_id, []).append(scan)
    for sid, visits in by_subject.items():
        a, b = visits[0], visits[1]
        before = np.asarray(nib.load(a.label).dataobj) == 9
        after = np.asarray(nib.load(b.label).dataobj) == 9
        expected, _ = lesion_changes(before, after, voxel_mm3=8.0)
        truth = nib.load(study / "truth" / sid / f"{a.session_id}_to_{b.session_id}_changes.nii.gz")
        assert np.array_equal(np.asarray(truth.dataobj), expected)
        assert np.allclose(truth.affine, nib.load(a.label).affine, atol=1e-4), "the reference grid is the baseline's"
        for later in visits[1:]:
            table = changes[(changes.subject_id == sid) & (changes.session_to == later.session_id)]
            assert table["after_mm3"].sum() == pytest.approx(true[(sid, later.session_id)], abs=8.0)


def test_visits_on_one_scanner_share_its_protocol():
    """A subject's sessions on one scanner share tissue and lesion contrasts (only the session's
    jitter, bias, look-alikes and noise change); another protocol draws other contrasts."""
    from wmhseg.synth.images import generate_subject

    common = dict(shape=(40, 48, 40), spacing=(2.0, 2.0, 2.0), subject_seed=7, wmh_volume_mm3=4000.0,
                  noise=0.0, bias_field=0.0)

    def levels(seed, protocol, jitter=0.0):
        scan = generate_subject(seed=seed, protocol_seed=protocol, session_jitter=jitter, **common)
        wm = np.median(scan.flair[scan.label == 8])
        return np.array([np.median(scan.flair[scan.label == 9]) / wm, np.median(scan.t1[scan.label == 8]),
                         np.median(scan.t1[scan.label == 6]) / np.median(scan.t1[scan.label == 8])])

    first, second, other = levels(1, 10), levels(2, 10), levels(3, 11)
    # (the session's look-alikes reach a few lesion voxels through the partial-volume blur)
    np.testing.assert_allclose(second, first, rtol=1e-3)
    assert np.max(np.abs(other / first - 1)) > 0.05
    # with a session jitter of 3 %, a tissue ratio moves by at most about 6 %, a level by 3 %
    jittered = levels(2, 10, jitter=0.03)
    np.testing.assert_allclose(jittered, first, rtol=0.065)
    # without a protocol seed every scan draws its own contrasts, as a cross-sectional cohort's scans do
    assert np.max(np.abs(levels(2, None) / levels(1, None) - 1)) > 0.05
    with pytest.raises(Exception, match="session_jitter"):
        generate_subject(seed=1, session_jitter=0.9, **common)
