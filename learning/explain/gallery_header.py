"""The gallery's header: the run's numbers in plain words, each next to its baseline.

Used by learning/explain/gallery.py. Reads only what stage 6 hands over (gallery.Header): the
model's metrics.json, localization.json's report (maps vs three controls, verdict sentences),
the argmax grid, sanity.json's report. Every string is escaped (user data may reach here
through names and paths). A missing or NaN number reads "n/a" / "could not be checked", never
as a pass.
"""
import html
import math
from urllib.parse import quote

# The three controls a map must beat before its heatmaps may be read as localization.
CONTROLS = {"lung_prior": "lung-field prior (no model)",
            "centred_gaussian": "centred Gaussian (no model)",
            "mean_map": "the maps' own average (one map for every image)"}
CONTROL_HINTS = {"lung_prior": "where the lungs usually are: no image is looked at",
                 "centred_gaussian": "the middle of the image: no image is looked at",
                 "mean_map": "the same map for every image: the mean of this method's maps in "
                             "this run, each scaled to max 1"}
METRICS = (("pointing", "pointing game"), ("inside_share", "inside share"))


def e(text):
    return html.escape(str(text), quote=True)


def number(value, digits=3):
    """'0.123', or 'n/a' for a missing, boolean or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def ci_text(ci, digits=2):
    """'0.41 [0.27, 0.57]' from a bootstrap CI dict ({mean, low, high}); 'n/a' when missing."""
    if not isinstance(ci, dict) or number(ci.get("mean")) == "n/a":
        return "n/a"
    if number(ci.get("low")) == "n/a":
        return number(ci["mean"], digits)
    return (f"{number(ci['mean'], digits)} [{number(ci['low'], digits)}, "
            f"{number(ci['high'], digits)}]")


def link(path):
    """A relative path percent-encoded for href/src ('#', '?', '%', '[', ' ' in names)."""
    return quote(path, safe="/")


# ----------------------------------------------------------------------------- classifier

def classifier_html(metrics, selection, cards):
    """Test AUROC with its CI and the majority baseline (the model's metrics.json), and what
    those numbers cover next to what the gallery shows (--limit, --name)."""
    test = metrics.get("test") if isinstance(metrics, dict) else None
    if not isinstance(test, dict):
        return "<div class=\"meta\" id=\"classifier\">classifier: no metrics.json in the model " \
               "folder</div>"
    ci = test.get("roc_auc_ci") if isinstance(test.get("roc_auc_ci"), dict) else {}
    base = test.get("baseline_majority") if isinstance(test.get("baseline_majority"), dict) else {}
    interval = (f" [{number(ci.get('low'))}, {number(ci.get('high'))}] (95% CI over "
                f"{e(ci.get('n_groups', '?'))} patients/reports)"
                if number(ci.get("low")) != "n/a" else "")
    n_test = test.get("n") if isinstance(test.get("n"), int) else (selection or {}).get("test_n")
    return (f"<div id=\"classifier\">test AUROC <b>{number(test.get('roc_auc'))}</b>{interval}, "
            f"accuracy {number(test.get('accuracy'))} on {e(n_test if n_test else '?')} test "
            f"images; majority baseline (always {e(base.get('predicts', '?'))}): accuracy "
            f"{number(base.get('accuracy'))}, AUROC {number(base.get('roc_auc'), 1)}</div>"
            f"{scope_html(n_test, selection, cards)}")


def scope_html(n_test, selection, cards):
    """'AUROC is on the model's whole test set of 208 images; this gallery shows 200 cards
    (--limit 200 of 208 examples).'"""
    selection = selection or {}
    limit, pattern, examples = (selection.get("limit"), selection.get("name_filter"),
                                selection.get("examples"))
    chosen = []
    if pattern:
        chosen.append(f"--name {pattern!r}")
    if limit:
        chosen.append(f"--limit {limit:,}" + (f" of {examples:,} examples"
                                              if isinstance(examples, int) else ""))
    why = f" ({e('; '.join(chosen))})" if chosen else ""
    whole = (f"AUROC and accuracy are on the model's whole test set of {n_test:,} images "
             f"(stage 5); " if isinstance(n_test, int) else "")
    return (f"<div class=\"meta\" id=\"scope\">{whole}this gallery shows {cards:,} "
            f"card{'s' if cards != 1 else ''}{why}.</div>")


def roc_html(roc):
    if not roc:
        return ""
    return (f"<figure class=\"roc\" id=\"roc\"><a href=\"{link(roc)}\"><img src=\"{link(roc)}\" "
            f"alt=\"ROC curve of the model on its test set\"></a></figure>")


# ----------------------------------------------------------------------------- localization

def _verdict(block, n_controls):
    """The method's verdict in plain sentences (stage 6's words when it gives them)."""
    localizes = block.get("localizes", block.get("beats_baselines"))
    sentences = [s for s in block.get("verdict") or [] if isinstance(s, str)]
    head = (f"<span class=\"yes\">localizes: beats all {n_controls} controls</span>"
            if localizes else "<span class=\"no\">does NOT beat the controls: do not read its "
                              "maps as localization</span>")
    return ("<div class=\"verdict\">" + head + "".join(f"<p>{e(s)}</p>" for s in sentences)
            + "</div>")


def shared_controls(report):
    """{key: block} of the controls common to every method (stage 6's `controls`; older
    reports call them `baselines` and may hold a run-wide `mean_map`)."""
    return report.get("controls") or report.get("baselines") or {}


def method_controls(report, block):
    """The controls a method is compared with: the shared ones + its own average map."""
    controls = dict(shared_controls(report))
    if isinstance(block.get("mean_map"), dict):
        controls["mean_map"] = block["mean_map"]
    return {key: controls[key] for key in sorted(controls, key=lambda k: (
        list(CONTROLS).index(k) if k in CONTROLS else len(CONTROLS), k))}


def _row(name, block, last, hint=""):
    cells = "".join(f"<td>{ci_text((block.get('ci') or {}).get(metric))}</td>"
                    for metric, _ in METRICS)
    tip = f" title=\"{e(hint)}\"" if hint else ""
    return f"<tr><td{tip}>{name}</td>{cells}<td>{last}</td></tr>"


def _differences(report):
    """<details>: each method minus each control, paired 95% CI, per metric."""
    rows = []
    for method, block in report["methods"].items():
        differences = block.get("difference_vs") or block.get("versus") or {}
        for key, versus in differences.items():
            cells = "".join(
                f"<td class=\"{'yes' if (versus.get(metric) or {}).get('beats') else ''}\">"
                f"{ci_text(versus.get(metric))}</td>" for metric, _ in METRICS)
            rows.append(f"<tr><td>{e(method)} &minus; {e(CONTROLS.get(key, key))}</td>{cells}"
                        f"</tr>")
    head = "".join(f"<th>{label}</th>" for _, label in METRICS)
    return (f"<details id=\"differences\"><summary>paired differences (map minus control, mean "
            f"[95% CI]; green: above 0)</summary><table><tr><th>comparison</th>{head}</tr>"
            f"{''.join(rows)}</table></details>")


def _fields(report):
    """<details> with localization.json's own field descriptions, when it has them."""
    described = report.get("description")
    if not isinstance(described, dict) or not described:
        return ""
    items = "".join(f"<tr><td>{e(key)}</td><td>{e(text)}</td></tr>"
                    for key, text in described.items())
    return (f"<details id=\"fields\"><summary>what localization.json's fields mean</summary>"
            f"<table>{items}</table></details>")


def localization_html(report):
    if not report or not report.get("methods"):
        return ("<h2>Localization</h2><div class=\"meta\" id=\"localization\">no image with "
                "usable expert boxes: nothing scored</div>")
    first = next(iter(report["methods"].values()))
    n = (first.get("ci") or {}).get("images", "?")
    head = "".join(f"<th>{label}</th>" for _, label in METRICS)
    rows = [f"<table id=\"localization\"><tr><th>map</th>{head}<th>verdict</th></tr>"]
    for method, block in report["methods"].items():
        controls = method_controls(report, block)
        rows.append(_row(e(method), block, _verdict(block, len(controls))))
        if "mean_map" in controls and "mean_map" not in shared_controls(report):
            rows.append(_row(f"&nbsp;&nbsp;{e(method)}: its own average map", controls["mean_map"],
                             f"<span class=\"meta\">control: {e(CONTROL_HINTS['mean_map'])}"
                             f"</span>", CONTROL_HINTS["mean_map"]))
    for key, block in shared_controls(report).items():
        rows.append(_row(e(CONTROLS.get(key, key)), block, f"<span class=\"meta\">control: "
                         f"{e(CONTROL_HINTS.get(key, ''))}</span>", CONTROL_HINTS.get(key, "")))
    rows.append("</table>")
    names = ", ".join(CONTROLS.get(key, key).split(" (")[0]
                      for key in method_controls(report, first))
    rule = (f"<div class=\"meta\">A map localizes only when it beats every control ({e(names)})"
            f" on both numbers, with the paired 95% CI of the difference above 0.</div>")
    any_control = next(iter(method_controls(report, first).values()), {})
    fraction = number((any_control.get("summary") or {}).get("box_fraction"), 2)
    excluded = report.get("excluded") or {}
    note = (f"; {len(excluded):,} image(s) not scored (boxes cover more than "
            f"{report.get('max_box_fraction', 0.5):.0%} of the image)" if excluded else "")
    return (f"<h2>Localization on {e(n)} image(s) with expert boxes (mean [95% bootstrap CI])"
            f"</h2>{''.join(rows)}{rule}{_differences(report)}{_fields(report)}<div class="
            f"\"meta\">chance level: the boxes cover {fraction} of the image on average"
            f"{e(note)}</div>")


# ----------------------------------------------------------------------------- argmax grid

def _heat(fraction):
    """#2a2a2a (no peak) to orange (the most peaks), as an rgb() colour."""
    low, high = (42, 42, 42), (243, 156, 18)
    return "rgb({},{},{})".format(*(round(a + (b - a) * fraction) for a, b in zip(low, high)))


def argmax_html(argmax):
    """A small heat grid per method: how many images' map peaks fall in each cell."""
    if not argmax:
        return ""
    parts = []
    for method, block in argmax.items():
        grid = block.get("grid") or []
        top = max([max(row) for row in grid if row] + [1])
        rows = "".join("<tr>" + "".join(
            f"<td style=\"background:{_heat(count / top)}\" title=\"{count:,} image(s)\">"
            f"{count if count else ''}</td>" for count in row) + "</tr>" for row in grid)
        shares = [f"{label} {block[key]:.0%}" for key, label in
                  (("inside_lungs", "inside the lung fields"), ("upper_half", "above mid-height"))
                  if isinstance(block.get(key), (int, float)) and math.isfinite(block[key])]
        without = block.get("no_positive")
        caption = f"{e(method)}: {e(block.get('n', '?'))} images" + (
            f" (+{without:,} with no positive value)" if isinstance(without, int) and without
            else "") + (f"; {', '.join(shares)}" if shares else "")
        parts.append(f"<div class=\"argmax\" data-method=\"{e(method)}\"><table>{rows}</table>"
                     f"{caption}</div>")
    return ("<h2>Where the maps peak (argmax of each image's map, top of the image at the top)"
            "</h2><div id=\"argmax\">" + "".join(parts) + "</div><div class=\"meta\">Peaks "
            "crowded into the same cells whatever the image shows mean the maps follow anatomy, "
            "not the disease.</div>")


# ----------------------------------------------------------------------------- sanity

SANITY_STATUS = {
    "flagged": ("no", "FLAGGED: barely changes when the weights are randomized"),
    "could not be checked": ("unsure", "could not be checked (a correlation is undefined, e.g. a "
                                       "constant map)"),
    "passes": ("yes", "changes with the weights")}


def _stage_cell(values):
    """'rho 0.27 (2 of 2 images)', or 'could not be checked' for a missing/NaN rho."""
    rho = values.get("mean_rho")
    if number(rho) == "n/a":
        return "<span class=\"unsure\">could not be checked</span>"
    checked, images = values.get("checked"), values.get("images")
    counted = (f" ({checked:,} of {images:,} images)"
               if isinstance(checked, int) and isinstance(images, int) else "")
    return f"rho {number(rho, 2)}{counted}"


def _sanity_status(method, stages, given, report):
    """stage 6's status when it gives one; else flagged / could not be checked / passes."""
    if given in SANITY_STATUS:
        return given
    rhos = [values.get("mean_rho") for values in stages.values()]
    if method in report.get("flagged", []):
        return "flagged"
    return ("could not be checked" if not rhos or any(number(r) == "n/a" for r in rhos)
            else "passes")


def sanity_html(report):
    """Model randomization (Adebayo et al. 2018): one row per method, a cell per stage."""
    if not report:
        return ("<div id=\"sanity\" class=\"meta\">sanity check: not run (cxr-visualize "
                "--sanity-check)</div>")
    names = report.get("stages") or {}
    rows = []
    for method, entry in report["methods"].items():
        stages = entry.get("stages") if isinstance(entry.get("stages"), dict) else entry
        stages = {key: values for key, values in stages.items() if isinstance(values, dict)}
        css, verdict = SANITY_STATUS[_sanity_status(method, stages, entry.get("status"), report)]
        cells = "<br>".join(f"{e(names.get(stage, stage))}: {_stage_cell(values)}"
                            for stage, values in stages.items())
        rows.append(f"<tr><td>{e(method)}</td><td>{cells}</td><td><span class=\"{css}\">"
                    f"{verdict}</span></td></tr>")
    sample = report.get("sample_note") or f"{len(report.get('images', [])):,} images"
    limit = number(report.get("flag_rho"), 2)
    return (f"<div id=\"sanity\"><div class=\"meta\">sanity check (model randomization, "
            f"{e(sample)}): Spearman rho between each map and the map after re-drawing weights; "
            f"a map that barely changes (rho above {limit}) ignores what the model learned."
            f"</div><table>{''.join(rows)}</table></div>")


# ----------------------------------------------------------------------------- all of it

def header_html(header, cards):
    links = " &middot; ".join(f"<a href=\"{link(name)}\">{e(name)}</a>" for name in header.links)
    shown = header.run_id and any(header.run_id in line for line in header.meta)
    lines = list(header.meta) + ([f"run {header.run_id}"] if header.run_id and not shown else [])
    meta = "".join(f"<div class=\"meta\">{e(line)}</div>" for line in lines)
    classifier = classifier_html(header.model_metrics, header.selection, cards)
    return (f"<header><h1>{e(header.title)}</h1>{meta}<div class=\"head-grid\"><div>"
            f"<h2>Classifier</h2>{classifier}</div>{roc_html(header.roc)}</div>"
            f"{localization_html(header.localization)}{argmax_html(header.argmax)}"
            f"<h2>Sanity</h2>{sanity_html(header.sanity)}"
            f"<div class=\"meta\" id=\"links\">files: {links}</div></header>\n")
