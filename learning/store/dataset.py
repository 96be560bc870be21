"""Streaming access to the feature rows of a split: sources, one checking pass, Keras batches.

  ArraySource / StoreSource  the rows of one split: an in-memory array (old pickles,
                             benchmarks, tests) or rows of a FeatureStore read on demand
  scan_sources               ONE sequential pass over every row the sources hold: shard
                             checksums, finite values within range, and the training subset's
                             input-scaling statistics (RunningMoments), in bounded memory
  training_batches           a keras.utils.PyDataset of shuffled (x, y, sample weight) batches,
                             grid-augmented afresh each epoch when asked
  predict_logits             logits of a model over a source, batch by batch

Peak memory is a few batches of rows, whatever the number of images: rows are read with
os.preadv into small arrays (learning/store/shards.py), never memory-mapped.
"""
import numpy as np

from learning.store.index import MAX_MAGNITUDE
from scraper.cli import UserError

SCAN_BLOCK_ROWS = 32    # 6 MiB of float32 rows at the default shape: small temporaries


class ArraySource:
    """Rows of an in-memory array (N, *shape); `read(positions)` -> float32 rows."""

    store = None

    def __init__(self, features, where="features"):
        self.features, self.where = features, where
        self.shape = tuple(features.shape[1:])

    def __len__(self):
        return len(self.features)

    def read(self, positions):
        return np.asarray(self.features[np.asarray(positions, dtype=np.int64)],
                          dtype=np.float32)

    def scan(self, block_rows=SCAN_BLOCK_ROWS):
        for start in range(0, len(self), block_rows):
            positions = np.arange(start, min(start + block_rows, len(self)))
            yield positions, self.read(positions)


class StoreSource:
    """Rows `rows` (store indices) of a FeatureStore; position i of the source = store row
    rows[i]."""

    def __init__(self, store, rows):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)
        self.shape = tuple(store.shape)
        self.where = store.path

    def __len__(self):
        return len(self.rows)

    def read(self, positions):
        return self.store.read(self.rows[np.asarray(positions, dtype=np.int64)])


def as_source(features):
    """A source from an ndarray (kept as is) or a source."""
    return ArraySource(features) if isinstance(features, np.ndarray) else features


class RunningMoments:
    """Mean and variance over streamed blocks (Chan et al.'s pairwise update, float64): of all
    values ("global"), or per feature over rows ("standardize")."""

    def __init__(self, per_feature=False):
        self.per_feature = per_feature
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, block):
        values = np.asarray(block) if self.per_feature else np.asarray(block).reshape(-1)
        n = len(values)
        if n == 0:
            return
        mean = values.mean(axis=0, dtype=np.float64)
        centred = values - mean.astype(values.dtype)       # one temporary of the block's size
        m2 = np.einsum("i...,i...->...", centred, centred, dtype=np.float64)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def variance(self):
        return self.m2 / self.count if self.count else 0.0


def scaling_stats(moments, input_scaling):
    """head.input_scaling_stats' result from RunningMoments: "global" -> {"scale": 1/std},
    "standardize" -> {"mean", "variance"} (dead features' variance 1), "none" -> None."""
    if input_scaling == "none":
        return None
    if input_scaling == "global":
        std = float(np.sqrt(moments.variance()))
        return {"scale": 1.0 / std if std > 0 else 1.0}
    if input_scaling == "standardize":
        variance = np.array(moments.variance(), dtype=np.float64)
        variance[variance < 1e-8] = 1.0  # constant (dead) features: no division by ~0 later
        return {"mean": np.asarray(moments.mean, np.float32),
                "variance": variance.astype(np.float32)}
    raise ValueError(f"invalid input scaling {input_scaling!r}")


def source_scaling_stats(source, positions, input_scaling, block=SCAN_BLOCK_ROWS):
    """scaling_stats over the source's rows `positions`, streamed `block` rows at a time."""
    moments = RunningMoments(per_feature=input_scaling == "standardize")
    if input_scaling != "none":
        for start in range(0, len(positions), block):
            moments.add(source.read(positions[start:start + block]))
    return scaling_stats(moments, input_scaling)


class _ValueCheck:
    """Counts rows with NaN/infinity or values beyond MAX_MAGNITUDE; the first one's name."""

    def __init__(self):
        self.bad, self.huge, self.first_bad, self.first_huge, self.largest = 0, 0, None, None, 0.0

    def add(self, block, names):
        flat = block.reshape(len(block), -1)
        # per row, no temporary of the block's size: NaN and infinity propagate through max/min
        largest = np.maximum(flat.max(axis=1, initial=-np.inf), -flat.min(axis=1, initial=np.inf))
        finite = np.isfinite(largest)                                 # (rows,)
        huge = finite & (largest > MAX_MAGNITUDE)
        if (~finite).any():
            self.bad += int((~finite).sum())
            self.first_bad = self.first_bad or names(np.flatnonzero(~finite)[0])
        if huge.any():
            self.huge += int(huge.sum())
            self.first_huge = self.first_huge or names(np.flatnonzero(huge)[0])
            self.largest = max(self.largest, float(largest[huge].max()))

    def raise_if_bad(self, where, total):
        if self.bad:
            raise UserError(f"{where}: feature rows of {self.bad:,} of {total:,} images hold "
                            f"NaN or infinite values (first: {self.first_bad}); re-run stage 3")
        if self.huge:
            raise UserError(f"{where}: feature rows of {self.huge:,} of {total:,} images hold "
                            f"values up to {self.largest:.3g} in magnitude (first: "
                            f"{self.first_huge}); VGG16 features stay below "
                            f"{MAX_MAGNITUDE:.0e}, such values overflow float32 in the head: "
                            f"the features are corrupt, re-run stage 3")


def scan_sources(sources, names, moments_of=None, input_scaling="none"):
    """Read every row of every source once (sources sharing a store: one pass over it, each
    shard checked against its sha256) and check the values; return the scaling statistics of
    source number `moments_of`'s rows flagged in its `train_mask` (a (source, mask) pair).

    sources: [source]; names: [[name per position]] for messages; moments_of: (source number,
    bool mask over its positions) or None.
    """
    moments = RunningMoments(per_feature=input_scaling == "standardize")
    check = _ValueCheck()
    total = sum(len(s) for s in sources)
    for number, positions, block in _scan_rows(sources):
        check.add(block, lambda i: names[number][positions[i]])
        if moments_of is not None and number == moments_of[0] and input_scaling != "none":
            moments.add(block[moments_of[1][positions]])
    check.raise_if_bad(sources[0].where, total)
    return scaling_stats(moments, input_scaling)


def _scan_rows(sources):
    """(source number, positions, float32 rows) over all sources; store-backed sources of one
    store are read together in one pass over its shards."""
    by_store = {}
    for number, source in enumerate(sources):
        if getattr(source, "store", None) is None:
            for positions, block in source.scan():
                yield number, positions, block
        else:
            by_store.setdefault(id(source.store), []).append(number)
    for numbers in by_store.values():
        store = sources[numbers[0]].store
        inverse = {}
        wanted = np.zeros(len(store), dtype=bool)
        for number in numbers:
            where = np.full(len(store), -1, dtype=np.int64)
            where[sources[number].rows] = np.arange(len(sources[number]))
            inverse[number] = where
            wanted[sources[number].rows] = True
        for indices, block in store.scan(wanted, SCAN_BLOCK_ROWS):
            for number in numbers:
                positions = inverse[number][indices]
                keep = positions >= 0
                if keep.any():
                    yield number, positions[keep], block[keep]


def training_batches(source, positions, labels, sample_weight, batch_size, seed,
                     augment=None):
    """keras.utils.PyDataset over source rows `positions`: shuffled each epoch (seeded by
    (seed, epoch)), each batch read in sorted row order, `augment(x, rng)` applied with a
    generator seeded by (seed, epoch, batch) so the batches never depend on thread timing.
    Yields (x (n, *shape) float32, labels (n,), sample weights (n,) float32)."""
    import keras

    positions = np.asarray(positions, dtype=np.int64)
    labels = np.asarray(labels)
    sample_weight = np.asarray(sample_weight, dtype=np.float32)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = self._shuffled()

        def _shuffled(self):
            return positions[np.random.default_rng([seed, self.epoch]).permutation(
                len(positions))]

        def __len__(self):
            return int(np.ceil(len(positions) / batch_size))

        def __getitem__(self, index):
            idx = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            x = source.read(idx)
            if augment is not None:
                x = augment(x, np.random.default_rng([seed, self.epoch, index]))
            return x, labels[idx], sample_weight[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._shuffled()

    return Batches()


def predict_logits(model, source, positions=None, batch_size=64):
    """(len(positions), outputs) float64 logits of `model` on the source's rows (all by
    default): 2 [normal, abnormal], + K findings with --findings; through one compiled forward
    function per model (learning.gradients.forward)."""
    from learning.gradients import forward

    positions = np.arange(len(source)) if positions is None else np.asarray(positions)
    out = np.empty((len(positions), int(model.outputs[0].shape[-1])), dtype=np.float64)
    for start in range(0, len(positions), batch_size):
        part = positions[start:start + batch_size]
        out[start:start + len(part)] = np.asarray(forward(model, source.read(part)))
    return out
