"""The one way pickles are written and read: self-describing dicts behind an allow-list.

`load` never runs code from a crafted pickle: only numpy arrays/dtypes and plain builtins may
be reconstructed; anything else (os.system, subprocess, eval ...) fails with a UserError.
"""
import io
import pickle

from scraper.cli import UserError
from scraper.fileio import atomic_write

# (module, name) pairs a legitimate pipeline pickle may reference.
_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "int"), ("builtins", "float"),
    ("builtins", "bool"), ("builtins", "bytes"), ("builtins", "complex"),
    ("builtins", "slice"), ("builtins", "range"), ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}
_ALLOWED_DTYPE_MODULES = ("numpy.dtypes",)  # numpy 2 pickles dtypes as numpy.dtypes.Float32DType


class ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module in _ALLOWED_DTYPE_MODULES and
                                          name.endswith("DType")):
            return super().find_class(module, name)
        raise ForbiddenGlobal(f"forbidden global {module}.{name}")


def dump(obj, path):
    """Atomically pickle `obj` (protocol 5) to `path`."""
    with atomic_write(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=5)


def loads(data, what="pickle"):
    try:
        return _AllowListUnpickler(io.BytesIO(data)).load()
    except ForbiddenGlobal as error:
        raise UserError(f"refusing to load {what}: {error} (only numpy arrays and plain "
                        f"containers are allowed)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, MemoryError) as error:
        raise UserError(f"{what} is corrupt or not a pipeline pickle ({type(error).__name__}: "
                        f"{error})") from None


# Which stage writes each pickle format: a missing file's error says what to run.
MADE_BY = {"cxr-features/1": "stage 3, cxr-extract-features",
           "cxr-examples/1": "stage 4, cxr-prepare-examples"}


def load(path, what="pickle", kind=None):
    """Read a pipeline pickle; check it is a dict with `format` == kind when given."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        maker = f" (made by {MADE_BY[kind]}: run it first)" if kind in MADE_BY else ""
        raise UserError(f"{what} not found: {path}{maker}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a file: {path}") from None
    obj = loads(data, f"{what} {path}")
    if kind is not None:
        if not isinstance(obj, dict) or obj.get("format") != kind:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"{path} is not a {what} (expected format {kind!r}, found "
                            f"{found!r}); was it written by the right stage?")
    return obj
