"""The predictor: built once from a checkpoint, then applied scan after scan.

Three separable layers, each usable alone:

1. :meth:`Predictor.prepare` (:func:`wmhseg.inference.loading.prepare_scan`) - load and check
   the files, then the training preprocessing -> a working-grid image whose ``.affine`` maps
   voxels to world (RAS mm). Network-free; runs in DataLoader workers.
2. :meth:`Predictor.predict` - network output on the working grid: one pass over the brain's box
   (:mod:`wmhseg.inference.brain_box`; the head-cropped volume when the box is implausible or
   ``brain_crop="off"``) padded to the network's size divisor (``roi_size=None``; the default for
   networks without instance/group/layer norm) or MONAI's Gaussian-weighted sliding window (the
   checkpoint's window; the default for the others), with optional test-time flips, under
   ``torch.inference_mode`` and autocast (``precision``). Outside the brain's box the output is
   background; foreground within ``GUARD_MM`` of a face of the box inside the head box sends the
   scan through the network again on the head box (logged, and named in the scan's warnings).
   In binary label mode, WMH components wholly outside the brain's envelope are then set to
   background (``outside_brain="drop"``, :func:`wmhseg.inference.brain_box.brain_envelope`).
3. :meth:`Predictor.to_native` - probabilities resampled onto the native FLAIR grid through the
   affines (:mod:`wmhseg.inference.export`) and thresholded.

Example:
    >>> predictor = Predictor.from_checkpoint("last.ckpt", precision="fp32")   # doctest: +SKIP
    >>> prepared = predictor.prepare("t1.nii.gz", "flair.nii.gz")              # doctest: +SKIP
    >>> working = predictor.predict(prepared.image)                            # doctest: +SKIP
    >>> native = predictor.to_native(working, prepared.shape, prepared.affine)  # doctest: +SKIP
    >>> native.mask.shape == prepared.shape                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wmhseg.checkpoint import build_network, file_sha256, load_checkpoint, read_meta
from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.errors import CheckpointError, InputError
from wmhseg.geometry import network_divisor, padding_to_multiple, voxel_sizes
from wmhseg.inference.backends import OpenVinoNetwork, ieee_fp32, resolve_backend
from wmhseg.inference.brain_box import BrainBox, brain_box, brain_envelope, outside_brain
from wmhseg.inference.export import partial_volume_mask, resample_to_grid
from wmhseg.inference.infer_config import InferenceSettings
from wmhseg.inference.loading import PreparedScan, prepare_scan
from wmhseg.inference.optimize import inference_network
from wmhseg.labels import LabelSpec

__all__ = [
    "WorkingPrediction",
    "NativePrediction",
    "Predictor",
    "context_free",
    "GUARD_MM",
]

log = logging.getLogger("wmhseg.infer")

# layers whose statistics come from the input they are given (so from the window's or volume's extent)
_PER_SAMPLE_NORMS = (torch.nn.modules.instancenorm._InstanceNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_MAX_WINDOW_FRACTION = 0.95  # a window over this share of the padded head box's voxels is not worth its cost
GUARD_MM = 3.0  # foreground this close to a face of the brain's box inside the head box: predict on the head box
FALLBACK_WARNING = ("brain crop: predicted foreground reached a face of the brain's box, so the scan was "
                    "predicted again on the head box")
OUTSIDE_BRAIN_LIMIT = 0.5  # share of the mask outside the brain's envelope beyond which nothing is dropped
OUTSIDE_BRAIN_WARNING = ("outside_brain: {share:.0f} % of the WMH mask lies outside the brain found without the "
                         "network, so nothing was dropped; check the scan and its mask")


@dataclass
class WorkingPrediction:
    """Layer-2 output on the working grid: WMH (and ventricle) probability, BISON classes; ``box``:
    the brain's box the network ran on (``None``: the head box); ``warnings``: for the scan's record."""

    wmh: torch.Tensor
    affine: np.ndarray
    ventricles: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    box: BrainBox | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


@dataclass
class NativePrediction:
    """Layer-3 output on the native FLAIR grid."""

    mask: np.ndarray
    probability: np.ndarray
    ventricles: np.ndarray | None = None


def _match_state_dict(state: dict[str, torch.Tensor], net: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """The network's weights out of a module state_dict (keys like ``net.model.0.conv.weight``)."""
    wanted = list(net.state_dict())
    if all(k in state for k in wanted):
        return {k: state[k] for k in wanted}
    first = wanted[0]
    for key in state:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if all(k in sub for k in wanted):
                return {k: sub[k] for k in wanted}
    raise CheckpointError(f"{source}: the state_dict does not hold this network's weights (no key ending in {first!r})")


def context_free(network: torch.nn.Module) -> bool:
    """True when no layer of ``network`` normalises with statistics of its own input.

    Such a network (convolutions, batch norm in eval mode, pointwise activations) computes each
    output voxel from its receptive field alone, so one pass over the whole volume gives what a
    sliding window gives away from the windows' borders, with more context at them. Instance,
    group and layer norm take their statistics from whatever extent they are given (a training
    patch, a window, the whole head), so their outputs depend on the window.
    """
    return not any(isinstance(m, _PER_SAMPLE_NORMS) and not getattr(m, "track_running_stats", False)
                   for m in network.modules())


class Predictor:
    """A network with its preprocessing and label mapping, applied scan after scan.

    Args:
        network: a MONAI network taking ``(B, 2, X, Y, Z)`` and returning logits.
        preprocess_spec: the preprocessing it was trained with.
        label_spec: the label mapping it was trained with.
        settings: :class:`InferenceSettings`; ``None`` fields take ``checkpoint_inference`` values.
        checkpoint_inference: the checkpoint's sliding-window defaults.
        size_divisor: whole-volume padding multiple when ``settings.size_divisor`` is ``None``.
        model_id: the checkpoint's hash, written with every result.
        checkpoint_path: where the checkpoint lies; the OpenVINO backend caches its converted
            network beside it (keyed by ``model_id``).
    """

    def __init__(self, network: torch.nn.Module, preprocess_spec: PreprocessSpec, label_spec: LabelSpec, *,
                 settings: InferenceSettings | None = None, checkpoint_inference: dict[str, Any] | None = None,
                 size_divisor: int | Sequence[int] = 16, model_id: str = "", meta: dict[str, Any] | None = None,
                 checkpoint_path: str | os.PathLike | None = None) -> None:
        self.settings = settings or InferenceSettings()
        self.preprocess_spec = preprocess_spec
        self.label_spec = label_spec
        self.model_id = model_id
        self.meta = meta or {}
        ck = dict(checkpoint_inference or {})
        s = self.settings
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device)
        self.precision = self._resolve_precision(s.precision)
        window = list(ck.get("roi_size", [96, 96, 96]))
        if s.roi_size == "auto":
            self.roi_size = None if context_free(network) else window
        else:
            self.roi_size = window if s.roi_size == "checkpoint" else s.roi_size
        self.sw_batch_size = int(s.sw_batch_size or ck.get("sw_batch_size", 2))
        self.overlap = float(ck.get("overlap", 0.25) if s.overlap is None else s.overlap)
        self.blend_mode = s.blend_mode or ck.get("mode", "gaussian")
        self.threshold = float(s.threshold or ck.get("threshold", 0.5))
        self.brain_crop = s.brain_crop
        self.size_divisor = tuple(int(d) for d in np.broadcast_to(s.size_divisor or size_divisor, (3,)))
        self.backend = resolve_backend(s.backend, self.device, self.precision)  # logs why when it falls back
        on_torch_cpu = self.device.type == "cpu" and self.backend == "torch"
        self.channels_last = on_torch_cpu if s.channels_last == "auto" else bool(s.channels_last)
        # output-preserving rewrites of a copy: batch norm folded, channels-last on CPU
        self.network, self.folded_norms = inference_network(network, self.device, channels_last=self.channels_last)
        self._forward: Any = self.network if self.backend == "torch" else OpenVinoNetwork.for_checkpoint(
            self.network, precision=self.precision, checkpoint=checkpoint_path, model_id=model_id)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **overrides: Any) -> Predictor:
        """Load a wmhseg checkpoint safely (``weights_only``) and build the predictor.

        Args:
            path: a checkpoint written by wmhseg training.
            **overrides: :class:`InferenceSettings` fields.

        Raises:
            CheckpointError: unsafe, unreadable or incomplete checkpoint, or weights that do not fit.
        """
        path = Path(path)
        settings = InferenceSettings.from_dict(overrides)
        ckpt = load_checkpoint(path)
        meta = read_meta(ckpt, source=path)
        network = build_network(meta["network"], source=f"{path}: network")
        net_config = dict(meta["network"])
        try:
            network.load_state_dict(_match_state_dict(ckpt["state_dict"], network, str(path)))
            preprocess_spec = PreprocessSpec.from_dict(meta["preprocessing"])
            label_spec = LabelSpec.from_dict(meta["labels"])
        except CheckpointError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        return cls(network, preprocess_spec, label_spec, settings=settings,
                   checkpoint_inference=meta.get("inference") or {}, size_divisor=network_divisor(net_config) or (32, 32, 32),
                   model_id=file_sha256(path), meta=meta, checkpoint_path=path)

    # ---------------------------------------------------------------- layer 1
    def prepare(self, t1: str | os.PathLike, flair: str | os.PathLike, **kw: Any) -> PreparedScan:
        """:func:`prepare_scan` with this predictor's preprocessing."""
        return prepare_scan(t1, flair, self.preprocess_spec, label_spec=self.label_spec, **kw)

    # ---------------------------------------------------------------- layer 2
    def _resolve_precision(self, precision: str) -> str:
        if precision != "auto":
            return precision
        # fp32 on every device. bf16 moved the masks of a trained network (Dice 0.998 against fp32;
        # volumes by up to 0.3 % on a CPU, 1.7 % on an H200), short of the 0.999 a faster path must
        # keep; on a CPU with bf16 units it is 1.6x faster, on a GPU no faster at this network's size
        return "fp32"

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return ieee_fp32() if self.device.type == "cuda" else contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def _logits_whole(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pads = [p for pair in reversed(padding_to_multiple(size, self.size_divisor)) for p in pair]  # F.pad: last axis first
        y = self._forward(self._memory_format(F.pad(x, pads) if any(pads) else x))
        crop = tuple(slice(pads[2 * (2 - i)], pads[2 * (2 - i)] + size[i]) for i in range(3))
        return y[(slice(None), slice(None), *crop)].float()

    def _logits_window(self, x: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(x, roi_size=self.roi_size or [96, 96, 96], sw_batch_size=self.sw_batch_size,
                                        predictor=lambda p: self._forward(self._memory_format(p)).float(),
                                        overlap=self.overlap,
                                        mode=self.blend_mode)

    def _network_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(C, X, Y, Z)`` of ``x`` ``(1, 2, X, Y, Z)``, averaged over the flips."""
        run = self._logits_whole if self.roi_size is None else self._logits_window
        probs = None
        with torch.inference_mode(), self._autocast():
            for flip in ([], *self.settings.tta_flips):
                dims = [2 + a for a in flip]
                xi = x.flip(dims) if dims else x
                p = torch.softmax(run(xi).float(), dim=1)
                p = p.flip(dims) if dims else p
                probs = p if probs is None else probs.add_(p)
        return (probs / (1 + len(self.settings.tta_flips)))[0]

    def brain_box(self, image: torch.Tensor) -> BrainBox | None:
        """The brain's box of ``image`` ``(2, X, Y, Z)`` the network runs on, or ``None`` (the head
        box: ``brain_crop="off"`` or an implausible box; see :func:`brain_box`)."""
        if self.brain_crop == "off":
            return None
        return brain_box(torch.as_tensor(image)[1], self._voxel_mm(image))

    def _voxel_mm(self, image: torch.Tensor) -> np.ndarray:
        """The working grid's voxel size: from the image's affine, else the preprocessing's spacing."""
        affine = getattr(image, "affine", None)
        if affine is None:
            return np.asarray(self.preprocess_spec.spacing, dtype=np.float64)
        return voxel_sizes(np.asarray(torch.as_tensor(affine, dtype=torch.float64)).reshape(-1, 4, 4)[0])

    def _foreground(self, probs: torch.Tensor) -> torch.Tensor:
        """WMH (binary mode) or any class but background (BISON mode) in ``probs`` ``(C, X, Y, Z)``."""
        if self.label_spec.mode == "bison":
            return probs.argmax(0) != 0
        return probs[list(self.label_spec.wmh_channels)].sum(0) > self.threshold

    def _probabilities(self, image: torch.Tensor) -> tuple[torch.Tensor, BrainBox | None, list[str]]:
        """Probabilities on the brain's box (background outside it), or on the head box when there is
        none or when foreground reaches one of its inner faces; the box used and the warnings.

        The box is taken on the lattice of the padded head box (:meth:`BrainBox.aligned`), so one
        pass gives inside it what the head box's pass gives. Sliding windows keep the head box:
        their placement follows the volume's extent.
        """
        x = torch.as_tensor(image).float().unsqueeze(0).to(self.device)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # plain tensor: cheap slicing
        box = self.brain_box(image) if self.roi_size is None else None
        pads = padding_to_multiple(x.shape[2:], self.size_divisor)
        if box is not None:
            box, window = box.aligned(self.size_divisor)
            padded_voxels = np.prod([n + b + a for n, (b, a) in zip(x.shape[2:], pads, strict=True)])
            if np.prod([w.stop - w.start for w in window]) > _MAX_WINDOW_FRACTION * padded_voxels:
                box = None
        if box is None:
            return self._network_probabilities(x), None, []
        padded = F.pad(x, [p for pair in reversed(pads) for p in pair])
        probs = self._network_probabilities(padded[(slice(None), slice(None), *window)])
        probs = probs[(slice(None), *(slice(r.start + b - w.start, r.stop + b - w.start)
                                      for r, w, (b, _) in zip(box.region, window, pads, strict=True)))]
        depth = [math.ceil(GUARD_MM / v - 1e-6) for v in self._voxel_mm(image)]
        if box.touches(self._foreground(probs), depth):
            log.warning("%s (box %s)", FALLBACK_WARNING, box.describe())
            return self._network_probabilities(x), None, [FALLBACK_WARNING]
        full = probs.new_zeros((probs.shape[0], *x.shape[2:]))
        full[0] = 1.0
        full[(slice(None), *box.region)] = probs
        return full, box, []

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities ``(C, X, Y, Z)`` (float32, on the device) of one image
        ``(2, X, Y, Z)``, averaged over the test-time flips; background outside the brain's box
        (module docstring)."""
        return self._probabilities(image)[0]

    def predict(self, image: torch.Tensor) -> WorkingPrediction:
        """Layer 2: WMH probability (and ventricle probability, BISON classes in ``"bison"`` mode)
        on the working grid of ``image`` (a MetaTensor ``(2, X, Y, Z)`` from :func:`prepare_scan`)."""
        affine = getattr(image, "affine", None)
        if affine is None:
            raise InputError("predict() needs the MetaTensor from prepare_scan (an image with an .affine)")
        affine = np.asarray(torch.as_tensor(affine, dtype=torch.float64).reshape(-1, 4, 4)[0])
        probs, box, warnings = self._probabilities(image)
        spec = self.label_spec
        wmh, doubt = self._wmh_of(image, probs)
        warnings = [*warnings, doubt] if doubt else warnings
        vent = classes = None
        if spec.mode == "bison":
            classes = probs.argmax(0).to(torch.uint8).cpu()
            if spec.ventricle_channel is not None:
                vent = probs[spec.ventricle_channel].cpu()
        return WorkingPrediction(wmh=wmh, affine=affine, ventricles=vent, classes=classes, box=box, warnings=warnings)

    def wmh_probability(self, image: torch.Tensor) -> torch.Tensor:
        """The WMH probability ``(X, Y, Z)`` (float32, CPU) that :meth:`predict` gives ``image``
        (``(2, X, Y, Z)``; its ``.affine``, when it has one, gives the voxel size)."""
        return self._wmh_of(image, self.probabilities(image))[0]

    def _wmh_of(self, image: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """The WMH channels of ``probs`` summed; in binary label mode with ``outside_brain="drop"``,
        the components above the threshold that lie wholly outside the brain's envelope set to 0.
        Unchanged when no plausible brain is found, and, with a warning, when those components
        hold more than :data:`OUTSIDE_BRAIN_LIMIT` of the mask (a brain found wrongly, or a
        network failing on the scan: dropping most of a mask silently would hide either)."""
        wmh = probs[list(self.label_spec.wmh_channels)].sum(0).float().cpu()
        if self.label_spec.mode != "binary" or self.settings.outside_brain != "drop":
            return wmh, None
        mask = (wmh > self.threshold).numpy()
        if not mask.any():
            return wmh, None
        envelope = brain_envelope(torch.as_tensor(image)[1], self._voxel_mm(image))
        if envelope is None:
            return wmh, None
        drop = outside_brain(mask, envelope)
        share = float(drop.sum() / mask.sum())
        if share > OUTSIDE_BRAIN_LIMIT:
            return wmh, OUTSIDE_BRAIN_WARNING.format(share=100 * share)
        return (torch.where(torch.from_numpy(drop), 0.0, wmh) if drop.any() else wmh), None

    # ---------------------------------------------------------------- layer 3
    def to_native(self, prediction: WorkingPrediction, native_shape: Sequence[int],
                  native_affine: np.ndarray, intensity: np.ndarray | None = None) -> NativePrediction:
        """Layer 3: threshold on the working grid, then resample onto the native grid keeping the
        segmented volume (:func:`~wmhseg.inference.export.partial_volume_mask`); the probability
        is each native voxel's footprint mean. ``intensity``, the native FLAIR, places the mask's
        boundary where the working grid leaves it open (``native_boundary: flair``)."""
        decided = (prediction.wmh > self.threshold).float()
        channels = [prediction.wmh, decided] + ([prediction.ventricles] if prediction.ventricles is not None else [])
        native = resample_to_grid(torch.stack(channels), prediction.affine, native_shape, native_affine)
        prob = native[0].numpy()
        vent = native[2].numpy() > 0.5 if prediction.ventricles is not None else None
        guide = intensity if self.settings.native_boundary == "flair" else None
        return NativePrediction(mask=partial_volume_mask(native[1], order=prob, intensity=guide), probability=prob,
                                ventricles=vent)

    def describe(self) -> dict[str, Any]:
        """The effective settings, for provenance."""
        return {"device": str(self.device), "precision": self.precision, "roi_size": self.roi_size,
                "sw_batch_size": self.sw_batch_size, "overlap": self.overlap, "blend_mode": self.blend_mode,
                "tta_flips": self.settings.tta_flips, "threshold": self.threshold, "size_divisor": self.size_divisor,
                "folded_batch_norms": self.folded_norms, "channels_last": self.channels_last,
                "backend": self.backend, "brain_crop": self.brain_crop,
                "native_boundary": self.settings.native_boundary, "outside_brain": self.settings.outside_brain,
                "model_id": self.model_id}
