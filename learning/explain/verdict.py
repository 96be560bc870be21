"""Does the run localize? Stage 6's localization report against three controls, and its verdict.

Used by learning/visualization.py (results/localization.json, the terminal summary, the
gallery header) and benchmarks/bench_localization.py. Metrics and the two no-model maps come
from learning/explain/localization.py.

Boxes: clipped to the image (a box partly outside is cut at the border; one wholly outside or
with invalid numbers is dropped; a warning names the image). An image whose boxes (union) cover
more than MAX_BOX_FRACTION of it is not scored: any map's peak would land inside by chance.

Three controls, each scored on the same boxes as the maps:
  centred_gaussian  a centred Gaussian (no model, no image)
  lung_prior        two Gaussians over the lung fields, fixed from anatomy (no model, no image)
  mean_map          the mean of the run's own maps of that method over every explained image,
                    each map's positive part scaled to max 1: the SAME map for every image. It
                    is where the method points on average. Maps that do not beat it carry no
                    per-image localization: they vary from image to image, but not with the
                    findings. (It includes the scored image's own map, 1 of N: if anything this
                    favours the control, so the verdict stays conservative.)
Verdict: for each control the per-image difference map - control in pointing hit and inside
share is bootstrapped over images (paired: same images, same seed). The method "localizes" only
when all six 95% intervals lie above 0.

Where the maps point: the argmax of each map's positive part, counted on an 8x8 grid over every
explained image (`ArgmaxGrid`), with the share inside the lung prior's fields and above
mid-height.
"""
import math

import numpy as np

from learning.explain import localization
from scraper.cli import log

# An image whose boxes cover more of it than this is not scored (chance would hit them).
MAX_BOX_FRACTION = 0.5
COMPARED = ("pointing", "inside_share")
CONTROLS = ("centred_gaussian", "lung_prior", "mean_map")
CONTROL_NAMES = {"centred_gaussian": "a centred Gaussian", "lung_prior": "the lung-field prior",
                 "mean_map": "the mean of its own maps"}
GRID = 8
NOT_WITH_FINDINGS = ("maps vary from image to image but not with the findings: their "
                     "own average, the same map shown for every image, scores as well or better")
DESCRIPTION = {
    "controls": "maps that use no model and no image, scored on the same boxes: "
                "centred_gaussian (sigma a quarter of the side) and lung_prior (two Gaussians "
                "over the lung fields, fixed from anatomy)",
    "methods.<m>.mean_map": "the image-independent control of method m: the mean of the run's "
                            "own maps of m over all explained images, each scaled to max 1, "
                            "scored as if it were every image's map",
    "summary": "means over the scored images: pointing_game (share of images whose map maximum "
               "lies in a box), inside_share (share of the positive map mass inside the boxes), "
               "box_fraction (share of the image the boxes cover: the chance level of "
               "inside_share), iou@L and iobb@L (region = pixels >= L x the map's maximum; "
               "IoU and intersection over the region), T(iobb>T)@L (share of images whose "
               "iobb@L > T: Wang et al. 2017's T(IoBB) accuracy)",
    "ci": "mean with a 95% percentile bootstrap interval over images (low, high; n images, "
          "n_resamples, seed = the top-level seed)",
    "per_image": "each scored image's metrics (recomputable from maps.npz with "
                 "learning.explain.localization.image_metrics(max(map, 0), boxes[name]))",
    "methods.<m>.difference_vs.<control>.<metric>": "the paired DIFFERENCE method - control "
                                                    "per image, its mean and 95% bootstrap CI; "
                                                    "beats = the interval lies above 0",
    "methods.<m>.localizes": "true only when the method beats all three controls on pointing "
                             "and inside share (all six differences' CIs above 0)",
    "methods.<m>.verdict": "the verdict in plain sentences",
    "methods.<m>.argmax_grid": "where the maps' maxima fall over ALL explained images: counts "
                               "on a grid x grid partition of the image (rows top to bottom), "
                               "inside_lungs = share within the lung prior's fields (prior >= "
                               "half its peak), upper_half = share above mid-height",
    "iou_levels": "the region levels L (fractions of a map's maximum) of iou@L / iobb@L",
    "iobb_thresholds": "the thresholds T of T(iobb>T)@L",
    "boxes": "per scored image, its expert boxes in map pixels (image_size x image_size)",
    "excluded": "images with boxes that were not scored, and why",
    "image_size": "side of the maps in pixels (the model's input size)",
    "findings": "(a model trained with --findings) each expert box scored against its own "
                "finding's map, T(IoBB) per finding next to Wang et al. 2017's: its own "
                "'description' says what each field is (learning/explain/findings.py)",
}


def clip_boxes(boxes, width, height, name):
    """Expert boxes (original pixels) clipped to the image; unusable ones dropped, with a note."""
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
    """Boxes in map pixels, or ([], reason) when the image cannot be scored honestly."""
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


# ----------------------------------------------------------------------------- run-wide sums

class MeanMap:
    """Running mean of a method's maps, each positive part scaled to max 1: (S, S) float64."""

    def __init__(self, size):
        self.total = np.zeros((size, size), np.float64)
        self.n = 0

    def add(self, shown):
        peak = float(np.max(shown))
        if peak > 0:
            self.total += np.asarray(shown, np.float64) / peak
        self.n += 1  # a map with nothing positive counts as an all-zero map

    def mean(self):
        return self.total / max(self.n, 1)


class ArgmaxGrid:
    """Where the maxima of the maps' positive parts fall, counted on a GRID x GRID partition."""

    def __init__(self, size, grid=GRID):
        self.size, self.grid = size, grid
        self.counts = np.zeros((grid, grid), np.int64)
        self.no_positive = 0
        lungs = localization.lung_prior_map((size, size))
        self._lungs = lungs >= 0.5 * lungs.max()
        self.inside, self.upper = 0, 0

    def add(self, shown):
        """Count one map; returns its argmax as [x, y] fractions, or None (nothing positive)."""
        if float(np.max(shown)) <= 0:
            self.no_positive += 1
            return None
        row, col = np.unravel_index(int(np.argmax(shown)), np.shape(shown))
        self.counts[row * self.grid // self.size, col * self.grid // self.size] += 1
        self.inside += bool(self._lungs[row, col])
        self.upper += row < self.size / 2
        return [(col + 0.5) / self.size, (row + 0.5) / self.size]

    def report(self):
        n = int(self.counts.sum())
        return {"grid": self.counts.tolist(), "n": n, "no_positive": self.no_positive,
                "inside_lungs": self.inside / n if n else None,
                "upper_half": self.upper / n if n else None}


# ----------------------------------------------------------------------------- the report

def compare(method_scores, control_scores, seed):
    """Paired bootstrap of method - control per image, for pointing and inside share."""
    result = {}
    for metric in COMPARED:
        diff = [float(m[metric]) - float(b[metric]) for m, b in zip(method_scores, control_scores)]
        ci = localization.bootstrap_ci(diff, seed=seed)
        result[metric] = dict(ci, beats=bool(ci["low"] is not None and ci["low"] > 0))
    return result


def score_block(heatmap_of, scored, seed):
    """{"summary", "ci", "per_image"} of a map (name -> (S, S)) on the scored images."""
    per_image = [dict(localization.image_metrics(heatmap_of(e["name"]), e["scored_boxes"]),
                      name=e["name"]) for e in scored]
    return {"summary": localization.summarize(per_image),
            "ci": localization.summarize_with_ci(per_image, seed=seed), "per_image": per_image}


def verdict(difference_vs):
    """(localizes, [plain sentences]) from the method's differences to the three controls."""
    beaten = {key: all(difference_vs[key][m]["beats"] for m in COMPARED) for key in difference_vs}
    if all(beaten.values()):
        return True, ["It localizes: it beats the centred Gaussian, the lung-field prior and "
                      "the mean of its own maps (paired 95% CIs above 0, pointing and inside "
                      "share)."]
    sentences = []
    own = difference_vs.get("mean_map")
    if own and any(own[m]["mean"] is not None and own[m]["mean"] <= 0 for m in COMPARED):
        sentences.append(f"The {NOT_WITH_FINDINGS}.")
    lost = [CONTROL_NAMES[key] for key, ok in beaten.items() if not ok]
    sentences.append(f"It does not localize: it does not beat {', '.join(lost)} (a paired 95% "
                     f"CI reaches 0 or below); do not read these maps as localization.")
    return False, sentences


def report(entries, methods, image_size, seed, context, mean_maps, argmax):
    """localization.json: each method and the three controls, per image and summary with
    bootstrap CIs, paired differences and the verdict; None when no image has usable boxes.

    entries: stage 6's per-image dicts ("name", "scored_boxes", "excluded", "scores":
    {method: image_metrics}); mean_maps: {method: MeanMap}; argmax: {method: ArgmaxGrid}."""
    scored = [e for e in entries if e["scored_boxes"]]
    if not scored:
        return None
    shape = (image_size, image_size)
    fixed = {"centred_gaussian": localization.gaussian_map(shape),
             "lung_prior": localization.lung_prior_map(shape)}
    result = dict(description=DESCRIPTION, **context, seed=seed,
                  iou_levels=list(localization.LEVELS),
                  iobb_thresholds=list(localization.IOBB_THRESHOLDS),
                  max_box_fraction=MAX_BOX_FRACTION, image_size=int(image_size),
                  boxes={e["name"]: e["scored_boxes"] for e in scored},
                  excluded={e["name"]: e["excluded"] for e in entries if e["excluded"]},
                  controls={key: score_block(lambda name, m=m: m, scored, seed)
                            for key, m in fixed.items()}, methods={})
    for method in methods:
        per_image = [dict(e["scores"][method], name=e["name"]) for e in scored]
        block = {"summary": localization.summarize(per_image),
                 "ci": localization.summarize_with_ci(per_image, seed=seed),
                 "per_image": per_image}
        own = mean_maps[method].mean()
        block["mean_map"] = score_block(lambda name: own, scored, seed)
        controls = dict(result["controls"], mean_map=block["mean_map"])
        block["difference_vs"] = {key: compare(per_image, controls[key]["per_image"], seed)
                                  for key in CONTROLS}
        block["localizes"], block["verdict"] = verdict(block["difference_vs"])
        block["argmax_grid"] = argmax[method].report()
        result["methods"][method] = block
    return result


def summary_lines(report, random_weights, excluded=0):
    """The terminal summary: each method next to the three controls, and the verdict."""
    if report is None:
        return ([f"localization: no image scored; {excluded:,} image(s) with expert boxes "
                 f"excluded (boxes cover > {MAX_BOX_FRACTION:.0%} of the image or less than a "
                 f"pixel)"] if excluded else [])
    ci = localization.format_ci
    lines = []
    for method, block in report["methods"].items():
        controls = dict(report["controls"], mean_map=block["mean_map"])
        shown = "; ".join(f"{key.replace('_', ' ')} {ci(controls[key]['ci']['pointing'], 2)} / "
                          f"{ci(controls[key]['ci']['inside_share'], 2)}" for key in CONTROLS)
        lines.append(f"localization {method} on {block['ci']['images']:,} boxed images: pointing "
                     f"{ci(block['ci']['pointing'], 2)}, inside share "
                     f"{ci(block['ci']['inside_share'], 2)}; controls (pointing / inside): "
                     f"{shown} -> {' '.join(block['verdict'])}")
        grid = block["argmax_grid"]
        if grid["n"]:
            lines.append(f"  {method} maxima: {grid['inside_lungs']:.0%} inside the lung fields, "
                         f"{grid['upper_half']:.0%} above mid-height (of {grid['n']:,} maps)")
    if report["excluded"]:
        lines.append(f"localization: {len(report['excluded']):,} image(s) not scored "
                     f"(boxes cover > {MAX_BOX_FRACTION:.0%} of the image or less than a pixel)")
    if random_weights:
        lines.append("(random weights: these localization numbers are a smoke test, not a result)")
    return lines
