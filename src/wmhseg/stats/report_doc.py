"""A minimal document model (headings, paragraphs, lists, tables, images) rendered to Markdown or
HTML, and the number formats the report uses."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

__all__ = ["Doc", "fmt", "format_p"]


def format_p(p: float) -> str:
    """``'p < 0.0001'`` or ``'p = 0.032'``; ``'p n/a'`` when undefined."""
    if p is None or not np.isfinite(p):
        return "p n/a"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}" if p < 0.001 else f"p = {p:.3f}"


class Doc:
    """Minimal document model rendered to Markdown or HTML."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, object]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def section(self, title: str, text: str) -> None:
        """A second-level heading and its first paragraph."""
        self.h(2, title)
        self.p(text)

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self.blocks.append(("table", frame))

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "h":
                parts.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "p":
                parts.append(str(value))
            elif kind == "ul":
                parts.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                frame = value.astype(str).apply(lambda c: c.str.replace("|", "\\|"))
                head = "| " + " | ".join(map(str, frame.columns)) + " |"
                rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
                body = ["| " + " | ".join(row) + " |" for row in frame.to_numpy().tolist()]
                parts.append("\n".join([head, rule, *body]))
            elif kind == "img":
                parts.append(f"![{value[1]}]({value[0]})")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        esc = html.escape
        parts = [
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%}img{max-width:100%}</style></head><body>",
        ]
        for kind, value in self.blocks:
            if kind == "h":
                parts.append(f"<h{value[0]}>{esc(value[1])}</h{value[0]}>")
            elif kind == "p":
                parts.append(f"<p>{esc(str(value))}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                parts.append(value.to_html(index=False, escape=True, border=0))
            elif kind == "img":
                parts.append(f"<img src='{esc(value[0])}' alt='{esc(value[1])}'>")
        parts.append("</body></html>\n")
        return "\n".join(parts)


def fmt(x: object, digits: int = 3) -> str:
    if isinstance(x, (float, np.floating)):
        if not np.isfinite(x):
            return ""
        return (
            f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e5 else f"{x:.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(x)


