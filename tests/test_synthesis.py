"""Label-to-image synthesis: class contrasts as configured, settings validated, reproducible
draws, and synthesised training patches in the data module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from wmhseg.data.datamodule import WMHDataModule
from wmhseg.data.synthesis import RandSynthesised, SynthesisSpec, add_juxtacortical_lesions, render_labels
from wmhseg.errors import InputError


def _labels(shape=(24, 24, 24)) -> np.ndarray:
    """Background, a brain of CSF, grey and white matter, and a WMH blob inside the white matter."""
    idx = np.indices(shape) - (np.asarray(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((idx**2).sum(0))
    lab = np.zeros(shape, np.uint8)
    lab[r < 11], lab[r < 9], lab[r < 7] = 2, 7, 8
    lab[r < 2.5] = 9
    lab[(np.abs(idx[0]) < 1.5) & (r < 5) & (r > 3.5)] = 1
    return lab


def test_render_follows_the_configured_contrasts():
    lab = _labels()
    spec = SynthesisSpec(prob=1.0, class_std=0.0, flair_wmh_ratio=(1.3, 2.0), t1_wmh_ratio=(0.5, 0.9))
    seen = []
    for seed in range(20):
        img = render_labels(lab, spec, np.random.default_rng(seed))
        assert img.shape == (2, *lab.shape) and img.dtype == np.float32
        t1_ratio = img[0][lab == 9].mean() / img[0][lab == 8].mean()
        flair_ratio = img[1][lab == 9].mean() / img[1][lab == 8].mean()
        assert 1.3 - 1e-5 <= flair_ratio <= 2.0 + 1e-5
        assert 0.5 - 1e-5 <= t1_ratio <= 0.9 + 1e-5
        # without spread every class is one intensity per channel
        for v in np.unique(lab[lab > 0]):
            assert np.ptp(img[1][lab == v]) < 1e-6
        seen.append(img[1][lab == 7].mean())
    assert np.std(seen) > 0.1  # grey matter's intensity is random (uniform on [0, 1]: std 0.29)


def test_background_is_split_into_shells():
    lab = _labels((40, 40, 40))
    img = render_labels(lab, SynthesisSpec(prob=1.0, class_std=0.0, shells_mm=(3.0, 4.0)), np.random.default_rng(1))
    levels = np.unique(np.round(img[0][lab == 0], 6))
    assert 2 <= levels.size <= 4  # up to three shells around the brain, then the far background


def test_subclasses_give_a_class_several_smooth_intensities():
    lab = _labels((40, 40, 40))
    spec = SynthesisSpec(prob=1.0, class_std=0.0, subclasses=3, subclass_mm=6.0)
    split = 0
    for seed in range(40):
        img = render_labels(lab, spec, np.random.default_rng(seed))
        for v in (8, 9):  # white matter and WMH stay one intensity each: WMH is drawn against WM
            assert np.ptp(img[1][lab == v]) < 1e-6
        ratio = img[1][lab == 9].mean() / img[1][lab == 8].mean()
        assert spec.flair_wmh_ratio[0] - 1e-5 <= ratio <= spec.flair_wmh_ratio[1] + 1e-5
        cortex = np.unique(np.round(img[1][lab == 7], 6))
        assert 1 <= cortex.size <= 3
        split += cortex.size > 1
        if cortex.size > 1:  # the parts are regions, not salt and pepper: neighbours mostly share one
            both = (lab[1:] == 7) & (lab[:-1] == 7)
            same = (img[1][1:] == img[1][:-1])[both].mean()
            assert same > 0.8, same  # independent parts per voxel: at most 1/2
    # 2 or 3 parts are drawn 2 times in 3, and a cut may miss the cortex's field values: with a chance
    # of a split of even 1/2 per draw, fewer than 8 of 40 has a probability under 1e-5
    assert split >= 8
    one = render_labels(lab, SynthesisSpec(prob=1.0, class_std=0.0), np.random.default_rng(0))
    assert all(np.ptp(one[1][lab == v]) < 1e-6 for v in np.unique(lab[lab > 0]))  # subclasses=1: one Gaussian each
    with pytest.raises(InputError, match="subclasses"):
        SynthesisSpec.from_dict({"subclasses": 0})


def test_settings_are_validated_with_a_suggestion():
    with pytest.raises(InputError, match="did you mean 'prob'"):
        SynthesisSpec.from_dict({"prb": 0.5})
    with pytest.raises(InputError, match="probability"):
        SynthesisSpec.from_dict({"prob": 1.5})
    with pytest.raises(InputError, match="flair_wmh_ratio"):
        SynthesisSpec.from_dict({"flair_wmh_ratio": [0.5, 2.0]})  # WMH must be brighter on FLAIR
    with pytest.raises(InputError, match="anisotropy"):
        SynthesisSpec.from_dict({"anisotropy": 0.5})
    assert SynthesisSpec.from_dict(SynthesisSpec(prob=0.3).to_dict()) == SynthesisSpec(prob=0.3)


def test_transform_replaces_the_image_reproducibly():
    lab = torch.from_numpy(_labels())[None]
    data = {"image": torch.zeros(2, 24, 24, 24), "label": lab}
    spec = SynthesisSpec(prob=1.0, elastic_prob=0.0)
    a = RandSynthesised(spec, (2.0, 2.0, 2.0)).set_random_state(3)(data)
    b = RandSynthesised(spec, (2.0, 2.0, 2.0)).set_random_state(3)(data)
    c = RandSynthesised(spec, (2.0, 2.0, 2.0)).set_random_state(4)(data)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert torch.equal(a["label"], lab)  # no warp: the label is the one the image was drawn from
    assert a["image"].shape == (2, 24, 24, 24) and torch.isfinite(a["image"]).all()
    assert float(data["image"].abs().max()) == 0.0  # the input dict is not modified
    off = RandSynthesised(SynthesisSpec(prob=0.0))(data)
    assert off["image"] is data["image"]


def test_elastic_warp_moves_image_and_label_together():
    lab = torch.from_numpy(_labels())[None]
    spec = SynthesisSpec(prob=1.0, elastic_prob=1.0, elastic_magnitude_mm=3.0, class_std=0.0, blur_prob=0.0,
                         anisotropy_prob=0.0, bias_prob=0.0, gamma_prob=0.0, noise_prob=0.0)
    out = RandSynthesised(spec).set_random_state(0)({"image": torch.zeros(2, 24, 24, 24), "label": lab})
    warped = out["label"][0].numpy()
    assert not np.array_equal(warped, lab[0].numpy()) and set(np.unique(warped)) <= set(np.unique(lab.numpy()))
    flair = out["image"][1].numpy()
    for v in np.unique(warped[warped > 0]):  # the image is drawn from the warped label: one level per class
        assert np.ptp(flair[warped == v]) < 1e-4


def test_juxtacortical_lesions_grow_in_the_white_matter_from_the_cortex():
    lab = _labels((40, 40, 40))
    out = add_juxtacortical_lesions(lab, np.random.default_rng(0), (1.0, 1.0, 1.0), (1.5, 3.0), 6)
    new = (out == 9) & (lab != 9)
    assert new.sum() > 6 and np.all(lab[new] == 8)  # only white matter becomes WMH
    assert np.array_equal(out[~new], lab[~new])  # nothing else changes
    labels, n = ndimage.label(new)
    near_cortex = ndimage.binary_dilation(lab == 7, iterations=2)
    assert n >= 1 and all((near_cortex & (labels == k)).any() for k in range(1, n + 1))  # each blob at the cortex
    assert np.array_equal(add_juxtacortical_lesions(np.where(lab == 7, 2, lab), np.random.default_rng(0),
                                                    (1.0, 1.0, 1.0), (1.5, 3.0), 6), np.where(lab == 7, 2, lab))
    with pytest.raises(InputError, match="juxtacortical_mm"):
        SynthesisSpec.from_dict({"juxtacortical_mm": [3.0, 1.0]})
    # in the transform, the label and the image drawn from it carry the same new lesions
    spec = SynthesisSpec(prob=1.0, juxtacortical_prob=1.0, elastic_prob=0.0, class_std=0.0, blur_prob=0.0,
                         anisotropy_prob=0.0, bias_prob=0.0, gamma_prob=0.0, noise_prob=0.0)
    out = RandSynthesised(spec).set_random_state(0)({"image": torch.zeros(2, 40, 40, 40), "label": torch.from_numpy(lab)[None]})
    label = out["label"][0].numpy()
    assert ((label == 9) & (lab == 8)).any()
    flair = out["image"][1].numpy()
    assert np.ptp(flair[label == 9]) < 1e-4  # the added lesions are drawn as WMH


def test_datamodule_synthesises_binary_training_patches(tiny_dataset: Path):
    dm = WMHDataModule(manifest=str(tiny_dataset), patch_size=(16, 16, 16), batch_size=2, samples_per_volume=2,
                       val_fraction=0.25, augmentation={"enabled": False}, validate="headers",
                       synthesis={"prob": 1.0, "elastic_prob": 0.0})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 2, 16, 16, 16) and torch.isfinite(batch["image"]).all()
    assert set(batch["label"].unique().tolist()) <= {0, 1} and batch["label"].dtype == torch.int64
    with pytest.raises(InputError, match="did you mean 'elastic_prob'"):
        WMHDataModule(manifest=str(tiny_dataset), synthesis={"elastic_prb": 0.1})


def test_synthesis_renders_the_posed_patch(tiny_dataset: Path):
    """The pose comes before the synthesis: a rotated patch's image is rendered from its rotated
    label map, one intensity per class, not interpolated from an image rendered before the pose
    (which would blend the classes into thousands of values)."""
    clean = {"elastic_prob": 0.0, "class_std": 0.0, "blur_prob": 0.0, "anisotropy_prob": 0.0, "bias_prob": 0.0,
             "gamma_prob": 0.0, "noise_prob": 0.0}
    off = {k: 0.0 for k in ("flip_prob", "bias_prob", "gamma_prob", "contrast_prob", "noise_prob", "anisotropy_prob")}
    dm = WMHDataModule(manifest=str(tiny_dataset), patch_size=(16, 16, 16), batch_size=2, samples_per_volume=2,
                       val_fraction=0.25, validate="headers", synthesis={"prob": 1.0, **clean},
                       augmentation={"affine_prob": 1.0, "rotate_deg": 20.0, **off})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 2, 16, 16, 16)
    for image in batch["image"]:
        # BISON classes and background shells: at most 10 + 3 levels per channel
        assert len(torch.unique(image[1])) <= 13


@pytest.mark.parametrize("shape", [(40, 40, 40), (33, 28, 41)])
def test_cached_bias_field_is_torchios(shape):
    """The bias field from cached coordinate powers equals torchio's RandomBiasField bit for bit:
    the same draws from torch's generator, the same field."""
    import torchio as tio

    from wmhseg.data.synthesis import _random_bias_field_class

    image = torch.rand(1, *shape) + 0.5
    for seed in range(3):
        outs = []
        for cls in (tio.RandomBiasField, _random_bias_field_class()):
            torch.manual_seed(seed)
            outs.append(cls(coefficients=0.4, copy=True)(tio.ScalarImage(tensor=image.clone())).data)
        assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], image)
