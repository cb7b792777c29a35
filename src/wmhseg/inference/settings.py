"""The settings of inference: how :class:`~wmhseg.inference.predictor.Predictor` runs the network.

Torch-free (a device is checked against torch only when one other than ``auto`` is named).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wmhseg.errors import InputError

__all__ = ["PRECISIONS", "BACKENDS", "InferenceSettings"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
_BLEND_MODES = ("gaussian", "constant")
_ROI_MODES = ("auto", "checkpoint")


def _choose(value: str, options: Sequence[str], name: str) -> str:
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"{name}={value!r} is not one of {tuple(options)}{hint}")


def _check_device(device: str) -> str:
    """``device`` if this machine has it; ``auto`` is always fine."""
    if device == "auto":
        return device
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"inference.device={device!r} is not one of auto, cpu, cuda, cuda:N") from exc
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        raise InputError(f"inference.device={device!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device is visible"
        raise InputError(f"inference.device={device!r} but CUDA is not available here ({build}, torch "
                         f"{torch.__version__}); use inference.device=cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"inference.device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class InferenceSettings:
    """How :class:`Predictor` runs the network; ``None`` takes the checkpoint's value.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"``: bf16 (or fp16) on
            GPU, bf16 on CPUs with native bf16 support (AVX-512 BF16 / AMX), else fp32.
        roi_size: ``"auto"`` (default): one pass when the network's output depends on local
            context only, else the checkpoint's window (see :func:`context_free`);
            ``"checkpoint"`` = MONAI's Gaussian sliding window with the checkpoint's window (the
            one training validated with); a window ``[x, y, z]``; or ``None`` = the whole working
            volume in one pass (padded to ``size_divisor``). One pass is several times faster, and
            with batch norm it gives the sliding window's masks. Instance/group/layer norm compute
            statistics over whatever they are given, so one pass over the whole head then changes
            the output (an instance-norm U-Net on synthetic scans: Dice against the truth 0.73 in
            one pass, 0.81 with its window).
        sw_batch_size, overlap, blend_mode: sliding-window batch, overlap and blending.
        tta_flips: test-time flips, each a list of spatial axes (0-2) to flip, e.g. ``[[0]]``;
            probabilities are averaged with the unflipped prediction.
        threshold: WMH probability above which a voxel is WMH.
        size_divisor: whole-volume padding multiple; ``None`` derives it from the network's strides.
        channels_last: run the network in ``torch.channels_last_3d`` memory format; ``"auto"``:
            on CPU (oneDNN's fast kernels; about 1.6x on a whole head), not on GPU.
        backend: ``"torch"`` (default here; ``infer.py`` defaults to ``"auto"``), ``"openvino"``
            (CPU; falls back to torch with a message when OpenVINO is not installed) or
            ``"auto"`` (OpenVINO when installed, on CPU, in fp32); see :mod:`wmhseg.inference.backends`.
    """

    device: str = "auto"
    precision: str = "auto"
    roi_size: Any = "auto"
    sw_batch_size: int | None = None
    overlap: float | None = None
    blend_mode: str | None = None
    tta_flips: list[list[int]] = field(default_factory=list)
    threshold: float | None = None
    size_divisor: int | None = None
    channels_last: Any = "auto"
    backend: str = "torch"

    def __post_init__(self) -> None:
        self.device = _check_device(str(self.device))
        self.precision = _choose(str(self.precision), PRECISIONS, "precision")
        self.backend = _choose(str(self.backend), BACKENDS, "backend")
        if isinstance(self.roi_size, str):
            _choose(self.roi_size, _ROI_MODES, "roi_size")
        elif self.roi_size is not None:
            roi = [int(self.roi_size)] * 3 if np.isscalar(self.roi_size) else [int(r) for r in self.roi_size]
            if len(roi) != 3 or min(roi) < 1:
                raise InputError(f"roi_size={self.roi_size!r} must be null, 'auto', 'checkpoint' or three positive "
                                 "integers")
            self.roi_size = roi
        if self.sw_batch_size is not None and int(self.sw_batch_size) < 1:
            raise InputError(f"sw_batch_size={self.sw_batch_size!r} must be >= 1")
        if self.overlap is not None and not 0 <= float(self.overlap) < 1:
            raise InputError(f"overlap={self.overlap!r} must satisfy 0 <= overlap < 1")
        if self.blend_mode is not None:
            self.blend_mode = _choose(str(self.blend_mode), _BLEND_MODES, "blend_mode")
        flips = [[int(a) for a in f] for f in (self.tta_flips or [])]
        if any(not f or min(f) < 0 or max(f) > 2 for f in flips):
            raise InputError(f"tta_flips={self.tta_flips!r} must be lists of spatial axes 0, 1, 2, e.g. [[0], [1]]")
        self.tta_flips = flips
        if self.threshold is not None and not 0 < float(self.threshold) < 1:
            raise InputError(f"threshold={self.threshold!r} must satisfy 0 < threshold < 1")
        if self.size_divisor is not None and int(self.size_divisor) < 1:
            raise InputError(f"size_divisor={self.size_divisor!r} must be >= 1")
        if self.channels_last not in ("auto", True, False):
            raise InputError(f"channels_last={self.channels_last!r} must be auto, true or false")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> InferenceSettings:
        """Build from a config mapping; unknown keys raise :class:`InputError`."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown inference settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

