"""The training loop of stage 5: a head fitted on streamed feature batches.

`train_head(training, config, ...)` takes the training split as a dict: "features" (an
in-memory ndarray (N, *shape), as benchmarks pass it, or a learning.store.dataset source that
reads rows from the store), "labels" (N,), "subset" (N,) of "train" / "validation"; optionally
"scaling_stats" already computed by stage 5's checking pass, and with config["findings"] the
split's "finding_names" / "finding_labels" (one sigmoid output per finding besides the two
softmax logits: learning/train/findings.py). Training batches come from a
keras.utils.PyDataset (learning.store.dataset.training_batches) with the class weights as
sample weights and, for grid heads, flips/shifts drawn afresh each epoch; the validation
subset is predicted batch by batch after each epoch (loss and AUROC) for early stopping. Memory
stays a few batches, whatever the number of images.
"""
import time

import numpy as np

from learning.head import augment_grid, build_from_config, grid_cells
from learning.metrics import roc_auc
from learning.train import findings
from learning.store.dataset import (as_source, predict_logits, source_scaling_stats,
                                    training_batches)
from scraper.cli import UserError, elapsed_since, log

NO_VALIDATION = ("no validation images: early stopping is off, the last epoch is kept "
                 "(give more images or a larger --validation-fraction in stage 4)")


def class_weights(labels):
    """Balanced weights n / (2 * n_c): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=2)
    if np.any(counts == 0):
        raise UserError(f"the training subset lacks a class (normal {counts[0]}, abnormal "
                        f"{counts[1]}): cannot train a two-class head")
    return {c: float(len(labels) / (2 * counts[c])) for c in range(2)}


def cross_entropy(labels, logits):
    """Mean sparse categorical cross-entropy of 2-class logits (float64, stable)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))


def _make_tracker(source, val_positions, val_labels, patience, epochs, progress=True,
                  val_loss_of=None):
    """A Keras callback predicting the validation rows after each epoch (loss and AUROC),
    keeping the best weights (lowest validation loss) and stopping after `patience` epochs
    without improvement. With `progress`, one line per epoch on stderr. val_loss_of(logits):
    the validation loss (default: the two logits' cross-entropy)."""
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
            self.history["loss"].append(float((logs or {}).get("loss", np.nan)))
            loss_text = f"epoch {epoch + 1}/{epochs}: loss {self.history['loss'][-1]:.4f}"
            if not len(val_positions):
                if progress:
                    log(f"{loss_text} ({elapsed_since(self.started)})")
                return
            logits = predict_logits(self.model, source, val_positions)
            auc = roc_auc(val_labels, logits[:, 1] - logits[:, 0])
            val_loss = (cross_entropy(val_labels, logits) if val_loss_of is None else
                        val_loss_of(logits))
            self.history["val_loss"].append(val_loss)
            self.history["val_auroc"].append(auc)
            if val_loss < self.best_loss:
                self.best_epoch, self.best_loss = epoch + 1, val_loss
                self.best_weights = [w.copy() for w in self.model.get_weights()]
            elif patience is not None and epoch + 1 - self.best_epoch >= patience:
                self.model.stop_training = True
            if progress:
                auc_text = "n/a" if auc is None else f"{auc:.3f}"
                log(f"{loss_text}, validation loss {val_loss:.4f}, validation AUROC {auc_text}"
                    f"{' (best so far)' if self.best_epoch == epoch + 1 else ''} "
                    f"({elapsed_since(self.started)})")

    return BestValidation()


def train_head(training, config, seed=0, verbose=0, progress=True, conv_weights=None):
    """Fit the head on the "train" subset, early-stopping on "validation".

    conv_weights: block5's initial weights for a "block5" head (stage 5's
    resolve_conv_weights). Returns (model, info) with info = {"epochs_run", "best_epoch",
    "history", "n_train", "n_validation", "class_weights", "early_stopping", "warnings"}.
    """
    import keras

    from learning.gradients import deterministic

    deterministic(seed)   # any Keras backend (TensorFlow: also op determinism)
    source = as_source(training["features"])
    labels = np.asarray(training["labels"], dtype=np.int64)
    subset = np.asarray(training["subset"], dtype=object)
    train, val = np.flatnonzero(subset == "train"), np.flatnonzero(subset == "validation")
    weights = class_weights(labels[train])   # also refuses a one-class training subset
    weights = weights if config["class_weights"] else None
    has_val = len(val) > 0 and config["patience"] is not None
    stats = training.get("scaling_stats")
    if stats is None and config["input_scaling"] != "none":
        stats = source_scaling_stats(source, train, config["input_scaling"])
    model = build_from_config(source.shape, config, stats, conv_weights)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    y, val_loss_of = labels, None      # targets of the batches; validation loss (default)
    if config.get("findings"):   # [label, y_1..y_K] targets, softmax + sigmoid losses
        y = findings.targets(labels, training, config["findings"])
        table = findings.positive_weights(y[train], config["class_weights"])
        loss = findings.findings_loss(table)
        val_loss_of = lambda logits: findings.numpy_loss(y[val], logits, table)  # noqa: E731
    model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]), loss=loss)
    tracker = _make_tracker(source, val, labels[val], config["patience"] if has_val else None,
                            config["epochs"], progress, val_loss_of)
    augment = None
    if config.get("grid_augment"):
        shift = grid_cells(config.get("grid_shift", 1), min(source.shape[:2]))
        augment = lambda x, rng: augment_grid(x, rng, shift)  # noqa: E731
    sample_weight = (np.ones(len(labels), np.float32) if weights is None else
                     np.asarray([weights[int(c)] for c in labels], np.float32))
    batches = training_batches(source, train, y, sample_weight, config["batch_size"],
                               seed, augment)
    model.fit(batches, epochs=config["epochs"], verbose=verbose, callbacks=[tracker])
    epochs_run = len(tracker.history["loss"])
    best_epoch = epochs_run
    if has_val and tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)  # restore the best validation epoch
        best_epoch = tracker.best_epoch
    warnings = []
    if not len(val):
        warnings.append(f"WARNING: {NO_VALIDATION}")
    info = {"epochs_run": epochs_run, "best_epoch": best_epoch, "history": tracker.history,
            "n_train": int(len(train)), "n_validation": int(len(val)),
            "class_weights": weights, "warnings": warnings,
            "early_stopping": "lowest validation loss" if has_val else None}
    return model, info
