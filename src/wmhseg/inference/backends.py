"""Where the network runs: PyTorch, or OpenVINO on CPU (``inference.backend``).

``torch`` runs the (batch-norm-folded) PyTorch module. ``openvino`` converts that same module
once into an OpenVINO model with dynamic spatial size and runs it with OpenVINO's CPU plugin,
whose fused convolution kernels ran the default U-Net on a head-cropped 1 mm brain 1.1-1.25x
faster than PyTorch channels-last in fp32, but 0.73x as fast as PyTorch under bf16 on a CPU with
bf16 units (``benchmarks/``, 2 cores). ``auto`` therefore takes ``openvino`` when it is installed
(``pip install wmhseg[openvino]``), the device is a CPU and the precision is fp32 (what
``precision: auto`` runs), else ``torch``. On a GPU, fp32 runs without TF32 (:func:`ieee_fp32`),
so that it gives the CPU's masks.

Before conversion, narrow transposed convolutions (the 2-class output layer) become sub-pixel
convolutions (:func:`~wmhseg.inference.optimize.subpixel_transposed`): 0.92x the pass's time in
OpenVINO, the same logits to 2e-6.

Precision is set explicitly, never left to the plugin: OpenVINO's CPU plugin defaults to bf16 on
CPUs with bf16 units, and reduced precision inside instance normalisation is what changed lesion
volumes by double-digit percentages in other WMH tools. ``fp32`` here means f32 throughout.

The model is compiled for each input shape it meets (the shape fixed before compiling; a few
shapes are kept): compiling a fixed shape takes about 0.1 s, and OpenVINO's CPU plugin then runs
it faster than the dynamic-shape model, whose first pass at a new shape is about twice as slow as
the next ones (``benchmarks/``).

The converted model is cached next to the checkpoint, in ``<checkpoint>.openvino/<key>/``, where
the key holds the checkpoint's hash, the OpenVINO version and this module's conversion format. A
cache entry is written to a temporary folder and renamed into place; its ``meta.json`` records the
SHA-256 of the model files, and an entry that does not match (or does not load) is rebuilt. The
cache holds a graph and weights, no code. Conversion goes through OpenVINO's PyTorch frontend
directly (``ov.convert_model`` would also send usage telemetry).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from wmhseg.checkpoint import file_sha256
from wmhseg.errors import InputError, did_you_mean
from wmhseg.inference.infer_config import BACKENDS
from wmhseg.inference.optimize import subpixel_transposed

__all__ = ["BACKENDS", "INSTALL_HINT", "openvino_available", "resolve_backend", "cache_folder", "OpenVinoNetwork", "ieee_fp32"]

INSTALL_HINT = "pip install 'wmhseg[openvino]'"
_FORMAT = 2  # bump when the conversion changes, so older cache entries are not reused
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_FILES = ("model.xml", "model.bin")
_SHAPES_KEPT = 4  # compiled input shapes kept per network (least recently used dropped)

log = logging.getLogger(__name__)


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: torch.device, precision: str = "fp32") -> str:
    """The backend that will run: ``"torch"`` or ``"openvino"``. ``auto`` takes OpenVINO for fp32 on
    a CPU when it is installed (under bf16, PyTorch's oneDNN path was the faster one). An explicit
    ``openvino`` that cannot be followed (not installed, not a CPU) falls back to torch with a
    warning saying why.

    Raises:
        InputError: ``backend`` is not one of :data:`BACKENDS`.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend={backend!r} is not one of {BACKENDS}{did_you_mean(backend, BACKENDS)}")
    if backend == "torch" or (backend == "auto" and precision != "fp32"):
        return "torch"
    if device.type != "cpu":
        why = f"runs on CPU only; device {device} uses torch"
    elif not openvino_available():
        why = f"openvino is not installed ({INSTALL_HINT}); using torch"
    else:
        return "openvino"
    if backend == "openvino":
        log.warning("backend=openvino: %s", why)
    return "torch"


def cache_folder(checkpoint: str | os.PathLike, model_id: str) -> Path:
    """The cache entry of ``checkpoint`` (hash ``model_id``) for the installed OpenVINO."""
    import openvino

    version = openvino.__version__.split("-")[0]
    return Path(f"{checkpoint}.openvino") / f"{model_id}-ov{version}-f{_FORMAT}"


def _in_channels(network: torch.nn.Module) -> int:
    """Input channels of ``network``: those of its first convolution."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return int(module.in_channels)
    raise InputError("backend=openvino: the network has no convolution to take its input channels from")


def _convert(network: torch.nn.Module) -> Any:
    """An OpenVINO model of ``network`` (eval mode, fp32) with input ``(?, C, ?, ?, ?)``."""
    import openvino as ov
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    net = network.float().eval().to("cpu", memory_format=torch.contiguous_format)
    in_channels = _in_channels(net)
    net, _ = subpixel_transposed(net)  # the 2-class output layer: 0.92x the pass's time (optimize's docstring)
    example = torch.zeros(1, in_channels, 16, 16, 16).contiguous()
    frontend = FrontEndManager().load_by_framework("pytorch")
    with torch.no_grad(), warnings.catch_warnings():
        # tracing fixes the network's Python-side shape checks to the example; the model is
        # reshaped to dynamic sizes below and compared with PyTorch in the tests
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.trace", category=DeprecationWarning)
        decoder = TorchScriptPythonDecoder(net, example_input=(example,))
        model = frontend.convert(frontend.load(decoder))
    model.reshape({model.inputs[0]: ov.PartialShape([-1, in_channels, -1, -1, -1])})
    return model


def _read_cached(folder: Path, core: Any) -> Any | None:
    """The cached model in ``folder``, or ``None`` when absent; a damaged entry is removed."""
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        for name in _FILES:
            if file_sha256(folder / name, length=64) != meta["sha256"][name]:
                raise ValueError(f"{name} does not match its recorded hash")
        return core.read_model(str(folder / "model.xml"), str(folder / "model.bin"))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        log.warning("OpenVINO cache %s is damaged (%s); converting the network again", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _write_cache(model: Any, folder: Path) -> None:
    """Save ``model`` into ``folder`` atomically (temporary folder, then rename); older entries of
    the same checkpoint are removed. An unwritable location only costs the cache."""
    import openvino as ov

    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        hashes = {n: file_sha256(tmp / n, length=64) for n in _FILES}
        meta = {"format": _FORMAT, "openvino": ov.__version__, "sha256": hashes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process wrote the same entry first
            return
        tmp = None
        for other in folder.parent.iterdir():
            if other != folder and not other.name.startswith(".tmp-"):
                shutil.rmtree(other, ignore_errors=True)
    except (OSError, RuntimeError) as exc:
        log.warning("could not cache the OpenVINO model in %s (%s); it will be converted again next run",
                    folder.parent, exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class OpenVinoNetwork:
    """A network compiled by OpenVINO for CPU, called like the PyTorch module it replaces.

    Args:
        network: the eval-mode PyTorch network (batch norm already folded); not modified.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (OpenVINO's inference precision).
        cache: a :func:`cache_folder`; ``None`` converts in memory every time.
        threads: CPU threads (default: PyTorch's thread count).

    Calling it with ``(B, C, X, Y, Z)`` float input returns float32 logits as a CPU tensor. It
    pickles as its PyTorch network and settings (for ``strategy=ddp_spawn``): unpickling compiles
    again, from the cache when there is one.
    """

    def __init__(self, network: torch.nn.Module, *, precision: str = "fp32",
                 cache: Path | None = None, threads: int | None = None) -> None:
        import openvino as ov

        if precision not in _PRECISION_HINTS:
            raise InputError(f"precision={precision!r} is not one of {tuple(_PRECISION_HINTS)} for backend=openvino")
        self._state = {"network": network, "precision": precision, "cache": cache, "threads": threads}
        core = ov.Core()
        model = _read_cached(cache, core) if cache is not None else None
        self.from_cache = model is not None
        if model is None:
            model = _convert(copy.deepcopy(network))
            if cache is not None:
                _write_cache(model, cache)
        self.model = model
        self._config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self._core = core
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.precision = precision

    def compiled(self, shape: tuple[int, ...]) -> Any:
        """The model compiled for input ``shape`` (compiled on first use; the last few kept)."""
        shape = tuple(int(n) for n in shape)
        if shape in self._compiled:
            self._compiled.move_to_end(shape)
            return self._compiled[shape]
        import openvino as ov

        model = self.model.clone()
        model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
        compiled = self._core.compile_model(model, "CPU", self._config)
        self._compiled[shape] = compiled
        while len(self._compiled) > _SHAPES_KEPT:
            self._compiled.popitem(last=False)
        return compiled

    @classmethod
    def for_checkpoint(cls, network: torch.nn.Module, *, precision: str, checkpoint: str | os.PathLike | None,
                       model_id: str) -> OpenVinoNetwork:
        """The network of ``checkpoint`` (hash ``model_id``), cached beside it; uncached without them."""
        cache = cache_folder(checkpoint, model_id) if checkpoint and model_id else None
        return cls(network, precision=precision, cache=cache)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.__init__(state.pop("network"), **state)  # type: ignore[misc]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.compiled(array.shape)(array)[0])


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 convolutions and matrix products without TF32 inside the block, as on a CPU.

    cuDNN's convolutions default to TF32 on Ampere and later GPUs, which moved a trained network's
    WMH volumes by up to 0.25 % against the CPU's; ``precision=fp32`` means the CPU's masks. The
    flags are restored on the way out, through the API that torch offers (``fp32_precision`` from
    torch 2.9, ``allow_tf32`` before).
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        knobs = [cudnn.conv, cudnn.rnn, matmul]
        saved = [k.fp32_precision for k in knobs]
        try:
            for k in knobs:
                k.fp32_precision = "ieee"
            yield
        finally:
            for k, v in zip(knobs, saved, strict=True):
                k.fp32_precision = v
        return
    saved_legacy = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved_legacy
