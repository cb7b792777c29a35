"""Lightning data module: manifest (or synthetic cohort) -> subject split -> cached loaders.

``prepare_data`` (one process per node) runs the configured data writers: the generator of the
synthetic cohort when no manifest is given, and of the independent validation family. The writers
come from the config (``_target_`` + ``_partial_: true``), so this package never imports a
generator: data flows from ``wmhseg.synth`` into files, and from files into here.

``setup`` (every process) reads and validates the manifest, splits it by subject with a fixed
seed (so all DDP ranks agree) and builds cached datasets. Lightning adds the distributed sampler.

Example (Hydra)::

    data:
      _target_: wmhseg.data.datamodule.WMHDataModule
      manifest: /data/cohort/manifest.csv
      patch_size: [96, 96, 96]
      num_workers: 8
      # or, instead of a manifest, a generator writing one into data_dir:
      synthetic: {_target_: wmhseg.synth.images.write_dataset, _partial_: true, n_subjects: 8}
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from monai.data import DataLoader
from monai.transforms import Compose

from wmhseg.data.augment import AugmentSpec, augment_transforms, pose_transform
from wmhseg.data.dataset import (
    CACHE_MODES,
    RepeatDataset,
    cache_key,
    make_dataset,
    scan_items,
    train_transforms,
    val_transforms,
)
from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.data.split import split_by_subject
from wmhseg.data.structured import from_settings
from wmhseg.data.synthesis import SynthesisSpec
from wmhseg.errors import InputError, check_known_keys
from wmhseg.labels import LabelSpec
from wmhseg.manifest import Scan, read_manifest, validate_scans
from wmhseg.plain import to_plain

__all__ = ["WMHDataModule"]


Writer = Callable[[Path], Any]  # writes a data set (and its manifest.csv) into the folder given


def _check_writer(writer: Writer | None, name: str) -> Writer | None:
    """``writer`` itself, once its bound settings are known to its function ("did you mean" otherwise)."""
    if writer is None:
        return None
    if not callable(writer):
        raise InputError(f"data.{name} must be a data writer (_target_: <function>, _partial_: true), got {writer!r}")
    if isinstance(writer, functools.partial):
        params = inspect.signature(writer.func).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            check_known_keys(writer.keywords, list(params)[1:], f"data.{name}")
    return writer


_AUGMENT_ON = ("auto", "workers", "device")
_VALIDATE = ("full", "headers", "none")


def _check_settings(patch_size: tuple[int, ...], cache: str, cache_dir: str | None, augment_on: str, validate: str,
                    pos_fraction: float, num_workers: int, **counts: int) -> None:
    """Raise :class:`InputError` naming the first ``data.*`` setting out of its range."""
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise InputError(f"data.patch_size={list(patch_size)!r} must be three positive sizes")
    for name, value, allowed in (("cache", cache, CACHE_MODES), ("augment_on", augment_on, _AUGMENT_ON),
                                 ("validate", validate, _VALIDATE)):
        if value not in allowed:
            raise InputError(f"data.{name}={value!r} is not one of {allowed}")
    if cache == "disk" and not cache_dir:
        raise InputError("data.cache='disk' needs data.cache_dir")
    for name, value in counts.items():
        if int(value) < 1:
            raise InputError(f"data.{name}={value!r} must be >= 1")
    if int(num_workers) < 0:
        raise InputError(f"data.num_workers={num_workers!r} must be >= 0")
    if not 0 <= pos_fraction <= 1:
        raise InputError(f"data.pos_fraction={pos_fraction!r} must be in [0, 1]")


class WMHDataModule(L.LightningDataModule):
    """Training patches and whole validation volumes from a manifest of T1w/FLAIR/label scans.

    Args:
        manifest: CSV manifest or BIDS folder with labels. ``None``: ``synthetic`` writes one.
        synthetic: a data writer called as ``synthetic(data_dir)`` when ``manifest`` is ``None``,
            e.g. ``functools.partial(wmhseg.synth.images.write_dataset, n_subjects=8)`` (in a
            config: ``_target_: wmhseg.synth.images.write_dataset``, ``_partial_: true``).
        data_dir: where the synthetic cohort is written (reused when its settings are unchanged).
        preprocessing: :class:`PreprocessSpec` settings (stored in checkpoints by the model).
        labels: :class:`LabelSpec` settings (``mode``, ``wmh_values``, ``known_values``).
        patch_size: training patch size (working-grid voxels).
        batch_size: volumes per training batch; each gives ``samples_per_volume`` patches, so a
            batch holds ``batch_size * samples_per_volume`` patches.
        samples_per_volume: patches drawn per volume visit.
        pos_fraction: share of patches centred on a WMH voxel (the rest on other brain voxels).
        val_fraction: share of subjects held out for validation (0: no validation).
        n_folds, fold: k-fold cross-validation by subject instead of ``val_fraction``.
        seed: split and sampling seed.
        cache: ``"memory"`` (CacheDataset), ``"disk"`` (PersistentDataset in ``cache_dir``) or
            ``"none"``.
        cache_dir: disk cache folder (a subfolder per settings hash is used).
        num_workers: DataLoader workers (persistent when > 0); also threads building the cache.
        augmentation: :class:`~wmhseg.data.augment.AugmentSpec` settings.
        synthesis: :class:`~wmhseg.data.synthesis.SynthesisSpec` settings: with ``prob`` > 0
            that share of training patches is synthesised from its label map.
        independent: a data writer called as ``independent(data_dir / "independent")``, e.g.
            ``functools.partial(wmhseg.synth.independent.write_family, n_subjects=4, seed=1)``:
            also validate on the scans it writes (an independent phantom family); logged as
            ``val_independent/*`` beside ``val/*``.
        augment_on: ``"workers"`` (in the DataLoader), ``"device"`` (after the batch reaches the
            accelerator, in ``on_after_batch_transfer``: much cheaper on a GPU) or ``"auto"``
            (device on GPU, workers otherwise).
        train_repeats: passes over the training scans per epoch (small cohorts).
        validate: check every scan before training: ``"full"`` (read all data: truncation,
            label values), ``"headers"`` or ``"none"``.
        pin_memory: pin host memory (default: when CUDA is available).

    Attributes:
        preprocess_spec (PreprocessSpec), label_spec (LabelSpec), augment_spec (AugmentSpec),
        train_scans / val_scans (lists of :class:`~wmhseg.manifest.Scan`) after ``setup``.
    """

    def __init__(
        self,
        manifest: str | None = None,
        synthetic: Writer | None = None,
        data_dir: str = "data/synthetic",
        preprocessing: Mapping[str, Any] | None = None,
        labels: Mapping[str, Any] | None = None,
        patch_size: Sequence[int] = (96, 96, 96),
        batch_size: int = 2,
        samples_per_volume: int = 2,
        pos_fraction: float = 0.5,
        val_fraction: float = 0.2,
        n_folds: int | None = None,
        fold: int | None = None,
        seed: int = 0,
        cache: str = "memory",
        cache_dir: str | None = None,
        num_workers: int = 0,
        augmentation: Mapping[str, Any] | None = None,
        synthesis: Mapping[str, Any] | None = None,
        independent: Writer | None = None,
        augment_on: str = "auto",
        train_repeats: int = 1,
        validate: str = "full",
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.preprocess_spec = PreprocessSpec.from_dict(to_plain(preprocessing or {}))
        self.label_spec = from_settings(LabelSpec, labels, "labels")
        self.augment_spec = AugmentSpec.from_dict(to_plain(augmentation or {}))
        self.synthesis_spec = SynthesisSpec.from_dict(to_plain(synthesis or {}))
        self.synthetic, self.independent = _check_writer(synthetic, "synthetic"), _check_writer(independent, "independent")
        if manifest is None and synthetic is None:
            raise InputError("data.manifest is not set, and no data.synthetic writer makes one")
        self.patch_size = tuple(int(p) for p in patch_size)
        _check_settings(self.patch_size, cache, cache_dir, augment_on, validate, pos_fraction, num_workers,
                        batch_size=batch_size, samples_per_volume=samples_per_volume, train_repeats=train_repeats)
        self.manifest = None if manifest is None else str(manifest)
        self.data_dir = data_dir
        self.batch_size, self.samples_per_volume = int(batch_size), int(samples_per_volume)
        self.pos_fraction, self.val_fraction = float(pos_fraction), float(val_fraction)
        self.n_folds, self.fold, self.seed = n_folds, fold, int(seed)
        self.cache, self.cache_dir, self.num_workers = cache, cache_dir, int(num_workers)
        self.augment_on, self.train_repeats, self.validate = augment_on, int(train_repeats), validate
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.train_scans: list[Scan] = []
        self.val_scans: list[Scan] = []
        self._train_ds = self._val_ds = self._independent_ds = None
        self._device_augment: Compose | None = None
        self._augment_device = False

    # -- data preparation -------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        """The manifest in use: ``manifest`` or ``data_dir/manifest.csv`` (synthetic)."""
        return Path(self.manifest) if self.manifest is not None else Path(self.data_dir) / "manifest.csv"

    def prepare_data(self) -> None:
        """Run the data writers (once per node; a writer reuses a set whose settings are unchanged)."""
        if self.manifest is None:
            self.synthetic(Path(self.data_dir))
        if self.independent is not None:
            self.independent(Path(self.data_dir) / "independent")

    def _use_device_augment(self) -> bool:
        if self.augment_on != "auto":
            return self.augment_on == "device"
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return False
        root = getattr(trainer, "strategy", None)
        device = getattr(root, "root_device", torch.device("cpu"))
        return device.type != "cpu"

    def setup(self, stage: str | None = None) -> None:
        """Read, validate and split the manifest; build the (cached) datasets. Idempotent."""
        if self._train_ds is not None:
            return
        scans = read_manifest(self.manifest_path)
        if self.validate != "none":
            validate_scans(scans, self.label_spec, read_data=self.validate == "full", require_label=True)
        elif any(s.label is None or s.problem for s in scans):
            bad = next(s for s in scans if s.label is None or s.problem)
            raise InputError(f"{self.manifest_path}: {bad.describe()}: {bad.problem or 'training needs a label'}")
        self.train_scans, self.val_scans = split_by_subject(scans, self.val_fraction, self.seed, self.n_folds, self.fold)
        if not self.train_scans:
            raise InputError("no training scans left after the validation split")
        self._augment_device = self._use_device_augment()
        if self._augment_device and self.augment_spec.enabled:
            self._device_augment = Compose(augment_transforms(self.augment_spec, self.patch_size))
        train_tf = train_transforms(self.preprocess_spec, self.label_spec, self.augment_spec, self.patch_size,
                                    samples_per_volume=self.samples_per_volume, pos_fraction=self.pos_fraction,
                                    seed=self.seed, augment=not self._augment_device, synthesis=self.synthesis_spec)
        key = cache_key(self.preprocess_spec.to_dict(), self.label_spec.to_dict(), self.augment_spec.to_dict(),
                        self.patch_size, self.seed, self.synthesis_spec.prob > 0)
        cache_dir = Path(self.cache_dir) / key if self.cache_dir else None
        self._train_ds = make_dataset(scan_items(self.train_scans), train_tf, self.cache,
                                      cache_dir=cache_dir and cache_dir / "train", num_workers=self.num_workers)
        self._val_ds = make_dataset(scan_items(self.val_scans), val_transforms(self.preprocess_spec, self.label_spec),
                                    self.cache, cache_dir=cache_dir and cache_dir / "val", num_workers=self.num_workers)
        if self.independent is not None:
            phantoms = read_manifest(Path(self.data_dir) / "independent" / "manifest.csv")
            self._independent_ds = make_dataset(scan_items(phantoms), val_transforms(self.preprocess_spec,
                                                self.label_spec), "memory", num_workers=self.num_workers)

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, dataset, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          persistent_workers=num_workers > 0, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        """Batches ``{"image": float32 (B*S, 2, *patch), "label": int64 (B*S, 1, *patch), ...}``
        (B = batch_size, S = samples_per_volume). With device augmentation the crops are larger
        by the rotation margin until :meth:`on_after_batch_transfer` cuts them to ``patch_size``."""
        if self._train_ds is None:
            self.setup("fit")
        ds = RepeatDataset(self._train_ds, self.train_repeats) if self.train_repeats > 1 else self._train_ds
        return self._loader(ds, self.batch_size, True, self.num_workers)

    def val_dataloader(self):
        """Whole volumes, batch 1: ``"image"`` MetaTensor (1, 2, X, Y, Z) with ``.affine``,
        ``"label"`` int64 (1, 1, X, Y, Z) targets, ``"key"``. ``[]`` when nothing is held out."""
        if self._val_ds is None:
            self.setup("fit")
        if len(self._val_ds) == 0:
            return []
        loader = self._loader(self._val_ds, 1, False, min(self.num_workers, 2))
        if self._independent_ds is None:
            return loader
        return [loader, self._loader(self._independent_ds, 1, False, 0)]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the accelerator (``augment_on`` device/auto on GPU)."""
        trainer = getattr(self, "trainer", None)
        if not self._augment_device or trainer is None or not trainer.training or not isinstance(batch, dict):
            return batch
        if self._device_augment is None:  # augmentation disabled: only cut the crop to size
            self._device_augment = Compose([pose_transform(["image", "label"], self.patch_size)])
        images, labels = [], []
        for img, lab in zip(batch["image"], batch["label"], strict=True):
            out = self._device_augment({"image": img, "label": lab})
            images.append(torch.as_tensor(out["image"]).float())
            labels.append(torch.as_tensor(out["label"]).long())
        return {**batch, "image": torch.stack(images), "label": torch.stack(labels)}
