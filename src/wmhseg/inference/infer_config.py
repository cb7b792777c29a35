"""The settings of inference: the structured config of ``infer.py`` and the checks of its values.

:class:`InferConfig` is the schema ``configs/infer.yaml`` extends (stored in Hydra's ConfigStore
as ``infer_schema`` by :func:`register_configs`): Hydra and OmegaConf report an unknown key or a
value of the wrong type, naming the key. The values are checked when the dataclasses are built
(:meth:`InferConfig.from_mapping`, or keyword arguments): an unknown key or a bad choice names the
closest allowed one. Its parts: :class:`InferenceSettings` (how
:class:`~wmhseg.inference.predictor.Predictor` runs the network), :class:`UncertaintySettings`
(``inference.uncertainty*``) and :class:`LongitudinalSettings` (``longitudinal_options``).

Torch-free (a device is checked against torch only when one other than ``auto`` is named), so
that ``infer.py`` registers and checks its configuration before it imports torch.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from wmhseg.errors import InputError, check_known_keys, did_you_mean

__all__ = ["PRECISIONS", "BACKENDS", "BRAIN_CROP_MODES", "NATIVE_BOUNDARIES", "OUTSIDE_BRAIN", "UNCERTAINTY_MODES", "USAGE", "InferenceSettings", "UncertaintySettings",
           "LongitudinalSettings", "InferenceConfig", "InferConfig", "register_configs"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
_BLEND_MODES = ("gaussian", "constant")
_ROI_MODES = ("auto", "checkpoint")
BRAIN_CROP_MODES = ("auto", "off")
NATIVE_BOUNDARIES = ("flair", "fraction")
OUTSIDE_BRAIN = ("drop", "keep")
UNCERTAINTY_MODES = ("none", "tta", "ensemble")
_UNCERTAINTY = "uncertainty"
USAGE = "python infer.py ckpt_path=CKPT input=MANIFEST_OR_FOLDER out_dir=DIR [setting=value ...]"


def _choose(value: str, options: Sequence[str], name: str) -> str:
    if value in options:
        return value
    raise InputError(f"{name}={value!r} is not one of {tuple(options)}{did_you_mean(value, options)}")


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
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"`` (= fp32; on a GPU
            without TF32: the CPU's masks). ``bf16`` is 1.6x faster on CPUs with bf16 units, no
            faster on an H200, and moved a trained network's masks (Dice 0.998), so it is opt-in.
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
        tta_flips: test-time flips, lists of spatial axes (0-2) averaged with the plain prediction;
            ``[]`` here, ``[[0]]`` (left-right on a RAS working grid) in ``infer.py``.
        threshold: WMH probability above which a voxel is WMH.
        size_divisor: whole-volume padding multiple; ``None`` derives it from the network's strides.
        channels_last: run the network in ``torch.channels_last_3d`` memory format; ``"auto"``:
            on CPU (oneDNN's fast kernels; about 1.6x on a whole head), not on GPU.
        backend: ``"torch"`` (default here; ``infer.py`` defaults to ``"auto"``), ``"openvino"``
            (CPU; falls back to torch with a message when OpenVINO is not installed) or
            ``"auto"`` (OpenVINO when installed, on CPU, in fp32); see :mod:`wmhseg.inference.backends`.
        brain_crop: ``"auto"``: run the one pass on the brain's box, found without the network at
            low resolution, instead of the whole head box, with background outside it; the head
            box when that box is implausible, or again on the head box when foreground reaches a
            face of it (see :mod:`wmhseg.inference.brain_box`). ``"off"`` (default): the head box;
            on synthetic heads the brain's box, widened onto the network's size lattice, saved
            too few voxels to pay for itself (README, Brain crop). YAML's bare ``off``/``on``
            (booleans) mean ``"off"``/``"auto"``.
        native_boundary: where a native voxel finer than the working grid (or cut obliquely by it)
            falls inside or outside the mask. ``"flair"`` (default): ranked by its WMH fraction
            plus its FLAIR hyperintensity, so the boundary follows the native image; ``"fraction"``:
            by the fraction alone. Both keep the segmented volume
            (:func:`wmhseg.inference.export.partial_volume_mask`).
        outside_brain: ``"drop"`` (default): in binary label mode, WMH components with no voxel in
            the brain's envelope (:func:`wmhseg.inference.brain_box.brain_envelope`), such as bright
            scalp where a thick slice cuts the top of the head, become background; ``"keep"``
            keeps them. In BISON label mode the network marks the brain itself: nothing is dropped.
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
    brain_crop: str = "off"
    native_boundary: str = "flair"
    outside_brain: str = "drop"

    def __post_init__(self) -> None:
        self.device = _check_device(str(self.device))
        self.precision = _choose(str(self.precision), PRECISIONS, "precision")
        self.backend = _choose(str(self.backend), BACKENDS, "backend")
        # YAML reads a bare off as false (and on as true), which a str field then holds as 'False'
        crop = {"false": "off", "true": "auto"}.get(str(self.brain_crop).lower(), str(self.brain_crop))
        self.brain_crop = _choose(crop, BRAIN_CROP_MODES, "brain_crop")
        self.native_boundary = _choose(str(self.native_boundary), NATIVE_BOUNDARIES, "native_boundary")
        self.outside_brain = _choose(str(self.outside_brain), OUTSIDE_BRAIN, "outside_brain")
        if isinstance(self.roi_size, str):
            _choose(self.roi_size, _ROI_MODES, "roi_size")
        elif self.roi_size is not None:
            roi = [int(self.roi_size)] * 3 if isinstance(self.roi_size, numbers.Number) else [int(r) for r in self.roi_size]
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
        """Build from a config mapping; an unknown key raises :class:`InputError` naming the closest one."""
        d = dict(d or {})
        check_known_keys(d, [f.name for f in fields(cls)], "inference")
        return cls(**d)


@dataclass(frozen=True)
class UncertaintySettings:
    """The ``inference.uncertainty*`` settings (:mod:`wmhseg.inference.uncertainty` says what they do).

    Raises:
        InputError: an unknown mode or an out-of-range value, named.
    """

    mode: str = "none"
    samples: int = 8
    rotate_deg: float = 3.0
    scale_range: float = 0.03
    translate_mm: float = 2.0
    intensity: float = 0.05
    level: float = 0.95
    calibration: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in UNCERTAINTY_MODES:
            raise InputError(f"inference.uncertainty={self.mode!r} is not one of {UNCERTAINTY_MODES}")
        if int(self.samples) < 2:
            raise InputError(f"inference.uncertainty_samples={self.samples!r} must be >= 2")
        if not 0 < float(self.level) < 1:
            raise InputError(f"inference.uncertainty_level={self.level!r} must lie between 0 and 1")
        if float(self.calibration) <= 0:
            raise InputError(f"inference.uncertainty_calibration={self.calibration!r} must be > 0")
        for name in ("rotate_deg", "scale_range", "translate_mm", "intensity"):
            if float(getattr(self, name)) < 0:
                raise InputError(f"inference.uncertainty_{name}={getattr(self, name)!r} must be >= 0")

    @classmethod
    def pop_from(cls, inference: dict[str, Any]) -> UncertaintySettings:
        """Take the ``uncertainty*`` keys out of an ``inference`` mapping (the rest is the predictor's)."""
        keys = [k for k in inference if k == _UNCERTAINTY or k.startswith(_UNCERTAINTY + "_")]
        values = {("mode" if k == _UNCERTAINTY else k[len(_UNCERTAINTY) + 1:]): inference.pop(k) for k in keys}
        known = [f"{_UNCERTAINTY}_{f.name}" for f in fields(cls) if f.name != "mode"]
        check_known_keys([f"{_UNCERTAINTY}_{k}" for k in values if k != "mode"], known, "inference")
        return cls(**{k: (str(v) if k == "mode" else v) for k, v in values.items()})


@dataclass
class LongitudinalSettings:
    """``configs/infer.yaml``'s ``longitudinal_options``.

    Args:
        prior_weight: weight of the subject's mean probability in each visit's (0-1). It lowers the
            visit-to-visit error but shrinks the measured change (docs/longitudinal.md).
        confirm_mm3: a visit's lesion smaller than this is kept only when another visit shows
            WMH within one voxel of it (0 keeps every lesion).
        min_new_mm3: new lesions smaller than this are not counted in ``progression.csv``
            (they stay in the change maps).
        registration_cache: a folder where visits' registrations are kept for later runs (None: off).
    """

    prior_weight: float = 0.25
    confirm_mm3: float = 0.0
    min_new_mm3: float = 0.0
    registration_cache: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.prior_weight) < 1.0:
            raise InputError(f"longitudinal_options.prior_weight={self.prior_weight!r} must be within [0, 1)")
        if not float(self.confirm_mm3) >= 0.0:
            raise InputError(f"longitudinal_options.confirm_mm3={self.confirm_mm3!r} must be >= 0")
        if not float(self.min_new_mm3) >= 0.0:
            raise InputError(f"longitudinal_options.min_new_mm3={self.min_new_mm3!r} must be >= 0")


_U = UncertaintySettings()  # the one source of the uncertainty defaults


@dataclass
class InferenceConfig(InferenceSettings):
    """The ``inference:`` node: the predictor's settings and the flat ``uncertainty*`` keys (the
    command line's contract), one per :class:`UncertaintySettings` field, with its default."""

    uncertainty: str = _U.mode
    uncertainty_samples: int = _U.samples
    uncertainty_rotate_deg: float = _U.rotate_deg
    uncertainty_scale_range: float = _U.scale_range
    uncertainty_translate_mm: float = _U.translate_mm
    uncertainty_intensity: float = _U.intensity
    uncertainty_level: float = _U.level
    uncertainty_calibration: float = _U.calibration
    uncertainty_seed: int = _U.seed

    def __post_init__(self) -> None:
        super().__post_init__()
        self.uncertainty_settings()  # checks the uncertainty values

    def predictor_settings(self) -> dict[str, Any]:
        """The :class:`InferenceSettings` part, as keyword arguments of ``Predictor.from_checkpoint``."""
        return {f.name: getattr(self, f.name) for f in fields(InferenceSettings)}

    def uncertainty_settings(self) -> UncertaintySettings:
        """The ``uncertainty*`` part as :class:`UncertaintySettings`."""
        return UncertaintySettings.pop_from({f.name: getattr(self, f.name) for f in fields(self)
                                             if f.name.startswith(_UNCERTAINTY)})


def _checkpoint_paths(value: Any) -> list[Path]:
    """``ckpt_path``: one checkpoint, a list of them, or a comma-separated string."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    paths = [Path(str(v).strip()).expanduser() for v in items if str(v).strip()]
    if not paths:
        raise InputError("ckpt_path names no checkpoint")
    return paths


@dataclass
class InferConfig:
    """``infer.py``'s config (``configs/infer.yaml`` documents every key); ``???`` until given.

    Raises:
        InputError: a value out of range or settings that do not go together, named.

    Example:
        >>> InferConfig.from_mapping({"ckpt_path": "a.ckpt,b.ckpt", "input": "m.csv", "out_dir": "out"}).ckpt_paths
        [PosixPath('a.ckpt'), PosixPath('b.ckpt')]
    """

    ckpt_path: Any = MISSING
    input: Path = MISSING
    out_dir: Path = MISSING
    bids_filters: Any = None  # a mapping; Any so that Hydra takes a whole mapping on the command line
    overwrite: bool = False
    num_parts: int = 1
    part_id: int = 0
    num_workers: int = 1
    background_writer: bool = True
    torch_threads: int | None = None
    progress: bool = True
    strategy: str | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    qc: bool = True
    qc_convention: str = "radiological"
    register_t1: str | None = None
    longitudinal: bool = False
    visit_times: str | None = None
    longitudinal_options: LongitudinalSettings = field(default_factory=LongitudinalSettings)
    pv_distance_mm: float = 10.0
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        self.input, self.out_dir = Path(self.input).expanduser(), Path(self.out_dir).expanduser()
        self.strategy = self.strategy or None
        self.visit_times = self.visit_times or None
        if not isinstance(self.bids_filters or {}, Mapping):
            raise InputError(f"bids_filters={self.bids_filters!r} must be a mapping, e.g. '{{flair: {{acq: 3D}}}}'")
        self.bids_filters = dict(self.bids_filters or {})
        _checkpoint_paths(self.ckpt_path)
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise InputError(f"part_id={self.part_id} must satisfy 0 <= part_id < num_parts={self.num_parts}")
        if self.num_workers < 0:
            raise InputError(f"num_workers={self.num_workers} must be >= 0")
        if self.pv_distance_mm <= 0:
            raise InputError(f"pv_distance_mm={self.pv_distance_mm} must be > 0")
        from wmhseg.qc.image import CONVENTIONS

        if self.qc_convention not in CONVENTIONS:
            raise InputError(f"qc_convention={self.qc_convention!r} is not one of {CONVENTIONS}")
        self._check_combinations()

    def _check_combinations(self) -> None:
        mode = self.inference.uncertainty
        if self.longitudinal and (self.num_parts != 1 or self.strategy is not None):
            raise InputError(f"longitudinal=true needs one process over the whole manifest (num_parts={self.num_parts}, "
                             f"strategy={self.strategy!r}); run without parts and strategy")
        if mode != "none" and self.longitudinal:
            raise InputError(f"inference.uncertainty={mode} is not available with longitudinal=true")
        if mode != "none" and self.strategy is not None:
            raise InputError(f"inference.uncertainty={mode} runs in one process per part (num_parts/part_id), "
                             "not with strategy")

    @property
    def ckpt_paths(self) -> list[Path]:
        """The checkpoints ``ckpt_path`` names (several for ``inference.uncertainty=ensemble``)."""
        return _checkpoint_paths(self.ckpt_path)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> InferConfig:
        """Build from Hydra's composed config or a plain mapping (keys left out take their defaults).

        Raises:
            InputError: an unknown key (naming the closest), a missing required one, a value of the
                wrong type (OmegaConf's message, naming the key) or a bad value.
        """
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from wmhseg.plain import to_plain

        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else to_plain(dict(cfg))
        data = {k: v for k, v in data.items() if k != "hydra"}
        _check_keys(data)
        for key in ("ckpt_path", "input", "out_dir"):
            if data.get(key) is None or str(data[key]) in ("", "???"):
                raise InputError(f"{key} is required: {USAGE}")
        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
        except OmegaConfBaseException as exc:
            raise InputError(_one_line(exc)) from None


def _check_keys(data: Mapping[str, Any]) -> None:
    """An unknown key at the top, in ``inference`` or in ``longitudinal_options`` names the closest known one."""
    check_known_keys(data, [f.name for f in fields(InferConfig)], "infer")
    for name, schema in (("inference", InferenceConfig), ("longitudinal_options", LongitudinalSettings)):
        if isinstance(data.get(name), Mapping):
            check_known_keys(data[name], [f.name for f in fields(schema)], name)


def _one_line(exc: Exception) -> str:
    """OmegaConf's message and the key it names, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith("object_type")]
    return "; ".join(lines)


def register_configs() -> None:
    """Store :class:`InferConfig` in Hydra's ConfigStore as ``infer_schema``, the schema that
    ``configs/infer.yaml`` names first in its defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="infer_schema", node=InferConfig)
