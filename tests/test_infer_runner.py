"""infer(): native-grid masks and volume tables for a manifest in odd geometries, failures,
reruns, parts, metrics against the teacher, and the infer.py command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from inference_cases import (
    infer_cfg,
    make_checkpoint,
    phantom,
    reorient,
    write_case,
    write_manifest,
    write_nifti,
)

from wmhseg.errors import CheckpointError, InputError, ManifestError
from wmhseg.inference.runner import infer

REPO = Path(__file__).resolve().parents[1]
IDS = {"subject_id": str, "session_id": str}
EXACT = ("lps", "shifted", "oblique_psr", "t1_own_grid")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Scans in odd geometries plus broken ones; returns (ckpt, manifest, cases)."""
    root = tmp_path_factory.mktemp("cohort")
    ckpt = make_checkpoint(root / "threshold.ckpt")
    geometries = {
        "lps": dict(codes="LPS"),
        "shifted": dict(origin=(112.37, -40.2, 3.3)),
        "anisotropic": dict(spacing=(0.9, 0.9, 3.0), codes="LPI"),
        "oblique_psr": dict(codes="PSR", rotation_deg=15.0),
        "t1_own_grid": dict(t1_grid={"spacing": (1.2, 1.2, 1.2), "origin": (-21.0, -23.0, -19.0)}),
    }
    cases = {name: write_case(root / "data", name, **kw) for name, kw in geometries.items()}
    rows = [{"subject_id": f"00{i}", "session_id": "01", **{k: c[k] for k in ("t1", "flair", "label")}}
            for i, c in enumerate(cases.values())]
    good = cases["lps"]
    truncated = root / "data" / "truncated_FLAIR.nii.gz"
    blob = good["flair"].read_bytes()
    truncated.write_bytes(blob[: len(blob) // 3])
    rows.append({"subject_id": "010", "session_id": "01", "t1": good["t1"], "flair": truncated, "label": good["label"]})
    t1, flair, _ = phantom()
    flair[0, 0, :3] = np.nan  # repairable: a few NaN voxels outside the head
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nan_path = write_nifti(root / "data" / "nan_FLAIR.nii.gz", flair, affine)
    t1_path = write_nifti(root / "data" / "nan_T1w.nii.gz", t1, affine)
    rows.append({"subject_id": "011", "session_id": "01", "t1": t1_path, "flair": nan_path, "label": ""})
    slice2d = write_nifti(root / "data" / "slice_FLAIR.nii.gz", flair[:, :, 10], affine)
    rows.append({"subject_id": "012", "session_id": "01", "t1": t1_path, "flair": slice2d, "label": ""})
    far = np.diag([1.0, 1.0, 1.0, 1.0])
    far[:3, 3] = [500.0, 0.0, 0.0]
    far_t1 = write_nifti(root / "data" / "far_T1w.nii.gz", t1, far)
    rows.append({"subject_id": "013", "session_id": "01", "t1": far_t1, "flair": nan_path, "label": ""})
    rows.append({"subject_id": "../escape", "session_id": "01", "t1": t1_path, "flair": nan_path, "label": ""})
    manifest = write_manifest(root / "manifest.csv", rows)
    return ckpt, manifest, cases


@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory):
    ckpt, manifest, cases = cohort
    out = tmp_path_factory.mktemp("run") / "out"
    code = infer(infer_cfg(ckpt, manifest, out, num_workers=1))
    return code, out


def test_masks_are_on_each_native_grid_with_the_known_volume(cohort, first_run):
    _, _, cases = cohort
    code, out = first_run
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False, na_values=[""])
    assert code == 1
    assert vol["subject_id"].tolist()[:5] == ["000", "001", "002", "003", "004"]
    for (name, case), row in zip(cases.items(), vol.itertuples(), strict=False):
        assert row.status == "ok", row.error
        img = nib.load(out / row.mask)
        flair = nib.load(case["flair"])
        assert img.shape == flair.shape
        np.testing.assert_array_equal(img.affine, flair.affine)
        mask = np.asarray(img.dataobj) > 0
        voxel = abs(np.linalg.det(flair.affine[:3, :3]))
        assert row.wmh_mm3 == pytest.approx(mask.sum() * voxel)
        if name in EXACT:
            np.testing.assert_array_equal(mask, nib.load(case["label"]).get_fdata() == 9)
            assert row.wmh_mm3 == pytest.approx(case["wmh_mm3"], rel=1e-6)
            assert row.n_lesions == 2
        else:  # 3 mm slices: two interpolations blur the small lesion
            assert row.wmh_mm3 == pytest.approx(case["wmh_mm3"], rel=0.3)
        assert row.model_id and row.t_predict_s > 0 and "not available" in row.pv_rule


def test_failures_are_reported_per_scan(first_run):
    _, out = first_run
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False).set_index("subject_id")
    assert vol.loc["010", "status"] == "error"
    assert "truncated_FLAIR.nii.gz" in vol.loc["010", "error"] and "truncated" in vol.loc["010", "error"]
    assert vol.loc["012", "status"] == "error" and "slice_FLAIR.nii.gz" in vol.loc["012", "error"]
    assert vol.loc["011", "status"] == "ok" and "3 NaN" in vol.loc["011", "warnings"]
    assert vol.loc["013", "status"] == "error" and "far_T1w.nii.gz" in vol.loc["013", "error"]
    assert "cannot be matched" in vol.loc["013", "error"]
    assert vol.loc["../escape", "status"] == "error" and "file name" in vol.loc["../escape", "error"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "000_01_wmh.nii.gz", "001_01_wmh.nii.gz", "002_01_wmh.nii.gz", "003_01_wmh.nii.gz", "004_01_wmh.nii.gz",
        "011_01_wmh.nii.gz"]
    assert not (out.parent / "escape_01_wmh.nii.gz").exists() and not list(out.parent.glob("escape*"))
    assert not list(out.rglob(".*.nii.gz")) and not list(out.rglob("*.tmp"))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["checkpoint"]["sha256_16"] == vol["model_id"].iloc[0]
    assert prov["versions"]["torch"] and prov["predictor"]["precision"] == "fp32"
    assert (out / "training_config.yaml").is_file()


def test_metrics_and_agreement_are_written(first_run):
    _, out = first_run
    met = pd.read_csv(out / "metrics.csv", dtype=IDS)
    assert met["subject_id"].tolist() == ["000", "001", "002", "003", "004", "010"]
    ok = met[met.subject_id.isin(["000", "001", "003", "004"])]
    assert (ok["dice"] == 1.0).all() and (ok["lesion_f1"] == 1.0).all() and (ok["ref_n_lesions"] == 2).all()
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["n"] == 5 and agreement["icc_a1"] > 0.5
    assert (out / "bland_altman.png").is_file()


def _cells(path: Path) -> pd.DataFrame:
    """A table's cells as written (strings), its seconds left out (they differ between any two runs)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table[[c for c in table.columns if not (c.startswith("t_") and c.endswith("_s"))]]


def test_the_background_writer_changes_no_output_byte(cohort, first_run, tmp_path):
    """Finishing scan i in the background while scan i+1 is predicted writes the masks, tables and
    agreement of finishing each scan before the next (the seconds aside)."""
    ckpt, manifest, _ = cohort
    code, out = first_run
    serial = tmp_path / "serial"
    assert infer(infer_cfg(ckpt, manifest, serial, num_workers=1, background_writer=False)) == code == 1
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert len(masks) == 6 and masks == sorted(p.name for p in (serial / "masks").iterdir())
    for name in masks:
        assert (out / "masks" / name).read_bytes() == (serial / "masks" / name).read_bytes(), name
    for table in ("volumes.csv", "metrics.csv"):
        pd.testing.assert_frame_equal(_cells(out / table), _cells(serial / table))
    assert (out / "agreement.json").read_bytes() == (serial / "agreement.json").read_bytes()
    pictures = sorted(p.name for p in (out / "qc").glob("*.png"))
    assert len(pictures) == 6 and pictures == sorted(p.name for p in (serial / "qc").glob("*.png"))


def test_metrics_against_hand_computed_dice_and_lesion_counts(tmp_path):
    ckpt = make_checkpoint(tmp_path / "threshold.ckpt")
    case = write_case(tmp_path / "data", "m", codes="RPI")
    t1, flair, label = phantom()
    label[label == 9] = 8
    label[24:28, 21:24, 17:20] = 9  # the near block (36 voxels), predicted
    label[28:31, 28:31, 26:29] = 9  # a 27-voxel lesion the FLAIR does not show: missed
    arr, aff = reorient(label, np.eye(4), "RPI")
    aff = nib.load(case["flair"]).affine
    write_nifti(case["label"], arr, aff)
    manifest = write_manifest(tmp_path / "m.csv", [{"subject_id": "7", "session_id": "a", "t1": case["t1"],
                                                    "flair": case["flair"], "label": case["label"]}])
    assert infer(infer_cfg(ckpt, manifest, tmp_path / "out")) == 0
    row = pd.read_csv(tmp_path / "out" / "metrics.csv").iloc[0]
    # predicted: near block 36 + far block 8 = 44 voxels; reference 36 + 27 = 63; overlap 36
    assert row["dice"] == pytest.approx(2 * 36 / (44 + 63))
    assert (row["n_lesions"], row["ref_n_lesions"]) == (2, 2)
    assert row["lesion_recall"] == pytest.approx(0.5) and row["lesion_f1"] == pytest.approx(0.5)
    assert row["avd"] == pytest.approx(100 * 19 / 63)


@pytest.mark.slow
def test_rerun_skips_and_overwrite_redoes(cohort, tmp_path, capsys):
    ckpt, manifest, _ = cohort
    out = tmp_path / "out"
    assert infer(infer_cfg(ckpt, manifest, out)) == 1
    mask = out / "masks" / "000_01_wmh.nii.gz"
    stamp = mask.stat().st_mtime_ns
    record = (out / "rows" / "000_01.json").read_text()
    capsys.readouterr()
    assert infer(infer_cfg(ckpt, manifest, out)) == 1  # the broken scans are retried and fail again
    summary = capsys.readouterr().out
    assert "6 skipped" in summary and "0 ok" in summary
    assert mask.stat().st_mtime_ns == stamp and (out / "rows" / "000_01.json").read_text() == record
    mask.unlink()  # a scan whose mask is gone is not done
    assert infer(infer_cfg(ckpt, manifest, out)) == 1
    assert "1 ok" in capsys.readouterr().out and mask.is_file()
    stamp = mask.stat().st_mtime_ns
    assert infer(infer_cfg(ckpt, manifest, out, overwrite=True)) == 1
    assert "6 ok" in capsys.readouterr().out and mask.stat().st_mtime_ns != stamp


def test_parts_give_the_single_process_table(cohort, first_run, tmp_path):
    ckpt, manifest, _ = cohort
    out = tmp_path / "parts"
    infer(infer_cfg(ckpt, manifest, out, num_parts=2, part_id=1))
    assert not (out / "volumes.csv").exists()  # waiting for part 0
    infer(infer_cfg(ckpt, manifest, out, num_parts=2, part_id=0))
    timing = [c for c in pd.read_csv(out / "volumes.csv").columns if c.startswith("t_")]
    parts = pd.read_csv(out / "volumes.csv", dtype=IDS).drop(columns=timing)
    single = pd.read_csv(first_run[1] / "volumes.csv", dtype=IDS).drop(columns=timing)
    pd.testing.assert_frame_equal(parts, single)
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), pd.read_csv(first_run[1] / "metrics.csv"))


def test_bison_checkpoint_splits_periventricular_and_deep(tmp_path):
    ckpt = make_checkpoint(tmp_path / "bison.ckpt", mode="bison")
    case = write_case(tmp_path / "data", "v", ventricles=True, codes="LPS")
    manifest = write_manifest(tmp_path / "m.csv", [{"subject_id": "1", "session_id": "1", "t1": case["t1"],
                                                    "flair": case["flair"], "label": case["label"]}])
    assert infer(infer_cfg(ckpt, manifest, tmp_path / "out", pv_distance_mm=10.0)) == 0
    row = pd.read_csv(tmp_path / "out" / "volumes.csv").iloc[0]
    # the near block starts 1 voxel beyond the ventricles' edge (periventricular), the far one ~14 mm away
    assert (row["wmh_periventricular_mm3"], row["wmh_deep_mm3"]) == (36.0, 8.0)
    assert "10 mm" in row["pv_rule"]
    _, _, label = phantom(ventricles=True)
    assert row["icv_mm3"] == float((label > 0).sum()) and row["brain_mm3"] == float((label > 1).sum())


def test_bad_checkpoint_or_manifest_stops_with_code_2(cohort, tmp_path):
    ckpt, manifest, _ = cohort
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        infer(infer_cfg(tmp_path / "bad.ckpt", manifest, tmp_path / "o1"))
    with pytest.raises(ManifestError, match="missing.csv"):
        infer(infer_cfg(ckpt, tmp_path / "missing.csv", tmp_path / "o2"))
    with pytest.raises(InputError, match="part_id=2"):
        infer(infer_cfg(ckpt, manifest, tmp_path / "o3", num_parts=2, part_id=2))
    with pytest.raises(InputError, match="out_dir is required"):
        infer({"ckpt_path": str(ckpt), "input": str(manifest), "out_dir": "???"})
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3"))


@pytest.mark.slow
def test_command_line(cohort, tmp_path):
    ckpt, manifest, _ = cohort
    out = tmp_path / "cli"
    cmd = [sys.executable, "infer.py", f"ckpt_path={ckpt}", f"input={manifest}", f"out_dir={out}",
           "progress=false", "num_workers=0", "inference.precision=fp32"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "6 ok, 4 failed" in proc.stdout
    assert (out / "volumes.csv").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert (out / "infer.log").is_file()


@pytest.mark.slow
def test_lightning_ddp_predict_gives_the_single_process_table(cohort, first_run, tmp_path):
    ckpt, manifest, _ = cohort
    out = tmp_path / "ddp"
    code = infer(infer_cfg(ckpt, manifest, out, strategy="ddp_spawn", accelerator="cpu", devices=2))
    assert code == 1
    timing = [c for c in pd.read_csv(out / "volumes.csv").columns if c.startswith("t_")]
    ddp = pd.read_csv(out / "volumes.csv", dtype=IDS).drop(columns=timing)
    single = pd.read_csv(first_run[1] / "volumes.csv", dtype=IDS).drop(columns=timing)
    pd.testing.assert_frame_equal(ddp, single)


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_prepared_stream_keeps_order_and_prepares_ahead_in_threads(num_workers):
    """Scans come back in manifest order whatever the number of preparing threads, no process is
    forked (a fork of a process holding OpenVINO's thread pool crashes), and at most
    ``num_workers + 1`` scans are prepared ahead of the one being predicted."""
    import threading
    import time

    from wmhseg.inference.pipeline import _prepared_stream

    started: list[int] = []
    threads: set[str] = set()

    class Slow:
        def __len__(self) -> int:
            return 7

        def __getitem__(self, i: int):
            started.append(i)
            threads.add(threading.current_thread().name)
            time.sleep(0.01 * (7 - i))  # later items finish first
            return i, None, None if i % 2 else f"scan {i} failed"

    seen = []
    for item in _prepared_stream(Slow(), num_workers):
        assert len(started) <= item[0] + 1 + max(num_workers, 0) + 1
        seen.append(item)
    assert [i for i, _, _ in seen] == list(range(7))
    assert [e for _, _, e in seen] == [None if i % 2 else f"scan {i} failed" for i in range(7)]
    if num_workers:
        assert threads and all(name.startswith("wmhseg-prepare") for name in threads)
