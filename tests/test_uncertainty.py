"""Volume uncertainty: test-time augmentation mapped back through MONAI's inverses, ensembles of
checkpoints, the interval arithmetic, and the settings and hooks in infer()."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from inference_cases import infer_cfg, make_checkpoint, write_case, write_manifest

from wmhseg.errors import InputError
from wmhseg.inference.infer_config import InferConfig
from wmhseg.inference.predictor import Predictor
from wmhseg.inference.runner import infer
from wmhseg.inference.uncertainty import UncertaintySettings, tta_volumes, volume_interval

IDS = {"subject_id": str, "session_id": str}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("unc")
    ckpt = make_checkpoint(root / "m.ckpt")
    case = write_case(root / "data", "a", codes="LPS")
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32")
    prepared = predictor.prepare(case["t1"], case["flair"])
    return root, ckpt, case, predictor, prepared


def test_flips_alone_are_inverted_exactly(setup):
    _, _, case, predictor, prepared = setup
    still = UncertaintySettings(mode="tta", samples=6, rotate_deg=0, scale_range=0, translate_mm=0, intensity=0)
    volumes = tta_volumes(predictor, prepared.image, prepared.shape, prepared.affine, still)
    # random left-right flips (about half of 6 draws) must come back to the unflipped mask
    assert volumes.tolist() == [case["wmh_mm3"]] * 6


def test_perturbations_move_the_volume_reproducibly(setup):
    _, _, case, predictor, prepared = setup
    s = UncertaintySettings(mode="tta", samples=5, rotate_deg=8, scale_range=0.05, translate_mm=1.5)
    a = tta_volumes(predictor, prepared.image, prepared.shape, prepared.affine, s)
    b = tta_volumes(predictor, prepared.image, prepared.shape, prepared.affine, s)
    assert a.tolist() == b.tolist()  # seeded
    assert np.std(a) > 0
    # resampled blocks lose or gain boundary voxels, never most of the 44-voxel lesions
    assert np.all(np.abs(a - case["wmh_mm3"]) < 0.5 * case["wmh_mm3"])


def test_interval_is_the_normal_quantile_times_calibration_times_sd():
    vols = np.array([10.0, 12.0, 14.0, 16.0])
    sd = float(np.std(vols, ddof=1))
    z = NormalDist().inv_cdf(0.95)  # level 0.90
    out = volume_interval(13.0, vols, UncertaintySettings(mode="tta", level=0.9, calibration=4.0))
    assert out["wmh_mm3_sd"] == pytest.approx(sd, abs=1e-4)
    assert out["wmh_mm3_ci_high"] == pytest.approx(13.0 + 4.0 * z * sd, abs=1e-4)
    assert out["wmh_mm3_ci_low"] == 0.0  # 13 - 4 z sd < 0: a volume is never negative


def test_settings_are_checked_and_separated_from_the_predictors():
    inference = {"device": "cpu", "uncertainty": "tta", "uncertainty_samples": 4}
    s = UncertaintySettings.pop_from(inference)
    assert (s.mode, s.samples, inference) == ("tta", 4, {"device": "cpu"})
    with pytest.raises(InputError, match="not one of"):
        UncertaintySettings(mode="mc_dropout")
    with pytest.raises(InputError, match="uncertainty_sample"):
        UncertaintySettings.pop_from({"uncertainty_sample": 3})
    with pytest.raises(InputError, match=">= 2"):
        UncertaintySettings(mode="tta", samples=1)


def test_infer_writes_intervals_for_tta_and_ensembles(setup, tmp_path):
    root, ckpt, case, _, _ = setup
    manifest = write_manifest(root / "manifest.csv", [{"subject_id": "001", "session_id": "01", "t1": case["t1"],
                                                        "flair": case["flair"]}])
    out = tmp_path / "none"
    assert infer(infer_cfg(ckpt, manifest, out, qc=False)) == 0
    plain = pd.read_csv(out / "volumes.csv", dtype=IDS)
    assert plain["wmh_mm3_sd"].isna().all()
    # the same folder with tta: the finished scan is redone for its interval
    assert infer(infer_cfg(ckpt, manifest, out, qc=False, inference={"uncertainty": "tta", "uncertainty_samples": 3})) == 0
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS).iloc[0]
    assert math.isfinite(vol["wmh_mm3_sd"]) and vol["wmh_mm3_ci_low"] <= vol["wmh_mm3"] <= vol["wmh_mm3_ci_high"]
    assert vol["t_uncertainty_s"] > 0
    twin = make_checkpoint(tmp_path / "twin.ckpt")  # the same weights: the members agree exactly
    ens = tmp_path / "ens"
    assert infer(infer_cfg(f"{ckpt},{twin}", manifest, ens, qc=False, inference={"uncertainty": "ensemble"})) == 0
    row = pd.read_csv(ens / "volumes.csv", dtype=IDS).iloc[0]
    assert (row["wmh_mm3_sd"], row["wmh_mm3_ci_low"], row["wmh_mm3_ci_high"]) == (0.0, row["wmh_mm3"], row["wmh_mm3"])


def test_ensemble_and_checkpoint_lists_must_agree(setup, tmp_path):
    root, ckpt, _, _, _ = setup
    manifest = root / "manifest.csv"
    cfg = {**infer_cfg(ckpt, manifest, tmp_path, inference={"uncertainty": "ensemble"}), "ckpt_path": [ckpt, ckpt]}
    assert InferConfig.from_mapping(cfg).ckpt_paths == [ckpt, ckpt]  # a list, as Hydra gives ckpt_path=[a,b]
    with pytest.raises(InputError, match="needs several checkpoints"):
        infer(infer_cfg(ckpt, manifest, tmp_path / "a", inference={"uncertainty": "ensemble"}))
    with pytest.raises(InputError, match="needs inference.uncertainty=ensemble"):
        infer(infer_cfg(f"{ckpt},{ckpt}", manifest, tmp_path / "b"))
    with pytest.raises(InputError, match="strategy"):
        InferConfig.from_mapping(infer_cfg(ckpt, manifest, tmp_path, strategy="ddp", inference={"uncertainty": "tta"}))
