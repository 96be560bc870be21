"""Stages 3-6 of the chest X-ray pipeline: features, examples, head training, attribution.

Importing this package keeps TensorFlow's start-up chatter off the terminal (see below) without
importing TensorFlow itself: stages check their inputs first and import it only when a model is
needed, so a bad flag or a missing file answers at once.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# What TensorFlow's C++ side prints to fd 2 on `import tensorflow`, whatever
# TF_CPP_MIN_LOG_LEVEL says, because absl logging is not initialised yet (TF 2.21): the absl
# notice, the oneDNN notice (oneDNN is left as TensorFlow and the user set it), the
# CPU-feature notice and, on CUDA builds, the duplicate-factory registrations.
_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog\(\)"
    r"|^[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"            # absl INFO / WARNING lines
    r"|^To enable the following instructions:"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc:\d+\] computation placer already registered"
    r"|^E\d{4} [\d:.]+\s+\d+ cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register")

# Level 3 also hides the harmless "NodeDef mentions attribute use_unbounded_threadpool" errors
# TF 2.21 logs for every tf.data map once op determinism is on (stage 5). Real failures still
# surface as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0 yourself to see everything.
_SHOW_ALL = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _filtered_stderr():
    """Capture fd 2 (C++ writes bypass sys.stderr) and re-emit all but TensorFlow's chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not _CHATTER.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.inner  # TF's own loader from now on
        with _filtered_stderr():
            self.inner.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the first `import tensorflow` (however it comes: keras, shap) in _filtered_stderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and find the real spec without finding ourselves
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


if not _SHOW_ALL and "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
