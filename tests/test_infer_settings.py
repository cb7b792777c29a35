"""infer.py's structured config: Hydra names unknown keys and wrong types, the dataclasses check the values."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from wmhseg.cli import EXIT_USER_ERROR, check_command_line
from wmhseg.errors import InputError
from wmhseg.inference.infer_config import USAGE, InferConfig, InferenceConfig, register_configs

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"ckpt_path": "last.ckpt", "input": "manifest.csv", "out_dir": "out"}


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="infer", overrides=overrides)


def command_line_error(capsys, argv: list[str]) -> str:
    register_configs()
    with pytest.raises(SystemExit) as info:
        check_command_line("infer.py", argv, config_dir=ROOT / "configs", config_name="infer", usage=USAGE)
    assert info.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_infer_yaml_extends_the_schema_and_builds_the_dataclasses():
    cfg = compose_cfg([f"{k}={v}" for k, v in REQUIRED.items()] + ["bids_filters={flair: {acq: 3D}}",
                                                                    "inference.roi_size=[64,64,64]"])
    assert OmegaConf.get_type(cfg) is InferConfig and OmegaConf.get_type(cfg.inference) is InferenceConfig
    conf = InferConfig.from_mapping(cfg)
    assert conf.input == Path("manifest.csv") and conf.ckpt_paths == [Path("last.ckpt")]
    assert conf.bids_filters == {"flair": {"acq": "3D"}} and conf.inference.roi_size == [64, 64, 64]
    assert conf.inference.backend == "auto"  # infer.py's default; the Predictor's own is torch
    assert conf.inference.predictor_settings()["backend"] == "auto"
    assert conf.inference.uncertainty_settings().mode == "none"


def test_a_misspelt_key_names_the_closest_setting(capsys):
    with pytest.raises(InputError, match=r"unknown infer setting 'ovewrite'; did you mean 'overwrite'\?"):
        InferConfig.from_mapping({**REQUIRED, "ovewrite": True})
    with pytest.raises(InputError, match=r"unknown inference setting 'precison'; did you mean 'precision'\?"):
        InferConfig.from_mapping({**REQUIRED, "inference": {"precison": "fp32"}})
    with pytest.raises(InputError, match=r"unknown longitudinal_options setting 'prior_weigth'; did you mean"):
        InferConfig.from_mapping({**REQUIRED, "longitudinal_options": {"prior_weigth": 0.2}})
    with pytest.raises(HydraException, match="Could not override 'ovewrite'"):
        compose_cfg(["ovewrite=true"])
    line = command_line_error(capsys, [f"{k}={v}" for k, v in REQUIRED.items()] + ["inference.precison=fp32"])
    assert line.startswith("infer.py: error: Could not override 'inference.precison'")
    assert line.endswith("did you mean 'inference.precision'?")


def test_a_value_of_the_wrong_type_names_the_key(capsys):
    with pytest.raises(InputError, match=r"'two' .* could not be converted to Integer; full_key: num_workers"):
        InferConfig.from_mapping({**REQUIRED, "num_workers": "two"})
    with pytest.raises(InputError, match=r"full_key: inference.overlap"):
        InferConfig.from_mapping({**REQUIRED, "inference": {"overlap": "half"}})
    with pytest.raises(HydraException, match="num_workers=two"):
        compose_cfg(["num_workers=two"])
    line = command_line_error(capsys, [f"{k}={v}" for k, v in REQUIRED.items()] + ["pv_distance_mm=far"])
    assert "pv_distance_mm=far" in line and "could not be converted to Float" in line


@pytest.mark.parametrize(("setting", "pattern"), [
    ({"part_id": 2, "num_parts": 2}, r"part_id=2 must satisfy 0 <= part_id < num_parts=2"),
    ({"qc_convention": "sideways"}, r"qc_convention='sideways' is not one of"),
    ({"inference": {"precision": "fp33"}}, r"did you mean 'fp32'"),
    ({"inference": {"uncertainty": "tta", "uncertainty_samples": 1}}, r"uncertainty_samples=1 must be >= 2"),
    ({"longitudinal": True, "num_parts": 2}, r"longitudinal=true needs one process"),
    ({"bids_filters": "acq-3D"}, r"bids_filters='acq-3D' must be a mapping"),
    ({"input": "???"}, r"input is required: python infer.py ckpt_path=CKPT"),
])
def test_bad_values_are_named(setting, pattern):
    with pytest.raises(InputError, match=pattern):
        InferConfig.from_mapping({**REQUIRED, **setting})


def test_flat_uncertainty_keys_are_the_uncertainty_settings():
    from dataclasses import fields

    from wmhseg.inference.infer_config import UncertaintySettings

    flat = {f.name: f.default for f in fields(InferenceConfig) if f.name.startswith("uncertainty")}
    nested = {("uncertainty" if f.name == "mode" else f"uncertainty_{f.name}"): f.default
              for f in fields(UncertaintySettings)}
    assert flat == nested
    assert InferenceConfig().uncertainty_settings() == UncertaintySettings()
