"""One background thread that finishes scans while the next one is predicted.

As nnU-Net's export pool does, the work after the network (resampling onto the native grid,
writing the mask, measures, the record, the QC picture) runs beside the next scan's prediction.
Here it is one thread with a bounded queue:

- one thread, so jobs run one at a time in the order they were given (matplotlib, which draws the
  QC pictures, is not thread-safe), and the network's thread pool keeps the cores it has;
- a bounded queue (``depth``), so at most that many predicted scans wait in memory: when the
  writer falls behind, :meth:`BackgroundWriter.submit` waits for it;
- a job's result or exception comes back to the caller's thread in order
  (:meth:`BackgroundWriter.finished`); an exception is raised there;
- an optional ``warm_up`` runs first, while the first scan is still being read and predicted:
  importing the libraries of the jobs to come (matplotlib for the QC picture, 0.3 s) there
  takes it off a one-scan run's critical path.

Files stay atomic whatever the thread: every writer of the package writes a temporary file and
renames it into place, so a job stopped half way leaves no half-written output.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BackgroundWriter"]

log = logging.getLogger("wmhseg.infer")


class BackgroundWriter:
    """Runs ``submit``-ted jobs in one background thread, in order; results come back in order.

    Args:
        depth: jobs that may wait for the thread before :meth:`submit` blocks (>= 1).
        warm_up: called once in the thread before the first job; what it returns or raises is
            dropped (a failure it hid comes back with the job that needs the same thing).

    Example:
        >>> with BackgroundWriter() as writer:
        ...     for i in range(3):
        ...         writer.submit(i, lambda i=i: i * i)
        ...     results = list(writer.finished(wait=True))
        >>> results
        [(0, 0), (1, 1), (2, 4)]
    """

    def __init__(self, depth: int = 2, warm_up: Callable[[], Any] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1")
        self._warm_up = warm_up
        self._jobs: queue.Queue[tuple[Any, Callable[[], Any]] | None] = queue.Queue(maxsize=depth)
        self._done: queue.Queue[tuple[Any, Any, BaseException | None]] = queue.Queue()
        self._pending = 0
        self._thread = threading.Thread(target=self._work, name="wmhseg-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        if self._warm_up is not None:
            try:
                self._warm_up()
            except Exception:  # noqa: BLE001 - the job that needs it raises the same
                log.debug("writer warm-up failed", exc_info=True)
        while (item := self._jobs.get()) is not None:
            key, job = item
            try:
                self._done.put((key, job(), None))
            except BaseException as exc:  # handed to the caller's thread, raised there
                self._done.put((key, None, exc))

    def submit(self, key: Any, job: Callable[[], Any]) -> None:
        """Queue ``job`` (its result comes back with ``key``); waits while ``depth`` jobs are queued."""
        self._pending += 1
        self._jobs.put((key, job))

    def finished(self, *, wait: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(key, result)`` of the jobs finished so far, in submission order; with ``wait``, of
        every job submitted.

        Raises:
            BaseException: what a job raised.
        """
        while self._pending and (wait or not self._done.empty()):
            key, result, exc = self._done.get()
            self._pending -= 1
            if exc is not None:
                raise exc
            yield key, result

    def close(self) -> None:
        """Let the thread finish the queued jobs, then stop it."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
