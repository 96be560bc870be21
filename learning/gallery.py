"""results/index.html (the gallery) and one detail page per image: static, offline, one folder.

Used by stage 6 (learning/visualization.py). No CDN, no external file, no server: inline CSS
and a few lines of inline JavaScript; every link is relative and percent-encoded (names contain
'[' ']' ','), so the pages work opened straight from disk and copied elsewhere with the folder.

The gallery answers "where was the model right, where wrong": a header with the run's numbers
(test AUROC with its CI and the majority baseline from the model folder, localization of each
method next to the two no-model baselines with CIs and a verdict, the sanity-check verdict,
links to the reports), then one card per image marked TP / FP / FN / TN at the run's threshold,
sortable (p(abnormal), name) and filterable (outcome, p(abnormal) range, has expert boxes,
name).

A detail page shows every method side by side on the same X-ray: the signed map's positive
(evidence for "abnormal"), negative (evidence against) or absolute view as a colour layer over
the X-ray, an opacity slider, the expert boxes (toggle), and the numbers (p, completeness,
pointing-game hit and inside share per method).
"""
import html
import os
from dataclasses import dataclass, field
from urllib.parse import quote

from scraper.fileio import atomic_write_text

RANDOM_WARNING = ("random VGG16 weights were used: heatmaps from random weights mean nothing "
                  "clinically (offline smoke run)")
OUTCOMES = {"TP": "true positive: abnormal, predicted abnormal",
            "FP": "false positive: normal, predicted abnormal",
            "FN": "false negative: abnormal, predicted normal",
            "TN": "true negative: normal, predicted normal",
            "unlabelled": "no label known"}
VIEWS = {"positive": "positive (evidence for abnormal)",
         "negative": "negative (evidence against)", "absolute": "absolute (either way)"}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#111;
     color:#eee}
header{padding:14px 24px;background:#1b1b1b;border-bottom:1px solid #333}
h1{font-size:20px;margin:0 0 6px} h2{font-size:15px;margin:12px 0 4px;color:#ccc}
.meta{color:#aaa;font-size:13px}
.banner{background:#c0392b;color:#fff;padding:10px 24px;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
th{color:#aaa;font-weight:500}
.yes{color:#7ee787}.no{color:#ff7b72}
.controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;padding:10px 24px;
          background:#181818;border-bottom:1px solid #2c2c2c;font-size:13px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:14px;padding:20px}
.card{background:#1e1e1e;border-radius:8px;overflow:hidden;border:3px solid #2c2c2c}
.card.TP{border-color:#2ea043}.card.TN{border-color:#1f6feb}.card.FP{border-color:#d29922}
.card.FN{border-color:#da3633}
.card img{width:100%;display:block;aspect-ratio:1/1;object-fit:cover}
.info{padding:8px 10px;font-size:13px;line-height:1.5}
.name{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:0 6px;border-radius:4px;font-weight:700;color:#111}
.badge.TP{background:#2ea043}.badge.TN{background:#58a6ff}.badge.FP{background:#d29922}
.badge.FN{background:#ff7b72}.badge.unlabelled{background:#888}
.bar{height:5px;background:#333;border-radius:3px;margin:4px 0}
.bar span{display:block;height:5px;border-radius:3px;background:#f39c12}
.abnormal{color:#ff7b72}.normal{color:#7ee787}.unknown{color:#aaa}
a{color:#79c0ff}
.methods{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px;
         padding:16px 24px}
figure{margin:0;background:#1e1e1e;border-radius:8px;padding:8px}
figcaption{font-size:13px;margin-bottom:6px}
.stack{position:relative;width:100%;aspect-ratio:1/1}
.stack img{position:absolute;inset:0;width:100%;height:100%}
.stack .box{position:absolute;border:2px dashed #39ff14;box-sizing:border-box}
.stack .box span{position:absolute;top:-16px;left:0;font-size:11px;color:#39ff14;
                 white-space:nowrap}
.hidden{display:none !important}
"""


@dataclass
class Header:
    """What the gallery's header shows; `links` are file names inside the results folder."""
    title: str
    random_weights: bool = False
    meta: list = field(default_factory=list)
    model_metrics: dict = None
    localization: dict = None
    sanity: dict = None
    links: list = field(default_factory=list)


def href(file_name):
    return quote(file_name, safe="")


def _e(text):
    return html.escape(str(text), quote=True)


def _num(value, digits=3):
    return "n/a" if not isinstance(value, (int, float)) or isinstance(value, bool) \
        else f"{value:.{digits}f}"


def _ci(ci, digits=2):
    """'0.41 [0.27, 0.57]' from a bootstrap_ci dict; 'n/a' for a missing one."""
    if not isinstance(ci, dict) or ci.get("mean") is None:
        return "n/a"
    if ci.get("low") is None:
        return _num(ci["mean"], digits)
    return f"{_num(ci['mean'], digits)} [{_num(ci['low'], digits)}, {_num(ci['high'], digits)}]"


def _page(title, body, random_weights):
    banner = (f"<div class=\"banner\" id=\"random-banner\">&#9888; {_e(RANDOM_WARNING)}</div>"
              if random_weights else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"{banner}{body}</body></html>\n")


# ----------------------------------------------------------------------------- header

def classifier_html(metrics):
    """Test AUROC with its CI and the majority baseline, from the model folder's metrics.json."""
    test = (metrics or {}).get("test") if isinstance(metrics, dict) else None
    if not isinstance(test, dict):
        return "<div class=\"meta\">classifier: no metrics.json in the model folder</div>"
    ci = test.get("roc_auc_ci") if isinstance(test.get("roc_auc_ci"), dict) else {}
    base = test.get("baseline_majority") if isinstance(test.get("baseline_majority"), dict) else {}
    interval = (f" [{_num(ci.get('low'))}, {_num(ci.get('high'))}] (95% CI over "
                f"{_e(ci.get('n_groups', '?'))} patients/reports)" if ci.get("low") is not None
                else "")
    return (f"<div id=\"classifier\">test AUROC <b>{_num(test.get('roc_auc'))}</b>{interval}, "
            f"accuracy {_num(test.get('accuracy'))} on {_e(test.get('n', '?'))} test images; "
            f"majority baseline (always {_e(base.get('predicts', '?'))}): accuracy "
            f"{_num(base.get('accuracy'))}, AUROC {_num(base.get('roc_auc'), 1)}</div>")


def localization_html(report):
    if not report:
        return ("<div class=\"meta\" id=\"localization\">localization: no image with usable "
                "expert boxes, nothing scored</div>")
    n = next(iter(report["methods"].values()))["ci"]["images"] if report["methods"] else 0
    rows = ["<table id=\"localization\"><tr><th>map</th><th>pointing game</th>"
            "<th>inside share</th><th>verdict (paired 95% CI of the difference vs both "
            "baselines)</th></tr>"]
    for method, block in report["methods"].items():
        verdict = ("<span class=\"yes\">beats both no-model baselines</span>"
                   if block.get("beats_baselines") else
                   "<span class=\"no\">does NOT beat the no-model baselines: do not read its "
                   "maps as localization</span>")
        rows.append(f"<tr><td>{_e(method)}</td><td>{_ci(block['ci']['pointing'])}</td>"
                    f"<td>{_ci(block['ci']['inside_share'])}</td><td>{verdict}</td></tr>")
    names = {"centred_gaussian": "centred Gaussian (no model)",
             "lung_prior": "lung-field prior (no model)"}
    for key, block in report["baselines"].items():
        rows.append(f"<tr><td>{_e(names.get(key, key))}</td><td>{_ci(block['ci']['pointing'])}"
                    f"</td><td>{_ci(block['ci']['inside_share'])}</td><td>baseline</td></tr>")
    rows.append("</table>")
    excluded = report.get("excluded") or {}
    note = (f"; {len(excluded)} image(s) not scored (boxes cover more than "
            f"{report.get('max_box_fraction', 0.5):.0%} of the image)" if excluded else "")
    return (f"<h2>Localization on {n} image(s) with expert boxes (mean [95% bootstrap CI])"
            f"</h2>" + "".join(rows) + f"<div class=\"meta\">chance level: the boxes cover "
            f"{_num(next(iter(report['baselines'].values()))['summary'].get('box_fraction'), 2)}"
            f" of the image on average{_e(note)}</div>")


def sanity_html(report):
    if not report:
        return ("<div id=\"sanity\" class=\"meta\">sanity check: not run (cxr-visualize "
                "--sanity-check)</div>")
    parts = []
    for method, stages in report["methods"].items():
        rhos = ", ".join(f"{_e(s)} rho {_num(v.get('mean_rho'), 2)}" for s, v in stages.items())
        flag = ("<span class=\"no\">FLAGGED: barely changes when the weights are randomized"
                "</span>" if method in report.get("flagged", []) else
                "<span class=\"yes\">changes with the weights</span>")
        parts.append(f"{_e(method)}: {rhos} &rarr; {flag}")
    return (f"<div id=\"sanity\" class=\"meta\">sanity check (model randomization, "
            f"{len(report.get('images', []))} images): " + "; ".join(parts) + "</div>")


def header_html(header):
    links = " &middot; ".join(f"<a href=\"{href(name)}\">{_e(name)}</a>"
                              for name in header.links)
    meta = "".join(f"<div class=\"meta\">{_e(line)}</div>" for line in header.meta)
    return (f"<header><h1>{_e(header.title)}</h1>{meta}<h2>Classifier</h2>"
            f"{classifier_html(header.model_metrics)}{localization_html(header.localization)}"
            f"<h2>Sanity</h2>{sanity_html(header.sanity)}"
            f"<div class=\"meta\" id=\"links\">files: {links}</div></header>\n")


# ----------------------------------------------------------------------------- gallery

_GALLERY_SCRIPT = """
const grid = document.getElementById('grid');
const cards = Array.from(grid.querySelectorAll('.card'));
function update() {
  const key = document.getElementById('sort').value;
  const wanted = new Set(Array.from(document.querySelectorAll('.outcome:checked'), c => c.value));
  const boxesOnly = document.getElementById('boxes-only').checked;
  const text = document.getElementById('search').value.trim().toLowerCase();
  const pMin = parseFloat(document.getElementById('p-min').value || '0');
  const pMax = parseFloat(document.getElementById('p-max').value || '1');
  const sorted = cards.slice().sort((a, b) => {
    if (key === 'name') return a.dataset.name.localeCompare(b.dataset.name);
    const d = parseFloat(a.dataset.p) - parseFloat(b.dataset.p);
    return key === 'p-asc' ? d : -d;
  });
  let shown = 0;
  for (const card of sorted) {
    const visible = wanted.has(card.dataset.outcome) && (!boxesOnly || card.dataset.boxes === '1')
      && card.dataset.name.toLowerCase().includes(text)
      && parseFloat(card.dataset.p) >= pMin && parseFloat(card.dataset.p) <= pMax;
    card.classList.toggle('hidden', !visible);
    shown += visible ? 1 : 0;
    grid.appendChild(card);
  }
  document.getElementById('shown-count').textContent = shown + ' of ' + cards.length;
}
document.querySelectorAll('.controls input, .controls select').forEach(
  el => el.addEventListener('input', update));
update();
"""


def _card(entry, methods):
    first = entry["methods"][methods[0]]["files"]
    label = entry.get("label") or "unknown"
    page = href(entry["files"]["page"])
    links = " &middot; ".join(
        f"<a href=\"{href(entry['methods'][m]['files']['panel'])}\">{_e(m)}</a>" for m in methods)
    boxes = "1" if entry.get("boxes") else "0"
    kind = _e(entry["outcome"])
    return (f"<article class=\"card {kind}\" data-outcome=\"{kind}\" data-p="
            f"\"{entry['p_abnormal']:.6f}\" data-name=\"{_e(entry['name'])}\" data-boxes="
            f"\"{boxes}\"><a href=\"{page}\"><img loading=\"lazy\" "
            f"src=\"{href(first['overlay'])}\" alt=\"{_e(entry['name'])}\"></a>"
            f"<div class=\"info\"><div class=\"name\">{_e(entry['name'])}</div>"
            f"<div><span class=\"badge {_e(entry['outcome'])}\" title=\""
            f"{_e(OUTCOMES[entry['outcome']])}\">{_e(entry['outcome'])}</span> "
            f"p(abnormal) <b>{entry['p_abnormal']:.2f}</b> &middot; true: "
            f"<span class=\"{_e(label)}\">{_e(label)}</span>"
            f"{' &middot; expert boxes' if boxes == '1' else ''}</div>"
            f"<div class=\"bar\"><span style=\"width:{100 * entry['p_abnormal']:.0f}%\"></span>"
            f"</div><div><a href=\"{page}\">details</a> &middot; panels: {links}</div>"
            f"</div></article>")


def render_gallery(entries, methods, header):
    """entries: stage 6's per-image dicts (with 'outcome', 'files', 'methods'). -> page text."""
    counts = {key: sum(e["outcome"] == key for e in entries) for key in OUTCOMES}
    sorts = ("<option value=\"p-desc\">p(abnormal), highest first</option><option "
             "value=\"p-asc\">p(abnormal), lowest first</option><option value=\"name\">name"
             "</option>")
    outcome_boxes = "".join(
        f"<label title=\"{_e(OUTCOMES[key])}\"><input type=\"checkbox\" class=\"outcome\" "
        f"value=\"{key}\" checked> <span class=\"badge {key}\">{key}</span> {counts[key]}</label>"
        for key in OUTCOMES if counts[key])
    controls = (f"<div class=\"controls\"><label>sort <select id=\"sort\">{sorts}</select>"
                f"</label>{outcome_boxes}<label><input type=\"checkbox\" id=\"boxes-only\"> "
                f"only with expert boxes</label><label>p(abnormal) from <input type=\"number\" "
                f"id=\"p-min\" min=\"0\" max=\"1\" step=\"0.05\" value=\"0\"> to <input "
                f"type=\"number\" id=\"p-max\" min=\"0\" max=\"1\" step=\"0.05\" value=\"1\">"
                f"</label><label>name <input type=\"search\" id=\"search\" "
                f"placeholder=\"filter by name\"></label><span>showing <b id=\"shown-count\">"
                f"{len(entries)}</b></span></div>")
    cards = "\n".join(_card(entry, methods) for entry in entries)
    body = (f"{header_html(header)}{controls}<main class=\"grid\" id=\"grid\">\n{cards}\n</main>"
            f"<script>{_GALLERY_SCRIPT}</script>")
    return _page(header.title, body, header.random_weights)


# ----------------------------------------------------------------------------- detail pages

_DETAIL_SCRIPT = """
function update() {
  const view = document.querySelector('input[name=view]:checked').value;
  const opacity = document.getElementById('opacity').value / 100;
  const boxes = document.getElementById('show-boxes').checked;
  document.querySelectorAll('.layer').forEach(img => {
    img.classList.toggle('hidden', img.dataset.view !== view);
    img.style.opacity = opacity;
  });
  document.querySelectorAll('.box').forEach(b => b.classList.toggle('hidden', !boxes));
  document.getElementById('opacity-value').textContent = Math.round(opacity * 100) + '%';
}
document.querySelectorAll('.controls input').forEach(el => el.addEventListener('input', update));
update();
"""


def _boxes_html(entry):
    width, height = entry["original_size"]
    parts = []
    for box in entry.get("boxes") or []:
        parts.append(f"<div class=\"box\" style=\"left:{100 * box['x'] / width:.3f}%;top:"
                     f"{100 * box['y'] / height:.3f}%;width:{100 * box['w'] / width:.3f}%;height:"
                     f"{100 * box['h'] / height:.3f}%\"><span>{_e(box.get('finding', ''))}"
                     f"</span></div>")
    return "".join(parts)


def _method_figure(entry, method, title, note):
    info = entry["methods"][method]
    files = info["files"]
    layers = "".join(f"<img class=\"layer\" data-view=\"{view}\" src=\"{href(files[view])}\" "
                     f"alt=\"{_e(method)} {view} map\">" for view in VIEWS)
    score = info.get("score")
    tops = ", ".join(f"{view} {'none' if top is None else format(top, '.3g')}"
                     for view, top in info["vmax"].items())
    numbers = [f"full colour at: {tops}"]
    if info.get("delta") is not None:
        numbers.append(f"completeness error {info['delta']:.1e}")
    if score:
        numbers.append(f"pointing game: {'hit' if score['pointing'] else 'miss'}; inside "
                       f"share {score['inside_share']:.2f} (boxes cover "
                       f"{score['box_fraction']:.2f})")
    if note:
        numbers.append(note)
    return (f"<figure data-method=\"{_e(method)}\"><figcaption><b>{_e(title)}</b> &middot; "
            f"<a href=\"{href(files['panel'])}\">panel</a> &middot; "
            f"<a href=\"{href(files['heatmap'])}\">map</a></figcaption><div class=\"stack\">"
            f"<img class=\"xray\" src=\"{href(entry['files']['xray'])}\" alt=\"X-ray\">"
            f"{layers}{_boxes_html(entry)}</div><div class=\"meta\">"
            f"{'<br>'.join(_e(n) for n in numbers)}</div></figure>")


def render_detail(entry, methods, header, titles):
    """One image: every method side by side, views, opacity, boxes, numbers. -> page text."""
    label = entry.get("label") or "unknown"
    facts = (f"<table id=\"numbers\"><tr><th>p(abnormal)</th><td>{entry['p_abnormal']:.4f}</td>"
             f"</tr><tr><th>p(normal)</th><td>{entry['p_normal']:.4f}</td></tr><tr><th>true "
             f"label</th><td class=\"{_e(label)}\">{_e(label)}</td></tr><tr><th>outcome</th><td>"
             f"<span class=\"badge {_e(entry['outcome'])}\">{_e(entry['outcome'])}</span> "
             f"{_e(OUTCOMES[entry['outcome']])}</td></tr><tr><th>expert boxes</th><td>"
             f"{len(entry.get('boxes') or [])}"
             f"{'; not scored: ' + _e(entry['excluded']) if entry.get('excluded') else ''}"
             f"</td></tr></table>")
    views = "".join(f"<label><input type=\"radio\" name=\"view\" value=\"{v}\""
                    f"{' checked' if v == 'positive' else ''}> {_e(text)}</label>"
                    for v, text in VIEWS.items())
    controls = (f"<div class=\"controls\">{views}<label>map opacity <input type=\"range\" "
                f"id=\"opacity\" min=\"0\" max=\"100\" value=\"80\"> <span id=\"opacity-value\">"
                f"80%</span></label><label><input type=\"checkbox\" id=\"show-boxes\" checked> "
                f"expert boxes</label></div>")
    figures = "".join(_method_figure(entry, m, *titles[m]) for m in methods)
    base = href(entry["methods"][methods[0]]["files"]["base"])
    meta = "".join(f"<div class=\"meta\">{_e(line)}</div>" for line in header.meta)
    body = (f"<header><h1>{_e(entry['name'])}</h1><div class=\"meta\"><a href=\"index.html\">"
            f"&larr; gallery</a> &middot; <a href=\"{base}\">model input</a></div>{meta}{facts}"
            f"</header>{controls}<main class=\"methods\">{figures}</main>"
            f"<script>{_DETAIL_SCRIPT}</script>")
    return _page(f"{entry['name']} - {header.title}", body, header.random_weights)


def write_all(results, entries, methods, header, titles):
    """index.html and every detail page; titles: {method: (title, note)}. -> file names."""
    written = ["index.html"]
    atomic_write_text(os.path.join(results, "index.html"),
                      render_gallery(entries, methods, header))
    for entry in entries:
        atomic_write_text(os.path.join(results, entry["files"]["page"]),
                          render_detail(entry, methods, header, titles))
        written.append(entry["files"]["page"])
    return written
