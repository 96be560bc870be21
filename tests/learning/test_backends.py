"""Stages 3, 5 and 6 under KERAS_BACKEND=jax (and torch when installed) agree with TensorFlow.

A process has one Keras backend, so each other backend runs tests/learning/backend_worker.py in
a subprocess on files made here under TensorFlow: the same VGG16 weights file, 3 demo X-rays, a
head saved under TensorFlow. Checked: stage 3 features equal TensorFlow's within 1e-4 relative;
the TensorFlow-saved head loads there and gives the same logits; a head trained there (stage 5)
loads here; DeepLIFT is complete on every image and equals TensorFlow's; stage 6 runs end to
end. Marked `backend` (deselect with -m "not backend"); about a minute per backend.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from learning import transfer_feature_extraction  # noqa: E402
from learning.explain import attribution  # noqa: E402
from learning.learning_examples_preparing import load_features  # noqa: E402
from learning.vgg import build_conv_base  # noqa: E402

pytestmark = pytest.mark.backend
DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24", "images")
WORKER = os.path.join(os.path.dirname(__file__), "backend_worker.py")
BACKENDS = [name for name in ("jax", "torch") if importlib.util.find_spec(name)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Files made under TensorFlow: weights, images, a head with biases, inputs."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference side runs under TensorFlow")
    work = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    for layer in vgg.layers:
        if layer.weights:   # non-zero biases, so that biases are part of the comparison
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.05, 0.1, bias.shape).astype(np.float32)])
    vgg.save_weights(str(work / "vgg16.weights.h5"))
    (work / "images").mkdir()
    for name in sorted(os.listdir(DEMO))[:3]:
        shutil.copy(os.path.join(DEMO, name), work / "images" / name)
    conv = build_conv_base(str(work / "vgg16.weights.h5"), image_size=32)
    head = keras.Sequential([keras.Input(conv.output.shape[1:]), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu",
                                                bias_initializer="random_normal"),
                             keras.layers.Dropout(0.2),
                             keras.layers.Dense(2, bias_initializer="random_normal")])
    head.save(str(work / "tf_head.keras"))
    from learning.vgg import preprocess

    pixels = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.savez(work / "inputs.npz", x=preprocess(pixels), b=preprocess(0.5 * pixels + 30),
             features=rng.normal(size=(3,) + tuple(conv.output.shape[1:])).astype(np.float32),
             small_features=rng.normal(size=(4, 2, 2, 8)).astype(np.float32))
    stats = transfer_feature_extraction.extract_features(
        work / "images", work / "tf_features.pickle", weights_path=str(work / "vgg16.weights.h5"),
        image_size=32, layer="block5_pool", batch_size=2, progress=False,
        feature_dtype="float32")
    assert stats.computed == 3
    return work


def _run_worker(work, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, WORKER, str(work)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(work / backend / "outputs.npz")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stages_under_another_backend_agree_with_tensorflow(work, backend):
    theirs = _run_worker(work, backend)

    # stage 3: the same features from the same weights file, within 1e-4 relative
    tf_names, tf_features, tf_params = load_features(work / "tf_features.pickle")
    names, features, params = load_features(work / backend / "features.pickle")
    assert names == tf_names and params == tf_params
    scale = np.abs(tf_features).max()
    assert scale > 0
    np.testing.assert_allclose(features, tf_features, rtol=1e-4, atol=1e-4 * scale)

    # a head saved under TensorFlow gives the same logits there
    head = keras.models.load_model(str(work / "tf_head.keras"))
    inputs = np.load(work / "inputs.npz")
    np.testing.assert_allclose(theirs["tf_head_logits"], attribution.forward(
        head, inputs["features"]), rtol=1e-4, atol=1e-5)

    # a head trained (stage 5) and saved there loads here and gives the same logits
    trained = keras.models.load_model(str(work / backend / "model" / "head.keras"))
    np.testing.assert_allclose(attribution.forward(trained, inputs["small_features"]),
                               theirs["trained_logits"], rtol=1e-4, atol=1e-5)

    # DeepLIFT there: complete on every image, and equal to DeepLIFT here
    deltas, expected = attribution.completeness_deltas(theirs["deeplift"], theirs["f_x"],
                                                       theirs["f_b"])
    assert (deltas <= 1e-3 * expected).all() and expected.min() > 1e-3
    conv = build_conv_base(str(work / "vgg16.weights.h5"), image_size=32)
    target = attribution.build_target_model(attribution.build_full_model(conv, head), "original")
    here = attribution.DeepLift(target).attribute(inputs["x"], inputs["b"])
    scale = np.abs(here).max()
    np.testing.assert_allclose(theirs["deeplift"], here, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(theirs["saliency"], attribution.saliency(target, inputs["x"]),
                               rtol=1e-3, atol=1e-4 * np.abs(theirs["saliency"]).max())
    np.testing.assert_allclose(theirs["grad_cam"], attribution.grad_cam(target, inputs["x"]),
                               rtol=1e-3, atol=1e-4 * np.abs(theirs["grad_cam"]).max() + 1e-12)

    # stage 6 ran end to end there (its own completeness check passed on every image)
    assert (work / backend / "stage6" / "results" / "index.html").exists()
