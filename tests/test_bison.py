"""A BISON run written as BISON and PELICAN leave it (MINC images and labels, BISON's CSV, .xfm
files) -> a training manifest -> train.py experiment=smoke -> infer.py with native volumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wmhseg.bison.__main__ import main as bison_main
from wmhseg.bison.importer import id_regex
from wmhseg.errors import InputError
from wmhseg.manifest import read_manifest, validate_scans
from wmhseg.synth.bison_run import write_bison_run

ROOT = Path(__file__).resolve().parents[1]
IDS = {"subject_id": str, "session_id": str}


@pytest.fixture(scope="module")
def bison_run(tmp_path_factory):
    """3 subjects x 2 visits; one label deleted and one Subjects name that fits no pattern."""
    root = tmp_path_factory.mktemp("bison")
    paths = write_bison_run(root / "run", n_subjects=3, n_visits=2, shape=(32, 32, 32), seed=1)
    (paths["labels_dir"] / "RF0_S003_V2_Label.mnc").unlink()
    csv = pd.read_csv(paths["bison_csv"], dtype=str)
    odd = csv.iloc[[0]].assign(Subjects="nounderscore")
    pd.concat([csv, odd]).to_csv(paths["bison_csv"], index=False)
    out = root / "manifest.csv"
    code = bison_main(["manifest", "--bison-csv", str(paths["bison_csv"]), "--labels-dir", str(paths["labels_dir"]),
                       "--out", str(out), "--xfm-pattern", "scans/{Subjects}_t1_stx.xfm"])
    return code, out, paths, pd.read_csv(paths["truth"], dtype=str).set_index("Subjects")


def test_id_pattern_splits_subjects():
    assert id_regex("{subject}_{session}").fullmatch("ALS_012_V3").groupdict() == {"subject": "ALS_012", "session": "V3"}
    assert id_regex("{session}-{subject}").fullmatch("m12-007").groupdict() == {"subject": "007", "session": "m12"}
    assert id_regex("{subject}").fullmatch("007_V1").group("subject") == "007_V1"
    with pytest.raises(InputError, match="id_pattern"):
        id_regex("{visit}_{session}")


def test_bison_run_becomes_a_manifest_and_missing_rows_are_listed(bison_run):
    code, out, paths, truth = bison_run
    assert code == 1  # rows were left out
    manifest = pd.read_csv(out, dtype=str)
    assert manifest["bison_subject"].tolist() == ["S001_V1", "S001_V2", "S002_V1", "S002_V2", "S003_V1"]
    assert manifest[["subject_id", "session_id"]].iloc[3].tolist() == ["S002", "V2"]
    missing = pd.read_csv(out.with_name("manifest_missing.csv"), dtype=str).set_index("bison_subject")
    assert "RF0_S003_V2_Label.mnc" in missing.loc["S003_V2", "problem"]
    assert "does not fit id_pattern" in missing.loc["nounderscore", "problem"]
    scans = read_manifest(out)
    validate_scans(scans, require_label=True)  # every label now lies on its FLAIR's grid
    for scan, row in zip(scans, manifest.itertuples(), strict=True):
        assert scan.xfm is not None and scan.xfm.name == f"{row.bison_subject}_t1_stx.xfm"
        label = nib.load(scan.label)
        flair = nib.load(scan.flair)
        assert label.shape == flair.shape and np.allclose(label.affine, flair.affine, atol=1e-4)
        data = np.asarray(label.dataobj)
        original = nib.load(paths["labels_dir"] / f"RF0_{row.bison_subject}_Label.mnc")
        for value in (1, 8, 9):  # nearest neighbour kept every labelled voxel (the grids share voxel centres)
            assert (data == value).sum() == (np.asarray(original.dataobj) == value).sum()
        wmh_mm3 = (data == 9).sum() * abs(np.linalg.det(label.affine[:3, :3]))
        assert wmh_mm3 == pytest.approx(float(truth.loc[row.bison_subject, "wmh_stx_mm3"]), rel=1e-6)


@pytest.mark.slow
def test_smoke_training_from_the_bison_manifest_then_native_volumes(bison_run, tmp_path):
    _, manifest, _, truth = bison_run
    run = tmp_path / "train"
    proc = subprocess.run([sys.executable, "train.py", "experiment=smoke", f"data.manifest={manifest}",
                           f"hydra.run.dir={run}", "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "seg"
    proc = subprocess.run([sys.executable, "infer.py", f"ckpt_path={ckpt}", f"input={manifest}", f"out_dir={out}",
                           "num_workers=0", "progress=false", "qc=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False, na_values=[""])
    assert (vol["status"] == "ok").all(), vol["error"].tolist()
    for row in vol.itertuples():
        scale = float(truth.loc[f"{row.subject_id}_{row.session_id}", "stx_scale"])
        assert row.stx_scale == pytest.approx(scale, rel=1e-6)
        assert row.wmh_mm3 == pytest.approx(row.wmh_stx_mm3 / scale, rel=1e-6)
        mask = nib.load(out / row.mask)
        assert mask.shape == nib.load(read_manifest(manifest)[row.Index].flair).shape
