"""The HTML report as one self-contained file: the report's HTML with every figure embedded.

``render_report(..., "html")`` links figures by relative path; :func:`embed_figures` replaces
each link to a PNG or SVG file with the file's content as a base64 ``data:`` URI, so
``report.html`` opens anywhere (mail, an archive, a browser without the ``figures/`` folder).
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from wmhseg.io import atomic_write_text

__all__ = ["embed_figures", "write_html_report"]

_IMG = re.compile(r"""<img src=(['"])([^'"]+)\1""")
_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}


def embed_figures(text: str, base_dir: str | os.PathLike) -> str:
    """``text`` with each ``<img src='relative/path.png|svg'>`` holding the file itself.

    Links to other types, absolute URLs and missing files are left as they are.
    """
    base = Path(base_dir)

    def replace(match: re.Match) -> str:
        path = base / match.group(2)
        kind = _TYPES.get(path.suffix.lower())
        if kind is None or "://" in match.group(2) or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"<img src='data:{kind};base64,{data}'"

    return _IMG.sub(replace, text)


def write_html_report(path: str | os.PathLike, html_text: str) -> Path:
    """Write ``html_text`` with its figures (relative to ``path``'s folder) embedded, atomically."""
    path = Path(path)
    return atomic_write_text(path, embed_figures(html_text, path.parent))
