"""The one HTML renderer of datamates' reports (the MATES run report, `report/`, and the
ablation study's, `ablation/report.py`): both write Markdown first and render it here, so the
two reports share one page style and one table / heading / image rendering.

Supported Markdown: `#`..`###` headings, pipe tables (the `|---|` rule line marks the header),
`![alt](src)` images on their own line (a `src` found in `images` is embedded as a data URI, so the
page is self-contained), fenced code blocks, `- ` list items and paragraphs; `**bold**` markers are
dropped. Everything else is escaped text.
"""

from __future__ import annotations

import base64
import html

CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
       "td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
       "pre{white-space:pre-wrap;background:#f7f7f7;padding:8px}")


def page_head(title: str) -> str:
    """The opening of a page: doctype, title and the shared style sheet."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>")


def _text(s: str) -> str:
    return html.escape(s.replace("**", ""))


def md_table(md: str) -> str:
    """A Markdown pipe table as an HTML table (first row header); other text as one paragraph."""
    rows = [r for r in md.splitlines() if r.startswith("|") and not set(r.replace("|", "").strip()) <= set("-: ")]
    if not rows:
        return f"<p>{_text(md)}</p>"
    out = ["<table>"]
    for i, r in enumerate(rows):
        tag = "th" if i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{_text(c.strip())}</{tag}>" for c in r.strip().strip("|").split("|"))
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def markdown(md: str, images: dict[str, bytes] | None = None) -> str:
    """Render the supported Markdown subset (module docstring) to an HTML fragment."""
    images = images or {}
    out: list[str] = []
    table: list[str] = []
    code: list[str] | None = None
    items: list[str] = []

    def flush() -> None:
        if table:
            out.append(md_table("\n".join(table)))
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_text(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("```"):
            code = []
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 3)
            out.append(f"<h{level}>{_text(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt, src = line[2:].split("](", 1)
            src = src.rstrip().rstrip(")")
            if src in images:
                src = "data:image/png;base64," + base64.b64encode(images[src]).decode()
            out.append(f"<p><img alt='{html.escape(alt.rstrip(']'))}' src='{html.escape(src)}'></p>")
        elif line.strip():
            out.append(f"<p>{_text(line)}</p>")
    flush()
    if code is not None:
        out.append(f"<pre>{html.escape(chr(10).join(code))}</pre>")
    return "\n".join(out)


def page(title: str, md: str, images: dict[str, bytes] | None = None) -> str:
    """A whole page from Markdown."""
    return page_head(title) + "\n" + markdown(md, images) + "\n</body></html>"
