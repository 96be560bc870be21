"""Stage 6: where in each X-ray is the abnormality evidence? DeepLIFT heatmaps and friends.

Reads:  <weights>   VGG16 no-top weights from stage 1 (ignored with --random-weights)
        <model>     stage 5's directory: head.keras (feature shape -> 2 logits [normal,
                    abnormal]) and config.json (feature_params: weights, image_size, layer,
                    pooling; class_names)
        <examples>  examples.json from stage 4: a JSON list of image names inside <images>
        <images>    the image folder; labels and expert boxes come from
                    <images>/../images-description.json (or --descriptions) when present
Writes: <results>/  per image and method: `<name>[p_normal,p_abnormal]_<method>.png` (the map,
                    the original's file name, e.g. `..._deeplift.png`),
                    `<name>[p_normal,p_abnormal]__base.png` (the input image),
                    `..._<method>_overlay.png` and `..._<method>_panel.png` (X-ray | map | overlay);
                    index.json + index.csv (one row per image and method), index.html (gallery,
                    most abnormal first), localization.json (when records have boxes),
                    sanity.json (--sanity-check), run.json (the parameters of this run)

Example:
    cxr-visualize data/vgg16.weights.h5 data/model data/examples.json data/images data/results
    cxr-visualize x data/model data/examples.json data/images data/results --random-weights \
        --method deeplift,grad-cam --sanity-check

The explained function is image -> logits: VGG16's conv base (rebuilt with the same layer,
pooling and image size as the features the head was trained on) followed by the trained head.
Attributions are taken w.r.t. the preprocessed input with baselines preprocessed the same way
(see learning/attribution.py for why that equals attributing raw pixels). DeepLIFT must satisfy
completeness (sum of attributions = f(x) - f(baseline)); the stage stops if it does not, since
the heatmaps would then be wrong. With --random-weights the maps mean nothing clinically: the
terminal and the gallery say so loudly.
"""
import csv
import io
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

from learning import attribution, gallery, localization, render, sanity
from scraper.cli import (ArgumentParser, UserError, elapsed_since, exit_with, fmt_count, log,
                         number_type)
from scraper.fileio import atomic_write_json, atomic_write_text, read_json
from scraper.images import BadImage, image_size as original_image_size, is_image_name

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
    from learning.vgg import LAYERS, POOLINGS

    params = config.get("feature_params") if isinstance(config, dict) else None
    needed = ("weights", "image_size", "layer", "pooling")
    if not isinstance(params, dict) or any(key not in params for key in needed):
        raise UserError(f"{path}: feature_params must hold {', '.join(needed)} (re-run cxr-train)")
    size = params["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 2048:
        raise UserError(f"{path}: feature_params.image_size {size!r} must be an integer "
                        f"between 32 and 2048 (re-run cxr-train)")
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
    import keras

    if not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir} (run cxr-train first)")
    config_path = os.path.join(model_dir, CONFIG_FILE)
    config = read_json(config_path, "model config")
    check_model_config(config, config_path)
    head_path = os.path.join(model_dir, HEAD_FILE)
    if not os.path.isfile(head_path):
        raise UserError(f"trained head not found: {head_path} (run cxr-train first)")
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


# ----------------------------------------------------------------------------- outputs

def file_prefix(name, p_normal, p_abnormal):
    """The original's naming: '<stem>[p_normal,p_abnormal]' with {:.2f}."""
    return "{}[{:.2f},{:.2f}]".format(os.path.splitext(name)[0], p_normal, p_abnormal)


def file_names(prefix, method):
    return {"heatmap": f"{prefix}_{method}.png", "base": f"{prefix}__base.png",
            "overlay": f"{prefix}_{method}_overlay.png", "panel": f"{prefix}_{method}_panel.png"}


def remove_stale(results, name, keep):
    """Files of an earlier run for this image (other probabilities in the name) go away."""
    start = os.path.splitext(name)[0] + "["
    for entry in os.scandir(results):
        if entry.name.startswith(start) and entry.name.endswith(".png") and entry.name not in keep:
            os.unlink(entry.path)


def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def write_index(results, rows):
    atomic_write_json(os.path.join(results, "index.json"), rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for row in rows:
        writer.writerow([row["name"], row["label"] or "", f"{row['p_normal']:.6f}",
                         f"{row['p_abnormal']:.6f}", row["method"],
                         "" if row["completeness_delta"] is None
                         else f"{row['completeness_delta']:.3g}"]
                        + [row["files"][k] for k in ("heatmap", "base", "overlay", "panel")])
    atomic_write_text(os.path.join(results, "index.csv"), buffer.getvalue())


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


def load_inputs(args):
    """Step 1: examples, their image files, labels and boxes, the model. -> SimpleNamespace."""
    from learning.vgg import weights_identity

    names = load_examples(args.examples)
    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images}")
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
    head, config = load_model_dir(args.model)
    weights_id = weights_identity(args.weights, args.random_weights, args.seed)
    check_weights(config, weights_id)
    return SimpleNamespace(found=found, missing=missing, records=records,
                           descriptions_path=descriptions_path, head=head, config=config,
                           params=config["feature_params"], weights_id=weights_id,
                           image_size=int(config["feature_params"]["image_size"]))


def build_explainer(args, inputs, methods):
    """Step 2: VGG16's conv base as the head was trained on it, + head -> Explainer."""
    from learning.vgg import build_conv_base

    params = inputs.params
    if "deeplift" in methods and params["pooling"] == "max":
        raise UserError("DeepLIFT cannot explain a head trained on max-pooled features (shap's "
                        "DeepExplainer mishandles global max pooling); retrain with --pooling "
                        "none or avg, or pick another --method")
    conv_base = build_conv_base(args.weights, args.random_weights, args.seed, inputs.image_size,
                                params["layer"], params["pooling"])
    check_head_fits(inputs.head, conv_base, params)
    return Explainer(conv_base, inputs.head, args.postprocess, methods, args.baseline,
                     inputs.image_size, args.ig_steps, args.occlusion_patch)


def explain_batch(explainer, methods, items):
    """Step 3: probabilities (N, 2) and {method: (signed, shown, deltas)} for loaded images."""
    x, b = explainer.inputs(np.stack([item["image"] for item in items]))
    logits_x, logits_b = explainer.logits(x), explainer.logits(b)
    per_method = {}
    for method in methods:
        signed, shown, deltas, expected = explainer.explain(method, x, b, logits_x, logits_b)
        if method == "deeplift":
            attribution.check_completeness(deltas, expected, [i["name"] for i in items])
        per_method[method] = (signed, shown, deltas)
    return softmax(logits_x), per_method


def render_image(args, item, method, prefix, shown, probs, record, delta, random_weights):
    """Write the four pictures of one image and method; returns the file-name dict."""
    from learning.vgg import load_image

    results = args.results
    files = file_names(prefix, method)
    render.save_heatmap(os.path.join(results, files["heatmap"]), shown)
    if not os.path.exists(os.path.join(results, files["base"])):
        render.save_png(os.path.join(results, files["base"]), item["image"])
    display = max(args.display_size, item["image"].shape[0])
    xray = load_image(item["path"], display)
    scale = display / float(item["image"].shape[0])
    shown_display = render.smooth_map(render.resize_map(shown, display), args.smooth * scale)
    vmax = render.robust_max(shown_display)
    boxes = localization.scale_boxes(record.get("boxes") or [], item["original_size"],
                                     (display, display)) if record else []
    label = (record or {}).get("label") or "unknown"
    title = (f"{item['stem']}   true: {label}   p(abnormal) {probs[1]:.2f}   "
             f"p(normal) {probs[0]:.2f}")
    subtitle = f"{METHOD_TITLES[method]}  |  explained: {TARGET_TITLES[args.postprocess]}"
    if method in BASELINE_METHODS:
        subtitle += f"  |  {args.baseline} baseline"
    if delta is not None:
        subtitle += f"  |  completeness error {delta:.1e}"
    subtitle += "  |  shown: positive evidence for 'abnormal'"
    warning = gallery.RANDOM_WARNING if random_weights else ""
    render.save_panel(os.path.join(results, files["panel"]), xray, shown_display, vmax, title,
                      boxes, subtitle, warning, colorbar_label=f"{method} (logit units)"
                      if method in attribution.COMPLETE_METHODS + ("occlusion",) else method)
    render.save_overlay(os.path.join(results, files["overlay"]), xray, shown_display, vmax, boxes)
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
        finally:
            sanity.restore(saved)
    report = sanity.summarize(correlations)
    report["stages"] = {"head": "head kernels re-drawn",
                        "head+block5": f"head and {block} conv kernels re-drawn"}
    report["images"] = [entry["name"] for entry in kept]
    return report

def localization_report(args, methods, boxed, gaussian_scores):
    """Step 5: localization.json (per image and summary, per method and baseline) + log lines."""
    report = {"random_weights": args.random_weights, "postprocess": args.postprocess,
              "baseline": args.baseline, "levels": list(localization.LEVELS),
              "methods": {m: {"summary": localization.summarize(boxed[m]),
                              "per_image": boxed[m]} for m in methods},
              "gaussian_baseline": {"summary": localization.summarize(gaussian_scores),
                                    "per_image": gaussian_scores}}
    atomic_write_json(os.path.join(args.results, "localization.json"), jsonable(report))
    for method in methods:
        log(localization.format_summary(f"localization {method}",
                                        report["methods"][method]["summary"]))
    log(localization.format_summary("localization centred-Gaussian baseline",
                                    report["gaussian_baseline"]["summary"]))
    if args.random_weights:
        log("(random weights: these localization numbers are a smoke test, not a result)")
    return report


def write_index_and_gallery(args, inputs, methods, rows, counts):
    """Step 6: index.json/.csv, index.html and run.json."""
    rows.sort(key=lambda row: (-row["p_abnormal"], row["name"], methods.index(row["method"])))
    write_index(args.results, rows)
    params = inputs.params
    meta = [f"{fmt_count(counts['explained'])} images, methods: {', '.join(methods)}; target: "
            f"{TARGET_TITLES[args.postprocess]}; baseline: {args.baseline}",
            f"weights: {inputs.weights_id}; features: {params['layer']}/{params['pooling']} at "
            f"{inputs.image_size} px"]
    gallery.write(os.path.join(args.results, "index.html"), rows,
                  "Chest X-ray abnormality evidence", meta, args.random_weights)
    run_info = {"weights": inputs.weights_id, "random_weights": args.random_weights,
                "seed": args.seed, "model": os.path.abspath(args.model), "feature_params": params,
                "methods": list(methods), "postprocess": args.postprocess,
                "baseline": args.baseline, "descriptions": inputs.descriptions_path,
                "explained": counts["explained"], "missing": inputs.missing,
                "unreadable": counts["unreadable"]}
    atomic_write_json(os.path.join(args.results, "run.json"), run_info)


def explain_all(args, inputs, explainer, methods):
    """Steps 3-4 over every image, in batches: explain, render, score against boxes."""
    from tqdm import tqdm

    image_size = inputs.image_size
    out = SimpleNamespace(counts={"explained": 0, "unreadable": 0}, rows=[], kept=[],
                          boxed={method: [] for method in methods}, gaussian_scores=[])
    gaussian = localization.gaussian_map((image_size, image_size))
    progress = tqdm(total=len(inputs.found), unit="img", desc="attributing", file=sys.stderr,
                    dynamic_ncols=True)
    for batch in _batches(inputs.found, args.batch_size):
        items = load_batch(batch, image_size, out.counts)
        if items:
            probs, per_method = explain_batch(explainer, methods, items)
        for k, item in enumerate(items):
            record = inputs.records.get(item["name"]) or inputs.records.get(item["stem"])
            prefix = file_prefix(item["name"], probs[k][0], probs[k][1])
            keep = set()
            for method in methods:
                keep.update(file_names(prefix, method).values())
            remove_stale(args.results, item["name"], keep)
            boxes = localization.scale_boxes(record.get("boxes") or [], item["original_size"],
                                             (image_size, image_size)) if record else []
            for method in methods:
                signed, shown, deltas = per_method[method]
                delta = None if deltas is None else float(deltas[k])
                files = render_image(args, item, method, prefix, shown[k], probs[k], record,
                                     delta, args.random_weights)
                out.rows.append({"name": item["name"], "label": (record or {}).get("label"),
                                 "p_normal": float(probs[k][0]),
                                 "p_abnormal": float(probs[k][1]),
                                 "method": method, "completeness_delta": delta, "files": files})
                if boxes:
                    metrics = localization.image_metrics(shown[k], boxes)
                    out.boxed[method].append(dict(metrics, name=item["name"]))
            if boxes:
                out.gaussian_scores.append(dict(localization.image_metrics(gaussian, boxes),
                                                name=item["name"]))
            if args.sanity_check and len(out.kept) < args.sanity_images:
                out.kept.append({"name": item["name"], "image": item["image"],
                                 "signed": {m: per_method[m][0][k] for m in methods}})
            out.counts["explained"] += 1
        progress.update(len(batch))
    progress.close()
    if not out.counts["explained"]:
        raise UserError(f"no example image could be read ({fmt_count(out.counts['unreadable'])} "
                        f"unreadable, {fmt_count(len(inputs.missing))} missing)")
    return out


_count = number_type(int, 1)


def get_args_parser():
    parser = ArgumentParser(
        prog=PROG,
        description="Stage 6: explain the trained model's decisions on example X-rays with "
                    "DeepLIFT (and other attribution methods): heatmaps, overlays, a gallery "
                    "and localization metrics against expert boxes.")
    parser.add_argument("weights", help="VGG16 no-top weights file (stage 1)")
    parser.add_argument("model", help="trained head directory (stage 5)")
    parser.add_argument("examples", help="examples.json: JSON list of image names")
    parser.add_argument("images", help="image folder")
    parser.add_argument("results", help="output folder")
    parser.add_argument("--descriptions", default=None,
                        help="images-description.json (default: <images>/../images-description.json)")
    parser.add_argument("--method", action="append", default=None,
                        help=f"attribution method(s), comma list or repeated: "
                             f"{', '.join(attribution.METHODS)} (default: deeplift)")
    parser.add_argument("--postprocess", default="difference", choices=attribution.POSTPROCESS,
                        help="what is explained and shown: difference = attribution of "
                             "logit(abnormal)-logit(normal) (what moves p(abnormal)); original = "
                             "max(attr_abnormal - max(attr_normal, 0), 0); abnormal = "
                             "logit(abnormal) alone")
    parser.add_argument("--baseline", default="black", choices=attribution.BASELINES,
                        help="reference input: black (all-zero image, the original's), blur "
                             "(Gaussian-blurred image), mean (ImageNet mean colour)")
    parser.add_argument("--batch-size", type=number_type(int, 1, 1024), default=8,
                        help="images per attribution call (1-1024)")
    parser.add_argument("--ig-steps", type=number_type(int, 1, 1024), default=32,
                        help="integrated-gradients steps (1-1024)")
    parser.add_argument("--occlusion-patch", type=number_type(int, 1, 2048), default=None,
                        help="occlusion patch side in input pixels (default: image size / 8)")
    parser.add_argument("--display-size", type=number_type(int, 64, 2048), default=512,
                        help="pixel size of the X-ray in overlays and panels (64-2048)")
    parser.add_argument("--smooth", type=number_type(float, 0, 64), default=1.5,
                        help="Gaussian sigma (input pixels) for the displayed map in overlays "
                             "and panels; metrics use the raw map; 0 = none")
    parser.add_argument("--sanity-check", action="store_true",
                        help="model-parameter randomization test (Adebayo et al. 2018)")
    parser.add_argument("--sanity-images", type=number_type(int, 1, 1000), default=4,
                        help="images used by --sanity-check (1-1000)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random VGG16 weights (offline smoke runs; maps mean nothing)")
    parser.add_argument("--seed", type=number_type(int, 0, 2 ** 32 - 1), default=0,
                        help="seed of --random-weights and of the sanity-check re-draws")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    attribution.silence_tensorflow()
    methods = attribution.parse_methods(args.method)

    inputs = load_inputs(args)                                  # 1 examples, images, model
    if args.random_weights:
        shout_random_weights()
    explainer = build_explainer(args, inputs, methods)          # 2 conv base + head
    try:
        os.makedirs(args.results, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create results folder {args.results}: {error.strerror}") from None
    run = explain_all(args, inputs, explainer, methods)         # 3-4 explain, render, score
    write_index_and_gallery(args, inputs, methods, run.rows, run.counts)  # 6 index, gallery
    if run.gaussian_scores:                                     # 5 localization vs baselines
        localization_report(args, methods, run.boxed, run.gaussian_scores)
    if args.sanity_check:
        report = run_sanity(explainer, methods, run.kept, args.seed, args.batch_size)
        report["random_weights"] = args.random_weights
        atomic_write_json(os.path.join(args.results, "sanity.json"), jsonable(report))
        for line in sanity.format_report(report):
            log(line)

    deeplift_deltas = [r["completeness_delta"] for r in run.rows if r["method"] == "deeplift"]
    completeness = (f", DeepLIFT completeness error <= {max(deeplift_deltas):.1e}"
                    if deeplift_deltas else "")
    log(f"{PROG}: {fmt_count(run.counts['explained'])} explained, "
        f"{fmt_count(len(inputs.missing))} missing, {fmt_count(run.counts['unreadable'])} "
        f"unreadable{completeness}; {elapsed_since(start)}; "
        f"gallery: {os.path.join(args.results, 'index.html')}")
    if args.random_weights:
        log(f"{PROG}: reminder: RANDOM weights, the heatmaps mean nothing clinically")
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
