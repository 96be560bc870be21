"""Stage 5: train the normal/abnormal head on the conv features and measure it on the test set.

Reads:  training.pickle and testing.pickle from stage 4 ("cxr-examples/2": references into the
        features index of stage 3, whose rows are streamed from its shards in batches; or
        older "cxr-examples/1" files holding the rows themselves).
Writes: the <model> folder, replaced AS A WHOLE (learning/train/model_folder.py: written as a
        hidden sibling folder, then swapped in, so a kill leaves the old complete folder or the
        new complete one), under the data folder's lock (.cxr-lock):
        head.keras         the head (features (N, h, w, C) -> 2 logits [normal, abnormal], no
                           softmax), built-in layers only: keras.models.load_model needs
                           nothing else; saved without optimizer state
        classifier.keras   the same classifier end to end: RGB pixels (N, S, S, 3) -> the 2
                           logits, VGG16 preprocessing and conv base included (learning/export.py);
                           needs --weights unless the features came from random weights
        config.json        {"run_id", "description", "feature_params", "class_names", "head",
                           "args", "split_params", "split_id", "output", "end_to_end"}
        metrics.json       {"run_id", "description", "vgg16_weights", "test": scikit-learn's
                           per-class table, accuracy, ROC AUC + grouped bootstrap 95% CI, PR AUC,
                           sensitivity/specificity at the threshold used, confusion matrix,
                           majority baseline; sizes, epochs, history, warnings, files}
                           (every field is explained in its "description")
        test_predictions.csv  one row per test image: name, group, label, p_abnormal, predicted
                           (+ p_<finding> per finding with --findings)
        roc.png (the operating point marked), training_curve.png

Every pass over the features streams: one checking pass (shard checksums, finite values in
range, the input-scaling statistics of the training subset), training batches from a
keras.utils.PyDataset, validation and test predictions batch by batch, so memory does not grow
with the number of images. Early stopping watches the "validation" subset of training.pickle,
never the test set; the test set is touched once, after training, for the reported metrics.
The pair of files must come from one run of stage 4 (one split_id) and share no patient group.

With --findings all|A,B,... the head has one sigmoid output per finding besides the two softmax
logits (learning/train/findings.py): head.keras and classifier.keras give 2 + K logits
[normal, abnormal, f_1..f_K], config.json lists "findings", metrics.json's test block has
"findings" (AUROC with CI per finding). A finding no training image carries, or --findings on a
split without finding labels, is one line before any work.

With --train-blocks 5 (or 4,5 ...) the stage trains from the IMAGES instead of the features
(learning/train/from_images.py): VGG16's last conv blocks together with the cam head, end to end,
on the image files of the same split (train / validation / test, patients kept apart as stage 4
split them). The model folder then holds classifier.keras (the fine-tuned network itself, which
stage 6 and cxr-explain explain as it is), config.json ("train_blocks", "fine_tuning", and
feature_params naming the network's last VGG16 layer, block5_conv3, and the starting weights),
metrics.json, test_predictions.csv, roc.png, training_curve.png, and no head.keras. A checkpoint
written after every epoch, .<model>.cxr-finetune.npz beside the model folder, lets the same
command resume a killed run; it is removed once the new folder is in place. With --findings
too, the fine-tuned network gives the same 2 + K logits, trained with the same findings loss
(config.json "findings", metrics.json test.findings), so stage 6 draws one map per finding.

Example:
    cxr-train data/training.pickle data/testing.pickle data/model --weights data/vgg16.weights.h5
    cxr-train data/training.pickle data/testing.pickle data/model-findings --findings all
    cxr-train data/training.pickle data/testing.pickle data/model-original --head original
    cxr-train data/training.pickle data/testing.pickle data/model --weights data/vgg16.weights.h5 \
        --train-blocks 5
    cxr-train data/training.pickle data/testing.pickle data/model --weights data/vgg16.weights.h5 \
        --train-blocks 5 --findings all
"""
import os
import time
import uuid

import numpy as np

from learning.export import (CLASSIFIER_FILE, NeedsWeights, check_weights, export_classifier,
                             save_keras)
from learning.head import INPUT_SCALINGS, PRESETS, block5_weights, needs_conv_weights
from learning.metrics import (CLASS_NAMES, evaluate, evaluate_findings, format_findings,
                              format_report, small_set_warnings)
from learning.store.dataset import predict_logits, scan_sources
from learning.store.splits import load_pair, load_split
from learning.train import model_folder
from learning.train.finetune import BLOCKS_HELP, train_blocks_type
from learning.train.findings import resolve_findings, sigmoid, targets
from learning.train.loop import class_weights, train_head  # noqa: F401  (benchmarks import)
from learning.train.plots import plot_roc, plot_training_curve
from scraper import cli as flags
from scraper.cli import ArgumentParser, UserError, elapsed_since, exit_with, fmt_count, log
from scraper.fileio import atomic_write_csv, atomic_write_json, check_outputs, folder_lock
from scraper.findings import findings_type

PROG = "cxr-train"
HEAD_FILE = "head.keras"
PREDICTIONS_FILE = "test_predictions.csv"
MODEL_FILES = (HEAD_FILE, CLASSIFIER_FILE, "config.json", "metrics.json", PREDICTIONS_FILE,
               "roc.png", "training_curve.png")
load_examples = load_split   # the stage-4 file reader (benchmarks call it by this name)
# Range-checked flag types: one line naming the allowed range, at parse time.
EPOCHS = flags.bounded_int(10_000, what="number of epochs")
BATCH_SIZE = flags.bounded_int(65_536, what="batch size")
LEARNING_RATE = flags.number(float, 0, 10.0, strict_minimum=True, what="learning rate")
PATIENCE = flags.bounded_int(10_000, 0, what="patience")
BOOTSTRAP = flags.bounded_int(100_000, what="number of resamples")
CONFIG_DESCRIPTION = (
    "How stage 5 (cxr-train) made this model. run_id: identifies this run (metrics.json "
    "carries the same); feature_params: the stage-3 features it was trained on; class_names: "
    "logit order; head: the preset and every training choice; args: the command line; "
    "split_params/split_id: the stage-4 split; output: what head.keras computes; end_to_end: "
    "the image -> logits file, if written.")
METRICS_DESCRIPTION = (
    "Test metrics of stage 5 (cxr-train). run_id: same as config.json's; vgg16_weights: the "
    "weights the features came from, and whether they were RANDOM (then nothing here means "
    "anything clinically); test: n, per-class counts, accuracy, roc_auc with a 95% CI from a "
    "bootstrap over patient groups, pr_auc next to its no-skill baseline, operating_point "
    "(sensitivity/specificity at p(abnormal) > 0.5 with Wilson CIs), classification "
    "(scikit-learn's report), confusion_matrix (rows true, columns predicted), "
    "baseline_majority; warnings: tiny sets, no validation; n_train/n_validation/n_test; "
    "epochs_run, best_epoch (the kept one), early_stopping, history (loss, val_loss, val_auroc "
    "per epoch); head, seed; files: sizes in bytes.")


def dropout_type(text):
    """A float in [0, 1): the dropout rate."""
    value = flags.number(float, 0, what="dropout")(text)
    if value >= 1:
        import argparse

        raise argparse.ArgumentTypeError(f"invalid dropout {text!r}: must be in [0, 1)")
    return value


def resolve_config(args):
    """The preset of --head with the flags given on the command line taking precedence."""
    config = dict(PRESETS[args.head])
    config["head"] = args.head
    for key in ("epochs", "batch_size", "learning_rate", "dropout", "patience"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    if config["patience"] is not None and config["patience"] <= 0:
        config["patience"] = None
    if getattr(args, "findings", None):   # "all" or names; checked on the data (prepare_inputs)
        config["findings"] = args.findings
    assert config["input_scaling"] in INPUT_SCALINGS
    return config


def resolve_conv_weights(config, feature_params, weights_path=None):
    """Block5 init for a "block5" head, from the same VGG16 weights as stage 3's features.

    Features from random weights ("random:seed=N") get the same seeded random block5; real
    features need `weights_path` (--weights) whose hash matches the features'. None for heads
    that start from scratch.
    """
    if not needs_conv_weights(config):
        return None
    params = feature_params or {}
    if params.get("layer") != "block4_pool" or params.get("pooling") != "none":
        raise UserError(f"the {config['head']!r} head fine-tunes block5 on block4_pool feature "
                        f"grids; these features are layer {params.get('layer')!r}, pooling "
                        f"{params.get('pooling')!r} (run stage 3 with --layer block4_pool)")
    try:  # the one check that --weights is the file the features came from (export.py)
        random_weights, seed = check_weights(params, weights_path)
    except NeedsWeights:
        raise UserError(f"the {config['head']!r} head starts block5 from the VGG16 weights the "
                        f"features came from ({params.get('weights')}); pass them with "
                        f"--weights PATH") from None
    return block5_weights(weights_path, random_weights, seed)


def save_model(model, directory):
    """Save head.keras atomically and without optimizer state (Adam's moments are two thirds
    of a file nobody resumes training from); returns its size in bytes."""
    return save_keras(model, os.path.join(directory, HEAD_FILE))


def export_end_to_end(model, model_dir, feature_params, weights_path):
    """classifier.keras next to the head; returns its size, or None with a warning when it
    cannot be built (the head and metrics are the stage's product; this is an extra)."""
    try:
        check_weights(feature_params, weights_path)
        log(f"cxr-train: writing {CLASSIFIER_FILE} (VGG16 conv base + head: image -> logits)")
        return export_classifier(os.path.join(model_dir, CLASSIFIER_FILE), model,
                                 feature_params or {}, weights_path)
    except NeedsWeights as error:
        log(f"cxr-train: note: no {CLASSIFIER_FILE} (image -> logits): {error}")
    except (UserError, ValueError, KeyError) as error:
        log(f"cxr-train: WARNING: no {CLASSIFIER_FILE} written: {error}")
    return None


def write_predictions(path, testing, logits, findings=()):
    """One CSV row per test image: name, group, label, p_abnormal (softmax of the first two
    logits), predicted, and p_<finding> (sigmoid) per finding of a --findings model."""
    logits = np.asarray(logits, dtype=np.float64)
    p_abnormal = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax of 2 logits
    p_findings = sigmoid(logits[:, 2:])
    atomic_write_csv(path, ["name", "group", "label", "p_abnormal", "predicted"] +
                     [f"p_{name}" for name in findings], (
        [name, group, CLASS_NAMES[int(label)], f"{p:.6f}", CLASS_NAMES[int(np.argmax(row[:2]))]]
        + [f"{value:.6f}" for value in extra]
        for name, group, label, p, row, extra in zip(testing["names"], testing["groups"],
                                                     testing["labels"], p_abnormal, logits,
                                                     p_findings)))


def weights_note(feature_params):
    """metrics.json's "vgg16_weights": where the features' VGG16 weights came from."""
    identity = str((feature_params or {}).get("weights", "unknown"))
    random = identity.startswith("random:")
    return {"identity": identity, "random": random,
            "note": ("RANDOM VGG16 weights: a smoke test, these numbers mean nothing about "
                     "X-rays" if random else "the VGG16 weights file with this sha256")}


def prepare_inputs(training_path, testing_path, config, weights_path):
    """Load and check both split files, the weights, and every feature row (one streamed
    pass); returns (training, testing, conv_weights, warnings)."""
    training, testing = load_pair(training_path, testing_path)
    if config.get("findings"):   # one line before any work when the data cannot give them
        config["findings"] = resolve_findings(config["findings"], training)
    if weights_path:
        check_weights(training.get("feature_params"), weights_path)  # fail before training
    conv_weights = resolve_conv_weights(config, training.get("feature_params"), weights_path)
    subset = np.asarray(training["subset"], dtype=object)
    class_weights(training["labels"][subset == "train"])    # refuse a one-class train subset
    training["scaling_stats"] = scan_sources(
        [training["source"], testing["source"]], [training["names"], testing["names"]],
        (0, subset == "train"), config["input_scaling"])
    training["features"] = training["source"]
    return training, testing, conv_weights, split_warnings(training, testing)


def split_warnings(training, testing):
    """Loud lines for a tiny test or validation set (metrics.small_set_warnings)."""
    subset = np.asarray(training["subset"], dtype=object)
    warnings = small_set_warnings("test", testing["labels"])
    if (subset == "validation").any():
        warnings += small_set_warnings("validation", training["labels"][subset == "validation"])
    return warnings


def write_model_folder(model_dir, model, info, metrics, config, training, testing, logits,
                       weights_path, conv_weights, args):
    """Every output file, into a new folder that then replaces `model_dir` as a whole."""
    feature_params = training.get("feature_params")
    head_config = {k: v for k, v in config.items() if k != "why"}
    head_config["class_weights_used"] = info["class_weights"]
    if conv_weights is not None:  # where block5 started from (the features' weights)
        head_config["conv_init"] = (feature_params or {}).get("weights")

    def networks(staging):
        return {"head_bytes": save_model(model, staging),
                "classifier_bytes": export_end_to_end(model, staging, feature_params,
                                                      weights_path)}

    findings = list(config.get("findings") or ())

    def record(sizes):
        return config_record(feature_params, head_config, args, training,
                             CLASSIFIER_FILE if sizes["classifier_bytes"] else None, findings)

    write_outputs(model_dir, networks, record, metrics, testing, logits, info, findings)


def config_record(feature_params, head_config, args, training, end_to_end, findings=()):
    """config.json's fields after run_id and description."""
    return {"feature_params": feature_params, "class_names": list(CLASS_NAMES),
            "head": head_config, "args": args or {},
            "split_params": training.get("split_params"), "split_id": training.get("split_id"),
            "output": ("2 pre-softmax logits [normal, abnormal]" if not findings else
                       f"{2 + len(findings)} logits [normal, abnormal, {', '.join(findings)}]: "
                       f"the first two pre-softmax, then one pre-sigmoid logit per finding"),
            **({"findings": list(findings)} if findings else {}),
            "end_to_end": end_to_end}


def write_outputs(model_dir, networks, record, metrics, testing, logits, info, findings=()):
    """The model folder, written into a new folder that then replaces `model_dir` as a whole:
    networks(folder) saves the network files and returns their sizes; record(sizes) gives
    config.json's fields (a "description" key replaces the default one); then metrics.json,
    test_predictions.csv (p_<finding> columns for `findings`), roc.png, training_curve.png."""
    run_id = uuid.uuid4().hex
    with model_folder.replacing(model_dir, MODEL_FILES) as staging:
        sizes = networks(staging)
        metrics.update(run_id=run_id, files=sizes)
        write_predictions(os.path.join(staging, PREDICTIONS_FILE), testing, logits, findings)
        atomic_write_json(os.path.join(staging, "config.json"), {
            "run_id": run_id, "description": CONFIG_DESCRIPTION, **record(sizes)})
        atomic_write_json(os.path.join(staging, "metrics.json"), metrics)
        plot_roc(testing["labels"], logits, metrics["test"], os.path.join(staging, "roc.png"))
        plot_training_curve(info, os.path.join(staging, "training_curve.png"))


def metrics_record(training, testing, logits, info, warnings, config, seed, n_resamples):
    """metrics.json's dict (run_id and files filled in when written) from the test logits;
    UserError when training diverged (non-finite outputs)."""
    if not np.isfinite(logits).all():
        raise UserError(f"the trained {'network' if config.get('train_blocks') else 'head'} "
                        f"gives non-finite outputs on "
                        f"{int((~np.isfinite(logits).all(axis=1)).sum()):,} test images "
                        f"(training diverged: last loss {info['history']['loss'][-1]}); "
                        f"try a lower --learning-rate")
    subset = np.asarray(training["subset"], dtype=object)
    test = evaluate(testing["labels"], logits[:, :2], testing["groups"],
                    training["labels"][subset == "train"], n_resamples, seed)
    if config.get("findings"):   # per finding: AUROC with CI, operating point
        test["findings"] = evaluate_findings(
            targets(testing["labels"], testing, config["findings"]), logits,
            testing["groups"], config["findings"], n_resamples, seed)
    return {
        "run_id": None, "description": METRICS_DESCRIPTION,
        "vgg16_weights": weights_note(training.get("feature_params")),
        "test": test,  # its "baseline_majority" is the one baseline entry
        "warnings": warnings + info["warnings"],
        "n_train": info["n_train"], "n_validation": info["n_validation"],
        "n_test": int(len(testing["labels"])),
        "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
        "early_stopping": info["early_stopping"],
        "validation_auroc_at_best": (info["history"]["val_auroc"][info["best_epoch"] - 1]
                                     if info["history"]["val_auroc"] else None),
        "history": info["history"], "head": config["head"], "seed": seed,
    }


def check_paths(training_path, testing_path, model_dir, weights_path, outputs=()):
    """No output may be an input or another output, nor of the wrong kind (one line)."""
    check_outputs(inputs=[("training set", training_path), ("testing set", testing_path)] +
                  ([("VGG16 weights", weights_path)] if weights_path else []),
                  outputs=[("model folder", model_dir, "folder")] + [
                      (f"model file {name}", os.path.join(model_dir, name), None)
                      for name in MODEL_FILES] + list(outputs))


def run(training_path, testing_path, model_dir, config, seed=0, n_resamples=1000, args=None,
        weights_path=None):
    """Train, evaluate and write the model folder; returns (metrics dict, model).

    weights_path: stage 3's VGG16 weights; the block5 head also starts its block5 from them.
    """
    check_paths(training_path, testing_path, model_dir, weights_path)
    with folder_lock(os.path.dirname(os.path.abspath(model_dir)), PROG):
        model_folder.check_replaceable(model_dir, MODEL_FILES)   # before an hour of training
        training, testing, conv_weights, warnings = prepare_inputs(
            training_path, testing_path, config, weights_path)
        for line in warnings:
            log(f"{PROG}: {line}")
        model, info = train_head(training, config, seed, conv_weights=conv_weights)
        for line in info["warnings"]:
            log(f"{PROG}: {line}")
        logits = predict_logits(model, testing["source"])
        metrics = metrics_record(training, testing, logits, info, warnings, config, seed,
                               n_resamples)
        write_model_folder(model_dir, model, info, metrics, config, training, testing, logits,
                           weights_path, conv_weights, args)
    return metrics, model


def get_args_parser():
    parser = ArgumentParser(
        prog="cxr-train",
        description="Train the normal/abnormal head on stage-3 features and report test metrics. "
                    "Unset flags take the --head preset's value: default = relu, dropout "
                    f"{PRESETS['default']['dropout']}, Adam {PRESETS['default']['learning_rate']}"
                    f", up to {PRESETS['default']['epochs']} epochs, patience "
                    f"{PRESETS['default']['patience']}, class weights; original = tanh, no "
                    f"dropout, Adam 1e-5, 10 epochs, no class weights, no early stopping "
                    f"(both flatten a block5_pool grid); cam = 1x1 conv + global average "
                    f"pooling on a feature grid (block4_pool), grid augmentation and ring mask "
                    f"as measured by benchmarks/bench_localization.py; block5 = fine-tunes "
                    f"VGG16's block5 on block4_pool features (needs --weights).")
    parser.add_argument("training", help="training.pickle from stage 4")
    parser.add_argument("testing", help="testing.pickle from stage 4")
    parser.add_argument("model", help="output folder (head.keras, config.json, metrics.json, "
                                      "roc.png, training_curve.png), replaced as a whole")
    parser.add_argument("--head", choices=sorted(PRESETS), default="cam",
                        help="preset of architecture and training choices")
    parser.add_argument("--epochs", type=EPOCHS, default=None,
                        help="maximum epochs, 1..10,000 (preset)")
    parser.add_argument("--batch-size", type=BATCH_SIZE, default=None,
                        help="batch size, 1..65,536 (preset)")
    parser.add_argument("--learning-rate", type=LEARNING_RATE, default=None,
                        help="Adam learning rate, > 0 and <= 10 (preset)")
    parser.add_argument("--dropout", type=dropout_type, default=None,
                        help="dropout after the hidden layer, in [0, 1) (preset)")
    parser.add_argument("--patience", type=PATIENCE, default=None,
                        help="early-stopping patience in epochs on the validation loss; "
                             "0 disables, at most 10,000 (preset)")
    parser.add_argument("--findings", type=findings_type, default=None, metavar="all|A,B,...",
                        help="also train one sigmoid output per finding (NIH-14 vocabulary, "
                             "scraper/findings.py) besides normal/abnormal: 'all' = every "
                             "finding the training images carry, or a comma list, e.g. "
                             "Effusion,Pneumonia; needs finding labels from stage 2 (default: "
                             "off, normal vs abnormal only)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=1000,
                        help="bootstrap resamples (of reports) for the AUROC's 95%% CI")
    parser.add_argument("--seed", type=flags.seed, default=0,
                        help="seed of weights init, shuffling, dropout and bootstrap")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help=f"the VGG16 weights file stage 3 used: with it {CLASSIFIER_FILE} "
                             f"(image -> logits) is written next to the head, and the block5 "
                             f"head starts its block5 from them; not needed when the features "
                             f"came from --random-weights (block5 then reuses stage 3's seed)")
    tuning = parser.add_argument_group(
        "fine-tuning from the images (learning/train/from_images.py)",
        "with --train-blocks, VGG16's last conv blocks are trained together with the cam head, "
        "end to end from the image files of stage 4's split (augmented, never flipped; "
        "checkpointed every epoch next to the model folder: the same command resumes a killed "
        "run); the model folder then holds classifier.keras (the fine-tuned network) and no "
        "head.keras. Costly on a CPU (about 0.6 CPU-s per image per epoch for block 5 at 224 "
        "px); on a GPU set KERAS_BACKEND=jax, same command")
    tuning.add_argument("--train-blocks", type=train_blocks_type, default=None,
                        metavar="BLOCKS", help=f"VGG16 blocks to fine-tune: {BLOCKS_HELP} "
                                               f"(default: none, the head on the features)")
    tuning.add_argument("--images", default=None, metavar="DIR",
                        help="the image files stage 3 read (default: the images folder next to "
                             "the training file, where run_pipeline.sh keeps them)")
    tuning.add_argument("--conv-learning-rate", type=LEARNING_RATE, default=None,
                        help="Adam learning rate of the fine-tuned conv blocks, > 0 and <= 10 "
                             "(default 1e-5; the head keeps --learning-rate)")
    return parser


def check_argv(argv):
    """Parse `argv` and check the flag combinations: the arguments, or UserError (one line).
    run_pipeline.sh calls this (through learning.pipeline_params) before any stage runs."""
    args = get_args_parser().parse_args(argv)
    tuning_only = [flag for flag, value in (("--images", args.images),
                                            ("--conv-learning-rate", args.conv_learning_rate))
                   if value is not None]
    if args.train_blocks is None and tuning_only:
        raise UserError(f"{tuning_only[0]} applies only with --train-blocks (fine-tuning from "
                        f"the images)", exit_code=2)
    if args.train_blocks is not None:
        from learning.train.finetune import finetune_config

        try:
            finetune_config(resolve_config(args))  # a head that cannot sit on block 5
        except UserError as error:
            raise UserError(str(error), exit_code=2) from None
    return args


def main(argv=None):
    args = check_argv(argv)
    start = time.monotonic()
    config = resolve_config(args)
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"VGG16 weights file not found: --weights {args.weights}")
    what = f"head {config['head']!r}"
    if args.train_blocks:
        from learning.train import from_images

        metrics = from_images.run(args, config)
        what += f" with VGG16 blocks {','.join(map(str, args.train_blocks))} fine-tuned"
    else:
        metrics, _ = run(args.training, args.testing, args.model, config, args.seed,
                         args.bootstrap, vars(args), args.weights)
    print(format_report(metrics["test"]))
    for line in format_findings(metrics["test"].get("findings") or {}):
        print(line)
    for line in metrics["warnings"]:  # again, next to the numbers they qualify
        log(f"cxr-train: {line}")
    log(f"cxr-train: {what} trained on {fmt_count(metrics['n_train'])} images "
        f"(validation {fmt_count(metrics['n_validation'])}), {metrics['epochs_run']} epochs run, "
        f"kept epoch {metrics['best_epoch']}; tested on {fmt_count(metrics['n_test'])}; "
        f"wrote {args.model}; {elapsed_since(start)}")
    return 0


def cli():
    exit_with(main, "cxr-train")


if __name__ == "__main__":
    cli()
