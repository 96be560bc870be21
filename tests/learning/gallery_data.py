"""Generated results folders for the page tests: entries and a header shaped as stage 6 hands
them to `gallery.write_pages` (see /work/briefs/contract-stage6.md, kept in the gallery
module's docstrings), with real PNG files, at any number of cards, without running a model.

Names are chosen to hurt: HTML, quotes, '#', '?', '%', brackets, non-ASCII. Pictures are tiny
but distinct (a bright blob at a different place per picture), so a card showing the wrong
picture is visible in a screenshot.
"""
import os

import numpy as np
from PIL import Image

METHODS = ("grad-cam", "deeplift")
NASTY = ["<img src=x onerror=\"window.PWNED=1\">.png", "a#b?c%20[0.10,0.90].png",
         "\u00fcn\u00efc\u00f8de 'q' \"dq\" & co.png", "=cmd|' /C calc'!A0,x.png"]
VIEWS = ("PA", "AP", "LATERAL")
MODALITIES = ("CR", "DX", None)
FINDINGS = ("Effusion", "Infiltration", "Pneumothorax")
SIDE = 64


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _xray(k):
    """(64, 64, 3) uint8: a grey gradient with a dark band whose height depends on k."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    grey = (60 + 120 * x / SIDE + 40 * ((y // 8) % 2)).astype(np.uint8)
    grey[(k * 7) % SIDE:(k * 7) % SIDE + 4] = 20
    return np.repeat(grey[..., None], 3, axis=-1)


def _picture(k):
    """(64, 64, 4) uint8 RGBA: an orange blob at a place that depends on k, transparent
    elsewhere (the shape of a stage-6 map picture)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    cy, cx = 8 + (k * 13) % 48, 8 + (k * 29) % 48
    value = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 60.0)
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = (160 * value).astype(np.uint8)
    rgba[..., 3] = (230 * np.sqrt(value)).astype(np.uint8)
    return rgba


def _outcome(label, p, threshold=0.5):
    predicted = p > threshold
    return ("T" if predicted == (label == "abnormal") else "F") + ("P" if predicted else "N")


def make_entries(results, n, distinct=None, seed=0, findings=None):
    """n entries (and their picture files under `results`); `distinct` pictures cycled (default
    one per card). The first entries carry the NASTY names; entry 3 has p = 0.498 (an FN).
    findings (names, e.g. FINDINGS): a --findings model's entries (add_findings)."""
    return list(iter_entries(results, n, distinct, seed, findings))


def iter_entries(results, n, distinct=None, seed=0, findings=None):
    """make_entries' entries one at a time (bench_scale: none is kept in memory)."""
    rng = np.random.default_rng(seed)
    finding_rng = np.random.default_rng(seed + 1)
    distinct = distinct or n
    for k in range(distinct):
        _png(os.path.join(results, "xray", f"{k:03d}.png"), _xray(k))
        for j, m in enumerate(METHODS):
            _png(os.path.join(results, "maps", f"{m}-{k:03d}.png"), _picture(k + 17 * j))
            for f, name in enumerate(findings or ()):
                _png(os.path.join(results, "maps", f"{m}-{k:03d}_{name}.png"),
                     _picture(k + 17 * j + 5 * (f + 1)))
    _png(os.path.join(results, "colour-bar.png"), _picture(0)[:12])
    for i in range(n):
        name = NASTY[i] if i < len(NASTY) else f"img_{i:05d}.png"
        label = "abnormal" if i % 2 else "normal"
        p = 0.498 if i == 3 else float(rng.uniform())
        boxes = ([{"finding": "Nodule <b>", "x": 10 + i % 20, "y": 20, "w": 30, "h": 25}]
                 if i % 3 == 0 else [])
        k = i % distinct
        methods = {m: {"picture": f"maps/{m}-{k:03d}.png",
                       "scale": {"top": 0.0123 * (j + 1), "smooth": 1.5, "kind": "per-image",
                                 "colour_bar": "colour-bar.png", "unit": "logit units"},
                       "argmax": [0.25 + 0.01 * (i % 50), 0.5],
                       "delta": 3e-6 if m == "deeplift" else None,
                       "score": ({"pointing": bool((i + j) % 2), "inside_share": 0.25,
                                  "box_fraction": 0.08} if boxes else None),
                       "files": {}}
                   for j, m in enumerate(METHODS)}
        entry = {
            "name": name, "label": label, "p_abnormal": p, "p_normal": 1 - p,
            "outcome": _outcome(label, p), "boxes": boxes, "original_size": [128, 128],
            "excluded": None, "source": f"/site/<masked>/study-{i % 7}/IM{i:05d}.dcm",
            "view": VIEWS[i % 3], "modality": MODALITIES[i % 3],
            "report": {"findings": f"Heart size normal. <script>window.PWNED=2</script> {i}",
                       "impression": "No acute disease." if i % 2 == 0 else "",
                       "items": ["normal"] if i % 2 == 0 else ["Opacity/lung/base"]},
            "files": {"page": f"pictures/{i % 97:02x}/{name}.html", "xray": f"xray/{k:03d}.png"},
            "methods": methods}
        if findings:
            add_findings(entry, findings, finding_rng, i)
        yield entry


def add_findings(entry, findings, rng, i):
    """A --findings model's fields (learning/explain/findings.py): p per finding, and the maps
    of the predicted findings (p > 0.5; else the most probable one) beside each method's own
    picture, scored when the image has boxes. Every fifth image (i % 5 == 4) has none drawn
    (as a run whose finding maps failed): its cards must say so, never show another map.
    Entry 1 predicts every finding, entry 2 none (p < 0.5 for all)."""
    probs = rng.uniform(size=len(findings))
    probs = np.full(len(findings), 0.9) if i == 1 else 0.4 * probs if i == 2 else probs
    entry["findings"] = {name: float(p) for name, p in zip(findings, probs)}
    drawn = [name for name, p in zip(findings, probs) if p > 0.5] or [
        findings[int(np.argmax(probs))]]
    entry["finding_maps"] = {}
    if i % 5 == 4:
        return
    for j, method in enumerate(METHODS):
        own = entry["methods"][method]
        for f, name in enumerate(findings):
            if name in drawn:
                entry["finding_maps"][f"{method}:{name}"] = {
                    "method": method, "finding": name, "p": entry["findings"][name],
                    "picture": own["picture"][:-len(".png")] + f"_{name}.png",
                    "scale": own["scale"], "argmax": [0.1 + 0.2 * f, 0.3],
                    "score": ({"pointing": bool((i + j + f) % 2), "inside_share": 0.3,
                               "box_fraction": 0.08} if entry["boxes"] else None)}


def _block(mean, n=12):
    ci = {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "images": n}
    return {"summary": {"box_fraction": 0.08},
            "ci": {"pointing": ci, "inside_share": dict(ci, mean=mean / 2), "images": n}}


def make_header(gallery, n_test=208, limit=None, examples=None):
    """A header with every field, in stage 6's shape: two shared controls + each method's own
    average map, verdict sentences, argmax grids, a NaN sanity correlation, --limit."""
    def differences(beats):
        return {key: {"pointing": {"mean": 0.1, "low": 0.02 if beats else -0.2, "high": 0.3,
                                   "beats": beats},
                      "inside_share": {"mean": 0.01, "low": 0.005, "high": 0.02, "beats": True}}
                for key in ("lung_prior", "centred_gaussian", "mean_map")}
    methods = {
        "grad-cam": dict(_block(0.3), mean_map=_block(0.33), difference_vs=differences(False),
                         localizes=False,
                         verdict=["The maps vary from image to image but not with the "
                                  "findings: their own average map scores as well <or better>."]),
        "deeplift": dict(_block(0.6), mean_map=_block(0.2), difference_vs=differences(True),
                         localizes=True, verdict=[])}
    report = {"methods": methods, "excluded": {},
              "controls": {"lung_prior": _block(0.41), "centred_gaussian": _block(0.21)},
              "description": {"controls": "maps that use no image <no model>",
                              "difference_vs": "method minus control, paired bootstrap"}}
    def stage(rho, status):
        return {"mean_rho": rho, "checked": 0 if rho is None else 2, "images": 2,
                "status": status}
    sanity = {"methods": {"grad-cam": {"stages": {"head": stage(None, "could not be checked"),
                                                  "head+block4": stage(0.21, "passes")},
                                       "status": "could not be checked"},
                          "deeplift": {"stages": {"head": stage(0.1, "passes"),
                                                  "head+block4": stage(0.05, "passes")},
                                       "status": "passes"}},
              "flagged": [], "images": ["a", "b"], "flag_rho": 0.9,
              "stages": {"head": "head kernels re-drawn",
                         "head+block4": "head and block4 conv kernels re-drawn"}}
    grid = [[(r * 3 + c) % 5 if 1 < r < 6 else 0 for c in range(8)] for r in range(8)]
    return gallery.Header(
        title="Chest X-ray abnormality evidence <test>", random_weights=True,
        meta=["generated cards <for tests>"], threshold=0.5,
        method_info={"grad-cam": {"title": "Grad-CAM", "note": "never negative"},
                     "deeplift": {"title": "DeepLIFT (Rescale)", "note": ""}},
        model_metrics={"test": {"n": n_test, "accuracy": 0.8, "roc_auc": 0.9,
                                "roc_auc_ci": {"low": 0.85, "high": 0.95, "n_groups": 76},
                                "baseline_majority": {"predicts": "normal", "accuracy": 0.5,
                                                      "roc_auc": 0.5}}},
        roc="colour-bar.png", selection={"examples": examples, "limit": limit,
                                         "name_filter": None},
        localization=report,
        argmax={m: {"grid": grid, "n": sum(map(sum, grid)), "no_positive": 2,
                    "inside_lungs": 0.88, "upper_half": 0.67} for m in METHODS},
        sanity=sanity, links=["colour-bar.png"], run_id="20260101-120000-abcd")


def make_run(results, n, distinct=None, pages=True, findings=None, **header):
    """Write a generated results folder -> (entries, written paths); pages=False writes the
    gallery without the detail pages (its cards' links then lead nowhere); findings: a
    --findings model's run (make_entries)."""
    from learning.explain import gallery

    entries = make_entries(str(results), n, distinct, findings=findings)
    header = make_header(gallery, **header)
    if not pages:
        return entries, gallery.write_gallery(str(results), entries, list(METHODS), header)
    written, count = gallery.write_pages(str(results), entries, list(METHODS), header)
    assert count == len(entries)
    return entries, written + [entry["files"]["page"] for entry in entries]
