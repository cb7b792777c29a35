"""wmhseg.parallel: jobs over processes, in order, with their errors."""

from __future__ import annotations

import os

import pytest

from wmhseg.errors import InputError
from wmhseg.parallel import process_map, usable_cores


def _pid_and_square(x: int) -> tuple[int, int]:
    if x < 0:
        raise InputError(f"job {x}: negative")
    return os.getpid(), x * x


def test_process_map_keeps_the_order_and_runs_in_other_processes():
    out = process_map(_pid_and_square, range(9), workers=2)
    assert [sq for _, sq in out] == [x * x for x in range(9)]
    assert os.getpid() not in {pid for pid, _ in out}
    # one worker, or one item: the calling process itself
    assert {pid for pid, _ in process_map(_pid_and_square, range(3), workers=1)} == {os.getpid()}
    assert process_map(_pid_and_square, [4], workers=8) == [(os.getpid(), 16)]
    assert process_map(_pid_and_square, [], workers=2) == []


def test_process_map_raises_a_job_error_as_the_loop_would():
    with pytest.raises(InputError, match="job -2: negative"):
        process_map(_pid_and_square, [1, -2, 3], workers=2)


def test_usable_cores_is_the_affinity():
    assert usable_cores() == len(os.sched_getaffinity(0))
