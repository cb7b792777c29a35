"""Training images synthesised from label maps (the idea of SynthSeg, applied to BISON's classes).

With probability ``prob`` a training patch's T1 and FLAIR are replaced by images rendered from
its BISON label map alone, so the network sees contrasts, intensity scales, bias fields, noise
levels and resolutions no scanner of the training set produced:

1. a random elastic deformation of the label map (MONAI ``Rand3DElasticd``, nearest neighbour;
   the target follows it), and with ``juxtacortical_prob`` a few WMH blobs added to it in the
   white matter at the cortex (the target gains them too);
2. per channel, a random mean intensity per class (uniform in [0, 1]) and a random spread within
   each class (Gaussian), WMH brighter than white matter on FLAIR by a random factor
   (``flair_wmh_ratio``) and darker on T1 (``t1_wmh_ratio``); the background (label 0) is split
   into shells by distance from the brain (CSF rim, skull, scalp) and far background, each with
   its own intensity, so heads that are not skull-stripped are seen too;
3. torchio's MRI corruptions, drawn per channel: blur (``RandomBlur``), thick slices along a
   random axis with partial volume (``RandomAnisotropy``), bias field (``RandomBiasField``),
   gamma (``RandomGamma``) and noise (``RandomNoise``);
4. a z-score over the head, as :class:`~wmhseg.data.preprocessing.NormaliseHeadd` does for real
   scans.

In training (:func:`wmhseg.data.dataset.train_transforms`) the patch's pose (rotation and scaling,
:class:`wmhseg.data.augment.RandPosed`) comes before the synthesis, which then renders the posed
patch from its posed label map; flips and the other intensity augmentations of
:mod:`wmhseg.data.augment` follow, on synthesised and real patches alike.

Example:
    >>> spec = SynthesisSpec.from_dict({"prob": 0.8})
    >>> step = RandSynthesised(spec, spacing=(2.0, 2.0, 2.0))                 # doctest: +SKIP
    >>> out = step({"image": image, "label": bison_labels})                   # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from monai.transforms import MapTransform, Rand3DElasticd, RandomizableTransform
from scipy import ndimage

from wmhseg.data.structured import Settings
from wmhseg.errors import InputError

__all__ = ["SynthesisSpec", "RandSynthesised", "render_labels"]

_WM, _WMH = 8, 9
_N_SHELLS = 3  # background shells: CSF rim, skull, scalp (then far background)


def _range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"synthesis.{name}={value!r} must be a range [low, high]") from exc
    if not lo <= a <= b <= hi:
        raise InputError(f"synthesis.{name}={value!r} must satisfy {lo} <= low <= high <= {hi}")
    return a, b


@dataclass(frozen=True)
class SynthesisSpec(Settings):
    """Label-to-image synthesis settings (``data.synthesis``; unknown keys are errors).

    Args:
        prob: chance that a training patch is synthesised from its label map (0 = off).
        flair_wmh_ratio: WMH / white-matter mean intensity on FLAIR, drawn in this range.
        t1_wmh_ratio: WMH / white-matter mean intensity on T1, drawn in this range.
        class_std: within-class spread (fraction of the [0, 1] intensity scale), drawn up to this.
        shells_mm: outer radius range of each background shell (mm from the brain).
        elastic_prob / elastic_magnitude_mm: chance and largest displacement of the elastic warp.
        blur_prob / blur_mm: chance and largest Gaussian blur (std, mm).
        anisotropy_prob / anisotropy: chance and largest slice thickness factor (thick slices).
        bias_prob / bias: chance and strength of the bias field (torchio coefficients).
        gamma_prob / log_gamma: chance and range of the gamma change.
        noise_prob / noise_std: chance and largest noise std (fraction of the intensity scale).
        subclasses: each class other than white matter and WMH is split by a smooth random field
            (features of about ``subclass_mm``) into up to this many regions, each with its own
            mean: a Gaussian mixture per label, as SynthSeg draws from its many sub-labels, so that
            deep grey nuclei, cortex or CSF are not one brightness each (1 = one Gaussian per class).
        juxtacortical_prob / juxtacortical_mm: chance that a synthesised patch's label map gains
            1 + Poisson(2) WMH blobs in the white matter at its border with the cortex
            (:func:`add_juxtacortical_lesions`), and the range of their half-axes. Label maps
            whose lesions all lie away from the cortex otherwise teach a network that a bright spot
            at the cortex is never WMH.
    """

    SECTION: ClassVar[str] = "synthesis"

    prob: float = 0.0
    flair_wmh_ratio: tuple[float, float] = (1.25, 2.5)
    t1_wmh_ratio: tuple[float, float] = (0.6, 1.0)
    class_std: float = 0.06
    shells_mm: tuple[float, float] = (2.0, 9.0)
    elastic_prob: float = 0.3
    elastic_magnitude_mm: float = 4.0
    blur_prob: float = 0.5
    blur_mm: float = 1.5
    anisotropy_prob: float = 0.4
    anisotropy: float = 4.0
    bias_prob: float = 0.6
    bias: float = 0.5
    gamma_prob: float = 0.5
    log_gamma: float = 0.4
    noise_prob: float = 0.6
    noise_std: float = 0.06
    subclasses: int = 1
    subclass_mm: float = 16.0
    juxtacortical_prob: float = 0.0
    juxtacortical_mm: tuple[float, float] = (1.5, 4.0)

    def __post_init__(self) -> None:
        self.check_probabilities()
        object.__setattr__(self, "flair_wmh_ratio", _range("flair_wmh_ratio", self.flair_wmh_ratio, 1.0, 10.0))
        object.__setattr__(self, "t1_wmh_ratio", _range("t1_wmh_ratio", self.t1_wmh_ratio, 0.0, 2.0))
        object.__setattr__(self, "shells_mm", _range("shells_mm", self.shells_mm, 0.0, 50.0))
        object.__setattr__(self, "juxtacortical_mm", _range("juxtacortical_mm", self.juxtacortical_mm, 0.5, 20.0))
        for name in ("class_std", "elastic_magnitude_mm", "blur_mm", "bias", "log_gamma", "noise_std"):
            if not 0 <= float(getattr(self, name)) <= 50:
                raise InputError(f"synthesis.{name}={getattr(self, name)!r} must be within [0, 50]")
        if int(self.subclasses) != self.subclasses or not 1 <= self.subclasses <= 8:
            raise InputError(f"synthesis.subclasses={self.subclasses!r} must be an integer within [1, 8]")
        if not 1 <= float(self.subclass_mm) <= 200:
            raise InputError(f"synthesis.subclass_mm={self.subclass_mm!r} must be within [1, 200]")
        if self.anisotropy < 1:
            raise InputError(f"synthesis.anisotropy={self.anisotropy!r} must be >= 1")


def _background_distance(label: np.ndarray, spacing: Sequence[float]) -> np.ndarray | None:
    """Distance (mm) of each background voxel from the brain; None when there is no background or
    nothing else."""
    background = label == 0
    if not background.any() or background.all():
        return None
    return ndimage.distance_transform_edt(background, sampling=spacing)


def _background_codes(label: np.ndarray, spacing: Sequence[float], edges_mm: np.ndarray,
                      distance: np.ndarray | None = None) -> np.ndarray:
    """Label 0 split by distance from the brain: 0 far away, -1..-N for the shells outwards
    (``distance``: :func:`_background_distance` of ``label``, when already computed)."""
    codes = label.astype(np.int16)
    background = label == 0
    dist = distance if distance is not None else _background_distance(label, spacing)
    if dist is None:
        return codes
    shell = np.searchsorted(edges_mm, dist[background])  # 0..N (N = beyond the last shell)
    codes[background] = np.where(shell < len(edges_mm), -1 - shell, 0)
    return codes


def _split_classes(codes: np.ndarray, spec: SynthesisSpec, rng: np.random.Generator,
                   spacing: Sequence[float]) -> np.ndarray:
    """``codes`` with each class other than white matter and WMH cut into 1..``spec.subclasses``
    regions by one smooth random field (linear interpolation of noise on a grid of
    ``spec.subclass_mm``); white matter and WMH keep their codes (WMH is drawn relative to white
    matter). The new codes stay negative for the background shells and above 9 for tissue parts."""
    coarse = [max(2, int(np.ceil(n * s / spec.subclass_mm)) + 1) for n, s in zip(codes.shape, spacing, strict=True)]
    field = ndimage.zoom(rng.standard_normal(coarse), [n / c for n, c in zip(codes.shape, coarse, strict=True)],
                         order=1, grid_mode=True, mode="nearest")[tuple(slice(0, n) for n in codes.shape)]
    out = codes.astype(np.int32)
    for value in np.unique(codes):
        k = int(rng.integers(1, spec.subclasses + 1))
        if value in (_WM, _WMH) or k == 1:
            continue
        where = codes == value
        cuts = np.sort(rng.normal(0.0, 1.0, k - 1))
        part = np.searchsorted(cuts, field[where])
        out[where] = np.where(part == 0, value, np.sign(value or -1) * (100 * part + abs(int(value))))
    return out


def add_juxtacortical_lesions(label: np.ndarray, rng: np.random.Generator, spacing: Sequence[float],
                              radius_mm: tuple[float, float], count: int) -> np.ndarray:
    """``label`` with ``count`` WMH blobs (class 9) grown in the white matter (8) from seeds at its
    border with the cortex (7): ellipsoids with half-axes drawn in ``radius_mm``, clipped to the
    white matter."""
    wm = label == 8
    border = wm & ndimage.binary_dilation(label == 7)
    seeds = np.argwhere(border)
    if count <= 0 or not len(seeds):
        return label
    out = label.copy()
    sp = np.asarray(spacing, float)
    for centre in seeds[rng.integers(0, len(seeds), count)]:
        axes = rng.uniform(*radius_mm, 3)
        reach = np.ceil(axes / sp).astype(int)
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, label.shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        inside = sum(((g - c) * d / r) ** 2 for g, c, d, r in zip(grid, centre, sp, axes, strict=True)) <= 1.0
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        out[box][inside & wm[box]] = 9
    return out


def render_labels(label: np.ndarray, spec: SynthesisSpec, rng: np.random.Generator,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0), distance: np.ndarray | None = None) -> np.ndarray:
    """T1 and FLAIR ``(2, X, Y, Z)`` float32 intensities rendered from a BISON label map.

    Each class of each channel gets a random mean (uniform in [0, 1]) and a Gaussian spread;
    WMH (9) is white matter (8) times a ratio drawn from ``spec.flair_wmh_ratio`` on FLAIR and
    ``spec.t1_wmh_ratio`` on T1. Label 0 is split into background shells (see module docs).

    Args:
        label: ``(X, Y, Z)`` integer BISON labels (0-9; other values get their own intensity).
        spec: the synthesis settings.
        rng: the random generator (one draw per call).
        spacing: voxel size in mm (for the background shells).
        distance: the background's distance from the brain (:func:`_background_distance`), when
            the caller has it.
    """
    edges = np.cumsum(rng.uniform(*spec.shells_mm, _N_SHELLS))
    codes = _background_codes(np.asarray(label), spacing, edges, distance)
    if spec.subclasses > 1:
        codes = _split_classes(codes, spec, rng, spacing)
    values, inverse = np.unique(codes.reshape(-1), return_inverse=True)
    out = np.empty((2, *codes.shape), dtype=np.float32)
    for c, ratio in enumerate((spec.t1_wmh_ratio, spec.flair_wmh_ratio)):
        means = rng.uniform(0.0, 1.0, values.size)
        wm = means[values == _WM][0] if (values == _WM).any() else rng.uniform(0.2, 0.8)
        means[values == _WMH] = wm * rng.uniform(*ratio)
        stds = rng.uniform(0.0, spec.class_std, values.size)
        noise = rng.standard_normal(codes.shape, dtype=np.float32)
        out[c] = (means[inverse] + stds[inverse] * noise.reshape(-1)).reshape(codes.shape)
    return out


def _zscore_head(image: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Per-channel z-score with the mean and std of the ``head`` voxels (all voxels if too few)."""
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        vals = image[c][head] if head.sum() > 1 else image[c].reshape(-1)
        std = float(vals.std())
        out[c] = (image[c] - float(vals.mean())) / (std if std > 1e-8 else 1.0)
    return out


@functools.lru_cache(maxsize=8)
def _bias_powers(shape: tuple[int, int, int], order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torchio's normalised coordinate meshes of ``shape`` raised to the powers 0..``order``, each
    ``(order + 1, *mesh)`` (read-only; the patches of a run share a few shapes)."""
    half_shape = np.array(shape) / 2
    meshes = np.asarray(np.meshgrid(*[np.arange(-n, n) + 0.5 for n in half_shape]))
    for mesh in meshes:
        mesh_max = mesh.max()
        if mesh_max > 0:
            mesh /= mesh_max
    powers = tuple(np.stack([mesh**k for k in range(order + 1)]) for mesh in meshes)
    for p in powers:
        p.setflags(write=False)
    return powers  # type: ignore[return-value]


def _bias_field(data: Any, order: int, coefficients: Sequence[float]) -> np.ndarray:
    """``torchio.transforms.BiasField.generate_bias_field``, bit for bit, from cached powers of the
    coordinates (the powers were four fifths of its cost, and of a synthesised patch a fifth)."""
    xp, yp, zp = _bias_powers(tuple(int(n) for n in data.shape[1:]), int(order))
    bias_field = np.zeros(tuple(int(n) for n in data.shape[1:]))
    i = 0
    for x_order in range(order + 1):
        for y_order in range(order + 1 - x_order):
            for z_order in range(order + 1 - (x_order + y_order)):
                new_map = coefficients[i] * xp[x_order] * yp[y_order] * zp[z_order]
                bias_field += np.transpose(new_map, (1, 0, 2))  # as torchio does
                i += 1
    return np.exp(bias_field).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _random_bias_field_class() -> type:
    """torchio's ``RandomBiasField`` drawing its field with :func:`_bias_field`: the same draws from
    torch's generator, the same field (torchio is imported here, lazily)."""
    import torchio as tio

    class BiasField(tio.BiasField):
        generate_bias_field = staticmethod(_bias_field)

    class RandomBiasField(tio.RandomBiasField):
        def apply_transform(self, subject):  # torchio's, building the BiasField above
            images = self.get_images_dict(subject)
            if not images:
                return subject
            coefficients = {name: self.get_params(self.order, self.coefficients_range) for name in images}
            return BiasField(coefficients=coefficients, order=dict.fromkeys(images, self.order),
                             **self._get_base_args())(subject)

    return RandomBiasField


class RandSynthesised(RandomizableTransform, MapTransform):
    """Replace ``image`` by an image synthesised from ``label`` (raw BISON values) with chance ``spec.prob``.

    Args:
        spec: the synthesis settings.
        spacing: the working grid's voxel size in mm.
        image_key, label_key: the dictionary keys; the image keeps its channel count (2).
    """

    def __init__(self, spec: SynthesisSpec, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                 image_key: str = "image", label_key: str = "label") -> None:
        MapTransform.__init__(self, [image_key, label_key])
        RandomizableTransform.__init__(self, spec.prob)
        self.spec, self.spacing = spec, tuple(float(s) for s in spacing)
        self.image_key, self.label_key = image_key, label_key
        mag = spec.elastic_magnitude_mm / min(self.spacing)
        self._elastic = Rand3DElasticd([label_key], sigma_range=(4.0, 6.0), magnitude_range=(mag * 20, mag * 40),
                                       prob=spec.elastic_prob, mode="nearest", padding_mode="border")

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self._elastic.set_random_state(seed, state)
        return self

    def _corrupt(self, image: torch.Tensor) -> torch.Tensor:
        import torchio as tio  # imported here: only synthesis needs it

        s, sp = self.spec, self.spacing
        steps = [
            tio.RandomBlur(std=(0.0, s.blur_mm), p=s.blur_prob, copy=False),
            tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.5, max(1.5, s.anisotropy)), p=s.anisotropy_prob,
                                 copy=False),
            _random_bias_field_class()(coefficients=s.bias, p=s.bias_prob, copy=False),
            tio.RandomGamma(log_gamma=(-s.log_gamma, s.log_gamma), p=s.gamma_prob, copy=False),
            tio.RandomNoise(std=(0.0, s.noise_std), p=s.noise_prob, copy=False),
        ]
        affine = np.diag([*sp, 1.0])
        chain = tio.Compose(steps, copy=False)
        # torchio draws from torch's generator: seed it from this transform's state (reproducible)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also reseed the GPU generators, which
            # fork_rng(devices=[]) does not restore, and without a GPU it queues those seeds with a
            # stack trace each (1.3 ms a patch, 4 % of a training batch's data)
            torch.default_generator.manual_seed(int(self.R.randint(0, 2**31 - 1)))
            return torch.cat([chain(tio.ScalarImage(tensor=image[c:c + 1].clamp_min(0), affine=affine)).data
                              for c in range(image.shape[0])])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = torch.as_tensor(d[self.label_key])
        warped = self._elastic({self.label_key: label.float()})[self.label_key]
        label = torch.as_tensor(warped).as_subclass(torch.Tensor).round().to(label.dtype)
        lab = label[0].cpu().numpy()
        rng = np.random.default_rng(int(self.R.randint(0, 2**31 - 1)))
        if self.spec.juxtacortical_prob > 0 and rng.random() < self.spec.juxtacortical_prob:
            lab = add_juxtacortical_lesions(lab, rng, self.spacing, self.spec.juxtacortical_mm, 1 + rng.poisson(2))
            label = torch.from_numpy(lab.astype(np.asarray(label).dtype))[None]
        distance = _background_distance(lab, self.spacing)  # one distance map for the shells and the head
        image = self._corrupt(torch.from_numpy(render_labels(lab, self.spec, rng, self.spacing, distance))).numpy()
        head = _background_codes(lab, self.spacing, np.array([self.spec.shells_mm[1] * 2]), distance) != 0
        d[self.image_key] = torch.from_numpy(_zscore_head(image.astype(np.float32), head))
        d[self.label_key] = label
        return d
