"""Goal 2: ``infer.py`` per scan (load + preprocess + predict + export) for a 1 mm brain.

Synthetic 182 x 218 x 182 T1w/FLAIR pairs (``wmhseg.synth.images.write_scan``, MNI anatomy,
gzipped NIfTI) are segmented two ways:

* in process, scan by scan, through the runner's own layers (``prepare_scan`` then
  ``process_prepared``): the stage split (load, preprocess, predict, export, measure);
* ``python infer.py`` in a fresh process on one scan (whole-process wall time: start-up, imports,
  checkpoint, OpenVINO compile and the scan), and over a batch of ``BATCH`` manifest rows (the
  written scans in turn, each row its own subject): wall time per scan with the start-up
  amortised, and the process's peak RSS; the batch also with each scan finished before the next
  is predicted (``background_writer=false``) against the default background writer, alternating.

The network is the default U-Net with random weights (the time does not depend on them) whose
foreground bias is shifted so that only a small fraction of the volume (about 1 %) is called
WMH, so that the export and lesion measures cost about what they cost on real masks; it is
saved as a wmhseg checkpoint for the command-line run.

Its WMH lie anywhere, scalp included, so ``inference.brain_crop``'s guard would send every scan
back to the head box; those runs use ``brain_crop=off``. The brain crop is measured beside them
(:func:`_brain_crop`): the one pass over the padded head box against the pass over the brain's
window (what runs when no foreground reaches its faces, as with a trained network), alternating
in one process, with the box's own cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timing import PeakRSS, loadavg

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.5  # the goal: one 1 mm scan in under 1.5 s
TARGET_MEM_GIB = 4.0
BATCH = 9  # manifest rows of the command-line batch (the written scans in turn)
SHAPE = (182, 218, 182)
STAGES = ("t_load_s", "t_preprocess_s", "t_predict_s", "t_export_s", "t_measure_s")


def available() -> tuple[bool, str]:
    """Whether the inference runner and the image synthesiser can be imported."""
    try:
        import wmhseg.inference.runner  # noqa: F401
        import wmhseg.synth.images  # noqa: F401
    except ImportError as exc:
        return False, f"not available: {exc}"
    return True, ""


def _write_scans(folder: Path, n: int) -> Path:
    """``n`` synthetic 1 mm MNI-sized scans and a manifest listing them."""
    from wmhseg.synth.images import write_scan

    lines = ["subject_id,session_id,t1,flair"]
    for i in range(n):
        paths = write_scan(folder, f"{i + 1:03d}", "01", wmh_volume_mm3=8000.0 + 4000.0 * i, seed=i,
                           anatomy="mni", shape=SHAPE, spacing=(1.0, 1.0, 1.0))
        lines.append(f"{i + 1:03d},01,{paths['t1']},{paths['flair']}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def _batch_manifest(manifest: Path, n: int, path: Path) -> Path:
    """A manifest of ``n`` rows cycling through ``manifest``'s scans, each row its own subject."""
    header, *rows = manifest.read_text(encoding="utf-8").splitlines()
    lines = [header] + [f"b{i + 1:03d}," + rows[i % len(rows)].split(",", 1)[1] for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _random_checkpoint(path: Path, prepared_image: torch.Tensor) -> Path:
    """Save the default U-Net (random weights, foreground bias calibrated on ``prepared_image``)."""
    from network_paths import DEFAULT_NET, default_unet

    from wmhseg.checkpoint import FORMAT_VERSION, META_KEY
    from wmhseg.data.preprocessing import PreprocessSpec
    from wmhseg.labels import LabelSpec

    net = default_unet()
    x = torch.as_tensor(prepared_image).float()[None]
    pads = []
    for n in reversed(x.shape[2:]):
        extra = (-n) % 16
        pads += [extra // 2, extra - extra // 2]
    with torch.inference_mode():
        logits = net(torch.nn.functional.pad(x, pads))
    diff = (logits[0, 1] - logits[0, 0]).flatten()
    shift = float(torch.quantile(diff[:: max(1, diff.numel() // 2_000_000)], 0.995))
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
    with torch.no_grad():
        last.bias[1] -= shift
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        META_KEY: {
            "format_version": FORMAT_VERSION,
            "wmhseg_version": "benchmark",
            "network": dict(DEFAULT_NET),
            "preprocessing": PreprocessSpec().to_dict(),
            "labels": LabelSpec().to_dict(),
            "inference": {"roi_size": [96, 96, 96], "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian",
                          "threshold": 0.5},
        },
    }
    torch.save(ckpt, path)
    return path


def _cli(ckpt: Path, manifest: Path, out_dir: Path, extra: list[str]) -> dict[str, Any]:
    """Run ``infer.py`` in a fresh process; wall time, exit code and peak RSS (``wait4``)."""
    cmd = [sys.executable, str(ROOT / "infer.py"), f"ckpt_path={ckpt}", f"input={manifest}", f"out_dir={out_dir}",
           "progress=false", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout is not None else ""
    if proc.stdout is not None:
        proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    peak_mib = usage.ru_maxrss / 1024.0
    stages: dict[str, float] = {}
    volumes = out_dir / "volumes.csv"
    if volumes.is_file():
        import pandas as pd

        table = pd.read_csv(volumes)
        stages = {c: round(float(table[c].median()), 3) for c in table.columns if c.startswith("t_")}
    return {"exit_code": proc.returncode, "wall_s": round(wall, 2), "peak_rss_mib": round(peak_mib, 1),
            "median_stage_s": stages, "tail": out.strip().splitlines()[-3:] if proc.returncode else []}


def _in_process(scans: list[Any], predictor: Any, out_dir: Path) -> tuple[list[dict[str, Any]], list[float | None], list[int]]:
    """Each scan prepared and finished in this process (the first twice: it warms up the allocator
    and oneDNN's primitives); the records, peak RSS per scan and the working grid's shape."""
    from wmhseg.inference.loading import prepare_scan
    from wmhseg.inference.pipeline import process_prepared
    from wmhseg.inference.records import ResultStore

    store = ResultStore(out_dir, predictor.model_id)
    records, peaks = [], []
    for scan in [scans[0], *scans]:
        with PeakRSS() as mem:
            prepared = prepare_scan(scan.t1, scan.flair, predictor.preprocess_spec, label_spec=predictor.label_spec)
            records.append(process_prepared(predictor, store, scan, prepared))
        peaks.append(mem.peak_mib)
    return records[1:], peaks, list(prepared.image.shape[1:])


def _brain_crop(predictor: Any, image: Any, repeats: int) -> dict[str, Any]:
    """Network pass over the padded head box against the brain's window (``Predictor.probabilities``'
    two paths), alternating; medians, voxel counts and the box's cost."""
    from wmhseg.geometry import padding_to_multiple, voxel_sizes
    from wmhseg.inference.brain_box import brain_box

    x = image.as_tensor().float()[None]
    t = time.perf_counter()
    box = brain_box(image[1], voxel_sizes(np.asarray(image.affine)))  # as the predictor's brain_crop=auto finds it
    box_s = time.perf_counter() - t
    if box is None:
        return {"box": None, "box_s": round(box_s, 3)}
    aligned, window = box.aligned(predictor.size_divisor)
    pads = padding_to_multiple(x.shape[2:], predictor.size_divisor)
    padded = F.pad(x, [p for pair in reversed(pads) for p in pair])
    crop = padded[(slice(None), slice(None), *window)].contiguous()
    head_s, brain_s = [], []
    for _ in range(2):  # warm-up of both shapes (OpenVINO's first passes on a new shape are slower)
        predictor._network_probabilities(crop)
        predictor._network_probabilities(x)
    for _ in range(repeats):
        for inputs, times in ((x, head_s), (crop, brain_s)):
            t = time.perf_counter()
            predictor._network_probabilities(inputs)
            times.append(time.perf_counter() - t)
    return {"head_padded_shape": list(padded.shape[2:]), "window_shape": list(crop.shape[2:]),
            "box": aligned.describe(), "box_s": round(box_s, 3), "voxel_ratio": float(crop[0, 0].numel() / padded[0, 0].numel()),
            "head_s": [round(v, 3) for v in head_s], "brain_s": [round(v, 3) for v in brain_s],
            "median_head_s": float(np.median(head_s)), "median_brain_s": float(np.median(brain_s)), "loadavg": loadavg()}


def _crop_row(crop: dict[str, Any]) -> dict[str, Any]:
    """Head box against brain box: seconds of the network pass (plus the box's cost) per scan."""
    goal = "2. infer predict on a 1 mm head with scalp: brain box against head box"
    if crop.get("head_s") is None:
        return {"goal": goal, "baseline": "-", "candidate": "no brain box (head box kept)", "ratio": None,
                "target": "faster, same masks", "met": False}
    head, brain = crop["median_head_s"], crop["median_brain_s"] + crop["box_s"]
    shape = lambda s: " x ".join(str(n) for n in s)  # noqa: E731
    return {"goal": goal, "baseline": f"head box {shape(crop['head_padded_shape'])}: {head:.2f} s",
            "candidate": f"brain window {shape(crop['window_shape'])} ({crop['voxel_ratio']:.2f} of the voxels): "
                         f"{brain:.2f} s incl. the box {crop['box_s']:.2f} s",
            "ratio": head / brain, "target": "faster, same masks", "met": brain < head}


def _command_lines(ckpt: Path, manifest: Path, tmp: Path) -> dict[str, Any]:
    """``python infer.py`` on one scan (3 runs), and on a batch of :data:`BATCH` rows as configured
    and with scans finished one after the other (``background_writer=false``), alternating so that a
    change of load hits both."""
    runs: dict[str, list[dict[str, Any]]] = {"one_scan": [], "default": [], "serial_writer": []}
    off = ["inference.brain_crop=off"]  # random weights: foreground in the scalp (module docstring)
    one = _batch_manifest(manifest, 1, tmp / "one.csv")
    batch = _batch_manifest(manifest, BATCH, tmp / "batch.csv")
    for r in range(3):
        runs["one_scan"].append(_cli(ckpt, one, tmp / f"cli_one{r}", off))
    runs["default"].append(_cli(ckpt, batch, tmp / "cli", off))
    for r in range(2):
        runs["serial_writer"].append(_cli(ckpt, batch, tmp / f"cli_serial{r}", ["background_writer=false", *off]))
        runs["default"].append(_cli(ckpt, batch, tmp / f"cli_writer{r}", off))
    return {**runs, "n_scans": BATCH}


def _writer_row(cli: dict[str, Any]) -> dict[str, Any]:
    """Background writer against one scan after the other: whole-process seconds per scan."""
    n = cli["n_scans"]
    writer = float(np.median([r["wall_s"] for r in cli["default"]])) / n
    serial = float(np.median([r["wall_s"] for r in cli["serial_writer"]])) / n
    return {"goal": f"2. python infer.py, {n} scans: export and QC in a background writer",
            "baseline": f"one scan after the other: {serial:.2f} s/scan",
            "candidate": f"background writer: {writer:.2f} s/scan", "ratio": serial / writer,
            "target": "faster, same bytes", "met": writer < serial}


def _rows(stage: dict[str, float], cli: dict[str, Any] | None, in_proc_mib: float,
          crop: dict[str, Any]) -> list[dict[str, Any]]:
    total = stage.get("t_total_s", float("nan"))
    one_row = []
    if cli is not None:
        n_scans = cli["n_scans"]  # the batch's rows
        first = cli["default"][0]
        mem_gib = max(r["peak_rss_mib"] for r in cli["default"]) / 1024.0
        ok = all(r["exit_code"] == 0 for r in cli["default"])
        batch = float(np.median([r["wall_s"] for r in cli["default"]]))
        per_scan = batch / n_scans
        one = float(np.median([r["wall_s"] for r in cli["one_scan"]]))
        # what each scan after the first adds: the batch's time less the one-scan run's, over the others
        marginal = (batch - one) / (n_scans - 1)
        cli_text = (f"{per_scan:.2f} s/scan incl. start-up (median of {len(cli['default'])}), {marginal:.2f} s for "
                    f"each scan after the first; peak RSS {mem_gib:.2f} GiB"
                    if ok else f"exit code {first['exit_code']}: {' '.join(first['tail'])[:120]}")
        cli_goal = f"2. per scan in a batch (python infer.py, {n_scans} rows of 1 mm scans)"
        met = ok and mem_gib < TARGET_MEM_GIB and per_scan < TARGET_S
        one_row = [{"goal": "2. python infer.py on one 1 mm scan (fresh process, start-up included)", "baseline": "-",
                    "candidate": f"{one:.2f} s wall (median of {len(cli['one_scan'])}; "
                                 f"the scan's own stages {cli['one_scan'][0]['median_stage_s'].get('t_total_s', float('nan')):.2f} s)",
                    "ratio": None, "target": f"< {TARGET_S:g} s", "met": one < TARGET_S}]
    else:
        mem_gib = in_proc_mib / 1024.0
        cli_text = f"in-process peak RSS {mem_gib:.2f} GiB (command line skipped in --quick)"
        cli_goal, met = "2. infer peak memory", mem_gib < TARGET_MEM_GIB
    rows = [{"goal": "2. infer per scan, in process (load+prep+predict+export)", "baseline": "-",
             "candidate": f"{total:.2f} s (" + ", ".join(f"{k[2:-2]} {v:.2f}" for k, v in stage.items()
                                                        if k != "t_total_s") + ")",
             "ratio": None, "target": f"< {TARGET_S:g} s", "met": total < TARGET_S},
            *one_row,
            {"goal": cli_goal, "baseline": "-", "candidate": cli_text, "ratio": None,
             "target": f"< {TARGET_S:g} s/scan, < {TARGET_MEM_GIB:g} GiB" if cli is not None else f"< {TARGET_MEM_GIB:g} GiB",
             "met": met}]
    return rows + [_crop_row(crop)] + ([_writer_row(cli)] if cli is not None else [])


def run(*, quick: bool = False) -> dict[str, Any]:
    """Time the per-scan stages in process and the command line over a few scans."""
    ok, reason = available()
    if not ok:
        return {"name": "infer_scan", "available": False, "reason": reason, "rows": []}
    from wmhseg.data.preprocessing import PreprocessSpec
    from wmhseg.inference.loading import prepare_scan
    from wmhseg.inference.predictor import Predictor
    from wmhseg.manifest import read_manifest

    n_scans = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="wmhseg-bench-infer-") as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        manifest = _write_scans(tmp / "scans", n_scans)
        synth_s = time.perf_counter() - t
        scans = read_manifest(manifest)
        first = prepare_scan(scans[0].t1, scans[0].flair, PreprocessSpec())
        ckpt_path = _random_checkpoint(tmp / "random.ckpt", first.image)
        # as infer.py runs it: backend auto (OpenVINO for fp32 on a CPU where it is installed)
        predictor = Predictor.from_checkpoint(ckpt_path, brain_crop="off", backend="auto")
        records, peaks, working_shape = _in_process(scans, predictor, tmp / "inproc")
        crop = _brain_crop(predictor, first.image, 3 if quick else 5)
        cli = None if quick else _command_lines(ckpt_path, manifest, tmp)
    stage = {k: round(float(np.median([r[k] for r in records if k in r])), 3)
             for k in (*STAGES, "t_total_s") if any(k in r for r in records)}
    in_proc_mib = max((p for p in peaks if p is not None), default=float("nan"))
    return {
        "name": "infer_scan",
        "available": True,
        "rows": _rows(stage, cli, in_proc_mib, crop),
        "details": {
            "scan_shape": list(SHAPE),
            "working_shape": working_shape,
            "n_scans": n_scans,
            "weights": "random, foreground bias shifted to the 99.5th percentile of the logit difference",
            "predictor": predictor.describe(),
            "synthesise_s": round(synth_s, 2),
            "in_process_median_stage_s": stage,
            "in_process_records_s": [{k: r.get(k) for k in (*STAGES, "t_total_s")} for r in records],
            "in_process_peak_rss_mib": round(in_proc_mib, 1),
            "predicted_wmh_mm3": [float(r.get("wmh_mm3", 0.0)) for r in records],
            "cli": cli,
            "brain_crop": crop,
            "loadavg": loadavg(),
        },
    }
