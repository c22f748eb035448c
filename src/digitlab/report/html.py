"""A small builder for self-contained HTML reports: sections, tables, embedded PNGs.

Everything is inline (CSS, images as base64 data URLs), so the file reads
offline and can be mailed or archived as one piece. Text is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid #e3e6ea;font-size:13px}
nav a{margin-right:14px;color:#2a5bd7;text-decoration:none}
main{max-width:1200px;margin:0 auto;padding:8px 32px 48px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:8px;margin:18px 0;padding:6px 22px 16px}
h2{font-size:18px;border-bottom:1px solid #eef0f3;padding-bottom:6px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #e3e6ea;padding:4px 8px;text-align:right}th{background:#f1f3f6}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eef0f3}figcaption{font-size:12px;color:#5b6472}
.note{color:#5b6472;font-size:13px}.kv td{text-align:left}
pre{background:#f1f3f6;padding:8px;font-size:12px;overflow-x:auto}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{data}">'


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, text: str, note: bool = False) -> Section:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{esc(text)}</p>")
        return self

    def heading(self, text: str) -> Section:
        self.parts.append(f"<h3>{esc(text)}</h3>")
        return self

    def figure(self, png: bytes, caption: str, width: int | None = None) -> Section:
        self.parts.append(f"<figure>{img_tag(png, caption, width)}<figcaption>{esc(caption)}</figcaption></figure>")
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4,
              caption: str | None = None, kv: bool = False) -> Section:
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c, digits))}</td>" for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        cls = ' class="kv"' if kv else ""
        self.parts.append(f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def pre(self, text: str) -> Section:
        self.parts.append(f"<pre>{esc(text)}</pre>")
        return self

    def render(self) -> str:
        return f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{"".join(self.parts)}</section>'


@dataclass
class Report:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, id: str, title: str) -> Section:
        s = Section(id, title)
        self.sections.append(s)
        return s

    def render(self) -> str:
        nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in self.sections)
        body = "".join(s.render() for s in self.sections)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
                f"<header><h1>{esc(self.title)}</h1><p>{esc(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav><main>{body}</main></body></html>")
