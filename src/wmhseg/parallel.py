"""Independent jobs over the CPU's cores: the synthetic data writers paint one subject per process.

Torch-free. :func:`process_map` keeps the order of its items, so a writer's output does not depend
on how many processes painted it; with one worker (or one item) it runs in the calling process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["usable_cores", "process_map"]

T = TypeVar("T")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def process_map(fn: Callable[[Any], T], items: Iterable[Any], workers: int | None = None) -> list[T]:
    """``[fn(item) for item in items]``, over ``workers`` processes (default: :func:`usable_cores`;
    1 or fewer: in this process).

    ``fn`` must be a module-level function and the items picklable. An exception in a job is
    raised here, as it would be in the loop.
    """
    items = list(items)
    workers = min(len(items), int(workers) if workers is not None else usable_cores())
    if workers <= 1:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
