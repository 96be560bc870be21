"""Attribution maps for the image -> logits model: DeepLIFT and four other methods.

Used by stage 6 (learning/visualization.py); pure functions, no files written here.

The explained model takes RGB pixels, float (N, S, S, 3) in 0..255, and returns the
pre-softmax logits [normal, abnormal]: stage 5's classifier.keras, or the same stack rebuilt
from head.keras (learning/explain/model.py). Its first layer is VGG16's preprocessing (a fixed
1x1 convolution: RGB -> BGR minus the ImageNet mean, slope 1), so attributions w.r.t. the
pixels equal those w.r.t. the preprocessed input. Baselines are pixel images (black = all
zeros, exactly the original's reference after preprocessing). Grad-CAM's conv layer is the
last Conv2D found anywhere inside the model (nested models included): the cam head's 1x1 conv,
a fine-tuned block5_conv3, or VGG16's last conv layer.

Target (the `postprocess` choice decides which logits are explained):
  difference (default)  one output, logit_abnormal - logit_normal. softmax p_abnormal =
                        sigmoid(that difference), so it is exactly the quantity that moves the
                        prediction; evidence for "normal" counts against; completeness holds for
                        the shown signed map; and it costs half of explaining both logits.
                        Shown map: max(attr_diff, 0).
  original              both logits, then the original's max(attr_abnormal - max(attr_normal, 0), 0).
  abnormal              one output, logit_abnormal; shown map max(attr_abnormal, 0).

Methods (all return per-pixel maps (N, H, W, n_outputs) float32):
  deeplift              DeepLIFT Rescale (Shrikumar et al. 2017), our own implementation in
                        keras.ops (learning/explain/deeplift.py): a surrogate forward pass whose input
                        gradient is the chain of DeepLIFT multipliers, for any Keras backend. It
                        equals shap.DeepExplainer (the tests' oracle, TensorFlow only) to float
                        rounding, and costs about one input gradient: the batch goes forward and
                        backward once, a shared baseline (black, mean) forward once per batch
                        (shap: forward and backward on image + baseline, 2.4x a gradient).
                        Per-image baselines (blur) are supported. Channel-summed.
  integrated-gradients  Sundararajan et al. 2017, midpoint Riemann sum (--ig-steps). Channel-summed.
  grad-cam              Selvaraju et al. 2017 on the model's last Conv2D layer (see above),
                        bilinearly upsampled to the input size.
  saliency              Simonyan et al. 2014: max over channels of |d output / d pixel|.
  occlusion             Zeiler & Fergus 2014: a square patch replaced by the baseline slides over
                        the image; a pixel's value is the mean drop of the output over the
                        patches covering it.

Why not a library for the four others: checked on PyPI for Keras 3 + TF 2.21 (see report).
xplique 2.0.2 pins tensorflow<=2.20 (+tensorflow-probability, opencv, ruff) so it cannot
install next to TF 2.21; tf-keras-vis 0.8.7 (2024) targets tf.keras 2, offers only Grad-CAM and
saliency (no integrated gradients, no occlusion) and needs two new dependencies; alibi 0.9.6
brings a large dependency tree for IG alone; innvestigate 2.1.2 needs TF1-style graph mode; PAIR
`saliency` 0.2.1 needs scikit-image and a framework callback we would write anyway. Each method
below is a few lines of gradient code (learning.gradients: one adapter per Keras backend) on the
same model, so they share batching, baselines, targets and post-processing with DeepLIFT.
"""
import contextlib
import warnings
import weakref

import numpy as np

from learning import gradients
from learning.explain import deeplift
from scraper.cli import UserError

METHODS = ("deeplift", "integrated-gradients", "grad-cam", "occlusion", "saliency")
POSTPROCESS = ("difference", "original", "abnormal")
BASELINES = ("black", "blur", "mean")
# DeepLIFT must satisfy completeness: |sum(attr) - (f(x) - f(b))| <= RTOL * |f(x) - f(b)| + ATOL.
COMPLETENESS_RTOL = 1e-3
COMPLETENESS_ATOL = 1e-4
# Methods whose attributions sum to f(x) - f(baseline); completeness is recorded for these.
COMPLETE_METHODS = ("deeplift", "integrated-gradients")


def method_list(text):
    """argparse type of --method: 'deeplift,grad-cam' -> ('deeplift', 'grad-cam'); a bad name
    fails at parse time naming the allowed ones (run_pipeline.sh checks flags before stage 1)."""
    import argparse

    try:
        return parse_methods([text])
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_methods(values):
    """['deeplift,saliency', 'grad-cam'] -> ('deeplift', 'saliency', 'grad-cam'), order kept."""
    methods = []
    for value in values or ["deeplift"]:
        for name in (value if isinstance(value, tuple) else str(value).split(",")):
            name = name.strip().lower()
            if not name:
                continue
            if name not in METHODS:
                raise UserError(f"invalid method {name!r}; allowed: {', '.join(METHODS)}")
            if name not in methods:
                methods.append(name)
    if not methods:
        raise UserError(f"no method given; allowed: {', '.join(METHODS)}")
    return tuple(methods)


@contextlib.contextmanager
def quiet_keras():
    """Silence harmless Keras 3 input-structure warnings ('Expected: keras_tensor ...')."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*doesn't match the expected structure")
        warnings.filterwarnings("ignore", message=r"(?s).*Your TensorFlow version is newer")
        yield


def output_matrix(postprocess, findings=0):
    """(2 + findings, n_outputs) matrix mapping the logits [normal, abnormal(, f_1..f_K)] to
    the explained outputs: the postprocess's target(s), then (with `findings` = K) each
    finding's own logit, so a findings model's maps come from the same passes."""
    if findings:
        base = output_matrix(postprocess)
        matrix = np.zeros((2 + findings, base.shape[1] + findings), np.float32)
        matrix[:2, :base.shape[1]] = base
        matrix[2:, base.shape[1]:] = np.eye(findings, dtype=np.float32)
        return matrix
    if postprocess == "difference":
        return np.array([[-1.0], [1.0]], dtype=np.float32)
    if postprocess == "abnormal":
        return np.array([[0.0], [1.0]], dtype=np.float32)
    if postprocess == "original":
        return np.eye(2, dtype=np.float32)
    raise UserError(f"invalid postprocess {postprocess!r}; allowed: {', '.join(POSTPROCESS)}")


def build_full_model(conv_base, head):
    """Preprocessed image (N, S, S, 3) -> logits (N, 2): the conv base followed by the head."""
    import keras

    return keras.Model(conv_base.input, head(conv_base.output), name="vgg16_head")


def build_target_model(full_model, postprocess, matrix=None):
    """Append a fixed linear layer selecting the explained outputs (built-in Dense, no Lambda).

    (N, 2) logits -> (N, 1) for 'difference'/'abnormal', (N, 2) for 'original'; `matrix`
    (output_matrix's, e.g. with findings) replaces the postprocess's own.
    """
    import keras

    matrix = output_matrix(postprocess) if matrix is None else matrix
    select = keras.layers.Dense(matrix.shape[1], use_bias=False, trainable=False,
                                name=f"target_{postprocess}")
    output = select(full_model.output)
    select.set_weights([matrix])
    return keras.Model(full_model.input, output, name=f"{full_model.name}_{postprocess}")


def make_baselines(images_uint8, kind, image_size=None):
    """Pixel-space baselines (N, S, S, 3) float32 for uint8 images (N, S, S, 3).

    black: all zeros (the original's reference). mean: the ImageNet mean colour, i.e. zero
    after preprocessing. blur: each image blurred with a Gaussian of sigma = S/20 pixels
    (Sturmfels et al. 2020), which keeps the anatomy's coarse layout and removes detail.
    """
    images = np.asarray(images_uint8)
    if kind == "black":
        return np.zeros(images.shape, dtype=np.float32)
    if kind == "mean":
        mean_rgb = np.array([123.68, 116.779, 103.939], dtype=np.float32)  # ImageNet, RGB
        return np.broadcast_to(mean_rgb, images.shape).astype(np.float32)
    if kind == "blur":
        from PIL import Image, ImageFilter

        radius = (image_size or images.shape[1]) / 20.0
        return np.stack([np.asarray(Image.fromarray(np.asarray(img, dtype=np.uint8))
                                    .filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
                         for img in images])
    raise UserError(f"invalid baseline {kind!r}; allowed: {', '.join(BASELINES)}")


def preprocess_float(pixels):
    """Pixel-space float (N, S, S, 3) RGB -> VGG16 input, the same map as vgg.preprocess."""
    from learning.vgg import preprocess

    return preprocess(np.asarray(pixels, dtype=np.float32))


def forward(model, x):
    """model(x) as numpy (N, n_outputs), compiled (learning.gradients, any Keras backend)."""
    return gradients.forward(model, x)


_COMPILED = weakref.WeakKeyDictionary()


def input_gradients(model, x):
    """d model(x)[:, o] / dx for every output o, one forward pass: (n_outputs, N, S, S, 3)."""
    if model not in _COMPILED:
        _COMPILED[model] = gradients.compile_gradients(
            lambda inputs: (model(inputs, training=False), None), model)
    return _COMPILED[model](x)[2]


def _gradients(model, x, output_index):
    """d model(x)[:, output_index] / dx for a batch: (N, S, S, 3)."""
    return input_gradients(model, x)[output_index]


def integrated_gradients(model, x, baselines, steps=32, chunk=16):
    """Midpoint-rule IG: (x - b) * mean_k grad(b + a_k (x - b)); (N, S, S, 3, n_outputs)."""
    n_outputs = model.output.shape[-1]
    alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
    result = np.empty(np.shape(x) + (n_outputs,), np.float32)
    for j, (image, base) in enumerate(zip(x, baselines)):
        delta = image - base
        total = np.zeros((n_outputs,) + image.shape, np.float64)
        for start in range(0, steps, chunk):
            a = alphas[start:start + chunk, None, None, None]
            total += input_gradients(model, base[None] + a * delta[None]).sum(1)
        result[j] = np.moveaxis(total / steps, 0, -1) * delta[..., None]
    return result


def last_conv_layer(model):
    import keras

    conv = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Conv2D)]
    if not conv:
        raise UserError("grad-cam needs a Conv2D layer in the model, found none")
    return conv[-1]


_all_layers = deeplift.leaf_layers


_CAM = weakref.WeakKeyDictionary()


def _cam_gradients(model, layer):
    """Compiled (probe, x) -> (outputs, features, d outputs / d features) for `layer`.

    The gradient w.r.t. an inner layer's output is taken, on every backend, as the gradient
    w.r.t. a zero `probe` added to that output (the model's graph is walked with the probe).
    """
    if model not in _CAM:
        def probed(probe, inputs):
            captured = []

            def leaf(op):
                if op is not layer:
                    return op

                def call(*args, **kwargs):
                    captured.append(op(*args, **kwargs) + probe)   # (N, h, w, C)
                    return captured[-1]
                return call

            outputs = deeplift.walk_graph(model, inputs, leaf)
            return outputs, captured[0]

        _CAM[model] = gradients.compile_gradients(probed, model)
    return _CAM[model]


def grad_cam(model, x):
    """Grad-CAM on the last conv layer, upsampled: (N, S, S, n_outputs), >= 0."""
    return grad_cam_and_outputs(model, x)[0]


def grad_cam_and_outputs(model, x, matrix=None):
    """Grad-CAM of the targets `outputs @ matrix` (matrix (O, T); None: the outputs
    themselves) and the model's outputs, from ONE forward pass: ((N, S, S, T) >= 0, (N, O)).

    The gradient is linear in the target, so the target's channel weights are the matrix
    combination of each output's weights (exactly Grad-CAM on the target model): stage 6 gets
    the logits (for p) and the maps of logit(abnormal) - logit(normal) from the same pass."""
    import keras

    layer = last_conv_layer(model)
    x = np.asarray(x, np.float32)
    probe = np.zeros((len(x),) + tuple(layer.output.shape[1:]), np.float32)
    outputs, features, grads = _cam_gradients(model, layer)(probe, x)  # (N,O), (N,h,w,C),
    weights = grads.mean(axis=(2, 3), keepdims=True)                      # (O,N,h,w,C) -> (O,N,1,1,C)
    if matrix is not None:
        weights = np.tensordot(np.asarray(matrix, np.float32).T, weights, axes=1)  # (T,N,1,1,C)
    cams = np.maximum((weights * features[None]).sum(-1), 0)      # (T, N, h, w)
    size = tuple(np.shape(x)[1:3])
    resized = keras.ops.image.resize(np.moveaxis(cams, 0, -1), size, interpolation="bilinear")
    return gradients.to_numpy(resized).astype(np.float32), np.asarray(outputs)  # (N,S,S,T)


def saliency(model, x):
    """Vanilla gradient saliency: max_c |d out / d x_c|, (N, S, S, n_outputs)."""
    return np.moveaxis(np.abs(input_gradients(model, x)).max(-1), 0, -1)


def occlusion(model, x, baselines, patch=None, stride=None, batch_size=32):
    """Mean output drop when a patch is replaced by the baseline: (N, S, S, n_outputs)."""
    x = np.asarray(x, np.float32)
    size = x.shape[1]
    patch = patch or max(1, size // 8)
    stride = stride or max(1, patch // 2)
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    windows = [(r, c) for r in starts for c in starts]
    n_outputs = model.output.shape[-1]
    result = np.zeros(x.shape[:3] + (n_outputs,), np.float32)
    for j, (image, base) in enumerate(zip(x, baselines)):
        reference = forward(model, image[None])[0]
        drop = np.zeros((size, size, n_outputs), np.float64)
        count = np.zeros((size, size, 1), np.float64)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            batch = np.repeat(image[None], len(chunk), axis=0)
            for k, (r, c) in enumerate(chunk):
                batch[k, r:r + patch, c:c + patch] = base[r:r + patch, c:c + patch]
            outs = forward(model, batch)
            for k, (r, c) in enumerate(chunk):
                drop[r:r + patch, c:c + patch] += reference - outs[k]
                count[r:r + patch, c:c + patch] += 1
        result[j] = drop / np.maximum(count, 1)
    return result


def reduce_channels(attributions):
    """(N, S, S, 3, n_outputs) -> (N, S, S, n_outputs): per-pixel sums (keeps completeness)."""
    return attributions.sum(axis=3)


def postprocess_maps(maps, postprocess):
    """Per-output maps (N, S, S, n_outputs) -> (signed (N, S, S), shown (N, S, S) >= 0).

    original: signed = attr_abnormal - max(attr_normal, 0), shown = max(signed, 0) (the
    original's formula); difference/abnormal: signed = the single output's map.
    """
    if postprocess == "original":
        signed = maps[..., 1] - np.maximum(maps[..., 0], 0)
    else:
        signed = maps[..., 0]
    return signed, np.maximum(signed, 0)


def completeness_deltas(attributions, f_x, f_b):
    """|sum attr - (f(x) - f(b))| per image, max over outputs: (N,). attributions (N, ..., n_out)."""
    n, n_out = attributions.shape[0], attributions.shape[-1]
    sums = attributions.reshape(n, -1, n_out).sum(1, dtype=np.float64)
    expected = np.asarray(f_x, np.float64) - np.asarray(f_b, np.float64)
    return np.abs(sums - expected).max(-1), np.abs(expected).max(-1)


def check_completeness(deltas, expected, names, method="deeplift"):
    """Stop when DeepLIFT's sums break completeness: the maps would be wrong."""
    limit = COMPLETENESS_RTOL * np.asarray(expected) + COMPLETENESS_ATOL
    bad = np.flatnonzero(np.asarray(deltas) > limit)
    if len(bad):
        k = bad[0]
        raise UserError(
            f"{method} attributions of {names[k]} break completeness: |sum - (f(x) - f(baseline))|"
            f" = {deltas[k]:.3g} > {limit[k]:.3g}; the heatmaps would be wrong (a numerical "
            f"problem in the model, e.g. huge activations); nothing written for this batch")


class Attributor:
    """All methods on one target model; `attribute` gives per-output maps and completeness."""

    def __init__(self, target_model, methods, ig_steps=32, occlusion_patch=None):
        self.model = target_model
        self.methods = tuple(methods)
        self.ig_steps = ig_steps
        self.occlusion_patch = occlusion_patch
        self.n_outputs = target_model.output.shape[-1]
        self._deeplift = (deeplift.DeepLift(target_model) if "deeplift" in self.methods
                          else None)

    def outputs(self, x):
        with quiet_keras():
            return forward(self.model, x)

    def attribute(self, method, x, baselines, f_x=None, f_b=None):
        """-> (maps (N, S, S, n_outputs), completeness deltas (N,) or None, expected (N,) or None)."""
        with quiet_keras():
            if method == "deeplift":
                raw = self._deeplift.attribute(x, baselines)
            elif method == "integrated-gradients":
                raw = integrated_gradients(self.model, x, baselines, self.ig_steps)
            elif method == "grad-cam":
                return grad_cam(self.model, x), None, None
            elif method == "saliency":
                return saliency(self.model, x), None, None
            elif method == "occlusion":
                return occlusion(self.model, x, baselines, self.occlusion_patch), None, None
            else:
                raise UserError(f"invalid method {method!r}; allowed: {', '.join(METHODS)}")
        if f_x is None:
            f_x = self.outputs(x)
        if f_b is None:
            f_b = self.outputs(baselines)
        deltas, expected = completeness_deltas(raw, f_x, f_b)
        return reduce_channels(raw), deltas, expected


DeepLift = deeplift.DeepLift   # the name stage 6 and the tests have always used


class Explainer:
    """A pixel model (N, S, S, 3) 0..255 -> logits (N, 2), its explained target and methods.

    A findings model (N, 2 + K logits; `findings` = their names) is explained with one target
    more per finding, its own logit: each method's result then carries the K finding maps
    (signed, (N, S, S, K)) as a fourth item, from the same passes (Grad-CAM: the same one)."""

    def __init__(self, model, postprocess, methods, baseline, image_size, ig_steps=32,
                 occlusion_patch=None, findings=()):
        self.model = model
        self.methods = tuple(methods)
        self.postprocess = postprocess
        self.baseline = baseline
        self.image_size = image_size
        self.findings = tuple(findings)
        self.n_targets = output_matrix(postprocess).shape[1]   # columns before the findings
        self.matrix = output_matrix(postprocess, len(self.findings))
        self.target = build_target_model(model, postprocess, self.matrix)
        self.attributor = Attributor(self.target, methods, ig_steps, occlusion_patch)
        self._shared_baseline_logits = None

    def inputs(self, images_uint8):
        """uint8 (N, S, S, 3) -> pixels x and pixel baselines b, both (N, S, S, 3) float32."""
        x = np.asarray(images_uint8, np.float32)
        return x, make_baselines(images_uint8, self.baseline, self.image_size)

    def logits(self, x):
        with quiet_keras():
            return forward(self.model, x)

    def baseline_logits(self, b):
        """Logits of the baselines; a baseline shared by every image (black, mean) goes
        through the network once per run, not once per image."""
        if self.baseline == "blur":
            return self.logits(b)
        if self._shared_baseline_logits is None:
            self._shared_baseline_logits = self.logits(b[:1])
        return np.repeat(self._shared_baseline_logits, len(b), axis=0)

    def explain(self, method, x, b, logits_x, logits_b):
        """-> signed maps (N, S, S), shown maps (N, S, S) >= 0, deltas (N,) or None, expected,
        finding maps (N, S, S, K) signed or None."""
        f_x = np.asarray(logits_x) @ self.matrix
        f_b = None if logits_b is None else np.asarray(logits_b) @ self.matrix
        maps, deltas, expected = self.attributor.attribute(method, x, b, f_x, f_b)
        signed, shown = postprocess_maps(maps[..., :self.n_targets], self.postprocess)
        return signed, shown, deltas, expected, self._finding_maps(maps)

    def _finding_maps(self, maps):
        return maps[..., self.n_targets:] if self.findings else None

    def explain_batch(self, images_uint8, names):
        """uint8 (N, S, S, 3) -> (logits (N, 2 [+ K]), {method: (signed, shown, deltas | None,
        finding maps (N, S, S, K) | None)}).

        Each pass through the network is made once: Grad-CAM's pass gives the logits; the
        baselines' logits are computed only for methods that check completeness; DeepLIFT
        that breaks completeness stops the run (UserError naming the image)."""
        x, b = self.inputs(images_uint8)
        cams = None
        with quiet_keras():
            if "grad-cam" in self.methods:
                cams, logits_x = grad_cam_and_outputs(self.model, x, self.matrix)
            else:
                logits_x = forward(self.model, x)
        needs_b = any(m in COMPLETE_METHODS for m in self.methods)
        logits_b = self.baseline_logits(b) if needs_b else None
        result = {}
        for method in self.methods:
            if method == "grad-cam":
                signed, shown = postprocess_maps(cams[..., :self.n_targets], self.postprocess)
                result[method] = (signed, shown, None, self._finding_maps(cams))
                continue
            signed, shown, deltas, expected, findings = self.explain(method, x, b, logits_x,
                                                                     logits_b)
            if method == "deeplift":
                check_completeness(deltas, expected, names)
            result[method] = (signed, shown, deltas, findings)
        return np.asarray(logits_x), result
