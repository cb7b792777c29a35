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
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from wmhseg.errors import Interrupted, WmhsegError
from wmhseg.geometry import voxel_sizes
from wmhseg.inference.export import write_mask
from wmhseg.inference.loading import PreparedScan, preloaded_transforms, prepare_scan
from wmhseg.inference.measures import tissue_volumes, wmh_measures
from wmhseg.inference.predictor import Predictor, WorkingPrediction
from wmhseg.inference.records import ResultStore, error_record
from wmhseg.inference.uncertainty import VolumeUncertainty
from wmhseg.manifest import Scan, check_scan
from wmhseg.metrics import label_lesions, segmentation_metrics
from wmhseg.qc.flags import scan_checks
from wmhseg.schema import TIMING_COLUMNS
from wmhseg.xfm import native_volumes, stereotaxic_scale

__all__ = ["ScanDataset", "process_prepared", "run_scan", "process_scans"]

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
    union = a | b
    if not union.any():
        return a, b
    box = []
    for axis in range(3):
        nz = np.flatnonzero(union.any(axis=tuple(x for x in range(3) if x != axis)))
        box.append(slice(max(int(nz[0]) - 2, 0), int(nz[-1]) + 3))
    return a[tuple(box)], b[tuple(box)]


def process_prepared(predictor: Predictor, store: ResultStore, scan: Scan, prepared: PreparedScan, *,
                     pv_distance_mm: float = 10.0, uncertainty: VolumeUncertainty | None = None,
                     working: WorkingPrediction | None = None) -> dict[str, Any]:
    """Layers 2-3 and measures for one prepared scan: writes its mask and returns its ok-record
    (with the volume's interval when ``uncertainty`` is given; ``working``: a prediction made
    elsewhere, e.g. with the other visits' evidence)."""
    t0 = time.perf_counter()
    working = predictor.predict(prepared.image) if working is None else working
    t1 = time.perf_counter()
    native = predictor.to_native(working, prepared.shape, prepared.affine)
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
    timings = {"t_load_s": prepared.t_load_s, "t_preprocess_s": prepared.t_preprocess_s, "t_predict_s": t1 - t0,
               "t_export_s": t2 - t1, "t_measure_s": t3 - t2, "t_uncertainty_s": t4 - t3}
    timings["t_total_s"] = sum(timings.values())
    timings = {k: round(v, 4) for k, v in timings.items()}
    return store.ok_record(scan, measures, warnings=prepared.warnings, timings=timings, metrics=metrics)


def run_scan(predictor: Predictor, store: ResultStore, scan: Scan, prepared: PreparedScan | None, error: str | None,
             *, pv_distance_mm: float = 10.0, uncertainty: VolumeUncertainty | None = None) -> dict[str, Any]:
    """One item of :class:`ScanDataset` -> its record (ok, or error naming the file and problem)."""
    if prepared is not None:
        try:
            return process_prepared(predictor, store, scan, prepared, pv_distance_mm=pv_distance_mm,
                                    uncertainty=uncertainty)
        except WmhsegError as exc:
            error = str(exc)
        except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of memory on one big scan
            log.debug("prediction failed on %s", scan.flair, exc_info=True)
            error = f"{scan.flair}: prediction failed ({type(exc).__name__}: {exc})"
    log.warning("%s: %s", scan.describe(), error)
    return error_record(scan, str(error))


def process_scans(predictor: Predictor, store: ResultStore, todo: list[Scan], opts: Any,
                  uncertainty: VolumeUncertainty | None) -> tuple[int, int, list[float], list[dict[str, float]]]:
    """Run the scans of ``todo``; return (n_ok, n_failed, per-scan wall times, stage timings of ok scans).

    ``opts``: the run's settings (``num_workers``, ``progress``, ``pv_distance_mm`` are read).

    Raises:
        Interrupted: Ctrl-C; the message says how many scans were finished and how to resume.
    """
    from tqdm.auto import tqdm

    n_ok = n_failed = 0
    walls: list[float] = []
    stages: list[dict[str, float]] = []
    dataset = ScanDataset(todo, predictor)
    bar = tqdm(total=len(todo), desc="scans", unit="scan", disable=not opts.progress, file=sys.stderr)
    last = time.perf_counter()
    try:
        for index, prepared, error in _prepared_stream(dataset, opts.num_workers):
            scan = todo[index]
            record = run_scan(predictor, store, scan, prepared, error, pv_distance_mm=opts.pv_distance_mm,
                              uncertainty=uncertainty)
            if record["status"] == "error":
                n_failed += 1
            else:
                n_ok += 1
                stages.append({k: record[k] for k in TIMING_COLUMNS})
            store.write(scan, record)
            now = time.perf_counter()
            walls.append(now - last)
            last = now
            bar.set_postfix(ok=n_ok, failed=n_failed)
            bar.update(1)
    except KeyboardInterrupt:
        raise Interrupted(f"{n_ok + n_failed} of the {len(todo)} scans of this run were finished ({n_ok} ok; "
                          f"their records are in {store.rows_dir}); rerun the same command to resume, finished "
                          "scans are skipped") from None
    finally:
        bar.close()
    return n_ok, n_failed, walls, stages


