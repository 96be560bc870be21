"""Apply a trained model to new X-rays: predictions, maps and the gallery (issue 17).

Reads:  <model>     stage 5's folder: classifier.keras (pixels -> 2 logits, run end to end: no
                    features, no stage 3 or 4), config.json, metrics.json (the model's own test
                    numbers), test_predictions.csv (its test calibration); a folder without
                    classifier.keras is run as head.keras on the conv base rebuilt from
                    --weights (learning/explain/model.py, the same checks as cxr-visualize)
        <images>    a folder of PNG / JPEG / DICOM, imported with stage 2's folder rules, PHI
                    masking and limits (scraper/folder.py): found by content, junk skipped
                    and counted, unreadable files listed, DICOM converted with PHI masked
        --labels    optional CSV (stage 2's: image, label normal/abnormal or 0/1, optional
                    group = patient): external validation; with it only the listed images are
                    imported (stage 2's rule)
        --boxes     optional CSV (stage 2's: image, finding, x, y, w, h in original pixels):
                    localization against expert boxes and three controls, as stage 6
Writes: <results>/  a dedicated folder (refused when it is, or lies in, <images> or <model>, or
                    holds an input), as ONE run swapped in whole (learning/explain/
                    results_folder.py): everything cxr-visualize writes (pictures/, maps.npz,
                    index.html + detail pages, index.json/.csv, colorbar.png, run.json,
                    localization.json with --boxes, sanity.json with --sanity-check, model_*)
                    plus
          predictions.csv        one row per image: name, source (the PHI-masked source path),
                                 view, modality, group, label, p_abnormal, predicted (at the
                                 model's threshold p(abnormal) > 0.5), outcome, page; and
                                 p_<finding> per finding of a model trained with --findings
                                 (whose maps are drawn per finding: learning/explain/
                                 findings.py)
          external_metrics.json  (--labels) AUROC with a patient-grouped CI, sensitivity /
                                 specificity, calibration, next to the model's own test set
                                 (learning/explain/external.py; its "description" says what
                                 each field means)
          external_roc.png, calibration.png   (--labels) ROC curve and reliability diagram
          data/                  the private import: images/ (links or 8-bit PNG conversions),
                                 images-description.json, images-failures.json, .id-salt (kept
                                 from run to run, so DICOM names stay the same)

Example:
    cxr-explain data/model ~/new_xrays data/new-results
    cxr-explain data/model ~/external_set data/external --labels ~/external_set/labels.csv \\
        --group-column patient --boxes ~/external_set/boxes.csv --method grad-cam,deeplift
    ./run_pipeline.sh --explain data/model ~/new_xrays data/new-results
"""
import argparse
import os
import time
from types import SimpleNamespace

from learning import visualization
from learning.explain import attribution, external, findings, model as model_folder, outputs
from learning.explain import results_folder, verdict
from learning.explain.results_folder import _inside as inside
from scraper import phi
from scraper.cli import (ArgumentParser, UserError, bounded_int, elapsed_since, exit_with,
                         fmt_count, log, seed)
from scraper.fileio import (atomic_write_csv, atomic_write_json, atomic_write_text,
                            check_outputs, folder_lock)
from scraper.images import set_max_pixels
from scraper.schema import DESCRIPTION_FILE, IMAGES_DIR, load_descriptions
from scraper.scrape import _group_pattern

PROG = "cxr-explain"
DATA = "data"   # the private data folder inside <results>: stage 2's import of <images>
PREDICTIONS_FILE = "predictions.csv"
EXTERNAL_FILE = "external_metrics.json"
PREDICTION_COLUMNS = ("name", "source", "view", "modality", "group", "label", "p_abnormal",
                      "predicted", "outcome", "page")
# cxr-visualize's options that mean the same here (copied from its parser, not redefined)
STAGE6_OPTIONS = ("method", "postprocess", "baseline", "scale", "batch_size", "workers",
                  "ig_steps", "occlusion_patch", "display_size", "smooth", "sanity_check",
                  "sanity_images", "max_image_pixels")
README_ADDITION = """
cxr-explain adds (a trained model applied to new X-rays):
predictions.csv     one row per image: name, source (PHI-masked source path), view, modality,
                    group (patient), label (when --labels gave one), p_abnormal, predicted
                    (p_abnormal > 0.5, the model's threshold: the argmax of its logits),
                    outcome (TP/FP/FN/TN or unlabelled), page; p_<finding> per finding of a
                    model trained with --findings.
external_metrics.json   (--labels) the new images' AUROC (95% CI over patients),
                    sensitivity/specificity, accuracy, calibration (reliability bins, Brier
                    score, ECE), next to the model's own test set; "description" says what
                    each field means.
external_roc.png, calibration.png   (--labels) ROC and reliability diagram.
data/               the images as stage 2 imported them (images/, images-description.json,
                    images-failures.json: files that could not be imported, with reasons).
"""


# ----------------------------------------------------------------------------- checks

def check_places(args):
    """<results> must be a folder of its own: not <images> or <model> or inside them, and
    holding none of the inputs (the run replaces what it wrote there)."""
    check_outputs(inputs=[("model folder", args.model)],
                  outputs=[("results folder", args.results, "folder")])
    if not os.path.isdir(args.images):
        raise UserError(f"image folder not found: {args.images}")
    results_folder.check_results_folder(args.results, args.images,
                                        [args.model, args.labels, args.boxes, args.weights])
    if inside(args.results, args.model):
        raise UserError(f"results folder {args.results} is or lies in the model folder "
                        f"{args.model}: choose a separate folder (the model folder is replaced "
                        f"whole by cxr-train)")


def check_model(args):
    """The model folder and --weights, before any image is imported -> how to build the
    network: (weights path, random weights?, conv seed), as cxr-visualize takes them.

    classifier.keras carries its own weights: --weights, when given, must still be the file
    the model was trained on (same sha256). Without classifier.keras the head runs on the
    conv base rebuilt from --weights (or from the seeded random weights config.json records).
    """
    from learning.vgg import weights_identity

    _, params, _, _ = model_folder.read_folder(args.model)
    recorded = str(params["weights"])
    if args.weights:
        model_folder.check_weights(params, weights_identity(args.weights))
    if os.path.lexists(os.path.join(args.model, model_folder.CLASSIFIER_FILE)):
        return args.weights, False, args.seed
    if recorded.startswith("random:seed="):
        return None, True, int(recorded.split("=", 1)[1])
    if not args.weights:
        raise UserError(f"{args.model} has no {model_folder.CLASSIFIER_FILE}: its head needs "
                        f"the VGG16 weights file it was trained on ({recorded[:23]}...); pass "
                        f"it with --weights")
    return args.weights, False, args.seed


def check_layer(loaded, path):
    """The network must hold the VGG16 layer config.json records (feature_params.layer)."""
    from learning.explain.deeplift import leaf_layers

    layer = loaded.params["layer"]
    if layer not in {leaf.name for leaf in leaf_layers(loaded.model)}:
        raise UserError(f"{path}: config.json records features from {layer}, but the network "
                        f"has no layer of that name (a model folder mixed from two models?); "
                        f"re-run cxr-train")


# ----------------------------------------------------------------------------- 1: import

def keep_salt(results, data_dir):
    """The previous run's .id-salt into the new data folder: DICOM names stay the same."""
    previous = os.path.join(results, DATA)
    if os.path.isfile(os.path.join(previous, phi.SALT_FILE)):
        os.makedirs(data_dir, exist_ok=True)
        atomic_write_text(os.path.join(data_dir, phi.SALT_FILE), phi.data_salt(previous) + "\n")


def import_images(args, run):
    """Stage 2's folder import of <images> into the run's data folder -> its records."""
    from scraper import folder

    data_dir = run.path(DATA)
    keep_salt(args.results, data_dir)
    folder.import_folder(data_dir, args.images, labels_csv=args.labels, boxes_csv=args.boxes,
                         label_column=args.label_column or "label",
                         group_column=args.group_column or "group",
                         group_pattern=args.group_pattern, dicom_group=args.dicom_group)
    return load_descriptions(os.path.join(data_dir, DESCRIPTION_FILE))


def stage6_inputs(args, records, run):
    """What cxr-visualize's steps read (visualization.load_inputs's namespace)."""
    images = os.path.join(run.path(DATA), IMAGES_DIR)
    found = [(r["name"], os.path.join(images, r["name"])) for r in records
             if os.path.isfile(os.path.join(images, r["name"]))]
    return SimpleNamespace(
        found=found, missing=[], records={r["name"]: r for r in records}, listed=len(found),
        descriptions_path=os.path.join(os.path.abspath(args.results), DATA, DESCRIPTION_FILE),
        keys=results_folder.output_keys([name for name, _ in found]))


def stage6_args(args, weights, random_weights, conv_seed):
    """cxr-visualize's arguments for these inputs (no examples list, no --name / --limit)."""
    return argparse.Namespace(**dict(vars(args), weights=weights, random_weights=random_weights,
                                     conv_seed=conv_seed, examples=None, descriptions=None,
                                     name=None, limit=None))


def load_model(a6, inputs, methods):
    """visualization.load_model with the conv base's own seed; + the layer check."""
    explainer = visualization.load_model(argparse.Namespace(**dict(vars(a6), seed=a6.conv_seed)),
                                         inputs, methods)
    check_layer(inputs.model, a6.model)
    return explainer


# ----------------------------------------------------------------------------- 2: outputs

def prediction_rows(entries, records, finding_names=()):
    """predictions.csv's rows, by name (`entries`: stage 6's EntryLog, read from disk);
    predicted at the model's threshold; p_<finding> per finding of a findings model."""
    for e in entries.by_name():
        group = (records.get(e["name"]) or {}).get("report_id") or ""
        predicted = "abnormal" if e["p_abnormal"] > visualization.THRESHOLD else "normal"
        yield [e["name"], e["source"], e["view"] or "", e["modality"] or "", group,
               e["label"] or "", f"{e['p_abnormal']:.6f}", predicted, e["outcome"],
               e["files"]["page"]] + [f"{e['findings'][name]:.6f}" for name in finding_names]


def external_validation(args, inputs, entries, run):
    """--labels: external_metrics.json, external_roc.png, calibration.png -> the report, or
    None when no image has a label."""
    from learning.train.plots import plot_roc

    arrays = external.labelled_arrays(entries, inputs.records)
    if arrays is None:
        log(f"{PROG}: warning: none of the imported images has a label: no external "
            f"validation (check --labels / --label-column)")
        return None
    labels, p_normal, p_abnormal, groups = arrays
    report = {"n_images": len(entries), "unlabelled": len(entries) - len(labels),
              "external": external.evaluate_set(labels, p_normal, p_abnormal, groups,
                                                args.seed, args.bootstrap),
              "model_test": external.model_test_block(inputs.model.metrics, args.model,
                                                      args.seed, args.bootstrap)}
    atomic_write_json(run.path(EXTERNAL_FILE), outputs.jsonable(dict(
        report, run_id=run.run_id, model_run_id=inputs.model.run_id,
        random_weights=inputs.random_weights, threshold=visualization.THRESHOLD,
        description=external.DESCRIPTION)))
    plot_roc(labels, external.pseudo_logits(p_normal, p_abnormal), report["external"],
             run.path("external_roc.png"), title="ROC on the new images")
    external.plot_calibration(report, run.path("calibration.png"))
    return report


def extra_outputs(args, inputs, done):
    """The hook cxr-visualize's pages call (visualization.write_pages `extra`): this
    command's files in the run, its header lines; the report goes into `done`."""
    def extra(state, run, header):
        atomic_write_csv(run.path(PREDICTIONS_FILE), PREDICTION_COLUMNS +
                         tuple(f"p_{name}" for name in inputs.findings),
                         prediction_rows(state.entries, inputs.records, inputs.findings))
        links = [PREDICTIONS_FILE]
        done["report"] = (external_validation(args, inputs, state.entries, run)
                          if args.labels else None)
        if done["report"] is not None:
            header.meta.insert(0, external.summary_line(done["report"]))
            links += [EXTERNAL_FILE, "external_roc.png", "calibration.png"]
        readme = run.path("README.txt")
        with open(readme, encoding="utf-8") as handle:
            atomic_write_text(readme, handle.read() + README_ADDITION)
        header.title = "Chest X-ray abnormality evidence: a trained model on new X-rays"
        header.links[:0] = links
    return extra


# ----------------------------------------------------------------------------- the command

def get_args_parser():
    parser = ArgumentParser(
        prog=PROG,
        description="Apply a trained model (stage 5's folder) to a folder of new X-rays "
                    "(PNG/JPEG/DICOM, imported as stage 2 does): predictions.csv, the maps "
                    "and the gallery of stage 6; with --labels external-validation metrics "
                    "next to the model's own test set, with --boxes localization.")
    parser.add_argument("model", help="trained model folder (cxr-train's output)")
    parser.add_argument("images", help="folder of new X-rays (PNG, JPEG, DICOM; sub-folders "
                                       "included)")
    parser.add_argument("results", help="output folder (a dedicated one: not the image or "
                                        "model folder)")
    group = parser.add_argument_group("labels and boxes (stage 2's CSVs)")
    group.add_argument("--labels", default=None,
                       help="CSV with columns image, label (normal/abnormal or 0/1), "
                            "optional group (patient): external validation; only the listed "
                            "images are imported")
    group.add_argument("--label-column", default=None, help="label column in --labels "
                                                            "(default: label)")
    group.add_argument("--group-column", default=None,
                       help="patient column in --labels (default: group): the AUROC's CI "
                            "resamples patients")
    group.add_argument("--group-pattern", type=_group_pattern, default=None, metavar="REGEX",
                       help="the patient is the first capture group of REGEX in each path, "
                            "e.g. 'person(\\d+)_' (where --labels gives no group)")
    group.add_argument("--dicom-group", choices=("patient", "study"), default="patient",
                       help="group DICOM files by PatientID or StudyInstanceUID (salted hashes)")
    group.add_argument("--boxes", default=None,
                       help="CSV of expert boxes: image, finding, x, y, w, h (original pixels)")
    group = parser.add_argument_group("the model")
    group.add_argument("--weights", default=None, metavar="FILE",
                       help="the VGG16 weights file the model was trained on: checked against "
                            "config.json (sha256) when given; needed only when the model folder "
                            "has no classifier.keras")
    group.add_argument("--bootstrap", type=bounded_int(100_000, 10), default=1000,
                       help="bootstrap resamples (of patients) for the CIs (10-100,000)")
    group.add_argument("--seed", type=seed, default=0,
                       help="seed of the bootstrap intervals and the sanity-check re-draws")
    group = parser.add_argument_group("maps and pictures (as cxr-visualize)")
    for action in visualization.get_args_parser()._actions:  # argparse: no public listing
        if action.dest in STAGE6_OPTIONS:
            group._add_action(action)
    return parser


def check_argv(argv):
    """Parse and check flag combinations: the arguments, or UserError (one line)."""
    args = get_args_parser().parse_args(argv)
    if not args.labels and (args.label_column or args.group_column):
        raise UserError("--label-column and --group-column need --labels CSV", exit_code=2)
    return args


def run_all(args, a6, inputs, explainer, methods, done):
    """Under the results folder's lock: the import, the maps, the swap."""
    run = results_folder.Run(args.results).start()
    try:
        records = import_images(args, run)                           # stage 2's import
        vars(inputs).update(vars(stage6_inputs(args, records, run)))
        done["state"], done["loc"] = visualization.explain_run(        # stage 6's steps
            a6, inputs, explainer, methods, run, extra_outputs(args, inputs, done))
    except BaseException:
        run.abandon()
        raise
    done["removed"], done["run"], done["inputs"] = run.swap(), run, inputs


def main(argv=None):
    args = check_argv(argv)
    start = time.monotonic()
    set_max_pixels(args.max_image_pixels)
    methods = attribution.parse_methods(args.method or [("grad-cam",)])
    check_places(args)
    a6 = stage6_args(args, *check_model(args))                       # before any import
    inputs = SimpleNamespace()
    explainer = load_model(a6, inputs, methods)                      # the model, checked
    if inputs.random_weights:
        visualization.shout_random_weights()
    done = {}
    with folder_lock(args.results, PROG):
        run_all(args, a6, inputs, explainer, methods, done)
    report_lines(args, methods, done, start)
    return 0


def report_lines(args, methods, done, start):
    """The terminal summary: predictions, external validation, localization verdict."""
    state, inputs = done["state"], done["inputs"]
    abnormal = sum(e["p_abnormal"] > visualization.THRESHOLD for e in state.entries)
    if done.get("report"):
        log(f"{PROG}: external validation (p(abnormal) > {visualization.THRESHOLD:g}):")
        for line in external.format_table(done["report"]):
            log(line)
    excluded = sum(1 for entry in state.entries if entry["excluded"])
    for line in (verdict.summary_lines(done["loc"], inputs.random_weights, excluded)
                 + findings.summary_lines((done["loc"] or {}).get("findings"))):
        log(line)
    log(f"{PROG}: {fmt_count(state.counts['explained'])} images explained "
        f"({', '.join(methods)}), {fmt_count(abnormal)} predicted abnormal at p(abnormal) > "
        f"{visualization.THRESHOLD:g}, {fmt_count(state.counts['unreadable'])} unreadable; "
        f"run {done['run'].run_id}; {elapsed_since(start)}; predictions: "
        f"{os.path.join(args.results, PREDICTIONS_FILE)}; gallery: "
        f"{os.path.join(args.results, 'index.html')}")
    if inputs.random_weights:
        log(f"{PROG}: reminder: RANDOM weights, predictions and heatmaps mean nothing")


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
