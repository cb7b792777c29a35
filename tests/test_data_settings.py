"""The data group's structured config: Hydra names a misspelt key or a value of the wrong type when it
composes; a plain mapping (a test's, a checkpoint's) gets the closest key as a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from wmhseg.data.augment import AugmentSpec
from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.data.structured import from_settings
from wmhseg.data.synthesis import SynthesisSpec
from wmhseg.errors import InputError
from wmhseg.labels import LabelSpec
from wmhseg.plain import to_plain

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=["experiment=synthetic", *overrides])


@pytest.mark.parametrize(("override", "named"), [
    ("data.preprocessing.spcing=[2,2,2]", "spcing"),
    ("data.augmentation.noise_sd=0.1", "noise_sd"),
    ("data.synthesis.prb=0.5", "prb"),
    ("data.labels.wmh_value=[9]", "wmh_value"),
    ("data.patch_sise=[32,32,32]", "patch_sise"),
    ("data.preprocessing.crop_margin=four", "crop_margin"),
    ("data.augmentation.flip_prob=[0.5]", "flip_prob"),
    ("data.synthesis.flair_wmh_ratio=[1.5,high]", "flair_wmh_ratio"),
])
def test_compose_names_a_misspelt_key_or_a_wrong_type(override, named):
    with pytest.raises(ConfigCompositionException) as info:
        _compose(override)
    assert named in f"{info.value} {info.value.__cause__}"


def test_composed_sections_build_the_specs():
    cfg = _compose("data.synthesis.prob=0.25").data
    data = {k: to_plain(cfg[k]) for k in ("synthesis", "preprocessing", "labels", "augmentation")}
    assert from_settings(SynthesisSpec, data["synthesis"], "synthesis").prob == 0.25
    assert from_settings(PreprocessSpec, data["preprocessing"], "preprocessing").spacing == (2.0, 2.0, 2.0)
    assert from_settings(LabelSpec, data["labels"], "labels") == LabelSpec()
    assert from_settings(AugmentSpec, data["augmentation"], "augmentation").affine_prob == 0.1  # the experiment's, not the default


@pytest.mark.parametrize(("cls", "section", "values", "message"), [
    (PreprocessSpec, "preprocessing", {"spcing": [1, 1, 1]}, "unknown preprocessing setting 'spcing'; did you mean 'spacing'"),
    (LabelSpec, "labels", {"wmh_value": [9]}, "unknown labels setting 'wmh_value'; did you mean 'wmh_values'"),
    (AugmentSpec, "augmentation", {"noise_sd": 0.1}, "did you mean 'noise_std'"),
    (SynthesisSpec, "synthesis", {"elastic_prb": 0.1}, "did you mean 'elastic_prob'"),
    (PreprocessSpec, "preprocessing", {"crop_margin": "four"}, "preprocessing.crop_margin: Value 'four'"),
    (AugmentSpec, "augmentation", {"flip_axes": [0, "x"]}, r"augmentation.flip_axes\[1\]"),
    (PreprocessSpec, "preprocessing", {"normalisation": "minmax"}, "normalisation='minmax' is not one of"),
])
def test_plain_mappings_are_checked(cls, section, values, message):
    with pytest.raises(InputError, match=message):
        from_settings(cls, values, section)


def test_specs_round_trip_as_plain_dicts():
    """Checkpoints store the settings as plain dicts and read them back to equal specs."""
    for spec in (PreprocessSpec(spacing=(2.0, 2.0, 3.0)), AugmentSpec(strength=0.5), SynthesisSpec(prob=0.3),
                 LabelSpec(mode="bison")):
        plain = to_plain(spec.to_dict())
        assert all(isinstance(v, (str, int, float, bool, list)) for v in plain.values())
        assert from_settings(type(spec), plain, "x") == spec
