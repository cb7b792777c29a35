"""Random patch augmentation: consistency of image and label, value checks, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from wmhseg.data.augment import (
    AugmentSpec,
    RandAffined,
    RandAnisotropyd,
    RandBiasFieldd,
    RandGammad,
    RandNoised,
    augment_transforms,
    crop_margin_for,
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
        out = RandAffined(["image", "label"], (24, 24, 24), prob=prob, **kwargs)({"image": img, "label": lab})
        assert torch.allclose(out["image"], img[:, 8:32, 8:32, 8:32], atol=1e-5)
        assert torch.equal(out["label"], lab[:, 8:32, 8:32, 8:32])


def test_affine_moves_image_and_label_together() -> None:
    img, lab = _blobs(48, seed=2)
    tf = RandAffined(["image", "label"], (32, 32, 32), prob=1.0, rotate_deg=25.0, scale=0.15)
    tf.set_random_state(3)
    out = tf({"image": img, "label": lab})
    assert out["label"].dtype == torch.int64 and set(out["label"].unique().tolist()) <= {0, 1}
    agree = ((out["image"][0] > 0.5) == (out["label"][0] == 1)).float().mean()
    assert agree > 0.97
    assert not torch.equal(out["label"], lab[:, 8:40, 8:40, 8:40])  # something moved
    assert torch.allclose(out["image"][1], 2 * out["image"][0], atol=1e-5)  # same draw for both channels


def test_intensity_transforms_numbers() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 20, 20, 20), generator=gen) * 3 - 1
    d = {"image": x}
    g = RandGammad(prob=1.0, log_gamma=0.5)({"image": x})["image"]
    for c in range(2):  # range kept, order kept
        assert torch.isclose(g[c].min(), x[c].min(), atol=1e-5) and torch.isclose(g[c].max(), x[c].max(), atol=1e-5)
        order = torch.argsort(x[c].flatten())
        assert (torch.diff(g[c].flatten()[order]) >= -1e-5).all()  # monotonic
    b = RandBiasFieldd(prob=1.0, magnitude=0.3)(d)["image"]
    lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    ratio = ((b - lo) / (x - lo).clamp_min(1e-3))[(x - lo) > 0.1]
    assert ratio.min() >= np.exp(-0.3) - 1e-4 and ratio.max() <= np.exp(0.3) + 1e-4
    n = RandNoised(prob=1.0, std=0.2)(d)["image"]
    assert 0 < float((n - x).std()) <= 0.2 + 0.01
    const = {"image": torch.full((2, 16, 16, 16), 3.0)}
    assert torch.allclose(RandAnisotropyd(prob=1.0, max_factor=4.0)(const)["image"], const["image"])
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
