"""Stage 6's localization report: expert boxes made usable, maps scored against them, and
every method compared with two maps that use no model.

Used by learning/visualization.py, which writes the result as results/localization.json and
prints `summary_lines`. Metrics and baseline maps come from learning/localization.py.

Boxes: clipped to the image (a box partly outside is cut at the border; one wholly outside or
with invalid numbers is dropped; a warning names the image). An image whose boxes (union) cover
more than MAX_BOX_FRACTION of it is not scored: any map's peak would land inside by chance, and
a box covering the whole image would score pointing 1.00 for free. Such images are listed under
"excluded".

Verdict: for each method and each baseline (centred Gaussian, lung-field prior) the per-image
difference method - baseline in pointing hit and inside share is bootstrapped over images
(paired: same images, same resamples' seed). A method "beats" a baseline on a metric only when
the 95% interval of that difference lies above 0; `beats_baselines` needs that for both
metrics against both baselines. A method that does not beat them does not localize.
"""
import math

from learning import localization
from scraper.cli import log

# An image whose boxes cover more of it than this is not scored (chance would hit them).
MAX_BOX_FRACTION = 0.5
COMPARED = ("pointing", "inside_share")


def clip_boxes(boxes, width, height, name):
    """Expert boxes (original pixels) clipped to the image; unusable ones dropped, with a note.

    A box partly outside is cut at the border; one wholly outside, or with non-finite or
    non-positive sides (a hand-edited description), is dropped. Nothing is drawn off-canvas.
    """
    kept, changed = [], 0
    for box in boxes:
        try:
            x, y, w, h = (float(box[k]) for k in "xywh")
        except (KeyError, TypeError, ValueError):
            changed += 1
            continue
        if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            changed += 1
            continue
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            kept.append({"finding": str(box.get("finding", "")), "x": x, "y": y, "w": w, "h": h})
            continue
        changed += 1
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            kept.append({"finding": str(box.get("finding", "")), "x": x0, "y": y0,
                         "w": x1 - x0, "h": y1 - y0})
    if changed:
        log(f"warning: {name}: {changed} expert box(es) reach outside the "
            f"{width}x{height} image or are invalid; clipped to the image or dropped")
    return kept


def boxes_for_scoring(boxes, image_size, name):
    """Boxes in map pixels, or ([], reason) when the image cannot be scored honestly.

    A box (union) covering more than MAX_BOX_FRACTION of the image is not scored: any map's
    peak lands inside it by chance (a whole-image box would give pointing 1.00 for free).
    """
    if not boxes:
        return [], None
    mask = localization.box_mask(boxes, (image_size, image_size))
    if mask.mean() > MAX_BOX_FRACTION:
        log(f"warning: {name}: its expert boxes cover {mask.mean():.0%} of the image "
            f"(> {MAX_BOX_FRACTION:.0%}); not scored (any map would hit them by chance)")
        return [], f"boxes cover {mask.mean():.2f} of the image"
    if not mask.any():
        return [], "boxes smaller than one map pixel"
    return boxes, None


def compare(method_scores, baseline_scores, seed):
    """Paired bootstrap of method - baseline per image, for pointing and inside share.

    'beats' is true only when the 95% interval of the difference lies above 0."""
    result = {}
    for metric in COMPARED:
        diff = [float(m[metric]) - float(b[metric]) for m, b in zip(method_scores, baseline_scores)]
        ci = localization.bootstrap_ci(diff, seed=seed)
        result[metric] = dict(ci, beats=bool(ci["low"] is not None and ci["low"] > 0))
    return result


def report(entries, methods, image_size, seed, context):
    """localization.json: per method and per no-model baseline, per image and summary with
    bootstrap CIs, and paired comparisons; None when no image has usable boxes.

    entries: stage 6's per-image dicts ("name", "scored_boxes", "excluded", "scores":
    {method: image_metrics}); context: run parameters copied into the report."""
    scored = [e for e in entries if e["scored_boxes"]]
    if not scored:
        return None
    shape = (image_size, image_size)
    baseline_maps = {"centred_gaussian": localization.gaussian_map(shape),
                     "lung_prior": localization.lung_prior_map(shape)}
    result = dict(context, levels=list(localization.LEVELS), seed=seed,
                  max_box_fraction=MAX_BOX_FRACTION, image_size=image_size,
                  boxes={e["name"]: e["scored_boxes"] for e in scored},
                  excluded={e["name"]: e["excluded"] for e in entries if e["excluded"]},
                  methods={}, baselines={})
    for key, heatmap in baseline_maps.items():
        per_image = [dict(localization.image_metrics(heatmap, e["scored_boxes"]), name=e["name"])
                     for e in scored]
        result["baselines"][key] = summary_block(per_image, seed)
    for method in methods:
        per_image = [dict(e["scores"][method], name=e["name"]) for e in scored]
        block = summary_block(per_image, seed)
        block["versus"] = {key: compare(per_image, result["baselines"][key]["per_image"], seed)
                           for key in baseline_maps}
        block["beats_baselines"] = all(block["versus"][key][metric]["beats"]
                                       for key in baseline_maps for metric in COMPARED)
        result["methods"][method] = block
    return result


def summary_block(per_image, seed):
    return {"summary": localization.summarize(per_image),
            "ci": localization.summarize_with_ci(per_image, seed=seed), "per_image": per_image}


def summary_lines(report, random_weights, excluded=0):
    """The terminal summary: each method next to both baselines, and the verdict.

    report None (no image scorable): one line when `excluded` images had boxes nonetheless."""
    if report is None:
        return ([f"localization: no image scored; {excluded:,} image(s) with expert boxes "
                 f"excluded (boxes cover > {MAX_BOX_FRACTION:.0%} of the image or less than a "
                 f"pixel)"] if excluded else [])
    ci = localization.format_ci
    base = report["baselines"]
    lines = []
    for method, block in report["methods"].items():
        verdict = ("BEATS both no-model baselines (paired 95% CIs above 0)"
                   if block["beats_baselines"] else
                   "does NOT beat the no-model baselines (a paired 95% CI reaches 0 or below): "
                   "do not read these maps as localization")
        lines.append(f"localization {method} on {block['ci']['images']:,} boxed images: pointing "
                     f"{ci(block['ci']['pointing'], 2)}, inside share "
                     f"{ci(block['ci']['inside_share'], 2)}; centred Gaussian "
                     f"{ci(base['centred_gaussian']['ci']['pointing'], 2)} / "
                     f"{ci(base['centred_gaussian']['ci']['inside_share'], 2)}; lung prior "
                     f"{ci(base['lung_prior']['ci']['pointing'], 2)} / "
                     f"{ci(base['lung_prior']['ci']['inside_share'], 2)} -> {verdict}")
    if report["excluded"]:
        lines.append(f"localization: {len(report['excluded']):,} image(s) not scored "
                     f"(boxes cover > {MAX_BOX_FRACTION:.0%} of the image or less than a pixel)")
    if random_weights:
        lines.append("(random weights: these localization numbers are a smoke test, not a result)")
    return lines
