"""DeepLIFT completeness (the guard against shap/TF internals breaking) and the other methods.

Like shap's test_deep.py: sum of attributions must equal f(x) - f(baseline) (assert_allclose),
on a tiny MLP and on VGG16-shaped Conv -> ReLU -> MaxPool -> Dense layers with random non-zero
biases and a non-zero baseline. Plain gradient x input fails the same test (the test has teeth).
"""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from learning.explain import attribution  # noqa: E402
from scraper.cli import UserError  # noqa: E402

RNG = np.random.default_rng(0)


def _bias():
    return keras.initializers.RandomNormal(mean=0.1, stddev=0.3, seed=3)


@pytest.fixture(scope="module")
def mlp():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(12, activation="relu", bias_initializer=_bias())(h)
    out = keras.layers.Dense(2, bias_initializer=_bias())(h)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def vgg_like():
    """Two VGG-style blocks (conv-relu x2 / conv-relu, max-pool) + flatten-dense-relu-dense(2)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer=_bias())(inp)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer=_bias())(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer=_bias())(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(10, activation="relu", bias_initializer=_bias())(h)
    out = keras.layers.Dense(2, bias_initializer=_bias())(h)
    return keras.Model(inp, out)


def _data(shape, n=3):
    x = RNG.normal(0.5, 1.0, (n,) + shape).astype(np.float32)
    b = RNG.normal(-0.3, 0.5, (n,) + shape).astype(np.float32)  # non-zero, per-image baselines
    return x, b


def _complete(target, attrs, x, b):
    sums = attrs.reshape(len(x), -1, attrs.shape[-1]).sum(1)
    expected = target.predict(x, verbose=0) - target.predict(b, verbose=0)
    return sums, expected


@pytest.mark.parametrize("postprocess", ["difference", "original"])
def test_deeplift_completeness_tiny(mlp, postprocess):
    target = attribution.build_target_model(mlp, postprocess)
    x, b = _data((6, 6, 3))
    attrs = attribution.DeepLift(target).attribute(x, b)
    assert attrs.shape == x.shape + (1 if postprocess == "difference" else 2,)
    sums, expected = _complete(target, attrs, x, b)
    np.testing.assert_allclose(sums, expected, atol=1e-5, rtol=1e-5)
    assert np.abs(expected).min() > 0.01  # a real difference was explained


def test_deeplift_completeness_vgg_shaped_and_gradient_times_input_fails(vgg_like):
    target = attribution.build_target_model(vgg_like, "original")
    x, b = _data((16, 16, 3))
    attrs = attribution.DeepLift(target).attribute(x, b)
    sums, expected = _complete(target, attrs, x, b)
    np.testing.assert_allclose(sums, expected, atol=1e-5, rtol=1e-5)

    # gradient x (input - baseline) on the same network and data is NOT complete
    naive = np.stack([attribution._gradients(target, x, o) * (x - b) for o in range(2)], -1)
    naive_sums, _ = _complete(target, naive, x, b)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(naive_sums, expected, atol=1e-5, rtol=1e-5)
    deltas, scale = attribution.completeness_deltas(naive, target.predict(x, verbose=0),
                                                    target.predict(b, verbose=0))
    with pytest.raises(UserError, match="break completeness"):
        attribution.check_completeness(deltas, scale, ["a", "b", "c"])


def test_global_max_pooling_is_complete():
    """shap mis-handles GlobalMaxPooling2D (completeness broke); ours applies the max rule."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", bias_initializer=_bias())(inp)
    out = keras.layers.Dense(2, bias_initializer=_bias())(keras.layers.GlobalMaxPooling2D()(h))
    target = attribution.build_target_model(keras.Model(inp, out), "original")
    x, b = _data((6, 6, 3), n=3)
    attrs = attribution.DeepLift(target).attribute(x, b)
    sums, expected = _complete(target, attrs, x, b)
    np.testing.assert_allclose(sums, expected, atol=1e-5, rtol=1e-5)


def test_unsupported_layer_is_refused_in_one_line():
    inp = keras.Input((6, 6, 3))
    h = keras.layers.LayerNormalization()(keras.layers.Conv2D(2, 3)(inp))
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    target = attribution.build_target_model(keras.Model(inp, out), "difference")
    with pytest.raises(UserError, match="DeepLIFT cannot explain layer .*LayerNormalization"):
        attribution.DeepLift(target)


def test_batched_deeplift_equals_shap_one_at_a_time(vgg_like):
    import shap

    target = attribution.build_target_model(vgg_like, "difference")
    x, b = _data((16, 16, 3), n=2)
    batched = attribution.DeepLift(target).attribute(x, b)
    with attribution.quiet_keras():
        for k in range(2):
            single = shap.DeepExplainer(target, b[k:k + 1]).shap_values(x[k:k + 1])
            np.testing.assert_allclose(batched[k], single[0], atol=1e-5)


def test_integrated_gradients_nearly_complete(vgg_like):
    target = attribution.build_target_model(vgg_like, "difference")
    x, b = _data((16, 16, 3), n=2)
    attrs = attribution.integrated_gradients(target, x, b, steps=64)
    sums, expected = _complete(target, attrs, x, b)
    np.testing.assert_allclose(sums, expected, rtol=0.05, atol=0.02)


def test_other_methods_shapes_and_signs(vgg_like):
    target = attribution.build_target_model(vgg_like, "original")
    x, b = _data((16, 16, 3), n=2)
    cam = attribution.grad_cam(target, x)
    sal = attribution.saliency(target, x)
    occ = attribution.occlusion(target, x, b, patch=4)
    for maps in (cam, sal, occ):
        assert maps.shape == (2, 16, 16, 2)
        assert np.isfinite(maps).all()
    assert cam.min() >= 0 and sal.min() >= 0 and sal.max() > 0


def test_occlusion_known_answer_on_linear_model():
    """f(x) = sum of channel 0; zero baseline: the drop of each 2x2 patch is its pixel sum."""
    inp = keras.Input((4, 4, 3))
    flat = keras.layers.Flatten()(inp)
    dense = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(inp, dense(flat))
    kernel = np.zeros((48, 1), np.float32)
    kernel[0::3] = 1.0
    dense.set_weights([kernel])
    x = np.zeros((1, 4, 4, 3), np.float32)
    x[0, 0, 0, 0] = 8.0
    occ = attribution.occlusion(model, x, np.zeros_like(x), patch=2, stride=2)
    expected = np.zeros((4, 4))
    expected[:2, :2] = 8.0  # only the top-left patch covers the bright pixel
    np.testing.assert_allclose(occ[0, ..., 0], expected)


def test_postprocess_original_formula():
    maps = np.array([[[[2.0, 3.0], [-1.0, 1.0], [0.5, 0.2]]]])  # (1, 1, 3, 2): normal, abnormal
    signed, shown = attribution.postprocess_maps(maps, "original")
    np.testing.assert_allclose(shown[0, 0], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(signed[0, 0], [1.0, 1.0, -0.3])
    signed, shown = attribution.postprocess_maps(maps[..., :1], "difference")
    np.testing.assert_allclose(shown[0, 0], [2.0, 0.0, 0.5])


def test_parse_methods_and_baselines():
    assert attribution.parse_methods(["deeplift,saliency", "grad-cam", "saliency"]) == (
        "deeplift", "saliency", "grad-cam")
    assert attribution.parse_methods(None) == ("deeplift",)
    with pytest.raises(UserError, match="invalid method 'lime'"):
        attribution.parse_methods(["lime"])
    images = np.full((2, 8, 8, 3), 200, np.uint8)
    images[:, :4] = 0
    assert not attribution.make_baselines(images, "black").any()
    np.testing.assert_allclose(attribution.preprocess_float(
        attribution.make_baselines(images, "mean")), 0, atol=1e-4)
    blur = attribution.make_baselines(images, "blur")
    assert blur.shape == images.shape and 0 < blur[0, 4, 4, 0] < 200


def _with_biases(model, seed):
    """Random non-zero biases everywhere (random VGG16 weights come with zero biases)."""
    rng = np.random.default_rng(seed)
    for layer in deeplift_layers(model):
        if getattr(layer, "bias", None) is not None:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.05, 0.1, bias.shape).astype(np.float32)])
    return model


def deeplift_layers(model):
    from learning.explain.deeplift import leaf_layers

    return list(leaf_layers(model))


def _shap_oracle(target, x, b):
    """shap.DeepExplainer one image at a time (its public API) against that image's baseline."""
    import shap

    with attribution.quiet_keras():
        return np.concatenate([shap.DeepExplainer(target, b[k:k + 1]).shap_values(x[k:k + 1])
                               for k in range(len(x))])


def _assert_equals_shap(target, x, b):
    ours = attribution.DeepLift(target).attribute(x, b)
    oracle = _shap_oracle(target, x, b)
    scale = np.abs(oracle).max()
    assert scale > 0
    np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-4 * scale)
    sums, expected = _complete(target, ours, x, b)
    np.testing.assert_allclose(sums, expected, rtol=1e-3, atol=1e-5)
    return ours


def _xray_like(size, n=2, black=False):
    """Preprocessed images and baselines: non-black per-image (blurred-looking) ones, or the
    black one, with the images' left third black as X-ray borders are (there x == baseline
    exactly, and shap's thresholds decide)."""
    from learning.vgg import preprocess

    pixels = RNG.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    if black:
        pixels[:, :, :size // 3] = 0
        return preprocess(pixels), preprocess(np.zeros_like(pixels))
    baselines = (0.5 * pixels + 40 + RNG.normal(0, 5, pixels.shape)).astype(np.float32)
    return preprocess(pixels), preprocess(baselines)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="shap is TensorFlow-only")
@pytest.mark.parametrize("black", [False, True])
def test_deeplift_equals_shap_on_vgg16_with_dense_head(black):
    """The full VGG16 conv base (all 13 convs, 5 max-pools) + flatten-dense head, non-zero
    biases, non-black per-image baselines (and the black one, with black image borders):
    ours == shap.DeepExplainer within 1e-4 relative."""
    from learning.vgg import build_conv_base

    conv = _with_biases(build_conv_base(random_weights=True, seed=0, image_size=64), 1)
    keras.utils.set_random_seed(2)
    head = keras.Sequential([keras.Input(conv.output.shape[1:]), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu", bias_initializer=_bias()),
                             keras.layers.Dense(2, bias_initializer=_bias())])
    target = attribution.build_target_model(attribution.build_full_model(conv, head), "original")
    x, b = _xray_like(64, black=black)
    _assert_equals_shap(target, x, b)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="shap is TensorFlow-only")
def test_deeplift_equals_shap_on_block4_base_with_fine_tuned_block5_head():
    """The head shape issue 10 moves to: block4_pool features -> a nested model with
    Rescaling, Conv2D + MaxPooling2D (block5), GlobalAveragePooling2D, Dropout, Dense."""
    from learning.vgg import build_conv_base

    conv = _with_biases(build_conv_base(random_weights=True, seed=0, image_size=32,
                                        layer="block4_pool"), 3)
    keras.utils.set_random_seed(5)
    inp = keras.Input(conv.output.shape[1:])
    h = keras.layers.Rescaling(0.5)(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer=_bias())(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.3)(h)
    head = keras.Model(inp, keras.layers.Dense(2, bias_initializer=_bias())(h))
    target = attribution.build_target_model(attribution.build_full_model(conv, head),
                                            "difference")
    x, b = _xray_like(32)
    _assert_equals_shap(target, x, b)


def test_shared_baseline_gives_the_same_attributions_as_per_image_copies(vgg_like):
    """A shared baseline runs the reference once per batch; the result must not change."""
    target = attribution.build_target_model(vgg_like, "original")
    x, b = _data((16, 16, 3), n=3)
    deeplift = attribution.DeepLift(target)
    shared = deeplift.attribute(x, np.repeat(b[:1], 3, axis=0))
    # the same baseline, but made to look per-image by a difference below float resolution
    copies = np.repeat(b[:1], 3, axis=0)
    copies[1:, 0, 0, 0] = np.nextafter(copies[1:, 0, 0, 0], np.float32(np.inf))
    np.testing.assert_allclose(shared, deeplift.attribute(x, copies), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="shap is TensorFlow-only")
def test_deeplift_equals_shap_on_real_xrays_with_black_borders_and_baseline():
    """Real X-rays have black borders, equal to the black baseline: there every layer must see
    exactly equal values for x and the reference (a surrogate whose forward value is off by
    rounding was 1.5e-4 off shap here, 5e-2 at 224 px)."""
    from learning.vgg import build_conv_base, load_image, preprocess

    demo = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24", "images")
    names = sorted(os.listdir(demo))[:2]
    pixels = np.stack([load_image(os.path.join(demo, name), 64) for name in names])
    conv = build_conv_base(random_weights=True, seed=0, image_size=64)
    keras.utils.set_random_seed(1)
    head = keras.Sequential([keras.Input(conv.output.shape[1:]), keras.layers.Flatten(),
                             keras.layers.Dense(64, activation="relu"), keras.layers.Dense(2)])
    target = attribution.build_target_model(attribution.build_full_model(conv, head),
                                            "difference")
    _assert_equals_shap(target, preprocess(pixels), preprocess(np.zeros_like(pixels)))


@pytest.mark.parametrize("postprocess", ["difference", "original"])
def test_explain_batch_makes_one_pass_and_equals_the_target_models_maps(postprocess):
    """Stage 6's Explainer.explain_batch takes the logits from Grad-CAM's own pass and combines
    the per-logit channel weights: the same maps as Grad-CAM on the target model, the same
    logits as a plain forward pass; DeepLIFT's completeness holds with the run-wide baseline."""
    from learning.export import build_classifier
    from learning.vgg import build_conv_base

    conv = _with_biases(build_conv_base(random_weights=True, seed=0, image_size=32), 1)
    keras.utils.set_random_seed(4)
    head = keras.Sequential([keras.Input(conv.output.shape[1:]), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="relu", bias_initializer=_bias()),
                             keras.layers.Dense(2, bias_initializer=_bias())])
    pixels = build_classifier(conv, head)
    explainer = attribution.Explainer(pixels, postprocess, ("grad-cam", "deeplift"), "black", 32)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    logits, maps = explainer.explain_batch(images, ["a", "b", "c"])
    x = images.astype(np.float32)
    np.testing.assert_allclose(logits, attribution.forward(pixels, x), rtol=1e-5, atol=1e-5)
    expected = attribution.postprocess_maps(attribution.grad_cam(explainer.target, x),
                                            postprocess)[0]
    np.testing.assert_allclose(maps["grad-cam"][0], expected, rtol=1e-4, atol=1e-6)
    assert maps["grad-cam"][2] is None and (maps["deeplift"][2] < 1e-3).all()
    again = explainer.explain_batch(images[:1], ["a"])[1]  # the cached baseline logits
    np.testing.assert_allclose(again["deeplift"][0][0], maps["deeplift"][0][0], rtol=1e-5,
                               atol=1e-6)


def test_exact_float32_turns_tf32_off():
    """On GPUs TF32 matmuls broke DeepLIFT's completeness (0.19 relative, measured on an
    H200): stage 6 asks every backend for full float32 before it builds the model."""
    from learning import gradients

    gradients.exact_float32()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    elif keras.backend.backend() == "jax":
        import jax

        assert jax.config.jax_default_matmul_precision == "highest"
