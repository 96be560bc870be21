"""Stage 6: where in each X-ray is the abnormality evidence? DeepLIFT heatmaps and friends.

Reads:  <weights>   VGG16 no-top weights from stage 1 (ignored with --random-weights)
        <model>     stage 5's directory: head.keras (feature shape -> 2 logits [normal,
                    abnormal]), config.json (feature_params: weights, image_size, layer,
                    pooling; class_names) and, for the gallery's header, metrics.json, roc.png,
                    training_curve.png
        <examples>  examples.json from stage 4: a JSON list of image names inside <images>
        <images>    the image folder; labels and expert boxes come from
                    <images>/../images-description.json (or --descriptions) when present
Writes: <results>/  (a dedicated folder: refused when it is, or lies in, the image folder, or
                    holds an input). Per image, prefix `<stem>[p_normal,p_abnormal]` (the
                    original's; the full name instead of the stem when two examples share it):
                    `<prefix>_<method>.png` (the map), `<prefix>__base.png` (the model input),
                    `<prefix>__xray.png` (display size), `..._<method>_overlay.png`,
                    `..._<method>_panel.png` (X-ray | map | overlay), `..._<method>_positive|
                    negative|absolute.png` (RGBA layers of the detail page), `<prefix>.html`
                    (the detail page);
                    index.html (gallery: header numbers, outcome filters), index.json + index.csv
                    (one row per image and method), maps.npz (below), localization.json (when
                    records have boxes), sanity.json (--sanity-check), model_metrics.json,
                    model_roc.png, model_training_curve.png (copied from <model>), run.json (the
                    parameters and the manifest "files": a re-run deletes only files listed
                    there that it does not write again)

maps.npz (read with np.load(path, allow_pickle=False); N images, M methods, S = model input):
    map/<name>/<method>   float32 (S, S): the SIGNED attribution of the explained target
                          (--postprocess; default logit(abnormal) - logit(normal)) per input
                          pixel, colour channels summed; > 0 pushes towards "abnormal". For
                          DeepLIFT and integrated gradients it sums to f(x) - f(baseline).
                          Unsmoothed, at the model's input size (boxes scale by S / original).
    names                 (N,) str, image names, in the order explained
    methods               (M,) str
    labels                (N,) str: "normal", "abnormal" or "" (unknown)
    p_abnormal, p_normal  (N,) float64 softmax probabilities
    completeness_delta    (N, M) float64 |sum(map) - (f(x) - f(baseline))|, NaN for methods
                          without completeness
    image_size            () int, S
localization.json holds, per scored image, the boxes in map pixels ("boxes"), so every number
in it can be recomputed from maps.npz with learning.localization.image_metrics(max(map, 0),
boxes) and bootstrap_ci(..., seed=localization.json["seed"]).

Example:
    cxr-visualize data/vgg16.weights.h5 data/model data/examples.json data/images data/results
    cxr-visualize x data/model data/examples.json data/images data/results --random-weights \
        --method deeplift,grad-cam,integrated-gradients --scale shared --limit 20 --sanity-check

The explained function is image -> logits: VGG16's conv base (rebuilt with the same layer,
pooling and image size as the features the head was trained on) followed by the trained head.
Attributions are taken w.r.t. the preprocessed input with baselines preprocessed the same way
(see learning/attribution.py for why that equals attributing raw pixels). DeepLIFT must satisfy
completeness (sum of attributions = f(x) - f(baseline)); the stage stops if it does not, since
the heatmaps would then be wrong. With --random-weights the maps mean nothing clinically: the
terminal and the gallery say so loudly. Localization is scored only where boxes are usable:
boxes are clipped to the image (with a warning), and an image whose boxes cover more than
half of it is not scored, since any map would point inside them by chance.
"""
import fnmatch
import json
import math
import os
import time
from types import SimpleNamespace

import numpy as np

from learning import (attribution, box_scores, localization, render, results_folder,
                      sanity)
from learning.explain import gallery
from scraper.cli import (ArgumentParser, UserError, bounded_int, elapsed_since, exit_with,
                         fmt_count, log, number, positive_int, progress_bar, seed)
from scraper.fileio import (atomic_write_bytes, atomic_write_csv, atomic_write_json, check_outputs,
                            read_json)
from scraper.images import (BadImage, add_max_pixels_argument, image_size as original_image_size,
                            is_image_name, set_max_pixels)

PROG = "cxr-visualize"
HEAD_FILE = "head.keras"
CONFIG_FILE = "config.json"
CLASS_NAMES = ["normal", "abnormal"]
METHOD_TITLES = {"deeplift": "DeepLIFT (Rescale)", "integrated-gradients": "Integrated gradients",
                 "grad-cam": "Grad-CAM", "occlusion": "Occlusion",
                 "saliency": "Saliency (|gradient|)"}
TARGET_TITLES = {"difference": "logit(abnormal) - logit(normal)",
                 "original": "both logits, shown as max(attr_abnormal - max(attr_normal, 0), 0)",
                 "abnormal": "logit(abnormal)"}
BASELINE_METHODS = ("deeplift", "integrated-gradients", "occlusion")
# Predicted abnormal iff p(abnormal) > THRESHOLD: stage 5's argmax of the two logits.
THRESHOLD = 0.5
UNSIGNED_METHODS = ("grad-cam", "saliency")
UNSIGNED_NOTE = "this method's map is never negative (nothing in the negative view)"
MODEL_REPORTS = ("metrics.json", "roc.png", "training_curve.png")
INDEX_COLUMNS = ("name", "label", "p_normal", "p_abnormal", "method", "completeness_delta",
                 "heatmap", "base", "overlay", "panel")


# ----------------------------------------------------------------------------- inputs

def load_examples(path):
    names = read_json(path, "examples list")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserError(f"examples list must be a JSON list of image names: {path}")
    if not names:
        raise UserError(f"examples list is empty: {path}; nothing to explain")
    return list(dict.fromkeys(names))


def resolve_image(images_dir, name):
    """Path of example `name` inside images_dir (the original listed names without '.png')."""
    if os.path.basename(name) != name or name in (".", ".."):
        return None
    path = os.path.join(images_dir, name)
    if os.path.isfile(path):
        return path
    if not is_image_name(name) and os.path.isfile(path + ".png"):
        return path + ".png"
    return None


def load_records(descriptions, images_dir):
    """{name: record} from images-description.json; {} (with a note) when the default is absent."""
    from scraper.schema import load_descriptions

    path = descriptions or os.path.join(os.path.dirname(os.path.abspath(images_dir)),
                                        "images-description.json")
    if not os.path.isfile(path):
        if descriptions:
            raise UserError(f"image descriptions not found: {descriptions}")
        log(f"note: no {path}; labels and expert boxes unknown, localization metrics skipped")
        return {}, None
    records = load_descriptions(path)
    by_name = {}
    for record in records:
        by_name[record["name"]] = record
        by_name.setdefault(os.path.splitext(record["name"])[0], record)
    return by_name, path


def check_model_config(config, path):
    """The feature parameters stage 5 recorded; UserError naming the field for a bad config."""
    from learning.vgg import LAYERS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, POOLINGS

    params = config.get("feature_params") if isinstance(config, dict) else None
    needed = ("weights", "image_size", "layer", "pooling")
    if not isinstance(params, dict) or any(key not in params for key in needed):
        raise UserError(f"{path}: feature_params must hold {', '.join(needed)} (re-run cxr-train)")
    size = params["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) \
            or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise UserError(f"{path}: feature_params.image_size {size!r} must be an integer "
                        f"between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} (re-run cxr-train)")
    for key, allowed in (("layer", LAYERS), ("pooling", POOLINGS)):
        if params[key] not in allowed:
            raise UserError(f"{path}: feature_params.{key} {params[key]!r} not one of "
                            f"{', '.join(allowed)} (re-run cxr-train)")
    if not isinstance(params["weights"], str):
        raise UserError(f"{path}: feature_params.weights {params['weights']!r} must be a string")
    classes = config.get("class_names", CLASS_NAMES)
    if not isinstance(classes, list) or classes != CLASS_NAMES:
        raise UserError(f"{path}: class_names {classes!r} not supported; expected {CLASS_NAMES}")
    return params


def load_model_dir(model_dir):
    """(head keras model, config dict) from stage 5's directory; UserError when unusable."""
    if not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir} (run cxr-train first)")
    config_path = os.path.join(model_dir, CONFIG_FILE)
    config = read_json(config_path, "model config")
    check_model_config(config, config_path)
    head_path = os.path.join(model_dir, HEAD_FILE)
    if not os.path.isfile(head_path):
        raise UserError(f"trained head not found: {head_path} (run cxr-train first)")
    import keras  # only now: the checks above answer without TensorFlow's start-up

    try:
        head = keras.models.load_model(head_path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(f"cannot load {head_path}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}") from None
    if tuple(head.outputs[0].shape[1:]) != (2,):
        raise UserError(f"{head_path} outputs shape {tuple(head.outputs[0].shape[1:])}; "
                        f"expected 2 logits [normal, abnormal]")
    return head, config


def check_weights(config, weights_id):
    trained = config["feature_params"]["weights"]
    if trained != weights_id:
        raise UserError(f"model was trained on features from {trained}, these weights are "
                        f"{weights_id}")


def check_head_fits(head, conv_base, params):
    expected = tuple(head.inputs[0].shape[1:])
    produced = tuple(conv_base.output.shape[1:])
    if expected != produced:
        raise UserError(
            f"the head expects features of shape {expected} but the conv base (layer "
            f"{params['layer']}, pooling {params['pooling']}, image size {params['image_size']})"
            f" gives {produced}")


# ----------------------------------------------------------------------------- outcomes

def outcome(label, p_abnormal, threshold):
    """TP / FP / FN / TN at the threshold (predicted abnormal iff p > threshold: stage 5's
    argmax of the two logits at 0.5), or 'unlabelled'."""
    if label not in ("normal", "abnormal"):
        return "unlabelled"
    predicted = p_abnormal > threshold
    return ("T" if predicted == (label == "abnormal") else "F") + ("P" if predicted else "N")


# ----------------------------------------------------------------------------- small outputs

def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def write_index(results, rows):
    """index.json (rows as they are) and index.csv (INDEX_COLUMNS); returns the file names."""
    atomic_write_json(os.path.join(results, "index.json"), rows)
    atomic_write_csv(os.path.join(results, "index.csv"), INDEX_COLUMNS, (
        [row["name"], row["label"] or "", f"{row['p_normal']:.6f}", f"{row['p_abnormal']:.6f}",
         row["method"], "" if row["completeness_delta"] is None
         else f"{row['completeness_delta']:.3g}"]
        + [row["files"][k] for k in ("heatmap", "base", "overlay", "panel")] for row in rows))
    return ["index.json", "index.csv"]


def jsonable(value):
    """NaN/inf -> None so the JSON stays standard."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def shout_random_weights():
    bar = "!" * 78
    log(f"{bar}\n!!! RANDOM VGG16 WEIGHTS (--random-weights): an offline smoke run.\n"
        f"!!! Heatmaps from random weights mean nothing clinically; do not read them as\n"
        f"!!! localization. Download the real weights with cxr-download-model.\n{bar}")


def copy_model_reports(model_dir, results):
    """metrics.json, roc.png, training_curve.png of the model -> results/model_<name>, so the
    gallery's links work when the results folder is copied alone. Returns (copied, metrics)."""
    copied, metrics = [], None
    for name in MODEL_REPORTS:
        source = os.path.join(model_dir, name)
        if not os.path.isfile(source):
            continue
        with open(source, "rb") as handle:
            data = handle.read()
        if name == "metrics.json":
            try:
                metrics = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                log(f"note: {source} is not valid JSON; the gallery shows no model metrics")
                continue
        atomic_write_bytes(os.path.join(results, "model_" + name), data)
        copied.append("model_" + name)
    return copied, metrics if isinstance(metrics, dict) else None


# ----------------------------------------------------------------------------- the run

class Explainer:
    """The conv base + head, its target model and the attribution methods."""

    def __init__(self, conv_base, head, postprocess, methods, baseline, image_size,
                 ig_steps=32, occlusion_patch=None):
        self.conv_base = conv_base
        self.head = head
        self.postprocess = postprocess
        self.baseline = baseline
        self.image_size = image_size
        self.full = attribution.build_full_model(conv_base, head)
        self.matrix = attribution.output_matrix(postprocess)
        self.target = attribution.build_target_model(self.full, postprocess)
        self.attributor = attribution.Attributor(self.target, methods, ig_steps, occlusion_patch)

    def inputs(self, images_uint8):
        """uint8 (N, S, S, 3) -> preprocessed x and baselines, both (N, S, S, 3) float32."""
        from learning.vgg import preprocess

        x = preprocess(images_uint8)
        b = attribution.preprocess_float(
            attribution.make_baselines(images_uint8, self.baseline, self.image_size))
        return x, b

    def logits(self, x):
        with attribution.quiet_keras():
            return attribution.forward(self.full, x)

    def explain(self, method, x, b, logits_x, logits_b):
        """-> signed maps (N, S, S), shown maps (N, S, S) >= 0, deltas (N,) or None."""
        f_x = np.asarray(logits_x) @ self.matrix
        f_b = np.asarray(logits_b) @ self.matrix
        maps, deltas, expected = self.attributor.attribute(method, x, b, f_x, f_b)
        signed, shown = attribution.postprocess_maps(maps, self.postprocess)
        return signed, shown, deltas, expected


def _batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def select_examples(names, pattern, limit):
    """--name (shell pattern) then --limit (the first N, in the examples list's order)."""
    if pattern:
        names = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not names:
            raise UserError(f"no example name matches --name {pattern!r}")
    return names[:limit] if limit else names


def load_inputs(args):
    """Step 1: examples, their image files, labels and boxes, the model. -> SimpleNamespace."""
    from learning.vgg import weights_identity

    names = select_examples(load_examples(args.examples), args.name, args.limit)
    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images}")
    check_outputs(inputs=[("examples list", args.examples), ("model folder", args.model)],
                  outputs=[("results folder", args.results, "folder")])
    results_folder.check_results_folder(
        args.results, args.images, [args.model, args.examples, args.descriptions,
                                    None if args.random_weights else args.weights])
    found, missing = [], []
    for name in names:
        path = resolve_image(args.images, name)
        (found.append((name, path)) if path else missing.append(name))
    for name in missing[:10]:
        log(f"{PROG}: missing image {name} (not in {args.images})")
    if len(missing) > 10:
        log(f"{PROG}: ... and {fmt_count(len(missing) - 10)} more missing images")
    if not found:
        raise UserError(f"none of the {fmt_count(len(names))} examples has an image file in "
                        f"{args.images} (first: {names[0]})")
    records, descriptions_path = load_records(args.descriptions, args.images)
    weights_id = weights_identity(args.weights, args.random_weights, args.seed)
    head, config = load_model_dir(args.model)
    check_weights(config, weights_id)
    return SimpleNamespace(found=found, missing=missing, records=records,
                           descriptions_path=descriptions_path, head=head, config=config,
                           params=config["feature_params"], weights_id=weights_id,
                           image_size=int(config["feature_params"]["image_size"]),
                           keys=results_folder.output_keys([name for name, _ in found]))


def build_explainer(args, inputs, methods):
    """Step 2: VGG16's conv base as the head was trained on it, + head -> Explainer."""
    from learning.vgg import build_conv_base

    params = inputs.params
    conv_base = build_conv_base(args.weights, args.random_weights, args.seed, inputs.image_size,
                                params["layer"], params["pooling"])
    check_head_fits(inputs.head, conv_base, params)
    return Explainer(conv_base, inputs.head, args.postprocess, methods, args.baseline,
                     inputs.image_size, args.ig_steps, args.occlusion_patch)


def prepare_results(args):
    """The results folder exists; returns the previous run's manifest (files it may delete)."""
    try:
        os.makedirs(args.results, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create results folder {args.results}: {error.strerror}") from None
    return results_folder.previous_manifest(args.results)


def explain_batch(explainer, methods, items):
    """Probabilities (N, 2) and {method: (signed (N,S,S), shown (N,S,S), deltas (N,) | None)}."""
    x, b = explainer.inputs(np.stack([item["image"] for item in items]))
    logits_x, logits_b = explainer.logits(x), explainer.logits(b)
    per_method = {}
    for method in methods:
        signed, shown, deltas, expected = explainer.explain(method, x, b, logits_x, logits_b)
        if method == "deeplift":
            attribution.check_completeness(deltas, expected, [i["name"] for i in items])
        per_method[method] = (signed, shown, deltas)
    return softmax(logits_x), per_method


def describe_item(args, inputs, item, probs):
    """The per-image entry every later step uses (no pixels: those live in maps.npz)."""
    record = inputs.records.get(item["name"]) or inputs.records.get(item["stem"]) or {}
    width, height = item["original_size"]
    boxes = box_scores.clip_boxes(record.get("boxes") or [], width, height, item["name"])
    size = inputs.image_size
    scored, excluded = box_scores.boxes_for_scoring(
        localization.scale_boxes(boxes, (width, height), (size, size)), size, item["name"])
    key = inputs.keys[item["name"]]
    return {"name": item["name"], "key": key, "path": item["path"],
            "prefix": results_folder.file_prefix(key, probs[0], probs[1]),
            "label": record.get("label"), "p_normal": float(probs[0]),
            "p_abnormal": float(probs[1]), "original_size": [width, height], "boxes": boxes,
            "scored_boxes": scored, "excluded": excluded, "deltas": {}, "scores": {}}


def explain_all(args, inputs, explainer, methods, maps):
    """Step 3: every image in batches -> maps.npz entries, entries, localization scores."""
    rng = np.random.default_rng(args.seed)
    run = SimpleNamespace(counts={"explained": 0, "unreadable": 0}, entries=[], kept=[],
                          image_size=inputs.image_size,
                          samples={m: {v: [] for v in render.VIEWS} for m in methods})
    progress = progress_bar(total=len(inputs.found), unit="img", desc="attributing",
                            dynamic_ncols=True)
    for batch in _batches(inputs.found, args.batch_size):
        items = load_batch(batch, inputs.image_size, run.counts)
        probs, per_method = explain_batch(explainer, methods, items) if items else (None, {})
        for k, item in enumerate(items):
            entry = describe_item(args, inputs, item, probs[k])
            for method in methods:
                signed, shown, deltas = per_method[method]
                maps.add(f"map/{item['name']}/{method}", signed[k].astype(np.float32))
                entry["deltas"][method] = None if deltas is None else float(deltas[k])
                if entry["scored_boxes"]:
                    entry["scores"][method] = localization.image_metrics(shown[k],
                                                                         entry["scored_boxes"])
                if args.scale == "shared":  # a bounded sample per map for one run-wide scale
                    smoothed = render.smooth_map(signed[k], args.smooth)
                    for view, values in run.samples[method].items():
                        values.append(render.scale_sample(render.view_values(smoothed, view),
                                                          rng))
            if args.sanity_check and len(run.kept) < args.sanity_images:
                run.kept.append({"name": item["name"], "image": item["image"],
                                 "signed": {m: per_method[m][0][k] for m in methods}})
            run.entries.append(entry)
            run.counts["explained"] += 1
        progress.update(len(batch))
    progress.close()
    if not run.counts["explained"]:
        raise UserError(f"no example image could be read ({fmt_count(run.counts['unreadable'])} "
                        f"unreadable, {fmt_count(len(inputs.missing))} missing)")
    write_map_index(maps, run.entries, methods, inputs.image_size)
    return run


def write_map_index(maps, entries, methods, image_size):
    """The arrays that describe maps.npz's `map/<name>/<method>` entries (module docstring)."""
    maps.add("names", np.array([e["name"] for e in entries], dtype=str))
    maps.add("methods", np.array(methods, dtype=str))
    maps.add("labels", np.array([e["label"] or "" for e in entries], dtype=str))
    maps.add("p_abnormal", np.array([e["p_abnormal"] for e in entries], np.float64))
    maps.add("p_normal", np.array([e["p_normal"] for e in entries], np.float64))
    maps.add("completeness_delta", np.array(
        [[np.nan if e["deltas"][m] is None else e["deltas"][m] for m in methods]
         for e in entries], np.float64))
    maps.add("image_size", np.array(image_size))


def colour_scales(args, run, methods):
    """{method: {view: vmax}} pooled over the run for --scale shared; None for per-image."""
    if args.scale != "shared":
        return None
    return {method: {view: colour_top(np.concatenate(values))
                     for view, values in run.samples[method].items()} for method in methods}


def colour_top(values):
    """The top of a view's colour scale, or None when the view has nothing to show."""
    return render.robust_max(values) if np.any(np.asarray(values) > 0) else None


def render_all(args, inputs, run, methods, scales, written):
    """Step 4: the pictures of every image and method, from maps.npz (see render_image)."""
    with np.load(os.path.join(args.results, results_folder.MAPS_FILE),
                 allow_pickle=False) as maps:
        for entry in progress_bar(run.entries, unit="img", desc="rendering",
                                  dynamic_ncols=True):
            entry["files"] = results_folder.image_files(entry["prefix"])
            entry["methods"] = {}
            base = render_base(args, inputs, entry, written)
            for method in methods:
                signed = maps[f"map/{entry['name']}/{method}"]
                vmax = (scales or {}).get(method) or per_image_scales(signed, args.smooth)
                entry["methods"][method] = {
                    "files": render_image(args, entry, method, signed, vmax, base, written),
                    "vmax": vmax, "delta": entry["deltas"][method],
                    "score": entry["scores"].get(method)}


def per_image_scales(signed, smooth):
    """{view: vmax} of one map: the 99.5th percentile of each view's (smoothed) values."""
    smoothed = render.smooth_map(signed, smooth)
    return {view: colour_top(render.view_values(smoothed, view)) for view in render.VIEWS}


def render_base(args, inputs, entry, written):
    """The model-size input (the original's __base.png) and the display-size X-ray."""
    from learning.vgg import load_image

    model_size = load_image(entry["path"], inputs.image_size)
    display = max(args.display_size, inputs.image_size)
    xray = load_image(entry["path"], display)
    base = f"{entry['prefix']}__base.png"
    render.save_png(os.path.join(args.results, base), model_size)
    render.save_png(os.path.join(args.results, entry["files"]["xray"]), xray)
    written.update([base, entry["files"]["xray"]])
    return xray


def render_image(args, entry, method, signed, vmax, xray, written):
    """Heatmap, panel, overlay and the three RGBA views of one image and method -> file names."""
    results = args.results
    files = results_folder.file_names(entry["prefix"], method)
    shown = np.maximum(signed, 0)
    display = xray.shape[0]
    scale = display / float(signed.shape[0])
    render.save_png(os.path.join(results, files["heatmap"]),
                    render.colorize(shown, vmax["positive"] or 1.0))
    shown_display = render.smooth_map(render.resize_map(shown, display), args.smooth * scale)
    width, height = entry["original_size"]
    boxes = localization.scale_boxes(entry["boxes"], (width, height), (display, display))
    label = entry["label"] or "unknown"
    title = (f"{entry['name']}   true: {label}   p(abnormal) {entry['p_abnormal']:.2f}   "
             f"p(normal) {entry['p_normal']:.2f}")
    subtitle = f"{METHOD_TITLES[method]}  |  explained: {TARGET_TITLES[args.postprocess]}"
    if method in BASELINE_METHODS:
        subtitle += f"  |  {args.baseline} baseline"
    if entry["deltas"][method] is not None:
        subtitle += f"  |  completeness error {entry['deltas'][method]:.1e}"
    subtitle += f"  |  shown: positive evidence for 'abnormal', {args.scale} colour scale"
    warning = gallery.RANDOM_WARNING if args.random_weights else ""
    unit = (f"{method} (logit units)" if method in attribution.COMPLETE_METHODS + ("occlusion",)
            else method)
    render.save_panel(os.path.join(results, files["panel"]), xray, shown_display,
                      vmax["positive"] or 1.0, title, boxes, subtitle, warning,
                      colorbar_label=unit)
    render.save_overlay(os.path.join(results, files["overlay"]), xray, shown_display,
                        vmax["positive"] or 1.0, boxes)
    smoothed = render.smooth_map(signed, args.smooth)
    for view, (cmap, _) in render.VIEWS.items():
        render.save_png(os.path.join(results, files[view]),
                        render.layer_rgba(render.view_values(smoothed, view), vmax[view] or 1.0,
                                          cmap))
    written.update(files.values())
    return files


def load_batch(batch, image_size, counts):
    """Decode a batch of (name, path); unreadable images are reported, counted and skipped."""
    from learning.vgg import load_image

    items = []
    for name, path in batch:
        try:
            image = load_image(path, image_size)
            size = original_image_size(path)
        except BadImage as error:
            log(f"{PROG}: skipping {name}: {error}")
            counts["unreadable"] += 1
            continue
        items.append({"name": name, "stem": os.path.splitext(name)[0], "path": path,
                      "image": image, "original_size": size})
    return items


def run_sanity(explainer, methods, kept, rng_seed, batch_size):
    """Spearman rho of |signed map| trained vs cascading randomization; report dict."""
    import keras

    correlations = {method: {stage: [] for stage in sanity.STAGES} for method in methods}
    block = "block5" if any(layer.name.startswith("block5_") for layer in
                            explainer.conv_base.layers if isinstance(layer, keras.layers.Conv2D)) \
        else "block4"
    progress = progress_bar(total=len(sanity.STAGES) * len(kept), unit="img",
                            desc="sanity check", dynamic_ncols=True)
    for stage, layers in sanity.cascade(explainer.head, explainer.conv_base, block):
        saved = sanity.randomize_layers(layers, np.random.default_rng(rng_seed))
        try:
            for chunk in _batches(kept, batch_size):
                images = np.stack([entry["image"] for entry in chunk])
                x, b = explainer.inputs(images)
                logits_x, logits_b = explainer.logits(x), explainer.logits(b)
                for method in methods:
                    signed, _, _, _ = explainer.explain(method, x, b, logits_x, logits_b)
                    for entry, random_map in zip(chunk, signed):
                        correlations[method][stage].append(
                            sanity.spearman(np.abs(entry["signed"][method]), np.abs(random_map)))
                progress.update(len(chunk))
        finally:
            sanity.restore(saved)
    progress.close()
    report = sanity.summarize(correlations)
    report["stages"] = {"head": "head kernels re-drawn",
                        "head+block5": f"head and {block} conv kernels re-drawn"}
    report["images"] = [entry["name"] for entry in kept]
    return report

def sanity_step(args, explainer, methods, run, written):
    """--sanity-check: sanity.json and its lines; None when not asked for."""
    if not args.sanity_check:
        return None
    report = run_sanity(explainer, methods, run.kept, args.seed, args.batch_size)
    report["random_weights"] = args.random_weights
    atomic_write_json(os.path.join(args.results, "sanity.json"), jsonable(report))
    written.add("sanity.json")
    for line in sanity.format_report(report):
        log(line)
    return report


def write_pages(args, inputs, methods, run, reports, written):
    """Step 6: localization.json, index.json/.csv, index.html and one page per image."""
    loc, sanity_report = reports
    model_files, model_metrics = copy_model_reports(args.model, args.results)
    written.update(model_files)
    if loc is not None:
        atomic_write_json(os.path.join(args.results, "localization.json"), jsonable(loc))
        written.add("localization.json")
    run.entries.sort(key=lambda e: (-e["p_abnormal"], e["name"]))
    threshold = THRESHOLD
    rows = []
    for entry in run.entries:
        entry["outcome"] = outcome(entry["label"], entry["p_abnormal"], threshold)
        for method in methods:
            rows.append({"name": entry["name"], "label": entry["label"],
                         "p_normal": entry["p_normal"], "p_abnormal": entry["p_abnormal"],
                         "outcome": entry["outcome"], "method": method,
                         "completeness_delta": entry["deltas"][method],
                         "files": entry["methods"][method]["files"]})
    written.update(write_index(args.results, rows))
    header = gallery.Header(
        title="Chest X-ray abnormality evidence", random_weights=args.random_weights,
        meta=[f"{fmt_count(run.counts['explained'])} images, methods: {', '.join(methods)}; "
              f"target: {TARGET_TITLES[args.postprocess]}; baseline: {args.baseline}; "
              f"{args.scale} colour scale; outcome threshold p(abnormal) > {threshold:g}",
              f"weights: {inputs.weights_id}; features: {inputs.params['layer']}/"
              f"{inputs.params['pooling']} at {inputs.image_size} px"],
        model_metrics=model_metrics, localization=loc, sanity=sanity_report,
        links=model_files + [f for f in ("localization.json", "sanity.json") if f in written]
        + ["run.json", "index.csv", results_folder.MAPS_FILE])
    written.update(gallery.write_all(args.results, run.entries, methods, header,
                                     {m: (METHOD_TITLES[m], UNSIGNED_NOTE if m in UNSIGNED_METHODS
                                          else "") for m in methods}))


def write_run_info(args, inputs, methods, run, scales, written):
    """run.json: the parameters, the counts and the manifest of every file written."""
    written.add(results_folder.RUN_FILE)
    info = {"weights": inputs.weights_id, "random_weights": args.random_weights,
            "seed": args.seed, "model": os.path.abspath(args.model),
            "feature_params": inputs.params, "methods": list(methods),
            "postprocess": args.postprocess, "baseline": args.baseline, "scale": args.scale,
            "colour_scales": scales, "smooth": args.smooth, "threshold": THRESHOLD,
            "name_filter": args.name, "limit": args.limit,
            "descriptions": inputs.descriptions_path, "explained": run.counts["explained"],
            "missing": inputs.missing, "unreadable": run.counts["unreadable"],
            "files": sorted(written)}
    atomic_write_json(os.path.join(args.results, results_folder.RUN_FILE), jsonable(info))


def get_args_parser():
    parser = ArgumentParser(
        prog=PROG,
        description="Stage 6: explain the trained model's decisions on example X-rays with "
                    "DeepLIFT (and other attribution methods): heatmaps, overlays, raw maps "
                    "(maps.npz), a gallery with one page per image, and localization metrics "
                    "against expert boxes next to no-model baselines.")
    parser.add_argument("weights", help="VGG16 no-top weights file (stage 1)")
    parser.add_argument("model", help="trained head directory (stage 5)")
    parser.add_argument("examples", help="examples.json: JSON list of image names")
    parser.add_argument("images", help="image folder")
    parser.add_argument("results", help="output folder (a dedicated one: not the image folder)")
    parser.add_argument("--descriptions", default=None,
                        help="images-description.json "
                             "(default: <images>/../images-description.json)")
    parser.add_argument("--method", action="append", default=None,
                        help=f"attribution method(s), comma list or repeated: "
                             f"{', '.join(attribution.METHODS)} (default: grad-cam, the "
                             f"best measured on the cam head; deeplift stays available)")
    parser.add_argument("--postprocess", default="difference", choices=attribution.POSTPROCESS,
                        help="what is explained and shown: difference = attribution of "
                             "logit(abnormal)-logit(normal) (what moves p(abnormal)); original = "
                             "max(attr_abnormal - max(attr_normal, 0), 0); abnormal = "
                             "logit(abnormal) alone")
    parser.add_argument("--baseline", default="black", choices=attribution.BASELINES,
                        help="reference input: black (all-zero image, the original's), blur "
                             "(Gaussian-blurred image), mean (ImageNet mean colour)")
    parser.add_argument("--scale", default="per-image", choices=("per-image", "shared"),
                        help="colour scale of the pictures: per-image (each map to its own "
                             "99.5th percentile) or shared (one scale per method over the run, "
                             "so images can be compared; recorded in run.json)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="explain only the first N examples (after --name)")
    parser.add_argument("--name", default=None, metavar="PATTERN",
                        help="explain only examples whose name matches this shell pattern, "
                             "e.g. '00000150_*'")
    parser.add_argument("--batch-size", type=bounded_int(1024), default=8,
                        help="images per attribution call (1-1024)")
    parser.add_argument("--ig-steps", type=bounded_int(1024), default=32,
                        help="integrated-gradients steps (1-1024)")
    parser.add_argument("--occlusion-patch", type=bounded_int(2048), default=None,
                        help="occlusion patch side in input pixels (default: image size / 8)")
    parser.add_argument("--display-size", type=bounded_int(2048, 64, "size"), default=512,
                        help="pixel size of the X-ray in overlays, panels and pages (64-2048)")
    parser.add_argument("--smooth", type=number(float, 0, 64), default=1.5,
                        help="Gaussian sigma (input pixels, 0-64) for the displayed map in "
                             "overlays, panels and pages; metrics and maps.npz use the raw map; "
                             "0 = none")
    parser.add_argument("--sanity-check", action="store_true",
                        help="model-parameter randomization test (Adebayo et al. 2018)")
    parser.add_argument("--sanity-images", type=bounded_int(1000), default=4,
                        help="images used by --sanity-check (1-1000)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random VGG16 weights (offline smoke runs; maps mean nothing)")
    add_max_pixels_argument(parser)
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of --random-weights, the sanity-check re-draws and the "
                             "bootstrap intervals")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    set_max_pixels(args.max_image_pixels)
    methods = attribution.parse_methods(args.method or ["grad-cam"])

    inputs = load_inputs(args)                                # 1 examples, images, model
    if args.random_weights:
        shout_random_weights()
    explainer = build_explainer(args, inputs, methods)        # 2 conv base + head
    old_files, written = prepare_results(args), {results_folder.MAPS_FILE}
    with results_folder.MapsWriter(os.path.join(args.results, results_folder.MAPS_FILE)) as maps:
        run = explain_all(args, inputs, explainer, methods, maps)  # 3 maps, p, box scores
    scales = colour_scales(args, run, methods)
    render_all(args, inputs, run, methods, scales, written)   # 4 pictures
    loc = box_scores.report(run.entries, methods, inputs.image_size, args.seed, {
        "random_weights": args.random_weights, "postprocess": args.postprocess,
        "baseline": args.baseline})                           # 5 vs no-model baselines
    sanity_report = sanity_step(args, explainer, methods, run, written)
    write_pages(args, inputs, methods, run, (loc, sanity_report), written)  # 6 index, pages
    write_run_info(args, inputs, methods, run, scales, written)
    removed = results_folder.remove_previous(args.results, old_files, written,
                                             [path for _, path in inputs.found])

    excluded = sum(1 for entry in run.entries if entry["excluded"])
    for line in box_scores.summary_lines(loc, args.random_weights, excluded):
        log(line)
    deltas = [e["deltas"]["deeplift"] for e in run.entries if "deeplift" in e["deltas"]]
    completeness = f", DeepLIFT completeness error <= {max(deltas):.1e}" if deltas else ""
    verdicts = "; ".join(
        f"{method} {'BEATS' if block['beats_baselines'] else 'does not beat'} the no-model "
        f"baselines" for method, block in (loc or {}).get("methods", {}).items())
    log(f"{PROG}: {fmt_count(run.counts['explained'])} explained, "
        f"{fmt_count(len(inputs.missing))} missing, {fmt_count(run.counts['unreadable'])} "
        f"unreadable{completeness}; {verdicts + '; ' if verdicts else ''}"
        f"{fmt_count(removed)} files of the previous run removed; {elapsed_since(start)}; "
        f"gallery: {os.path.join(args.results, 'index.html')}")
    if args.random_weights:
        log(f"{PROG}: reminder: RANDOM weights, the heatmaps mean nothing clinically")
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
