"""The trained classifier as ONE Keras file, usable outside this pipeline: image -> logits.

Stage 5 calls `export_classifier` next to head.keras; the result, classifier.keras, is
    RGB pixels, float (N, S, S, 3) in 0..255 (S = the feature image size, 224 by default)
    -> VGG16 preprocessing (a fixed 1x1 convolution: RGB -> BGR minus the ImageNet mean,
       exactly keras.applications.vgg16.preprocess_input)
    -> the VGG16 conv base, rebuilt as the model's feature_params record it (layer, pooling,
       image size, weights: the file stage 3 used, or the same seeded random weights)
    -> whatever head stage 5 trained
    -> 2 pre-softmax logits [normal, abnormal]: the function stage 6 explains.
Built-in layers only, so plain `keras.models.load_model("classifier.keras")` loads it:

    import keras, numpy as np
    model = keras.models.load_model("data/model/classifier.keras")
    logits = model.predict(np.stack([rgb_224x224_uint8]).astype("float32"))  # (1, 2)
"""
import os
import shutil
import tempfile

import numpy as np

from scraper.cli import UserError

CLASSIFIER_FILE = "classifier.keras"
# ImageNet channel means in BGR order: keras.applications.imagenet_utils' "caffe" mode.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def preprocessing_layer(name="vgg16_preprocess"):
    """A frozen 1x1 Conv2D: out[..., c] = in[..., 2 - c] - mean_bgr[c]. Multiplications by
    exactly 1 and 0 keep it bit-identical to vgg.preprocess in float32."""
    import keras

    layer = keras.layers.Conv2D(3, 1, name=name, trainable=False)
    layer.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), np.float32)  # (kh, kw, in RGB, out BGR)
    for out_channel in range(3):
        kernel[0, 0, 2 - out_channel, out_channel] = 1.0
    layer.set_weights([kernel, -np.asarray(IMAGENET_BGR_MEAN, np.float32)])
    return layer


class NeedsWeights(UserError):
    """The features came from a weights file and none was given: no export, not an error."""


def check_weights(feature_params, weights_path=None):
    """(random_weights, seed) for rebuilding the conv base stage 3 used. Raises NeedsWeights
    when a weights file is needed and not given, UserError when the file given is missing or
    is not the one the features came from (its sha256 is in feature_params["weights"])."""
    from learning.vgg import weights_identity

    recorded = str((feature_params or {}).get("weights", ""))
    if recorded.startswith("random:seed="):
        return True, int(recorded.split("=", 1)[1])
    if not weights_path:
        raise NeedsWeights(f"the features came from the VGG16 weights {recorded[:23]}...; "
                           f"pass that file with --weights to export the classifier")
    given = weights_identity(weights_path)
    if given != recorded:
        raise UserError(f"--weights {weights_path} is not the VGG16 weights file stage 3 used "
                        f"({given[:23]}... vs {recorded[:23]}...)")
    return False, 0


def conv_base_for(feature_params, weights_path=None):
    """The conv base stage 3 used, rebuilt from the recorded feature_params."""
    from learning.vgg import build_conv_base

    random_weights, seed = check_weights(feature_params, weights_path)
    missing = [k for k in ("image_size", "layer", "pooling") if k not in feature_params]
    if missing:
        raise UserError(f"the features' parameters lack {', '.join(missing)}: cannot rebuild "
                        f"the conv base (re-run stage 3)")
    return build_conv_base(None if random_weights else weights_path, random_weights, seed,
                           int(feature_params["image_size"]), feature_params["layer"],
                           feature_params["pooling"])


def build_classifier(conv_base, head):
    """keras.Model: RGB pixels (N, S, S, 3) float -> logits (N, 2); S from the conv base."""
    import keras

    from learning.explain.attribution import build_full_model

    size = tuple(conv_base.input.shape[1:])  # (S, S, 3)
    made, expected = tuple(conv_base.output.shape[1:]), tuple(head.inputs[0].shape[1:])
    if made != expected:
        raise UserError(f"the conv base described by feature_params makes features of shape "
                        f"{made}, the head takes {expected}")
    pixels = keras.Input(shape=size, name="rgb_pixels_0_255")
    full = build_full_model(conv_base, head)  # preprocessed image -> logits, as stage 6
    return keras.Model(pixels, full(preprocessing_layer()(pixels)), name="cxr_classifier")


def without_optimizer(model):
    """The same layers and weights as an uncompiled functional model: saving it skips the
    optimizer state (Keras 3 ignores include_optimizer=False for .keras files; Adam's two
    moment estimates would double the file). Shares, does not copy, the weights."""
    import keras

    if getattr(model, "optimizer", None) is None:
        return model
    return keras.Model(model.input, model.output, name=model.name)  # same nesting as model


def save_keras(model, path):
    """Save `model` without optimizer state to `path` (.keras) atomically: Keras needs the
    .keras suffix, so it writes into a temp dir beside the target, then renames. Returns the
    file size in bytes."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".keras-", suffix=".part", dir=directory)
    try:
        tmp = os.path.join(tmp_dir, os.path.basename(path))
        without_optimizer(model).save(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return os.path.getsize(path)


def export_classifier(path, head, feature_params, weights_path=None):
    """Write the end-to-end model to `path` (atomically, see save_keras); returns its size."""
    # A nested compiled head would carry its optimizer state into the file: strip it.
    model = build_classifier(conv_base_for(feature_params, weights_path), without_optimizer(head))
    return save_keras(model, path)
