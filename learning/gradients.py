"""The one backend-specific module: compiled forward passes and input gradients per Keras backend.

Everything else in stages 3, 5 and 6 is written with keras / keras.ops and runs unchanged under
KERAS_BACKEND=tensorflow (default), jax or torch. What Keras does not offer backend-neutrally is
"compile this function" and "differentiate this function w.r.t. one of its inputs"; this module
gives both, for the three backends, behind two functions:

  compile_forward(fn, model)    fn(*arrays) -> tensors; returns a callable on numpy arrays that
                                returns numpy arrays. TensorFlow: tf.function; JAX: jax.jit with
                                the model's variables passed in (keras.StatelessScope), so the
                                weights are arguments, not constants baked into the program, and
                                changed weights (the sanity check) are seen; torch: eager under
                                torch.no_grad (torch.compile costs minutes of compilation on a CPU).
  compile_gradients(fn, model)  fn(wrt, *arrays) -> (outputs (N, O), aux); returns a callable
                                giving (outputs, aux, grads (O, *wrt.shape)): the gradient of
                                every output column, summed over the batch, w.r.t. `wrt`, from ONE
                                forward pass (a persistent tape / one jax.vjp / retain_graph).

`fn` must treat the batch rows independently (every Keras model does in inference), so the
gradient of the batch sum is the per-image gradient. Two helpers serve learning/explain/deeplift.py:
`with_gradient` (a value with a chosen gradient: tf.custom_gradient / jax.custom_vjp / a torch
autograd.Function) and `fused_elementwise` (XLA-fused elementwise arithmetic on TensorFlow).
"""
import contextlib
import weakref

import numpy as np


def backend():
    import keras

    return keras.backend.backend()


def no_grad():
    """A context in which no gradient is recorded (torch needs it; elsewhere a no-op)."""
    if backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def to_numpy(value):
    import keras

    if value is None:
        return None
    return np.asarray(keras.ops.convert_to_numpy(value))


def _tensor(array):
    import keras

    return keras.ops.convert_to_tensor(np.asarray(array, np.float32))


def _outputs_to_numpy(structure):
    import keras

    return keras.tree.map_structure(to_numpy, structure)


def compile_forward(fn, model):
    """numpy arrays -> fn(*tensors) as numpy, compiled for the current backend."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, reduce_retracing=True)
        return lambda *arrays: _outputs_to_numpy(compiled(*map(_tensor, arrays)))
    if name == "jax":
        import jax

        stateless = _stateless(fn, model)
        compiled = jax.jit(stateless)
        return lambda *arrays: _outputs_to_numpy(
            compiled(_values(model), *map(_tensor, arrays)))
    if name == "torch":
        def run(*arrays):
            with no_grad():
                return _outputs_to_numpy(fn(*map(_tensor, arrays)))
        return run
    raise RuntimeError(f"unsupported Keras backend {name!r}; supported: tensorflow, jax, torch")


def compile_gradients(fn, model):
    """(wrt, *arrays) -> (outputs (N, O), aux, grads (O, *wrt.shape)) as numpy, compiled."""
    name = backend()
    if name == "tensorflow":
        return _tensorflow_gradients(fn)
    if name == "jax":
        return _jax_gradients(fn, model)
    if name == "torch":
        return _torch_gradients(fn)
    raise RuntimeError(f"unsupported Keras backend {name!r}; supported: tensorflow, jax, torch")


def _tensorflow_gradients(fn):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(wrt, *args):
        # Only `wrt` is watched: the weights' gradients are never computed, and nothing that
        # does not depend on `wrt` (e.g. DeepLIFT's reference pass) is recorded at all.
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(wrt)
            outputs, aux = fn(wrt, *args)
            columns = [tf.reduce_sum(outputs[:, o]) for o in range(outputs.shape[-1])]
        grads = tf.stack([tape.gradient(column, wrt) for column in columns])
        del tape
        return outputs, aux, grads

    return lambda wrt, *arrays: _outputs_to_numpy(run(_tensor(wrt), *map(_tensor, arrays)))


def _jax_gradients(fn, model):
    import jax
    import jax.numpy as jnp

    stateless = _stateless(fn, model)

    @jax.jit
    def run(values, wrt, *args):
        outputs, vjp, aux = jax.vjp(lambda w: stateless(values, w, *args), wrt, has_aux=True)
        eye = jnp.eye(outputs.shape[-1], dtype=outputs.dtype)
        grads = jnp.stack([vjp(jnp.broadcast_to(eye[o], outputs.shape))[0]
                           for o in range(outputs.shape[-1])])
        return outputs, aux, grads

    return lambda wrt, *arrays: _outputs_to_numpy(
        run(_values(model), _tensor(wrt), *map(_tensor, arrays)))


def _torch_gradients(fn):
    import torch

    def run(wrt, *arrays):
        wrt = _tensor(wrt).requires_grad_(True)
        outputs, aux = fn(wrt, *map(_tensor, arrays))
        count = outputs.shape[-1]
        grads = torch.stack([torch.autograd.grad(outputs[:, o].sum(), wrt,
                                                 retain_graph=o < count - 1)[0]
                             for o in range(count)])
        return _outputs_to_numpy((outputs.detach(), aux, grads))

    return run


def _values(model):
    """The model's current variable values (read at every call: weights may have changed)."""
    return [variable.value for variable in model.variables]


def _stateless(fn, model):
    """fn with the model's variables as the first argument (JAX: weights are jit arguments)."""
    import keras

    variables = model.variables

    def stateless(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    return stateless


def fused_elementwise(fn):
    """fn (elementwise, never differentiated) as one fused loop where the backend allows it.

    TensorFlow runs each elementwise op as its own pass over memory; XLA fuses them (about 10
    passes -> 1 for a DeepLIFT multiplier, measured 1.4x faster DeepLIFT on the CPU). Under
    JAX the whole program is already XLA-compiled; torch runs fn as it is.
    """
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    return fn


def with_gradient(value, z, multiplier):
    """`value` (computed elsewhere, not differentiated) whose gradient w.r.t. `z` is
    multiplier * upstream: DeepLIFT's rescale step, as one op each way where the backend
    has custom gradients (elsewhere value + multiplier * (z - stop(z)), three more passes).
    value, z, multiplier: tensors of one shape."""
    name = backend()
    if name == "tensorflow":
        return _tf_with_gradient(value, z, multiplier)
    if name == "jax":
        return _jax_with_gradient()(value, z, multiplier)
    if name == "torch":
        return _TorchWithGradient.apply(value, z, multiplier)
    from keras import ops

    return value + multiplier * (z - ops.stop_gradient(z))


def _tf_with_gradient(value, z, multiplier):
    import tensorflow as tf

    @tf.custom_gradient
    def rescale(z_in):
        return tf.identity(value), lambda upstream: upstream * multiplier

    return rescale(z)


_JAX_WITH_GRADIENT = []


def _jax_with_gradient():
    if not _JAX_WITH_GRADIENT:
        import jax

        @jax.custom_vjp
        def rescale(value, z, multiplier):
            return value

        def forward(value, z, multiplier):
            return value, multiplier

        def backward(multiplier, upstream):
            return None, upstream * multiplier, None

        rescale.defvjp(forward, backward)
        _JAX_WITH_GRADIENT.append(rescale)
    return _JAX_WITH_GRADIENT[0]


def _torch_function():
    import torch

    class WithGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, z, multiplier):
            ctx.save_for_backward(multiplier)
            return value.clone()

        @staticmethod
        def backward(ctx, upstream):
            (multiplier,) = ctx.saved_tensors
            return None, upstream * multiplier, None

    return WithGradient


class _TorchWithGradient:
    _function = None

    @classmethod
    def apply(cls, value, z, multiplier):
        if cls._function is None:
            cls._function = _torch_function()
        return cls._function.apply(value, z, multiplier)


_FORWARD = weakref.WeakKeyDictionary()


def forward(model, x):
    """model(x) for numpy x, compiled once per model (cached): numpy outputs."""
    if model not in _FORWARD:
        _FORWARD[model] = compile_forward(lambda inputs: model(inputs, training=False), model)
    return _FORWARD[model](x)


def deterministic(seed):
    """Seed Keras' and the backend's random generators; on TensorFlow also make its ops
    deterministic (stage 5's two runs with one seed give identical metrics)."""
    import keras

    keras.utils.set_random_seed(seed)
    if backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def exact_float32():
    """Full float32 matrix products on every backend: no TF32 on NVIDIA GPUs (Ampere, Hopper),
    where TensorFlow and JAX otherwise round matmul/conv inputs to 10-bit mantissas. Attribution
    needs it: measured on an H200 under JAX's default, DeepLIFT's completeness error on VGG16
    was 0.19 of f(x) - f(b), so stage 6 would refuse every map. No effect on a CPU."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif name == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif name == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
