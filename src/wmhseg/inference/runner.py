"""``infer(cfg)``: segment every scan of a manifest and write masks, volume tables and provenance.

Outputs under ``out_dir`` (the fixed part is the documented contract in the README):

- ``masks/<subject_id>_<session_id>_wmh.nii.gz``: binary masks on each FLAIR's own grid;
- ``volumes.csv`` (:data:`~wmhseg.schema.VOLUME_COLUMNS`), and with a ``label``
  column ``metrics.csv``, ``agreement.json`` (ICC, Bland-Altman) and ``bland_altman.png``;
- ``rows/``: one record per scan (what makes reruns skip finished scans);
- ``provenance.json``: configuration, checkpoint hash and metadata, effective predictor
  settings, package versions; ``training_config.yaml`` when the checkpoint carries one.

A scan that fails gets ``status=error`` and a message naming the file and the problem; the
others go on. The return value is the exit code: 0 when every scan of this run's share is done,
1 when any failed; a run that cannot start (bad checkpoint, manifest or setting) raises
:class:`~wmhseg.errors.InputError` (infer.py prints it in one line and exits 2).

Loading and preprocessing run in ``num_workers`` threads while the network predicts.
A cohort can be split into ``num_parts`` jobs (``part_id`` = 0 .. num_parts-1; scan ``i`` goes
to part ``i % num_parts``); whichever part finishes last writes the complete tables. With
``strategy=ddp`` (or ``ddp_spawn``) the run goes through Lightning's ``predict`` over ``devices``
(:mod:`wmhseg.inference.distributed`); both give the table of a single process.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmhseg.errors import InputError, Interrupted, WmhsegError
from wmhseg.files import atomic_write_json, atomic_write_text
from wmhseg.geometry import voxel_sizes
from wmhseg.inference.agreement import bland_altman_plot, volume_agreement
from wmhseg.inference.export import write_mask
from wmhseg.inference.loading import PreparedScan, preloaded_transforms, prepare_scan
from wmhseg.inference.measures import tissue_volumes, wmh_measures
from wmhseg.inference.predictor import Predictor, WorkingPrediction
from wmhseg.inference.records import ResultStore, error_record, invalid_rows
from wmhseg.inference.uncertainty import UncertaintySettings, VolumeUncertainty
from wmhseg.manifest import Scan, check_scan, read_manifest
from wmhseg.metrics import label_lesions, segmentation_metrics
from wmhseg.plain import to_plain
from wmhseg.qc import CONVENTIONS as QC_CONVENTIONS
from wmhseg.qc import write_qc
from wmhseg.qc.flags import cohort_flags, scan_checks
from wmhseg.schema import TIMING_COLUMNS
from wmhseg.xfm import native_volumes, stereotaxic_scale

__all__ = ["infer", "RunOptions", "ScanDataset", "process_prepared", "process_scans", "run_scan"]

log = logging.getLogger("wmhseg.infer")
_PACKAGES = ("wmhseg", "torch", "monai", "nibabel", "numpy", "scipy", "pandas", "lightning", "hydra-core")


class RunOptions:
    """The validated run-level settings of ``configs/infer.yaml``.

    Raises:
        InputError: a missing required value (``???``) or a bad one, named in the message.
    """

    def __init__(self, cfg: Any) -> None:
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        for key in ("input", "out_dir"):
            value = _get_required(cfg, key)
            setattr(self, key, Path(str(value)).expanduser())
        self.ckpt_paths = _checkpoint_paths(_get_required(cfg, "ckpt_path"))
        self.ckpt_path = self.ckpt_paths[0]
        self.overwrite = bool(get("overwrite", False))
        self.num_parts = int(get("num_parts", 1))
        self.part_id = int(get("part_id", 0))
        self.num_workers = int(get("num_workers", 1))
        self.progress = bool(get("progress", True))
        self.pv_distance_mm = float(get("pv_distance_mm", 10.0))
        self.register_t1 = get("register_t1", None)
        self.qc = bool(get("qc", True))
        self.qc_convention = str(get("qc_convention", "radiological"))
        self.torch_threads = get("torch_threads", None)
        self.strategy = get("strategy", None) or None
        self.accelerator = str(get("accelerator", "auto"))
        self.devices = get("devices", "auto")
        self.num_nodes = int(get("num_nodes", 1))
        self.bids_filters = to_plain(get("bids_filters", None)) or {}
        self.longitudinal = bool(get("longitudinal", False))
        self.visit_times = get("visit_times", None) or None
        if self.longitudinal:
            lon = _longitudinal()
            lon.check_supported(self.num_parts, get("strategy", None) or None)
            self.longitudinal_options = lon.LongitudinalSettings(**(to_plain(get("longitudinal_options", None)) or {}))
        inference = get("inference", None) or {}
        self.inference = {k: to_plain(v) for k, v in dict(inference).items()}
        self.uncertainty = UncertaintySettings.pop_from(self.inference)
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise InputError(f"part_id={self.part_id} must satisfy 0 <= part_id < num_parts={self.num_parts}")
        if self.num_workers < 0:
            raise InputError(f"num_workers={self.num_workers} must be >= 0")
        if self.pv_distance_mm <= 0:
            raise InputError(f"pv_distance_mm={self.pv_distance_mm} must be > 0")
        if self.qc_convention not in QC_CONVENTIONS:
            raise InputError(f"qc_convention={self.qc_convention!r} is not one of {QC_CONVENTIONS}")
        if self.uncertainty.mode != "none" and self.longitudinal:
            raise InputError(f"inference.uncertainty={self.uncertainty.mode} is not available with longitudinal=true")
        if self.uncertainty.mode != "none" and self.strategy is not None:
            raise InputError(f"inference.uncertainty={self.uncertainty.mode} runs in one process per part "
                             "(num_parts/part_id), not with strategy")


def _checkpoint_paths(value: Any) -> list[Path]:
    """``ckpt_path``: one checkpoint, a list of them, or a comma-separated string."""
    value = to_plain(value)
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    paths = [Path(str(v).strip()).expanduser() for v in items if str(v).strip()]
    if not paths:
        raise InputError("ckpt_path names no checkpoint")
    return paths


def _longitudinal():
    """The longitudinal module, imported when asked for (it builds on this one)."""
    from wmhseg.inference import longitudinal

    return longitudinal


def _get_required(cfg: Any, key: str) -> Any:
    try:
        value = cfg[key] if hasattr(cfg, "__getitem__") else getattr(cfg, key)
    except Exception as exc:  # omegaconf MissingMandatoryValue, KeyError, AttributeError
        raise InputError(f"{key} is required: python infer.py ckpt_path=CKPT input=MANIFEST_OR_FOLDER out_dir=DIR") from exc
    if value is None or str(value) in ("", "???"):
        raise InputError(f"{key} is required: python infer.py ckpt_path=CKPT input=MANIFEST_OR_FOLDER out_dir=DIR")
    return value


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


def _identity(item: Any) -> Any:
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


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


def _console_logging() -> bool:
    """True when log records already reach the terminal (e.g. Hydra's console handler)."""
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for logger in (log, logging.getLogger("wmhseg"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in streams:
                return log.isEnabledFor(logging.INFO)
    return False


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _write_provenance(opts: RunOptions, cfg: Any, predictor: Predictor, n_scans: int) -> None:
    meta = {k: v for k, v in predictor.meta.items() if k != "config"}
    suffix = "" if opts.num_parts == 1 else f".part-{opts.part_id + 1}-of-{opts.num_parts}"
    atomic_write_json(opts.out_dir / f"provenance{suffix}.json", {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv, "host": platform.node(), "config": to_plain(cfg),
        "checkpoint": {"path": str(opts.ckpt_path.resolve()), "sha256_16": predictor.model_id, "meta": meta},
        "predictor": predictor.describe(), "versions": _versions(), "torch_threads": torch.get_num_threads(),
        "manifest": {"path": str(opts.input.resolve()), "n_scans": n_scans},
        "part": {"num_parts": opts.num_parts, "part_id": opts.part_id},
    })
    if predictor.meta.get("config"):
        atomic_write_text(opts.out_dir / "training_config.yaml", str(predictor.meta["config"]))


def _volume_uncertainty(opts: RunOptions) -> VolumeUncertainty | None:
    """What ``inference.uncertainty`` asks for (the other checkpoints loaded for ``ensemble``)."""
    mode = opts.uncertainty.mode
    if mode == "none":
        if len(opts.ckpt_paths) > 1:
            raise InputError(f"ckpt_path names {len(opts.ckpt_paths)} checkpoints; that needs inference.uncertainty=ensemble")
        return None
    if mode == "tta" and len(opts.ckpt_paths) > 1:
        raise InputError("inference.uncertainty=tta takes one checkpoint; several are an ensemble")
    members = [Predictor.from_checkpoint(p, **opts.inference) for p in opts.ckpt_paths[1:]]
    return VolumeUncertainty(opts.uncertainty, members)


def _write_agreement(out_dir: Path, records: list[dict[str, Any]]) -> None:
    pairs = [(r["wmh_mm3"], (r.get("metrics") or {}).get("ref_wmh_mm3")) for r in records
             if r.get("status") == "ok" and r.get("metrics")]
    pred = np.array([p for p, _ in pairs], dtype=float)
    ref = np.array([np.nan if q is None else q for _, q in pairs], dtype=float)
    atomic_write_json(out_dir / "agreement.json", {"quantity": "wmh_mm3, network vs BISON label",
                                                   **volume_agreement(pred, ref)})
    if np.isfinite(pred + ref).sum() >= 2:
        bland_altman_plot(pred, ref, out_dir / "bland_altman.png")


def process_scans(predictor: Predictor, store: ResultStore, todo: list[Scan], opts: RunOptions,
                  uncertainty: VolumeUncertainty | None) -> tuple[int, int, list[float], list[dict[str, float]]]:
    """Run the scans of ``todo``; return (n_ok, n_failed, per-scan wall times, stage timings of ok scans)."""
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


def infer(cfg: Any) -> int:
    """Segment the scans of ``cfg.input`` with ``cfg.ckpt_path`` and write everything under ``cfg.out_dir``.

    Args:
        cfg: the composed ``configs/infer.yaml`` (a DictConfig or any mapping): ``ckpt_path``,
            ``input``, ``out_dir``, ``overwrite``, ``num_parts``, ``part_id``, ``num_workers``,
            ``progress``, ``pv_distance_mm``, ``register_t1`` (``null``: the checkpoint's), ``torch_threads``, ``strategy`` (``null``: one process;
            ``ddp``/``ddp_spawn``: Lightning ``predict``, see :mod:`wmhseg.inference.distributed`),
            ``accelerator``, ``devices``, ``num_nodes`` and ``inference``
            (:class:`~wmhseg.inference.predictor.InferenceSettings`).

    Returns:
        The exit code: 0 all done, 1 some scan failed.

    Raises:
        InputError: the run cannot start (a bad checkpoint, manifest or setting), named in the message.
        Interrupted: Ctrl-C; the message says how many scans were finished and how to resume.

    Example:
        >>> infer({"ckpt_path": "last.ckpt", "input": "manifest.csv", "out_dir": "out"})  # doctest: +SKIP
        0
    """
    t_start = time.perf_counter()
    opts = RunOptions(cfg)
    if opts.torch_threads:
        torch.set_num_threads(int(opts.torch_threads))
    scans = read_manifest(opts.input, bids_filters=opts.bids_filters)
    opts.times = _longitudinal().read_visit_times(opts.visit_times) if opts.visit_times else None
    predictor = Predictor.from_checkpoint(opts.ckpt_path, **opts.inference)
    if opts.register_t1 is not None:  # the run's choice over the checkpoint's
        predictor.preprocess_spec = replace(predictor.preprocess_spec, register_t1=str(opts.register_t1))
    uncertainty = _volume_uncertainty(opts)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    _write_provenance(opts, cfg, predictor, len(scans))
    store = ResultStore(opts.out_dir, predictor.model_id)
    invalid = invalid_rows(scans)
    share = [s for i, s in enumerate(scans) if i % opts.num_parts == opts.part_id]
    failed_invalid = [s for s in share if s.row in invalid]
    for scan in failed_invalid:
        log.warning("%s", invalid[scan.row])
    candidates = [s for s in share if s.row not in invalid]
    todo = store.to_do(candidates, overwrite=opts.overwrite)
    if uncertainty is not None:  # a finished scan without the interval asked for is redone
        queued = {s.row for s in todo}
        todo = [s for s in candidates
                if s.row in queued or not math.isfinite((store.read(s) or {}).get("wmh_mm3_sd") or math.nan)]
    n_skipped = len(candidates) - len(todo)
    log.info("%d scans in %s; this run: %d to do, %d already done", len(scans), opts.input, len(todo), n_skipped)
    if opts.strategy is None:
        n_ok, n_failed, walls, stages = (_longitudinal().process_longitudinal(predictor, store, todo, candidates, opts)
                                         if opts.longitudinal else process_scans(predictor, store, todo, opts, uncertainty))
    else:
        from wmhseg.inference.distributed import predict_distributed

        t0 = time.perf_counter()
        is_main = predict_distributed(predictor, store, todo, strategy=str(opts.strategy),
                                      accelerator=opts.accelerator, devices=opts.devices, num_nodes=opts.num_nodes,
                                      num_workers=opts.num_workers, pv_distance_mm=opts.pv_distance_mm,
                                      progress=opts.progress)
        done = [store.read(s) or {"status": "error"} for s in todo]
        stages = [{k: r[k] for k in TIMING_COLUMNS} for r in done if r["status"] == "ok"]
        n_ok, n_failed = len(stages), len(done) - len(stages)
        walls = [(time.perf_counter() - t0) / len(todo)] * len(todo) if todo else []
        if not is_main:  # other ranks: their scans are on disk; rank 0 writes the tables
            return 1 if n_failed + len(failed_invalid) else 0
    n_failed += len(failed_invalid)

    records = store.collect(scans, invalid)
    tables = "waiting for the other parts" if records is None else "volumes.csv"
    if records is not None:
        for record, flags in zip(records, cohort_flags(records), strict=True):
            record["qc_flags"] = flags
        with_metrics = any(s.label is not None for s in scans)
        store.write_tables(records, with_metrics=with_metrics)
        if opts.qc:
            t_qc = time.perf_counter()
            write_qc(opts.out_dir, records, convention=opts.qc_convention)
            tables += f", qc/index.html ({time.perf_counter() - t_qc:.1f} s)"
        if opts.longitudinal:
            _longitudinal().write_progression(opts.out_dir, records, opts.times, opts.longitudinal_options)
            tables += ", progression.csv, longitudinal/"
        if with_metrics:
            _write_agreement(opts.out_dir, records)
            tables += ", metrics.csv, agreement.json"
    per_scan = f"{np.mean(walls):.2f} s/scan wall" if walls else "no scan processed"
    if stages:
        per_scan += " (" + ", ".join(f"{k[2:-2]} {np.mean([t[k] for t in stages]):.2f}" for k in TIMING_COLUMNS[:-1]) + " s)"
    summary = (f"wmhseg infer: {n_ok} ok, {n_failed} failed, {n_skipped} skipped (done before) of {len(share)} scans"
               f"{'' if opts.num_parts == 1 else f' in part {opts.part_id + 1}/{opts.num_parts}'}; {per_scan}; "
               f"total {time.perf_counter() - t_start:.1f} s; {opts.out_dir}: {tables}")
    log.info("%s", summary)
    if not _console_logging():
        print(summary)
    return 1 if n_failed else 0
