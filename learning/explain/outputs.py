"""What stage 6 writes besides pictures and pages: maps.npz's index, index.json/.csv, copies of
the model's reports, the results folder's README.txt, and JSON that stays standard.

Used by learning/visualization.py. Every output says what its fields mean: maps.npz's "README"
member (MAPS_README), localization.json's "description", and README.txt (RESULTS_README) for
the folder as a whole.
"""
import json
import math
import os

import numpy as np

from scraper.cli import batches
from scraper.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_json_rows

MODEL_REPORTS = ("metrics.json", "roc.png", "training_curve.png")
INDEX_COLUMNS = ("name", "label", "p_normal", "p_abnormal", "outcome", "method",
                 "completeness_delta", "scale_top", "picture", "xray", "page")
MAPS_README = {
    "map/<name>/<method>": "float32 (S, S): the SIGNED attribution of the explained target "
                           "(run.json postprocess) per input pixel, colour channels summed; > 0 "
                           "pushes towards 'abnormal'. DeepLIFT and integrated gradients sum to "
                           "f(x) - f(baseline). Unsmoothed, at the model's input size S (boxes "
                           "scale by S / original size).",
    "map/<name>/<method>/<finding>": "float32 (S, S): a findings model's map of that "
                                      "finding's own logit (signed), for the findings the "
                                      "image shows: predicted (p > 0.5, else the most "
                                      "probable) or boxed (learning/explain/findings.py)",
    "names": "(N,) str: image names in the order explained",
    "methods": "(M,) str",
    "labels": "(N,) str: 'normal', 'abnormal' or '' (unknown)",
    "p_abnormal, p_normal": "(N,) float64 softmax probabilities",
    "completeness_delta": "(N, M) float64 |sum(map) - (f(x) - f(baseline))|; NaN for methods "
                          "that make no completeness promise (grad-cam, saliency, occlusion)",
    "findings, p_findings": "a findings model's finding names (K,) str and their sigmoid "
                            "probabilities (N, K) float64; absent for a normal/abnormal model",
    "image_size": "0-d int64 array, S: read it as int(maps['image_size'])",
    "run_id": "0-d str array: the run (run.json, localization.json, sanity.json) it belongs to",
    "README": "this description (JSON text): json.loads(str(maps['README']))",
}


RESULTS_README = """cxr-visualize results (stage 6) - what each file is

run.json            the run: run_id, parameters, counts, the model explained ("explained_model":
                    classifier.keras or head.keras + weights, "model_run_id"), "files" and
                    "folders" (the manifest: a re-run deletes only these), "orphans_removed"
                    (what a killed earlier run left and this run deleted), "colour_scales" (the
                    shared tops with --scale shared, else null: each picture's own top is in
                    index.json "scale_top").
maps.npz            the raw SIGNED maps, unsmoothed, at the model's input size, with names,
                    labels, probabilities and completeness errors: np.load(path,
                    allow_pickle=False); json.loads(str(maps["README"])) says what each is.
                    completeness_delta is NaN for methods with no completeness promise
                    (grad-cam, saliency, occlusion): not a failure.
index.json/.csv     one row per image and method: name, label, p_normal, p_abnormal, outcome
                    (TP/FP/FN/TN at p(abnormal) > threshold, run.json "threshold"; unlabelled
                    when the label is unknown), method, completeness_delta (null / empty: none),
                    scale_top (the |value| shown at full colour; null: the map is all zero), and
                    the paths of the map's picture, the X-ray and the detail page.
localization.json   (when images have expert boxes) each method against three controls, with
                    its "description" of every field; the verdict per method; for a model
                    trained with --findings, "findings": each box scored against its own
                    finding's map, T(IoBB) per finding next to Wang et al. 2017's.
sanity.json         (--sanity-check) the model-randomization test on a stated sample: per
                    method and stage the mean Spearman rho ("mean_rho": null = could not be
                    checked), "status" and what each stage re-drew ("stages").
colorbar.png        the colour scale of every picture: left end = -top (evidence against
                    "abnormal", cyan), centre = 0 (clear), right end = +top (evidence for,
                    yellow), drawn over mid-grey.
pictures/<xx>/      per image: <prefix>__xray.jpg (the X-ray at the display size),
                    <prefix>_<method>.png (THE picture of that map: RGBA, stacked over the
                    X-ray; smoothing sigma = run.json "smooth" model-input pixels),
                    <prefix>_<method>_<finding>.png (a findings model: the map of each
                    predicted or boxed finding) and
                    <prefix>.html (the detail page); <prefix> = <stem>[p_normal,p_abnormal].
index.html          the gallery (with gallery-data.js, gallery.js, gallery.css).
model_*             copies of the model folder's metrics.json, roc.png, training_curve.png.
"""


def jsonable(value):
    """NaN/inf -> None and numpy scalars -> Python numbers, so the JSON stays standard."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_map_index(maps, entries, methods, image_size, run_id):
    """The arrays that describe maps.npz's `map/<name>/<method>` entries (MAPS_README).
    `entries`: a list or stage 6's EntryLog (read back from disk): one pass for the numbers
    and the longest strings, then the names and labels written block by block (a (N,)
    unicode array costs 4 bytes per character of the LONGEST name for every image)."""
    n, finding_names = len(entries), None
    numbers = np.full((n, 2 + len(methods)), np.nan)   # p_abnormal, p_normal, deltas
    longest = {"name": 1, "label": 1}
    for i, e in enumerate(entries):
        longest = {key: max(longest[key], len(e[key] or "")) for key in longest}
        numbers[i, :2] = e["p_abnormal"], e["p_normal"]
        numbers[i, 2:] = [np.nan if e["methods"][m]["delta"] is None else e["methods"][m]["delta"]
                          for m in methods]
        if finding_names is None:
            finding_names = list(e.get("findings") or {})
            p_findings = np.zeros((n, len(finding_names)), np.float64)
        p_findings[i] = [e["findings"][f] for f in finding_names]
    for key, array_name in (("name", "names"), ("label", "labels")):
        maps.add_rows(array_name, f"<U{longest[key]}", n,
                      batches((e[key] or "" for e in entries), 4096))
    maps.add("methods", np.array(methods, dtype=str))
    maps.add("p_abnormal", numbers[:, 0].copy())
    maps.add("p_normal", numbers[:, 1].copy())
    maps.add("completeness_delta", numbers[:, 2:].copy())
    if finding_names:
        maps.add("findings", np.array(finding_names, dtype=str))
        maps.add("p_findings", p_findings)
    maps.add("image_size", np.array(int(image_size), np.int64))
    maps.add("run_id", np.array(run_id))
    maps.add("README", np.array(json.dumps(MAPS_README, indent=1)))


def copy_model_reports(model_dir, run):
    """metrics.json, roc.png, training_curve.png of the model -> model_<name>, so the
    gallery's links work when the results folder is copied alone. -> names copied."""
    copied = []
    for name in MODEL_REPORTS:
        source = os.path.join(model_dir, name)
        if os.path.isfile(source):
            with open(source, "rb") as handle:
                atomic_write_bytes(run.path("model_" + name), handle.read())
            copied.append("model_" + name)
    return copied


def write_index(run, entries, methods):
    """index.json (one row per image and method) and index.csv -> the file names. Written row
    by row: a list of the rows and its text cost ~7 KB an image (700 MB at 100,000)."""
    def rows():
        return ({"name": e["name"], "label": e["label"], "p_normal": e["p_normal"],
                 "p_abnormal": e["p_abnormal"], "outcome": e["outcome"], "method": m,
                 "completeness_delta": e["methods"][m]["delta"],
                 "scale_top": e["methods"][m]["scale"]["top"],
                 "files": {"picture": e["methods"][m]["picture"], **e["files"]}}
                for e in entries for m in methods)
    atomic_write_json_rows(run.path("index.json"), (jsonable(row) for row in rows()))
    atomic_write_csv(run.path("index.csv"), INDEX_COLUMNS, (
        [row["name"], row["label"] or "", f"{row['p_normal']:.6f}", f"{row['p_abnormal']:.6f}",
         row["outcome"], row["method"],
         "" if row["completeness_delta"] is None else f"{row['completeness_delta']:.3g}",
         "" if row["scale_top"] is None else f"{row['scale_top']:.4g}",
         row["files"]["picture"], row["files"]["xray"], row["files"]["page"]]
        for row in rows()))
    return ["index.json", "index.csv"]
