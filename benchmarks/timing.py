"""Timing helpers shared by the benchmark sections.

Every comparison is measured side by side: the callables of one comparison run interleaved
(``a b c a b c ...``) in the same process, so a change of machine load affects all of them alike,
and the figures reported are medians with ratios taken against the baseline's median.

On CUDA a call is timed with CUDA events after a ``synchronize``; on CPU with ``perf_counter``.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Samples",
    "PeakRSS",
    "device_sync",
    "time_once",
    "interleaved",
    "loadavg",
    "rss_mib",
    "machine_info",
    "bf16_fast",
    "ratio",
    "fmt_s",
]


@dataclass
class Samples:
    """Wall-clock samples of one callable, in seconds."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of the samples (``nan`` when empty)."""
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def spread(self) -> float:
        """Max minus min of the samples: a crude noise indicator."""
        return max(self.seconds) - min(self.seconds) if len(self.seconds) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form for the JSON results."""
        return {
            "median_s": round(self.median, 4),
            "min_s": round(min(self.seconds), 4) if self.seconds else None,
            "max_s": round(max(self.seconds), 4) if self.seconds else None,
            "n": len(self.seconds),
            "samples_s": [round(s, 4) for s in self.seconds],
        }


def device_sync(device: Any) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: Any = "cpu") -> tuple[float, Any]:
    """Run ``fn`` once and return ``(seconds, result)``.

    On CUDA the time comes from CUDA events recorded around the call, after synchronising.
    """
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: Any = "cpu",
    on_result: Callable[[str, Any], None] | None = None,
) -> dict[str, Samples]:
    """Time several callables side by side, interleaved round by round.

    Args:
        fns: name -> zero-argument callable.
        repeats: timed rounds; each round calls every callable once, in a rotating order so no
            callable always runs right after the same neighbour.
        warmup: untimed calls of each callable before the first round.
        device: where the work runs (decides CUDA-event or wall-clock timing).
        on_result: called with ``(name, result)`` after each warm-up call (e.g. to keep outputs
            for an accuracy check without timing it).

    Returns:
        name -> :class:`Samples`.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            _, out = time_once(fns[name], device)
            if on_result is not None:
                on_result(name, out)
            del out
    samples = {name: Samples(name) for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            seconds, out = time_once(fns[name], device)
            del out
            samples[name].seconds.append(seconds)
    return samples


def loadavg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def rss_mib() -> float | None:
    """Current resident set size of this process in MiB (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled by a thread.

    ``peak_mib`` is the highest RSS seen; ``delta_mib`` the rise over the RSS at entry. Where
    ``/proc`` is missing both fall back to ``ru_maxrss`` (the process's lifetime peak).
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = rss_mib()
            if now is not None and (self.peak_mib is None or now > self.peak_mib):
                self.peak_mib = now
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.start_mib = rss_mib()
        self.peak_mib = self.start_mib
        if self.start_mib is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = rss_mib()
        if now is not None and self.peak_mib is not None:
            self.peak_mib = max(self.peak_mib, now)
        if self.peak_mib is None:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    @property
    def delta_mib(self) -> float | None:
        """Peak minus the RSS at entry."""
        if self.peak_mib is None or self.start_mib is None:
            return None
        return self.peak_mib - self.start_mib


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (unchanged when ``n`` is None)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bf16_fast(device: Any) -> tuple[bool, str]:
    """Whether bf16 autocast can be expected to speed ``device`` up, and why.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN reports native bf16 support
    (AVX-512 BF16 or AMX); without it bf16 kernels are emulated and far slower than fp32.
    """
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, "CUDA bf16 supported" if ok else "this GPU lacks bf16"
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        ok = False
    cap = torch.backends.cpu.get_cpu_capability()
    if ok:
        return True, f"oneDNN native bf16 ({cap})"
    return False, f"CPU capability {cap}: no native bf16 (AVX-512 BF16/AMX), bf16 kernels are emulated"


def machine_info(device: Any) -> dict[str, Any]:
    """What the figures were measured on: CPU, threads, torch/MONAI versions, GPU, load."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": _cpu_model(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "bf16_fast": bf16_fast(device)[0],
        "loadavg_start": loadavg(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ratio(baseline: float, candidate: float) -> float:
    """How many times faster the candidate is (baseline / candidate)."""
    if not candidate or candidate != candidate:
        return float("nan")
    return baseline / candidate


def fmt_s(seconds: float | None) -> str:
    """Seconds for a table cell."""
    if seconds is None or seconds != seconds:
        return "-"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"
