"""A CPU training process leaves a core to each loader worker while it trains, takes them all back
to validate, and restores its thread count at the end; on a GPU nothing changes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from wmhseg.errors import InputError
from wmhseg.models.cpu_threads import CpuThreads, check_torch_threads, cpu_threads


@pytest.mark.parametrize(("cores", "workers", "threads"), [(2, 1, 1), (16, 4, 12), (2, 3, 1), (4, 0, 4), (1, 0, 1)])
def test_the_cores_left_once_each_worker_has_one(cores, workers, threads):
    assert cpu_threads(cores, workers) == threads


@pytest.mark.parametrize("value", ["auto", None, 1, 6])
def test_torch_threads_values(value):
    assert check_torch_threads(value) == value


@pytest.mark.parametrize("value", [0, -2, "all", 2.5, True])
def test_a_bad_torch_threads_is_named(value):
    with pytest.raises(InputError, match="torch_threads="):
        check_torch_threads(value)


def _trainer(device: str, workers: int) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                           datamodule=SimpleNamespace(num_workers=workers))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_auto_gives_the_workers_their_cores_while_training_only(two_threads):
    trainer, callback = _trainer("cpu", 1), CpuThreads("auto")
    callback.setup(trainer, None, "fit")
    callback.on_validation_epoch_start(trainer, None)  # the sanity check
    assert torch.get_num_threads() == 2
    callback.on_train_epoch_start(trainer, None)
    assert torch.get_num_threads() == 1
    callback.on_validation_epoch_start(trainer, None)  # the training loader's workers are idle meanwhile
    assert torch.get_num_threads() == 2
    callback.on_train_epoch_start(trainer, None)
    callback.teardown(trainer, None, "fit")
    assert torch.get_num_threads() == 2


def test_a_number_holds_throughout_and_a_gpu_run_is_left_alone(two_threads):
    trainer, callback = _trainer("cpu", 1), CpuThreads(1)
    callback.setup(trainer, None, "fit")
    for hook in (callback.on_train_epoch_start, callback.on_validation_epoch_start):
        hook(trainer, None)
        assert torch.get_num_threads() == 1
    callback.teardown(trainer, None, "fit")
    assert torch.get_num_threads() == 2
    gpu, callback = _trainer("cuda", 1), CpuThreads("auto")
    callback.setup(gpu, None, "fit")
    callback.on_train_epoch_start(gpu, None)
    assert torch.get_num_threads() == 2
