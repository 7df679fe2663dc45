"""report.html: one static, self-contained page (tables, plots as base64 PNG, the graph as
inline SVG). No scripts, no CDN, no external requests: it opens offline from any folder.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Mapping, Sequence

from modelcut.report import Table, report_tables, report_title, summary_line

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em 0; font-size: 0.9em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.over { color: #c00; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.graph { overflow: auto; border: 1px solid #eee; max-height: 900px; }
.graph svg { max-width: none; height: auto; }
.note { color: #666; }
"""


def html_table(table: Table) -> str:
    """A <table> with a caption; numeric columns right-aligned."""
    def td(cell: str, numeric: bool) -> str:
        cls = ' class="over"' if cell.endswith("OVER") else (' class="num"' if numeric else "")
        return f"<td{cls}>{html.escape(cell)}</td>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = ["<tr>" + "".join(map(td, row, table.numeric)) + "</tr>" for row in table.rows]
    return (f"<table>\n<caption>{html.escape(table.title)}</caption>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")


def html_report(report: Mapping, images: Sequence[tuple[str, Path]] = (),
                graph_svg: str | None = None, graph_note: str | None = None) -> str:
    """The full page: summary, every report table, the plots (`(caption, png path)` pairs,
    embedded) and the grouped graph (`graph_svg`, inline) or a note saying why it is missing."""
    title, summary = report_title(report), summary_line(report)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>",
        '<section id="tables">', "<h2>Placement</h2>",
        *[html_table(t) for t in report_tables(report)], "</section>",
    ]
    if images:
        parts += ['<section id="plots">', "<h2>Plots</h2>"]
        for caption, path in images:
            png = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                         f'{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')
        parts.append("</section>")
    parts += ['<section id="graph">', "<h2>Graph by layer group and device</h2>"]
    if graph_svg:
        # Graphviz's SVG without its XML prolog, DOCTYPE and comments, to sit inside HTML
        svg = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<!--.*?-->", "", graph_svg, flags=re.S)
        parts.append(f'<div class="graph">{svg.strip()}</div>')
    if graph_note:
        parts.append(f'<p class="note">{html.escape(graph_note)}</p>')
    parts += ["</section>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
