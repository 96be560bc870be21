"""Stage 3: VGG16 convolutional features for every image in a folder, computed incrementally.

Reads:  <images>/   every image file in the folder (scraper.images.is_image_name; hidden files,
                    .DS_Store and other non-image files are skipped and counted)
        <weights>   Keras VGG16 no-top weights from cxr-download-model (or --random-weights)
Writes: <features>  pickle (written atomically through learning.safe_pickle):
          {"format": "cxr-features/1",
           "names": [str],                  # file names inside <images>, sorted
           "features": float32 array,       # (N, 7, 7, 512) at 224 px; (N, 512) for avg/max
           "content_hashes": [str],         # sha256 of each image's bytes
           "params": {"weights", "image_size", "layer", "pooling", "preprocessing", "precision"},
           "failures": [{"name": str, "reason": str}]}
        <features>.partial  a checkpoint while a long run is in progress (deleted on success)

Incremental: an image whose bytes (sha256) and params match the previous <features> file is not
recomputed; new or changed images are computed, deleted ones are dropped. Any change of params
(weights file, image size, layer, pooling, preprocessing or precision) recomputes everything:
bf16/fp16 features differ from fp32 ones by up to ~1%, and mixing them would make a head's
inputs depend on which run computed them. Features are always stored as float32.

Example:
    cxr-extract-features data/images data/transfer_features.pickle data/vgg16.weights.h5
    python -m learning.transfer_feature_extraction demo/nih-24/images /tmp/features.pickle \\
        --random-weights --image-size 64      # offline smoke run, no ImageNet weights
"""
import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import os
import time

import numpy as np

from learning import safe_pickle, vgg
from scraper.cli import ArgumentParser, UserError, elapsed_since, exit_with, fmt_count, log
from scraper.fileio import file_hash, remove_stale_temp_files
from scraper.images import BadImage, is_image_name

FORMAT = "cxr-features/1"
PARTIAL_FORMAT = "cxr-features-partial/1"
PRECISIONS = ("fp32", "bf16", "fp16")
# Keras mixed precision: variables stay float32, the convolutions run in the low precision.
_DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass
class Stats:
    """What one run did; `computed` counts images that went through the network."""
    total: int = 0          # image files found
    computed: int = 0
    reused: int = 0
    failed: int = 0
    skipped: int = 0        # non-image / hidden files in <images>
    written: bool = False   # False when the existing output was already up to date
    seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def images_per_second(self):
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0


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


def hash_images(images_dir, names, progress=True):
    """sha256 of each file's bytes; None (with the reason) for files that cannot be read."""
    from tqdm import tqdm

    hashes, unreadable = [], {}
    for name in tqdm(names, desc="hashing", unit="img", disable=not progress or len(names) < 2000,
                     leave=False):
        try:
            hashes.append(file_hash(os.path.join(images_dir, name)))
        except OSError as error:
            hashes.append(None)
            unreadable[name] = f"unreadable file ({error.strerror or error})"
    return hashes, unreadable


def _read_previous(path, what):
    """A previous features/partial pickle as {name: (hash, row)} plus its params and rows.

    Returns None when there is no such file.
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
        log(f"cxr-extract-features: ignoring unusable checkpoint {path} ({error})")
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


def _iter_decoded(paths, image_size, workers, prefetch):
    """Yield (position, uint8 (S, S, 3) array or BadImage) in order.

    Decoding (PIL releases the GIL in zlib and resize) runs `prefetch` images ahead in a thread
    pool, overlapping the network; at most `prefetch` decoded images exist at any time.
    """
    def load(path):
        try:
            return vgg.load_image(path, image_size)
        except BadImage as error:
            return error
        except OSError as error:  # vanished or unreadable since it was listed
            return BadImage(f"unreadable file ({error.strerror or error})")

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        items = iter(enumerate(paths))
        pending = collections.deque()
        for position, path in items:
            pending.append((position, pool.submit(load, path)))
            if len(pending) >= prefetch:
                break
        try:
            while pending:
                position, future = pending.popleft()
                following = next(items, None)
                if following is not None:
                    pending.append((following[0], pool.submit(load, following[1])))
                yield position, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _malloc_trim():
    """Give freed heap memory back to the OS (glibc); a no-op elsewhere.

    Decode threads and TensorFlow's threads allocate from separate glibc arenas; without a
    trim their free lists grew the peak RSS by ~100 KB per image over long runs (measured:
    +69 MiB for 600 more 64 px images), so memory was not "output array + a constant".
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


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
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
                     model=None):
    """Compute (or reuse) features for every image in `images_dir`; write `output_path`.

    `model` (a FeatureModel) may be passed to reuse an already built network (benchmarks).
    Returns Stats.
    """
    from tqdm import tqdm

    start = time.monotonic()
    images_dir, output_path = os.fspath(images_dir), os.fspath(output_path)
    if batch_size < 1:
        raise UserError(f"invalid batch size {batch_size}: must be at least 1")
    if workers < 1:
        raise UserError(f"invalid number of workers {workers}: must be at least 1")
    names, skipped = list_images(images_dir)
    params = feature_params(weights_path, random_weights, seed, image_size, layer, pooling,
                            precision)
    if random_weights:
        log(f"cxr-extract-features: WARNING: --random-weights: these features come from a "
            f"RANDOMLY initialised VGG16 (seed {seed}), not ImageNet weights; they are for "
            f"offline smoke tests only and mean nothing about X-rays")
    out_dir = os.path.dirname(os.path.abspath(output_path))
    if os.path.isdir(output_path):
        raise UserError(f"features path is a folder, expected a file: {output_path}")
    remove_stale_temp_files(out_dir)
    stats = Stats(total=len(names), skipped=skipped)
    hashes, unreadable = hash_images(images_dir, names, progress)

    # Reuse sources: the previous output, then the checkpoint of an interrupted run; only
    # those made with exactly these params (weights, size, layer, pooling, precision...).
    previous = _read_previous(output_path, "features")
    checkpoint = _read_previous(partial_path(output_path), "checkpoint")
    sources = [s for s in (previous, checkpoint) if s is not None and s["params"] == params]
    for stale in (previous, checkpoint):
        if stale is not None and all(stale is not source for source in sources):
            stale["rows"] = None     # other params: nothing to reuse, free its array now

    reuse = {}          # position -> (source number, row in that source)
    to_compute = []     # positions, ascending (= sorted names)
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
    stats.reused = len(reuse)

    failures = dict(unreadable)
    features = None
    done = np.zeros(len(names), dtype=bool)   # rows of `features` that hold real values

    def allocate(row_shape):
        # The one big allocation, (N, *row_shape) float32. Reused rows are copied in (in chunks,
        # so no second full-size temporary) and the previous arrays are released: peak memory
        # is this array plus a constant (plus the previous file while it is read).
        nonlocal features
        features = np.empty((len(names),) + tuple(row_shape), dtype=np.float32)
        for number, source in enumerate(sources):
            pairs = np.array([(p, r) for p, (n, r) in reuse.items() if n == number],
                             dtype=np.int64).reshape(-1, 2)
            rows = source["rows"]   # an array (previous output) or a list of rows (checkpoint)
            for chunk in range(0, len(pairs), 256):
                part = pairs[chunk:chunk + 256]
                block = (rows[part[:, 1]] if isinstance(rows, np.ndarray)
                         else np.stack([rows[r] for r in part[:, 1]]))
                features[part[:, 0]] = block
            done[pairs[:, 0]] = True
            source["rows"] = None

    if reuse:
        number, row = next(iter(reuse.values()))
        allocate(np.shape(sources[number]["rows"][row]))

    if to_compute:
        net = model or FeatureModel(weights_path, random_weights, seed, image_size, layer,
                                    pooling, precision)
        if (net.kwargs["image_size"], net.kwargs["layer"], net.kwargs["pooling"],
                net.precision) != (image_size, layer, pooling, precision):
            raise ValueError("the model passed was built for other parameters")
        from_previous = np.zeros(len(names), dtype=bool)   # rows still safe in the old output
        for position, (number, _) in reuse.items():
            from_previous[position] = sources[number] is previous
        paths = [os.path.join(images_dir, names[p]) for p in to_compute]
        batch = np.empty((batch_size, image_size, image_size, 3), dtype=np.uint8)
        batch_positions = []
        compute_start = time.monotonic()
        last_checkpoint = time.monotonic()
        bar = None       # opened once the network is built, so build errors print alone
        seen = 0         # images taken from the decode pipeline (computed or failed)

        def run_batch():
            nonlocal last_checkpoint, bar
            n = len(batch_positions)
            if bar is None:
                net.build()
                bar = tqdm(total=len(to_compute), initial=seen - n, desc="features", unit="img",
                           disable=not progress, dynamic_ncols=True, smoothing=0.1)
            outputs = net(batch[:n])                   # (n, *row_shape) float32
            if features is None:
                allocate(outputs.shape[1:])
            features[batch_positions] = outputs
            done[batch_positions] = True
            stats.computed += n
            bar.update(n)
            batch_positions.clear()
            _malloc_trim()
            if checkpoint_every and time.monotonic() - last_checkpoint >= checkpoint_every:
                started = time.monotonic()
                _write_checkpoint(output_path, names, hashes, features,
                                  done & ~from_previous, params)
                # Keep checkpoints under ~10% of the run time as the file grows.
                last_checkpoint = time.monotonic() + 9 * (time.monotonic() - started)

        try:
            for index, image in _iter_decoded(paths, image_size, workers,
                                              prefetch=max(2 * batch_size, 2 * workers)):
                seen += 1
                position = to_compute[index]
                if isinstance(image, BadImage):
                    failures[names[position]] = str(image)
                    if bar is not None:
                        bar.update(1)
                    continue
                batch[len(batch_positions)] = image
                batch_positions.append(position)
                if len(batch_positions) == batch_size:
                    run_batch()
            if batch_positions:
                run_batch()
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            unsaved = done & ~from_previous
            if features is not None and unsaved.any():
                _write_checkpoint(output_path, names, hashes, features, unsaved, params)
                log(f"cxr-extract-features: saved {fmt_count(int(unsaved.sum()))} new features "
                    f"to {partial_path(output_path)}; re-run the same command to continue")
            raise
        finally:
            if bar is not None:
                bar.close()
        built_here = net.build_seconds if model is None else 0.0
        stats.compute_seconds = time.monotonic() - compute_start - built_here

    stats.failed = len(failures)
    kept = np.flatnonzero(done)
    if kept.size == 0:
        first = next(iter(sorted(failures.items())))
        raise UserError(f"none of the {fmt_count(len(names))} images in {images_dir} could be "
                        f"read (e.g. {first[0]}: {first[1]})")
    failure_list = [{"name": n, "reason": r} for n, r in sorted(failures.items())]
    if (stats.computed == 0 and previous is not None and sources and sources[0] is previous
            and all(number == 0 for number, _ in reuse.values())
            and previous["names"] == [names[p] for p in kept]
            and previous["failures"] == failure_list):
        # Same images, same bytes, same params, same failures: the file is already right.
        _cleanup_partial(output_path)
        stats.seconds = time.monotonic() - start
        return stats
    if kept.size < len(names):
        # Drop failed rows in place (ascending moves never overwrite a row still needed);
        # the prefix view is pickled without a copy.
        for target, source in enumerate(kept):
            if target != source:
                features[target] = features[source]
        features = features[:kept.size]
    result = {"format": FORMAT,
              "names": [names[p] for p in kept],
              "features": features,
              "content_hashes": [hashes[p] for p in kept],
              "params": params,
              "failures": failure_list}
    safe_pickle.dump(result, output_path)
    stats.written = True
    _cleanup_partial(output_path)
    stats.seconds = time.monotonic() - start
    return stats


def _write_checkpoint(output_path, names, hashes, features, rows, params):
    """The rows selected by the mask `rows` (those not in the previous output: computed in
    this run or taken from an older checkpoint), as a list of row views (pickled without
    copying the big array)."""
    positions = np.flatnonzero(rows)
    safe_pickle.dump({"format": PARTIAL_FORMAT, "params": params,
                      "names": [names[p] for p in positions],
                      "content_hashes": [hashes[p] for p in positions],
                      "rows": [features[p] for p in positions]}, partial_path(output_path))


def _cleanup_partial(output_path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial_path(output_path))


def summary_line(stats, output_path):
    rate = f", {stats.images_per_second:.1f} img/s" if stats.computed else ""
    status = "written to" if stats.written else "up to date:"
    return (f"cxr-extract-features: {fmt_count(stats.total)} images: "
            f"{fmt_count(stats.computed)} computed, {fmt_count(stats.reused)} reused, "
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
    parser.add_argument("features", help="output pickle, e.g. data/transfer_features.pickle")
    parser.add_argument("weights", nargs="?", default=None,
                        help="VGG16 no-top weights from cxr-download-model "
                             "(omit with --random-weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="use a randomly initialised VGG16 (offline smoke runs and tests "
                             "ONLY: the features carry no ImageNet knowledge)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    parser.add_argument("--image-size", type=int, default=224,
                        help="images are resized to this square size (pixels)")
    parser.add_argument("--layer", default="block5_pool", choices=vgg.LAYERS,
                        help="VGG16 layer whose output is stored")
    parser.add_argument("--pooling", default="none", choices=vgg.POOLINGS,
                        help="global pooling of the layer's output (none keeps the 7x7 grid)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="compute precision (Keras mixed precision); features are stored as "
                             "float32 either way, and changing it recomputes all features")
    parser.add_argument("--batch-size", type=int, default=16, help="images per network call")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads decoding and resizing images ahead of the network")
    parser.add_argument("--checkpoint-every", type=float, default=300.0,
                        help="seconds between checkpoints of a long run to <features>.partial "
                             "(0: only on Ctrl-C)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
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
        checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    log(summary_line(stats, args.features))
    return 0


def cli():
    exit_with(main, "cxr-extract-features")


if __name__ == "__main__":
    cli()
