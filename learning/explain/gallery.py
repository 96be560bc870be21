"""The results folder's pages: index.html (the gallery) and one detail page per image.

Used by stage 6 (learning/visualization.py): `write_pages(results, entries, methods, header)`;
the entry and header fields are listed in `Header` and `card_row` below (and in the contract
with stage 6). `entries` is read as a stream, twice (never held whole: stage 6 hands its
EntryLog, learning/explain/entries.py), so a gallery of 100,000 cards is written in the memory
of one card. Static, offline, opened straight from disk (file://): no server, no CDN, no
fetch(). The pages render no picture: every map picture comes from stage 6's one renderer, and
a card and its detail page show the SAME picture file of a map, stacked the same way over the
same X-ray.

Scale: the cards are data, not HTML. `gallery-data.js` sets `window.CXR_GALLERY` (loaded by a
`<script src>`, which works from file://) with one compact row per image; assets/gallery.js
filters and sorts ALL rows and builds only the current page's cards, so a 10,000-card gallery
opens fast and loads only the shown cards' pictures. Filter, sort and page live in the URL
hash, so Back, a reload or a copied link restores them; a detail page keeps them for its
"gallery" and previous/next links.

A model trained with --findings (entries with `findings` and `finding_maps`) adds, and only
then, a "predicted finding" filter (p > 0.5), a card map per method and finding (the image's own
picture of it or a note that it has none, never another map), a sort per finding and
p_<finding> CSV columns; a normal/abnormal model's pages are unchanged.

Safety: names, paths, findings and report text are user data. In HTML they are escaped here;
in gallery-data.js they are JSON strings that the script puts into the page only as text or
attributes. Every link is relative and percent-encoded (names hold '[' ']' ',' '#' '%').
"""
import json
import os
import posixpath
from dataclasses import dataclass, field

from learning.explain import gallery_header
from learning.explain.findings import PREDICTED_P
from learning.explain.gallery_header import e, link
from scraper.fileio import atomic_write, atomic_write_text

RANDOM_WARNING = ("random VGG16 weights were used: heatmaps from random weights mean nothing "
                  "clinically (offline smoke run)")
OUTCOMES = {"TP": "true positive: abnormal, predicted abnormal",
            "FP": "false positive: normal, predicted abnormal",
            "FN": "false negative: abnormal, predicted normal",
            "TN": "true negative: normal, predicted normal",
            "unlabelled": "no label known"}
SCALE_KINDS = {"per-image": "per-image scale: each map to its own 99.5th percentile",
               "shared": "shared scale: one top for every image of this method"}
ASSETS = ("gallery.js", "gallery.css")
DATA_FILE = "gallery-data.js"
# gallery-data.js columns (one row per image); assets/gallery.js reads them by name.
COLUMNS = ("name", "label", "p", "p_text", "outcome", "boxes", "source", "view", "modality",
           "page", "xray", "pictures", "pointing")
# ... and, for a model trained with --findings only, one p per finding (the header's order) and
# the image's finding maps: [[method index, finding index, picture, pointing or null], ...].
FINDING_COLUMNS = ("findings", "finding_maps")
JSON_STYLE = {"ensure_ascii": True, "separators": (",", ":"), "allow_nan": False}


@dataclass
class Header:
    """What the pages show beside the cards; every path is relative to the results folder.

    method_info: {method: {"title", "note"}}; selection: {"examples", "limit", "name_filter"};
    localization: localization.json's report; argmax: {method: {"grid", "n", ...}}; sanity:
    sanity.json's report; links: files listed in the header (see the contract with stage 6)."""
    title: str
    random_weights: bool = False
    meta: list = field(default_factory=list)
    threshold: float = 0.5
    method_info: dict = field(default_factory=dict)
    model_metrics: dict = None
    roc: str = None
    selection: dict = field(default_factory=dict)
    localization: dict = None
    argmax: dict = None
    sanity: dict = None
    links: list = field(default_factory=list)
    run_id: str = None


# ----------------------------------------------------------------------------- small helpers

def href(path, page_dir=""):
    """Percent-encoded link to `path` (relative to the results folder) from a page in
    `page_dir` (also relative to it)."""
    return link(posixpath.relpath(path, page_dir) if page_dir else path)


def root_of(page):
    """'../../' for a page at 'pages/0a/x.html'; '' for one at the top."""
    depth = len(posixpath.dirname(page).split("/")) if posixpath.dirname(page) else 0
    return "../" * depth


def format_p(p, threshold=0.5):
    """p(abnormal) with as few digits as keep it on the right side of the threshold and off
    0 and 1: 0.498 -> '0.498' (not '0.50' beside '> 0.5'), 0.9996 -> '0.9996'."""
    p = float(p)
    for digits in range(2, 8):
        text = f"{p:.{digits}f}"
        shown = float(text)
        if ((shown > threshold) == (p > threshold) and (shown == threshold) == (p == threshold)
                and (shown in (0.0, 1.0)) == (p in (0.0, 1.0))):
            return text
    return format(p, ".17g")


def box_percent(entry):
    """[(finding, left, top, width, height)] of the expert boxes, in % of the image: the same
    numbers place the boxes on a card and on its detail page."""
    width, height = entry.get("original_size") or (1, 1)
    return [(str(box.get("finding") or ""), round(100 * box["x"] / width, 3),
             round(100 * box["y"] / height, 3), round(100 * box["w"] / width, 3),
             round(100 * box["h"] / height, 3)) for box in entry.get("boxes") or []]


def _page(title, body, random_weights, root="", page="gallery", extra=""):
    banner = (f"<div class=\"banner\" id=\"random-banner\">&#9888; {e(RANDOM_WARNING)}</div>"
              if random_weights else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<link rel=\"stylesheet\" href=\"{root}gallery.css\"><title>{e(title)}</title>"
            f"</head><body data-page=\"{page}\" data-root=\"{root}\"{extra}>\n{banner}{body}"
            f"<script src=\"{root}{DATA_FILE}\"></script><script src=\"{root}gallery.js\">"
            f"</script></body></html>\n")


# ----------------------------------------------------------------------------- card data

def card_row(entry, methods, threshold, findings=()):
    """One row of gallery-data.js (COLUMNS, then FINDING_COLUMNS when `findings` names the
    model's findings). Entry fields: name, label, p_abnormal, outcome, boxes, original_size,
    source, view, modality, files.page, files.xray, per method `picture` and `score`, and for
    a findings model `findings` ({finding: p}) and `finding_maps` (see the module docstring)."""
    per_method = [entry["methods"][m] for m in methods]
    row = [entry["name"], entry.get("label") or "", float(entry["p_abnormal"]),
           format_p(entry["p_abnormal"], threshold), entry["outcome"],
           [list(box) for box in box_percent(entry)], entry.get("source") or "",
           entry.get("view") or "", entry.get("modality") or "", href(entry["files"]["page"]),
           href(entry["files"]["xray"]),
           [href(info["picture"]) if info.get("picture") else "" for info in per_method],
           [_pointing(info) for info in per_method]]
    if findings:
        probs = entry.get("findings") or {}
        row += [[float(probs[name]) if name in probs else None for name in findings],
                _finding_maps(entry, methods, findings)]
    return row


def _pointing(info):
    return None if not info.get("score") else int(bool(info["score"]["pointing"]))


def _finding_maps(entry, methods, findings):
    """[[method index, finding index, picture link, pointing], ...]: the image's drawn finding
    maps (entry["finding_maps"]); a map of a method or finding the header lacks is left out."""
    found = []
    for info in (entry.get("finding_maps") or {}).values():
        if (info.get("picture") and info.get("method") in methods
                and info.get("finding") in findings):
            found.append([methods.index(info["method"]), findings.index(info["finding"]),
                          href(info["picture"]), _pointing(info)])
    return sorted(found)


def finding_names(entries):
    """The model's findings (the keys of the first entry's `findings`, in its order; the same
    for every entry of a run); [] for a normal/abnormal model. Reads one entry."""
    for entry in entries:
        return list(entry.get("findings") or {})
    return []


def gallery_data(entries, methods, header):
    """The text of gallery-data.js in pieces, one per card row (written as it comes: memory of
    one row, not of the whole text): JSON (ASCII, so no byte can end the script) in one
    assignment, `window.CXR_GALLERY = {..., "rows": [...]};`."""
    findings = finding_names(entries)
    fixed = {"version": 1, "threshold": header.threshold, "methods": list(methods),
             "outcomes": OUTCOMES, "columns": list(COLUMNS) + (
                 list(FINDING_COLUMNS) if findings else [])}
    if findings:
        fixed.update(findings=findings, finding_p=PREDICTED_P)
    yield ("window.CXR_GALLERY = " + json.dumps(fixed, **JSON_STYLE)[:-1] + ',"rows":[')
    separator = ""
    for entry in entries:
        yield separator + json.dumps(card_row(entry, methods, header.threshold, findings),
                                     **JSON_STYLE)
        separator = ","
    yield "]};\n"


def card_summary(entries, methods):
    """What the controls count and offer, in one pass: {"outcomes": {key: n}, "view": [...],
    "modality": [...], "scored": any card with a pointing score (of a method's map or of a
    finding map), "total": n, "findings": {finding: cards predicting it (p > PREDICTED_P)}, in
    the model's order, {} for a normal/abnormal model}."""
    counts = dict.fromkeys(OUTCOMES, 0)
    distinct = {"view": set(), "modality": set()}
    scored, predicted, total = False, None, 0
    for entry in entries:
        total += 1
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        for key, values in distinct.items():
            if entry.get(key):
                values.add(str(entry[key]))
        scored = scored or any(entry["methods"][m].get("score") for m in methods) or any(
            info.get("score") for info in (entry.get("finding_maps") or {}).values())
        probs = entry.get("findings") or {}
        if predicted is None:
            predicted = dict.fromkeys(probs, 0)
        for name, p in probs.items():
            if name in predicted and p > PREDICTED_P:
                predicted[name] += 1
    return dict({key: sorted(values) for key, values in distinct.items()}, outcomes=counts,
                scored=scored, total=total, findings=predicted or {})


# ----------------------------------------------------------------------------- the gallery

def _select(control_id, label, options, title=""):
    """<label>label <select id=...> from [(value, text)]."""
    choices = "".join(f"<option value=\"{e(value)}\">{e(text)}</option>" for value, text in options)
    tip = f" title=\"{e(title)}\"" if title else ""
    return (f"<label{tip}>{e(label)} <select id=\"{control_id}\" autocomplete=\"off\">{choices}"
            f"</select></label>")


def controls_html(summary, methods, header):
    """The filter, sort and page controls (summary: card_summary); they act on all cards
    (assets/gallery.js)."""
    counts = summary["outcomes"]
    parts = [f"<label title=\"{e(OUTCOMES[key])}\"><input type=\"checkbox\" class=\"outcome\" "
             f"value=\"{key}\" checked autocomplete=\"off\"> <span class=\"badge {key}\">{key}"
             f"</span> {counts[key]:,}</label>" for key in OUTCOMES if counts[key]]
    parts.append(_select("boxes", "expert boxes", [("any", "any"), ("with", "with boxes"),
                                                   ("without", "without boxes")]))
    findings = summary.get("findings") or {}
    if findings:
        parts.append(_select("finding", "predicted finding", [("", "any")] + [
            (name, f"{name} ({n:,})") for name, n in findings.items()],
            f"cards whose p(finding) > {PREDICTED_P:g}; the number: how many, of all cards"))
    if len(methods) > 1 or findings:
        parts.append(_select("map", "map on cards", [(m, _title(header, m)) for m in methods] + [
            (f"{m}:{name}", f"{_title(header, m)} of {name}") for m in methods
            for name in findings], "a finding's map: shown on the cards that have one (its "
            "predicted or expert-boxed findings); the others say so" if findings else ""))
    if summary["scored"]:
        parts.append(_select("pointing", "pointing game", [
            ("any", "any"), ("hit", "hit (peak inside a box)"), ("miss", "miss")],
            "of the map shown on the cards; only images with scored boxes"))
    for key, label in (("view", "view"), ("modality", "modality")):
        values = summary[key]
        if values:
            parts.append(_select(key, label, [("", "any")] + [(v, v) for v in values]))
    parts.append("<label>p(abnormal) from <input type=\"number\" id=\"p-min\" min=\"0\" max=\"1\" "
                 "step=\"0.05\" autocomplete=\"off\"> to <input type=\"number\" id=\"p-max\" "
                 "min=\"0\" max=\"1\" step=\"0.05\" autocomplete=\"off\"></label>")
    parts.append("<label>search <input type=\"search\" id=\"search\" autocomplete=\"off\" "
                 "placeholder=\"name or source path\"></label>")
    parts.append(_select("sort", "sort", [("p-desc", "p(abnormal), highest first"),
                                          ("p-asc", "p(abnormal), lowest first"),
                                          ("name", "name, A to Z"), ("name-desc", "name, Z to A")]
                         + [(f"finding:{name}", f"p({name}), highest first")
                            for name in findings]))
    parts.append(_select("size", "per page", [(n, n) for n in ("24", "48", "96", "192")]))
    parts.append("<button type=\"button\" id=\"clear-filters\">reset filters</button>")
    parts.append("<button type=\"button\" id=\"download\" title=\"every matching card, in "
                 "this order, as a CSV file\">download matching (CSV)</button>")
    return f"<div class=\"controls\" id=\"controls\">{''.join(parts)}</div>"


def _title(header, method):
    return (header.method_info.get(method) or {}).get("title", method)


def _pager(where):
    buttons = "".join(f"<button type=\"button\" data-go=\"{go}\">{text}</button>"
                      for go, text in (("first", "&laquo; first"), ("prev", "&lsaquo; previous"),
                                       ("next", "next &rsaquo;"), ("last", "last &raquo;")))
    return (f"<div class=\"pager\" id=\"pager-{where}\">{buttons}<span class=\"page-of\">"
            f"</span></div>")


def render_gallery(summary, methods, header):
    """index.html: the header, the controls and an empty grid that gallery.js fills
    (summary: card_summary)."""
    total = summary["total"]
    counts = (f"<div class=\"pager\" id=\"counts\">showing <b id=\"range\">0</b> of <b "
              f"id=\"match-count\">{total:,}</b> matching cards &middot; {total:,} cards in all"
              f"</div>")
    empty = (f"<div id=\"empty\" class=\"hidden\">No card matches these filters ({total:,} cards "
             f"in all): tick more outcomes, clear the search or widen the p(abnormal) range, "
             f"or <em>reset filters</em>.</div>")
    noscript = ("<noscript><div id=\"empty\">The cards need JavaScript; index.csv lists every "
                "image and its files.</div></noscript>")
    body = (f"{gallery_header.header_html(header, total)}{controls_html(summary, methods, header)}"
            f"{counts}{_pager('top')}{empty}{noscript}<main class=\"grid\" id=\"grid\"></main>"
            f"{_pager('bottom')}")
    return _page(header.title, body, header.random_weights)


# ----------------------------------------------------------------------------- detail pages

def _colour_bar(scale, page_dir):
    """Stage 6's colour bar (one signed scale: -top | 0 | +top) with its numbers: the unit,
    the scale's kind and the smoothing."""
    top, smooth = scale.get("top"), scale.get("smooth")
    bar = (f"<img src=\"{href(scale['colour_bar'], page_dir)}\" alt=\"colour bar\">"
           if scale.get("colour_bar") else "")
    if top is None:
        ends = ("", "nothing to show: the map is 0 everywhere")
    else:
        ends = (f"&minus;{top:.3g}", f"+{top:.3g}")
    middle = "<span class=\"zero\">0</span>" if top is not None else ""
    kind = SCALE_KINDS.get(scale.get("kind"), scale.get("kind") or "")
    smoothing = "none" if not smooth else f"Gaussian, sigma {smooth:g} px of the model input"
    unit = f" {e(scale['unit'])}" if scale.get("unit") else ""
    where = "full colour at &plusmn;" + ("n/a" if top is None else f"{top:.3g}")
    return (f"<div class=\"colour-bar\"><span>{ends[0]}</span><span class=\"cbar\">{bar}{middle}"
            f"</span><span class=\"top\">{e(ends[1]) if top is None else ends[1]}</span>"
            f"</div><div class=\"meta scale\">{where}{unit}{' (' + e(kind) + ')' if kind else ''};"
            f" smoothing: {e(smoothing)}</div>")


def _method_figure(entry, method, header, page_dir, info=None, title=None):
    """One map's figure; `info`/`title` for a finding map (entry["finding_maps"])."""
    info = info or entry["methods"][method]
    described = dict(header.method_info.get(method) or {}, **({"title": title} if title else {}))
    picture = (f"<img class=\"layer map\" src=\"{href(info['picture'], page_dir)}\" "
               f"alt=\"{e(method)} map\">")
    boxes = "".join(f"<div class=\"box\" style=\"left:{left}%;top:{top}%;width:{width}%;height:"
                    f"{height}%\"><span>{e(finding)}</span></div>"
                    for finding, left, top, width, height in box_percent(entry))
    peak = info.get("argmax")
    if peak:
        boxes += (f"<div class=\"peak\" style=\"left:{100 * peak[0]:.2f}%;top:{100 * peak[1]:.2f}%"
                  f"\" title=\"the map's maximum\"></div>")
    numbers = []
    if info.get("delta") is not None:
        numbers.append(f"completeness error {info['delta']:.1e}")
    score = info.get("score")
    if score:
        numbers.append(f"pointing game: {'hit' if score['pointing'] else 'miss'}; inside "
                       f"share {score['inside_share']:.2f} (boxes cover "
                       f"{score['box_fraction']:.2f})")
    numbers += [note for note in (described.get("note"), info.get("note")) if note]
    links = "".join(f" &middot; <a href=\"{href(path, page_dir)}\">{e(label)}</a>"
                    for label, path in (info.get("files") or {}).items())
    finding = (f" data-finding=\"{e(info['finding'])}\"" if title and info.get("finding")
               else "")
    return (f"<figure data-method=\"{e(method)}\"{finding}><figcaption><b>"
            f"{e(described.get('title', method))}</b>{links}</figcaption><div class=\"stack\">"
            f"<img class=\"xray\" src=\"{href(entry['files']['xray'], page_dir)}\" alt=\"X-ray\">"
            f"{picture}{boxes}</div>{_colour_bar(info.get('scale') or {}, page_dir)}"
            f"<div class=\"meta\">{'<br>'.join(e(n) for n in numbers)}</div></figure>")


def _facts(entry, header):
    label = entry.get("label") or "unknown"
    excluded = f"; not scored: {e(entry['excluded'])}" if entry.get("excluded") else ""
    kind = entry["outcome"]
    rows = [("p(abnormal)", f"<b>{format_p(entry['p_abnormal'], header.threshold)}</b> "
                            f"<span class=\"meta\">(predicted abnormal iff p &gt; "
                            f"{header.threshold:g})</span>"),
            ("true label", f"<span class=\"{e(label)}\">{e(label)}</span>"),
            ("outcome", f"<span class=\"badge {e(kind)}\">{e(kind)}</span> "
                        f"{e(OUTCOMES.get(kind, kind))}"),
            ("expert boxes", f"{len(entry.get('boxes') or [])}{excluded}")]
    if entry.get("findings"):   # a findings model: p per finding, the predicted ones bold
        rows.append(("p(finding)", ", ".join(
            (f"<b>{e(name)} {format_p(p, PREDICTED_P)}</b>" if p > PREDICTED_P
             else f"{e(name)} {format_p(p, PREDICTED_P)}")
            for name, p in sorted(entry["findings"].items(), key=lambda item: -item[1]))))
    provenance = [("source", e(entry.get("source") or "unknown")),
                  ("view", e(entry.get("view") or "unknown")),
                  ("modality", e(entry.get("modality") or "not DICOM (image file)"))]
    return ("<table id=\"numbers\">" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>"
                                               for k, v in rows) + "</table>"
            "<table id=\"provenance\" class=\"provenance\">"
            + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in provenance) + "</table>"
            + _report(entry.get("report")))


def _report(report):
    """The radiology report's text (optional entry field `report`: findings, impression,
    items = MeSH major terms), escaped: it is user data."""
    if not isinstance(report, dict):
        return ""
    rows = [(key, report.get(key)) for key in ("findings", "impression")]
    items = report.get("items")
    if isinstance(items, list) and items:
        rows.append(("terms", "; ".join(str(item) for item in items)))
    rows = [(key, value) for key, value in rows if isinstance(value, str) and value.strip()]
    if not rows:
        return ""
    return ("<table id=\"report\" class=\"report\">" + "".join(
        f"<tr><th>{key}</th><td>{e(value)}</td></tr>" for key, value in rows) + "</table>")


def render_detail(entry, methods, header, index):
    """One image's page: every method's picture on the X-ray, its colour bar and numbers."""
    page = entry["files"]["page"]
    page_dir, root = posixpath.dirname(page), root_of(page)
    toggles = [("show-boxes", "expert boxes")] + (
        [("show-peak", "peak (+): each map's maximum")]
        if any(entry["methods"][m].get("argmax") for m in methods) else [])
    controls = ("<div class=\"controls\"><label>map opacity <input type=\"range\" id=\"opacity\" "
                "min=\"0\" max=\"100\" value=\"100\" autocomplete=\"off\"> <span "
                "id=\"opacity-value\">100%</span></label>" + "".join(
                    f"<label><input type=\"checkbox\" id=\"{key}\" checked autocomplete="
                    f"\"off\"> {text}</label>" for key, text in toggles) + "</div>")
    model_input = entry["files"].get("input")
    input_link = (f" &middot; <a href=\"{href(model_input, page_dir)}\">model input</a>"
                  if model_input else "")
    meta = "".join(f"<div class=\"meta\">{e(line)}</div>" for line in header.meta)
    footer = f"<footer class=\"meta\">run {e(header.run_id)}</footer>" if header.run_id else ""
    figures = "".join(_method_figure(entry, m, header, page_dir) for m in methods) + "".join(
        _method_figure(entry, info["method"], header, page_dir, info,
                       f"{_title(header, info['method'])} of {info['finding']} (p = "
                       f"{format_p(info['p'], PREDICTED_P)})")
        for info in (entry.get("finding_maps") or {}).values())
    body = (f"<header><h1>{e(entry['name'])}</h1><div class=\"meta nav\"><a id=\"back\" "
            f"href=\"{root}index.html\">&larr; gallery</a> &middot; <span id=\"card-nav\">"
            f"</span>{input_link}</div>{meta}{_facts(entry, header)}</header>{controls}"
            f"<main class=\"methods\">{figures}</main>{footer}")
    return _page(f"{entry['name']} - {header.title}", body, header.random_weights, root,
                 "detail", f" data-index=\"{index}\"")


# ----------------------------------------------------------------------------- writing

def copy_assets(results):
    """gallery.js and gallery.css from the package into the results folder -> their names."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
    for name in ASSETS:
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            atomic_write_text(os.path.join(results, name), handle.read())
    return list(ASSETS)


def write_gallery(results, entries, methods, header):
    """index.html, gallery-data.js and the assets (no detail page) -> paths written. `entries`:
    a list, or any re-iterable with a length (stage 6's EntryLog view): read twice, never
    held whole."""
    written = copy_assets(results)
    with atomic_write(os.path.join(results, DATA_FILE), "w", encoding="utf-8") as handle:
        for piece in gallery_data(entries, methods, header):
            handle.write(piece)
    atomic_write_text(os.path.join(results, "index.html"),
                      render_gallery(card_summary(entries, methods), methods, header))
    return written + [DATA_FILE, "index.html"]


def write_pages(results, entries, methods, header):
    """The gallery (write_gallery) and every detail page (at entry["files"]["page"]) ->
    (the gallery's paths, relative to results, POSIX; the number of detail pages); `entries`
    as write_gallery's."""
    written = write_gallery(results, entries, methods, header)
    pages = 0
    for pages, entry in enumerate(entries, 1):
        page = entry["files"]["page"]
        atomic_write_text(os.path.join(results, *page.split("/")),
                          render_detail(entry, methods, header, pages - 1), durable=False)
    return written, pages
