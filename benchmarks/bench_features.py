"""Benchmark of stage 3 (cxr-extract-features): throughput, precision, re-runs and memory.

Prints, all in one run so that ratios compare like with like on a shared machine:
  0. decode + resize alone: 1 thread, --workers threads, --workers spawn processes (img/s);
  1. model-only img/s (pre-decoded, preprocessed batches in memory), eager model(x) and the
     compiled forward the stage uses (learning.gradients.forward), vs end-to-end img/s (PNG
     decode + resize + model through the stage's pipeline) with decode threads and with decode
     processes; goal: end-to-end >= 0.9x model-only;
  2. fp32 vs bf16 (Keras mixed precision) model-only img/s and the max relative difference of
     the features; goal: >= 1.8x (needs a CPU with bf16 instructions: AVX512-BF16 or AMX);
  3. peak RSS of the CLI on 250 vs 1000 images (each in its own subprocess, ru_maxrss via
     wait4), pooling none: memory should grow by about the output array, (N, 7, 7, 512) float32;
  4. a re-run on unchanged images as % of the first run's time (both CLI subprocesses);
     goal: < 5%.
Random conv weights (--random-weights): no ImageNet weights offline; speed does not depend on
the weight values.

Example:
    python benchmarks/bench_features.py ../shared/datasets/nih-cxr-1000/images
    python benchmarks/bench_features.py IMAGES --throughput-images 64 --rss-images 50 200
    KERAS_BACKEND=jax python benchmarks/bench_features.py IMAGES --skip memory --precisions fp32
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from learning import vgg  # noqa: E402
from learning import transfer_feature_extraction as tfe  # noqa: E402
from scraper.images import is_image_name  # noqa: E402


def linked_subset(images_dir, count, target):
    """A folder of symlinks to the first `count` images (sorted), so the CLI sees only those."""
    names = sorted(n for n in os.listdir(images_dir) if is_image_name(n))
    if len(names) < count:
        sys.exit(f"bench_features: {images_dir} has {len(names)} images, need {count}")
    os.makedirs(target, exist_ok=True)
    for name in names[:count]:
        os.symlink(os.path.abspath(os.path.join(images_dir, name)), os.path.join(target, name))
    return target


def model_only(model, preprocessed, batch_size, compiled=True):
    """The network alone on batches already decoded and preprocessed in memory:
    (features float32, wall seconds, CPU seconds of this process)."""
    from learning import gradients

    def call(batch):
        if compiled:
            return gradients.forward(model, batch)
        return gradients.to_numpy(model(batch, training=False))

    wall, cpu = time.perf_counter(), time.process_time()
    outputs = []
    for start in range(0, len(preprocessed), batch_size):
        outputs.append(np.asarray(call(preprocessed[start:start + batch_size]))
                       .astype(np.float32))
    return np.concatenate(outputs), time.perf_counter() - wall, time.process_time() - cpu


def decode_alone(paths, image_size, workers):
    """img/s of decode + resize: 1 thread, `workers` threads, `workers` processes."""
    from learning import features_decode

    rates = {}
    for label, mode, count in (("1 thread", "threads", 1), (f"{workers} threads", "threads",
                                                            workers),
                               (f"{workers} processes", "processes", workers)):
        started = time.perf_counter()
        for _ in features_decode.iter_decoded(paths, image_size, count, 2 * count + 8, mode):
            pass
        rates[label] = len(paths) / (time.perf_counter() - started)
    return rates


def tf_data_pipeline(model, paths, image_size, batch_size):
    """The alternative design, for comparison: tf.data with parallel numpy_function decoding
    (the same loader) and prefetch. (features, wall seconds, CPU seconds)."""
    import tensorflow as tf

    def load(path):
        return vgg.load_image(path.decode(), image_size)

    wall, cpu = time.perf_counter(), time.process_time()
    dataset = (tf.data.Dataset.from_tensor_slices(paths)
               .map(lambda path: tf.numpy_function(load, [path], tf.uint8),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size).prefetch(2))
    outputs = [np.asarray(model(vgg.preprocess(batch.numpy()), training=False))
               for batch in dataset]
    return np.concatenate(outputs), time.perf_counter() - wall, time.process_time() - cpu


def throughput(images_dir, count, rounds, batch_size, workers, image_size, precisions, work,
               with_tf_data=False):
    """Alternate the measurements in `rounds` rounds (one chunk of images each), so that load
    from other users of a shared machine hits all of them alike; report wall-clock img/s and
    img per CPU-second of this process (the latter barely depends on other users' load)."""
    precisions = ["fp32"] + [p for p in precisions if p != "fp32"]   # e2e is measured in fp32
    subset = linked_subset(images_dir, count, os.path.join(work, f"throughput-{count}"))
    names = sorted(os.listdir(subset))
    rates = decode_alone([os.path.join(subset, n) for n in names], image_size, workers)
    print("decode+resize alone (process start-up included): "
          + ", ".join(f"{label} {rate:.1f} img/s" for label, rate in rates.items()), flush=True)
    decoded = np.stack([vgg.load_image(os.path.join(subset, n), image_size) for n in names])
    preprocessed = vgg.preprocess(decoded)                  # (count, S, S, 3) float32
    del decoded

    nets = {p: tfe.FeatureModel(None, True, 0, image_size, "block5_pool", "none", p)
            for p in precisions}
    for net in nets.values():
        net.build()(preprocessed[:batch_size], training=False)   # warm-up (oneDNN primitives)
    keys = (["e2e", "e2e processes", "eager"] + (["tf.data"] if with_tf_data else [])
            + list(precisions))
    totals = {key: [0.0, 0.0] for key in keys}   # wall, cpu seconds
    features = {p: [] for p in precisions}
    bounds = np.linspace(0, count, rounds + 1).astype(int)
    for number, (low, high) in enumerate(zip(bounds[:-1], bounds[1:])):
        chunk = os.path.join(work, f"chunk-{number}")
        os.makedirs(chunk)
        for name in names[low:high]:
            os.symlink(os.path.realpath(os.path.join(subset, name)), os.path.join(chunk, name))
        for precision in precisions:
            result, wall, cpu = model_only(nets[precision].model, preprocessed[low:high],
                                           batch_size)
            features[precision].append(result)
            totals[precision][0] += wall
            totals[precision][1] += cpu
            if precision == "fp32":
                _, wall, cpu = model_only(nets[precision].model, preprocessed[low:high],
                                          batch_size, compiled=False)
                totals["eager"][0] += wall
                totals["eager"][1] += cpu
                for key, mode in (("e2e", "threads"), ("e2e processes", "processes")):
                    cpu_start = time.process_time()
                    stats = tfe.extract_features(
                        chunk, os.path.join(work, f"{mode}-{number}.pickle"),
                        random_weights=True, image_size=image_size, batch_size=batch_size,
                        workers=workers, progress=False, model=nets["fp32"], decode=mode)
                    totals[key][0] += stats.compute_seconds
                    totals[key][1] += time.process_time() - cpu_start
                if with_tf_data:
                    paths = [os.path.join(chunk, n) for n in names[low:high]]
                    _, wall, cpu = tf_data_pipeline(nets["fp32"].model, paths, image_size,
                                                    batch_size)
                    totals["tf.data"][0] += wall
                    totals["tf.data"][1] += cpu
        line = ", ".join(f"{key} {high / wall_cpu[0]:.2f}"
                         for key, wall_cpu in totals.items())
        print(f"  round {number + 1}/{rounds} done (cumulative img/s: {line})", flush=True)

    def rates(key):
        wall, cpu = totals[key]
        return count / wall, count / cpu

    model_wall, model_cpu = rates("fp32")
    e2e_wall, e2e_cpu = rates("e2e")
    eager_wall, eager_cpu = rates("eager")
    proc_wall, proc_cpu = rates("e2e processes")
    print(f"model-only fp32, compiled (the stage's): {model_wall:.2f} img/s wall, "
          f"{model_cpu:.2f} img/CPU-s; eager model(x): {eager_wall:.2f} img/s wall "
          f"({eager_wall / model_wall:.2f}x compiled)\n"
          f"end-to-end (PNG decode + resize + model, {workers} decode threads): "
          f"{e2e_wall:.2f} img/s wall, {e2e_cpu:.2f} img/CPU-s\n"
          f"  end-to-end / model-only = {e2e_wall / model_wall:.2f}x wall, "
          f"{e2e_cpu / model_cpu:.2f}x per CPU-second (goal >= 0.9x)\n"
          f"end-to-end with {workers} decode processes: {proc_wall:.2f} img/s wall = "
          f"{proc_wall / model_wall:.2f}x model-only (CPU-seconds of the parent only: "
          f"{proc_cpu:.2f} img/CPU-s)", flush=True)
    if with_tf_data:
        wall, cpu = rates("tf.data")
        print(f"alternative tf.data + numpy_function pipeline: {wall:.2f} img/s wall "
              f"({wall / model_wall:.2f}x model-only), {cpu:.2f} img/CPU-s "
              f"({cpu / model_cpu:.2f}x)", flush=True)
    reference = np.concatenate(features["fp32"]) if "fp32" in features else None
    for precision in precisions:
        if precision == "fp32":
            continue
        wall, cpu = rates(precision)
        line = (f"model-only {precision}: {wall:.2f} img/s wall = {wall / model_wall:.2f}x fp32, "
                f"{cpu:.2f} img/CPU-s = {cpu / model_cpu:.2f}x fp32 (goal >= 1.8x)")
        if reference is not None:
            low_features = np.concatenate(features[precision])
            relative = np.abs(low_features - reference).max() / np.abs(reference).max()
            line += f"; max |{precision} - fp32| / max |fp32| = {relative:.2e}"
        print(line, flush=True)


# A slim parent for each measured run: ru_maxrss survives fork+exec on Linux, so a CLI forked
# straight from this (TensorFlow-sized) process would report this process's RSS as its peak.
_LAUNCHER = """
import os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[2:], stderr=open(sys.argv[1], "w"))
_, status, usage = os.wait4(process.pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def cli_run(images, output, image_size, batch_size, workers):
    """Run the stage's CLI in a subprocess: (wall seconds, peak RSS MiB, stderr summary)."""
    command = [sys.executable, "-m", "learning.transfer_feature_extraction", images, output,
               "--random-weights", "--image-size", str(image_size), "--batch-size",
               str(batch_size), "--workers", str(workers), "--no-progress"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log_file:
        launched = subprocess.run([sys.executable, "-c", _LAUNCHER, log_file.name] + command,
                                  cwd=root, capture_output=True, text=True, check=True)
        err = log_file.read()
    seconds, max_rss_kib, code = launched.stdout.split()
    if int(code) != 0:
        sys.exit(f"bench_features: {' '.join(command)} failed:\n{err}")
    summary = [line for line in err.splitlines() if " computed, " in line]
    return float(seconds), int(max_rss_kib) / 1024, summary[-1] if summary else ""


def memory_and_rerun(images_dir, counts, batch_size, workers, image_size, work):
    row_mib = None
    results = {}
    for count in counts:
        subset = linked_subset(images_dir, count, os.path.join(work, f"rss-{count}"))
        output = os.path.join(work, f"rss-{count}.pickle")
        seconds, rss, summary = cli_run(subset, output, image_size, batch_size, workers)
        results[count] = (seconds, rss, subset, output)
        row_mib = os.path.getsize(output) / count / 2**20
        print(f"first run, {count} images: {seconds:.1f} s, peak RSS {rss:.0f} MiB "
              f"(pickle {os.path.getsize(output) / 2**20:.0f} MiB)\n    {summary}", flush=True)
    small, large = min(counts), max(counts)
    growth = results[large][1] - results[small][1]
    expected = (large - small) * row_mib
    print(f"peak RSS {large} vs {small} images: +{growth:.0f} MiB for {large - small} more "
          f"images; the output array grows by {expected:.0f} MiB "
          f"(ratio {growth / expected:.2f}; 1.0 = memory is the output plus a constant)",
          flush=True)

    seconds, _, subset, output = results[large]
    again, rss, summary = cli_run(subset, output, image_size, batch_size, workers)
    print(f"re-run on {large} unchanged images: {again:.2f} s = {100 * again / seconds:.1f}% of "
          f"the first run's {seconds:.1f} s (goal < 5%), peak RSS {rss:.0f} MiB\n    {summary}",
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", help="folder of images, e.g. nih-cxr-1000/images")
    parser.add_argument("--throughput-images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4,
                        help="the throughput images are measured in this many alternating rounds")
    parser.add_argument("--rss-images", type=int, nargs=2, default=[250, 1000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated; fp16 is also possible")
    parser.add_argument("--tf-data", action="store_true",
                        help="also time a tf.data pipeline (the design not chosen)")
    parser.add_argument("--skip", choices=("throughput", "memory"), action="append", default=[])
    args = parser.parse_args(argv)
    import keras

    print(f"bench_features: {os.cpu_count()} CPUs, Keras {keras.__version__} backend "
          f"{keras.backend.backend()}, image size "
          f"{args.image_size}, batch {args.batch_size}, random weights; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_features.") as work:
        if "throughput" not in args.skip:
            throughput(args.images, args.throughput_images, args.rounds, args.batch_size,
                       args.workers, args.image_size, args.precisions.split(","), work,
                       args.tf_data)
        if "memory" not in args.skip:
            memory_and_rerun(args.images, sorted(args.rss_images), args.batch_size,
                             args.workers, args.image_size, work)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
