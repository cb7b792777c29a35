"""A simulated study on disk: scans painted with the cohort's WMH volumes, tables that join."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from wmhseg.manifest import read_manifest
from wmhseg.synth.__main__ import main
from wmhseg.synth.cohort import CohortParams


@pytest.mark.slow
def test_study_scans_carry_the_cohort_volumes(tmp_path):
    out = tmp_path / "study"
    assert main(["study", str(out), "--n-als", "2", "--n-control", "1", "--seed", "3",
                 "--anatomy", "procedural", "--shape", "56", "64", "56", "--spacing", "2"]) == 0
    scans = read_manifest(out / "manifest.csv")
    true = pd.read_csv(out / "true_volumes.csv", dtype={"subject_id": str, "session_id": str})
    clinical = pd.read_csv(out / "clinical.csv", dtype={"subject_id": str, "session_id": str})
    assert [(s.subject_id, s.session_id) for s in scans] == list(zip(true.subject_id, true.session_id, strict=True))
    assert set(zip(clinical.subject_id, clinical.session_id, strict=True)) == set(zip(true.subject_id, true.session_id, strict=True))
    for scan, volume in zip(scans, true.wmh_mm3, strict=True):
        label = nib.load(scan.label)
        voxel = abs(np.linalg.det(label.affine[:3, :3]))
        assert voxel == pytest.approx(8.0)
        assert np.sum(np.asarray(label.dataobj) == 9) * voxel == pytest.approx(volume, abs=0.05)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["wmh_progression_als_vs_control"] == CohortParams().als_extra_slope

    stamp = (out / "manifest.csv").stat().st_mtime_ns
    main(["study", str(out), "--n-als", "2", "--n-control", "1", "--seed", "3",
          "--anatomy", "procedural", "--shape", "56", "64", "56", "--spacing", "2"])
    assert (out / "manifest.csv").stat().st_mtime_ns == stamp, "same settings: the study is reused"
