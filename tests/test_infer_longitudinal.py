"""longitudinal=true on phantoms with a known motion, a new lesion and another voxel size, using
the FLAIR-threshold network (its masks are exact, so every expected number is counted by hand)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_cases import infer_cfg, make_checkpoint, phantom, write_manifest, write_nifti

from wmhseg.changes import CHANGE_CODES
from wmhseg.errors import InputError
from wmhseg.inference.runner import infer
from wmhseg.synth.anatomy import rotation_matrix

IDS = {"subject_id": str, "session_id": str}
ORIGIN = np.array([-20.0, -22.0, -18.0])
NEW = (slice(28, 31), slice(30, 33), slice(8, 11))  # a 27-voxel lesion at visit 2 (the phantom's are 36 + 8)
SPECK = (slice(12, 14), slice(32, 34), slice(26, 28))  # 8 voxels, more than 2 voxels from every other lesion


def _motion(angles_deg, shift_mm) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles_deg)
    m[:3, 3] = shift_mm
    return m


def _visit(folder, name, motion, *, new=False, split_x=False, speck=False):
    t1, flair, label = phantom()
    if new:
        flair[NEW] = 300.0
        label[NEW] = 9
    if speck:  # an 8-voxel lesion at this visit alone
        flair[SPECK] = 300.0
        label[SPECK] = 9
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = ORIGIN
    if split_x:  # the same content on 0.5 mm voxels along x
        t1, flair, label = (np.repeat(a, 2, axis=0) for a in (t1, flair, label))
        affine[0, 0] = 0.5
        affine[0, 3] -= 0.25
    affine = motion @ affine
    return {"t1": write_nifti(folder / f"{name}_T1w.nii.gz", t1, affine),
            "flair": write_nifti(folder / f"{name}_FLAIR.nii.gz", flair, affine),
            "label": write_nifti(folder / f"{name}_label.nii.gz", label, affine)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("longitudinal")
    ckpt = make_checkpoint(root / "threshold.ckpt")
    moved = _motion((2.0, -1.5, 3.0), (2.5, -3.0, 1.5))
    rows = [
        {"subject_id": "001", "session_id": "01", **_visit(root, "a1", np.eye(4))},
        {"subject_id": "001", "session_id": "02", **_visit(root, "a2", moved, new=True)},
        {"subject_id": "001", "session_id": "03", **_visit(root, "a3", _motion((-2, 1, 0), (0, 2, -1)), new=True,
                                                          split_x=True)},
        {"subject_id": "002", "session_id": "01", **_visit(root, "b1", np.eye(4))},
        {"subject_id": "002", "session_id": "02", **_visit(root, "b2", _motion((0, 0, 0), (1000.0, 0, 0)))},
        {"subject_id": "003", "session_id": "01", **_visit(root, "c1", np.eye(4))},
    ]
    manifest = write_manifest(root / "manifest.csv", rows)
    times = root / "times.csv"
    pd.DataFrame({"subject_id": ["001", "001", "001", "002", "002", "003"],
                  "session_id": ["01", "02", "03", "01", "02", "01"],
                  "years_since_baseline": [0.0, 0.5, 1.25, 0.0, 1.0, 0.0]}).to_csv(times, index=False)
    out = root / "out"
    code = infer(infer_cfg(ckpt, manifest, out, longitudinal=True, visit_times=str(times)))
    return code, out, rows, moved


@pytest.mark.slow
def test_volumes_stay_exact_on_each_native_grid(run):
    code, out, rows, _ = run
    assert code == 0
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False)
    assert vol["longitudinal"].tolist() == [True, True, True, False, False, False]
    expected = [44.0, 71.0, 71.0, 44.0, 44.0, 44.0]  # voxels x voxel volume, counted on the phantoms
    assert vol["wmh_mm3"].tolist() == pytest.approx(expected)
    for row, case in zip(vol.itertuples(), rows, strict=True):
        mask = nib.load(out / row.mask)
        label = nib.load(case["label"])
        assert mask.shape == label.shape and np.allclose(mask.affine, label.affine)
        pred, true = np.asarray(mask.dataobj) > 0, np.asarray(label.dataobj) == 9
        if case is rows[2]:
            # 0.5 mm along x: a 1 mm working voxel decides two native ones, so the rims may move by half
            # a working voxel (independent segmentation of this scan: 130 of 142 voxels right, Dice 0.92)
            assert 2 * np.sum(pred & true) / (pred.sum() + true.sum()) > 0.85
        else:
            assert np.array_equal(pred, true)
    assert "not registered" in vol.loc[3, "warnings"] and "overlap" in vol.loc[4, "warnings"]


def test_registration_recovers_the_known_motion(run):
    _, out, _, moved = run
    summary = json.loads((out / "longitudinal" / "001" / "subject.json").read_text())
    found = np.vstack([np.array(summary["visit_from_base"][1]), [0, 0, 0, 1]])
    head = np.argwhere(phantom()[1] > 50)[::7] + ORIGIN
    pts = np.c_[head, np.ones(len(head))]
    error = np.linalg.norm((pts @ found.T - pts @ moved.T)[:, :3], axis=1)
    assert error.mean() < 0.5, f"mean registration error {error.mean():.2f} mm"


def test_change_maps_and_progression(run):
    _, out, rows, _ = run
    folder = out / "longitudinal" / "001"
    first = nib.load(folder / "01_to_02_changes.nii.gz")
    flair2 = nib.load(rows[1]["flair"])
    assert first.shape == flair2.shape and np.allclose(first.affine, flair2.affine)
    labels = np.asarray(first.dataobj)
    assert np.all(labels[NEW] == CHANGE_CODES["new"])
    assert np.count_nonzero(labels == CHANGE_CODES["new"]) == 27
    assert np.count_nonzero(labels == CHANGE_CODES["stable"]) == 44
    second = np.asarray(nib.load(folder / "02_to_03_changes.nii.gz").dataobj)
    assert second.shape == nib.load(rows[2]["flair"]).shape
    assert set(np.unique(second)) == {0, CHANGE_CODES["stable"]}, "same lesions on finer voxels: nothing changed"
    prog = pd.read_csv(out / "progression.csv", dtype={"subject_id": str}, keep_default_na=False)
    assert list(prog.columns) == ["subject_id", "n_visits", "years", "wmh_first_mm3", "wmh_last_mm3",
                                  "slope_mm3_per_year", "new_lesions", "new_lesion_mm3", "status", "error"]
    a, b, c = (prog.iloc[i] for i in range(3))
    slope = np.polyfit([0.0, 0.5, 1.25], [44.0, 71.0, 71.0], 1)[0]
    assert (a.n_visits, a.years, a.status, a.error) == (3, 1.25, "ok", "")
    assert float(a.slope_mm3_per_year) == pytest.approx(slope)
    assert (int(a.new_lesions), float(a.new_lesion_mm3)) == (1, 27.0)
    assert b.status == "independent" and "overlap" in b.error and float(b.slope_mm3_per_year) == pytest.approx(0.0, abs=1e-9)
    assert (c.n_visits, c.status, c.error) == (1, "independent", "one visit measured")
    assert not (out / "longitudinal" / "002" / "01_to_02_changes.nii.gz").exists()


def test_longitudinal_refuses_parts(tmp_path, run):
    _, _, rows, _ = run
    manifest = write_manifest(tmp_path / "m.csv", rows[:2])
    ckpt = make_checkpoint(tmp_path / "t.ckpt")
    with pytest.raises(InputError, match="longitudinal=true needs one process"):
        infer(infer_cfg(ckpt, manifest, tmp_path / "o", longitudinal=True, num_parts=2))


@pytest.mark.slow
def test_flips_and_a_strong_prior_keep_the_exact_volumes(run, tmp_path):
    """make demo's settings (left-right flips) and prior weights up to 0.75 on the same visits: the
    FLAIR-threshold network is mirror-symmetric, and a lesion seen at two of three visits stays
    below 0.5 at the third for any weight under 0.75, so the volumes stay exact."""
    rows = run[2]
    manifest = write_manifest(tmp_path / "m.csv", rows[:3])
    times = tmp_path / "times.csv"
    pd.DataFrame({"subject_id": ["001"] * 3, "session_id": ["01", "02", "03"],
                  "years_since_baseline": [0.0, 0.5, 1.25]}).to_csv(times, index=False)
    for weight in (0.0, 0.7):
        out = tmp_path / f"w{weight}"
        code = infer(infer_cfg(make_checkpoint(tmp_path / "t.ckpt"), manifest, out, longitudinal=True,
                               visit_times=str(times), longitudinal_options={"prior_weight": weight},
                               inference={"tta_flips": [[0]]}))
        assert code == 0
        vol = pd.read_csv(out / "volumes.csv", dtype=IDS)
        assert vol["wmh_mm3"].tolist() == pytest.approx([44.0, 71.0, 71.0])
        assert vol["longitudinal"].all()
        changes = np.asarray(nib.load(out / "longitudinal" / "001" / "01_to_02_changes.nii.gz").dataobj)
        assert np.count_nonzero(changes == CHANGE_CODES["new"]) == 27


@pytest.mark.slow
def test_confirm_drops_a_small_lesion_no_other_visit_shows(tmp_path):
    """confirm_mm3=50: the 8-voxel lesion seen at visit 1 alone goes; the phantom's own 8-voxel
    lesion (seen at every visit) and the 27-voxel new lesion (visits 2 and 3) stay."""
    rows = [{"subject_id": "001", "session_id": "01", **_visit(tmp_path, "s1", np.eye(4), speck=True)},
            {"subject_id": "001", "session_id": "02", **_visit(tmp_path, "s2", _motion((2.0, -1.5, 3.0), (2.5, -3.0, 1.5)),
                                                              new=True)},
            {"subject_id": "001", "session_id": "03", **_visit(tmp_path, "s3", _motion((-2, 1, 0), (0, 2, -1)), new=True)}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    ckpt = make_checkpoint(tmp_path / "t.ckpt")
    volumes = {}
    for confirm in (0.0, 50.0):
        out = tmp_path / f"c{confirm:g}"
        options = {"prior_weight": 0.0, "confirm_mm3": confirm}
        assert infer(infer_cfg(ckpt, manifest, out, longitudinal=True, longitudinal_options=options)) == 0
        volumes[confirm] = pd.read_csv(out / "volumes.csv", dtype=IDS)["wmh_mm3"].tolist()
    assert volumes[0.0] == pytest.approx([52.0, 71.0, 71.0])
    assert volumes[50.0] == pytest.approx([44.0, 71.0, 71.0])
    with pytest.raises(InputError, match="confirm_mm3"):
        infer(infer_cfg(ckpt, manifest, tmp_path / "bad", longitudinal=True, longitudinal_options={"confirm_mm3": -1}))


@pytest.mark.slow
def test_registration_cache_is_reused_and_checked(run, tmp_path, monkeypatch, caplog):
    """A second run with the cache registers nothing and measures the same; a tampered entry is
    refused with a warning and computed again; another image is another entry."""
    import wmhseg.inference.subject_space as subject_space

    rows = run[2][:3]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    ckpt = make_checkpoint(tmp_path / "t.ckpt")
    cache = tmp_path / "registrations"

    def segment(name):
        out = tmp_path / name
        options = {"prior_weight": 0.0, "registration_cache": str(cache)}
        assert infer(infer_cfg(ckpt, manifest, out, longitudinal=True, longitudinal_options=options)) == 0
        subject = json.loads((out / "longitudinal" / "001" / "subject.json").read_text())
        return pd.read_csv(out / "volumes.csv", dtype=IDS)["wmh_mm3"].tolist(), subject["visit_from_base"]

    first = segment("first")
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 2  # the two follow-ups of subject 001
    calls = []
    real = subject_space.register_visit
    monkeypatch.setattr(subject_space, "register_visit", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert segment("again") == first and calls == []
    entry = json.loads(entries[0].read_text())
    entry["visit_from_base"][0][0] = 2.0  # a scaling, not a rigid motion
    entries[0].write_text(json.dumps(entry))
    with caplog.at_level("WARNING", logger="wmhseg.infer"):
        assert segment("tampered") == first
    assert len(calls) == 1 and "not a rigid motion" in caplog.text and entries[0].name in caplog.text
    key = subject_space._cache_key
    base, visit = np.zeros((4, 4, 4), np.float32), np.ones((4, 4, 4), np.float32)
    assert key(base, np.eye(4), visit, np.eye(4), 40.0) != key(base, np.eye(4), visit * 2, np.eye(4), 40.0)
    assert key(base, np.eye(4), visit, np.eye(4), 40.0) != key(base, np.eye(4), visit, np.eye(4), 20.0)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    caplog.clear()
    with caplog.at_level("WARNING", logger="wmhseg.infer"):
        reg = subject_space.register_visit_cached(*_pair(), blocked)
    assert np.isfinite(reg.visit_from_base).all() and "cannot be written" in caplog.text


def _pair():
    """Two FLAIRs of the phantom, the second shifted by 2 mm (a registration that works)."""
    flair = phantom()[1].astype(np.float32)
    moved = np.eye(4)
    moved[:3, 3] = ORIGIN + np.array([2.0, 0.0, 0.0])
    base = np.eye(4)
    base[:3, 3] = ORIGIN
    return flair, base, flair, moved
