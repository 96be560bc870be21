"""Stage 6: where in each X-ray is the abnormality evidence? Grad-CAM, DeepLIFT and friends.

Reads:  <weights>   VGG16 no-top weights from stage 1 (needed only when <model> has no
                    classifier.keras; ignored with --random-weights)
        <model>     stage 5's folder: classifier.keras (pixels -> 2 logits [normal, abnormal],
                    explained as it is, fine-tuned conv blocks included) or else head.keras on
                    the conv base rebuilt from <weights>; config.json (feature_params, run_id),
                    metrics.json (same run_id; the gallery's classifier numbers), roc.png,
                    training_curve.png (learning/explain/model.py)
        <examples>  examples.json from stage 4: a JSON list of image names inside <images>
        <images>    the image folder; labels, expert boxes and provenance come from
                    <images>/../images-description.json (or --descriptions) when present
Writes: <results>/  (a dedicated folder: refused when it is, or lies in, the image folder, or
                    holds an input), as ONE run with one id, built in a staging folder and
                    swapped in at the end (learning/explain/results_folder.py):
          pictures/<xx>/<prefix>__xray.jpg        the X-ray at --display-size (grayscale)
          pictures/<xx>/<prefix>_<method>.png     THE picture of the map (RGBA, same size,
                                                  learning/explain/render.py); every page shows it
          pictures/<xx>/<prefix>.html             the detail page (learning/explain/gallery.py)
          index.html, gallery-data.js, gallery.js, gallery.css   the gallery
          colorbar.png      the colour scale: -top (left) .. 0 .. +top (right)
          maps.npz          the raw signed maps and their index (its "README" member says what
                            each array is: learning/explain/outputs.py)
          index.json, index.csv   one row per image and method
          localization.json (when records have boxes: learning/explain/verdict.py; its
                            "description" says what each field means), sanity.json
                            (--sanity-check), model_metrics.json, model_roc.png,
                            model_training_curve.png (copied from <model>)
          run.json          the parameters, run_id, the manifest ("files", "folders") and the
                            orphans of killed runs that this run removed
        `<prefix>` is the original's `<stem>[p_normal,p_abnormal]`, `<xx>` two hex digits of the
        name's sha1. A re-run deletes only files named in the previous manifest.

Example:
    cxr-visualize data/vgg16.weights.h5 data/model data/examples.json data/images data/results
    cxr-visualize x data/model data/examples.json data/images data/results --random-weights \
        --method deeplift,grad-cam,integrated-gradients --scale shared --limit 20 --sanity-check

Memory: each image's entry is kept on disk (learning/explain/entries.py; ~40 bytes of memory,
not ~3.5 KB) and every output is written from it as a stream (benchmarks/bench_scale.py).

The explained function is RGB pixels -> logits (learning/explain/attribution.py). DeepLIFT must
satisfy completeness (sum of attributions = f(x) - f(baseline)); the stage stops if it does not.
With random weights the maps mean nothing clinically: the terminal and the pages say so. The
localization verdict compares every method with three controls: a centred Gaussian, a
lung-field prior and the mean of the run's own maps (learning/explain/verdict.py).
"""
import os
import time
from types import SimpleNamespace

import numpy as np

from learning.explain import attribution, gallery, model as model_folder, render
from learning.explain import examples, findings, outputs, results_folder, sanity, verdict
from learning.explain.entries import EntryLog, outcome
from learning.explain.localization import image_metrics, scale_boxes
from scraper.cli import (ArgumentParser, UserError, batches, bounded_int, elapsed_since, exit_with,
                         fmt_count, log, number, positive_int, progress_bar, seed)
from scraper.fileio import atomic_write_json, check_outputs, folder_lock
from scraper.images import (BadImage, add_max_pixels_argument, image_size as original_image_size,
                            max_pixels, set_max_pixels)

PROG = "cxr-visualize"
METHOD_TITLES = {"deeplift": "DeepLIFT (Rescale)", "integrated-gradients": "Integrated gradients",
                 "grad-cam": "Grad-CAM", "occlusion": "Occlusion",
                 "saliency": "Saliency (|gradient|)"}
TARGET_TITLES = {"difference": "logit(abnormal) - logit(normal)",
                 "original": "both logits, shown as max(attr_abnormal - max(attr_normal, 0), 0)",
                 "abnormal": "logit(abnormal)"}
UNITS = {"deeplift": "logit units per pixel", "integrated-gradients": "logit units per pixel",
         "occlusion": "logit drop", "grad-cam": "Grad-CAM units (relative)",
         "saliency": "|gradient| (relative)"}
# Predicted abnormal iff p(abnormal) > THRESHOLD: stage 5's argmax of the two logits.
THRESHOLD = 0.5
UNSIGNED_NOTE = "this method's map is never negative (nothing in blue)"


# ----------------------------------------------------------------------------- inputs

def load_inputs(args):
    """Step 1: examples, their image files, labels and boxes. -> SimpleNamespace."""
    listed = examples.load_examples(args.examples)
    names = examples.select_examples(listed, args.name, args.limit)
    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images}")
    check_outputs(inputs=[("examples list", args.examples), ("model folder", args.model)],
                  outputs=[("results folder", args.results, "folder")])
    results_folder.check_results_folder(
        args.results, args.images, [args.model, args.examples, args.descriptions,
                                    None if args.random_weights else args.weights])
    found, missing = [], []
    for name in names:
        path = examples.resolve_image(args.images, name)
        (found.append((name, path)) if path else missing.append(name))
    for name in missing[:10]:
        log(f"{PROG}: missing image {name} (not in {args.images})")
    if len(missing) > 10:
        log(f"{PROG}: ... and {fmt_count(len(missing) - 10)} more missing images")
    if not found:
        raise UserError(f"none of the {fmt_count(len(names))} examples has an image file in "
                        f"{args.images} (first: {names[0]})")
    records, descriptions_path = examples.load_records(args.descriptions, args.images)
    return SimpleNamespace(found=found, missing=missing, records=records, listed=len(listed),
                           descriptions_path=descriptions_path,
                           keys=results_folder.output_keys([name for name, _ in found]))


def load_model(args, inputs, methods):
    """Step 2: the model folder -> inputs.model / .params / .image_size, and the Explainer."""
    from learning.gradients import exact_float32

    loaded = model_folder.load_model_folder(args.model, args.weights, args.random_weights,
                                            args.seed)
    if loaded.source == model_folder.CLASSIFIER_FILE and args.random_weights:
        log(f"note: {args.model} has {model_folder.CLASSIFIER_FILE}: its own conv base is "
            f"explained; --random-weights and the weights argument are not used")
    exact_float32()  # no TF32 on GPUs: completeness would break
    inputs.model, inputs.params = loaded, loaded.params
    inputs.image_size = int(loaded.params["image_size"])
    # the weights the explained network holds (classifier.keras carries its own)
    inputs.random_weights = str(loaded.weights_id).startswith("random:")
    inputs.findings = loaded.findings    # [] unless the model was trained with --findings
    return attribution.Explainer(loaded.model, args.postprocess, methods, args.baseline,
                                 inputs.image_size, args.ig_steps, args.occlusion_patch,
                                 loaded.findings)


# ----------------------------------------------------------------------------- small helpers

def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def shout_random_weights():
    bar = "!" * 78
    log(f"{bar}\n!!! RANDOM VGG16 WEIGHTS: an offline smoke run.\n"
        f"!!! Heatmaps from random weights mean nothing clinically; do not read them as\n"
        f"!!! localization. Download the real weights with cxr-download-model.\n{bar}")


# ----------------------------------------------------------------------------- 3: maps

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


def describe_item(args, inputs, item, probs, methods):
    """The per-image entry every later step uses (no pixels: those live in maps.npz)."""
    record = inputs.records.get(item["name"]) or inputs.records.get(item["stem"]) or {}
    width, height = item["original_size"]
    boxes = verdict.clip_boxes(record.get("boxes") or [], width, height, item["name"])
    size = inputs.image_size
    scored, excluded = verdict.boxes_for_scoring(
        scale_boxes(boxes, (width, height), (size, size)), size, item["name"])
    prefix = results_folder.file_prefix(inputs.keys[item["name"]], probs[0], probs[1])
    files, pictures = results_folder.image_paths(item["name"], prefix, methods)
    label = record.get("label")
    return {"name": item["name"], "label": label, "p_normal": float(probs[0]),
            "p_abnormal": float(probs[1]), "outcome": outcome(label, float(probs[1]), THRESHOLD),
            "original_size": [width, height], "boxes": boxes, "excluded": excluded,
            "source": str(record.get("url") or ""), "view": record.get("view"),
            "modality": (record.get("dicom") or {}).get("modality") or None,
            "report": {key: record.get(key) for key in ("findings", "impression", "items")},
            "files": files, "methods": {m: {"picture": pictures[m]} for m in methods},
            # internal: not for the pages
            "path": item["path"], "scored_boxes": scored, "scores": {}}


def explain_all(args, inputs, explainer, methods, run, renderer, entries):
    """Step 3: every image in batches -> maps.npz entries, `entries` (an EntryLog: on disk),
    box scores, controls; with a per-image scale, its pictures are drawn meanwhile by the
    renderer's workers."""
    state = SimpleNamespace(counts={"explained": 0, "unreadable": 0}, entries=entries, kept=[],
                            rng=np.random.default_rng(args.seed),
                            samples={m: [] for m in methods},
                            mean_maps={m: verdict.MeanMap(inputs.image_size) for m in methods},
                            argmax={m: verdict.ArgmaxGrid(inputs.image_size) for m in methods},
                            finding_maps=(findings.FindingMaps(inputs.findings, methods,
                                                               inputs.image_size)
                                          if getattr(inputs, "findings", None) else None))
    progress = progress_bar(total=len(inputs.found), unit="img", desc="attributing",
                            dynamic_ncols=True)
    with results_folder.MapsWriter(run.path(results_folder.MAPS_FILE)) as maps:
        for batch in batches(inputs.found, args.batch_size):
            items = load_batch(batch, inputs.image_size, state.counts)
            if not items:
                progress.update(len(batch))
                continue
            logits, per_method = explainer.explain_batch(np.stack([i["image"] for i in items]),
                                                         [i["name"] for i in items])
            probs = softmax(logits[:, :2])   # a findings model's further logits: sigmoid
            for k, item in enumerate(items):
                entry = describe_item(args, inputs, item, probs[k], methods)
                signed = {m: per_method[m][0][k].astype(np.float32) for m in methods}
                for method in methods:
                    note_map(args, state, entry, method, signed[method], per_method[method], k)
                    maps.add(f"map/{item['name']}/{method}", signed[method])
                if state.finding_maps is not None:   # one map per finding (explain/findings)
                    signed.update(findings.note_image(args, state, entry, logits[k],
                                                      per_method, k, maps))
                if args.scale == "per-image":
                    renderer.submit(render_task(args, run, len(entries), entry, signed, None))
                if args.sanity_check and len(state.kept) < args.sanity_images:
                    state.kept.append({"name": item["name"], "image": item["image"],
                                       "signed": signed})
                state.entries.append(entry)
                state.counts["explained"] += 1
            progress.update(len(batch))
        progress.close()
        if not state.counts["explained"]:
            raise UserError(f"no example image could be read ("
                            f"{fmt_count(state.counts['unreadable'])} unreadable, "
                            f"{fmt_count(len(inputs.missing))} missing)")
        outputs.write_map_index(maps, state.entries, methods, inputs.image_size, run.run_id)
    return state


def note_map(args, state, entry, method, signed, attributed, k):
    """What the run keeps of one map besides maps.npz: scores, controls, argmax, scale."""
    shown, deltas = attributed[1][k], attributed[2]
    info = entry["methods"][method]
    info["delta"] = None if deltas is None else float(deltas[k])
    info["argmax"] = state.argmax[method].add(shown)
    state.mean_maps[method].add(shown)
    if entry["scored_boxes"]:
        entry["scores"][method] = image_metrics(shown, entry["scored_boxes"])
    info["score"] = entry["scores"].get(method)
    if args.scale == "shared":  # a bounded sample per map for one run-wide top
        state.samples[method].append(render.scale_sample(render.smooth(signed, args.smooth),
                                                         state.rng))


# ----------------------------------------------------------------------------- 4: pictures

def render_task(args, run, index, entry, signed, tops):
    """Entry `index`'s pictures for the renderer; tops None = per-image scale."""
    pictures = {key: info["picture"] for key, info in
                list(entry["methods"].items()) + list(entry.get("finding_maps", {}).items())}
    run.make_folders([entry["files"]["xray"]] + [pictures[key] for key in signed])
    return {"id": index, "path": entry["path"], "xray": run.path(entry["files"]["xray"]),
            "size": args.display_size, "sigma": args.smooth, "max_pixels": max_pixels(),
            "maps": [(key, array, None if tops is None else tops[key], run.path(pictures[key]))
                     for key, array in signed.items()]}


def render_shared(args, run, state, methods, renderer):
    """--scale shared: one top per method over the run, then every picture from maps.npz."""
    tops = {key: render.scale_top(np.concatenate(samples) if samples else np.zeros(1))
            for key, samples in state.samples.items()}   # methods (and finding maps' keys)
    with np.load(run.path(results_folder.MAPS_FILE), allow_pickle=False) as maps:
        for index, entry in progress_bar(state.entries.items(), total=len(state.entries),
                                         unit="img", desc="rendering", dynamic_ncols=True):
            signed = {m: maps[f"map/{entry['name']}/{m}"] for m in methods}
            signed.update(findings.stored_maps(maps, entry))
            renderer.submit(render_task(args, run, index, entry, signed, tops))
    return tops


def attach_scales(args, entries, methods):
    """entry["methods"][m]["scale"] from the tops the renderer used (contract with the pages),
    added to each entry as it is read back from the EntryLog."""
    def decorate(entry, tops):
        shown = [(entry["methods"][m], m, m) for m in methods] + [
            (info, key, info["method"]) for key, info in entry.get("finding_maps", {}).items()]
        for info, key, method in shown:
            info["scale"] = {"top": tops[key], "smooth": args.smooth, "kind": args.scale,
                             "colour_bar": render.COLOUR_BAR_FILE, "unit": UNITS[method]}
    entries.decorate = decorate


# ----------------------------------------------------------------------------- 5-6: reports

def sanity_step(args, inputs, explainer, methods, state, run):
    """--sanity-check on a sample: sanity.json and its lines; None when not asked for."""
    if not args.sanity_check:
        return None
    report = sanity.run_check(explainer, methods, state.kept, args.seed, args.batch_size)
    report.update(run_id=run.run_id, random_weights=inputs.random_weights,
                  sample_note=f"a sample of {len(state.kept):,} of the "
                              f"{state.counts['explained']:,} explained images "
                              f"(the first ones; --sanity-images {args.sanity_images})")
    atomic_write_json(run.path("sanity.json"), outputs.jsonable(report))
    for line in sanity.format_report(report):
        log(line)
    return report


def write_pages(args, inputs, methods, state, reports, run, extra=None):
    """Step 6: localization.json, index, colour bar and the gallery's pages. `extra(state,
    run, header)`: a caller's own files in the run and header lines (cxr-explain)."""
    loc, sanity_report = reports
    if loc is not None:
        atomic_write_json(run.path("localization.json"),
                          outputs.jsonable(dict(loc, run_id=run.run_id)))
    render.write_new(run.path(render.COLOUR_BAR_FILE), render.png_bytes(render.colour_bar()))
    render.write_new(run.path("README.txt"), outputs.RESULTS_README.encode())
    state.entries.sort_by_probability()
    outputs.write_index(run, state.entries, methods)
    outputs.copy_model_reports(args.model, run)
    files = run.staged()[0]
    metrics = inputs.model.metrics
    header = gallery.Header(
        title="Chest X-ray abnormality evidence", random_weights=inputs.random_weights,
        meta=[f"{fmt_count(state.counts['explained'])} images, methods: {', '.join(methods)}; "
              f"target: {TARGET_TITLES[args.postprocess]}; baseline: {args.baseline}; "
              f"{args.scale} colour scale, smoothing sigma {args.smooth:g} px; outcome "
              f"threshold p(abnormal) > {THRESHOLD:g}",
              f"model: {inputs.model.source}; weights: {inputs.model.weights_id}; features: "
              f"{inputs.params['layer']}/{inputs.params['pooling']} at {inputs.image_size} px; "
              f"run {run.run_id}"],
        threshold=THRESHOLD, model_metrics=metrics,
        method_info={m: {"title": METHOD_TITLES[m],
                         "note": UNSIGNED_NOTE if m in ("grad-cam", "saliency") else ""}
                     for m in methods},
        roc="model_roc.png" if "model_roc.png" in files else None,
        selection={"examples": inputs.listed, "limit": args.limit, "name_filter": args.name,
                   "explained": state.counts["explained"],
                   "test_n": ((metrics or {}).get("test") or {}).get("n")},
        localization=loc, sanity=sanity_report,
        argmax={m: state.argmax[m].report() for m in methods},
        links=[f for f in files if f.startswith("model_") or f.endswith((".json", ".csv"))]
        + [results_folder.RUN_FILE, results_folder.MAPS_FILE])
    header.run_id = run.run_id
    if extra is not None:
        extra(state, run, header)
    gallery.write_pages(run.staging, state.entries.public(), methods, header)


def write_run_info(args, inputs, methods, state, run):
    """run.json: the parameters, the counts, the manifest and the orphans removed."""
    files, folders = run.staged()
    info = {"run_id": run.run_id, "previous_run_id": run.previous["run_id"],
            "model": os.path.abspath(args.model), "model_run_id": inputs.model.run_id,
            "explained_model": inputs.model.source, "weights": inputs.model.weights_id,
            "random_weights": inputs.random_weights, "seed": args.seed,
            "feature_params": inputs.params, "methods": list(methods),
            "postprocess": args.postprocess, "baseline": args.baseline, "scale": args.scale,
            "colour_scales": state.shared_tops, "smooth": args.smooth,
            "display_size": args.display_size, "threshold": THRESHOLD,
            "name_filter": args.name, "limit": args.limit,
            "descriptions": inputs.descriptions_path, "explained": state.counts["explained"],
            "missing": inputs.missing, "unreadable": state.counts["unreadable"],
            "files": sorted(files + [results_folder.RUN_FILE]),
            "folders": [name + "/" for name in folders], "orphans_removed": run.orphans}
    atomic_write_json(run.path(results_folder.RUN_FILE), outputs.jsonable(info))


# ----------------------------------------------------------------------------- the command

def get_args_parser():
    parser = ArgumentParser(
        prog=PROG,
        description="Stage 6: explain the trained model's decisions on example X-rays "
                    "(Grad-CAM, DeepLIFT and other attribution methods): one picture per map, "
                    "raw maps (maps.npz), a gallery with one page per image, and localization "
                    "against expert boxes next to three controls.")
    parser.add_argument("weights", help="VGG16 no-top weights file (stage 1); not used when the "
                                        "model folder has classifier.keras")
    parser.add_argument("model", help="trained model folder (stage 5)")
    parser.add_argument("examples", help="examples.json: JSON list of image names")
    parser.add_argument("images", help="image folder")
    parser.add_argument("results", help="output folder (a dedicated one: not the image folder)")
    parser.add_argument("--descriptions", default=None,
                        help="images-description.json "
                             "(default: <images>/../images-description.json)")
    parser.add_argument("--method", action="append", default=None, type=attribution.method_list,
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
                        help="colour scale of the pictures: per-image (each map's |value| to its "
                             "own 99.5th percentile) or shared (one top per method over the "
                             "run, so images can be compared; recorded in run.json)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="explain only the first N examples (after --name)")
    parser.add_argument("--name", default=None, metavar="PATTERN",
                        help="explain only examples whose name matches this shell pattern, "
                             "e.g. '00000150_*'")
    parser.add_argument("--batch-size", type=bounded_int(1024), default=8,
                        help="images per attribution call (1-1024)")
    parser.add_argument("--workers", type=bounded_int(64, 0), default=min(4, os.cpu_count() or 1),
                        help="processes drawing the pictures (0-64; 0 = in this process)")
    parser.add_argument("--ig-steps", type=bounded_int(1024), default=32,
                        help="integrated-gradients steps (1-1024)")
    parser.add_argument("--occlusion-patch", type=bounded_int(2048), default=None,
                        help="occlusion patch side in input pixels (default: image size / 8)")
    parser.add_argument("--display-size", type=bounded_int(2048, 64, "size"), default=512,
                        help="pixel size of the X-ray and map pictures (64-2048)")
    parser.add_argument("--smooth", type=number(float, 0, 64), default=1.5,
                        help="Gaussian sigma (model-input pixels, 0-64) of the map pictures and "
                             "their colour scale; metrics and maps.npz use the raw map; 0 = none")
    parser.add_argument("--sanity-check", action="store_true",
                        help="model-parameter randomization test (Adebayo et al. 2018) on a "
                             "sample of --sanity-images images")
    parser.add_argument("--sanity-images", type=bounded_int(1000), default=8,
                        help="images in the sanity check's sample (1-1000; the first explained)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random VGG16 weights (offline smoke runs; maps mean nothing)")
    add_max_pixels_argument(parser)
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of --random-weights, the sanity-check re-draws and the "
                             "bootstrap intervals")
    return parser


def explain_run(args, inputs, explainer, methods, run, extra=None):
    """Steps 3-6 inside the run's staging folder -> (state, localization report); `extra`:
    see write_pages."""
    entries = EntryLog(run.staging)   # one JSON line per image, not a list in memory
    with render.Renderer(args.workers, entries.set_tops) as renderer:
        state = explain_all(args, inputs, explainer, methods, run, renderer, entries)  # 3 maps
        state.shared_tops = (render_shared(args, run, state, methods, renderer)  # 4 pictures
                             if args.scale == "shared" else None)
    attach_scales(args, entries, methods)
    loc = verdict.report(state.entries, methods, inputs.image_size, args.seed, {
        "random_weights": inputs.random_weights, "postprocess": args.postprocess,
        "baseline": args.baseline}, state.mean_maps, state.argmax)   # 5 verdict, controls
    if loc is not None and state.finding_maps is not None:      # each box vs its finding's map
        loc["findings"] = state.finding_maps.report(args.seed)
    sanity_report = sanity_step(args, inputs, explainer, methods, state, run)
    write_pages(args, inputs, methods, state, (loc, sanity_report), run, extra)  # 6 pages
    write_run_info(args, inputs, methods, state, run)
    return state, loc


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    set_max_pixels(args.max_image_pixels)
    methods = attribution.parse_methods(args.method or [("grad-cam",)])
    inputs = load_inputs(args)                                      # 1 examples, images
    with folder_lock(os.path.dirname(os.path.abspath(args.results)), PROG):
        explainer = load_model(args, inputs, methods)               # 2 the model
        if inputs.random_weights:
            shout_random_weights()
        run = results_folder.Run(args.results, [path for _, path in inputs.found]).start()
        try:
            state, loc = explain_run(args, inputs, explainer, methods, run)
        except BaseException:
            run.abandon()
            raise
        removed = run.swap()                                        # publish the run whole
    excluded = sum(1 for entry in state.entries if entry["excluded"])
    for line in (verdict.summary_lines(loc, inputs.random_weights, excluded)
                 + findings.summary_lines((loc or {}).get("findings"))):
        log(line)
    worst = max((e["methods"]["deeplift"]["delta"] or 0.0 for e in state.entries),
                default=None) if "deeplift" in methods else None
    completeness = "" if worst is None else f", DeepLIFT completeness error <= {worst:.1e}"
    state.entries.close()
    log(f"{PROG}: {fmt_count(state.counts['explained'])} explained, "
        f"{fmt_count(len(inputs.missing))} missing, {fmt_count(state.counts['unreadable'])} "
        f"unreadable{completeness}; {fmt_count(removed)} files of the previous run removed; "
        f"run {run.run_id}; {elapsed_since(start)}; gallery: "
        f"{os.path.join(args.results, 'index.html')}")
    if inputs.random_weights:
        log(f"{PROG}: reminder: RANDOM weights, the heatmaps mean nothing clinically")
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
