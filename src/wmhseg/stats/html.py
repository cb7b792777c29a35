"""The HTML report as one self-contained file: the report's HTML with every figure embedded.

``render_report(..., "html")`` links figures by relative path; :func:`embed_figures` replaces
each link to a PNG or SVG file with the file's content as a base64 ``data:`` URI, so
``report.html`` opens anywhere (mail, an archive, a browser without the ``figures/`` folder).
:func:`add_contents` moves the figures up to follow the headline results, gives each section an
anchor (``report.html#figures``) and puts a line of links to them under the title.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from wmhseg.files import atomic_write_text

__all__ = ["embed_figures", "add_contents", "write_html_report"]

_H2 = re.compile(r"<h2>([^<]+)</h2>")
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


def _figures_second(text: str) -> str:
    """The ``Figures`` section moved to follow the first section (the headline results)."""
    starts = [m.start() for m in _H2.finditer(text)]
    titles = _H2.findall(text)
    if "Figures" not in titles[2:]:
        return text
    i = titles.index("Figures")
    end = starts[i + 1] if i + 1 < len(starts) else text.index("</body>")
    block = text[starts[i]:end]
    text = text[:starts[i]] + text[end:]
    return text[:starts[1]] + block + text[starts[1]:]


def add_contents(text: str) -> str:
    """Figures after the headline results, anchors on the ``<h2>`` sections (``id`` = the title in
    lower case, ``-`` for spaces) and a line of links to them after the first ``</h1>``."""
    if not _H2.findall(text):
        return text
    text = _figures_second(text)
    titles = _H2.findall(text)

    def slug(title: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")

    text = _H2.sub(lambda m: f"<h2 id='{slug(m.group(1))}'>{m.group(1)}</h2>", text)
    links = " · ".join(f"<a href='#{slug(t)}'>{t}</a>" for t in titles)
    return text.replace("</h1>", f"</h1>\n<p>Contents: {links}</p>", 1)


def write_html_report(path: str | os.PathLike, html_text: str) -> Path:
    """Write ``html_text`` with its figures (relative to ``path``'s folder) embedded and a line of
    contents, atomically."""
    path = Path(path)
    return atomic_write_text(path, add_contents(embed_figures(html_text, path.parent)))
