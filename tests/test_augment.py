"""Random patch augmentation: consistency of image and label, value checks, seeding; MONAI's
transforms pinned to the hand-written ones they replaced (tiny copies of the old formulas here)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.transforms import (
    AdjustContrast,
    Compose,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    ScaleIntensity,
    ShiftIntensity,
)

from wmhseg.data.augment import (
    AugmentSpec,
    RandAnisotropyd,
    augment_transforms,
    crop_margin_for,
    pose_transform,
)
from wmhseg.errors import InputError


def _blobs(size=40, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lab = np.zeros((1, size, size, size), np.int64)
    for _ in range(6):
        c = rng.integers(8, size - 8, 3)
        lab[0, c[0] - 4:c[0] + 4, c[1] - 3:c[1] + 3, c[2] - 5:c[2] + 5] = 1
    img = np.concatenate([lab, 2 * lab]).astype(np.float32)
    return torch.from_numpy(img), torch.from_numpy(lab)


def test_spec_validation() -> None:
    with pytest.raises(InputError, match="unknown augmentation setting 'noise_sd'; did you mean 'noise_std'"):
        AugmentSpec.from_dict({"noise_sd": 0.1})
    with pytest.raises(InputError, match="augmentation.flip_prob=1.5"):
        AugmentSpec(flip_prob=1.5)
    spec = AugmentSpec(strength=0.5)
    assert AugmentSpec.from_dict(spec.to_dict()) == spec


def test_affine_identity_is_the_centre_crop() -> None:
    img, lab = _blobs(40)
    for prob, kwargs in ((0.0, {}), (1.0, {"rotate_deg": 0.0, "scale": 0.0})):
        out = pose_transform(["image", "label"], (24, 24, 24), prob=prob, **kwargs)({"image": img, "label": lab})
        assert torch.allclose(out["image"], img[:, 8:32, 8:32, 8:32], atol=1e-5)
        assert torch.equal(out["label"].long(), lab[:, 8:32, 8:32, 8:32])


def test_pose_crop_is_monais_random_affine_bit_for_bit() -> None:
    """RandPosed crops by slicing when it draws no pose; over a stream of calls (some drawing a
    pose, most not) it gives MONAI's RandAffined's outputs exactly, and stays in step with its
    random draws."""
    img, lab = _blobs(40, seed=1)
    angle = math.radians(10.0)
    ours = pose_transform(["image", "label"], (32, 32, 32), prob=0.3, rotate_deg=10.0, scale=0.1).set_random_state(5)
    monai = RandAffined(["image", "label"], spatial_size=(32, 32, 32), prob=0.3, rotate_range=(angle,) * 3,
                        scale_range=(0.1,) * 3, mode=("bilinear", "nearest"), padding_mode="border").set_random_state(5)
    posed = 0
    for _ in range(40):
        a, b = ours({"image": img, "label": lab}), monai({"image": img, "label": lab})
        posed += int(ours._do_transform)
        for k in ("image", "label"):
            assert torch.equal(a[k], torch.as_tensor(b[k])) and a[k].dtype == torch.as_tensor(b[k]).dtype
    assert 0 < posed < 40  # both paths were taken
    # the crop is a copy: writing into it leaves the volume it was cut from alone
    out = pose_transform(["image", "label"], (32, 32, 32))({"image": img, "label": lab})
    out["image"].zero_()
    assert img.abs().sum() > 0 and torch.equal(img, _blobs(40, seed=1)[0])
    # an odd margin puts the centre between voxels, and a volume smaller than the patch is padded:
    # RandAffined's own paths
    for size, x in (((31, 31, 31), img), ((32, 32, 32), img[:, :30])):
        ours = pose_transform(["image"], size)({"image": x})["image"]
        assert ours.shape[1:] == size
        assert torch.allclose(ours, torch.as_tensor(RandAffined(["image"], spatial_size=size, padding_mode="border")(
            {"image": x})["image"]))


def test_affine_moves_image_and_label_together() -> None:
    img, lab = _blobs(48, seed=2)
    tf = pose_transform(["image", "label"], (32, 32, 32), prob=1.0, rotate_deg=25.0, scale=0.15)
    tf.set_random_state(3)
    out = tf({"image": img, "label": lab})
    assert set(out["label"].unique().tolist()) <= {0, 1}  # nearest neighbour: no new label values
    agree = ((out["image"][0] > 0.5) == (out["label"][0] == 1)).float().mean()
    assert agree > 0.97
    assert not torch.equal(out["label"], lab[:, 8:40, 8:40, 8:40])  # something moved
    assert torch.allclose(out["image"][1], 2 * out["image"][0], atol=1e-5)  # same draw for both channels


def _old_gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """The hand-written RandGammad's formula (one channel): gamma on the patch's [min, max]."""
    lo, span = x.min(), (x.max() - x.min()).clamp_min(1e-6)
    return ((x - lo) / span).pow(gamma) * span + lo


def test_monai_intensity_steps_match_the_old_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 20, 20, 20), generator=gen) * 3 - 1
    for gamma in (0.74, 1.0, 1.35):  # RandAdjustContrastd's step, one channel (it draws one gamma for all)
        assert torch.allclose(torch.as_tensor(AdjustContrast(gamma)(x)), _old_gamma(x, gamma), atol=1e-5)
    a, b = 0.12, -0.07  # RandScaleIntensityd then RandShiftIntensityd: the old x * (1 + a) + b
    assert torch.allclose(torch.as_tensor(ShiftIntensity(b)(ScaleIntensity(minv=None, maxv=None, factor=a)(x))), x * (1 + a) + b, atol=1e-6)


def test_bias_noise_and_anisotropy_numbers() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 20, 20, 20), generator=gen) * 3 - 1
    d = {"image": x}
    # intended difference: MONAI's field multiplies the intensities themselves (the old one shifted the
    # patch to a zero minimum first) and its size is drawn, not fixed: about exp(+-bias) at its largest
    spec = AugmentSpec(bias=0.3)
    bias = next(t for t in augment_transforms(spec, (20, 20, 20)) if isinstance(t, RandBiasFieldd))
    bias.set_random_state(0)
    bias.prob = 1.0
    peaks = [float(torch.as_tensor(bias({"image": torch.ones(1, 20, 20, 20)})["image"]).log().abs().max())
             for _ in range(50)]
    assert 0.2 < float(np.median(peaks)) < 0.45
    n = RandGaussianNoised("image", prob=1.0, std=0.2, sample_std=True)(d)["image"]  # std drawn in (0, 0.2]
    assert 0 < float((torch.as_tensor(n) - x).std()) <= 0.2 + 0.01
    const = {"image": torch.full((2, 16, 16, 16), 3.0)}
    assert torch.allclose(RandAnisotropyd(prob=1.0, max_factor=4.0)(const)["image"], const["image"])
    slab = torch.zeros((1, 8, 8, 8))
    slab[:, :, :, 2:4] = 1.0  # a 2-voxel slab seen through 4-voxel slices keeps half its contrast
    tf = RandAnisotropyd(prob=1.0, max_factor=4.0)
    tf.R = SimpleNamespace(rand=lambda: 0.0, randint=lambda *a: 2, uniform=lambda *a: 4.0)  # axis 2, factor 4
    assert float(tf({"image": slab})["image"].max()) == pytest.approx(0.5, abs=0.05)
    assert torch.equal(d["image"], x)  # inputs are never modified in place


def test_pipeline_is_seeded_and_sizes_are_fixed() -> None:
    spec = AugmentSpec(affine_prob=1.0, bias_prob=1.0, gamma_prob=1.0, noise_prob=1.0, anisotropy_prob=1.0)
    margin = crop_margin_for(spec, (24, 24, 24))
    assert all(m > 0 for m in margin)
    img, lab = _blobs(24 + 2 * margin[0])

    def run(seed):
        tf = Compose(augment_transforms(spec, (24, 24, 24)))
        tf.set_random_state(seed)
        return tf({"image": img, "label": lab})

    a, b, c = run(0), run(0), run(1)
    assert a["image"].shape == (2, 24, 24, 24) and a["label"].shape == (1, 24, 24, 24)
    assert torch.allclose(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
    assert not torch.allclose(torch.as_tensor(a["image"]), torch.as_tensor(c["image"]))
    assert crop_margin_for(AugmentSpec(affine_prob=0.0), (24, 24, 24)) == (0, 0, 0)
