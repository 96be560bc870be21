"""Fine-tuning VGG16's last conv blocks together with the head, end to end from the image files.

The model IS the classifier stage 5 exports (learning/export.py's contract):
    RGB pixels float (N, S, S, 3) in 0..255
    -> VGG16 preprocessing (a frozen 1x1 conv)
    -> VGG16 blocks 1-5 up to block5_conv3, (N, S/16, S/16, 512): the blocks in `train_blocks`
       (a range ending at block 5: (5,), (4, 5), ...) are trained, the others stay frozen
    -> the head of a grid preset (head.py's "cam": [scale] -> ring mask -> 1x1 conv -> GAP ->
       dropout -> dense 2), trained from scratch
    -> 2 pre-softmax logits [normal, abnormal], or with config["findings"] (stage 5's
       --findings) 2 + K logits [normal, abnormal, f_1..f_K], one pre-sigmoid logit per finding
       (learning/train/findings.py: the same targets, loss and class weights as the head on
       frozen features).
So the trained model is saved as classifier.keras as it is, and whatever explains a classifier
(stage 6, cxr-explain) explains the fine-tuned network; its last conv (the head's cam_conv) is
where Grad-CAM looks.

Training (`fine_tune`): images streamed in batches (learning/store/image_batches.py) with
anatomy-respecting augmentation (learning/train/augment.py, never a flip); Adam with two rates,
the head's preset rate and a smaller `conv_learning_rate` for the pretrained blocks (large steps
would wipe out what ImageNet taught them); balanced class weights (and per finding, with
findings); early stopping on the
"validation" subset (lowest validation loss, as stage 5; the best epoch's weights are kept).
After every epoch one checkpoint file is written atomically: the variables that change (trained
blocks, head, dropout seed states), the optimizer's (step count, moments), the best epoch's
weights, the epoch, history and early-stopping state. Run again with the same inputs and
settings, training continues after the last completed epoch and ends where an uninterrupted run
ends (order and augmentation are functions of (seed, epoch, image); TensorFlow runs with op
determinism). A checkpoint of other inputs or settings (its fingerprint differs) is ignored and
replaced, with a note. Backend-neutral Keras: the same code runs under TensorFlow, JAX, torch.
"""
import argparse
import hashlib
import json
import os
import time
from types import SimpleNamespace

import numpy as np

from learning.head import build_from_config, head_kind, input_scaling_stats
from scraper.cli import UserError, elapsed_since, log

BLOCKS = (1, 2, 3, 4, 5)
LAST_LAYER = "block5_conv3"
GRID_HEADS = ("cam",)  # presets whose head sits on a feature grid and adds no conv block
DEFAULTS = {"conv_learning_rate": 1e-5, "augment": None}  # augment None -> augment.LIMITS
CHECKPOINT_FORMAT = "cxr-finetune-checkpoint/1"
SCALING_IMAGES = 64  # training images (unaugmented) that fix the head's input scale
BLOCKS_HELP = "5, 4,5, 3,4,5, 2,3,4,5 or 1,2,3,4,5 (also written 4-5): blocks ending at 5"


def train_blocks_type(text):
    """argparse type of --train-blocks: "5" -> (5,), "4,5" or "4-5" -> (4, 5). The head sits on
    block 5's output, so the blocks trained must be a contiguous range that ends at 5."""
    text = str(text).strip()
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-"))
            blocks = tuple(range(low, high + 1)) if low <= high else (low, high)
        else:
            blocks = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid train blocks {text!r}: use {BLOCKS_HELP}") \
            from None
    bad = [b for b in blocks if b not in BLOCKS]
    if bad:
        raise argparse.ArgumentTypeError(f"invalid train blocks {text!r}: VGG16 has conv blocks "
                                         f"1 to 5, not {bad[0]}; use {BLOCKS_HELP}")
    if blocks != tuple(range(blocks[0], 6)):
        raise argparse.ArgumentTypeError(f"invalid train blocks {text!r}: the blocks trained must "
                                         f"run without a gap up to block 5; use {BLOCKS_HELP}")
    return blocks


def finetune_config(config):
    """The stage-5 config of a grid-head preset completed with the fine-tuning keys; UserError
    for presets whose head cannot sit on block 5's output."""
    name = config.get("head", "cam")
    if head_kind(config) not in GRID_HEADS:
        raise UserError(f"--train-blocks needs a head that sits on a feature grid "
                        f"({', '.join(GRID_HEADS)}); --head {name} "
                        f"{'adds block5 itself' if head_kind(config) == 'block5' else 'flattens'}"
                        f": use --head cam")
    merged = dict(DEFAULTS, **{k: v for k, v in config.items() if k != "why"})
    if not merged["conv_learning_rate"] > 0:
        raise UserError(f"invalid conv learning rate {merged['conv_learning_rate']}: must be > 0")
    from learning.train.augment import LIMITS, check_limits

    try:
        merged["augment"] = check_limits(merged["augment"] or LIMITS)
    except ValueError as error:
        raise UserError(str(error)) from None
    return merged


# ----------------------------------------------------------------------------- model

def block_of(name):
    """VGG16 block number of a layer name ("block4_conv2" -> 4), else None."""
    if name.startswith("block") and "_" in name and name[5:name.index("_")].isdigit():
        return int(name[5:name.index("_")])
    return None


def build_model(train_blocks, config, image_size=224, weights_path=None, random_weights=False,
                seed=0, scaling=None, scaling_batches=None, conv_seed=None):
    """(classifier keras.Model pixels -> logits with `train_blocks` trainable, head scaling).

    scaling: the head's input statistics (head.input_scaling_stats) from a checkpoint; when None
    and the preset scales its input, computed on the first SCALING_IMAGES of scaling_batches.
    conv_seed: the seed of random conv weights (default `seed`), e.g. stage 3's."""
    import keras

    from learning.export import build_classifier
    from learning.vgg import build_conv_base

    conv_seed = seed if conv_seed is None else conv_seed
    conv_base = build_conv_base(weights_path, random_weights, conv_seed, image_size, LAST_LAYER)
    if random_weights and conv_seed != seed:
        keras.utils.set_random_seed(seed)  # the head's init follows the training seed
    for layer in conv_base.layers:
        layer.trainable = block_of(layer.name) in train_blocks
    if scaling is None and config["input_scaling"] != "none":
        scaling = scaling_from_images(conv_base, scaling_batches, config["input_scaling"])
    head = build_from_config(tuple(conv_base.output.shape[1:]), config, scaling)
    return build_classifier(conv_base, head), scaling


def scaling_from_images(conv_base, batches, input_scaling):
    """Head input statistics from block 5's output on up to SCALING_IMAGES training images
    (their listed order, no augmentation): the features the head sees at the start."""
    from learning.vgg import preprocess

    count = min(SCALING_IMAGES, len(batches.paths))
    images = np.stack([batches.decoded(i) for i in range(count)])  # (n, S, S, 3) uint8
    features = conv_base.predict(preprocess(images), batch_size=16, verbose=0)
    stats = input_scaling_stats(features, input_scaling)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in stats.items()}


def changing_variables(model):
    """The variables training changes: trainable ones and states (dropout seeds), in model
    order. Frozen blocks are left out: the weights file and the fingerprint fix them."""
    weight_ids = {id(w) for w in model.weights}
    return [v for v in model.variables if v.trainable or id(v) not in weight_ids]


def _two_rate_adam():
    """Adam whose conv-block variables step at `conv_factor` times the learning rate."""
    import keras

    class TwoRateAdam(keras.optimizers.Adam):
        def __init__(self, learning_rate, conv_factor, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.conv_factor, self.conv_indices = float(conv_factor), set()

        def build(self, variables):
            super().build(variables)
            self.conv_indices = {i for i, v in enumerate(variables)
                                 if block_of(v.path.split("/")[0]) is not None}

        def update_step(self, gradient, variable, learning_rate):
            if self._get_variable_index(variable) in self.conv_indices:
                learning_rate = learning_rate * self.conv_factor
            super().update_step(gradient, variable, learning_rate)

    return TwoRateAdam


def compile_model(model, config, loss):
    """Compile with the two-rate Adam, built now so its variables can be restored."""
    optimizer = _two_rate_adam()(config["learning_rate"],
                                 config["conv_learning_rate"] / config["learning_rate"])
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer, loss=loss)
    return optimizer


# ----------------------------------------------------------------------------- data

def make_batches(paths, labels, subset, config, image_size, seed, workers=1, targets=None):
    """Namespace(train, val or None, class_weights, loss, val_loss_of): the streamed training
    and validation sets, the Keras loss and the validation loss of logits. With
    config["findings"], `targets` (n, 1 + K) [label, y_1..y_K] rows (findings.targets) are
    what the batches yield and the loss is findings.findings_loss."""
    from learning.train.loop import class_weights
    from learning.store.image_batches import ImageBatches

    subset = np.asarray(subset, dtype=object)
    labels = np.asarray(labels, np.int64)
    paths = np.asarray([str(p) for p in paths], dtype=object)
    train, val = subset == "train", subset == "validation"
    weights = class_weights(labels[train]) if config["class_weights"] else None
    if not config["class_weights"]:
        class_weights(labels[train])  # still refuse a one-class training subset
    if targets is not None:   # used only with findings (else the labels are the targets)
        targets = np.asarray(targets, np.float32) if config.get("findings") else None
    loss, val_loss_of = _losses(config, labels, targets, train, val)
    rows = (lambda mask: None) if targets is None else (lambda mask: targets[mask])
    common = {"image_size": image_size, "batch_size": config["batch_size"], "seed": seed,
              "workers": workers}
    train_batches = ImageBatches(list(paths[train]), labels[train], augment=config["augment"],
                                 shuffle=True, class_weights=weights, targets=rows(train),
                                 **common)
    val_batches = (ImageBatches(list(paths[val]), labels[val], targets=rows(val), **common)
                   if val.any() else None)
    return SimpleNamespace(train=train_batches, val=val_batches, class_weights=weights,
                           loss=loss, val_loss_of=val_loss_of)


def _losses(config, labels, targets, train, val):
    """(Keras loss, validation loss of the validation logits): the two logits' cross-entropy,
    or with config["findings"] the findings loss of learning/train/findings.py."""
    if not config.get("findings"):
        import keras

        from learning.train.loop import cross_entropy

        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                lambda logits: cross_entropy(labels[val], logits))
    from learning.train import findings

    if targets is None or np.shape(targets) != (len(labels), 1 + len(config["findings"])):
        raise ValueError(f"findings {list(config['findings'])} need (n, 1 + K) target rows, "
                         f"got {None if targets is None else np.shape(targets)}")
    table = findings.positive_weights(targets[train], config["class_weights"])
    return (findings.findings_loss(table),
            lambda logits: findings.numpy_loss(targets[val], logits, table))


def run_fingerprint(config, train_blocks, image_size, weights_id, seed, data):
    """sha256 of everything that determines the run: a checkpoint resumes only a run with the
    same fingerprint (same images, labels, split, settings, initial weights, seed)."""
    # not the number of epochs: epoch k is the same whatever the total, so a run given more
    # epochs continues an earlier one exactly as one longer run would
    config = {k: v for k, v in config.items() if k != "epochs"}
    record = {"format": CHECKPOINT_FORMAT, "config": config, "train_blocks": list(train_blocks),
              "image_size": image_size, "weights": weights_id, "seed": seed,
              "train": [data.train.paths, data.train.labels.tolist()],
              "validation": None if data.val is None else [data.val.paths,
                                                           data.val.labels.tolist()]}
    if data.train.targets is not None:   # --findings: their labels too (config has the names)
        record["targets"] = [batches.targets.tolist() for batches in (data.train, data.val)
                             if batches is not None]
    text = json.dumps(record, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- checkpoint

def new_state(fingerprint, scaling):
    return {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "scaling": scaling,
            "epochs_done": 0, "stopped": False, "best_epoch": None, "best_loss": None,
            "history": {"loss": [], "val_loss": [], "val_auroc": [], "seconds_per_image": [],
                        "cpu_seconds_per_image": []}}


def record_epoch(state, loss, val_loss, auroc, seconds_per_image, patience, cpu_seconds=None):
    """Add one finished epoch to `state`; returns True when it is the best so far (lowest
    validation loss; without validation every epoch is). Sets state["stopped"] once
    `patience` epochs passed without improvement. seconds_per_image: wall clock of the
    epoch's training per training image; cpu_seconds: the same in this process's CPU time
    (all threads), which a machine shared with other work inflates less."""
    history = state["history"]
    history["loss"].append(loss)
    history["seconds_per_image"].append(seconds_per_image)
    history["cpu_seconds_per_image"].append(cpu_seconds)
    state["epochs_done"] += 1
    epoch = state["epochs_done"]
    if val_loss is None:
        state["best_epoch"] = epoch
        return True
    history["val_loss"].append(val_loss)
    history["val_auroc"].append(auroc)
    if state["best_loss"] is None or val_loss < state["best_loss"]:
        state["best_epoch"], state["best_loss"] = epoch, val_loss
        return True
    if patience is not None and epoch - state["best_epoch"] >= patience:
        state["stopped"] = True
    return False


def save_checkpoint(path, state, variables, optimizer, best):
    """One .npz, written atomically: a kill leaves the previous checkpoint whole."""
    from learning.gradients import to_numpy
    from scraper.fileio import atomic_write

    arrays = {"state": np.array(json.dumps(state))}
    for prefix, values in (("model", [to_numpy(v) for v in variables]),
                           ("optimizer", [to_numpy(v) for v in optimizer.variables]),
                           ("best", best or [])):
        arrays.update({f"{prefix}_{i:04d}": value for i, value in enumerate(values)})
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


def read_checkpoint(path, fingerprint):
    """Namespace(state, model, optimizer, best) of the checkpoint at `path` when it belongs to
    this run (same fingerprint), else None (none there, or another run's: noted, replaced)."""
    if not path or not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(str(data["state"]))
            parts = {p: [data[k] for k in sorted(data.files) if k.startswith(p + "_")]
                     for p in ("model", "optimizer", "best")}
    except (OSError, ValueError, KeyError) as error:
        log(f"cxr-train: note: ignoring unreadable checkpoint {path} ({error}); starting afresh")
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
        log(f"cxr-train: note: the checkpoint {path} is from another run (other images, labels, "
            f"settings, weights or seed); starting afresh, it will be replaced")
        return None
    return SimpleNamespace(state=state, best=parts["best"] or None, **{
        k: parts[k] for k in ("model", "optimizer")})


def restore(saved, variables, optimizer):
    """Assign the checkpoint's arrays to the model's changing variables and the optimizer's."""
    for what, targets, values in (("model", variables, saved.model),
                                  ("optimizer", optimizer.variables, saved.optimizer)):
        shapes = [tuple(v.shape) for v in targets]
        if shapes != [tuple(a.shape) for a in values]:
            raise UserError(f"the checkpoint's {what} variables do not fit the model built "
                            f"({len(values)} arrays for {len(targets)} variables)")
        for target, value in zip(targets, values):
            target.assign(value)


# ----------------------------------------------------------------------------- training

def predict_logits(model, batches):
    """(N, 2 [+ K]) float64 logits of the (unaugmented) batches, in their order."""
    return np.asarray(model.predict(batches, verbose=0), np.float64)


def validate(model, data):
    """(validation loss, AUROC) of the current weights; (None, None) without validation."""
    from learning.metrics import roc_auc

    if data.val is None:
        return None, None
    logits = predict_logits(model, data.val)
    return data.val_loss_of(logits), roc_auc(data.val.labels, logits[:, 1] - logits[:, 0])


def epoch_callback(run):
    """A Keras callback doing the per-epoch work of `fine_tune` (`run` is its namespace):
    fix the epoch's order and augmentation, then validate, record, snapshot the best weights,
    checkpoint and stop early. One fit call runs all epochs (a fit per epoch would rebuild the
    input pipeline and decode extra batches every epoch)."""
    import keras

    from learning.gradients import to_numpy

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            run.data.train.set_epoch(epoch)
            self.started, self.cpu_started = time.monotonic(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            count = len(run.data.train.paths)
            per_image = (time.monotonic() - self.started) / count
            cpu_per_image = (time.process_time() - self.cpu_started) / count
            loss = float((logs or {}).get("loss", np.nan))
            val_loss, auroc = validate(self.model, run.data)
            best = record_epoch(run.state, loss, val_loss, auroc, per_image, run.patience,
                                cpu_per_image)
            if best and run.track:
                run.best = [to_numpy(v).copy() for v in run.variables]
            if run.checkpoint:
                save_checkpoint(run.checkpoint, run.state, run.variables, run.optimizer, run.best)
            if run.state["stopped"]:
                self.model.stop_training = True
            if run.progress:
                log(f"cxr-train: epoch {epoch + 1}/{run.epochs}: loss {loss:.4f}"
                    f"{_validation_text(val_loss, auroc, best)} ({elapsed_since(self.started)}, "
                    f"{per_image:.3f} s per training image)")

    return EpochEnd()


def _validation_text(val_loss, auroc, best):
    if val_loss is None:
        return ""
    auroc_text = "n/a" if auroc is None else f"{auroc:.3f}"
    return (f", validation loss {val_loss:.4f}, validation AUROC {auroc_text}"
            f"{' (best so far)' if best else ''}")


def fine_tune(paths, labels, subset, config, train_blocks, image_size=224, weights_path=None,
              random_weights=False, seed=0, checkpoint=None, workers=1, progress=True,
              conv_seed=None, targets=None):
    """Train `train_blocks` of VGG16 and the head of `config` (a stage-5 preset dict) on the
    images `paths` with `labels` (0 normal, 1 abnormal), `subset` "train" / "validation" (other
    values are left out). checkpoint: path of the checkpoint file (None: no checkpoints).
    conv_seed: seed of the random conv weights (random_weights; default `seed`).
    targets: with config["findings"] (K names), the (n, 1 + K) rows [label, y_1..y_K] of
    learning/train/findings.targets (-1: not known); the model then gives 2 + K logits.
    Returns (classifier model with the best epoch's weights, info dict)."""
    from learning.gradients import deterministic
    from learning.vgg import weights_identity

    train_blocks = train_blocks_type(",".join(str(b) for b in train_blocks))
    config = finetune_config(config)
    deterministic(seed)
    data = make_batches(paths, labels, subset, config, image_size, seed, workers, targets)
    conv_seed = seed if conv_seed is None else conv_seed
    weights_id = weights_identity(weights_path, random_weights, conv_seed)
    fingerprint = run_fingerprint(config, train_blocks, image_size, weights_id, seed, data)
    saved = read_checkpoint(checkpoint, fingerprint)
    model, scaling = build_model(train_blocks, config, image_size, weights_path, random_weights,
                                 seed, saved.state["scaling"] if saved else None, data.train,
                                 conv_seed)
    optimizer = compile_model(model, config, data.loss)
    variables = changing_variables(model)
    state, best = new_state(fingerprint, scaling), None
    if saved is not None:
        restore(saved, variables, optimizer)
        state, best = saved.state, saved.best
        if progress:
            log(f"cxr-train: resuming from {checkpoint} after epoch {state['epochs_done']}")
    resumed_from = state["epochs_done"]
    # as stage 5: with a validation subset and a patience, stop early and keep the best epoch
    track = data.val is not None and config["patience"] is not None
    run = SimpleNamespace(data=data, state=state, best=best, variables=variables,
                          optimizer=optimizer, checkpoint=checkpoint, progress=progress,
                          track=track, patience=config["patience"] if track else None,
                          epochs=config["epochs"])
    if state["epochs_done"] < config["epochs"] and not state["stopped"]:
        # shuffle=False: ImageBatches shuffles by (seed, epoch) itself; Keras' own shuffle of
        # the batch order draws from Python's global `random`, so a resumed run (fewer draws
        # before the epoch) would see another batch order than an uninterrupted one
        model.fit(data.train, initial_epoch=state["epochs_done"], epochs=config["epochs"],
                  verbose=0, callbacks=[epoch_callback(run)], shuffle=False)
    if run.best is not None:  # the lowest validation loss's epoch
        for variable, value in zip(variables, run.best):
            variable.assign(value)
    seconds, cpu = (state["history"][k] for k in ("seconds_per_image", "cpu_seconds_per_image"))
    return model, {
        "epochs_run": state["epochs_done"],
        "best_epoch": state["best_epoch"] if track else state["epochs_done"],
        "history": state["history"], "resumed_from_epoch": resumed_from,
        "n_train": len(data.train.paths), "n_validation": 0 if data.val is None else len(
            data.val.paths), "class_weights": data.class_weights, "train_blocks": list(train_blocks),
        "early_stopping": "lowest validation loss" if track else None,
        "seconds_per_image_epoch": float(np.median(seconds)) if seconds else None,
        "cpu_seconds_per_image_epoch": float(np.median(cpu)) if cpu else None,
        "scaling": scaling, "config": config, "weights": weights_id}
