"""The CPU's cores shared between a training process's network and its data-loader workers.

PyTorch runs a CPU network with one intra-op thread per core, and each data-loader worker is a
process of its own: with workers, the cores are oversubscribed, and the network's threads wait
for one another at every layer while a worker holds one of their cores (PyTorch's CPU tuning
guide: threads x processes should not exceed the cores). On 2 cores with the ``synthetic``
experiment's one worker, a training step took 0.083 s of compute with 2 threads and 0.063 s with
1, and steps/s went from 11.7 to 13.5 (``benchmarks/bench_train_data.py``, idle threads sleeping
as ``train.py`` sets them).

:class:`CpuThreads` (``torch_threads: auto`` in ``configs/train.yaml``) therefore gives the
network, while it trains, the cores left once each training-loader worker has one
(:func:`cpu_threads`), and all of them back while it validates, when those workers are idle.
Lightning's DDP on CPU has already divided the cores among the ranks by then (its
``_set_num_threads_if_needed``), so the count is taken per process. An integer sets the count
for the whole run; ``null`` leaves PyTorch's own. On a GPU nothing changes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from wmhseg.errors import InputError

__all__ = ["CpuThreads", "cpu_threads", "training_threads", "check_torch_threads"]


def cpu_threads(cores: int, workers: int) -> int:
    """Intra-op threads for a training process with ``cores`` cores and ``workers`` loader
    workers: the cores left once each worker has one, at least 1."""
    return max(1, int(cores) - max(0, int(workers)))


def training_threads(setting: int | str | None, cores: int, workers: int) -> int | None:
    """The intra-op threads a CPU training process's network trains on under ``torch_threads``
    ``setting`` (``None``: PyTorch's own count, left alone)."""
    if setting is None:
        return None
    return cpu_threads(cores, workers) if setting == "auto" else int(setting)


def check_torch_threads(value: Any) -> int | str | None:
    """``torch_threads`` as given: ``"auto"``, a positive integer or ``None``.

    Raises:
        InputError: anything else, named.
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"torch_threads={value!r} must be 'auto', a positive integer or null")
    return value


class CpuThreads(L.Callback):
    """Sets a CPU training process's intra-op threads (module docstring); restores them at the end.

    Args:
        setting: ``"auto"`` (the cores less the training loader's workers while training, all of
            them while validating) or a positive integer (that many throughout).
    """

    def __init__(self, setting: int | str = "auto") -> None:
        self.setting = check_torch_threads(setting)
        self._before: int | None = None
        self._full = self._training = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type != "cpu" or self.setting is None:
            return
        self._before = torch.get_num_threads()
        workers = int(getattr(trainer.datamodule, "num_workers", 0) or 0)
        self._training = training_threads(self.setting, self._before, workers)
        self._full = self._before if self.setting == "auto" else self._training
        torch.set_num_threads(self._full)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._before is not None:
            torch.set_num_threads(self._training)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._before is not None:
            torch.set_num_threads(self._full)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None
