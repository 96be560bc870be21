"""The VGG16 convolutional base, its preprocessing and the identity of its weights.

Stage 3 (features) and stage 6 (attribution) both build the network here, so the features a
head was trained on and the network that is explained are the same function of the pixels.
"""
import os

from scraper.cli import UserError
from scraper.fileio import file_hash
from scraper.images import load_rgb

LAYERS = ("block5_pool", "block5_conv3", "block4_pool")
POOLINGS = ("none", "avg", "max")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048   # VGG16's five poolings need 32 px
PREPROCESSING = "keras.applications.vgg16.preprocess_input (caffe: RGB->BGR, minus ImageNet mean)"
# Keras' own VGG16 no-top weights (keras/src/applications/vgg16.py): URL and md5.
WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
               "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
WEIGHTS_HASH = "6d6bbae143d832006294945121d1f1fc"


def weights_identity(weights_path=None, random_weights=False, seed=0):
    """A string that changes whenever the conv weights change: 'sha256:<hex>' or 'random:seed=N'."""
    if random_weights:
        return f"random:seed={seed}"
    if not weights_path:
        raise UserError("no VGG16 weights given: pass the file from cxr-download-model, "
                        "or --random-weights for an offline smoke run")
    if not os.path.isfile(weights_path):
        raise UserError(f"VGG16 weights file not found: {weights_path} (run cxr-download-model "
                        f"first, or pass --random-weights for an offline smoke run)")
    return "sha256:" + file_hash(weights_path)


def build_conv_base(weights_path=None, random_weights=False, seed=0, image_size=224,
                    layer="block5_pool", pooling="none"):
    """VGG16 conv layers up to `layer`, optionally globally pooled.

    Input: preprocessed float32 (N, image_size, image_size, 3), see `preprocess`.
    Output: (N, h, w, C) for pooling "none" (7x7x512 at 224 px for block5_pool), else (N, C).
    Random weights are glorot-uniform kernels with zero biases, seeded: the same seed gives
    the same network, so features stay comparable between runs.
    """
    import keras

    if layer not in LAYERS:
        raise UserError(f"invalid layer {layer!r}; allowed: {', '.join(LAYERS)}")
    if pooling not in POOLINGS:
        raise UserError(f"invalid pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
    if image_size < 32:
        raise UserError(f"invalid image size {image_size}: VGG16 needs at least 32 pixels")
    if random_weights:
        keras.utils.set_random_seed(seed)
    full = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(image_size, image_size, 3))
    if not random_weights:
        weights_identity(weights_path)  # clear error if the file is missing
        try:
            load_weights(full, weights_path)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{weights_path} is not a VGG16 no-top weights file "
                            f"({type(error).__name__}: {str(error)[:160]})") from None
    output = full.get_layer(layer).output
    if pooling == "avg":
        output = keras.layers.GlobalAveragePooling2D(name="feature_pool")(output)
    elif pooling == "max":
        output = keras.layers.GlobalMaxPooling2D(name="feature_pool")(output)
    return keras.Model(full.input, output, name=f"vgg16_{layer}_{pooling}")


def load_weights(model, weights_path):
    """Load VGG16 weights from Keras' download (legacy HDF5 layout) or a Keras 3 weights file.

    Keras 3's `load_weights` picks the format from the file NAME: a legacy file saved as
    "vgg16.weights.h5" (the pipeline's default name) would be read as the new format and fail.
    So the layout is detected from the content: the legacy layout has a root `layer_names`
    attribute and one group per layer whose `weight_names` list the arrays in layer order
    (kernel, bias), whatever they are called (the 2016 file says "block1_conv1_W_1:0").
    """
    import h5py
    import numpy as np

    with h5py.File(weights_path, "r") as handle:
        if "layer_names" not in handle.attrs:
            legacy = False
        else:
            legacy = True
            names = [_text(n) for n in handle.attrs["layer_names"]]
            stored = {}
            for name in names:
                weight_names = [_text(w) for w in handle[name].attrs.get("weight_names", [])]
                if weight_names:
                    stored[name] = [np.asarray(handle[name][w]) for w in weight_names]
    if not legacy:
        model.load_weights(weights_path)
        return
    expected = [layer for layer in model.layers if layer.weights]
    missing = [layer.name for layer in expected if layer.name not in stored]
    if missing:
        raise ValueError(f"no weights for layer(s) {', '.join(missing[:3])}")
    for layer in expected:
        arrays = stored[layer.name]
        shapes = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != shapes:
            raise ValueError(f"layer {layer.name}: stored shapes {[a.shape for a in arrays]} "
                             f"do not fit {shapes}")
        layer.set_weights(arrays)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def preprocess(images_uint8):
    """(N, H, W, 3) uint8 RGB -> float32 in VGG16's caffe convention (what the weights expect)."""
    import numpy as np
    from keras.applications.vgg16 import preprocess_input

    return preprocess_input(np.asarray(images_uint8, dtype=np.float32).copy())


def load_image(path, image_size=224):
    """One X-ray as (image_size, image_size, 3) uint8 RGB; raises scraper.images.BadImage."""
    return load_rgb(path, image_size)
