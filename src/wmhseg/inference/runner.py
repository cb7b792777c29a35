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
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmhseg.errors import InputError
from wmhseg.files import atomic_write_json, atomic_write_text
from wmhseg.inference.agreement import bland_altman_plot, volume_agreement
from wmhseg.inference.infer_config import InferConfig
from wmhseg.inference.pipeline import process_scans
from wmhseg.inference.predictor import Predictor
from wmhseg.inference.records import ResultStore, invalid_rows
from wmhseg.inference.uncertainty import VolumeUncertainty
from wmhseg.manifest import Scan, read_manifest
from wmhseg.plain import to_plain
from wmhseg.qc import write_qc
from wmhseg.qc.flags import cohort_flags
from wmhseg.schema import TIMING_COLUMNS

__all__ = ["infer"]

log = logging.getLogger("wmhseg.infer")
_PACKAGES = ("wmhseg", "torch", "monai", "nibabel", "numpy", "scipy", "pandas", "lightning", "hydra-core")


def _longitudinal():
    """The longitudinal module, imported when asked for (it builds on this one)."""
    from wmhseg.inference import longitudinal

    return longitudinal


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


def _write_provenance(opts: InferConfig, cfg: Any, predictor: Predictor, n_scans: int) -> None:
    meta = {k: v for k, v in predictor.meta.items() if k != "config"}
    suffix = "" if opts.num_parts == 1 else f".part-{opts.part_id + 1}-of-{opts.num_parts}"
    atomic_write_json(opts.out_dir / f"provenance{suffix}.json", {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv, "host": platform.node(), "config": to_plain(cfg),
        "checkpoint": {"path": str(opts.ckpt_paths[0].resolve()), "sha256_16": predictor.model_id, "meta": meta},
        "predictor": predictor.describe(), "versions": _versions(), "torch_threads": torch.get_num_threads(),
        "manifest": {"path": str(opts.input.resolve()), "n_scans": n_scans},
        "part": {"num_parts": opts.num_parts, "part_id": opts.part_id},
    })
    if predictor.meta.get("config"):
        atomic_write_text(opts.out_dir / "training_config.yaml", str(predictor.meta["config"]))


def _volume_uncertainty(opts: InferConfig) -> VolumeUncertainty | None:
    """What ``inference.uncertainty`` asks for (the other checkpoints loaded for ``ensemble``)."""
    settings = opts.inference.uncertainty_settings()
    mode = settings.mode
    if mode == "none":
        if len(opts.ckpt_paths) > 1:
            raise InputError(f"ckpt_path names {len(opts.ckpt_paths)} checkpoints; that needs inference.uncertainty=ensemble")
        return None
    if mode == "tta" and len(opts.ckpt_paths) > 1:
        raise InputError("inference.uncertainty=tta takes one checkpoint; several are an ensemble")
    members = [Predictor.from_checkpoint(p, **opts.inference.predictor_settings()) for p in opts.ckpt_paths[1:]]
    return VolumeUncertainty(settings, members)


def _write_agreement(out_dir: Path, records: list[dict[str, Any]]) -> None:
    pairs = [(r["wmh_mm3"], (r.get("metrics") or {}).get("ref_wmh_mm3")) for r in records
             if r.get("status") == "ok" and r.get("metrics")]
    pred = np.array([p for p, _ in pairs], dtype=float)
    ref = np.array([np.nan if q is None else q for _, q in pairs], dtype=float)
    atomic_write_json(out_dir / "agreement.json", {"quantity": "wmh_mm3, network vs BISON label",
                                                   **volume_agreement(pred, ref)})
    if np.isfinite(pred + ref).sum() >= 2:
        bland_altman_plot(pred, ref, out_dir / "bland_altman.png")


def infer(cfg: Any) -> int:
    """Segment the scans of ``cfg.input`` with ``cfg.ckpt_path`` and write everything under ``cfg.out_dir``.

    Args:
        cfg: the composed ``configs/infer.yaml`` (a DictConfig or any mapping): ``ckpt_path``,
            ``input``, ``out_dir``, ``overwrite``, ``num_parts``, ``part_id``, ``num_workers``,
            ``progress``, ``pv_distance_mm``, ``register_t1`` (``null``: the checkpoint's), ``torch_threads``, ``strategy`` (``null``: one process;
            ``ddp``/``ddp_spawn``: Lightning ``predict``, see :mod:`wmhseg.inference.distributed`),
            ``accelerator``, ``devices``, ``num_nodes`` and ``inference``
            (:class:`~wmhseg.inference.infer_config.InferenceSettings`).

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
    opts = InferConfig.from_mapping(cfg)
    if opts.torch_threads:
        torch.set_num_threads(int(opts.torch_threads))
    scans = read_manifest(opts.input, bids_filters=opts.bids_filters)
    times = _longitudinal().read_visit_times(opts.visit_times) if opts.visit_times else None
    predictor, uncertainty = _load_predictors(opts)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    _write_provenance(opts, cfg, predictor, len(scans))
    store = ResultStore(opts.out_dir, predictor.model_id)
    plan = _plan(scans, store, opts, redo_without_interval=uncertainty is not None)
    log.info("%d scans in %s; this run: %d to do, %d already done", len(scans), opts.input, len(plan.todo),
             plan.n_skipped)
    result = _process(predictor, store, plan, opts, uncertainty, times)
    if result is None:  # other ranks: their scans are on disk; rank 0 writes the tables
        done = [store.read(s) or {"status": "error"} for s in plan.todo]
        return 1 if len(plan.failed_invalid) or any(r["status"] != "ok" for r in done) else 0
    n_ok, n_failed, walls, stages = result
    n_failed += len(plan.failed_invalid)
    tables = _write_outputs(store, scans, plan.invalid, opts, times)
    _report(opts, plan, n_ok, n_failed, walls, stages, tables, time.perf_counter() - t_start)
    return 1 if n_failed else 0


@dataclass
class _Plan:
    """This run's share of the manifest: rows refused up front, candidates, and what is left to do."""

    invalid: dict[int, str]
    share: list[Scan]
    failed_invalid: list[Scan]
    candidates: list[Scan]
    todo: list[Scan]

    @property
    def n_skipped(self) -> int:
        return len(self.candidates) - len(self.todo)


def _load_predictors(opts: InferConfig) -> tuple[Predictor, VolumeUncertainty | None]:
    """The checkpoint's predictor (the run's ``register_t1`` over the checkpoint's) and the uncertainty asked for."""
    predictor = Predictor.from_checkpoint(opts.ckpt_paths[0], **opts.inference.predictor_settings())
    if opts.register_t1 is not None:  # the run's choice over the checkpoint's
        predictor.preprocess_spec = replace(predictor.preprocess_spec, register_t1=str(opts.register_t1))
    return predictor, _volume_uncertainty(opts)


def _plan(scans: list[Scan], store: ResultStore, opts: InferConfig, *, redo_without_interval: bool) -> _Plan:
    """This part's scans: invalid rows fail at once, finished ones are skipped (unless they lack the interval)."""
    invalid = invalid_rows(scans)
    share = [s for i, s in enumerate(scans) if i % opts.num_parts == opts.part_id]
    failed_invalid = [s for s in share if s.row in invalid]
    for scan in failed_invalid:
        log.warning("%s", invalid[scan.row])
    candidates = [s for s in share if s.row not in invalid]
    todo = store.to_do(candidates, overwrite=opts.overwrite)
    if redo_without_interval:  # a finished scan without the interval asked for is redone
        queued = {s.row for s in todo}
        todo = [s for s in candidates
                if s.row in queued or not math.isfinite((store.read(s) or {}).get("wmh_mm3_sd") or math.nan)]
    return _Plan(invalid, share, failed_invalid, candidates, todo)


def _process(predictor: Predictor, store: ResultStore, plan: _Plan, opts: InferConfig, uncertainty: VolumeUncertainty | None,
             times: dict[tuple[str, str], float] | None) -> tuple[int, int, list[float], list[dict[str, float]]] | None:
    """Run the scans to do in this process, longitudinally, or over Lightning's ranks (``None`` on ranks > 0)."""
    todo = plan.todo
    if opts.strategy is None:
        if opts.longitudinal:
            return _longitudinal().process_longitudinal(predictor, store, todo, plan.candidates, opts, times)
        return process_scans(predictor, store, todo, opts, uncertainty)
    from wmhseg.inference.distributed import predict_distributed  # Lightning, imported only for ddp

    t0 = time.perf_counter()
    is_main = predict_distributed(predictor, store, todo, strategy=str(opts.strategy), accelerator=opts.accelerator,
                                  devices=opts.devices, num_nodes=opts.num_nodes, num_workers=opts.num_workers,
                                  pv_distance_mm=opts.pv_distance_mm, progress=opts.progress)
    if not is_main:
        return None
    done = [store.read(s) or {"status": "error"} for s in todo]
    stages = [{k: r[k] for k in TIMING_COLUMNS} for r in done if r["status"] == "ok"]
    walls = [(time.perf_counter() - t0) / len(todo)] * len(todo) if todo else []
    return len(stages), len(done) - len(stages), walls, stages


def _write_outputs(store: ResultStore, scans: list[Scan], invalid: dict[int, str], opts: InferConfig,
                   times: dict[tuple[str, str], float] | None) -> str:
    """The tables, QC, progression and agreement, once every part is done; what was written, in words."""
    records = store.collect(scans, invalid)
    if records is None:
        return "waiting for the other parts"
    tables = "volumes.csv"
    for record, flags in zip(records, cohort_flags(records), strict=True):
        record["qc_flags"] = flags
    with_metrics = any(s.label is not None for s in scans)
    store.write_tables(records, with_metrics=with_metrics)
    if opts.qc:
        t_qc = time.perf_counter()
        write_qc(opts.out_dir, records, convention=opts.qc_convention)
        tables += f", qc/index.html ({time.perf_counter() - t_qc:.1f} s)"
    if opts.longitudinal:
        _longitudinal().write_progression(opts.out_dir, records, times, opts.longitudinal_options)
        tables += ", progression.csv, longitudinal/"
    if with_metrics:
        _write_agreement(opts.out_dir, records)
        tables += ", metrics.csv, agreement.json"
    return tables


def _report(opts: InferConfig, plan: _Plan, n_ok: int, n_failed: int, walls: list[float],
            stages: list[dict[str, float]], tables: str, elapsed: float) -> None:
    """Log (or print, when logging does not reach the terminal) the run's one-line summary."""
    per_scan = f"{np.mean(walls):.2f} s/scan wall" if walls else "no scan processed"
    if stages:
        per_scan += " (" + ", ".join(f"{k[2:-2]} {np.mean([t[k] for t in stages]):.2f}" for k in TIMING_COLUMNS[:-1]) + " s)"
    part = "" if opts.num_parts == 1 else f" in part {opts.part_id + 1}/{opts.num_parts}"
    summary = (f"wmhseg infer: {n_ok} ok, {n_failed} failed, {plan.n_skipped} skipped (done before) of "
               f"{len(plan.share)} scans{part}; {per_scan}; total {elapsed:.1f} s; {opts.out_dir}: {tables}")
    log.info("%s", summary)
    if not _console_logging():
        print(summary)
