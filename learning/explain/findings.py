"""One map per finding: stage 6 and cxr-explain on a model trained with --findings.

Used by learning/visualization.py. A findings model (learning/train/findings.py) gives 2 + K
logits [normal, abnormal, f_1..f_K]; its Explainer (learning/explain/attribution.py) explains
each finding's own logit besides the usual target, in the same passes (Grad-CAM and occlusion:
no extra cost; DeepLIFT, integrated gradients, saliency: one backward pass more per finding).
Per image, for every method:
* the map of each finding the model PREDICTS (sigmoid p > 0.5; the most probable one when
  none is) and of each finding the image has an expert box of is drawn as its own picture
  (`<prefix>_<method>_<finding>.png`, by the one renderer, learning/explain/render.py) and kept
  in maps.npz as map/<name>/<method>/<finding>;
* each expert box is scored against ITS OWN finding's map (the box's finding name matched to
  the vocabulary, scraper/findings.py: NIH's "Infiltrate" is Infiltration); a box whose finding
  the model has no output for is counted apart ("not_modelled"), never scored against another
  finding's map.
localization.json's "findings" block reports, per method and finding, T(IoBB) at IoBB > 0.1
(Wang et al.'s threshold) with a 95% bootstrap CI and n, pointing and inside share, the same for
the three controls (centred Gaussian, lung-field prior, the mean of the run's own maps of that
finding), and Wang et al. 2017's published value for that finding.

T(IoBB) here: the map's region is the pixels >= L x its maximum (L = 0.25, 0.5, 0.75, as
learning/explain/localization.py), IoBB = |region & boxes| / |region|, and T(IoBB) the share
of images whose IoBB > 0.1. Wang et al. drew boxes around thresholded heatmap blobs of a
ResNet-50 trained end to end on ~100,000 images; the protocol is close, not identical, so
their row is a reference point, not a paired baseline.
"""
import numpy as np

from learning.explain import localization, render, verdict
from learning.train.findings import sigmoid
from scraper.findings import canonical

T_IOBB = 0.1
HEADLINE_LEVEL = 0.5
PREDICTED_P = 0.5   # a finding is predicted iff its sigmoid p > PREDICTED_P (maps, gallery)
# Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. "ChestX-ray8: Hospital-scale Chest X-ray
# Database and Benchmarks on Weakly-Supervised Classification and Localization of Common
# Thorax Diseases", CVPR 2017, Table 3 (localization accuracy), row T(IoBB) = 0.1: ResNet-50
# trained end to end on ChestX-ray8, scored on its expert-boxed images. Values as widely quoted
# from the paper; they could not be re-checked against the PDF on this offline machine. Only
# these 8 findings have NIH boxes.
WANG_2017 = {"Atelectasis": 0.7277, "Cardiomegaly": 0.9931, "Effusion": 0.7124,
             "Infiltration": 0.7886, "Mass": 0.4352, "Nodule": 0.1645, "Pneumonia": 0.7500,
             "Pneumothorax": 0.4591}
WANG_SOURCE = ("Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale "
               "Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and "
               "Localization of Common Thorax Diseases. CVPR 2017, Table 3, T(IoBB) = 0.1 row "
               "(ResNet-50, end to end on ~100,000 images)")
DESCRIPTION = (
    "Per finding of a --findings model: each expert box scored against its own finding's map "
    "(box findings matched to the vocabulary; boxes of findings the model has no output for "
    "are counted in not_modelled). methods.<m>.<finding>: n (scored images), "
    "T(iobb>0.1)@L (share of images whose IoBB at region level L exceeds 0.1, mean with a 95% "
    "bootstrap CI over images), pointing, inside_share (same CIs), controls (the same numbers "
    "for centred_gaussian, lung_prior and mean_map = the mean of the run's own maps of this "
    "finding, each scaled to max 1), wang_2017 (the published T(IoBB)=0.1 accuracy for the "
    "finding, null when NIH has no boxes of it; source in wang_2017_source), per_image.")


def map_key(method, finding):
    """Key of a finding map in the renderer's results and entry["finding_maps"]."""
    return f"{method}:{finding}"


def drawn_findings(findings, probs, boxed):
    """The findings whose maps an image shows: the predicted ones (p > 0.5; else the most
    probable one) and those it has expert boxes of, in the model's order."""
    chosen = {name for name, p in zip(findings, probs) if p > PREDICTED_P}
    chosen = chosen or {findings[int(np.argmax(probs))]}
    return [name for name in findings if name in chosen or name in boxed]


class FindingMaps:
    """What a run keeps of its finding maps: per (method, finding) the mean map, the scores of
    the boxed images; boxes of findings the model lacks."""

    def __init__(self, findings, methods, image_size):
        self.findings, self.methods = list(findings), list(methods)
        self.image_size = image_size
        self.mean_maps = {(m, f): verdict.MeanMap(image_size) for m in methods for f in findings}
        self.scored = {(m, f): [] for m in methods for f in findings}
        self.boxes = {f: [] for f in findings}     # (name, boxes of f in map pixels)
        self.not_modelled = {}

    def boxes_by_finding(self, entry):
        """{finding: [its scored boxes]} of one image; boxes of other findings counted."""
        found = {}
        for box in entry["scored_boxes"]:
            name = canonical(box.get("finding", ""))
            if name in self.findings:
                found.setdefault(name, []).append(box)
            else:
                shown = name or str(box.get("finding", ""))[:40] or "(none)"
                self.not_modelled[shown] = self.not_modelled.get(shown, 0) + 1
        return found

    def note(self, entry, logits, per_method, k, pictures):
        """One image: p per finding into the entry, maps scored and averaged; returns
        {key: signed (S, S)} of the maps to draw and keep. pictures(key) -> picture path."""
        probs = sigmoid(np.asarray(logits)[2:2 + len(self.findings)])
        entry["findings"] = {name: float(p) for name, p in zip(self.findings, probs)}
        boxed = self.boxes_by_finding(entry)
        for name, boxes in boxed.items():
            self.boxes[name].append((entry["name"], boxes))
        drawn = drawn_findings(self.findings, probs, boxed)
        entry["finding_maps"], keep = {}, {}
        for method in self.methods:
            maps = per_method[method][3][k]                      # (S, S, K) signed
            for j, name in enumerate(self.findings):
                shown = np.maximum(maps[..., j], 0)
                self.mean_maps[(method, name)].add(shown)
                score = None
                if name in boxed:
                    score = localization.image_metrics(shown, boxed[name])
                    self.scored[(method, name)].append(dict(score, name=entry["name"]))
                if name in drawn:
                    key = map_key(method, name)
                    keep[key] = maps[..., j].astype(np.float32)
                    entry["finding_maps"][key] = {
                        "method": method, "finding": name, "p": float(probs[j]),
                        "picture": pictures(method, name), "score": score,
                        "argmax": _argmax(shown)}
        return keep

    def report(self, seed):
        """localization.json's "findings" block (DESCRIPTION); None when no box was scored."""
        if not any(self.scored.values()):
            return {"description": DESCRIPTION, "model_findings": self.findings, "methods": {},
                    "not_modelled": self.not_modelled, "wang_2017_source": WANG_SOURCE}
        shape = (self.image_size, self.image_size)
        fixed = {"centred_gaussian": localization.gaussian_map(shape),
                 "lung_prior": localization.lung_prior_map(shape)}
        methods = {}
        for method in self.methods:
            methods[method] = {}
            for name in self.findings:
                if not self.scored[(method, name)]:
                    continue
                controls = dict(fixed, mean_map=self.mean_maps[(method, name)].mean())
                block = summarize(self.scored[(method, name)], seed)
                block["controls"] = {
                    key: summarize([localization.image_metrics(heatmap, boxes)
                                    for _, boxes in self.boxes[name]], seed)
                    for key, heatmap in controls.items()}
                block["wang_2017"] = WANG_2017.get(name)
                block["per_image"] = self.scored[(method, name)]
                methods[method][name] = block
        return {"description": DESCRIPTION, "model_findings": self.findings,
                "t_iobb": T_IOBB, "levels": list(localization.LEVELS),
                "headline_level": HEADLINE_LEVEL, "methods": methods,
                "not_modelled": self.not_modelled, "wang_2017_source": WANG_SOURCE}


def _argmax(shown):
    if float(np.max(shown)) <= 0:
        return None
    row, col = np.unravel_index(int(np.argmax(shown)), np.shape(shown))
    return [(col + 0.5) / shown.shape[1], (row + 0.5) / shown.shape[0]]


def summarize(per_image, seed):
    """n, T(iobb>0.1)@L for every level, pointing and inside share, each with its CI."""
    block = {"n": len(per_image)}
    for level in localization.LEVELS:
        block[f"T(iobb>{T_IOBB:g})@{level:g}"] = localization.bootstrap_ci(
            [m[f"iobb@{level:g}"] > T_IOBB for m in per_image], seed=seed)
    for key in ("pointing", "inside_share"):
        block[key] = localization.bootstrap_ci([m[key] for m in per_image], seed=seed)
    return block


def summary_lines(report):
    """The terminal lines: per method and finding, T(IoBB) next to the controls and Wang's."""
    if not report or not report.get("methods"):
        return []
    key = f"T(iobb>{T_IOBB:g})@{HEADLINE_LEVEL:g}"
    ci = localization.format_ci
    lines = []
    for method, blocks in report["methods"].items():
        for name, block in blocks.items():
            controls = "; ".join(f"{control.replace('_', ' ')} {ci(values[key], 2)}"
                                 for control, values in block["controls"].items())
            wang = ("no published value" if block["wang_2017"] is None
                    else f"{block['wang_2017']:.2f}")
            lines.append(f"finding {name} ({method}, {block['n']:,} boxed images): T(IoBB>"
                         f"{T_IOBB:g}) at level {HEADLINE_LEVEL:g} {ci(block[key], 2)}, pointing "
                         f"{ci(block['pointing'], 2)}; controls: {controls}; Wang et al. 2017: "
                         f"{wang}")
    if report.get("not_modelled"):
        lines.append("boxes of findings the model has no output for (not scored): " + ", ".join(
            f"{name} {n:,}" for name, n in sorted(report["not_modelled"].items())))
    return lines


def scale_samples(state, args, keep):
    """--scale shared: a bounded sample of each finding map, for its key's run-wide top."""
    for key, signed in keep.items():
        state.samples.setdefault(key, []).append(
            render.scale_sample(render.smooth(signed, args.smooth), state.rng))


def note_image(args, state, entry, logits, per_method, k, maps):
    """Stage 6's step for one image of a findings model: its finding maps noted (FindingMaps),
    the drawn ones written to maps.npz and sampled for a shared scale -> {key: signed}."""
    def picture(method, finding):   # beside the method's own picture
        return entry["methods"][method]["picture"][:-len(".png")] + f"_{finding}.png"

    keep = state.finding_maps.note(entry, logits, per_method, k, picture)
    for key, signed in keep.items():
        method, finding = key.split(":", 1)
        maps.add(f"map/{entry['name']}/{method}/{finding}", signed)
    if args.scale == "shared":
        scale_samples(state, args, keep)
    return keep


def stored_maps(maps, entry):
    """{key: signed} of an entry's finding maps, read back from maps.npz (--scale shared)."""
    return {key: maps[f"map/{entry['name']}/{info['method']}/{info['finding']}"]
            for key, info in (entry.get("finding_maps") or {}).items()}
