"""The features index: `transfer_features.pickle` names the images and where their rows live.

Format "cxr-features/2" (stage 3 writes it; a self-describing dict, read through
learning.safe_pickle):
  names           [str], sorted: image file names inside the images folder
  content_hashes  uint8 (N, 32): sha256 of each image's bytes (what makes stage 3
                  incremental; zeros when unknown)
  shape           [h, w, C] (or [C] when pooled): one image's feature row
  dtype           "float16" (default) or "float32": how rows are stored on disk
  locations       int64 (N, 2): [shard number, row in that shard] of each name
  shards          [{"file", "rows", "bytes", "sha256"}]: .npy files in the folder
                  `<index>.shards/`, their row count, byte size and sha256 of the data bytes
  params          {"weights", "image_size", "layer", "pooling", "preprocessing", "precision"}:
                  what made the features (any change recomputes them all)
  failures        [{"name", "reason"}]: images stage 3 could not read
  store_id        sha256 over all of the above: stage 4 records it, stage 5 checks it
  description     what these fields mean (this text, short)

The single-pickle format of earlier versions, "cxr-features/1" (one float32 "features" array
holding every row), still opens: `open_store` gives the same interface over the array in
memory (LegacyStore), and re-running stage 3 with the same arguments converts it into shards
without recomputing a single feature.
"""
import hashlib
import itertools
import json
import os

import numpy as np

from learning import safe_pickle
from learning.store.shards import DTYPES, ShardReader, row_bytes
from scraper.cli import UserError

FORMAT = "cxr-features/2"
LEGACY_FORMAT = "cxr-features/1"
FORMATS = (FORMAT, LEGACY_FORMAT)
DESCRIPTION = (
    "Stage 3's features index (cxr-extract-features). names: image file names; content_hashes: "
    "sha256 of each image file; shape: one image's feature row; dtype: storage type of the "
    "rows; locations: [shard, row] of each name; shards: .npy files in <this file>.shards/ "
    "with rows, bytes and sha256 of their data; params: what made the features; failures: "
    "images that could not be read; store_id: identity of this exact content (stage 4 "
    "records it, stage 5 checks it).")
# VGG16 features (ReLU outputs, max-pooled) stay far below this with any weights file; values
# beyond it (e.g. 3e38) overflow float32 inside a dense layer and are corrupt input.
MAX_MAGNITUDE = 1e9


def shards_folder(index_path):
    """`data/transfer_features.pickle` -> `data/transfer_features.pickle.shards`."""
    return os.fspath(index_path) + ".shards"


def digests_array(hashes):
    """[hex sha256 or ""] -> uint8 (N, 32); "" (unknown) -> zeros."""
    out = np.zeros((len(hashes), 32), dtype=np.uint8)
    for i, text in enumerate(hashes):
        if text:
            out[i] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    return out


def store_id(params, dtype, shape, names, digests, locations, shards):
    """sha256 of everything the index says: equal ids mean equal feature rows."""
    digest = hashlib.sha256()
    digest.update(json.dumps([params, dtype, list(shape)], sort_keys=True,
                             default=str).encode())
    for name in names:
        digest.update(f"{name}\0".encode())
    digest.update(np.ascontiguousarray(digests, np.uint8).tobytes())
    digest.update(np.ascontiguousarray(locations, np.int64).tobytes())
    for entry in shards:
        digest.update(f"{entry['file']}\0{entry['rows']}\0{entry['sha256']}\0".encode())
    return digest.hexdigest()


def check_row_shape(shape, path):
    """A row shape must hold values: (0, 0, 512) or (0,) is refused in one line."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise UserError(f"{path}: feature rows have shape {shape}, which holds no values "
                        f"(expected (h, w, C) or (C,) with every size >= 1; was the image "
                        f"size too small for the layer?); re-run stage 3")
    return shape


class FeatureStore:
    """A "cxr-features/2" index and its shards: `read(indices)` -> float32 rows."""

    legacy = False

    def __init__(self, path, data, folder=None):
        self.path = os.fspath(path)
        self.names = safe_pickle.check_str_list(data.get("names"), "names", path)
        self.digests = safe_pickle.check_array(data.get("content_hashes"), "content_hashes",
                                               path, ndims=(2,))
        if self.digests.shape != (len(self.names), 32) or self.digests.dtype != np.uint8:
            raise UserError(f"{path}: 'content_hashes' must be uint8 "
                            f"({len(self.names):,}, 32)")
        self.params = dict(safe_pickle.check_dict(data.get("params"), "params", path))
        self.failures = data.get("failures") or []
        self.shape = check_row_shape(data.get("shape") or (), path)
        self.dtype = data.get("dtype")
        if self.dtype not in DTYPES:
            raise UserError(f"{path}: 'dtype' is {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        self.locations = safe_pickle.check_array(data.get("locations"), "locations", path,
                                                 ndims=(2,)).astype(np.int64, copy=False)
        self.shards = data.get("shards")
        if not isinstance(self.shards, list) or not all(
                isinstance(s, dict) and isinstance(s.get("file"), str)
                and os.path.basename(s["file"]) == s["file"] and s["file"].endswith(".npy")
                and isinstance(s.get("rows"), int) and isinstance(s.get("bytes"), int)
                for s in self.shards):
            raise UserError(f"{path}: 'shards' must be a list of {{file, rows, bytes, sha256}} "
                            f"with plain .npy file names")
        self._check_locations()
        self.store_id = data.get("store_id") or store_id(
            self.params, self.dtype, self.shape, self.names, self.digests, self.locations,
            self.shards)
        self.folder = folder or shards_folder(path)
        self.reader = ShardReader(self.folder, self.shards, self.shape, self.dtype)

    def _check_locations(self):
        n = len(self.names)
        if self.locations.shape != (n, 2):
            raise UserError(f"{self.path}: 'locations' has shape {self.locations.shape} for "
                            f"{n:,} names; expected ({n:,}, 2)")
        if n and (self.locations.min() < 0 or self.locations[:, 0].max() >= len(self.shards)
                  or np.any(self.locations[:, 1] >= np.asarray(
                      [s["rows"] for s in self.shards], np.int64)[self.locations[:, 0]])):
            raise UserError(f"{self.path}: 'locations' point outside the shards it lists")

    def __len__(self):
        return len(self.names)

    @property
    def content_hashes(self):
        """[hex sha256] ("" when unknown), made on demand (stage 3's reuse plan)."""
        return [d.tobytes().hex() if d.any() else "" for d in self.digests]

    @property
    def row_bytes(self):
        return row_bytes(self.shape, self.dtype)

    def check_files(self):
        """Every shard the index lists exists with the header and size it records (cheap:
        one header read per shard; the checksums are checked by `scan`)."""
        for number in range(len(self.shards)):
            self.reader.check(number)

    def read(self, indices, out=None):
        """float32 rows (len(indices), *shape) of the given store indices, in their order."""
        indices = np.asarray(indices, dtype=np.int64)
        where = self.locations[indices]                          # (n, 2) [shard, row]
        order = np.lexsort((where[:, 1], where[:, 0]))            # by shard, then row
        raw = np.empty((len(indices),) + self.shape, self.dtype)  # shard dtype, sorted order
        sorted_where = where[order]
        bounds = np.flatnonzero(np.diff(sorted_where[:, 0])) + 1
        for part in np.split(np.arange(len(order)), bounds):
            if len(part):
                self.reader.read_into(int(sorted_where[part[0], 0]), sorted_where[part, 1],
                                      raw[part[0]:part[-1] + 1])
        if out is None:
            out = np.empty((len(indices),) + self.shape, np.float32)
        out[order] = raw
        return out

    def scan(self, wanted, block_rows=256):
        """Yield (store indices, float32 rows) for every index in `wanted` (bool mask over the
        store), reading each shard holding one of them from start to end and checking its
        sha256. Memory: one block of `block_rows` rows, whatever the store's size."""
        wanted = np.asarray(wanted, dtype=bool)
        for number in np.unique(self.locations[wanted, 0]):
            rows_here = np.flatnonzero((self.locations[:, 0] == number) & wanted)
            by_row = np.full(self.shards[number]["rows"], -1, np.int64)
            by_row[self.locations[rows_here, 1]] = rows_here
            for first, block in self.reader.iter_blocks(int(number), block_rows):
                index = by_row[first:first + len(block)]
                keep = index >= 0
                if keep.any():
                    yield index[keep], block[keep].astype(np.float32)

    def close(self):
        self.reader.close()


class LegacyStore:
    """The same interface over a "cxr-features/1" pickle: every row in memory (as before)."""

    legacy = True
    dtype = "float32"

    def __init__(self, path, data):
        self.path = os.fspath(path)
        self.features = safe_pickle.check_array(data.get("features"), "features", path,
                                                finite=True)
        self.names = safe_pickle.check_str_list(data.get("names"), "names", path)
        self.params = dict(safe_pickle.check_dict(data.get("params"), "params", path))
        hashes = data.get("content_hashes")
        self.content_hashes = (safe_pickle.check_str_list(hashes, "content_hashes", path,
                                                          len(self.names))
                               if hashes is not None else [""] * len(self.names))
        self.failures = data.get("failures") or []
        if len(self.features) != len(self.names):
            raise UserError(f"{path}: features have shape {self.features.shape} for "
                            f"{len(self.names)} names; expected (N, h, w, C) or (N, C) with "
                            f"N = number of names")
        self.shape = check_row_shape(self.features.shape[1:], path)
        self.features = self.features.astype(np.float32, copy=False)
        digest = hashlib.sha256(LEGACY_FORMAT.encode())
        for name, content in zip(self.names, self.content_hashes):
            digest.update(f"{name}\0{content}\0".encode())
        digest.update(memoryview(np.ascontiguousarray(self.features)).cast("B"))
        self.store_id = "legacy-" + digest.hexdigest()

    def __len__(self):
        return len(self.names)

    def check_files(self):
        pass

    def read(self, indices, out=None):
        rows = self.features[np.asarray(indices, dtype=np.int64)]
        if out is not None:
            out[...] = rows
            return out
        return rows

    def scan(self, wanted, block_rows=256):
        indices = np.flatnonzero(np.asarray(wanted, dtype=bool))
        for start in range(0, len(indices), block_rows):
            part = indices[start:start + block_rows]
            yield part, self.features[part]

    def close(self):
        pass


def strictly_sorted(names):
    """True when every name is greater than the one before it (sorted, no duplicate): what
    stage 3 writes, checked without a set of the names."""
    return all(a < b for a, b in zip(names, itertools.islice(names, 1, None)))


def open_store(path, what="features index", rows=True):
    """A FeatureStore (cxr-features/2) or LegacyStore (cxr-features/1), checked; UserError
    naming the file otherwise. rows=False: for a caller that reads no row (stage 4), the
    per-row locations and hashes are dropped once checked (48 bytes an image)."""
    data = safe_pickle.load(path, what, kind=FORMATS)
    store = FeatureStore(path, data) if data["format"] == FORMAT else LegacyStore(path, data)
    del data
    names = store.names   # sorted, as stage 3 writes them: no duplicate, and no set needed
    if not strictly_sorted(names) and len(set(names)) != len(names):
        raise UserError(f"{path}: duplicate image names in the features index")
    if not rows and not store.legacy:
        store.check_files()
        store.locations = store.digests = None
    return store


def write_index(path, names, hashes, shape, dtype, locations, shards, params, failures,
                kind=FORMAT):
    """Atomically write a "cxr-features/2" index (or, with `kind`, a checkpoint of the same
    layout); returns its store_id."""
    locations = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
    digests = hashes if isinstance(hashes, np.ndarray) else digests_array(hashes)
    identity = store_id(params, dtype, shape, names, digests, locations, shards)
    safe_pickle.dump({"format": kind, "description": DESCRIPTION, "names": list(names),
                      "content_hashes": digests, "shape": [int(n) for n in shape],
                      "dtype": dtype, "locations": locations, "shards": list(shards),
                      "params": params, "failures": list(failures), "store_id": identity},
                     path)
    return identity


def write_store(path, names, blocks, shape, params, dtype="float16", shard_bytes=256 << 20,
                hashes=None, failures=()):
    """A complete store from rows: `blocks` yields float arrays (n, *shape) in the order of
    `names`, written into new shards beside `path`, then the index. For imports of features
    made elsewhere, synthetic benchmarks and tests; stage 3 itself goes through
    learning/store/incremental.py. Returns the store_id."""
    from learning.store.shards import ShardWriter

    shards, locations = [], []

    def closed(entry):
        locations.extend((len(shards), row) for row in range(entry["rows"]))
        shards.append(entry)

    writer = ShardWriter(shards_folder(path), shape, dtype,
                         max(1, int(shard_bytes // row_bytes(shape, dtype))), closed)
    count = 0
    for block in blocks:
        writer.add(block)
        count += len(block)
    writer.close_shard()
    if count != len(names):
        raise ValueError(f"{count} rows for {len(names)} names")
    return write_index(path, names, [""] * len(names) if hashes is None else hashes, shape,
                       dtype, locations, shards, params, list(failures))
