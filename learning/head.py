"""The classifier head stacked on the frozen VGG16 conv features, built from built-in Keras layers.

Input: stage-3 features, float32 (N, 7, 7, 512) for block5_pool, (N, 14, 14, 512) for
block4_pool (or (N, C) when pooled). Output: 2 logits
[normal, abnormal], NO softmax: attribution (stage 6) explains pre-softmax logits, and training
uses losses with from_logits=True. With stage 5's --findings (config "findings", K names) the
same layer gives 2 + K logits [normal, abnormal, f_1..f_K]: the first two as before, each
further one a finding's sigmoid logit (learning/train/findings.py). Only built-in layers, so stage 6 loads head.keras with
keras.models.load_model and no custom objects, and calls it on the conv base's output.

Presets (`--head`):
- "original": the 2018 original - flatten -> dense 2048 tanh -> 2; Adam 1e-5, 10 epochs, no
  class weights, no early stopping.
- "default": the same capacity with choices measured on the nih-cxr-1000 validation subset
  (see PRESETS["default"]["why"] and README's "Head" note).
- "cam" (the pipeline's default): a class-activation-map head for a feature grid: [scale] ->
  ring mask (3 cells of the 14x14 grid) -> 1x1 conv (128, relu) -> global average pooling ->
  dropout -> dense 2, trained with grid flips/shifts. Its 1x1 conv is the last conv layer, so
  Grad-CAM maps sit on the feature grid (14x14 on block4_pool at 224 px). Chosen by
  benchmarks/bench_localization.py (see its MEASURED table): with ImageNet weights its Grad-CAM
  puts more attribution inside expert boxes than a lung-field prior, but its pointing game
  does not beat that prior.
- "block5": fine-tunes VGG16's block5 (block5_conv1-3, initialised from the same VGG16 weights
  as stage 3, or the same seeded random ones) on block4_pool features -> global average
  pooling -> dropout -> dense 2. Stage 3 still computes the features (up to block4_pool);
  stage 5 trains the head, block5 included. Needs the VGG16 weights file at stage 5.

Regularisation against shortcuts (training only, so the saved model is unchanged by it):
"grid_augment" flips feature grids horizontally and shifts them by up to one cell (zero fill),
see `augment_grid`; "ring_mask" = r (part of the model) zeroes the outer r rings of grid cells, where
film borders, collimation edges and burned-in markers sit, with built-in Cropping2D +
ZeroPadding2D layers (DeepLIFT treats both as linear).
"""
import numpy as np

PRESETS = {
    "original": {
        "activation": "tanh", "dropout": 0.0, "input_dropout": 0.0, "input_scaling": "none",
        "epochs": 10, "batch_size": 32, "learning_rate": 1e-5, "class_weights": False,
        "patience": None, "hidden": 2048,
        "why": "reproduces the 2018 original (tanh, Adam 1e-5, 10 epochs, no class weights)",
    },
    "default": {
        "activation": "relu", "dropout": 0.2, "input_dropout": 0.0, "input_scaling": "global",
        "epochs": 40, "batch_size": 32, "learning_rate": 1e-4, "class_weights": True,
        "patience": 8, "hidden": 2048,
        "why": "grouped 5-fold CV AUROC on nih-cxr-1000's training part: see MEASURED in head.py",
    },
    "cam": {
        "kind": "cam", "activation": "relu", "dropout": 0.2, "input_dropout": 0.0,
        "input_scaling": "global", "epochs": 40, "batch_size": 32, "learning_rate": 1e-3,
        "class_weights": True, "patience": 8, "hidden": 128, "grid_augment": True,
        "grid_shift": 1, "ring_mask": 3,
        "why": "best localization measured (benchmarks/bench_localization.py, cam-aug-r3): "
               "grid flips/shifts and a 3-cell ring mask against film-border shortcuts",
    },
    "block5": {
        "kind": "block5", "activation": "relu", "dropout": 0.2, "input_dropout": 0.0,
        "input_scaling": "none", "epochs": 20, "batch_size": 32, "learning_rate": 3e-5,
        "class_weights": True, "patience": 5, "hidden": 512, "grid_augment": False,
        "ring_mask": False,
        "why": "fine-tunes block5 from the VGG16 weights; see bench_localization.py",
    },
}
INPUT_SCALINGS = ("none", "global", "standardize")
KINDS = ("flatten", "cam", "block5")
BLOCK5_LAYERS = ("block5_conv1", "block5_conv2", "block5_conv3")


def head_kind(config):
    """The architecture family of a preset / config dict ("flatten" for the 2018 presets)."""
    return config.get("kind", "flatten")


def needs_conv_weights(config):
    """True when the head starts from VGG16 weights (block5) and stage 5 must read them."""
    return head_kind(config) == "block5"


def block5_weights(weights_path=None, random_weights=False, seed=0):
    """[kernel, bias] x 3 of VGG16's block5 convs, from the weights file or seeded random init.

    Random init is the same as stage 3's for the same seed (vgg.build_conv_base seeds Keras and
    builds the whole VGG16 in the same order), so a random-weights pipeline stays consistent.
    """
    from learning.vgg import build_conv_base

    base = build_conv_base(weights_path, random_weights, seed, image_size=32,
                           layer="block5_pool")
    return [base.get_layer(name).get_weights() for name in BLOCK5_LAYERS]


def augment_grid(features, rng, max_shift=1):
    """Random horizontal flip (p = 0.5) and shift by up to `max_shift` cells (zero fill) of
    each feature grid (N, h, w, C) -> a new array; for training only (a shortcut regulariser:
    side markers and border positions stop being fixed cues). config["grid_shift"] counts
    cells of the 14x14 grid; stage 5 scales it with grid_cells."""
    out = np.array(features, copy=True)
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    if max_shift:
        for i, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, size=(len(out), 2))):
            if dy or dx:
                out[i] = _shift(out[i], dy, dx)
    return out


def _shift(grid, dy, dx):
    """(h, w, C) grid moved by (dy, dx) cells, vacated cells zero."""
    shifted = np.zeros_like(grid)
    h, w = grid.shape[:2]
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    shifted[dst_y, dst_x] = grid[src_y, src_x]
    return shifted

# MEASURED (how the "default" preset was chosen; the test set was never used). Data: the 900
# training images of nih-cxr-1000 (stage 4, seed 0; random-weights VGG16 block5_pool features,
# fp32), grouped (patient) stratified 5-fold cross-validation; inside each fold a grouped 10%
# early-stopping split; mean AUROC over 5 folds x 3 seeds (+- std over the 15 runs). The search
# ran a line-for-line torch mirror of train_head on a GPU (same init, Adam eps, class weights,
# early stopping) because the 2 shared CPU cores need ~1 min per Keras epoch; the final preset
# was then run in Keras by benchmarks/bench_quality.py.
#   logistic regression (StandardScaler, C=1 / C=0.01)          0.851 +- 0.020 / 0.857 +- 0.019
#   original: tanh, no dropout, Adam 1e-5, 10 epochs, no weights  0.857 +- 0.015
#   relu, dropout 0.5, global scale, Adam 1e-4, patience 8        0.861 +- 0.018
#   ... same with tanh (1 seed)                                   0.763 +- 0.079 (unstable)
#   ... same, per-feature standardisation (1 seed)                0.836 +- 0.025 (overfits fast)
#   ... same, no input scaling                                    0.869 +- 0.019
#   ... same, dropout 0.0                                         0.874 +- 0.015
#   ... same, dropout 0.2  <- chosen                              0.874 +- 0.017 (best epochs 6-38)
#   ... same, dropout 0.0, Adam 3e-5                              0.874 +- 0.017
#   ... dropout 0.2, patience 5                                   0.872 +- 0.018
# Then, once, on the held-out test split (100 images, 76 patients; benchmarks/bench_quality.py,
# Keras on CPU, seed 0), test AUROC [grouped-bootstrap 95% CI] / accuracy:
#   default 0.925 [0.868, 0.971] / 0.80 (19 epochs, kept 11; validation AUROC 0.912)
#   original 0.911 [0.853, 0.962] / 0.83;  logistic regression 0.906 [0.842, 0.958] / 0.85;
#   majority class 0.5 / 0.50. The intervals overlap: on 100 test images the default does not
#   lose to logistic regression, but it is not shown to beat it either.
# Class weights change nothing on this balanced set (0.866 vs 0.867, 1 seed); they are kept
# because Open-i is about 1/3 normal. relu over tanh: tanh saturates on the un-normalised
# 25,088 inputs. Global scaling (one multiply, 1/std of the training features) over none: the
# same AUROC within noise, but the head no longer depends on the features' raw scale (ImageNet
# weights give values ~100x larger than random ones).


def input_scaling_stats(features, input_scaling):
    """Statistics of the training features the head bakes in (so raw features go in at use).

    "global": one scalar, 1 / std of all training feature values (keeps the layer a plain
    multiplication, trivially linear for DeepLIFT); "standardize": per-feature mean and variance
    (keras Normalization); "none": nothing. Computed in blocks (learning.store.dataset, the one
    implementation stage 5 also uses on streamed rows).
    """
    from learning.store.dataset import ArraySource, source_scaling_stats

    if input_scaling not in INPUT_SCALINGS:
        raise ValueError(f"invalid input scaling {input_scaling!r}; allowed: "
                         f"{', '.join(INPUT_SCALINGS)}")
    features = np.asarray(features)
    return source_scaling_stats(ArraySource(features), np.arange(len(features)), input_scaling)


def n_outputs(config):
    """Logits of the head: [normal, abnormal] plus one per finding of config["findings"]
    (stage 5's --findings; learning/train/findings.py)."""
    return 2 + len(config.get("findings") or ())


def build_from_config(feature_shape, config, scaling_stats=None, conv_weights=None):
    """The head a preset / config dict describes (see PRESETS); conv_weights for "block5"."""
    kind = head_kind(config)
    if kind not in KINDS:
        raise ValueError(f"invalid head kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "flatten":
        return build_head(feature_shape, activation=config["activation"],
                          dropout=config["dropout"], hidden=config["hidden"],
                          input_scaling=config["input_scaling"], scaling_stats=scaling_stats,
                          input_dropout=config.get("input_dropout", 0.0),
                          outputs=n_outputs(config))
    if len(feature_shape) != 3:
        raise ValueError(f"the {kind!r} head needs a feature grid (h, w, C), got features of "
                         f"shape {tuple(feature_shape)}; use stage 3 with --pooling none")
    return build_grid_head(feature_shape, kind, dropout=config["dropout"],
                           hidden=config["hidden"], input_scaling=config["input_scaling"],
                           scaling_stats=scaling_stats, conv_weights=conv_weights,
                           ring_mask=config.get("ring_mask", False), outputs=n_outputs(config))


def ring_cells(ring_mask, grid_shape):
    """Rings to zero on a grid of grid_shape (h, w): ring_mask counts cells of the 14x14
    block4_pool grid of a 224-px image and scales with the grid (28x28 at 448 px: twice as
    many); at least one cell always stays. 0 / False: no mask."""
    side = min(grid_shape)
    return max(0, min(grid_cells(ring_mask, side), (side - 1) // 2))


def grid_cells(cells_at_14, side):
    """A number of cells of the 14x14 grid (224 px, block4_pool) on a grid of `side` cells."""
    return int(round(float(cells_at_14 or 0) * side / 14.0))


def build_grid_head(feature_shape, kind, dropout=0.2, hidden=128, input_scaling="none",
                    scaling_stats=None, conv_weights=None, ring_mask=False, outputs=2):
    """Grid features (N, h, w, C) -> logits (N, outputs) through conv layers and global
    average pooling, so the last conv layer's channels weighted by the dense layer form a class
    activation map on the (h, w) grid (one per output: per finding with --findings).

    kind "cam": [scale] -> [ring mask] -> 1x1 conv (hidden, relu) -> GAP -> [dropout] -> dense 2.
    kind "block5": [ring mask] -> block5_conv1-3 (3x3, 512, relu; conv_weights = their
    [kernel, bias] from `block5_weights`) -> GAP -> [dropout] -> dense 2.
    """
    import keras

    inputs = keras.Input(shape=tuple(feature_shape), name="features")
    x = inputs
    if input_scaling == "global":
        x = keras.layers.Rescaling(scaling_stats["scale"], name="input_scale")(x)
    elif input_scaling != "none":
        raise ValueError(f"input scaling {input_scaling!r} is not supported by the {kind!r} "
                         f"head; allowed: none, global")
    ring = ring_cells(ring_mask, feature_shape[:2])
    if ring:  # zero the outer ring(s) of cells: (N, h, w, C) -> (N, h - 2r, w - 2r, C) -> back
        x = keras.layers.Cropping2D(ring, name="ring_crop")(x)
        x = keras.layers.ZeroPadding2D(ring, name="ring_pad")(x)
    if kind == "cam":
        x = keras.layers.Conv2D(hidden, 1, activation="relu", name="cam_conv")(x)  # (N, h, w, K)
    elif kind == "block5":
        if conv_weights is None or len(conv_weights) != len(BLOCK5_LAYERS):
            raise ValueError("the block5 head needs the three block5 conv weights")
        for name, weights in zip(BLOCK5_LAYERS, conv_weights):
            conv = keras.layers.Conv2D(512, 3, padding="same", activation="relu", name=name)
            x = conv(x)  # (N, h, w, 512)
            conv.set_weights(weights)
    else:
        raise ValueError(f"invalid grid head kind {kind!r}; allowed: cam, block5")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)  # (N, K)
    if dropout:
        x = keras.layers.Dropout(dropout, name="gap_dropout")(x)
    # (N, 2 + K) [normal, abnormal, finding_1..K], pre-softmax / pre-sigmoid
    logits = keras.layers.Dense(outputs, name="logits")(x)
    return keras.Model(inputs, logits, name=f"cxr_head_{kind}")


def build_head(feature_shape, activation="relu", dropout=0.5, hidden=2048, input_scaling="none",
               scaling_stats=None, input_dropout=0.0, outputs=2):
    """A keras.Model mapping features (N, *feature_shape) -> logits (N, outputs): 2 =
    [normal, abnormal], plus one sigmoid logit per finding with --findings.

    Layers: [scale] -> flatten -> [input dropout] -> dense(hidden, activation) -> [dropout]
    -> dense(2).
    """
    import keras

    inputs = keras.Input(shape=tuple(feature_shape), name="features")
    x = inputs
    if input_scaling == "global":
        x = keras.layers.Rescaling(scaling_stats["scale"], name="input_scale")(x)
    elif input_scaling == "standardize":
        x = keras.layers.Normalization(axis=tuple(range(1, len(feature_shape) + 1)),
                                       mean=scaling_stats["mean"],
                                       variance=scaling_stats["variance"],
                                       name="input_standardize")(x)
    x = keras.layers.Flatten(name="flatten")(x)  # (N, 7 * 7 * 512) = (N, 25088)
    if input_dropout:
        x = keras.layers.Dropout(input_dropout, name="input_dropout")(x)
    x = keras.layers.Dense(hidden, activation=activation, name="hidden")(x)  # (N, 2048)
    if dropout:
        x = keras.layers.Dropout(dropout, name="hidden_dropout")(x)
    logits = keras.layers.Dense(outputs, name="logits")(x)  # (N, 2 [+ K]), pre-softmax
    return keras.Model(inputs, logits, name="cxr_head")
