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
details{border:1px solid #eef0f3;border-radius:6px;margin:6px 0;padding:4px 10px}
summary{cursor:pointer;font-weight:600;font-size:14px;padding:2px 0}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e3e8f0}
.verdict td,.verdict th{text-align:left;vertical-align:top}
ul.alerts li{margin:3px 0}.ref{color:#5b6472;font-style:italic}
code{background:#f1f3f6;padding:1px 4px;border-radius:3px;font-size:12px}
"""

#: Sorts a ``table.sortable`` by the clicked column (numbers by their ``data-v`` value); no network.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.title='click to sort';th.addEventListener('click',function(){
  var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
  function key(r){var c=r.cells[i],v=c.getAttribute('data-v');return v!==null&&v!==''?parseFloat(v):c.textContent;}
  rows.sort(function(x,y){var a=key(x),c=key(y);if(typeof a==='number'&&typeof c==='number')return asc?a-c:c-a;
   return asc?String(a).localeCompare(String(c)):String(c).localeCompare(String(a));});
  rows.forEach(function(r){b.appendChild(r);});});});});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people: thousands separators, ``digits`` decimals for floats, — for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _sort_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    return repr(float(value))


def img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{data}">'


@dataclass
class Section:
    id: str
    title: str
    parts: list[str | Section] = field(default_factory=list)
    summary: str | None = None
    """Set for a collapsible block (:meth:`details`): rendered as ``<details>``."""
    open: bool = False

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

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int | Sequence[int] = 4,
              caption: str | None = None, kv: bool = False, sortable: bool = False,
              css: str | None = None) -> Section:
        """A table; ``digits`` per column or for all; ``sortable`` sorts by a clicked header (inline script)."""
        per_col = [digits] * len(headers) if isinstance(digits, int) else list(digits)
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)

        def cell(c: Any, d: int) -> str:
            v = _sort_value(c) if sortable else ""
            attr = f' data-v="{v}"' if v else ""
            return f"<td{attr}>{esc(fmt(c, d))}</td>"

        body = "".join("<tr>" + "".join(cell(c, per_col[i] if i < len(per_col) else 4)
                                        for i, c in enumerate(row)) + "</tr>" for row in rows)
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        classes = [c for c in ("kv" if kv else "", "sortable" if sortable else "", css or "") if c]
        cls = f' class="{" ".join(classes)}"' if classes else ""
        self.parts.append(f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def items(self, texts: Iterable[str], css: str | None = None) -> Section:
        """A bulleted list."""
        cls = f' class="{esc(css)}"' if css else ""
        self.parts.append(f"<ul{cls}>" + "".join(f"<li>{esc(t)}</li>" for t in texts) + "</ul>")
        return self

    def code(self, text: str) -> Section:
        """A command, as inline code in its own paragraph."""
        self.parts.append(f"<p><code>{esc(text)}</code></p>")
        return self

    def details(self, summary: str, open: bool = False) -> Section:
        """A collapsible block (``<details>``) inside this section; returns it to fill."""
        block = Section(f"{self.id}-{len(self.parts)}", "", summary=summary, open=open)
        self.parts.append(block)
        return block

    def pre(self, text: str) -> Section:
        self.parts.append(f"<pre>{esc(text)}</pre>")
        return self

    def render(self) -> str:
        inner = "".join(p if isinstance(p, str) else p.render() for p in self.parts)
        if self.summary is not None:
            return (f"<details{' open' if self.open else ''}><summary>{esc(self.summary)}</summary>"
                    f"{inner}</details>")
        return f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{inner}</section>'


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
        script = f"<script>{SORT_JS}</script>" if "sortable" in body else ""
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
                f"<header><h1>{esc(self.title)}</h1><p>{esc(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav><main>{body}</main>{script}</body></html>")
