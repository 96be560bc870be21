"""Reading stage 5's model folder for stage 6: the network to explain, checked before use.

Used by learning/visualization.py. The explained function is always ONE Keras model taking RGB
pixels (N, S, S, 3) float 0..255 to the 2 logits [normal, abnormal] (2 + K [normal, abnormal,
f_1..f_K] for a model trained with --findings: config.json "findings" names them):

* `classifier.keras` when the folder has it (stage 5 writes it, learning/export.py): VGG16
  preprocessing, the conv base and the head in one file, so a model whose conv blocks were
  fine-tuned (config.json "train_blocks") is explained as it was trained, not rebuilt from the
  ImageNet weights. The weights argument is then not needed.
* otherwise `head.keras` on the conv base rebuilt from the VGG16 weights file as config.json's
  feature_params record it (layer, pooling, image size), stacked exactly as classifier.keras
  (export.build_classifier). A folder whose config.json records "train_blocks" needs
  classifier.keras: its conv base cannot be rebuilt from the weights file.

Checks, each one line (UserError) before any heavy work:
* config.json and metrics.json carry the same "run_id" (a folder from one training run; one
  killed mid-way mixes two). A folder without ids (older versions) is accepted.
* a .keras file is a zip whose members' DECLARED sizes are capped before anything is inflated
  (a 3 MB file whose config.json inflates to 3 GB is refused from its directory); a file that
  is not a zip, or lacks config.json, is "not a Keras model file", not Keras' "File not found".
* the model's input is (S, S, 3) with S = feature_params.image_size and its output 2 logits.
"""
import os
import zipfile
from types import SimpleNamespace

from scraper.cli import UserError, log
from scraper.findings import finding_problem
from scraper.fileio import open_regular, read_json

HEAD_FILE = "head.keras"
CLASSIFIER_FILE = "classifier.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CLASS_NAMES = ["normal", "abnormal"]
# Caps on a .keras archive's declared (inflated) member sizes.
MAX_KERAS_CONFIG_BYTES = 64 << 20     # config.json / metadata.json
MAX_KERAS_MEMBER_BYTES = 8 << 30      # model.weights.h5 (VGG16 entire: ~0.55 GB)
MAX_KERAS_MEMBERS = 64


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
    findings = config.get("findings", [])
    if not isinstance(findings, list) or any(finding_problem([name]) for name in findings) \
            or len(set(findings)) != len(findings):
        raise UserError(f"{path}: findings {str(findings)[:80]} must be a list of distinct "
                        f"names of the finding vocabulary (scraper/findings.py); re-run "
                        f"cxr-train")
    return params


def check_run_ids(config, metrics, model_dir):
    """config.json and metrics.json must come from one training run (same "run_id")."""
    ids = {name: data.get("run_id") for name, data in ((CONFIG_FILE, config),
                                                       (METRICS_FILE, metrics))
           if isinstance(data, dict)}
    if len(ids) == 2 and len({value for value in ids.values()}) == 2:
        shown = ", ".join(f"{name} {str(value)[:40]!r}" for name, value in ids.items())
        raise UserError(f"{model_dir} mixes two training runs ({shown}): a cxr-train run was "
                        f"interrupted while writing it; re-run cxr-train")
    return ids.get(CONFIG_FILE)


def check_keras_archive(path, what):
    """Refuse a .keras file that is not a sane zip, from its directory alone (nothing inflated)."""
    try:
        with open_regular(path, what) as handle, zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path} (run cxr-train first)") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, expected a .keras file") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise UserError(f"{path} is not a Keras model file (a .keras file is a zip archive, "
                        f"this is not one); re-run cxr-train") from None
    names = {member.filename for member in members}
    if "config.json" not in names or len(members) > MAX_KERAS_MEMBERS:
        raise UserError(f"{path} is not a Keras model file (no config.json inside, or "
                        f"{len(members)} members); re-run cxr-train")
    for member in members:
        cap = (MAX_KERAS_CONFIG_BYTES if member.filename.endswith(".json")
               else MAX_KERAS_MEMBER_BYTES)
        if member.file_size > cap:
            raise UserError(f"{path}: its {member.filename} would inflate to "
                            f"{member.file_size:,} bytes (more than the {cap:,} allowed); "
                            f"refused before reading it")


def load_keras(path, what):
    """keras.models.load_model after check_keras_archive; any loader error is one line."""
    check_keras_archive(path, what)
    import keras  # only now: the checks above answer without TensorFlow's start-up

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # a third-party loader on a user's file: any failure is theirs
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot load {path}: {type(error).__name__}: {first}") from None


def read_folder(model_dir):
    """(config, params, metrics or None, run id) of a model folder; UserError when unusable."""
    if not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir} (run cxr-train first)")
    config_path = os.path.join(model_dir, CONFIG_FILE)
    config = read_json(config_path, "model config")
    params = check_model_config(config, config_path)
    metrics = None
    metrics_path = os.path.join(model_dir, METRICS_FILE)
    if os.path.isfile(metrics_path):
        try:
            metrics = read_json(metrics_path, "model metrics")
        except UserError as error:
            log(f"note: {error}; the gallery shows no model metrics")
        metrics = metrics if isinstance(metrics, dict) else None
    run_id = check_run_ids(config, metrics, model_dir)
    return config, params, metrics, run_id


def check_weights(params, weights_id):
    trained = params["weights"]
    if trained != weights_id:
        raise UserError(f"model was trained on features from {trained}, these weights are "
                        f"{weights_id}")


def logit_names(config):
    """The model's outputs, in order: normal, abnormal, then config.json's findings."""
    return CLASS_NAMES + list(config.get("findings") or [])


def check_pixel_model(model, size, path, outputs=CLASS_NAMES):
    """The explained model must take (S, S, 3) pixels and give one logit per name of
    `outputs` (logit_names: 2, or 2 + K for a findings model)."""
    shape_in = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    shape_out = tuple(model.outputs[0].shape[1:]) if len(model.outputs) == 1 else None
    if shape_in != (size, size, 3) or shape_out != (len(outputs),):
        raise UserError(f"{path} maps {shape_in} to {shape_out}; expected ({size}, {size}, 3) "
                        f"pixels (feature_params.image_size) to {len(outputs)} logits "
                        f"[{', '.join(outputs)}]")


def load_model_folder(model_dir, weights=None, random_weights=False, seed=0):
    """The model to explain -> SimpleNamespace(model, params, config, metrics, run_id, source,
    weights_id). `weights`/`random_weights`/`seed` are used only without classifier.keras."""
    config, params, metrics, run_id = read_folder(model_dir)
    size = int(params["image_size"])
    classifier = os.path.join(model_dir, CLASSIFIER_FILE)
    if os.path.lexists(classifier):
        model = load_keras(classifier, "classifier")
        check_pixel_model(model, size, classifier, logit_names(config))
        return SimpleNamespace(model=model, params=params, config=config, metrics=metrics,
                               run_id=run_id, source=CLASSIFIER_FILE,
                               weights_id=params["weights"],
                               findings=list(config.get("findings") or []))
    if config.get("train_blocks"):
        raise UserError(f"{model_dir}: its conv blocks were fine-tuned (train_blocks "
                        f"{config['train_blocks']!r}) but {CLASSIFIER_FILE} is missing; the "
                        f"fine-tuned network cannot be rebuilt from the weights file (re-run "
                        f"cxr-train)")
    from learning.export import build_classifier
    from learning.vgg import build_conv_base, weights_identity

    weights_id = weights_identity(weights, random_weights, seed)
    check_weights(params, weights_id)
    head_path = os.path.join(model_dir, HEAD_FILE)
    head = load_keras(head_path, "trained head")
    names = logit_names(config)
    if tuple(head.outputs[0].shape[1:]) != (len(names),):
        raise UserError(f"{head_path} outputs shape {tuple(head.outputs[0].shape[1:])}; "
                        f"expected {len(names)} logits [{', '.join(names)}]")
    conv_base = build_conv_base(weights, random_weights, seed, size, params["layer"],
                                params["pooling"])
    expected, produced = tuple(head.inputs[0].shape[1:]), tuple(conv_base.output.shape[1:])
    if expected != produced:
        raise UserError(f"the head expects features of shape {expected} but the conv base "
                        f"(layer {params['layer']}, pooling {params['pooling']}, image size "
                        f"{size}) gives {produced}")
    return SimpleNamespace(model=build_classifier(conv_base, head), params=params, config=config,
                           metrics=metrics, run_id=run_id, source=f"{HEAD_FILE} + weights",
                           weights_id=weights_id, findings=names[2:])
