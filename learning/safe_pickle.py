"""The one way pickles are written and read: self-describing dicts behind an allow-list.

`load` never runs code from a crafted pickle: only numpy arrays/dtypes and plain builtins may
be reconstructed; anything else (os.system, subprocess, eval ...) fails with a UserError.

It also never builds more than the file holds: the file may not be larger than the machine's
memory, and the few callables a pickle may name are wrapped so that a tiny pickle cannot ask
them to expand (`bytes(2**31)`, `list(range(10**10))`, `numpy.ndarray((10**6, 10**6))`, an
array of zero-byte elements that would explode when converted): each refuses such arguments
before anything is allocated. Whatever goes wrong while loading - corrupt bytes, a bad
encoding, too deep a nesting - is one UserError line.

`check_array`, `check_str_list` and `check_dict` validate what a well-formed pickle holds
(numeric, finite features; lists of names; dict parameters) with one clear line each.
"""
import io
import math
import os
import pickle

import numpy as np

from scraper.cli import UserError
from scraper.fileio import TooLarge, atomic_write, open_regular

MAX_ELEMENTS = 1 << 34  # elements one array or container may declare (16 G): far above real use
MAX_DEPTH = 64  # nesting of containers; a pipeline pickle has 3 or 4 levels
MAX_SHARING = 4  # tree elements per graph reference a pipeline pickle may have (it has ~1)
_NUMERIC_KINDS = "biuf"  # bool, int, uint, float: what features and labels may be
_PLAIN_KINDS = "biufcUS"  # + complex, str, bytes: the array kinds a pipeline pickle may hold


class ForbiddenGlobal(pickle.UnpicklingError):
    pass


class Refused(pickle.UnpicklingError):
    """An allowed callable asked to build something a pipeline pickle never holds."""


def _memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_count(count, what):
    if count > MAX_ELEMENTS:
        raise Refused(f"{what} of {count:,} elements (more than {MAX_ELEMENTS:,})")


def _container(kind):
    """builtins list/tuple/set/frozenset/dict/OrderedDict, but only from an already built
    (hence bounded) container or string - never from a range, which expands lazily."""
    bounded = (list, tuple, set, frozenset, dict, str, bytes)

    def build(*args):
        if len(args) > 1 or (args and not isinstance(args[0], bounded)):
            raise Refused(f"{kind.__name__}() from {type(args[0]).__name__ if args else args}")
        return kind(*args)
    return build


def _bytes(*args):
    if args and isinstance(args[0], int):  # bytes(2**31) would allocate 2 GB of zeros
        raise Refused(f"bytes({args[0]}), a run of zero bytes")
    return bytes(*args)


def _dtype(*args):
    dtype = np.dtype(*args)
    if dtype.itemsize > 1 << 20 or dtype.kind == "O" or dtype.hasobject:
        raise Refused(f"numpy dtype {dtype}")
    return dtype


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind not in _PLAIN_KINDS or dtype.itemsize == 0 or dtype.hasobject:
        raise Refused(f"numpy arrays of dtype {dtype} (only numbers and strings)")
    return dtype


class _NDArrayToken:
    """Stands for numpy.ndarray: usable only as the type argument of _reconstruct, never
    called (numpy.ndarray((10**6, 10**6)) would allocate terabytes from a 48-byte pickle)."""

    def __new__(cls, *args, **kwargs):
        raise Refused("numpy.ndarray called directly")


def _reconstruct(subtype, shape, dtype):
    # numpy pickles arrays as _reconstruct(ndarray, (0,), b'b') + a BUILD with the real data
    # (whose length numpy checks against the shape); only the empty seed array is allowed.
    if subtype is not _NDArrayToken or math.prod(shape) != 0:
        raise Refused(f"_reconstruct of {getattr(subtype, '__name__', subtype)} {shape}")
    from numpy._core.multiarray import _reconstruct as reconstruct
    return reconstruct(np.ndarray, shape, dtype)


def _frombuffer(buffer, dtype, shape, order):
    dtype = _check_dtype(dtype)
    count = math.prod(int(n) for n in shape)
    _check_count(count, "array")
    if any(int(n) < 0 for n in shape) or count * dtype.itemsize != memoryview(buffer).nbytes:
        raise Refused(f"array of shape {tuple(shape)} and dtype {dtype} from "
                      f"{memoryview(buffer).nbytes:,} bytes")
    from numpy._core.numeric import _frombuffer as frombuffer
    return frombuffer(buffer, dtype, shape, order)


def _scalar(dtype, *args):
    dtype = _check_dtype(dtype)
    from numpy._core.multiarray import scalar
    return scalar(dtype, *args)


def _allowed():
    """(module, name) -> what a legitimate pipeline pickle may get for it."""
    table = {("builtins", name): _container(kind) for name, kind in (
        ("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset),
        ("dict", dict))}
    from collections import OrderedDict
    table[("collections", "OrderedDict")] = _container(OrderedDict)
    for kind in (str, int, float, bool, complex, slice, range):
        table[("builtins", kind.__name__)] = kind
    table[("builtins", "bytes")] = _bytes
    table[("numpy", "ndarray")] = _NDArrayToken
    table[("numpy", "dtype")] = _dtype
    for core in ("numpy.core", "numpy._core"):
        table[(core + ".multiarray", "_reconstruct")] = _reconstruct
        table[(core + ".multiarray", "scalar")] = _scalar
        table[(core + ".numeric", "_frombuffer")] = _frombuffer
    return table


_ALLOWED = _allowed()
_ALLOWED_DTYPE_MODULES = ("numpy.dtypes",)  # numpy 2 pickles dtypes as numpy.dtypes.Float32DType


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "__builtin__":  # protocol 0-2 pickles name the Python 2 module
            module = "builtins"
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in _ALLOWED_DTYPE_MODULES and name.endswith("DType"):
            return super().find_class(module, name)
        raise ForbiddenGlobal(f"forbidden global {module}.{name}")


def dump(obj, path, memo=True):
    """Atomically pickle `obj` (protocol 5) to `path`. memo=False writes a repeated object
    each time instead of remembering every object written (pickle's memo costs ~100 bytes per
    object: 10 MB for a split of 50,000 names); only for structures without cycles."""
    with atomic_write(path, "wb") as handle:
        pickler = pickle.Pickler(handle, protocol=5)
        pickler.fast = not memo
        pickler.dump(obj)


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _children(item):
    if isinstance(item, dict):
        return list(item.keys()) + list(item.values())
    return list(item)


def _check_built(obj):
    """Measure what the pickle built as the graph it is, counting every reference.

    A pickle's memo lets one container be referenced many times: `d = [d, d]` repeated 40
    times is a few hundred bytes and 41 objects, but 2**41 elements to anything that walks it
    as the tree it prints as (comparing it, json.dumps into config.json, printing it). So:
    per container, memoised over the graph (linear time), the number of elements of its tree
    (arrays count their size, every reference counts again) and its depth; refused when the
    total exceeds MAX_ELEMENTS, the depth MAX_DEPTH, or when the tree is more than
    MAX_SHARING times larger than the graph's references (our writers share only strings and
    dtypes, which add nothing). A container that contains itself is refused too.
    Every array is checked: plain dtype, bounded size (BUILD-made arrays are only known
    here, after numpy matched their data to their shape). Leaves (str, numbers) get no memo
    entry: the check's own memory is proportional to the containers, not the strings."""
    sizes = {}          # id(container or array) -> (tree elements, depth)
    references, array_elements = 0, 0
    stack = [(obj, False)]
    on_path = set()
    while stack:
        item, expanded = stack.pop()
        key = id(item)
        if not expanded:
            if key in sizes:
                continue
            if key in on_path:
                raise Refused("a container that contains itself")
            if isinstance(item, np.ndarray):
                _check_dtype(item.dtype)
                _check_count(item.size, "array")
                sizes[key] = (max(1, item.size), 1)
                array_elements += item.size
                continue
            if not isinstance(item, _CONTAINERS):
                continue
            on_path.add(key)
            stack.append((item, True))
            children = _children(item)
            references += len(children)
            stack.extend((child, False) for child in children
                         if isinstance(child, (np.ndarray,) + _CONTAINERS))
            continue
        on_path.discard(key)
        elements, depth = 1, 1
        for child in _children(item):
            child_elements, child_depth = sizes.get(id(child), (1, 1))
            elements += child_elements
            if child_depth >= depth:
                depth = child_depth + 1
        if depth > MAX_DEPTH:
            raise RecursionError
        if elements > MAX_ELEMENTS:
            raise Refused(f"a structure of more than {MAX_ELEMENTS:,} elements counted as a tree")
        sizes[key] = (elements, depth)
    total = sizes.get(id(obj), (1, 1))[0]
    if total > MAX_SHARING * (references + array_elements + 1) + 4096:
        raise Refused(f"a structure of {references + 1:,} references that expands to "
                      f"{total:,} elements (shared containers nested in each other)")


def _load_from(handle, what):
    try:
        obj = _AllowListUnpickler(handle).load()
        _check_built(obj)
        return obj
    except ForbiddenGlobal as error:
        raise UserError(f"refusing to load {what}: {error} (only numpy arrays and plain "
                        f"containers are allowed)") from None
    except Refused as error:
        raise UserError(f"refusing to load {what}: it asks to build {error}; not a pipeline "
                        f"pickle") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply; not a pipeline pickle") from None
    except MemoryError:
        raise UserError(f"{what} does not fit in memory") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            LookupError, ImportError, OverflowError, ArithmeticError) as error:
        raise UserError(f"{what} is corrupt or not a pipeline pickle ({type(error).__name__}: "
                        f"{str(error)[:200]})") from None


def loads(data, what="pickle"):
    """A pipeline pickle from bytes (see `load` for files)."""
    return _load_from(io.BytesIO(data), what)


# Which stage writes each pickle format: a missing file's error says what to run.
MADE_BY = {"cxr-features/1": "stage 3, cxr-extract-features",
           "cxr-features/2": "stage 3, cxr-extract-features",
           "cxr-examples/1": "stage 4, cxr-prepare-examples",
           "cxr-examples/2": "stage 4, cxr-prepare-examples"}


def load(path, what="pickle", kind=None, max_bytes=None):
    """Read a pipeline pickle; check it is a dict whose `format` is `kind` (a str, or a tuple
    of accepted formats) when given.

    A file larger than `max_bytes` (default: the machine's memory) is refused before reading.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
    limit = max_bytes or _memory_bytes()
    try:
        handle = open_regular(path, what)
    except FileNotFoundError:
        maker = f" (made by {MADE_BY[kinds[0]]}: run it first)" if kinds and \
            kinds[0] in MADE_BY else ""
        raise UserError(f"{what} not found: {path}{maker}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a file: {path}") from None
    with handle:   # unpickled from the file as it is read: never its bytes and objects at once
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise TooLarge(f"{what} is {size:,} bytes, more than the {limit:,} allowed: {path}")
        obj = _load_from(handle, f"{what} {path}")
    if kinds:
        if not isinstance(obj, dict) or obj.get("format") not in kinds:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            expected = " or ".join(repr(k) for k in kinds)
            raise UserError(f"{path} is not a {what} (expected format {expected}, found "
                            f"{str(found)[:80]!r}); was it written by the right stage?")
    return obj


# ---- what a well-formed pickle holds -------------------------------------------------------

def check_array(value, key, path, ndims=(2, 4), finite=False, chunk_rows=4096):
    """`value` as a numeric ndarray of one of `ndims` dimensions, else UserError naming `key`.

    With `finite`, NaN and infinity are refused (a head trained on them is garbage): checked
    `chunk_rows` rows at a time, so no full-size boolean temporary is made.
    """
    if not isinstance(value, np.ndarray):
        raise UserError(f"{path}: '{key}' is {type(value).__name__}, expected a numpy array")
    if value.dtype.kind not in _NUMERIC_KINDS:
        raise UserError(f"{path}: '{key}' holds {value.dtype} values, expected numbers")
    if value.ndim not in ndims:
        raise UserError(f"{path}: '{key}' has shape {value.shape}, expected "
                        f"{' or '.join(f'{n} dimensions' for n in ndims)}")
    if finite and value.dtype.kind == "f":
        bad_rows, first = 0, None
        for start in range(0, len(value), chunk_rows):
            block = value[start:start + chunk_rows]
            bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)  # (rows,)
            if first is None and bad.any():
                first = start + int(np.flatnonzero(bad)[0])
            bad_rows += int(bad.sum())
        if bad_rows:
            raise UserError(f"{path}: '{key}' has NaN or infinite values in {bad_rows:,} of "
                            f"{len(value):,} rows (first: row {first}); re-run the stage "
                            f"that made them")
    return value


def check_str_list(value, key, path, length=None):
    """`value` as a list of str (of `length` items when given), else UserError naming `key`."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{path}: '{key}' must be a list of strings")
    if length is not None and len(value) != length:
        raise UserError(f"{path}: '{key}' has {len(value):,} items for {length:,} feature rows")
    return value


def check_dict(value, key, path):
    """`value` as a dict (None -> {}), else UserError naming `key`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: '{key}' is {type(value).__name__}, expected a dict")
    return value
