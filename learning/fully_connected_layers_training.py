"""Stage 5: train the normal/abnormal head on the conv features and measure it on the test set.

Reads:  training.pickle and testing.pickle from stage 4 ({"format": "cxr-examples/1", ...}).
Writes: into the <model> directory, each file atomically:
        head.keras         the head (features (N, 7, 7, 512) -> 2 logits [normal, abnormal], no
                           softmax), built-in layers only: keras.models.load_model needs
                           nothing else; saved without optimizer state
        classifier.keras   the same classifier end to end: RGB pixels (N, S, S, 3) -> the 2
                           logits, VGG16 preprocessing and conv base included (learning/export.py);
                           needs --weights unless the features came from random weights
        config.json        {"feature_params", "class_names", "head", "args"}
        metrics.json       test metrics (scikit-learn's per-class table, accuracy, ROC AUC +
                           grouped bootstrap 95% CI, PR AUC, sensitivity/specificity at the
                           threshold used, confusion matrix, majority baseline), sizes, epochs,
                           history, warnings (tiny test or validation set)
        test_predictions.csv  one row per test image: name, group, label, p_abnormal, predicted
        roc.png, training_curve.png

Early stopping (default head) watches the "validation" subset of training.pickle, never the test
set; the test set is touched once, after training, for the reported metrics.

Example:
    cxr-train data/training.pickle data/testing.pickle data/model --weights data/vgg16.weights.h5
    cxr-train data/training.pickle data/testing.pickle data/model-original --head original
"""
import os
import time

import numpy as np

from learning import safe_pickle
from learning.export import (CLASSIFIER_FILE, NeedsWeights, check_weights, export_classifier,
                             save_keras)
from learning.head import (INPUT_SCALINGS, PRESETS, augment_grid, block5_weights,
                           build_from_config, grid_cells, input_scaling_stats,
                           needs_conv_weights)
from learning.metrics import (CLASS_NAMES, evaluate, format_report, roc_auc,
                              small_set_warnings)
from scraper.cli import ArgumentParser, UserError, elapsed_since, exit_with, fmt_count, log
from scraper.cli import seed as seed_type
from scraper.fileio import atomic_write, atomic_write_csv, atomic_write_json, check_outputs

EXAMPLES_FORMAT = "cxr-examples/1"
HEAD_FILE = "head.keras"
PREDICTIONS_FILE = "test_predictions.csv"


def load_examples(path, split):
    """Read a stage-4 pickle and check its arrays agree; split is "training" or "testing"."""
    data = safe_pickle.load(path, f"{split} examples", EXAMPLES_FORMAT)
    # numbers only, and finite: a head trained on NaN features is garbage with exit 0
    features = safe_pickle.check_array(data.get("features"), "features", path, finite=True)
    labels = safe_pickle.check_array(data.get("labels"), "labels", path, ndims=(1,))
    n = len(features)
    for key in ("names", "groups", "subset"):
        safe_pickle.check_str_list(data.get(key), key, path, length=n)
    data["feature_params"] = safe_pickle.check_dict(data.get("feature_params"),
                                                    "feature_params", path)
    if features.ndim not in (2, 4) or labels.shape != (n,):
        raise UserError(f"{path}: features of shape {features.shape} with labels of shape "
                        f"{labels.shape}; expected (N, h, w, C) or (N, C) and (N,)")
    if n and not np.isin(labels, (0, 1)).all():
        raise UserError(f"{path}: labels must be 0 (normal) or 1 (abnormal), found "
                        f"{sorted(set(labels.tolist()))[:5]}")
    if data.get("split") != split:
        raise UserError(f"{path} holds the {data.get('split')!r} split, expected {split!r}; "
                        f"are the training and testing arguments swapped?")
    data["features"] = features.astype(np.float32, copy=False)
    return data


def check_compatible(training, testing, training_path, testing_path):
    """Both pickles must come from the same features (shape and stage-3 parameters)."""
    if training["features"].shape[1:] != testing["features"].shape[1:]:
        raise UserError(f"feature shapes differ: {training_path} has "
                        f"{training['features'].shape[1:]}, {testing_path} has "
                        f"{testing['features'].shape[1:]}; re-run stage 4 on one features file")
    if training.get("feature_params") != testing.get("feature_params"):
        raise UserError(f"feature parameters differ between {training_path} and {testing_path} "
                        f"({training.get('feature_params')} vs {testing.get('feature_params')}); "
                        f"re-run stage 4 on one features file")
    if len(training["features"]) == 0 or len(testing["features"]) == 0:
        raise UserError("empty training or testing set: check stage 4's summary")


def class_weights(labels):
    """Balanced weights n / (2 * n_c): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=2)
    if np.any(counts == 0):
        raise UserError(f"the training subset lacks a class (normal {counts[0]}, abnormal "
                        f"{counts[1]}): cannot train a two-class head")
    return {c: float(len(labels) / (2 * counts[c])) for c in range(2)}


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
    for key, low in (("epochs", 1), ("batch_size", 1)):
        if config[key] < low:
            raise UserError(f"invalid --{key.replace('_', '-')} {config[key]}: must be >= {low}")
    if not config["learning_rate"] > 0:
        raise UserError(f"invalid --learning-rate {config['learning_rate']}: must be > 0")
    if not 0 <= config["dropout"] < 1:
        raise UserError(f"invalid --dropout {config['dropout']}: must be in [0, 1)")
    assert config["input_scaling"] in INPUT_SCALINGS
    return config


def _make_tracker(val_features, val_labels, patience, epochs, progress=True):
    """A Keras callback recording validation AUROC per epoch and keeping the best weights
    (lowest validation loss); it stops training after `patience` epochs without improvement.
    With `progress`, one line per epoch on stderr (an epoch of the full-size head takes tens
    of seconds on a laptop CPU)."""
    import keras

    class BestValidation(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = {"loss": [], "val_loss": [], "val_auroc": []}
            self.best_epoch, self.best_loss, self.best_weights = None, np.inf, None
            self.started = None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.history["loss"].append(float(logs.get("loss", np.nan)))
            if val_features is None:
                if progress:
                    log(f"epoch {epoch + 1}/{epochs}: loss {self.history['loss'][-1]:.4f} "
                        f"({elapsed_since(self.started)})")
                return
            logits = self.model.predict(val_features, verbose=0, batch_size=256)
            auc = roc_auc(val_labels, logits[:, 1] - logits[:, 0])
            val_loss = float(logs.get("val_loss", np.nan))
            self.history["val_loss"].append(val_loss)
            self.history["val_auroc"].append(auc)
            if val_loss < self.best_loss:
                self.best_epoch, self.best_loss = epoch + 1, val_loss
                self.best_weights = [w.copy() for w in self.model.get_weights()]
            elif patience is not None and epoch + 1 - self.best_epoch >= patience:
                self.model.stop_training = True
            if progress:
                auc_text = "n/a" if auc is None else f"{auc:.3f}"
                log(f"epoch {epoch + 1}/{epochs}: loss {self.history['loss'][-1]:.4f}, "
                    f"validation loss {val_loss:.4f}, validation AUROC {auc_text}"
                    f"{' (best so far)' if self.best_epoch == epoch + 1 else ''} "
                    f"({elapsed_since(self.started)})")

    return BestValidation()


def _augmented_batches(x, y, weights, batch_size, seed, max_shift=1):
    """A keras PyDataset of shuffled (x, y, sample weight) batches whose feature grids are
    flipped / shifted afresh each epoch (head.augment_grid); for config["grid_augment"]."""
    import keras

    class Augmented(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))
            self.sample_weight = (np.ones(len(y), np.float32) if weights is None else
                                  np.asarray([weights[int(c)] for c in y], np.float32))

        def __len__(self):
            return int(np.ceil(len(x) / batch_size))

        def __getitem__(self, index):
            idx = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            return (augment_grid(x[idx], self.rng, max_shift), y[idx],
                    self.sample_weight[idx])

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return Augmented()


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


def train_head(training, config, seed=0, verbose=0, progress=True, conv_weights=None):
    """Fit the head on the "train" subset, early-stopping on "validation".

    conv_weights: block5's initial weights for a "block5" head (resolve_conv_weights).
    Returns (model, info) with info = {"epochs_run", "best_epoch", "history", "n_train",
    "n_validation", "class_weights", "scaling"}.
    """
    import keras

    from learning.gradients import deterministic

    deterministic(seed)   # any Keras backend (TensorFlow: also op determinism)
    subset = np.asarray(training["subset"], dtype=object)
    train_mask, val_mask = subset == "train", subset == "validation"
    x_train, y_train = training["features"][train_mask], training["labels"][train_mask]
    x_val, y_val = training["features"][val_mask], training["labels"][val_mask]
    weights = class_weights(y_train) if config["class_weights"] else None
    if not config["class_weights"]:
        class_weights(y_train)  # still refuse a one-class training subset
    has_val = len(y_val) > 0 and config["patience"] is not None
    stats = input_scaling_stats(x_train, config["input_scaling"])
    model = build_from_config(x_train.shape[1:], config, stats, conv_weights)
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tracker = _make_tracker(x_val if len(y_val) else None, y_val,
                            config["patience"] if has_val else None, config["epochs"],
                            progress)
    validation = (x_val, y_val) if len(y_val) else None
    if config.get("grid_augment"):
        batches = _augmented_batches(x_train, y_train, weights, config["batch_size"], seed,
                                     grid_cells(config.get("grid_shift", 1),
                                                min(x_train.shape[1:3])))
        model.fit(batches, epochs=config["epochs"], verbose=verbose, callbacks=[tracker],
                  validation_data=validation)
    else:
        model.fit(x_train, y_train, batch_size=config["batch_size"], epochs=config["epochs"],
                  class_weight=weights, shuffle=True, verbose=verbose, callbacks=[tracker],
                  validation_data=validation)
    epochs_run = len(tracker.history["loss"])
    best_epoch = epochs_run
    if has_val and tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)  # restore the best validation epoch
        best_epoch = tracker.best_epoch
    info = {"epochs_run": epochs_run, "best_epoch": best_epoch, "history": tracker.history,
            "n_train": int(train_mask.sum()), "n_validation": int(val_mask.sum()),
            "class_weights": weights,
            "early_stopping": "lowest validation loss" if has_val else None}
    return model, info


def predict_logits(model, features, batch_size=256):
    """(N, 2) float64 logits [normal, abnormal]."""
    return np.asarray(model.predict(features, batch_size=batch_size, verbose=0),
                      dtype=np.float64)


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


def write_predictions(path, testing, logits):
    """One CSV row per test image: name, group, label, p_abnormal (softmax), predicted."""
    logits = np.asarray(logits, dtype=np.float64)
    p_abnormal = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax of 2 logits
    atomic_write_csv(path, ["name", "group", "label", "p_abnormal", "predicted"], (
        [name, group, CLASS_NAMES[int(label)], f"{p:.6f}", CLASS_NAMES[int(np.argmax(row))]]
        for name, group, label, p, row in zip(testing["names"], testing["groups"],
                                              testing["labels"], p_abnormal, logits)))


def _save_figure(figure, path):
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")


def plot_roc(labels, logits, metrics, path, title="Test-set ROC curve"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="chance / majority baseline (AUC 0.5)")
    if metrics["roc_auc"] is not None:
        fpr, tpr, _ = roc_curve(labels, logits[:, 1] - logits[:, 0])
        ci = metrics["roc_auc_ci"]
        interval = f", 95% CI {ci['low']:.3f}-{ci['high']:.3f}" if ci["low"] is not None else ""
        axis.plot(fpr, tpr, color="C0", label=f"head: AUC {metrics['roc_auc']:.3f}{interval}")
    else:
        axis.text(0.5, 0.5, "AUROC undefined:\none class in the test set", ha="center")
    axis.set(xlabel="false positive rate (normal called abnormal)",
             ylabel="true positive rate (abnormal detected)",
             title=f"{title} (n={metrics['n']:,})", xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right", fontsize=8)
    _save_figure(figure, path)
    plt.close(figure)


def plot_training_curve(info, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = info["history"]
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, history["loss"], label="training loss (class-weighted)"
                   if info.get("class_weights") else "training loss")
    if history["val_loss"]:
        loss_axis.plot(epochs, history["val_loss"], label="validation loss")
    auc_values = [np.nan if v is None else v for v in history["val_auroc"]]
    if auc_values:
        auc_axis.plot(epochs, auc_values, color="C2", label="validation ROC AUC")
    from matplotlib.ticker import MaxNLocator

    for axis in (loss_axis, auc_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.axvline(info["best_epoch"], color="grey", linestyle=":",
                     label=f"kept epoch {info['best_epoch']}")
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    loss_axis.set(ylabel="cross-entropy", title="Loss per epoch")
    auc_axis.set(ylabel="ROC AUC", title="Validation ROC AUC per epoch")
    _save_figure(figure, path)
    plt.close(figure)


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
    parser.add_argument("model", help="output directory (head.keras, config.json, metrics.json, "
                                      "roc.png, training_curve.png)")
    parser.add_argument("--head", choices=sorted(PRESETS), default="cam",
                        help="preset of architecture and training choices")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (preset)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (preset)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam learning rate (preset)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout after the hidden layer (preset)")
    parser.add_argument("--patience", type=int, default=None,
                        help="early-stopping patience in epochs on the validation loss; "
                             "0 disables (preset)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples (of reports) for the AUROC's 95%% CI")
    parser.add_argument("--seed", type=seed_type, default=0,
                        help="seed of weights init, shuffling, dropout and bootstrap")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help=f"the VGG16 weights file stage 3 used: with it {CLASSIFIER_FILE} "
                             f"(image -> logits) is written next to the head, and the block5 "
                             f"head starts its block5 from them; not needed when the features "
                             f"came from --random-weights (block5 then reuses stage 3's seed)")
    return parser


def run(training_path, testing_path, model_dir, config, seed=0, n_resamples=1000, args=None,
        weights_path=None):
    """Train, evaluate and write the model directory; returns (metrics dict, model).

    weights_path: stage 3's VGG16 weights; the block5 head also starts its block5 from them.
    """
    check_outputs(inputs=[("training set", training_path), ("testing set", testing_path)],
                  outputs=[("model folder", model_dir, "folder")] + [
                      (f"model file {name}", os.path.join(model_dir, name), None)
                      for name in (HEAD_FILE, CLASSIFIER_FILE, "config.json", "metrics.json",
                                   PREDICTIONS_FILE, "roc.png", "training_curve.png")])
    if weights_path:
        check_outputs(inputs=[("VGG16 weights", weights_path)],
                      outputs=[(f"model file {CLASSIFIER_FILE}",
                                os.path.join(model_dir, CLASSIFIER_FILE), None)])
    training = load_examples(training_path, "training")
    testing = load_examples(testing_path, "testing")
    check_compatible(training, testing, training_path, testing_path)
    if weights_path:
        check_weights(training.get("feature_params"), weights_path)  # fail before training
    conv_weights = resolve_conv_weights(config, training.get("feature_params"), weights_path)
    subset = np.asarray(training["subset"], dtype=object)
    warnings = (small_set_warnings("test", testing["labels"]) +
                small_set_warnings("validation", training["labels"][subset == "validation"])
                if (subset == "validation").any() else
                small_set_warnings("test", testing["labels"]))
    for line in warnings:
        log(f"cxr-train: {line}")
    model, info = train_head(training, config, seed, conv_weights=conv_weights)
    logits = predict_logits(model, testing["features"])
    train_labels = training["labels"][np.asarray(training["subset"], dtype=object) == "train"]
    test_metrics = evaluate(testing["labels"], logits, testing["groups"], train_labels,
                            n_resamples, seed)
    metrics = {
        "test": test_metrics,  # its "baseline_majority" is the one baseline entry
        "warnings": warnings,
        "n_train": info["n_train"], "n_validation": info["n_validation"],
        "n_test": int(len(testing["labels"])),
        "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
        "early_stopping": info["early_stopping"],
        "validation_auroc_at_best": (info["history"]["val_auroc"][info["best_epoch"] - 1]
                                     if info["history"]["val_auroc"] else None),
        "history": info["history"], "head": config["head"], "seed": seed,
    }
    sizes = {"head_bytes": save_model(model, model_dir),
             "classifier_bytes": export_end_to_end(model, model_dir,
                                                   training.get("feature_params"), weights_path)}
    metrics["files"] = sizes
    write_predictions(os.path.join(model_dir, PREDICTIONS_FILE), testing, logits)
    head_config = {k: v for k, v in config.items() if k != "why"}
    head_config["class_weights_used"] = info["class_weights"]
    if conv_weights is not None:  # where block5 started from (the features' weights)
        head_config["conv_init"] = (training.get("feature_params") or {}).get("weights")
    atomic_write_json(os.path.join(model_dir, "config.json"), {
        "feature_params": training.get("feature_params"), "class_names": list(CLASS_NAMES),
        "head": head_config, "args": args or {}, "split_params": training.get("split_params"),
        "output": "2 pre-softmax logits [normal, abnormal]",
        "end_to_end": (CLASSIFIER_FILE if sizes["classifier_bytes"] else None)})
    atomic_write_json(os.path.join(model_dir, "metrics.json"), metrics)
    plot_roc(testing["labels"], logits, test_metrics, os.path.join(model_dir, "roc.png"))
    plot_training_curve(info, os.path.join(model_dir, "training_curve.png"))
    return metrics, model


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    config = resolve_config(args)
    if args.bootstrap < 1:
        raise UserError(f"invalid --bootstrap {args.bootstrap}: must be >= 1")
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"VGG16 weights file not found: --weights {args.weights}")
    metrics, _ = run(args.training, args.testing, args.model, config, args.seed,
                     args.bootstrap, vars(args), args.weights)
    print(format_report(metrics["test"]))
    for line in metrics["warnings"]:  # again, next to the numbers they qualify
        log(f"cxr-train: {line}")
    log(f"cxr-train: head {config['head']!r} trained on {fmt_count(metrics['n_train'])} images "
        f"(validation {fmt_count(metrics['n_validation'])}), {metrics['epochs_run']} epochs run, "
        f"kept epoch {metrics['best_epoch']}; tested on {fmt_count(metrics['n_test'])}; "
        f"wrote {args.model}; {elapsed_since(start)}")
    return 0


def cli():
    exit_with(main, "cxr-train")


if __name__ == "__main__":
    cli()
