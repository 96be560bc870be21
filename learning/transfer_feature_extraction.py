"""Stage 3: VGG16 convolutional features for every image in a folder, computed incrementally.

Reads:  <images>/   every image file in the folder (scraper.images.is_image_name; hidden files,
                    .DS_Store and other non-image files are skipped and counted)
        <weights>   Keras VGG16 no-top weights from cxr-download-model (or --random-weights)
Writes: <features>  the features INDEX, a pickle (learning/store/index.py, format
                    "cxr-features/2"): names, content hashes, row shape, storage dtype, the
                    shard list with each shard's size and sha256, params (weights hash, image
                    size, layer, pooling, preprocessing, precision), failures, store_id
        <features>.shards/  the rows: .npy shards of at most --shard-size-mb each, float16 by
                    default (--feature-dtype float32 keeps full precision; 196 KiB per image
                    at the default block4_pool, 224 px, in float16)
        <features>.partial  a small checkpoint index while a run is in progress (deleted on
                    success): a killed run loses at most the shard it was writing
        .cxr-lock   the output folder's lock (scraper.fileio.folder_lock): one writer at a time

Incremental: an image whose bytes (sha256) and params match the previous index keeps its row
where it is (an unchanged shard is never rewritten); new or changed images are computed, deleted
ones are dropped (a shard left mostly dead is rewritten). Any change of params (weights file,
image size, layer, pooling, preprocessing or precision) recomputes everything: bf16/fp16
compute differs from fp32 by up to ~1%, and mixing them would make a head's inputs depend on
which run computed them. A previous single-pickle output ("cxr-features/1") is converted into
shards by re-running with the same arguments, without recomputing a feature.

Layout: this file is the stage (parameters, the network, the run loop, the CLI); the decode
pipeline is learning/features_decode.py; shards, the index and the incremental bookkeeping are
learning/store/.

Example:
    cxr-extract-features data/images data/transfer_features.pickle data/vgg16.weights.h5
    python -m learning.transfer_feature_extraction demo/nih-24/images /tmp/features.pickle \\
        --random-weights --image-size 64      # offline smoke run, no ImageNet weights
"""
import contextlib
import dataclasses
import os
import time

import numpy as np

from learning import features_decode, vgg
from learning.store import incremental
from learning.store.incremental import partial_path
from learning.store.index import FeatureStore, shards_folder, write_index
from learning.store.shards import DTYPES
from scraper import cli as flags   # range-checked argparse types (`cli` is this stage's entry)
from scraper.cli import (ArgumentParser, UserError, elapsed_since, exit_with, fmt_count, log,
                         progress_bar)
from scraper.fileio import folder_lock, remove_stale_temp_files
from scraper.images import BadImage, add_max_pixels_argument, set_max_pixels

PROG = "cxr-extract-features"
PRECISIONS = ("fp32", "bf16", "fp16")
# Keras mixed precision: variables stay float32, the convolutions run in the low precision.
_DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_BATCH_SIZE = 1024
# Range-checked flag types (one line on a bad value, before any work or allocation).
IMAGE_SIZE = flags.bounded_int(vgg.MAX_IMAGE_SIZE, vgg.MIN_IMAGE_SIZE, "image size")
BATCH_SIZE = flags.bounded_int(MAX_BATCH_SIZE, what="batch size")
WORKERS = flags.bounded_int(256, what="worker count")
CHECKPOINT_EVERY = flags.number(float, 0, 7 * 24 * 3600, what="number of seconds")
SHARD_SIZE_MB = flags.number(float, 0.001, 4096, what="shard size (MiB)")
FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65,504


@dataclasses.dataclass
class Stats:
    """What one run did; `computed` counts images that went through the network."""
    total: int = 0          # image files found
    computed: int = 0
    reused: int = 0         # kept in place or copied from the previous output / checkpoint
    copied: int = 0         # of the reused: rewritten (old format, other dtype, dead shard)
    failed: int = 0
    skipped: int = 0        # non-image / hidden files in <images>
    written: bool = False   # False when the existing output was already up to date
    seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def images_per_second(self):
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0


def feature_params(weights_path=None, random_weights=False, seed=0, image_size=224,
                   layer="block5_pool", pooling="none", precision="fp32"):
    """The parameters that define the features; any difference forces a full recomputation."""
    if precision not in PRECISIONS:
        raise UserError(f"invalid precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if layer not in vgg.LAYERS:
        raise UserError(f"invalid layer {layer!r}; allowed: {', '.join(vgg.LAYERS)}")
    if pooling not in vgg.POOLINGS:
        raise UserError(f"invalid pooling {pooling!r}; allowed: {', '.join(vgg.POOLINGS)}")
    if image_size < 32:
        raise UserError(f"invalid image size {image_size}: VGG16 needs at least 32 pixels")
    if not random_weights:
        check_weights_file(weights_path)
    return {"weights": vgg.weights_identity(weights_path, random_weights, seed),
            "image_size": int(image_size), "layer": layer, "pooling": pooling,
            "preprocessing": vgg.PREPROCESSING, "precision": precision}


def check_weights_file(weights_path):
    """Cheap early check (no TensorFlow import): the file exists and is HDF5.

    Whether it holds VGG16 weights is checked when the network is built.
    """
    if not weights_path or not os.path.isfile(weights_path):
        vgg.weights_identity(weights_path)  # raises the one-line "not found" UserError
    with open(weights_path, "rb") as handle:
        head = handle.read(len(_HDF5_MAGIC))
    if head != _HDF5_MAGIC:
        raise UserError(f"{weights_path} is not a VGG16 weights file (not HDF5; expected the "
                        f"Keras VGG16 no-top .h5 from cxr-download-model)")


class FeatureModel:
    """The VGG16 conv base at one precision; built on first use so cached runs skip TensorFlow."""

    def __init__(self, weights_path, random_weights, seed, image_size, layer, pooling, precision):
        self.kwargs = dict(weights_path=weights_path, random_weights=random_weights, seed=seed,
                           image_size=image_size, layer=layer, pooling=pooling)
        self.precision = precision
        self.model = None
        self.build_seconds = 0.0   # TensorFlow import + graph + weights, kept out of img/s

    def build(self):
        if self.model is None:
            started = time.monotonic()
            with dtype_policy(self.precision):
                self.model = vgg.build_conv_base(**self.kwargs)
            self.build_seconds = time.monotonic() - started
        return self.model

    def __call__(self, images_uint8):
        """(n, S, S, 3) uint8 -> (n, ...) float32 features."""
        from learning.gradients import forward

        outputs = forward(self.build(), vgg.preprocess(images_uint8))  # compiled, any backend
        return np.asarray(outputs).astype(np.float32, copy=False)


@contextlib.contextmanager
def dtype_policy(precision):
    """Keras' global dtype policy for the layers created inside the block, restored after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_DTYPE_POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def extract_features(images_dir, output_path, weights_path=None, random_weights=False, seed=0,
                     image_size=224, layer="block5_pool", pooling="none", precision="fp32",
                     batch_size=16, workers=2, checkpoint_every=300.0, progress=True,
                     model=None, decode="auto", feature_dtype="float16", shard_size_mb=256.0):
    """Compute (or reuse) features for every image in `images_dir`; write the index
    `output_path` and its shards. `model` (a FeatureModel) may be passed to reuse an already
    built network (benchmarks). `decode`: "threads", "processes" or "auto"
    (learning.features_decode). Returns Stats."""
    start = time.monotonic()
    images_dir, output_path = os.fspath(images_dir), os.fspath(output_path)
    if batch_size < 1 or workers < 1:
        raise UserError(f"invalid batch size {batch_size} or workers {workers}: must be >= 1")
    if feature_dtype not in DTYPES:
        raise UserError(f"invalid feature dtype {feature_dtype!r}; allowed: {', '.join(DTYPES)}")
    names, skipped = incremental.list_images(images_dir)
    params = feature_params(weights_path, random_weights, seed, image_size, layer, pooling,
                            precision)
    if random_weights:
        log(f"{PROG}: WARNING: --random-weights: these features come from a RANDOMLY "
            f"initialised VGG16 (seed {seed}), not ImageNet weights; they are for offline "
            f"smoke tests only and mean nothing about X-rays")
    if os.path.isdir(output_path):
        raise UserError(f"features path is a folder, expected a file: {output_path}")
    folder = shards_folder(output_path)
    # One writer per data folder; then the only temp files to clean are killed runs' (a
    # running writer of any stage keeps its temp file locked, and a user's are not ours).
    with folder_lock(os.path.dirname(os.path.abspath(output_path)), PROG):
        remove_stale_temp_files(os.path.dirname(os.path.abspath(output_path)))
        remove_stale_temp_files(folder)
        stats = Stats(total=len(names), skipped=skipped)
        hashes, failures = incremental.hash_images(images_dir, names, progress)
        # Reuse sources: the previous output, then the checkpoint of an interrupted run.
        previous = incremental.read_source(output_path, "features")
        checkpoint = incremental.read_source(partial_path(output_path), "checkpoint", folder)
        incremental.remove_stale_shards(folder, {e["file"] for s in (previous, checkpoint)
                                                 if isinstance(s, FeatureStore)
                                                 for e in s.shards})
        sources, reuse, to_compute = incremental.plan_reuse(
            names, hashes, [previous, checkpoint], params, feature_dtype)
        stats.reused = len(reuse)
        run = _Run(names, hashes, params, output_path, failures, stats, progress,
                   checkpoint_every)
        run.placement = incremental.Placement(len(names), folder, feature_dtype,
                                              shard_size_mb * 2 ** 20, run.checkpoint)
        run.shape = next((s.shape for s in sources), None)
        for source, pairs in run.placement.keep(reuse, sources):
            run.placement.copy(source, pairs, source.shape)
        stats.copied = run.placement.copied
        del sources, checkpoint   # a cxr-features/1 source held every row in memory
        if to_compute:
            net = model or FeatureModel(weights_path, random_weights, seed, image_size, layer,
                                        pooling, precision)
            if (net.kwargs["image_size"], net.kwargs["layer"], net.kwargs["pooling"],
                    net.precision) != (image_size, layer, pooling, precision):
                raise ValueError("the model passed was built for other parameters")
            compute_start = time.monotonic()
            run.compute(net, to_compute, images_dir, image_size, batch_size, workers, decode)
            built_here = net.build_seconds if model is None else 0.0
            stats.compute_seconds = time.monotonic() - compute_start - built_here
        stats.written = run.write_result(previous, images_dir)
    stats.seconds = time.monotonic() - start
    return stats


class _Run:
    """The compute loop: decoded images -> batches -> network -> new shards (+ checkpoints)."""

    def __init__(self, names, hashes, params, output_path, failures, stats, progress,
                 checkpoint_every):
        self.names, self.hashes, self.params = names, hashes, params
        self.output_path, self.failures, self.stats = output_path, failures, stats
        self.progress, self.checkpoint_every = progress, checkpoint_every
        self.placement = self.shape = None
        self.bar = None      # opened once the network is built, so build errors print alone
        self.seen = 0        # images taken from the decode pipeline (computed or failed)
        self.last_checkpoint = time.monotonic()

    def compute(self, net, to_compute, images_dir, image_size, batch_size, workers, decode):
        paths = [os.path.join(images_dir, self.names[p]) for p in to_compute]
        mode = features_decode.choose_mode(decode, len(paths))
        batch = np.empty((batch_size, image_size, image_size, 3), dtype=np.uint8)
        positions = []
        try:
            for index, image in features_decode.iter_decoded(
                    paths, image_size, workers, max(2 * batch_size, 2 * workers), mode):
                self.seen += 1
                position = to_compute[index]
                if isinstance(image, BadImage):
                    self.failures[self.names[position]] = str(image)
                    if self.bar is not None:
                        self.bar.update(1)
                    continue
                batch[len(positions)] = image
                positions.append(position)
                if len(positions) == batch_size:
                    self.run_batch(net, batch, positions, len(to_compute))
            if positions:
                self.run_batch(net, batch, positions, len(to_compute))
        except KeyboardInterrupt:
            self.save_on_interrupt()
            raise
        except BaseException:
            self.placement.abandon()   # the shard being written goes; complete ones stay
            raise
        finally:
            if self.bar is not None:
                self.bar.close()

    def run_batch(self, net, batch, positions, total):
        n = len(positions)
        if self.bar is None:
            net.build()
            self.bar = progress_bar(total=total, initial=self.seen - n, desc="features",
                                    unit="img", disable=not self.progress, dynamic_ncols=True,
                                    smoothing=0.1)
        outputs = net(batch[:n])                        # (n, *row_shape) float32
        if self.placement.dtype == "float16":
            largest = float(np.abs(outputs).max(initial=0.0))
            if not largest <= FLOAT16_MAX:
                raise UserError(f"features up to {largest:.3g} in magnitude do not fit in "
                                f"float16 (largest {FLOAT16_MAX:,.0f}): re-run with "
                                f"--feature-dtype float32")
        self.shape = outputs.shape[1:]
        self.placement.put(positions, outputs, outputs.shape[1:])
        self.stats.computed += n
        self.bar.update(n)
        positions.clear()
        features_decode.malloc_trim()
        if self.checkpoint_every and \
                time.monotonic() - self.last_checkpoint >= self.checkpoint_every:
            self.placement.flush()      # closes the shard; its on_shard writes a checkpoint

    def checkpoint(self):
        """<features>.partial: a small index of every row placed so far (rows stay in the
        shards), written each time a shard is complete."""
        done = np.flatnonzero(self.placement.done())
        locations, shards = self.placement.compact_shards(done)
        write_index(partial_path(self.output_path), [self.names[p] for p in done],
                    [self.hashes[p] for p in done], self.shape, self.placement.dtype,
                    locations, shards, self.params, [], kind=incremental.PARTIAL_FORMAT)
        self.last_checkpoint = time.monotonic()
        return len(done)

    def save_on_interrupt(self):
        if self.bar is not None:
            self.bar.close()
        self.placement.flush()
        if self.placement.new_shards:
            log(f"{PROG}: saved {fmt_count(int(self.placement.done().sum()))} features in "
                f"{partial_path(self.output_path)}; re-run the same command to continue")

    def write_result(self, previous, images_dir):
        """Write the index unless it is already right; -> whether it was written."""
        self.placement.flush()
        self.stats.failed = len(self.failures)
        kept = np.flatnonzero(self.placement.done())
        if kept.size == 0:
            first = next(iter(sorted(self.failures.items())))
            raise UserError(f"none of the {fmt_count(len(self.names))} images in {images_dir} "
                            f"could be read (e.g. {first[0]}: {first[1]})")
        names = [self.names[p] for p in kept]
        failure_list = [{"name": n, "reason": r} for n, r in sorted(self.failures.items())]
        locations, shards = self.placement.compact_shards(kept)
        folder = self.placement.folder
        if (isinstance(previous, FeatureStore) and self.stats.computed == 0
                and self.placement.new_shards == 0 and previous.names == names
                and previous.failures == failure_list and previous.shards == shards
                and np.array_equal(previous.locations, locations)):
            # Same images, same bytes, same params, same failures: the index is already right.
            incremental.cleanup_partial(self.output_path)
            return False
        write_index(self.output_path, names, [self.hashes[p] for p in kept], self.shape,
                    self.placement.dtype, locations, shards, self.params, failure_list)
        incremental.cleanup_partial(self.output_path)
        incremental.remove_stale_shards(folder, {e["file"] for e in shards})
        return True


def summary_line(stats, output_path):
    rate = f", {stats.images_per_second:.1f} img/s" if stats.computed else ""
    status = "written to" if stats.written else "up to date:"
    return (f"cxr-extract-features: {fmt_count(stats.total)} images: "
            f"{fmt_count(stats.computed)} computed, {fmt_count(stats.reused)} reused"
            f"{f' ({fmt_count(stats.copied)} rewritten)' if stats.copied else ''}, "
            f"{fmt_count(stats.failed)} failed, {fmt_count(stats.skipped)} non-image files "
            f"skipped; {_fmt_seconds(stats.seconds)}{rate}; {status} {output_path}")


def _fmt_seconds(seconds):
    return elapsed_since(time.monotonic() - seconds)


def get_args_parser():
    parser = ArgumentParser(
        prog="cxr-extract-features",
        description="Stage 3: VGG16 conv features for every image in a folder (incremental: "
                    "only new or changed images are computed).")
    parser.add_argument("images", help="folder of X-ray images (stage 2's images/)")
    parser.add_argument("features", help="output index pickle, e.g. "
                                         "data/transfer_features.pickle (rows go to "
                                         "<features>.shards/)")
    parser.add_argument("weights", nargs="?", default=None,
                        help="VGG16 no-top weights from cxr-download-model "
                             "(omit with --random-weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="use a randomly initialised VGG16 (offline smoke runs and tests "
                             "ONLY: the features carry no ImageNet knowledge)")
    parser.add_argument("--seed", type=flags.seed, default=0,
                        help="seed of --random-weights")
    parser.add_argument("--image-size", type=IMAGE_SIZE, default=224,
                        help=f"images are resized to this square size (pixels, "
                             f"{vgg.MIN_IMAGE_SIZE}..{vgg.MAX_IMAGE_SIZE})")
    parser.add_argument("--layer", default="block4_pool", choices=vgg.LAYERS,
                        help="VGG16 layer whose output is stored (block4_pool: a 14x14 grid at "
                             "224 px for the cam head; block5_pool: the original's 7x7)")
    parser.add_argument("--pooling", default="none", choices=vgg.POOLINGS,
                        help="global pooling of the layer's output (none keeps the 7x7 grid)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="compute precision (Keras mixed precision); changing it "
                             "recomputes all features (storage: --feature-dtype)")
    parser.add_argument("--batch-size", type=BATCH_SIZE, default=16,
                        help="images per network call")
    parser.add_argument("--workers", type=WORKERS, default=2,
                        help="threads or processes decoding and resizing images ahead of the "
                             "network")
    parser.add_argument("--decode", default="auto", choices=features_decode.DECODE_MODES,
                        help="decode pool: processes scale across cores (GPU machines), "
                             "threads start at once; auto: processes for more than "
                             f"{features_decode.AUTO_MIN_IMAGES} images on more than 2 cores")
    parser.add_argument("--checkpoint-every", type=CHECKPOINT_EVERY, default=300.0,
                        help="seconds after which a partly filled shard is closed and "
                             "<features>.partial checkpointed (0: only when a shard is full "
                             "and on Ctrl-C)")
    parser.add_argument("--feature-dtype", default="float16", choices=DTYPES,
                        help="how feature rows are stored: float16 halves the disk (196 KiB per "
                             "image at block4_pool, 224 px); float32 keeps full precision")
    parser.add_argument("--shard-size-mb", type=SHARD_SIZE_MB, default=256.0,
                        help="largest shard file in MiB (0.001..4096)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_max_pixels_argument(parser)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    set_max_pixels(args.max_image_pixels)
    if args.random_weights and args.weights:
        log(f"cxr-extract-features: WARNING: --random-weights given, ignoring the weights file "
            f"{args.weights}")
    if not args.random_weights and not args.weights:
        raise UserError("no VGG16 weights given: pass the file from cxr-download-model as the "
                        "third argument, or --random-weights for an offline smoke run")
    stats = extract_features(
        args.images, args.features, weights_path=None if args.random_weights else args.weights,
        random_weights=args.random_weights, seed=args.seed, image_size=args.image_size,
        layer=args.layer, pooling=args.pooling, precision=args.precision,
        batch_size=args.batch_size, workers=args.workers,
        checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
        decode=args.decode, feature_dtype=args.feature_dtype, shard_size_mb=args.shard_size_mb)
    log(summary_line(stats, args.features))
    return 0


def cli():
    exit_with(main, "cxr-extract-features")


if __name__ == "__main__":
    cli()
