"""The report as a list of blocks, rendered twice: Markdown (results/report.md) and one self-contained HTML
page (results/report.html: styles inline, plots as data: URIs, no script, nothing fetched), so both always
say the same thing.

Inline markup in text is the small subset both renderers understand: `code` and **bold**.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Banner:
    """A warning a reader must not miss (e.g. runs below convergence)."""

    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    css_class: str = ""


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Image:
    name: str  # file name under plots/
    caption: str


Block = Heading | Paragraph | Banner | Table | Code | Image

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


# ------------------------------------------------------------------------------------------ Markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, Banner):
            out += [f"> **{b.text}**", ""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Code):
            out += ["```", b.text, "```", ""]
        elif isinstance(b, Image):
            out += [f"![{b.caption}](plots/{b.name})", ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ HTML
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { border-bottom: 2px solid #333; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
.table-wrap { overflow-x: auto; margin: .8rem 0 1.2rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #bbb; padding: .3rem .55rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f1f1f1; padding: 0 .25rem; border-radius: 3px; font-size: .9em; }
pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; font-size: .85rem; }
.banner { background: #fff3cd; border: 2px solid #e0a800; padding: .8rem 1rem; border-radius: 4px; margin: 1rem 0; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .9rem; color: #555; }
td.verdict-holds { background: #d4edda !important; }
td.verdict-does-not-hold { background: #f8d7da !important; }
td.verdict-not-testable-at-this-size { background: #e2e3e5 !important; }
"""


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def _cell_class(text: str) -> str:
    """Verdict cells get a colour (the class name is the verdict, e.g. verdict-holds)."""
    plain = _BOLD.sub(r"\1", text)
    if plain in ("holds", "does not hold", "not testable at this size"):
        return f' class="verdict-{plain.replace(" ", "-")}"'
    return ""


def html_page(blocks: list[Block], title: str, images: dict[str, bytes]) -> str:
    """One self-contained page; ``images`` maps an Image's name to its PNG bytes (embedded as data: URIs)."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Banner):
            body.append(f'<div class="banner" role="alert"><strong>{_inline(b.text)}</strong></div>')
        elif isinstance(b, Table):
            cls = f' class="{b.css_class}"' if b.css_class else ""
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>" + "".join(f"<td{_cell_class(c)}>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows
            )
            table = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            body.append(f'<div class="table-wrap">{table}</div>')  # a wide table scrolls, the page does not
        elif isinstance(b, Code):
            body.append(f"<pre>{html.escape(b.text, quote=False)}</pre>")
        elif isinstance(b, Image):
            data = base64.b64encode(images[b.name]).decode("ascii")
            alt = html.escape(b.caption)
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" data-name="{html.escape(b.name)}">'
                f"<figcaption>{_inline(b.caption)}</figcaption></figure>"
            )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
