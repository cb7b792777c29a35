"""The LightningModule: patch training and whole-volume sliding-window validation of a MONAI network.

The network, loss, optimizer and scheduler are built elsewhere (from ``_target_`` configs) and
injected, so swapping UNet for DynUNet or SegResNet never touches this module. What inference
needs later (the resolved network config, the preprocessing and label specs, sliding-window
defaults, the training config) is written under ``checkpoint["wmhseg"]`` in plain types, and
the module's hyper-parameters are plain types too: the whole Lightning checkpoint loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from torch import nn

import wmhseg
from wmhseg.checkpoint import FORMAT_VERSION, META_KEY, build_network
from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.errors import InputError
from wmhseg.labels import LabelSpec
from wmhseg.metrics import best_threshold, dice_by_threshold, segmentation_metrics
from wmhseg.plain import to_plain
from wmhseg.schema import METRIC_NAMES

__all__ = ["WMHSegModule", "check_inference_settings", "INFERENCE_DEFAULTS", "THRESHOLD_GRID"]

INFERENCE_DEFAULTS: dict[str, Any] = {
    "roi_size": [96, 96, 96],
    "sw_batch_size": 2,
    "overlap": 0.25,
    "mode": "gaussian",
    "threshold": 0.5,
}
_BLEND_MODES = ("gaussian", "constant")
# the WMH thresholds a calibrating module scores on the held-out subjects: 0.2, 0.25, ..., 0.9
THRESHOLD_GRID = tuple(round(0.2 + 0.05 * i, 2) for i in range(15))
# metric prefixes of the validation loaders: the held-out subjects, then the independent phantoms
VAL_PREFIXES = ("val", "val_independent")


def check_inference_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate sliding-window settings and fill in defaults (``INFERENCE_DEFAULTS``).

    Args:
        settings: ``roi_size`` (three positive ints), ``sw_batch_size`` (>= 1), ``overlap``
            (0 <= overlap < 1), ``mode`` (``"gaussian"`` or ``"constant"``), ``threshold``
            (0 < threshold < 1, applied to the WMH probability).

    Raises:
        InputError: an unknown key or a bad value, named in the message.
    """
    given = to_plain(dict(settings or {}), "inference")
    unknown = sorted(set(given) - set(INFERENCE_DEFAULTS))
    if unknown:
        raise InputError(f"unknown inference settings {unknown}; known: {sorted(INFERENCE_DEFAULTS)}")
    out = {**INFERENCE_DEFAULTS, **given}
    roi = out["roi_size"]
    if isinstance(roi, int):
        roi = [roi] * 3
    if not isinstance(roi, list) or len(roi) != 3 or not all(isinstance(r, int) and r > 0 for r in roi):
        raise InputError(f"inference.roi_size={out['roi_size']!r} must be three positive integers")
    out["roi_size"] = list(roi)
    if not isinstance(out["sw_batch_size"], int) or out["sw_batch_size"] < 1:
        raise InputError(f"inference.sw_batch_size={out['sw_batch_size']!r} must be a positive integer")
    if not 0 <= float(out["overlap"]) < 1:
        raise InputError(f"inference.overlap={out['overlap']!r} must satisfy 0 <= overlap < 1")
    if out["mode"] not in _BLEND_MODES:
        raise InputError(f"inference.mode={out['mode']!r} is not one of {_BLEND_MODES}")
    if not 0 < float(out["threshold"]) < 1:
        raise InputError(f"inference.threshold={out['threshold']!r} must satisfy 0 < threshold < 1")
    out["overlap"], out["threshold"] = float(out["overlap"]), float(out["threshold"])
    return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _tensor(x: Any) -> torch.Tensor:
    """A plain tensor (MetaTensor metadata tracking only slows the network and window loop down)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _spacing(image: torch.Tensor, fallback: tuple[float, float, float]) -> tuple[float, ...]:
    """Voxel size (mm) from a MetaTensor's affine, else ``fallback``."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return fallback
    a = torch.as_tensor(affine, dtype=torch.float64).reshape(-1, 4, 4)[0]
    return tuple(float(s) for s in torch.linalg.norm(a[:3, :3], dim=0))


class WMHSegModule(L.LightningModule):
    """Train a segmentation network on patches; validate on whole volumes by sliding window.

    Args:
        net: the network (``in_channels`` 2: T1, FLAIR; ``out_channels`` = ``LabelSpec.num_classes``).
            Built from ``net_config`` when ``None``.
        net_config: the resolved ``_target_`` config of ``net`` (plain types, ``out_channels``
            included); stored in checkpoints so that inference rebuilds the same network.
        loss: loss on ``(logits, target)`` with targets ``(B, 1, ...)`` integers; default
            ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        optimizer: ``functools.partial`` of an optimizer class missing only ``params``;
            default AdamW (lr 1e-3).
        scheduler: ``functools.partial`` of a learning-rate scheduler missing only ``optimizer``, or None.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler follows.
        preprocessing: :meth:`PreprocessSpec.to_dict` of the data the network is trained on.
        labels: :meth:`LabelSpec.to_dict` of the training targets.
        inference: sliding-window settings (see :func:`check_inference_settings`), used for
            validation and stored as inference defaults.
        config_yaml: the full training configuration as YAML, stored for provenance.
        channels_last: train and validate in ``torch.channels_last_3d`` memory format, oneDNN's
            fastest for CPU convolutions; ``"auto"``: on a CPU device. Only the layout of the
            tensors changes, not what is computed (the results agree to rounding).
        calibrate_threshold: at each validation, score the held-out subjects (the first loader)
            at every threshold of ``THRESHOLD_GRID`` and store the one with the best mean Dice in
            the checkpoints written after it, as their inference threshold (logged as
            ``val/threshold`` and ``val/dice_calibrated``). ``val/dice`` and the checkpoint choice
            keep ``inference.threshold``.

    Validation batches are whole preprocessed volumes, batch size 1: ``{"image": (1, 2, X, Y, Z),
    "label": (1, 1, X, Y, Z) target values}``. The WMH mask is ``sum of the WMH channels'
    probabilities > threshold``; per scan, :func:`wmhseg.metrics.segmentation_metrics` gives Dice,
    HD95 (mm), AVD (%), lesion recall and F1, logged as ``val/<name>`` means over all validation
    scans of all ranks (each scan counted once; NaNs, e.g. HD95 of an empty mask, left out). A
    second validation loader (the independent phantom family) is logged as ``val_independent/<name>``.

    Example:
        >>> net_config = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
        ...               "out_channels": 2, "channels": [8, 16], "strides": [2]}
        >>> module = WMHSegModule(net_config=net_config, inference={"roi_size": [32, 32, 32]})
        >>> module(torch.zeros(1, 2, 32, 32, 32)).shape
        torch.Size([1, 2, 32, 32, 32])
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        net_config: Mapping[str, Any] | None = None,
        loss: nn.Module | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/dice",
        preprocessing: Mapping[str, Any] | None = None,
        labels: Mapping[str, Any] | None = None,
        inference: Mapping[str, Any] | None = None,
        config_yaml: str | None = None,
        channels_last: bool | str = "auto",
        calibrate_threshold: bool = False,
    ) -> None:
        super().__init__()
        if net_config is None or "_target_" not in net_config:
            raise InputError("net_config must be the network's resolved _target_ config (it is stored in checkpoints)")
        net_config = to_plain(dict(net_config), "net_config")
        if net_config.get("deep_supervision"):
            raise InputError("net.deep_supervision=true is not supported: the module expects one output tensor")
        if channels_last not in ("auto", True, False):
            raise InputError(f"channels_last={channels_last!r} must be auto, true or false")
        if not isinstance(calibrate_threshold, bool):
            raise InputError(f"calibrate_threshold={calibrate_threshold!r} must be true or false")
        if scheduler_interval not in ("epoch", "step"):
            raise InputError(f"scheduler_interval={scheduler_interval!r} is not one of ('epoch', 'step')")
        self.label_spec = LabelSpec.from_dict(to_plain(dict(labels or {}), "labels"))
        self.preprocess_spec = PreprocessSpec.from_dict(to_plain(dict(preprocessing or {}), "preprocessing"))
        out_channels = net_config.get("out_channels")
        if out_channels is not None and out_channels != self.label_spec.num_classes:
            raise InputError(
                f"net out_channels={out_channels} but labels.mode={self.label_spec.mode!r} needs "
                f"{self.label_spec.num_classes} output channels"
            )
        self.inference_settings = check_inference_settings(inference)
        self.save_hyperparameters(
            {
                "net_config": net_config,
                "preprocessing": self.preprocess_spec.to_dict(),
                "labels": self.label_spec.to_dict(),
                "inference": self.inference_settings,
                "scheduler_interval": scheduler_interval,
                "scheduler_monitor": scheduler_monitor,
            }
        )
        self.net = net if net is not None else build_network(net_config, source="net_config")
        self.loss = loss if loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, lr=1e-3)
        self.scheduler_factory = scheduler
        self.config_yaml = config_yaml or ""
        self.channels_last_setting = channels_last
        self.channels_last = False
        self._val_records: dict[tuple[int, int], dict[str, Any]] = {}  # (loader, scan) -> metrics
        self.calibrate_threshold = calibrate_threshold
        self.calibrated_threshold: float | None = None  # from the latest validation, when calibrating

    # ------------------------------------------------------------------ forward and training
    def setup(self, stage: str) -> None:
        self.apply_memory_format(self.trainer.strategy.root_device)

    def apply_memory_format(self, device: torch.device) -> None:
        """Resolve ``channels_last`` for ``device`` and lay the network's weights out accordingly
        (before the optimizer is built; the trainer calls it through :meth:`setup`)."""
        auto = torch.device(device).type == "cpu"
        self.channels_last = auto if self.channels_last_setting == "auto" else bool(self.channels_last_setting)
        if self.channels_last:
            # tensor.contiguous rather than Module.to: for a 1x1x1 kernel, .to picks strides that its
            # gradients do not have, and DDP then copies between them every step ("Grad strides do
            # not match bucket view strides")
            for tensor in (*self.net.parameters(), *self.net.buffers()):
                if tensor.dim() == 5:
                    tensor.data = tensor.data.contiguous(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, ...)`` of a ``(B, 2, ...)`` image batch."""
        if self.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, target = batch["image"], batch["label"]
        logits = self(_tensor(image))
        loss = self.loss(logits.float(), _tensor(target).long())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=image.shape[0], sync_dist=True)
        return loss

    # ------------------------------------------------------------------ validation
    def wmh_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """WMH probability ``(B, ...)``: the summed softmax of the WMH channels."""
        probs = torch.softmax(logits.float(), dim=1)
        return probs[:, list(self.label_spec.wmh_channels)].sum(dim=1)

    def sliding_window_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Whole-volume logits (float32) by Gaussian-weighted sliding window."""
        s = self.inference_settings
        return sliding_window_inference(
            _tensor(image), roi_size=s["roi_size"], sw_batch_size=s["sw_batch_size"],
            predictor=lambda x: self(x).float(), overlap=s["overlap"], mode=s["mode"],
        )

    def on_validation_epoch_start(self) -> None:
        self._val_records = {}

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        image, target = batch["image"], batch["label"]
        if image.shape[0] != 1:
            raise InputError(f"validation batches must hold one whole volume each, got batch size {image.shape[0]}")
        logits = self.sliding_window_logits(image)
        target_t = _tensor(target).long()
        loss = float(self.loss(logits, target_t))
        prob = self.wmh_probability(logits)[0].cpu().numpy()
        ref = np.isin(target_t[0, 0].cpu().numpy(), self.label_spec.wmh_channels)
        record: dict[str, Any] = segmentation_metrics(prob > self.inference_settings["threshold"], ref,
                                                      _spacing(image, self.preprocess_spec.spacing))
        record["loss"] = loss
        if self.calibrate_threshold and dataloader_idx == 0:
            record["dice_by_threshold"] = dice_by_threshold(prob, ref, THRESHOLD_GRID)
        # A non-shuffled DistributedSampler gives rank r the dataset items r, r + W, r + 2W, ...
        # (padded by repeating the first items): this index identifies each scan across ranks.
        self._val_records[(dataloader_idx, batch_idx * self.trainer.world_size + self.trainer.global_rank)] = record

    def _gather_val_records(self) -> dict[tuple[int, int], dict[str, Any]]:
        records = dict(self._val_records)
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = {k: v for part in gathered for k, v in part.items()}
            n_scans = self._num_val_scans()
            records = {k: v for k, v in records.items() if n_scans.get(k[0]) is None or k[1] < n_scans[k[0]]}
        return records

    def _num_val_scans(self) -> dict[int, int | None]:
        loaders = self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        sizes: dict[int, int | None] = {}
        for i, loader in enumerate(loaders):
            try:
                sizes[i] = len(loader.dataset)
            except (AttributeError, TypeError):
                sizes[i] = None
        return sizes

    def on_validation_epoch_end(self) -> None:
        records = self._gather_val_records()
        self._val_records = {}
        if not records:
            return
        for loader in sorted({k[0] for k in records}):
            part = [r for k, r in records.items() if k[0] == loader]
            prefix = VAL_PREFIXES[min(loader, len(VAL_PREFIXES) - 1)]
            for name in (*METRIC_NAMES, "loss"):
                value = _nanmean([r[name] for r in part])
                self.log(f"{prefix}/{name}", torch.tensor(value, dtype=torch.float32), prog_bar=name == "dice",
                         sync_dist=True, batch_size=1, add_dataloader_idx=False)
            self.log(f"{prefix}/n_scans", torch.tensor(float(len(part))), sync_dist=True, batch_size=1,
                     add_dataloader_idx=False)
            if self.calibrate_threshold and loader == 0:
                # every rank holds every scan's curve (gathered above), so all choose the same
                threshold, mean_dice = best_threshold([r["dice_by_threshold"] for r in part], THRESHOLD_GRID,
                                                      self.inference_settings["threshold"])
                self.calibrated_threshold = threshold
                for name, value in (("threshold", threshold), ("dice_calibrated", mean_dice)):
                    self.log(f"{prefix}/{name}", torch.tensor(value, dtype=torch.float32), sync_dist=True,
                             batch_size=1, add_dataloader_idx=False)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams["scheduler_interval"],
                "monitor": self.hparams["scheduler_monitor"],
            },
        }

    # ------------------------------------------------------------------ checkpoints
    def inference_meta(self) -> dict[str, Any]:
        """The ``checkpoint["wmhseg"]`` section (see :mod:`wmhseg.checkpoint`)."""
        return {
            "format_version": FORMAT_VERSION,
            "wmhseg_version": wmhseg.__version__,
            "network": to_plain(self.hparams["net_config"], "network"),
            "preprocessing": self.preprocess_spec.to_dict(),
            "labels": self.label_spec.to_dict(),
            "inference": to_plain(self._stored_inference_settings(), "inference"),
            "config": self.config_yaml,
        }

    def _stored_inference_settings(self) -> dict[str, Any]:
        """The inference defaults a checkpoint carries: the calibrated threshold, once there is one."""
        settings = dict(self.inference_settings)
        if self.calibrated_threshold is not None:
            settings["threshold"] = self.calibrated_threshold
        return settings

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.inference_meta()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed calibrating run keeps the threshold its checkpoint carries until it validates again
        stored = (checkpoint.get(META_KEY) or {}).get("inference", {}).get("threshold")
        if self.calibrate_threshold and isinstance(stored, (int, float)) and 0 < stored < 1:
            self.calibrated_threshold = float(stored)
