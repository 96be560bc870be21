"""Stage 3's bookkeeping: what to reuse, the feature table, checkpoints, the output lock.

Each piece can be read and tested alone:
  list_images / hash_images   the images folder and the sha256 of each file's bytes
  read_previous               a previous output or checkpoint as {name: (hash, row)}
  plan_reuse                  which images are reused from where, which are computed
  FeatureTable                the one (N, *row) float32 array, filled from reuse and batches
  Checkpointer                <features>.partial every `every` seconds (kept under ~10 % of run)
The output folder's lock and the temp-file clean-up are scraper.fileio's, shared by all stages.
"""
import contextlib
import os
import time

import numpy as np

from learning import safe_pickle
from scraper.cli import UserError, log, progress_bar
from scraper.fileio import file_hash
from scraper.images import is_image_name

FORMAT = "cxr-features/1"
PARTIAL_FORMAT = "cxr-features-partial/1"
PROG = "cxr-extract-features"


def partial_path(output_path):
    return os.fspath(output_path) + ".partial"


def list_images(images_dir):
    """Sorted image file names in `images_dir` and the number of other entries skipped."""
    images_dir = os.fspath(images_dir)
    if not os.path.exists(images_dir):
        raise UserError(f"images folder not found: {images_dir}")
    if not os.path.isdir(images_dir):
        raise UserError(f"images path is not a folder: {images_dir}")
    names, skipped = [], 0
    with os.scandir(images_dir) as entries:
        for entry in entries:
            if entry.is_file() and is_image_name(entry.name):
                names.append(entry.name)
            else:
                skipped += 1
    if not names:
        raise UserError(f"no image files in {images_dir} (looked for "
                        f"{', '.join(('.png', '.jpg', '.jpeg', '...'))}; {skipped} other entries)")
    return sorted(names), skipped


def hash_images(images_dir, names, progress=True):
    """sha256 of each file's bytes; None (with the reason) for files that cannot be read."""
    hashes, unreadable = [], {}
    for name in progress_bar(names, desc="hashing", unit="img",
                             disable=not progress or len(names) < 2000, leave=False):
        try:
            hashes.append(file_hash(os.path.join(images_dir, name)))
        except OSError as error:
            hashes.append(None)
            unreadable[name] = f"unreadable file ({error.strerror or error})"
    return hashes, unreadable


def read_previous(path, what):
    """A previous features/checkpoint pickle as {params, names, rows, index, failures}.

    `index` maps name -> (hash, row). None when there is no such file (or, for a checkpoint,
    an unusable one: it is only a cache). An unusable features file is refused: it is not
    ours to overwrite.
    """
    if not os.path.exists(path):
        return None
    kind = FORMAT if what == "features" else PARTIAL_FORMAT
    try:
        obj = safe_pickle.load(path, what=f"{what} file", kind=kind)
    except UserError as error:
        if what == "features":
            raise UserError(f"{error}; refusing to overwrite it: delete it or choose another "
                            f"output path") from None
        log(f"{PROG}: ignoring unusable checkpoint {path} ({error})")
        return None
    rows = obj.get("features") if what == "features" else obj.get("rows")
    names, hashes = obj.get("names"), obj.get("content_hashes")
    if not (isinstance(names, list) and isinstance(hashes, list)
            and isinstance(obj.get("params"), dict) and rows is not None
            and len(names) == len(hashes) == len(rows)):
        if what == "features":
            raise UserError(f"{path} is an inconsistent {FORMAT} file (names, content_hashes and "
                            f"features differ in length); delete it to recompute")
        return None
    return {"params": obj["params"], "names": names, "rows": rows,
            "index": {n: (h, i) for i, (n, h) in enumerate(zip(names, hashes))},
            "failures": obj.get("failures", [])}


def plan_reuse(names, hashes, candidates, params):
    """-> (sources, reuse {position: (source number, row)}, to_compute [positions]).

    A row is reused from the first candidate (previous output, then checkpoint) made with
    exactly `params` that holds the same name with the same bytes; candidates made with other
    params are released at once (their arrays can be large).
    """
    sources = [c for c in candidates if c is not None and c["params"] == params]
    for stale in candidates:
        if stale is not None and all(stale is not source for source in sources):
            stale["rows"] = None
    reuse, to_compute = {}, []
    for position, (name, digest) in enumerate(zip(names, hashes)):
        if digest is None:
            continue
        for number, source in enumerate(sources):
            found = source["index"].get(name)
            if found is not None and found[0] == digest:
                reuse[position] = (number, found[1])
                break
        else:
            to_compute.append(position)
    return sources, reuse, to_compute


class FeatureTable:
    """The output array (N, *row_shape) float32, allocated once, plus which rows are done.

    Peak memory is this array plus a constant (plus the previous file while it is read):
    reused rows are copied in chunks and the sources' arrays released after.
    """

    def __init__(self, count, sources, reuse, previous=None):
        self.features = None
        self.done = np.zeros(count, dtype=bool)
        self.from_previous = np.zeros(count, dtype=bool)   # rows still safe in the old output
        for position, (number, _) in reuse.items():
            self.from_previous[position] = sources[number] is previous
        self._sources, self._reuse = sources, reuse
        if reuse:
            number, row = next(iter(reuse.values()))
            self.allocate(np.shape(sources[number]["rows"][row]))

    def allocate(self, row_shape):
        self.features = np.empty((len(self.done),) + tuple(row_shape), dtype=np.float32)
        for number, source in enumerate(self._sources):
            pairs = np.array([(p, r) for p, (n, r) in self._reuse.items() if n == number],
                             dtype=np.int64).reshape(-1, 2)
            rows = source["rows"]   # an array (previous output) or a list of rows (checkpoint)
            for chunk in range(0, len(pairs), 256):
                part = pairs[chunk:chunk + 256]
                block = (rows[part[:, 1]] if isinstance(rows, np.ndarray)
                         else np.stack([rows[r] for r in part[:, 1]]))
                self.features[part[:, 0]] = block
            self.done[pairs[:, 0]] = True
            source["rows"] = None

    def put(self, positions, outputs):
        """Rows at `positions` (list of ints) = outputs (n, *row_shape)."""
        if self.features is None:
            self.allocate(outputs.shape[1:])
        self.features[positions] = outputs
        self.done[positions] = True

    def unsaved(self):
        """Rows a crash would lose: done here, not in the previous output file."""
        return self.done & ~self.from_previous

    def compact(self):
        """-> (kept positions, features of those rows): failed rows dropped in place
        (ascending moves never overwrite a row still needed); a prefix view, no copy."""
        kept = np.flatnonzero(self.done)
        features = self.features
        if features is not None and kept.size < len(self.done):
            for target, source in enumerate(kept):
                if target != source:
                    features[target] = features[source]
            features = features[:kept.size]
        return kept, features


def write_checkpoint(output_path, names, hashes, table, params, rows=None):
    """The selected rows (default: the unsaved ones) to <features>.partial, as a list of row
    views (pickled without copying the big array)."""
    positions = np.flatnonzero(table.unsaved() if rows is None else rows)
    safe_pickle.dump({"format": PARTIAL_FORMAT, "params": params,
                      "names": [names[p] for p in positions],
                      "content_hashes": [hashes[p] for p in positions],
                      "rows": [table.features[p] for p in positions]}, partial_path(output_path))
    return len(positions)


def cleanup_partial(output_path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial_path(output_path))


class Checkpointer:
    """Write a checkpoint when `every` seconds passed; keep checkpoints under ~10 % of the run
    time as the file grows (the next one waits 9x as long as the last one took)."""

    def __init__(self, every):
        self.every = every
        self.last = time.monotonic()

    def maybe(self, write):
        if self.every and time.monotonic() - self.last >= self.every:
            started = time.monotonic()
            write()
            self.last = time.monotonic() + 9 * (time.monotonic() - started)
