"""The per-scan pipeline every way of running inference shares: prepare, predict, export, measure.

- :class:`ScanDataset`: layer 1 over a list of scans (an item is ``(index, PreparedScan | None,
  error | None)``; a scan that cannot be loaded yields its error instead of raising);
- :func:`process_prepared`: layers 2-3 and the measures of one prepared scan -> its ok-record;
- :func:`run_scan`: one :class:`ScanDataset` item -> its record, ok or error;
- :func:`process_scans`: the loop of one process over its scans, the next ones prepared in threads.

:mod:`wmhseg.inference.runner` (one process or parts), :mod:`wmhseg.inference.distributed`
(Lightning ``predict``) and :mod:`wmhseg.inference.longitudinal` build on it; it imports none of them.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from wmhseg.errors import Interrupted, WmhsegError
from wmhseg.geometry import bounding_box, voxel_sizes
from wmhseg.inference.export import write_mask
from wmhseg.inference.loading import PreparedScan, preloaded_transforms, prepare_scan
from wmhseg.inference.measures import tissue_volumes, wmh_measures
from wmhseg.inference.predictor import Predictor, WorkingPrediction
from wmhseg.inference.records import ResultStore, error_record
from wmhseg.inference.uncertainty import VolumeUncertainty
from wmhseg.inference.writer import BackgroundWriter
from wmhseg.manifest import Scan, check_scan
from wmhseg.metrics import label_lesions, segmentation_metrics
from wmhseg.qc.flags import cohort_flags, scan_checks
from wmhseg.qc.image import warm_up as qc_warm_up
from wmhseg.schema import TIMING_COLUMNS
from wmhseg.xfm import native_volumes, stereotaxic_scale

__all__ = ["ScanDataset", "Predicted", "predict_scan", "finish_scan", "process_prepared", "export_prediction",
           "run_scan", "process_scans"]

log = logging.getLogger("wmhseg.infer")


class ScanDataset(torch.utils.data.Dataset):
    """Layer 1 over a list of scans; an item is ``(index, PreparedScan | None, error | None)``.

    A scan that cannot be loaded yields its error message instead of raising, so one bad file
    never stops a DataLoader.
    """

    def __init__(self, scans: Sequence[Scan], predictor: Predictor) -> None:
        self.scans = list(scans)
        self.spec = predictor.preprocess_spec
        self.label_spec = predictor.label_spec
        self._transforms = None

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int) -> tuple[int, PreparedScan | None, str | None]:
        scan = self.scans[index]
        if self._transforms is None:
            self._transforms = preloaded_transforms(self.spec)
        try:
            check_scan(replace(scan, label=None), read_data=False)  # a bad reference label only costs its metrics
            prepared = prepare_scan(scan.t1, scan.flair, self.spec, label=scan.label, label_spec=self.label_spec,
                                    transforms=self._transforms)
            if prepared.reference is not None:
                prepared.reference = self.label_spec.wmh_mask(prepared.reference)
            return index, prepared, None
        except WmhsegError as exc:
            return index, None, str(exc)
        except Exception as exc:  # an unexpected failure still names the scan's files
            log.debug("unexpected error on %s", scan.flair, exc_info=True)
            return index, None, f"{scan.flair}: {type(exc).__name__}: {exc}"


def _prepared_stream(dataset: ScanDataset, num_workers: int) -> Iterator[tuple[int, PreparedScan | None, str | None]]:
    """The dataset's items in order, the next ``num_workers`` prepared in threads while one predicts.

    Threads rather than worker processes: reading (gzip, nibabel) and resampling release the GIL, and
    no process is forked from one that holds a native thread pool (a forked copy of OpenVINO's
    crashes the child).
    """
    if num_workers == 0 or len(dataset) <= 1:
        for i in range(len(dataset)):
            yield dataset[i]
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="wmhseg-prepare") as pool:
        pending = deque(pool.submit(dataset.__getitem__, i) for i in range(min(num_workers + 1, len(dataset))))
        queued = len(pending)
        try:
            while pending:
                item = pending.popleft().result()
                if queued < len(dataset):
                    pending.append(pool.submit(dataset.__getitem__, queued))
                    queued += 1
                yield item
        finally:
            for future in pending:
                future.cancel()


def _crop_to(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus 2 voxels (metrics unchanged)."""
    box = bounding_box(a | b, 2)
    return (a, b) if box is None else (a[box], b[box])


@dataclass
class Predicted:
    """A scan after layer 2: its network output on the working grid, or the error that stopped it."""

    scan: Scan
    prepared: PreparedScan | None
    working: WorkingPrediction | None = None
    t_predict_s: float = 0.0
    error: str | None = None


def _failure(scan: Scan, exc: Exception, stage: str) -> str:
    """The message of a scan that failed: the error itself when it is one of ours, else what and where."""
    if isinstance(exc, WmhsegError):
        return str(exc)
    log.debug("%s failed on %s", stage, scan.flair, exc_info=True)
    return f"{scan.flair}: {stage} failed ({type(exc).__name__}: {exc})"


def predict_scan(predictor: Predictor, scan: Scan, prepared: PreparedScan | None, error: str | None) -> Predicted:
    """Layer 2 of one :class:`ScanDataset` item, in the calling thread (the one that runs the network)."""
    if prepared is None:
        return Predicted(scan, None, error=error)
    t0 = time.perf_counter()
    try:
        working = predictor.predict(prepared.image)
    except (WmhsegError, RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of memory on one big scan
        return Predicted(scan, prepared, error=_failure(scan, exc, "prediction"))
    return Predicted(scan, prepared, working, time.perf_counter() - t0)


def finish_scan(predictor: Predictor, store: ResultStore, predicted: Predicted, *, pv_distance_mm: float = 10.0,
                uncertainty: VolumeUncertainty | None = None) -> dict[str, Any]:
    """Layer 3 and the measures of a predicted scan: writes its mask and returns its record (ok, or
    error naming the file and the problem). Safe in a thread beside :func:`predict_scan` unless
    ``uncertainty`` is given (which runs the network again)."""
    scan, error = predicted.scan, predicted.error
    if error is None and predicted.prepared is not None and predicted.working is not None:
        try:
            return export_prediction(predictor, store, scan, predicted.prepared, predicted.working,
                                     t_predict_s=predicted.t_predict_s, pv_distance_mm=pv_distance_mm,
                                     uncertainty=uncertainty)
        except (WmhsegError, RuntimeError, ValueError, MemoryError, OSError) as exc:
            error = _failure(scan, exc, "export")
    log.warning("%s: %s", scan.describe(), error)
    return error_record(scan, str(error))


def process_prepared(predictor: Predictor, store: ResultStore, scan: Scan, prepared: PreparedScan, *,
                     pv_distance_mm: float = 10.0, uncertainty: VolumeUncertainty | None = None,
                     working: WorkingPrediction | None = None) -> dict[str, Any]:
    """Layers 2-3 and measures for one prepared scan: writes its mask and returns its ok-record
    (with the volume's interval when ``uncertainty`` is given; ``working``: a prediction made
    elsewhere, e.g. with the other visits' evidence)."""
    t0 = time.perf_counter()
    working = predictor.predict(prepared.image) if working is None else working
    return export_prediction(predictor, store, scan, prepared, working, t_predict_s=time.perf_counter() - t0,
                             pv_distance_mm=pv_distance_mm, uncertainty=uncertainty)


def export_prediction(predictor: Predictor, store: ResultStore, scan: Scan, prepared: PreparedScan,
                      working: WorkingPrediction, *, t_predict_s: float, pv_distance_mm: float = 10.0,
                      uncertainty: VolumeUncertainty | None = None) -> dict[str, Any]:
    """Layer 3 and measures of one predicted scan: writes its mask and returns its ok-record."""
    t1 = time.perf_counter()
    native = predictor.to_native(working, prepared.shape, prepared.affine, intensity=prepared.flair_data)
    write_mask(native.mask, prepared.flair, store.mask_path(scan), affine=prepared.affine)
    t2 = time.perf_counter()
    measures = wmh_measures(native.mask, prepared.affine, probability=native.probability,
                            ventricles=native.ventricles, pv_distance_mm=pv_distance_mm)
    if working.classes is not None:
        measures.update(tissue_volumes(working.classes.numpy(), working.voxel_mm3))
    else:
        measures.update(icv_mm3=math.nan, brain_mm3=math.nan)
    measures.update(scan_checks(prepared.image, working.affine, working.wmh, working.classes, predictor.threshold))
    metrics = None
    if prepared.reference is not None:
        pred, ref = _crop_to(native.mask, prepared.reference)
        metrics = segmentation_metrics(pred, ref, voxel_sizes(prepared.affine))
        metrics["ref_wmh_mm3"] = int(ref.sum()) * measures["voxel_mm3"]
        metrics["ref_n_lesions"] = label_lesions(ref)[1]
    t3 = time.perf_counter()
    if uncertainty is not None:  # before the stereotaxic scaling, which then applies to the interval too
        measures.update(uncertainty(predictor, prepared, float(measures["wmh_mm3"])))
    t4 = time.perf_counter()
    if scan.xfm is not None:  # the images lie in stereotaxic space: report native volumes
        scale = stereotaxic_scale(scan.xfm)
        measures = native_volumes(measures, scale)
        if metrics is not None:
            metrics["ref_wmh_mm3"] /= scale
    measures.update(prepared.alignment)
    timings = {"t_load_s": prepared.t_load_s, "t_preprocess_s": prepared.t_preprocess_s, "t_predict_s": t_predict_s,
               "t_export_s": t2 - t1, "t_measure_s": t3 - t2, "t_uncertainty_s": t4 - t3}
    timings["t_total_s"] = sum(timings.values())
    timings = {k: round(v, 4) for k, v in timings.items()}
    return store.ok_record(scan, measures, warnings=[*prepared.warnings, *working.warnings], timings=timings,
                           metrics=metrics)


def run_scan(predictor: Predictor, store: ResultStore, scan: Scan, prepared: PreparedScan | None, error: str | None,
             *, pv_distance_mm: float = 10.0, uncertainty: VolumeUncertainty | None = None) -> dict[str, Any]:
    """One item of :class:`ScanDataset` -> its record (ok, or error naming the file and problem)."""
    return finish_scan(predictor, store, predict_scan(predictor, scan, prepared, error),
                       pv_distance_mm=pv_distance_mm, uncertainty=uncertainty)


class _Tally:
    """Counts, per-scan wall times and stage timings of the finished scans, and the progress bar."""

    def __init__(self, n: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.n, self.ok, self.failed = n, 0, 0
        self.walls: list[float] = []
        self.stages: list[dict[str, float]] = []
        self.bar = tqdm(total=n, desc="scans", unit="scan", disable=not progress, file=sys.stderr)
        self._last = time.perf_counter()

    def add(self, record: dict[str, Any]) -> None:
        if record["status"] == "error":
            self.failed += 1
        else:
            self.ok += 1
            self.stages.append({k: record[k] for k in TIMING_COLUMNS})
        now = time.perf_counter()
        self.walls.append(now - self._last)
        self._last = now
        self.bar.set_postfix(ok=self.ok, failed=self.failed)
        self.bar.update(1)

    def result(self) -> tuple[int, int, list[float], list[dict[str, float]]]:
        return self.ok, self.failed, self.walls, self.stages


def _finish_job(predictor: Predictor, store: ResultStore, predicted: Predicted, opts: Any,
                uncertainty: VolumeUncertainty | None) -> Callable[[], dict[str, Any]]:
    """What the writer does with one predicted scan: mask and measures, the record, the QC picture."""

    def job() -> dict[str, Any]:
        record = finish_scan(predictor, store, predicted, pv_distance_mm=opts.pv_distance_mm, uncertainty=uncertainty)
        store.write(predicted.scan, record)
        if _draws_pictures(opts) and record["status"] == "ok":
            _draw_picture(store, predicted.scan, opts.qc_convention)
        return record

    return job


def _draws_pictures(opts: Any) -> bool:
    """Whether each scan's QC picture is drawn as it is finished (one part of one; parts leave them to the tables)."""
    return bool(getattr(opts, "qc", False)) and getattr(opts, "num_parts", 1) == 1


def _draw_picture(store: ResultStore, scan: Scan, convention: str) -> None:
    """The scan's QC picture with the flags it has on its own; a picture whose flags change with the
    cohort (``volume_outlier``) is drawn again with the tables."""
    from wmhseg.qc import draw_pictures

    stored = store.read(scan)
    if stored is not None:
        stored["qc_flags"] = cohort_flags([stored])[0]
        draw_pictures(store.out_dir, [stored], convention=convention)


def process_scans(predictor: Predictor, store: ResultStore, todo: list[Scan], opts: Any,
                  uncertainty: VolumeUncertainty | None) -> tuple[int, int, list[float], list[dict[str, float]]]:
    """Run the scans of ``todo``; return (n_ok, n_failed, per-scan wall times, stage timings of ok scans).

    ``opts``: the run's settings (``num_workers``, ``progress``, ``pv_distance_mm`` are read).

    Raises:
        Interrupted: Ctrl-C; the message says how many scans were finished and how to resume.
    """
    tally = _Tally(len(todo), opts.progress)
    background = getattr(opts, "background_writer", True) and uncertainty is None  # tta/ensemble run the network
    writer = BackgroundWriter(warm_up=qc_warm_up if _draws_pictures(opts) else None) if background else None
    try:
        for index, prepared, error in _prepared_stream(ScanDataset(todo, predictor), opts.num_workers):
            predicted = predict_scan(predictor, todo[index], prepared, error)
            job = _finish_job(predictor, store, predicted, opts, uncertainty)
            if writer is None:
                tally.add(job())
                continue
            writer.submit(index, job)
            for _, record in writer.finished():
                tally.add(record)
        for _, record in writer.finished(wait=True) if writer is not None else ():
            tally.add(record)
    except KeyboardInterrupt:
        for _, record in writer.finished(wait=True) if writer is not None else ():  # the scans already predicted
            tally.add(record)
        raise Interrupted(f"{tally.ok + tally.failed} of the {len(todo)} scans of this run were finished ({tally.ok} "
                          f"ok; their records are in {store.rows_dir}); rerun the same command to resume, finished "
                          "scans are skipped") from None
    finally:
        if writer is not None:
            writer.close()
        tally.bar.close()
    return tally.result()
