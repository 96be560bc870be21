"""DeepLIFT (Rescale rule, Shrikumar et al. 2017) for any Keras backend, written once in keras.ops.

How: a *surrogate forward pass*. The model's graph is walked layer by layer (nested models
included) carrying two tensors, the image batch x (N, ...) and the reference r (R, ...; R = 1
when every image shares one baseline, which then costs one extra image of forward pass per
batch, else R = N). Linear layers (convolutions, dense, pooling by average, flatten,
rescaling, normalization and dropout in inference, ...) are called unchanged on both. Each
nonlinearity returns its true value for x but with a *gradient* equal to the DeepLIFT
multiplier, through the stopped-gradient identity

    y_sur = stop(y_x) + stop(m) * (z_x - stop(z_x))          value y_x, d y_sur / d z_x = m

so one ordinary input gradient of the surrogate (learning.gradients, per backend) is the chain
of DeepLIFT multipliers, and attributions = multipliers * (x - r). Linear layers need nothing:
their Jacobian is their DeepLIFT multiplier (biases cancel in differences). The rules are
exactly shap.DeepExplainer's (deep_tf.py), which the tests use as the oracle on TensorFlow:

  elementwise g (relu, tanh, ...)   m = (g(z_x) - g(z_r)) / (z_x - z_r); where |z_x - z_r| <
                                    1e-6, g'(z_r) (shap's fallback to the plain gradient)
  max pooling (shap's maxpool)      per window w with maxima y_x, y_r and c = max(y_x, y_r):
                                    (c - y_r) is routed to x's arg-max and (y_x - c) to r's
                                    arg-max, both divided by the input difference there (0
                                    where it is below 1e-7). Done through the backend's own
                                    max pooling and its gradient (so any pool size, stride and
                                    padding, and TensorFlow's tie-breaking, as shap). Global
                                    max pooling: the same rule (shap mis-handles it).

Exactness: the surrogate's forward values are exactly the model's (z - stop(z) is exactly 0),
so where an image equals its reference (black X-ray borders vs the black baseline) every
layer sees exactly equal values and shap's thresholds decide as in shap; a variant whose values
were off by float rounding was 5e-2 relative off shap at 224 px.

Cost: one forward pass on N + R images and one backward pass on N, about one plain input
gradient (shap runs forward and backward on 2N images); the multiplier arithmetic is fused
(learning.gradients.fused_elementwise). Measured: benchmarks/bench_attribution.py.
"""
import contextlib

import numpy as np

from scraper.cli import UserError

SMALL_DELTA = 1e-6          # shap's nonlinearity_1d threshold
SMALL_DELTA_MAXPOOL = 1e-7  # shap's maxpool threshold


class Pair:
    """The image-batch tensor and the reference tensor at one point of the graph."""
    __slots__ = ("x", "r")

    def __init__(self, x, r):
        self.x, self.r = x, r


def _derivatives():
    """g'(z) of the supported elementwise activations, by the function's __name__."""
    from keras import ops

    def sigmoid_grad(z):
        s = ops.sigmoid(z)
        return s * (1 - s)

    def silu_grad(z):
        s = ops.sigmoid(z)
        return s * (1 + z * (1 - s))

    return {
        "relu": lambda z: ops.cast(z > 0, z.dtype),
        "tanh": lambda z: 1 - ops.tanh(z) ** 2,
        "sigmoid": sigmoid_grad,
        "softplus": ops.sigmoid,
        "elu": lambda z: ops.where(z > 0, ops.ones_like(z), ops.exp(z)),
        "silu": silu_grad,
        "swish": silu_grad,
        "leaky_relu": lambda z: ops.where(z > 0, ops.ones_like(z), 0.2 * ops.ones_like(z)),
    }


def _linear_layer_types():
    """Layers affine in their input(s) per sample: DeepLIFT multipliers = their Jacobian."""
    import keras

    names = ["InputLayer", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "Dense",
             "EinsumDense", "Flatten", "Reshape", "Permute", "Rescaling", "Normalization",
             "BatchNormalization", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
             "GaussianNoise", "GaussianDropout", "AlphaDropout", "ZeroPadding2D", "Cropping2D",
             "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
             "GlobalAveragePooling2D", "Identity", "Add", "Subtract", "Average", "Concatenate",
             "UpSampling2D", "CenterCrop", "Resizing"]
    return tuple(getattr(keras.layers, name) for name in names if hasattr(keras.layers, name))


def activation_name(layer):
    """The name of a layer's own activation ('linear' when it has none)."""
    activation = getattr(layer, "activation", None)
    return "linear" if activation is None else getattr(activation, "__name__", str(activation))


@contextlib.contextmanager
def _pre_activation(layer):
    """Call a Conv/Dense layer without its fused activation: yields z, not g(z)."""
    import keras

    saved = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = saved


def _unsupported(layer, why):
    return UserError(f"DeepLIFT cannot explain layer {layer.name!r} ({type(layer).__name__}): "
                     f"{why}; supported: linear layers (Conv, Dense, pooling by average, "
                     f"Flatten, Rescaling, Normalization, Dropout, ...), activations "
                     f"{', '.join(sorted(_derivatives()))}, MaxPooling2D, GlobalMaxPooling2D")


def check_layer(layer):
    """Raise a one-line UserError now if `layer` has no DeepLIFT rule here."""
    _rule(layer)


def _rule(layer):
    """The function mapping the layer's Pair arguments to its output Pair."""
    import keras

    if isinstance(layer, keras.layers.MaxPooling2D):
        if layer.data_format != "channels_last":
            raise _unsupported(layer, "channels_first")
        return lambda value: _max_pool(value, layer.pool_size, layer.strides, layer.padding)
    if isinstance(layer, keras.layers.GlobalMaxPooling2D):
        if layer.data_format != "channels_last":
            raise _unsupported(layer, "channels_first")
        return lambda value: _global_max_pool(value, layer.keepdims)
    if isinstance(layer, keras.layers.Activation):
        name = activation_name(layer)
        if name == "linear":
            return _linear(layer)
        if name not in _derivatives():
            raise _unsupported(layer, f"activation {name!r}")
        return _nonlinear(layer, layer.activation, name)
    if isinstance(layer, keras.layers.ReLU):
        if (layer.max_value is not None or layer.negative_slope or layer.threshold):
            raise _unsupported(layer, "ReLU with max_value/negative_slope/threshold")
        return _nonlinear(layer, keras.activations.relu, "relu")
    if isinstance(layer, _linear_layer_types()):
        name = activation_name(layer)
        if name == "linear":
            return _linear(layer)
        if name not in _derivatives():
            raise _unsupported(layer, f"activation {name!r}")
        return _nonlinear(layer, layer.activation, name, fused=True)
    raise _unsupported(layer, "no DeepLIFT rule for this layer type")


def _split(structure, part):
    import keras

    return keras.tree.map_structure(
        lambda value: getattr(value, part) if isinstance(value, Pair) else value, structure)


def _call_both(layer, args, kwargs):
    """The layer on x (recorded for the gradient) and on r (never differentiated)."""
    from learning.gradients import no_grad

    x = layer(*_split(args, "x"), **_split(kwargs, "x"))
    with no_grad():
        r = layer(*_split(args, "r"), **_split(kwargs, "r"))
    return x, r


def _linear(layer):
    def apply(*args, **kwargs):
        return Pair(*_call_both(layer, args, kwargs))
    return apply


def _nonlinear(layer, function, name, fused=False):
    """Rescale rule for an elementwise g; `fused`: g is the activation inside a Conv/Dense."""
    from learning.gradients import fused_elementwise, with_gradient

    derivative = _derivatives()[name]

    def multiplier(z_x, z_r):
        """m and g(z_x), from values only (never differentiated)."""
        from keras import ops

        y_x = function(z_x)
        delta = z_x - z_r
        # 0/0 where the inputs coincide is never selected: shap's fallback g'(z_r) is
        ratio = (y_x - function(z_r)) / delta
        return ops.where(ops.abs(delta) < SMALL_DELTA, derivative(z_r), ratio), y_x

    multiplier = fused_elementwise(multiplier)

    def apply(*args, **kwargs):
        from keras import ops

        if fused:
            with _pre_activation(layer):
                z_x, z_r = _call_both(layer, args, kwargs)
        else:
            z_x, z_r = args[0].x, args[0].r
        m, y_x = multiplier(ops.stop_gradient(z_x), ops.stop_gradient(z_r))
        # value exactly g(z_x) (where x equals the reference the next layer must see exactly
        # equal values, as shap does); gradient w.r.t. z_x: m
        return Pair(with_gradient(y_x, z_x, m), ops.stop_gradient(function(z_r)))
    return apply


def _inverse_delta(x, r):
    """1 / (x - r), 0 where |x - r| < 1e-7 (values only)."""
    from keras import ops

    delta = x - r
    small = ops.abs(delta) < SMALL_DELTA_MAXPOOL
    return ops.where(small, 0.0, 1.0 / ops.where(small, 1.0, delta))


def _unit_step(x, r):
    """(x - stop(x)) / (x - r): value 0, gradient 1 / (x - r); 0 where |x - r| < 1e-7."""
    from keras import ops

    from learning.gradients import fused_elementwise

    inverse = fused_elementwise(_inverse_delta)(ops.stop_gradient(x), ops.stop_gradient(r))
    return (x - ops.stop_gradient(x)) * inverse


def _max_rule(pool, value):
    """shap's maxpool rule through the backend's own max pooling and its gradient.

    `pool` is the pooling function. With v = (x - stop(x)) / (x - r) (value 0, gradient
    1 / delta): P_x = pool(stop(x) + v) has x's values, so its gradient routes to x's arg-max
    (the backend's own choice among ties, TensorFlow's: the first), divided by delta there;
    P_r = pool(stop(r) + v) routes to r's arg-max. The window's difference y_x - y_r goes to
    x's arg-max when y_x >= y_r (shap: max(y_x, y_r) - y_r) and to r's otherwise (y_x - max).
    """
    from keras import ops

    x, r = ops.stop_gradient(value.x), ops.stop_gradient(value.r)
    v = _unit_step(value.x, r)
    y_x, y_r = pool(x), pool(r)
    p_x, p_r = pool(x + v), pool(r + v)    # values y_x and y_r (broadcast to N rows)
    up = ops.stop_gradient(ops.maximum(y_x - y_r, 0.0))
    down = ops.stop_gradient(ops.minimum(y_x - y_r, 0.0))
    return Pair(y_x + up * (p_x - ops.stop_gradient(p_x)) + down * (p_r - ops.stop_gradient(p_r)),
                y_r)


def _max_pool(value, pool, strides, padding):
    from keras import ops

    return _max_rule(lambda t: ops.max_pool(t, pool, strides, padding), value)


def _global_max_pool(value, keepdims):
    from keras import ops

    return _max_rule(lambda t: ops.max(t, axis=(1, 2), keepdims=keepdims), value)


def _is_graph_model(layer):
    import keras

    return isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph")


def _graph(model):
    """The Functional graph of a Functional or Sequential model."""
    import keras

    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise UserError(f"DeepLIFT needs a built model: Sequential {model.name!r} has no "
                            f"Input; build it with keras.Input first")
        return functional
    return model


def walk_graph(model, value, leaf):
    """Run `model`'s graph on `value` with each leaf layer called as `leaf(layer)(*args)`.

    Nested models are walked recursively. Uses Keras' Function._run_through_graph, the same
    walk Functional.call does (a private API of Keras 3.15; the tests would catch a change).
    """
    def operation(layer):
        if _is_graph_model(layer) or getattr(layer, "_functional", None) is not None:
            return lambda *args, **kwargs: walk_graph(layer, args[0], leaf)
        return leaf(layer)

    return _graph(model)._run_through_graph([value], operation_fn=operation)


def run_surrogate(model, pair, rules=None):
    """The DeepLIFT surrogate of `model` on a Pair; returns the output Pair.

    `rules` caches layer id -> rule across calls.
    """
    rules = {} if rules is None else rules

    def leaf(layer):
        if id(layer) not in rules:
            rules[id(layer)] = _rule(layer)
        return rules[id(layer)]

    return walk_graph(model, pair, leaf)


def leaf_layers(model):
    """Every non-model layer of `model`, nested models flattened."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaf_layers(layer)
        else:
            yield layer


class DeepLift:
    """DeepLIFT Rescale of a Keras model (image -> (N, n_outputs)), on any backend."""

    def __init__(self, model):
        from learning import gradients

        self.model = model
        self.n_outputs = int(model.output.shape[-1])
        for layer in leaf_layers(model):   # refuse unsupported layers before any work
            check_layer(layer)
        rules = {}

        def surrogate(x, r):
            out = run_surrogate(model, Pair(x, r), rules)
            return out.x, None

        self._gradients = gradients.compile_gradients(surrogate, model)

    def attribute(self, x, baselines):
        """x, baselines: preprocessed (N, S, S, 3) -> attributions (N, S, S, 3, n_outputs).

        A baseline shared by all images (black, mean) goes through the network once per call.
        """
        x = np.asarray(x, np.float32)
        baselines = np.asarray(baselines, np.float32)
        shared = bool(np.all(baselines == baselines[:1]))
        reference = baselines[:1] if shared else baselines
        _, _, multipliers = self._gradients(x, reference)   # (n_outputs, N, S, S, 3)
        return np.moveaxis(multipliers, 0, -1) * (x - baselines)[..., None]
