"""The background writer: results in order, errors brought back, and a scan whose export fails is
reported as failed with nothing half-written."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from inference_cases import infer_cfg, make_checkpoint, write_case, write_manifest

from wmhseg.inference import pipeline
from wmhseg.inference.runner import infer
from wmhseg.inference.writer import BackgroundWriter

IDS = {"subject_id": str, "session_id": str}


def test_jobs_run_in_one_thread_in_order_and_the_queue_is_bounded():
    threads: set[str] = set()
    running = threading.Event()
    release = threading.Event()

    def job(i: int) -> int:
        threads.add(threading.current_thread().name)
        if i == 0:
            running.set()
            release.wait(5)
        time.sleep(0.01 * (3 - i % 3))
        return i * i

    with BackgroundWriter(depth=2) as writer:
        writer.submit(0, lambda: job(0))
        assert running.wait(5)  # job 0 holds the thread: two more fit in the queue, a third would wait
        writer.submit(1, lambda: job(1))
        writer.submit(2, lambda: job(2))
        assert writer._jobs.full() and list(writer.finished()) == []
        release.set()
        for i in range(3, 6):
            writer.submit(i, lambda i=i: job(i))
        results = list(writer.finished(wait=True))
    assert results == [(i, i * i) for i in range(6)] and threads == {"wmhseg-writer"}


def test_the_warm_up_runs_first_in_the_writers_thread_and_its_failure_is_not_a_jobs():
    order: list[tuple[str, str]] = []

    def warm_up() -> None:
        order.append(("warm-up", threading.current_thread().name))
        raise ImportError("a library the first job will ask for again")

    with BackgroundWriter(warm_up=warm_up) as writer:
        writer.submit("a", lambda: order.append(("a", threading.current_thread().name)) or 1)
        assert list(writer.finished(wait=True)) == [("a", 1)]
    assert order == [("warm-up", "wmhseg-writer"), ("a", "wmhseg-writer")]


def test_the_qc_warm_up_draws_what_the_qc_picture_needs():
    import sys

    from wmhseg.qc.image import warm_up

    warm_up()
    assert "matplotlib.backends.backend_agg" in sys.modules


def test_an_exception_in_a_job_is_raised_in_the_callers_thread():
    with BackgroundWriter() as writer:
        writer.submit("a", lambda: 1)
        writer.submit("b", lambda: 1 / 0)
        writer.submit("c", lambda: 3)
        got = []
        with pytest.raises(ZeroDivisionError):
            for key, value in writer.finished(wait=True):
                got.append((key, value))
        assert got == [("a", 1)] and list(writer.finished(wait=True)) == [("c", 3)]


def test_a_failed_export_fails_that_scan_alone_and_leaves_no_partial_file(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    case = write_case(tmp_path / "data", "c")
    manifest = write_manifest(tmp_path / "m.csv", [
        {"subject_id": str(i), "session_id": "1", "t1": case["t1"], "flair": case["flair"]} for i in range(3)])
    real = pipeline.write_mask

    def disk_full_on_the_second(mask, reference, path, **kw):
        if path.name.startswith("1_"):
            raise OSError(28, "No space left on device")
        return real(mask, reference, path, **kw)

    monkeypatch.setattr(pipeline, "write_mask", disk_full_on_the_second)
    out = tmp_path / "out"
    assert infer(infer_cfg(ckpt, manifest, out, num_workers=1)) == 1
    vol = pd.read_csv(out / "volumes.csv", dtype=IDS, keep_default_na=False).set_index("subject_id")
    assert vol["status"].to_dict() == {"0": "ok", "1": "error", "2": "ok"}
    assert vol.loc["1", "error"].endswith("export failed (OSError: [Errno 28] No space left on device)")
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0_1_wmh.nii.gz", "2_1_wmh.nii.gz"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.is_file() and p.suffix != ".json"]
    assert sorted(p.name for p in (out / "qc").glob("*.png")) == ["0_1.png", "2_1.png"]
    monkeypatch.setattr(pipeline, "write_mask", real)
    assert infer(infer_cfg(ckpt, manifest, out, num_workers=1)) == 0  # the rerun redoes the failed scan only
