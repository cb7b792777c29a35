"""Random training transforms: balanced patch sampling, then augmentation of the patch.

Everything random runs on the patch, after cropping, so an epoch costs a few tens of ms per
patch rather than whole-volume operations. The augmentations aim at a network trained on one
scanner coping with another: contrast (per-channel gamma, scale and shift), smooth bias fields,
noise, thick-slice blur (anisotropy), head pose (rotation, scaling) and flips; optionally MRI
artefacts from torchio (motion, ghosting, spikes; slow, off by default).

Random transforms are MONAI ``RandomizableTransform`` s: one draw per call, applied to image and
label alike (labels nearest-neighbour), reseeded per DataLoader worker by MONAI's DataLoader.

Example:
    >>> spec = AugmentSpec.from_dict({"strength": 0.5, "affine_prob": 0.0})
    >>> tf = augment_transforms(spec)                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandFlipd, RandomizableTransform

from wmhseg.errors import InputError, check_known_keys

__all__ = [
    "AugmentSpec",
    "augment_transforms",
    "RandAffined",
    "RandBiasFieldd",
    "RandGammad",
    "RandScaleShiftd",
    "RandNoised",
    "RandAnisotropyd",
    "TorchioIntensityd",
    "crop_margin_for",
]


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation settings (each ``*_prob`` is the chance per patch; 0 turns a step off).

    Args:
        enabled: master switch.
        strength: scales every magnitude (rotation, scaling, bias, gamma, noise, blur); 0-2.
        flip_prob / flip_axes: mirror along each listed working-grid axis with this chance.
        affine_prob / rotate_deg / scale: rotation up to +-``rotate_deg`` per axis and isotropic
            scaling by up to +-``scale``; the patch is cropped larger and resampled to size.
        bias_prob / bias: smooth multiplicative field exp(+-``bias``), per channel.
        gamma_prob / log_gamma: per-channel gamma exp(+-``log_gamma``) on the patch's range.
        contrast_prob / contrast: per-channel intensity scale 1+-``contrast`` and shift +-``contrast``.
        noise_prob / noise_std: Gaussian noise (in z-score units).
        anisotropy_prob / anisotropy: blur one axis by down- and up-sampling by a factor up to
            ``anisotropy`` (thick slices).
        motion_prob / ghosting_prob / spike_prob: torchio artefacts (costly: ~0.1-0.6 s each).
    """

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
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0 <= float(v) <= 1:
                raise InputError(f"augmentation.{f.name}={v!r} must be a probability in [0, 1]")
        if not 0 <= self.strength <= 2:
            raise InputError(f"augmentation.strength={self.strength!r} must be in [0, 2]")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise InputError(f"augmentation.flip_axes={self.flip_axes!r} must be spatial axes 0, 1, 2")
        if self.anisotropy < 1:
            raise InputError(f"augmentation.anisotropy={self.anisotropy!r} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentSpec:
        d = dict(d or {})
        check_known_keys(d, [f.name for f in fields(cls)], "augmentation")
        return cls(**d)


def crop_margin_for(spec: AugmentSpec, patch_size) -> tuple[int, int, int]:
    """Extra voxels per side to crop before :class:`RandAffined`, so rotated corners stay inside."""
    if not spec.enabled or spec.affine_prob == 0:
        return (0, 0, 0)
    ang = math.radians(min(45.0, spec.rotate_deg * spec.strength))
    grow = (math.cos(ang) + math.sin(ang)) / max(0.5, 1 - spec.scale * spec.strength)
    return tuple(int(math.ceil(p * (grow - 1) / 2)) for p in patch_size)  # type: ignore[return-value]


class _RandD(RandomizableTransform, MapTransform):
    def __init__(self, keys, prob: float):
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob)


class _RandIntensityD(_RandD):
    """A random intensity transform: one draw per call (:meth:`_draw`), applied to every key."""

    def _draw(self) -> Any:
        return None

    def _apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        params = self._draw()
        for k in self.key_iterator(d):
            d[k] = self._apply(torch.as_tensor(d[k]).float(), params)
        return d


class RandAffined(_RandD):
    """Random rotation + isotropic scaling about the centre, output ``spatial_size`` (centre).

    ``keys[0]`` is the image (trilinear), the others labels (nearest). Without a draw the
    centre is cropped, so the output size never depends on chance.
    """

    def __init__(self, keys, spatial_size, prob: float = 0.2, rotate_deg: float = 15.0, scale: float = 0.1):
        super().__init__(keys, prob)
        self.size = tuple(int(s) for s in spatial_size)
        self.rotate, self.scale = float(rotate_deg), float(scale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        if not self._do_transform:
            for k in keys:
                d[k] = _centre_crop(d[k], self.size)
            return d
        a = np.deg2rad(self.R.uniform(-self.rotate, self.rotate, 3))
        s = 1.0 + self.R.uniform(-self.scale, self.scale)
        rx = np.array([[1, 0, 0], [0, np.cos(a[0]), -np.sin(a[0])], [0, np.sin(a[0]), np.cos(a[0])]])
        ry = np.array([[np.cos(a[1]), 0, np.sin(a[1])], [0, 1, 0], [-np.sin(a[1]), 0, np.cos(a[1])]])
        rz = np.array([[np.cos(a[2]), -np.sin(a[2]), 0], [np.sin(a[2]), np.cos(a[2]), 0], [0, 0, 1]])
        rot = rz @ ry @ rx / s
        in_size = np.asarray(d[keys[0]].shape[1:], dtype=float)
        out_size = np.asarray(self.size, dtype=float)
        # grid_sample works in normalised (-1, 1) coordinates, last axis first (x = W).
        m = np.diag(1.0 / in_size) @ rot @ np.diag(out_size)
        device = torch.as_tensor(d[keys[0]]).device
        theta = torch.zeros(1, 3, 4, device=device)
        theta[0, :, :3] = torch.as_tensor(m[::-1, ::-1].copy(), dtype=torch.float32, device=device)
        grid = F.affine_grid(theta, [1, 1, *self.size], align_corners=False)
        for i, k in enumerate(keys):
            x = torch.as_tensor(d[k])
            mode = "bilinear" if i == 0 else "nearest"
            out = F.grid_sample(x[None].float(), grid, mode=mode, padding_mode="border", align_corners=False)[0]
            d[k] = out.to(x.dtype)
        return d


def _centre_crop(x, size):
    start = [(n - s) // 2 for n, s in zip(x.shape[1:], size, strict=True)]
    if any(st < 0 for st in start):
        raise InputError(f"patch of shape {tuple(x.shape[1:])} is smaller than the requested {size}")
    return x[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]


class RandBiasFieldd(_RandIntensityD):
    """Per-channel smooth multiplicative field exp(sum of random low-order polynomials).

    Applied to the intensities shifted to a zero minimum, so z-scored inputs work.
    """

    def __init__(self, keys="image", prob: float = 0.3, magnitude: float = 0.3, coarse: int = 8):
        super().__init__(keys, prob)
        self.magnitude, self.coarse = float(magnitude), int(coarse)

    def _apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        c = self.coarse
        t = torch.linspace(-1, 1, c, device=x.device)
        gx, gy, gz = torch.meshgrid(t, t, t, indexing="ij")
        fields = []
        for _ in range(x.shape[0]):
            coef = torch.as_tensor(self.R.uniform(-1, 1, 9), dtype=torch.float32, device=x.device)
            poly = (coef[0] * gx + coef[1] * gy + coef[2] * gz + coef[3] * gx * gy + coef[4] * gx * gz
                    + coef[5] * gy * gz + coef[6] * (gx**2 - 0.33) + coef[7] * (gy**2 - 0.33) + coef[8] * (gz**2 - 0.33))
            fields.append(poly / poly.abs().max().clamp_min(1e-6) * self.magnitude)
        field = F.interpolate(torch.stack(fields)[None], size=x.shape[1:], mode="trilinear", align_corners=True)[0]
        lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
        return (x - lo) * torch.exp(field) + lo


class RandGammad(_RandIntensityD):
    """Per-channel gamma on the patch's own [min, max] range (the range is kept)."""

    def __init__(self, keys="image", prob: float = 0.3, log_gamma: float = 0.3):
        super().__init__(keys, prob)
        self.log_gamma = float(log_gamma)

    def _apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
        span = (x.flatten(1).amax(1).view(-1, 1, 1, 1) - lo).clamp_min(1e-6)
        gamma = torch.as_tensor(np.exp(self.R.uniform(-self.log_gamma, self.log_gamma, x.shape[0])),
                                dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)
        return ((x - lo) / span).pow(gamma) * span + lo


class RandScaleShiftd(_RandIntensityD):
    """Per-channel ``x * (1 + a) + b`` with ``a, b`` uniform in +-``amount``."""

    def __init__(self, keys="image", prob: float = 0.3, amount: float = 0.15):
        super().__init__(keys, prob)
        self.amount = float(amount)

    def _apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        a, b = (torch.as_tensor(self.R.uniform(-self.amount, self.amount, x.shape[0]), dtype=torch.float32,
                                device=x.device) for _ in range(2))
        return x * (1 + a).view(-1, 1, 1, 1) + b.view(-1, 1, 1, 1)


class RandNoised(_RandIntensityD):
    """Gaussian noise with a standard deviation drawn in (0, ``std``]."""

    def __init__(self, keys="image", prob: float = 0.2, std: float = 0.1):
        super().__init__(keys, prob)
        self.std = float(std)

    def _draw(self) -> tuple[float, int]:
        return float(self.R.uniform(0, self.std)), int(self.R.randint(0, 2**31 - 1))

    def _apply(self, x: torch.Tensor, params: tuple[float, int]) -> torch.Tensor:
        sigma, seed = params
        gen = torch.Generator(device=x.device).manual_seed(seed)
        return x + sigma * torch.randn(x.shape, generator=gen, device=x.device)


class RandAnisotropyd(_RandIntensityD):
    """Thick-slice blur: down-sample one random axis by a factor in [1.5, ``max_factor``] and back."""

    def __init__(self, keys="image", prob: float = 0.2, max_factor: float = 4.0):
        super().__init__(keys, prob)
        self.max_factor = float(max_factor)

    def _draw(self) -> tuple[int, float] | None:
        if self.max_factor < 1.5:
            return None
        return int(self.R.randint(0, 3)), float(self.R.uniform(1.5, self.max_factor))

    def _apply(self, x: torch.Tensor, params: tuple[int, float] | None) -> torch.Tensor:
        if params is None:
            return x
        axis, factor = params
        small = list(x.shape[1:])
        small[axis] = max(2, int(round(small[axis] / factor)))
        low = F.interpolate(x[None], size=small, mode="area")
        return F.interpolate(low, size=x.shape[1:], mode="trilinear", align_corners=False)[0]


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


def augment_transforms(spec: AugmentSpec, patch_size, *, image_key: str = "image", label_key: str = "label") -> list:
    """The augmentation steps for patches of ``patch_size`` (input patches must be larger by
    :func:`crop_margin_for` on each side; the output always has ``patch_size``)."""
    size = tuple(int(p) for p in patch_size)
    keys = [image_key, label_key]
    if not spec.enabled:
        return [RandAffined(keys, size, prob=0.0)]
    s = spec.strength
    steps: list = [RandAffined(keys, size, prob=spec.affine_prob, rotate_deg=spec.rotate_deg * s, scale=spec.scale * s)]
    steps += [RandFlipd(keys, prob=spec.flip_prob, spatial_axis=a) for a in spec.flip_axes]
    steps += [
        RandBiasFieldd(image_key, prob=spec.bias_prob, magnitude=spec.bias * s),
        RandGammad(image_key, prob=spec.gamma_prob, log_gamma=spec.log_gamma * s),
        RandScaleShiftd(image_key, prob=spec.contrast_prob, amount=spec.contrast * s),
        RandAnisotropyd(image_key, prob=spec.anisotropy_prob, max_factor=1 + (spec.anisotropy - 1) * s),
        RandNoised(image_key, prob=spec.noise_prob, std=spec.noise_std * s),
    ]
    if spec.motion_prob or spec.ghosting_prob or spec.spike_prob:
        import torchio as tio

        for p, cls in ((spec.motion_prob, tio.RandomMotion), (spec.ghosting_prob, tio.RandomGhosting),
                       (spec.spike_prob, tio.RandomSpike)):
            if p:
                steps.append(TorchioIntensityd(cls(p=p), keys=image_key))
    return steps
