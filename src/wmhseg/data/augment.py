"""Random training transforms: balanced patch sampling, then augmentation of the patch.

Everything random runs on the patch, after cropping, so an epoch costs a few tens of ms per
patch rather than whole-volume operations. The augmentations aim at a network trained on one
scanner coping with another: contrast (gamma, per-channel scale and shift), smooth bias fields,
noise, thick-slice blur (anisotropy), head pose (rotation, scaling) and flips; optionally MRI
artefacts from torchio (motion, ghosting, spikes; slow, off by default).

The steps are MONAI's (``RandAffined``, ``RandFlipd``, ``RandBiasFieldd``, ``RandAdjustContrastd``,
``RandScaleIntensityd``, ``RandShiftIntensityd``, ``RandGaussianNoised``) and torchio's; only the
thick-slice blur with partial volume is this package's own (:class:`RandAnisotropyd` says why).
One draw per call, applied to image and label alike (labels nearest-neighbour), reseeded per
DataLoader worker by MONAI's DataLoader.

Example:
    >>> spec = AugmentSpec.from_dict({"strength": 0.5, "affine_prob": 0.0})
    >>> tf = augment_transforms(spec)                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.transforms import (
    CenterSpatialCrop,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from wmhseg.data.structured import Settings
from wmhseg.errors import InputError

__all__ = [
    "AugmentSpec",
    "augment_transforms",
    "augment_pose",
    "pose_transform",
    "RandPosed",
    "RandAnisotropyd",
    "TorchioIntensityd",
    "crop_margin_for",
]


@dataclass(frozen=True)
class AugmentSpec(Settings):
    """Augmentation settings (each ``*_prob`` is the chance per patch; 0 turns a step off).

    Args:
        enabled: master switch.
        strength: scales every magnitude (rotation, scaling, bias, gamma, noise, blur); 0-2.
        flip_prob / flip_axes: mirror along each listed working-grid axis with this chance.
        affine_prob / rotate_deg / scale: rotation up to +-``rotate_deg`` and scaling by up to
            +-``scale``, per axis; the patch is cropped larger and resampled to size.
        bias_prob / bias: smooth multiplicative field reaching about exp(+-``bias``).
        gamma_prob / log_gamma: gamma in [exp(-``log_gamma``), exp(``log_gamma``)] on the patch's range.
        contrast_prob / contrast: per-channel intensity scale 1+-``contrast`` and shift +-``contrast``
            (each with chance ``contrast_prob``).
        noise_prob / noise_std: Gaussian noise (in z-score units).
        anisotropy_prob / anisotropy: blur one axis by down- and up-sampling by a factor up to
            ``anisotropy`` (thick slices).
        motion_prob / ghosting_prob / spike_prob: torchio artefacts (costly: ~0.1-0.6 s each).
    """

    SECTION: ClassVar[str] = "augmentation"

    enabled: bool = True
    strength: float = 1.0
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)
    affine_prob: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.1
    bias_prob: float = 0.3
    bias: float = 0.3
    gamma_prob: float = 0.3
    log_gamma: float = 0.3
    contrast_prob: float = 0.3
    contrast: float = 0.15
    noise_prob: float = 0.2
    noise_std: float = 0.1
    anisotropy_prob: float = 0.2
    anisotropy: float = 4.0
    motion_prob: float = 0.0
    ghosting_prob: float = 0.0
    spike_prob: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "flip_axes", tuple(int(a) for a in self.flip_axes))
        self.check_probabilities()
        if not 0 <= self.strength <= 2:
            raise InputError(f"augmentation.strength={self.strength!r} must be in [0, 2]")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise InputError(f"augmentation.flip_axes={self.flip_axes!r} must be spatial axes 0, 1, 2")
        if self.anisotropy < 1:
            raise InputError(f"augmentation.anisotropy={self.anisotropy!r} must be >= 1")


def crop_margin_for(spec: AugmentSpec, patch_size) -> tuple[int, int, int]:
    """Extra voxels per side to crop before :func:`pose_transform`, so rotated corners stay inside."""
    if not spec.enabled or spec.affine_prob == 0:
        return (0, 0, 0)
    ang = math.radians(min(45.0, spec.rotate_deg * spec.strength))
    grow = (math.cos(ang) + math.sin(ang)) / max(0.5, 1 - spec.scale * spec.strength)
    return tuple(int(math.ceil(p * (grow - 1) / 2)) for p in patch_size)  # type: ignore[return-value]


class RandAnisotropyd(RandomizableTransform, MapTransform):
    """Thick-slice blur with partial volume: average one random axis down by a factor in
    [1.5, ``max_factor``] (``area``), then interpolate back (trilinear); one draw for all channels.

    Kept because the libraries lack it: torchio's ``RandomAnisotropy`` samples the thick slices by
    nearest neighbour (no partial volume: a 2-voxel lesion slab seen through 4-voxel slices keeps
    its full contrast or vanishes, where the averaged slice holds half of it, 0.5), and MONAI's
    ``RandSimulateLowResolutiond`` zooms every axis by the same factor.
    """

    def __init__(self, keys="image", prob: float = 0.2, max_factor: float = 4.0):
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob)
        self.max_factor = float(max_factor)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform or self.max_factor < 1.5:
            return d
        axis, factor = int(self.R.randint(0, 3)), float(self.R.uniform(1.5, self.max_factor))
        for k in self.key_iterator(d):
            x = torch.as_tensor(d[k]).float()
            small = list(x.shape[1:])
            small[axis] = max(2, int(round(small[axis] / factor)))
            low = F.interpolate(x[None], size=small, mode="area")
            d[k] = F.interpolate(low, size=x.shape[1:], mode="trilinear", align_corners=False)[0]
        return d


class TorchioIntensityd(MapTransform):
    """Apply a torchio intensity transform to each channel of ``keys`` (default ``"image"``).

    Each channel is wrapped as a ``tio.ScalarImage`` (so each gets its own draw); labels are
    never touched. torchio draws from torch's global generator, seeded per worker by PyTorch.
    """

    def __init__(self, transform, keys="image"):
        super().__init__(keys, allow_missing_keys=True)
        self.transform = transform

    def __call__(self, data):
        import torchio as tio

        d = dict(data)
        for k in self.key_iterator(d):
            x = torch.as_tensor(d[k]).float()
            d[k] = torch.cat([self.transform(tio.ScalarImage(tensor=x[c:c + 1])).data for c in range(x.shape[0])])
        return d


class RandPosed(RandAffined):
    """MONAI's ``RandAffined`` that, when it draws no pose, crops the centre by slicing.

    ``RandAffined`` resamples through an identity grid to change the size when it draws no pose,
    which in the ``synthetic`` experiment (a pose drawn for a tenth of the patches) took 12 % of
    a training batch's data time. Here the same draws are made (the random stream is unchanged)
    and the crop is a copy of the same voxels, as float32 like ``RandAffined``'s output (a copy,
    so that nothing downstream can write into the cached volume the patch was cut from). Plain
    tensors at least as large as the patch only, and only where the centre falls on whole voxels;
    anything else is ``RandAffined``'s own path.
    """

    def _slices(self, data: Mapping[Hashable, Any]) -> bool:
        """Whether every keyed item is a plain tensor that the patch fits in, centred on whole voxels."""
        size = tuple(int(n) for n in self.rand_affine.spatial_size or ())
        items = [data[k] for k in self.keys if k in data]
        return bool(items) and bool(size) and all(
            type(x) is torch.Tensor and x.ndim == len(size) + 1
            and all(n >= m and (n - m) % 2 == 0 for n, m in zip(x.shape[1:], size, strict=True)) for x in items)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        if not self._slices(data):
            return super().__call__(data, lazy)
        states = (self.R.get_state(), self.rand_affine.R.get_state())
        self.randomize(None)
        if self._do_transform:  # a pose to resample: RandAffined's path, with the same draws
            self.R.set_state(states[0])
            self.rand_affine.R.set_state(states[1])
            return super().__call__(data, lazy)
        d = dict(data)
        keys = list(self.key_iterator(d))
        size = tuple(int(n) for n in self.rand_affine.spatial_size)
        for _ in range(1 + len(keys)):  # RandAffined draws once, and again for each key it resamples
            self.rand_affine.randomize()
        crop = CenterSpatialCrop(size)
        for k in keys:
            d[k] = torch.as_tensor(crop(d[k])).to(torch.float32, copy=True)
        return d


def pose_transform(keys, patch_size, prob: float = 0.0, rotate_deg: float = 0.0, scale: float = 0.0) -> RandPosed:
    """MONAI's ``RandAffined`` about the patch centre with output ``patch_size``: rotation up to
    +-``rotate_deg`` per axis and scaling by up to +-``scale`` per axis; ``keys[0]`` (the image)
    trilinear, the others (labels) nearest. Without a draw it is the centre crop
    (:class:`RandPosed`)."""
    angle = math.radians(rotate_deg)
    return RandPosed(keys, spatial_size=tuple(int(p) for p in patch_size), prob=prob, rotate_range=(angle,) * 3,
                     scale_range=(scale,) * 3, mode=("bilinear", *["nearest"] * (len(keys) - 1)),
                     padding_mode="border")


# MONAI's bias field is a degree-2 polynomial with coefficients uniform in +-c: its largest |log| over
# the patch is 3.4 c (median of 200 draws; 2.4 c-4.6 c for 10-90 %), so c = 0.3 x the wanted magnitude
_BIAS_COEFF_PER_MAGNITUDE = 0.3


def augment_pose(spec: AugmentSpec, patch_size, *, image_key: str = "image", label_key: str = "label") -> RandPosed:
    """The pose step of ``spec`` (:func:`pose_transform`): patches larger by :func:`crop_margin_for`
    on each side in, patches of ``patch_size`` out (only the centre cut when ``spec`` is disabled)."""
    size = tuple(int(p) for p in patch_size)
    keys = [image_key, label_key]
    if not spec.enabled:
        return pose_transform(keys, size)
    s = spec.strength
    return pose_transform(keys, size, spec.affine_prob, spec.rotate_deg * s, spec.scale * s)


def augment_transforms(spec: AugmentSpec, patch_size, *, image_key: str = "image", label_key: str = "label",
                       pose: bool = True) -> list:
    """The augmentation steps for patches of ``patch_size`` (input patches must be larger by
    :func:`crop_margin_for` on each side; the output always has ``patch_size``). ``pose=False``
    leaves out the pose (:func:`augment_pose`), for a caller that runs it earlier."""
    keys = [image_key, label_key]
    steps: list = [augment_pose(spec, patch_size, image_key=image_key, label_key=label_key)] if pose else []
    if not spec.enabled:
        return steps
    s = spec.strength
    steps += [RandFlipd(keys, prob=spec.flip_prob, spatial_axis=a) for a in spec.flip_axes]
    bias = _BIAS_COEFF_PER_MAGNITUDE * spec.bias * s
    steps += [
        RandBiasFieldd(image_key, degree=2, coeff_range=(-bias, bias), prob=spec.bias_prob),
        RandAdjustContrastd(image_key, gamma=(math.exp(-spec.log_gamma * s), math.exp(spec.log_gamma * s)),
                            prob=spec.gamma_prob),
        RandScaleIntensityd(image_key, factors=spec.contrast * s, prob=spec.contrast_prob, channel_wise=True),
        RandShiftIntensityd(image_key, offsets=spec.contrast * s, prob=spec.contrast_prob, channel_wise=True),
        RandAnisotropyd(image_key, prob=spec.anisotropy_prob, max_factor=1 + (spec.anisotropy - 1) * s),
        RandGaussianNoised(image_key, prob=spec.noise_prob, std=spec.noise_std * s, sample_std=True),
    ]
    if spec.motion_prob or spec.ghosting_prob or spec.spike_prob:
        import torchio as tio

        for p, cls in ((spec.motion_prob, tio.RandomMotion), (spec.ghosting_prob, tio.RandomGhosting),
                       (spec.spike_prob, tio.RandomSpike)):
            if p:
                steps.append(TorchioIntensityd(cls(p=p), keys=image_key))
    return steps
