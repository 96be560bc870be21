"""Stage 3's bookkeeping: what to reuse, where each row goes, checkpoints, stale files.

  list_images / hash_images   the images folder and the sha256 of each file's bytes
  read_source                 a previous index or checkpoint as a reuse source
  plan_reuse                  which images are reused from where, which are computed
  Placement                   where every row of the new index lives: a kept shard of a
                              source, or a new shard (computed rows, and rows copied from a
                              cxr-features/1 pickle, a wider dtype or a mostly dead shard)
  remove_stale_shards         shards no index or checkpoint lists (a killed run's)

Rows are never held all in memory: computed rows go to a ShardWriter as batches arrive, and
the checkpoint `<features>.partial` (a small index of the rows placed so far, no rows in it)
is written each time a shard is complete, so a run killed at any point loses at most the
shard being written.
"""
import contextlib
import os

import numpy as np

from learning import safe_pickle
from learning.store.index import FORMAT, LEGACY_FORMAT, FeatureStore, LegacyStore
from learning.store.shards import ShardWriter, row_bytes
from scraper.cli import UserError, log, progress_bar
from scraper.fileio import file_hash
from scraper.images import is_image_name

PARTIAL_FORMAT = "cxr-features-partial/2"
PROG = "cxr-extract-features"
# A kept shard whose live rows fall below this share is rewritten (its rows copied to a new
# shard) so deleted images do not pin disk space forever.
MIN_LIVE_SHARE = 0.5


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


def read_source(path, what, folder=None):
    """A previous output ("features") or checkpoint as a FeatureStore / LegacyStore, or None.

    An unusable features file is refused (it is not ours to overwrite); an unusable checkpoint
    is ignored (it is only a cache). `folder`: where its shards are (default: its own)."""
    if not os.path.exists(path):
        return None
    try:
        data = safe_pickle.load(path, f"{what} file")
        found = data.get("format") if isinstance(data, dict) else None
        if what == "features" and found == LEGACY_FORMAT:
            return LegacyStore(path, data)
        if found != (FORMAT if what == "features" else PARTIAL_FORMAT):
            raise UserError(f"{path} is not a {what} file (format {str(found)[:40]!r})")
        return FeatureStore(path, data, folder=folder)
    except UserError as error:
        if what == "features":
            raise UserError(f"{error}; refusing to overwrite it: delete it or choose another "
                            f"output path") from None
        log(f"{PROG}: ignoring unusable checkpoint {path} ({error})")
        return None


def check_shards(stores):
    """Mark the rows of reuse sources whose shard is missing, truncated or fails its sha256
    (store.usable, a bool mask): they are recomputed, never reused. Each shard file is read
    once (a checkpoint lists many of the previous output's shards); one line per bad one."""
    verdicts = {}
    for store in stores:
        if not isinstance(store, FeatureStore):
            continue
        store.usable = np.ones(len(store), dtype=bool)
        for number, entry in enumerate(store.shards):
            key = (entry["file"], entry["rows"], entry["bytes"], entry["sha256"])
            if key not in verdicts:
                verdicts[key] = store.reader.damage(number)
                if verdicts[key] is not None:
                    log(f"{PROG}: recomputing the features of {entry['file']}: "
                        f"{verdicts[key]}")
            if verdicts[key] is not None:
                store.usable[store.locations[:, 0] == number] = False


def plan_reuse(names, hashes, candidates, params, dtype):
    """-> (sources, reuse {position: (source number, store index)}, to_compute [positions]).

    A row is reused from the first candidate (previous output, then checkpoint) made with
    exactly `params` that holds the same name with the same bytes, stored as `dtype` or as
    float32 (cast down); a float16 source never fills a float32 store (that would lose
    precision silently), so its rows are recomputed. Rows of damaged shards (check_shards)
    are recomputed too.
    """
    sources = [c for c in candidates if c is not None and c.params == params
               and (c.dtype == dtype or c.dtype == "float32")]
    check_shards(sources)
    lookup = [{n: (h, i) for i, (n, h) in enumerate(zip(s.names, s.content_hashes))
               if usable is None or usable[i]}
              for s, usable in ((s, getattr(s, "usable", None)) for s in sources)]
    reuse, to_compute = {}, []
    for position, (name, digest) in enumerate(zip(names, hashes)):
        if digest is None:
            continue
        for number, table in enumerate(lookup):
            found = table.get(name)
            if found is not None and found[0] == digest:
                reuse[position] = (number, found[1])
                break
        else:
            to_compute.append(position)
    return sources, reuse, to_compute


class Placement:
    """Where each row of the output lives: locations[position] = (shard number, row), with
    `shards` the output's shard list. Kept shards of the sources keep their files; everything
    else goes through one ShardWriter into new shards of `folder`."""

    def __init__(self, count, folder, dtype, shard_bytes, on_checkpoint=None):
        self.locations = np.full((count, 2), -1, dtype=np.int64)
        self.shards, self._shard_numbers = [], {}     # file name -> number in self.shards
        self.folder, self.dtype, self.shard_bytes = folder, dtype, shard_bytes
        self.on_checkpoint = on_checkpoint
        self.writer = None
        self._pending = []                             # positions in the open new shard
        self.copied = 0
        self.new_shards = 0

    def done(self):
        return self.locations[:, 0] >= 0

    def _shard(self, entry):
        number = self._shard_numbers.get(entry["file"])
        if number is None:
            number = self._shard_numbers[entry["file"]] = len(self.shards)
            self.shards.append(entry)
        return number

    def keep(self, reuse, sources):
        """Reused rows stay in their source's shard file when it has this dtype, lies in this
        folder and is mostly alive; the others are returned to be copied, as
        [(source, [(position, store index), ...]), ...]."""
        to_copy, live = {}, {}
        for position, (number, index) in reuse.items():
            source = sources[number]
            if (isinstance(source, FeatureStore) and source.dtype == self.dtype
                    and os.path.realpath(source.folder) == os.path.realpath(self.folder)):
                entry = source.shards[int(source.locations[index, 0])]
                live.setdefault(entry["file"], (entry, []))[1].append((number, position, index))
            else:
                to_copy.setdefault(number, []).append((position, index))
        for entry, triples in live.values():
            if len(triples) >= MIN_LIVE_SHARE * entry["rows"]:
                target = self._shard(entry)
                for number, position, index in triples:
                    self.locations[position] = (target, sources[number].locations[index, 1])
            else:
                for number, position, index in triples:
                    to_copy.setdefault(number, []).append((position, index))
        return [(sources[n], sorted(pairs)) for n, pairs in sorted(to_copy.items())]

    def copy(self, source, pairs, row_shape, block=256):
        """Copy rows of `source` (a store) into new shards, `block` rows at a time."""
        for start in range(0, len(pairs), block):
            part = pairs[start:start + block]
            rows = source.read([index for _, index in part])
            self.put([position for position, _ in part], rows, row_shape)
            self.copied += len(part)

    def put(self, positions, rows, row_shape):
        """New rows (n, *row_shape) for `positions` -> the open new shard."""
        if self.writer is None:
            shard_rows = max(1, int(self.shard_bytes // row_bytes(row_shape, self.dtype)))
            self.writer = ShardWriter(self.folder, row_shape, self.dtype, shard_rows,
                                      self._closed, first_number=self._next_number())
        self._pending.extend(int(p) for p in positions)   # _closed takes them in order
        self.writer.add(rows)

    def _next_number(self):
        numbers = [int(e["file"].split("-", 1)[0]) for e in self.shards
                   if e["file"].split("-", 1)[0].isdigit()]
        existing = [int(n.split("-", 1)[0]) for n in _shard_files(self.folder)]
        return max(numbers + existing, default=-1) + 1

    def _closed(self, entry):
        number = self._shard(entry)
        positions = self._pending[:entry["rows"]]
        del self._pending[:entry["rows"]]
        self.locations[positions, 0] = number
        self.locations[positions, 1] = np.arange(len(positions))
        self.new_shards += 1
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def flush(self):
        """Close the open new shard (a checkpoint follows)."""
        if self.writer is not None:
            self.writer.close_shard()

    def abandon(self):
        if self.writer is not None:
            self.writer.abandon()
            self._pending.clear()

    def compact_shards(self, positions):
        """(positions' locations renumbered over only the shards they use, those shards)."""
        used = np.unique(self.locations[positions, 0])
        renumber = np.full(len(self.shards), -1, np.int64)
        renumber[used] = np.arange(len(used))
        locations = self.locations[positions].copy()
        locations[:, 0] = renumber[locations[:, 0]]
        return locations, [self.shards[int(n)] for n in used]


def cleanup_partial(output_path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial_path(output_path))


def _shard_files(folder):
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return [e.name for e in os.scandir(folder) if e.name.endswith(".npy")
                and not e.name.startswith(".")]
    return []


def remove_stale_shards(folder, keep):
    """Delete shard files of `folder` not named in `keep` (a set of file names); our temp
    files there are removed by scraper.fileio.remove_stale_temp_files. Returns the count."""
    removed = 0
    for name in _shard_files(folder):
        if name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed
