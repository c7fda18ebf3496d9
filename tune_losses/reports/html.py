"""`report.html`: the report as one self-contained page, its figures embedded as base64 PNGs.

It is made from the report's Markdown (reports/build.py), which uses only what is converted here: ``#``/``##``
headings, paragraphs with inline ``code`` and ``**bold**``, ``- `` lists, pipe tables (pandas' ``to_markdown``)
and images ``![alt](file.png)`` of PNGs in the report's directory. The page needs nothing else (no script, no stylesheet
or image from elsewhere), so it opens from a download of the parent run's ``report/`` artifacts or from disk.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head, rule, body = _cells(lines[0]), _cells(lines[1]), [_cells(r) for r in lines[2:]]
    align = ["right" if r.endswith(":") and not r.startswith(":") else "left" for r in rule]
    th = "".join(f"<th>{_inline(c)}</th>" for c in head)
    rows = "".join(
        "<tr>" + "".join(f'<td style="text-align:{a}">{_inline(c)}</td>' for c, a in zip(row, align)) + "</tr>\n"
        for row in body
    )
    return f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"


def _image(alt: str, name: str, directory: Path) -> str:
    path = directory / name
    if not path.is_file():
        return f"<p>(figure {html.escape(name)} is missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def to_html(markdown: str, directory: Path, title: str) -> str:
    """The report's Markdown as a whole HTML page, with the PNGs it refers to (in ``directory``) embedded."""
    out, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif m := re.match(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$", line):
            out.append(_image(m.group(1), m.group(2), directory))
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|!\[|\||- )", lines[i]):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    body = "\n".join(out)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>'
        f"\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_html(report) -> Path:
    """Write ``report.html`` beside ``report.md`` in the report's directory; returns its path."""
    path = Path(report.directory) / "report.html"
    path.write_text(to_html(report.markdown, Path(report.directory), f"Report of sweep {report.sweep}"))
    return path
