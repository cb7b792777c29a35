"""Scoring infer.py runs against a simulated study's truth: volume errors within subjects, and the
new lesions of change maps found through each visit's known head motion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wmhseg.manifest import read_manifest
from wmhseg.synth.__main__ import main
from wmhseg.synth.cohort import CohortParams
from wmhseg.synth.followups import FollowUps, read_motion
from wmhseg.synth.scoring import _pair_counts, new_lesion_detection, volume_errors
from wmhseg.synth.study import write_study

IDS = {"subject_id": str, "session_id": str, "session_from": str, "session_to": str}


def _tables(errors_by_subject: dict[str, list[float]]):
    rows, clinical = [], []
    for sid, errors in errors_by_subject.items():
        for k, err in enumerate(errors):
            true = 1000.0 + 300.0 * k
            rows.append({"subject_id": sid, "session_id": str(k), "wmh_mm3": true, "err": err})
            clinical.append({"subject_id": sid, "session_id": str(k), "group": "ALS", "years_since_baseline": float(k)})
    true = pd.DataFrame(rows)
    measured = true.assign(wmh_mm3=true["wmh_mm3"] + true["err"])
    return measured, true.drop(columns="err"), pd.DataFrame(clinical)


def test_volume_errors_known_answers():
    # a constant error per subject is not a within-subject error: SD 0, all the change, exact slopes
    measured, true, clinical = _tables({"a": [500.0] * 3, "b": [-200.0] * 4})
    exact = volume_errors(measured, true, clinical)
    assert exact["within_subject_sd_mm3"] == pytest.approx(0.0, abs=1e-9)
    assert exact["change_measured"] == pytest.approx(1.0)
    assert exact["slope_error_mean"] == pytest.approx(0.0, abs=1e-9)
    assert exact["mean_error_mm3"] == pytest.approx((3 * 500 - 4 * 200) / 7)
    # residuals around each subject's mean error: (+100, -100, 0) and (+50, -50, +50, -50), by hand
    measured, true, clinical = _tables({"a": [600.0, 400.0, 500.0], "b": [50.0, -50.0, 50.0, -50.0]})
    scored = volume_errors(measured, true, clinical)
    assert scored["within_subject_sd_mm3"] == pytest.approx(np.sqrt((2 * 100**2 + 4 * 50**2) / (7 - 2)))
    assert scored["n_subjects"] == 2 and scored["n_scans"] == 7
    # a subject seen once does not count; a missing volume is left out
    measured, true, clinical = _tables({"a": [10.0, 20.0], "c": [999.0]})
    measured.loc[len(measured)] = {"subject_id": "a", "session_id": "9", "wmh_mm3": np.nan, "err": 0.0}
    assert volume_errors(measured, true, clinical)["n_scans"] == 2


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("scored_study")
    params = CohortParams(n_als=2, n_control=1, seed=5, visit_probabilities=(0.0, 0.0, 0.0, 1.0))
    followups = FollowUps(rotation_deg=4.0, shift_mm=5.0, p_scanner_change=1.0)
    write_study(out, params, anatomy="procedural", shape=(40, 48, 40), spacing=2.0, followups=followups, workers=1)
    return out


def test_a_new_lesion_of_exactly_the_minimum_volume_counts(tmp_path):
    # five 2 mm voxels are 40 mm^3, though this rotated grid's affine, as stored (float32), gives
    # a voxel of 7.9999997 mm^3
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.array([[2 * c, -2 * s, 0, 0], [2 * s, 2 * c, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:7, 3, 3] = 1
    for name in ("truth", "measured"):
        nib.save(nib.Nifti1Image(truth, affine), tmp_path / f"{name}.nii.gz")
    stored = nib.load(tmp_path / "truth.nii.gz").affine
    assert abs(np.linalg.det(stored[:3, :3])) * 5 < 40.0  # the rounding this test is about
    counts = _pair_counts(tmp_path / "truth.nii.gz", tmp_path / "measured.nii.gz", np.eye(4), 40.0)
    assert counts == {"true": 1, "found": 1, "measured": 1, "right": 1}
    assert _pair_counts(tmp_path / "truth.nii.gz", tmp_path / "measured.nii.gz", np.eye(4), 40.5)["true"] == 0


def _measured_maps(study, run, extra_lesion: bool = False, empty: bool = False) -> int:
    """Write the true change maps' new lesions onto each later visit's own FLAIR grid (every true
    voxel sent to its nearest voxel through the known motion) as a run's change maps; with
    ``extra_lesion`` also a 2 x 2 x 2 ``new`` lesion at least 4 reference voxels from any true new
    lesion. Returns the number of extra lesions written."""
    flair = {(s.subject_id, s.session_id): nib.load(s.flair) for s in read_manifest(study / "manifest.csv")}
    acq = pd.read_csv(study / "acquisitions.csv", dtype=IDS).set_index(["subject_id", "session_id"])
    pairs = pd.read_csv(study / "lesion_changes.csv", dtype=IDS)[["subject_id", "session_from", "session_to"]]
    extras = 0
    for sid, a, b in pairs.drop_duplicates().itertuples(index=False):
        truth = nib.load(study / "truth" / sid / f"{a}_to_{b}_changes.nii.gz")
        grid = flair[(sid, b)]
        out = np.zeros(grid.shape, np.uint8)
        ref_to_visit = np.linalg.inv(grid.affine) @ read_motion(acq.loc[(sid, b), "world_from_reference"]) @ truth.affine
        new = np.argwhere(np.asarray(truth.dataobj) == 1)
        if len(new) and not empty:
            idx = np.rint(np.c_[new, np.ones(len(new))] @ ref_to_visit.T)[:, :3].astype(int)
            out[tuple(idx.T)] = 1
        if extra_lesion and not empty:
            visit_to_ref = np.linalg.inv(ref_to_visit)
            for corner in np.argwhere(np.ones(np.asarray(grid.shape) - 2, bool))[::97]:
                cube = corner + np.argwhere(np.ones((2, 2, 2), bool))
                ref = np.c_[cube, np.ones(8)] @ visit_to_ref.T
                far = len(new) == 0 or np.min(np.linalg.norm(ref[:, None, :3] - new[None], axis=2)) > 4
                lo, hi = np.maximum(corner - 1, 0), corner + 3  # and apart from the measured lesions
                if far and not out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].any():
                    out[tuple(cube.T)] = 1
                    extras += 1
                    break
        nib.save(nib.Nifti1Image(out, grid.affine), run / "longitudinal" / sid / f"{a}_to_{b}_changes.nii.gz")
    return extras


def _new_rows(study, min_mm3=0.0) -> int:
    changes = pd.read_csv(study / "lesion_changes.csv", dtype=IDS)
    return int(((changes["change"] == "new") & (changes["after_mm3"] >= min_mm3)).sum())


def test_new_lesions_moved_onto_each_visit_are_all_found(study, tmp_path):
    for sid in pd.read_csv(study / "lesion_changes.csv", dtype=IDS)["subject_id"].unique():
        (tmp_path / "longitudinal" / sid).mkdir(parents=True)
    _measured_maps(study, tmp_path)
    scored = new_lesion_detection(study, tmp_path)
    # the simulator's own lesion table counts the true new lesions: an independent tally
    assert scored["n_true"] == _new_rows(study) > 0
    assert scored["recall"] == 1.0 and scored["precision"] == 1.0
    assert scored["n_pairs"] == 9  # 3 subjects, 4 visits each
    big = new_lesion_detection(study, tmp_path, min_mm3=40.0)
    assert big["n_true"] == _new_rows(study, 40.0)

    extras = _measured_maps(study, tmp_path, extra_lesion=True)
    assert extras > 0
    with_false = new_lesion_detection(study, tmp_path)
    assert with_false["recall"] == 1.0
    assert with_false["n_measured"] == scored["n_measured"] + extras
    assert with_false["precision"] == pytest.approx(scored["n_right"] / (scored["n_measured"] + extras))

    _measured_maps(study, tmp_path, empty=True)
    nothing = new_lesion_detection(study, tmp_path)
    assert nothing["recall"] == 0.0 and np.isnan(nothing["precision"])


def test_score_command_on_the_truth_itself(study, tmp_path, capsys):
    run = tmp_path / "run"
    for sid in pd.read_csv(study / "lesion_changes.csv", dtype=IDS)["subject_id"].unique():
        (run / "longitudinal" / sid).mkdir(parents=True)
    _measured_maps(study, run)
    pd.read_csv(study / "true_volumes.csv", dtype=IDS).assign(status="ok").to_csv(run / "volumes.csv", index=False)
    assert main(["score", str(study), f"truth={run}"]) == 0
    table = capsys.readouterr().out.splitlines()
    values = table[1].split()  # run, within-subject SD, change measured, ..., new-lesion recall, precision
    assert values[0] == "truth" and float(values[1]) == 0 and float(values[2]) == 1.0
    assert float(values[5]) == 1.0 and float(values[6]) == 1.0

    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(study), f"missing={tmp_path / 'nowhere'}"])
    assert exit_info.value.code == 2
    assert "nowhere/volumes.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(study), str(run)])  # not NAME=DIR
    broken = next((run / "longitudinal").rglob("*_changes.nii.gz"))
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(study), f"truth={run}"])
    assert exit_info.value.code == 2 and f"{broken}: cannot read the change map" in capsys.readouterr().err
