"""Render the QC gallery and the HTML report in headless Chromium and save screenshots.

    python benchmarks/browser_check.py [--demo demo_out] [--out docs]

Opens ``<demo>/infer/qc/index.html`` and ``<demo>/report/report.html`` (what ``make demo``
writes) from disk, with no server and no network, and writes ``<out>/qc_gallery.png`` and
``<out>/report_html.png`` (the headline results and the first figures). Needs Debian's ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

__all__ = ["CHROMIUM", "screenshot", "dump_dom"]

CHROMIUM = "/usr/bin/chromium"
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--virtual-time-budget=10000")


def _run(page: Path, args: list[str], chromium: str, timeout: float) -> subprocess.CompletedProcess:
    if not Path(chromium).is_file():
        raise FileNotFoundError(f"{chromium}: Chromium is not installed (apt-get install chromium)")
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such page")
    with tempfile.TemporaryDirectory(prefix="wmhseg-chromium-") as profile:
        cmd = [chromium, *_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def dump_dom(page: str | Path, *, chromium: str = CHROMIUM, timeout: float = 120.0) -> str:
    """The document of the local HTML file ``page`` after Chromium ran its scripts."""
    return _run(Path(page).resolve(), ["--dump-dom"], chromium, timeout).stdout


def screenshot(page: str | Path, png: str | Path, *, width: int = 1280, height: int = 1400,
               chromium: str = CHROMIUM, timeout: float = 120.0) -> Path:
    """Render the local HTML file ``page`` in headless Chromium and save a ``width`` x ``height`` PNG.

    Raises:
        FileNotFoundError: no Chromium at ``chromium`` or no ``page``.
        RuntimeError: Chromium failed or wrote no picture (its output is in the message).
    """
    page, png = Path(page).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _run(page, [f"--window-size={width},{height}", f"--screenshot={png}"], chromium, timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {proc.stderr[-2000:]}")
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="demo_out", help="the folder make demo wrote")
    parser.add_argument("--out", default="docs", help="where the screenshots go")
    args = parser.parse_args()
    demo, out = Path(args.demo), Path(args.out)
    for page, name, height in ((demo / "infer" / "qc" / "index.html", "qc_gallery.png", 1000),
                               (demo / "report" / "report.html", "report_html.png", 2000)):
        shot = screenshot(page, out / name, height=height)
        print(f"{page} -> {shot}")


if __name__ == "__main__":
    main()
