"""Run the wmhseg performance benchmarks and write the results table.

    python benchmarks/run.py                 # full run (about 6 minutes on 2 idle cores)
    python benchmarks/run.py --quick         # fewer repeats and variants (under 2 minutes idle)
    python benchmarks/run.py --ckpt best.ckpt --sections accuracy
    python benchmarks/run.py --device cuda   # the same benchmark on a GPU

Sections (each skipped with its reason when the code it measures is missing):

* ``startup``    - goal 3: fresh ``infer.py --help`` and ``analyze.py --help`` against the
  interpreter's own start (:mod:`bench_startup`);
* ``inference``  - goal 1 (and 4 on a GPU): the network on one whole 1 mm brain, fast paths vs
  MONAI's default sliding window, and its GFLOP/s against the matmul peak (:mod:`bench_inference`);
* ``accuracy``   - goal 1's accuracy: a trained checkpoint's fast-path masks vs the fp32 sliding
  window's, and each backend's and precision's vs torch fp32, on held-out synthetic scans
  (:mod:`bench_accuracy`; needs ``--ckpt``);
* ``infer_scan`` - goal 2: infer per scan, stage split and peak memory (:mod:`bench_infer_scan`);
* ``train_data`` - goal 3: cached training pipeline vs a naive uncached one (:mod:`bench_train_data`);
* ``analysis``   - goal 5: the full analysis of a 439-subject cohort (:mod:`bench_analysis`).

Each section runs in a process of its own (this script again, with ``--child``), so a section that
crashes (a segfault in a native library) is reported as crashed and the others still run; what
one section loads (OpenVINO's thread pool, a forked loader worker) cannot disturb the next.

Writes ``benchmarks/results/latest.json`` (every figure, the machine, the load) and
``latest.md`` (the table); a full run also refreshes the table in ``benchmarks/README.md``.
The benchmarks are never part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ("startup", "train_data", "analysis", "inference", "accuracy", "infer_scan")
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def _section_runner(name: str, args: argparse.Namespace, device: str) -> Callable[[], dict[str, Any]]:
    if name == "inference":
        import bench_inference

        return lambda: bench_inference.run(quick=args.quick, device=device)
    if name == "accuracy":
        import bench_accuracy

        return lambda: bench_accuracy.run(ckpt=args.ckpt, quick=args.quick, device=device)
    if name == "infer_scan":
        import bench_infer_scan

        return lambda: bench_infer_scan.run(quick=args.quick)
    if name == "train_data":
        import bench_train_data

        return lambda: bench_train_data.run(quick=args.quick, device=device)
    if name == "startup":
        import bench_startup

        return lambda: bench_startup.run(quick=args.quick)
    if name == "analysis":
        import bench_analysis

        return lambda: bench_analysis.run(quick=args.quick)
    raise ValueError(f"unknown section {name!r}; known: {SECTIONS}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "**no**"
    if isinstance(value, float):
        return f"{value:.2f}x"
    return str(value).replace("|", "/")


def markdown_table(results: dict[str, Any]) -> str:
    """The summary table (goal, baseline, candidate, ratio, target, met?) in Markdown."""
    lines = ["| goal | baseline | candidate | ratio | target | met? |", "| --- | --- | --- | --- | --- | --- |"]
    for section in results["sections"]:
        if not section.get("available", False):
            lines.append(f"| {section['name']} | - | {_cell(section.get('reason', 'not available'))} | - | - | - |")
            continue
        for row in section["rows"]:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in ("goal", "baseline", "candidate", "ratio",
                                                                       "target", "met")) + " |")
    m = results["machine"]
    foot = (f"\n{results['mode']} run, {results['finished']}, {results['wall_s']:.0f} s; {m['cpu_model']} "
            f"({m['cpu_count']} cores, {m['cpu_capability']}, torch threads {m['torch_threads']}), device {m['device']}, "
            f"GPU: {m['gpu']}; torch {m['torch']}, MONAI {m.get('monai', '?')}; "
            f"load average at start {m['loadavg_start']}, at end {results['loadavg_end']}.\n")
    return "\n".join(lines) + "\n" + foot


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the results markers of ``readme`` with ``table``."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    _atomic_write(readme, f"{head}{README_START}\n{table}{README_END}{tail}")
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and variants")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--ckpt", default=None,
                        help="a trained wmhseg checkpoint for the accuracy section (e.g. demo_out/train/checkpoints/best.ckpt)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the whole run")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for latest.json and latest.md")
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the README table")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one section, write its JSON
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def _run_child(args: argparse.Namespace, device: str) -> int:
    """This process is one section's: run it and write its result as JSON to ``--child-out``."""
    try:
        section = _section_runner(args.child, args, device)()
        code = 0
    except Exception as exc:  # a section that raises is reported with its reason
        traceback.print_exc()
        section = {"name": args.child, "available": False, "rows": [],
                   "reason": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        code = 1
    _atomic_write(args.child_out, json.dumps(section, default=str) + "\n")
    return code


def _crash_reason(returncode: int) -> str:
    """What a child's exit status says: a signal (e.g. SIGSEGV, exit 139 in a shell) or an exit code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed: killed by {name} (exit {128 - returncode} in a shell)"
    return f"crashed: exit {returncode} without a result"


def run_section(name: str, args: argparse.Namespace, device: str) -> tuple[dict[str, Any], bool]:
    """Run section ``name`` in a fresh process; return its result and whether it ran to the end."""
    forwarded = ["--device", device] + (["--quick"] if args.quick else []) + (["--ckpt", args.ckpt] if args.ckpt else [])
    forwarded += ["--threads", str(args.threads)] if args.threads else []
    env = dict(os.environ)
    if name == "train_data":  # as train.py runs training: its OpenMP settings, read when torch loads
        from wmhseg.cli import TRAIN_ENV

        env = {**TRAIN_ENV, **env}
    with tempfile.TemporaryDirectory(prefix="wmhseg-bench-") as tmp:
        out = Path(tmp) / f"{name}.json"
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-out", str(out),
                               *forwarded], check=False, env=env)
        if out.is_file():
            return json.loads(out.read_text(encoding="utf-8")), proc.returncode == 0
    return {"name": name, "available": False, "rows": [], "reason": _crash_reason(proc.returncode)}, False


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (1 when a section failed to run)."""
    parser = _parser()
    args = parser.parse_args(argv)

    import torch
    from timing import loadavg, machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; known: {','.join(SECTIONS)}")
    if args.child:
        return _run_child(args, device)

    start = time.perf_counter()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(torch.device(device)),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                if k in os.environ},
        "args": {"ckpt": args.ckpt, "threads": args.threads, "sections": names},
        "sections": [],
    }
    failed = False
    for name in names:
        t = time.perf_counter()
        print(f"[{name}] running ...", file=sys.stderr, flush=True)
        section, ran = run_section(name, args, device)  # a crash or an error is that section's alone
        failed |= not ran
        section["wall_s"] = round(time.perf_counter() - t, 1)
        results["sections"].append(section)
        print(f"[{name}] {section['wall_s']} s" + ("" if section.get("available") else f" - {section.get('reason')}"),
              file=sys.stderr, flush=True)

    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["loadavg_end"] = loadavg()
    table = markdown_table(results)
    print(table)
    _atomic_write(args.out / "latest.json", json.dumps(results, indent=2, default=str) + "\n")
    _atomic_write(args.out / "latest.md", "# Latest benchmark results\n\n" + table)
    if not args.quick and not args.no_readme and set(names) == set(SECTIONS):
        update_readme(HERE / "README.md", table)
    print(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
