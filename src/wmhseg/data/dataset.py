"""Training and validation datasets: cached deterministic preprocessing, then random patches.

The deterministic part of each pipeline (loading, resampling, cropping, normalisation, padding,
sampling indices, the training target :meth:`LabelSpec.to_target` as uint8) runs once per scan
and is cached (``cache="memory"``: MONAI ``CacheDataset``; ``"disk"``: ``PersistentDataset``;
``"none"``: recomputed every time). Cached items hold plain tensors. The random part crops a
patch first and augments only the patch, with MONAI's metadata tracking off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset, get_track_meta, set_track_meta
from monai.transforms import (
    CastToTyped,
    Compose,
    DeleteItemsd,
    MapTransform,
    RandCropByPosNegLabeld,
    SpatialPadd,
)

from wmhseg.data.augment import AugmentSpec, augment_pose, augment_transforms, crop_margin_for
from wmhseg.data.preprocessing import PreprocessSpec, preprocess_transforms
from wmhseg.data.synthesis import RandSynthesised, SynthesisSpec
from wmhseg.errors import InputError
from wmhseg.labels import LabelSpec
from wmhseg.manifest import Scan

__all__ = [
    "CACHE_MODES",
    "scan_items",
    "LabelToTargetd",
    "SamplingIndicesd",
    "ToPlaind",
    "WithoutMeta",
    "train_transforms",
    "val_transforms",
    "make_dataset",
    "RepeatDataset",
]

CACHE_MODES = ("memory", "disk", "none")
FG_KEY, BG_KEY, AFFINE_KEY = "fg_idx", "bg_idx", "affine"


def scan_items(scans: Sequence[Scan]) -> list[dict[str, Any]]:
    """Dataset items (``t1``, ``flair``, ``label`` paths as strings, plus IDs and ``key``)."""
    return [{"t1": str(s.t1), "flair": str(s.flair), "label": str(s.label) if s.label else None,
             "subject_id": s.subject_id, "session_id": s.session_id, "key": s.key} for s in scans]


class LabelToTargetd(MapTransform):
    """Raw BISON values -> the network's integer target (``LabelSpec.to_target``), as ``dtype``
    (int64, or uint8 to cache whole volumes in a quarter of the memory of float labels)."""

    def __init__(self, label_spec: LabelSpec, keys="label", dtype: torch.dtype = torch.int64):
        super().__init__(keys)
        self.label_spec, self.dtype = label_spec, dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for k in self.key_iterator(d):
            x = d[k]
            target = torch.from_numpy(self.label_spec.to_target(np.asarray(torch.as_tensor(x).cpu()))).to(self.dtype)
            d[k] = MetaTensor(target, meta=x.meta) if isinstance(x, MetaTensor) else target
        return d


class SamplingIndicesd(MapTransform):
    """Flat voxel indices for balanced patch sampling, computed once per scan.

    ``fg_idx``: every WMH voxel (``label_spec.wmh_values``). ``bg_idx``: up to ``max_background``
    voxels drawn (seeded) from the other brain voxels (label > 0), or from all voxels when the
    label has no brain. A scan without WMH uses background indices for both, so the sampler
    never fails or warns on lesion-free scans.
    """

    def __init__(self, label_spec: LabelSpec, label_key: str = "label", max_background: int = 20000, seed: int = 0):
        super().__init__(label_key)
        self.label_spec, self.label_key = label_spec, label_key
        self.max_background, self.seed = int(max_background), int(seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        lab = np.asarray(torch.as_tensor(d[self.label_key]).cpu()).reshape(-1)
        wmh = self.label_spec.wmh_mask(lab)
        fg = np.flatnonzero(wmh)
        pool = np.flatnonzero((lab > 0) & ~wmh)
        if pool.size == 0:
            pool = np.flatnonzero(~wmh) if (~wmh).any() else np.arange(lab.size)
        rng = np.random.default_rng([self.seed, lab.size, int(fg.size)])
        bg = np.sort(rng.choice(pool, size=min(pool.size, self.max_background), replace=False))
        d[FG_KEY], d[BG_KEY] = (fg if fg.size else bg), bg
        return d


class ToPlaind(MapTransform):
    """MetaTensor -> plain tensor (cheaper to cache, pickle and collate); the first key's affine is
    kept under ``"affine"`` when ``keep_affine``."""

    def __init__(self, keys, keep_affine: bool = False):
        super().__init__(keys, allow_missing_keys=True)
        self.keep_affine = keep_affine

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for i, k in enumerate(self.key_iterator(d)):
            x = d[k]
            if isinstance(x, MetaTensor):
                if self.keep_affine and i == 0:
                    d[AFFINE_KEY] = x.affine.clone().double()
                d[k] = x.as_tensor()
        return d


class WithoutMeta(Compose):
    """A ``Compose`` whose transforms run with MONAI's metadata tracking off.

    Training patches need no affine or transform history, and tracking them (a MetaTensor per
    intermediate result, a record per crop and flip) costs more than the crops and flips
    themselves on small patches. Being a ``Compose`` (randomizable), it also marks where a
    cached dataset stops caching, and seeds reach its transforms as usual.
    """

    def __call__(self, input_, *args, **kwargs):
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(previous)


class _Finalised(MapTransform):
    """Plain, contiguous float32 image and int64 label tensors (no metadata) for collation.

    Patches are views into the cached volume until here; the copy made here means nothing
    downstream can alter the cache."""

    def __call__(self, data):
        d = dict(data)
        for k, dtype in (("image", torch.float32), ("label", torch.int64)):
            x = d[k].as_tensor() if isinstance(d[k], MetaTensor) else torch.as_tensor(d[k])
            d[k] = x.to(dtype).contiguous()
        return d


class WrapMeta:
    """Re-attach the cached affine: ``image``/``label`` become MetaTensors again.

    Deliberately not a MONAI ``Transform``: cached datasets stop caching at it, so the cache
    holds plain tensors (safe to save with ``weights_only`` loading) and this runs per access.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        affine = d.pop(AFFINE_KEY)
        for k in ("image", "label"):
            if k in d:
                d[k] = MetaTensor(d[k], affine=affine)
        return d


def train_transforms(
    preprocess_spec: PreprocessSpec,
    label_spec: LabelSpec,
    augment_spec: AugmentSpec,
    patch_size: Sequence[int],
    *,
    samples_per_volume: int = 2,
    pos_fraction: float = 0.5,
    seed: int = 0,
    augment: bool = True,
    synthesis: SynthesisSpec | None = None,
) -> Compose:
    """Cached preprocessing + padding + sampling indices, then random patch crop, its pose
    (:class:`~wmhseg.data.augment.RandPosed`, when ``augment``), synthesis from the label map
    (:class:`~wmhseg.data.synthesis.RandSynthesised`, when ``synthesis.prob > 0``), the training
    target, then the rest of the augmentation.

    Each item yields ``samples_per_volume`` dicts with ``"image"`` float32 (2, *crop) and
    ``"label"`` int64 (1, *crop) target values, where crop = ``patch_size`` when ``augment``.
    With ``augment=False`` the augmentation is left to the caller (e.g. on the GPU, see
    :class:`wmhseg.data.datamodule.WMHDataModule`) and crop = ``patch_size`` + 2 x
    :func:`crop_margin_for` (room for rotations). A patch is centred on a WMH voxel with
    probability ``pos_fraction`` and on another brain voxel otherwise. Volumes smaller than the
    crop are padded (image: edge values; label: 0).
    """
    if not 0 <= pos_fraction <= 1:
        raise InputError(f"data.pos_fraction={pos_fraction!r} must be in [0, 1]")
    if samples_per_volume < 1:
        raise InputError(f"data.samples_per_volume={samples_per_volume!r} must be >= 1")
    patch = tuple(int(p) for p in patch_size)
    crop = tuple(p + 2 * m for p, m in zip(patch, crop_margin_for(augment_spec, patch), strict=True))
    steps = list(preprocess_transforms(preprocess_spec, with_label=True).transforms)
    synthesise = synthesis is not None and synthesis.prob > 0
    pose = [augment_pose(augment_spec, patch)] if augment else []
    augmentation = augment_transforms(augment_spec, patch, pose=False) if augment else []
    # the cache holds raw BISON values when patches are synthesised from them, else the target
    to_target = LabelToTargetd(label_spec, dtype=torch.uint8)
    steps += [
        SpatialPadd(["image", "label"], spatial_size=crop, mode=("edge", "constant")),
        SamplingIndicesd(label_spec, seed=seed),
        CastToTyped("label", dtype=torch.uint8 if max(label_spec.known_values) <= 255 else torch.int16)
        if synthesise else to_target,
        ToPlaind(["image", "label"]),
        WithoutMeta([
            RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=crop, pos=pos_fraction,
                                   neg=1.0 - pos_fraction, num_samples=int(samples_per_volume),
                                   fg_indices_key=FG_KEY, bg_indices_key=BG_KEY),
            DeleteItemsd([FG_KEY, BG_KEY]),
            # the pose (a rotated and scaled patch, or the crop's centre) comes first, so that a
            # synthesised image is rendered on the patch itself rather than on the larger crop
            *pose,
            *([RandSynthesised(synthesis, preprocess_spec.spacing), to_target] if synthesise else []),
            *augmentation,
            _Finalised(["image", "label"]),
        ]),
    ]
    return Compose(steps)


def val_transforms(preprocess_spec: PreprocessSpec, label_spec: LabelSpec) -> Compose:
    """Whole preprocessed volumes: ``"image"`` MetaTensor (2, X, Y, Z) with its working-grid
    affine and ``"label"`` int64 MetaTensor (1, X, Y, Z) target values."""
    steps = list(preprocess_transforms(preprocess_spec, with_label=True).transforms)
    steps += [LabelToTargetd(label_spec), ToPlaind(["image", "label"], keep_affine=True), WrapMeta()]
    return Compose(steps)


class RepeatDataset(torch.utils.data.Dataset):
    """``times`` passes over ``dataset`` per epoch without caching anything twice."""

    def __init__(self, dataset, times: int):
        self.dataset, self.times = dataset, int(times)

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def cache_key(*parts: Any) -> str:
    """Short hash of the settings that determine cached content (for disk-cache folders)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_dataset(items: list[dict], transform: Compose, cache: str = "memory", *, cache_dir: str | Path | None = None,
                 num_workers: int = 0) -> Dataset:
    """A MONAI dataset of ``items`` with caching ``cache`` (one of :data:`CACHE_MODES`).

    ``cache_dir`` is required for ``"disk"`` (callers put the settings' :func:`cache_key` in it
    so changed settings never reuse stale files). ``num_workers`` threads build a memory cache.
    """
    if cache == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=max(1, int(num_workers)) if items else 0,
                            copy_cache=False, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise InputError("data.cache='disk' needs data.cache_dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(items, transform)
    raise InputError(f"data.cache={cache!r} is not one of {CACHE_MODES}")
