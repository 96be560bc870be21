"""Stage 5 with --train-blocks: VGG16's last conv blocks trained with the cam head, end to end
from the image files (issue 21), through learning/train/finetune.py.

`run(args, config)`, called by cxr-train (learning/fully_connected_layers_training.py):
1. Checks, before any training: the head can sit on block 5 (finetune.finetune_config); the
   outputs (stage 5's check_paths); under the data folder's lock, the model folder is
   replaceable; the split pair (learning/store/splits.load_pair: one split_id, no patient group
   on both sides); the starting weights are those stage 3's features came from (--weights, or
   stage 3's seeded random weights); the image folder (--images, default the `images` folder
   beside the training file, where stage 2 puts them and run_pipeline.sh keeps them). Image
   files that are missing or unreadable are counted and listed, then left out. With
   --findings, the findings are resolved on the training split as on the frozen path
   (learning/train/findings.resolve_findings: one line when the data cannot give them).
2. finetune.fine_tune on the split's "train" subset, early stopping on its "validation" subset
   (with --findings: one sigmoid output per finding besides [normal, abnormal], trained with
   findings.targets / findings_loss as the frozen path; the network gives 2 + K logits),
   with the checkpoint CHECKPOINT (.<model>.cxr-finetune.npz, a hidden sibling of the model
   folder) written after every epoch: the same command resumes a killed run.
3. The test images predicted once, unaugmented; metrics, predictions and figures exactly as the
   frozen-feature path (stage 5's metrics_record and write_outputs); the model folder replaced
   as a whole with classifier.keras (the fine-tuned network itself), config.json (with
   "findings" for a findings model, which stage 6 and cxr-explain read to draw one map per
   finding), metrics.json (per-finding AUROC in test.findings), test_predictions.csv,
   roc.png, training_curve.png (no head.keras: the head alone means nothing without its
   fine-tuned blocks). Then the checkpoint is removed.

Only the split's names, labels, groups and subsets are used: no feature row is read. The
network's input size is stage 3's image size (feature_params.image_size), so stage 6 decodes
the images as they were trained on.
"""
import contextlib
import os

from learning import fully_connected_layers_training as stage5
from learning.export import CLASSIFIER_FILE, NeedsWeights, check_weights, save_keras
from learning.store.splits import load_pair
from learning.train import model_folder
from learning.train.finetune import LAST_LAYER, fine_tune, finetune_config, predict_logits
from learning.train.findings import resolve_findings, targets
from learning.train.loop import NO_VALIDATION
from learning.vgg import PREPROCESSING
from scraper.cli import UserError, fmt_count, log
from scraper.fileio import folder_lock
from scraper.schema import IMAGES_DIR

PROG = "cxr-train"
CHECKPOINT_SUFFIX = ".cxr-finetune.npz"
MAX_WORKERS = 4   # image loader threads
SHOWN = 5         # unreadable images named on the terminal
DESCRIPTION = (
    " Fine-tuned from the images: train_blocks: the VGG16 conv blocks trained with the head "
    "(classifier.keras is the trained network; there is no head.keras); feature_params: the "
    "network's input size and last VGG16 layer (block5_conv3, where the head sits) and its "
    "STARTING weights; fine_tuning: the image folder, conv learning rate and augmentation.")
METRICS_DESCRIPTION = (
    " fine_tuning: the VGG16 blocks trained, wall and CPU seconds per training image per epoch "
    "(medians over epochs), the epoch a killed run resumed after (0: not resumed), and the "
    "images left out because they could not be read.")


def checkpoint_path(model_dir):
    """The fine-tuning checkpoint: a hidden file beside the model folder."""
    parent, name = os.path.split(os.path.abspath(model_dir))
    return os.path.join(parent, "." + name + CHECKPOINT_SUFFIX)


def starting_weights(feature_params, weights_path):
    """(weights file or None, random?, conv seed): the weights stage 3's features came from."""
    try:
        random_weights, conv_seed = check_weights(feature_params, weights_path)
    except NeedsWeights:
        raise UserError(f"--train-blocks starts the conv blocks from the VGG16 weights stage 3 "
                        f"used ({str(feature_params.get('weights'))[:23]}...): pass that file "
                        f"with --weights") from None
    return (None if random_weights else weights_path), random_weights, conv_seed


def images_folder(images, training_path):
    """--images, or the images folder beside the training file."""
    folder = images or os.path.join(os.path.dirname(os.path.abspath(training_path)), IMAGES_DIR)
    if not os.path.isdir(folder):
        raise UserError(f"image folder not found: {folder} (--train-blocks trains from the image "
                        f"files stage 3 read: pass their folder with --images)")
    return os.path.abspath(folder)


def with_images(folder, split, name):
    """`split` (a stage-4 dict) with "paths", keeping only the images that can be read;
    -> (split, [(path, reason)] of those left out)."""
    from learning.store.image_batches import usable_images

    paths = [os.path.join(folder, n) for n in split["names"]]
    keep, failures = usable_images(paths)
    if not keep.any():
        raise UserError(f"none of the {fmt_count(len(paths))} {name} images can be read from "
                        f"{folder} (e.g. {failures[0][0]}: {failures[0][1]}); pass the folder "
                        f"stage 3 read with --images")
    kept = {key: [v for v, k in zip(split[key], keep) if k]
            for key in ("names", "groups", "subset")}
    kept.update(paths=[p for p, k in zip(paths, keep) if k], labels=split["labels"][keep])
    if split.get("finding_labels") is not None:   # (n, 14) rows of the kept images
        kept["finding_labels"] = split["finding_labels"][keep]
    if failures:
        log(f"{PROG}: WARNING: {fmt_count(len(failures))} of {fmt_count(len(paths))} {name} "
            f"images could not be read and are left out:")
        for path, reason in failures[:SHOWN]:
            log(f"{PROG}:   {os.path.basename(path)}: {reason}")
        if len(failures) > SHOWN:
            log(f"{PROG}:   ... and {fmt_count(len(failures) - SHOWN)} more")
    return dict(split, **kept), failures


def load_inputs(args, config):
    """(training, testing, starting weights, left out): the split pair with the paths of the
    images that can be read, and (weights file, random?, conv seed). config["findings"]
    ("all" or names) is resolved to the names the training split carries, as stage 5's
    prepare_inputs does (one line when it cannot)."""
    training, testing = load_pair(args.training, args.testing)
    if config.get("findings"):
        config["findings"] = resolve_findings(config["findings"], training)
    weights = starting_weights(training["feature_params"], args.weights)
    folder = images_folder(args.images, args.training)
    training, failed_train = with_images(folder, training, "training")
    testing, failed_test = with_images(folder, testing, "test")
    training["images"] = folder
    left_out = {"training": len(failed_train), "test": len(failed_test),
                "examples": [os.path.basename(p) for p, _ in (failed_train + failed_test)[:SHOWN]]}
    return training, testing, weights, left_out


def predict_test(model, testing, image_size, batch_size):
    """(N, 2 [+ K]) logits of the test images, unaugmented, in their order."""
    from learning.store.image_batches import ImageBatches

    batches = ImageBatches(testing["paths"], testing["labels"], image_size, batch_size,
                           workers=workers())
    return predict_logits(model, batches)


def workers():
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def train(args, config, training, weights, checkpoint):
    """fine_tune on the split's train/validation images -> (model, info with "warnings")."""
    weights_path, random_weights, conv_seed = weights
    rows = (targets(training["labels"], training, config["findings"])
            if config.get("findings") else None)
    model, info = fine_tune(training["paths"], training["labels"], training["subset"], config,
                            args.train_blocks, int(training["feature_params"]["image_size"]),
                            weights_path, random_weights, args.seed, checkpoint, workers(),
                            conv_seed=conv_seed, targets=rows)
    info["warnings"] = [] if info["n_validation"] else [f"WARNING: {NO_VALIDATION}"]
    return model, info


def config_fields(args, info, training):
    """config.json's fields (after run_id): stage 5's, with the fine-tuned network's own."""
    size = int(training["feature_params"]["image_size"])
    params = {"weights": info["weights"], "image_size": size, "layer": LAST_LAYER,
              "pooling": "none", "preprocessing": PREPROCESSING, "precision": "fp32"}
    # not the feature-grid augmentation of the frozen path (it flips): images are augmented
    # instead, as fine_tuning.augment records
    head = {k: v for k, v in info["config"].items()
            if k not in ("why", "augment", "conv_learning_rate", "grid_augment", "grid_shift")}
    head.update(class_weights_used=info["class_weights"], conv_init=info["weights"])
    record = stage5.config_record(params, head, vars(args), training, CLASSIFIER_FILE,
                                  list(info["config"].get("findings") or ()))
    record.update(description=stage5.CONFIG_DESCRIPTION + DESCRIPTION,
                  train_blocks=info["train_blocks"],
                  fine_tuning={"images": training["images"], "image_size": size,
                               "starting_weights": info["weights"],
                               "stage3_feature_params": training["feature_params"],
                               "conv_learning_rate": info["config"]["conv_learning_rate"],
                               "augment": info["config"]["augment"]})
    return record


def timing(info, left_out):
    """metrics.json's "fine_tuning": what the run cost and how it went."""
    return {"train_blocks": info["train_blocks"],
            "seconds_per_image_epoch": info["seconds_per_image_epoch"],
            "cpu_seconds_per_image_epoch": info["cpu_seconds_per_image_epoch"],
            "resumed_from_epoch": info["resumed_from_epoch"],
            "images_left_out": {"training": left_out["training"], "test": left_out["test"]}}


def run(args, config):
    """Fine-tune, evaluate on the test images and write the model folder; -> metrics dict."""
    if args.conv_learning_rate is not None:
        config = dict(config, conv_learning_rate=args.conv_learning_rate)
    config = finetune_config(config)   # a copy: load_inputs resolves its findings
    checkpoint = checkpoint_path(args.model)
    stage5.check_paths(args.training, args.testing, args.model, args.weights,
                       [("fine-tuning checkpoint", checkpoint, None)])
    with folder_lock(os.path.dirname(os.path.abspath(args.model)), PROG):
        model_folder.check_replaceable(args.model, stage5.MODEL_FILES)
        training, testing, weights, left_out = load_inputs(args, config)
        warnings = stage5.split_warnings(training, testing)
        if left_out["training"] or left_out["test"]:
            warnings.append(f"WARNING: {left_out['training']:,} training and "
                            f"{left_out['test']:,} test images could not be read and were left "
                            f"out (e.g. {left_out['examples'][0]})")
        for line in warnings:
            log(f"{PROG}: {line}")
        model, info = train(args, config, training, weights, checkpoint)
        logits = predict_test(model, testing, int(training["feature_params"]["image_size"]),
                              config["batch_size"])
        metrics = stage5.metrics_record(training, testing, logits, info, warnings,
                                        dict(config, train_blocks=info["train_blocks"]),
                                        args.seed, args.bootstrap)
        metrics["fine_tuning"] = timing(info, left_out)
        metrics["description"] += METRICS_DESCRIPTION

        def networks(staging):
            return {"classifier_bytes": save_keras(model, os.path.join(staging,
                                                                       CLASSIFIER_FILE))}

        def record(sizes):
            return config_fields(args, info, training)

        stage5.write_outputs(args.model, networks, record, metrics, testing, logits, info,
                             list(config.get("findings") or ()))
        with contextlib.suppress(FileNotFoundError):
            os.remove(checkpoint)  # the model folder is in place: nothing left to resume
    return metrics
