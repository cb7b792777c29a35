"""The deterministic preprocessing shared by training and inference.

:class:`PreprocessSpec` is stored in every checkpoint, so inference reproduces exactly the
geometry and intensities the network was trained on. :func:`preprocess_transforms` builds the
MONAI dictionary pipeline from it:

1. load T1, FLAIR (and label) with MONAI's ``NibabelReader`` (in parallel threads; MINC files
   through :func:`wmhseg.image_io.load_nifti`); NaN/inf voxels become 0;
2. check the T1's alignment with the FLAIR and, per ``spec.register_t1``, correct the T1's affine
   by a rigid registration (:mod:`wmhseg.registration`; the outcome goes to ``"t1_alignment"``);
3. resample the T1 onto the FLAIR grid through the two affines (skipped when the grids are the
   same) and stack ``[T1, FLAIR]`` into ``"image"`` with the FLAIR's geometry;
4. orient to ``spec.orientation`` (axis flips/permutations, no interpolation);
5. crop to the head's bounding box plus ``crop_margin`` working voxels (done before resampling,
   so resampling touches only the head);
6. resample to ``spec.spacing`` (image trilinear, label nearest);
7. per-channel clip + z-score over the head.

The output ``"image"`` is a ``MetaTensor`` (2, X, Y, Z) whose ``.affine`` is the true
voxel-to-world (RAS mm) mapping of the working grid, so predictions map back to any native grid
through affines alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    LoadImage,
    MapTransform,
    Orientationd,
    ResampleToMatch,
    Spacingd,
)

from wmhseg.data.structured import Settings
from wmhseg.errors import InputError, ScanError, WmhsegError
from wmhseg.geometry import voxel_sizes
from wmhseg.image_io import is_minc, load_nifti
from wmhseg.registration import REGISTER_MODES, align_t1

__all__ = ["PreprocessSpec", "preprocess_transforms", "head_mask", "head_bbox", "PairToImaged", "crop_head",
           "head_box_mask", "NormaliseHeadd", "LoadFilesd", "Pipeline", "meta_tensor", "RegisterT1d"]

_NORMALISATIONS = ("zscore", "none")


@dataclass(frozen=True)
class PreprocessSpec(Settings):
    """Geometry and intensity preprocessing of a T1w + FLAIR pair.

    Args:
        spacing: target voxel size in mm (x, y, z) after orienting to ``orientation``.
        orientation: axis codes of the working grid (``"RAS"``).
        normalisation: ``"zscore"`` per channel over the head (voxels above the head
            threshold), after clipping to ``clip_percentiles``; or ``"none"``.
        clip_percentiles: lower/upper intensity percentiles inside the head used for clipping.
        crop_foreground: crop to the head's bounding box (plus ``crop_margin`` voxels); slices
            holding under 1 % of the fullest slice's head voxels are ignored (stray noise).
        crop_margin: margin around the head's bounding box, in working-grid voxels
            (``crop_margin * spacing`` mm; the crop happens before resampling).
        head_threshold: a voxel belongs to the head when its FLAIR intensity exceeds this
            fraction of the FLAIR's 99th percentile.
        register_t1: T1-to-FLAIR alignment: ``"never"`` (trust the affines), ``"auto"`` (check;
            register rigidly when the head moved more than ``register_tolerance_mm``) or
            ``"always"`` (register); see :mod:`wmhseg.registration`.
        register_tolerance_mm: the mean head displacement above which ``auto`` registers.
    """

    SECTION: ClassVar[str] = "preprocessing"

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"
    normalisation: str = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    crop_foreground: bool = True
    crop_margin: int = 4
    head_threshold: float = 0.05
    register_t1: str = "never"
    register_tolerance_mm: float = 1.0

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise InputError(f"preprocessing.spacing={self.spacing!r} must be three positive numbers (mm)")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "clip_percentiles", tuple(float(p) for p in self.clip_percentiles))
        if self.normalisation not in _NORMALISATIONS:
            raise InputError(f"preprocessing.normalisation={self.normalisation!r} is not one of {_NORMALISATIONS}")
        if len(self.orientation) != 3:
            raise InputError(f"preprocessing.orientation={self.orientation!r} must be three axis codes, e.g. 'RAS'")
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"preprocessing.clip_percentiles={self.clip_percentiles!r} must satisfy 0 <= lo < hi <= 100")
        if self.crop_margin < 0:
            raise InputError(f"preprocessing.crop_margin={self.crop_margin!r} must be >= 0")
        if self.register_t1 not in REGISTER_MODES:
            raise InputError(f"preprocessing.register_t1={self.register_t1!r} is not one of {REGISTER_MODES}")
        if not self.register_tolerance_mm > 0:
            raise InputError(f"preprocessing.register_tolerance_mm={self.register_tolerance_mm!r} must be > 0")


_MAX_SAMPLES = 400_000  # percentiles are estimated on a regular subsample of this many voxels


def _sample(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    flat = values.reshape(-1)
    step = max(1, flat.size // _MAX_SAMPLES)
    sub = flat[::step]
    return sub if mask is None else sub[mask.reshape(-1)[::step]]


def head_mask(flair: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean head mask: FLAIR above ``threshold`` x its 99th percentile (3-D array)."""
    p99 = float(np.percentile(_sample(flair), 99))
    return flair > threshold * p99


def head_bbox(mask: np.ndarray, min_fraction: float = 0.01) -> list[tuple[int, int]] | None:
    """Bounding box ``[(start, stop)] * 3`` of ``mask`` ignoring sparse noise.

    Along each axis, slices holding fewer than ``min_fraction`` of the fullest slice's count are
    ignored, so isolated noise voxels above the threshold do not stretch the box. ``None`` for
    an empty mask.
    """
    box = []
    for axis in range(3):
        profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        keep = np.flatnonzero(profile > min_fraction * profile.max()) if profile.max() > 0 else []
        if len(keep) == 0:
            return None
        box.append((int(keep[0]), int(keep[-1]) + 1))
    return box


class RegisterT1d(MapTransform):
    """Check / correct the ``"t1"`` MetaTensor's alignment with ``"flair"`` (:func:`align_t1`).

    A registered T1 gets the corrected affine (its voxels are untouched; the next step resamples
    it through that affine). ``"t1_alignment"`` receives :meth:`Alignment.record` (plain values).
    """

    def __init__(self, mode: str, tolerance_mm: float = 1.0, t1_key: str = "t1", flair_key: str = "flair"):
        super().__init__([t1_key, flair_key])
        self.mode, self.tolerance_mm, self.t1_key, self.flair_key = mode, tolerance_mm, t1_key, flair_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        t1, flair = d[self.t1_key], d[self.flair_key]
        try:
            result = align_t1(t1.as_tensor()[0].numpy(), t1.affine.numpy(), flair.as_tensor()[0].numpy(),
                              flair.affine.numpy(), mode=self.mode, tolerance_mm=self.tolerance_mm)
        except ScanError as exc:
            raise ScanError(f"{t1.meta.get('filename_or_obj', 'T1')}: {exc}") from exc
        if result.registered:
            meta = {k: v for k, v in t1.meta.items() if k != "affine"}
            d[self.t1_key] = MetaTensor(t1.as_tensor(), affine=torch.as_tensor(result.t1_affine), meta=meta)
        d["t1_alignment"] = result.record()
        return d


class PairToImaged(MapTransform):
    """Resample ``"t1"`` onto the ``"flair"`` grid and stack them into ``"image"`` (2, X, Y, Z).

    The image keeps the FLAIR's geometry and metadata; the ``t1``/``flair`` keys are removed.
    Grids that already agree (shape and affine within 1e-3 mm) are not resampled.
    """

    def __init__(self, t1_key: str = "t1", flair_key: str = "flair", out_key: str = "image"):
        super().__init__([t1_key, flair_key])
        self.t1_key, self.flair_key, self.out_key = t1_key, flair_key, out_key
        self._resample = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        t1, flair = d.pop(self.t1_key), d.pop(self.flair_key)
        same = tuple(t1.shape[1:]) == tuple(flair.shape[1:]) and torch.allclose(
            t1.affine.double(), flair.affine.double(), atol=1e-3)
        if not same:
            t1 = self._resample(t1, img_dst=flair)
        image = torch.cat([t1.as_tensor().float(), flair.as_tensor().float()], dim=0)
        d[self.out_key] = MetaTensor(image, meta=dict(flair.meta))
        return d


def head_box_mask(flair: MetaTensor, threshold: float, margin_mm: tuple[float, float, float]) -> torch.Tensor:
    """The head's bounding box plus ``margin_mm`` (clipped to the grid) as a mask, for
    ``CropForegroundd(select_fn=...)``.

    ``flair`` is the (1, X, Y, Z) FLAIR channel; the head is :func:`head_mask`, its box
    :func:`head_bbox` (sparse noise slices ignored). The margin is converted to voxels of this
    grid (``ceil(margin_mm / voxel size)``), which MONAI's fixed voxel ``margin`` cannot express,
    so the box comes back already widened and the crop uses ``margin=0``.

    Raises:
        ScanError: no head (no voxel above ``threshold`` x the 99th percentile).
    """
    box = head_bbox(head_mask(np.asarray(flair[0]), threshold))
    if box is None:
        name = flair.meta.get("filename_or_obj", "FLAIR") if isinstance(flair, MetaTensor) else "FLAIR"
        raise ScanError(f"{name}: no head found (no voxel above {threshold} x the 99th percentile)")
    margin = np.ceil(np.asarray(margin_mm, dtype=float) / voxel_sizes(flair.affine) - 1e-6).astype(int)
    out = torch.zeros(flair.shape, dtype=torch.bool)
    region = tuple(slice(max(0, b0 - m), b1 + m) for (b0, b1), m in zip(box, margin, strict=True))
    out[(slice(None), *region)] = True
    return out


def crop_head(keys, *, threshold: float, margin_mm: tuple[float, float, float]) -> CropForegroundd:
    """MONAI ``CropForegroundd`` to the head's box of the FLAIR (channel 1 of ``"image"``) plus
    ``margin_mm`` on each side (:func:`head_box_mask`); ``keys`` share the image's grid."""
    select = partial(head_box_mask, threshold=threshold, margin_mm=tuple(float(m) for m in margin_mm))
    return CropForegroundd(keys, source_key="image", select_fn=select, channel_indices=1, margin=0,
                           allow_smaller=True, start_coord_key=None, end_coord_key=None, allow_missing_keys=True)


class NormaliseHeadd(MapTransform):
    """Per-channel clip to head percentiles, then z-score with the head's mean and std.

    The head is found on channel ``channel`` (FLAIR) as in :func:`head_box_mask`. Voxels outside
    the head are transformed with the same numbers (they become negative, not zero).
    """

    # Hand-written because neither library normalises this way. MONAI's NormalizeIntensity masks
    # only nonzero voxels (background noise joins the statistics) and leaves the rest unscaled;
    # torchio's ZNormalization takes a mask but has no percentile clip inside it and uses the
    # n-1 std over every masked voxel. On a 160x192x160 head with background noise, clipped to the
    # head percentiles, the outputs differ from this one by up to 3.56 (MONAI, nonzero) and 0.21 (torchio,
    # head mask) z-units; checkpoints store this normalisation, so it stays.

    def __init__(self, keys="image", channel: int = 1, threshold: float = 0.05,
                 clip_percentiles: tuple[float, float] = (0.5, 99.5)):
        super().__init__(keys)
        self.channel, self.threshold, self.clip = channel, threshold, tuple(clip_percentiles)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = np.asarray(img.detach().cpu().numpy(), dtype=np.float32)
            mask = head_mask(arr[self.channel], self.threshold)
            out = np.empty_like(arr)
            for c in range(arr.shape[0]):
                vals = _sample(arr[c], mask)
                if vals.size < 2:
                    vals = _sample(arr[c])
                lo, hi = np.percentile(vals, self.clip)
                clipped = np.clip(vals, lo, hi)
                mean, std = float(clipped.mean()), float(clipped.std())
                np.clip(arr[c], lo, hi, out=out[c])
                out[c] -= mean
                out[c] /= std if std > 1e-8 else 1.0
            d[key] = MetaTensor(torch.from_numpy(out), meta=img.meta, applied_operations=img.applied_operations)
        return d


def meta_tensor(data: np.ndarray, affine: np.ndarray, path) -> MetaTensor:
    """A channel-first MetaTensor as MONAI's ``LoadImaged(NibabelReader, ensure_channel_first)`` makes it."""
    meta = {"filename_or_obj": str(path), "original_affine": np.array(affine, dtype=np.float64),
            "spatial_shape": np.asarray(data.shape), "space": "RAS", "original_channel_dim": "no_channel"}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(data))[None], affine=torch.as_tensor(affine), meta=meta)


class LoadFilesd(MapTransform):
    """Load NIfTI files with MONAI's ``NibabelReader`` (MINC files with :func:`wmhseg.image_io.load_nifti`,
    which MONAI's readers cannot open), the keys in parallel threads.

    Decompressing ``.nii.gz`` dominates preprocessing time and zlib releases the GIL, so the
    T1, FLAIR and label load concurrently. NaN/infinite voxels of ``finite_keys`` become 0.
    Output: channel-first float32 ``MetaTensor`` per key.
    """

    def __init__(self, keys, finite_keys=("t1", "flair"), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.finite_keys = tuple(finite_keys)
        self._load = LoadImage(reader=NibabelReader(), image_only=True, ensure_channel_first=True, dtype=np.float32)

    def _one(self, key, path):
        if is_minc(path):
            img = meta_tensor(*load_nifti(path), path)
        else:
            try:
                img = self._load(path)
            except Exception as exc:  # MONAI wraps nibabel's many error types
                cause = exc.__cause__ or exc
                raise ScanError(f"{path}: cannot read the NIfTI file ({type(cause).__name__}: {cause})") from exc
        if key in self.finite_keys and not np.isfinite(float(img.as_tensor().sum(dtype=torch.float64))):
            img = MetaTensor(torch.nan_to_num(img.as_tensor(), nan=0.0, posinf=0.0, neginf=0.0), meta=img.meta)
        return img

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if len(keys) == 1:
            d[keys[0]] = self._one(keys[0], d[keys[0]])
            return d
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            loaded = list(pool.map(self._one, keys, [d[k] for k in keys]))
        d.update(zip(keys, loaded, strict=True))
        return d


class Pipeline(Compose):
    """A ``Compose`` that re-raises wmhseg's own errors (ScanError ...) instead of MONAI's
    ``RuntimeError("applying transform ...")`` wrapper, so callers can catch them by type."""

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, WmhsegError):
                cause = cause.__cause__
            if cause is not None:
                raise cause from exc
            raise


def preprocess_transforms(spec: PreprocessSpec, *, with_label: bool) -> Pipeline:
    """The deterministic MONAI pipeline of ``spec`` (see the module docstring for the steps).

    Args:
        spec: the preprocessing settings (stored in checkpoints).
        with_label: also load ``"label"`` and carry it through the geometry steps (nearest
            neighbour); its values stay raw BISON values (int16).

    Input: a dict with ``"t1"`` and ``"flair"`` NIfTI file paths (and ``"label"``), any
    orientation and voxel size; extra keys pass through. Output: ``"image"`` float32 MetaTensor
    (2, X, Y, Z), channels [T1, FLAIR], and ``"label"`` int16 MetaTensor (1, X, Y, Z).

    Example:
        >>> tf = preprocess_transforms(PreprocessSpec(), with_label=False)
        >>> out = tf({"t1": "t1.nii.gz", "flair": "flair.nii.gz"})    # doctest: +SKIP
        >>> out["image"].shape, out["image"].affine                   # doctest: +SKIP
    """
    geo = ["image", "label"] if with_label else ["image"]
    files = ["t1", "flair", "label"] if with_label else ["t1", "flair"]
    steps: list = [
        LoadFilesd(files),
        *([RegisterT1d(spec.register_t1, spec.register_tolerance_mm)] if spec.register_t1 != "never" else []),
        PairToImaged(),
        Orientationd(geo, axcodes=spec.orientation, labels=None),
    ]
    if spec.crop_foreground:
        margin = tuple(spec.crop_margin * s for s in spec.spacing)
        steps.append(crop_head(geo, threshold=spec.head_threshold, margin_mm=margin))
    steps.append(Spacingd(geo, pixdim=spec.spacing, mode=("bilinear", "nearest")[: len(geo)],
                          dtype=torch.float32))
    if spec.normalisation == "zscore":
        steps.append(NormaliseHeadd("image", threshold=spec.head_threshold, clip_percentiles=spec.clip_percentiles))
    if with_label:
        steps.append(CastToTyped("label", dtype=torch.int16))
    return Pipeline(steps)

