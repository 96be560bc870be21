"""results/index.html: a static gallery of the heatmaps, most abnormal first.

Used by stage 6 (learning/visualization.py). One card per image: the overlay of the first
method as thumbnail, linking to its panel, plus links to every method's panel. Links are
relative and percent-encoded (names contain '[' ']' ','), so the page works opened straight
from disk and copied elsewhere together with its folder.
"""
import html
from urllib.parse import quote

from scraper.fileio import atomic_write_text

RANDOM_WARNING = ("random VGG16 weights were used: heatmaps from random weights mean nothing "
                  "clinically (offline smoke run)")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;
     background:#111;color:#eee}
header{padding:16px 24px;background:#1b1b1b;border-bottom:1px solid #333}
h1{font-size:20px;margin:0 0 6px}
.meta{color:#aaa;font-size:13px}
.banner{background:#c0392b;color:#fff;padding:10px 24px;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:14px;padding:20px}
.card{background:#1e1e1e;border-radius:8px;overflow:hidden;border:1px solid #2c2c2c}
.card img{width:100%;display:block;aspect-ratio:1/1;object-fit:cover}
.info{padding:8px 10px;font-size:13px;line-height:1.5}
.name{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all}
.bar{height:5px;background:#333;border-radius:3px;margin:4px 0}
.bar span{display:block;height:5px;border-radius:3px;background:#f39c12}
.abnormal{color:#ff7b72}.normal{color:#7ee787}.unknown{color:#aaa}
a{color:#79c0ff}
"""


def href(file_name):
    return quote(file_name, safe="")


def render(rows, title, meta_lines=(), random_weights=False):
    """rows: index rows (see visualization.index_rows). Returns the page as text."""
    by_image = {}
    for row in rows:
        by_image.setdefault(row["name"], []).append(row)
    cards = sorted(by_image.values(), key=lambda group: (-group[0]["p_abnormal"], group[0]["name"]))
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"]
    if random_weights:
        parts.append(f"<div class=\"banner\">&#9888; {html.escape(RANDOM_WARNING)}</div>")
    parts.append(f"<header><h1>{html.escape(title)}</h1>")
    for line in meta_lines:
        parts.append(f"<div class=\"meta\">{html.escape(line)}</div>")
    parts.append("</header><main class=\"grid\">")
    for group in cards:
        first = group[0]
        label = first.get("label") or "unknown"
        files = first["files"]
        parts.append("<div class=\"card\">")
        parts.append(f"<a href=\"{href(files['panel'])}\"><img loading=\"lazy\" "
                     f"src=\"{href(files['overlay'])}\" alt=\"{html.escape(first['name'])}\"></a>")
        parts.append("<div class=\"info\">")
        parts.append(f"<div class=\"name\">{html.escape(first['name'])}</div>")
        parts.append(f"<div>p(abnormal) <b>{first['p_abnormal']:.2f}</b> &middot; true: "
                     f"<span class=\"{html.escape(label)}\">{html.escape(label)}</span></div>")
        parts.append(f"<div class=\"bar\"><span style=\"width:{100 * first['p_abnormal']:.0f}%\">"
                     f"</span></div>")
        links = " &middot; ".join(
            f"<a href=\"{href(row['files']['panel'])}\">{html.escape(row['method'])}</a>"
            for row in group)
        parts.append(f"<div>{links} &middot; <a href=\"{href(files['base'])}\">input</a></div>")
        parts.append("</div></div>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write(path, rows, title, meta_lines=(), random_weights=False):
    atomic_write_text(path, render(rows, title, meta_lines, random_weights))
