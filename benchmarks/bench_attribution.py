"""Per-image DeepLIFT time on VGG16 (224 px, random weights) + a dense head: batched vs one at a time.

    python benchmarks/bench_attribution.py [--images 16] [--batch-sizes 4,8,16] [--head-units 2048]

Compares, after one untimed warm-up call per configuration (graph tracing):
  shap-public   shap.DeepExplainer(model, baseline).shap_values(one image), the library's API
                (it loops over images internally; check_additivity off so it does no extra forward)
  batch=1       learning.attribution.DeepLift.attribute with one image per call
  batch=B       the same with B images (+ B per-image baselines) per call, what cxr-visualize does
Explained output: logit(abnormal) - logit(normal) (one output, the stage's default). Every
configuration's completeness error (|sum attr - (f(x) - f(b))|) is printed too. Prints numbers,
asserts nothing: timing goals live here, not in tests. Goal: batched >= 2x faster per image.

Measured 2026-11-25 on the 2-core dev machine shared with 4 other jobs (load 4-6), 16 images:
  run 1: shap-public 5.15 s/img, batch=1 5.78, batch=4 4.14, batch=8 4.07, batch=16 4.24 (1.4x)
  run 2: shap-public 4.10 s/img, batch=1 3.91, batch=8 3.75 (1.04x)
  64 px, 32 images: shap-public 0.394 s/img, batch=1 0.389, batch=8 0.346 (1.12x), batch=32 0.392
The goal is NOT met on this CPU: VGG16's convolutions dominate and are already compute-bound at
batch 1, so batching only saves per-call overhead; shap's graph also runs forward and backward
on the baseline half of the batch (2N images for N). Completeness error <= 5.4e-7 everywhere.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def build(image_size, head_units, seed):
    import keras

    from learning import attribution
    from learning.vgg import build_conv_base

    conv = build_conv_base(random_weights=True, seed=seed, image_size=image_size)
    keras.utils.set_random_seed(seed + 1)
    head = keras.Sequential([keras.Input(conv.output.shape[1:]), keras.layers.Flatten(),
                             keras.layers.Dense(head_units, activation="relu"),
                             keras.layers.Dense(2)])
    full = attribution.build_full_model(conv, head)
    return attribution.build_target_model(full, "difference")


def demo_images(count, image_size):
    from learning.vgg import load_image, preprocess

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "demo", "nih-24",
                          "images")
    names = sorted(os.listdir(folder))
    images = np.stack([load_image(os.path.join(folder, names[i % len(names)]), image_size)
                       for i in range(count)])
    return preprocess(images), preprocess(np.zeros_like(images))  # black baseline


def completeness(target, attrs, x, b):
    from learning import attribution

    deltas, _ = attribution.completeness_deltas(attrs, attribution.forward(target, x),
                                                attribution.forward(target, b))
    return float(deltas.max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--head-units", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import shap
    import tensorflow as tf

    from learning import attribution

    print(f"TensorFlow {tf.__version__}, shap {shap.__version__}, CPU threads "
          f"{os.cpu_count()}, VGG16 {args.image_size} px random weights + dense head "
          f"{args.head_units}; {args.images} demo X-rays", flush=True)
    target = build(args.image_size, args.head_units, args.seed)
    x, b = demo_images(args.images, args.image_size)
    results = []

    with attribution.quiet_keras():
        explainer = shap.DeepExplainer(target, b[:1])
        explainer.shap_values(x[:1], check_additivity=False)  # warm-up (trace)
        start = time.perf_counter()
        attrs = np.concatenate([explainer.shap_values(x[i:i + 1], check_additivity=False)
                                for i in range(len(x))])
        results.append(("shap-public (1/call)", time.perf_counter() - start,
                        completeness(target, attrs, x, b)))

    deeplift = attribution.DeepLift(target)
    for batch in [1] + [int(v) for v in args.batch_sizes.split(",") if v]:
        deeplift.attribute(x[:batch], b[:batch])  # warm-up (trace for this batch shape)
        start = time.perf_counter()
        parts = [deeplift.attribute(x[i:i + batch], b[i:i + batch])
                 for i in range(0, len(x), batch)]
        elapsed = time.perf_counter() - start
        results.append((f"batch={batch}", elapsed,
                        completeness(target, np.concatenate(parts), x, b)))

    one = results[1][1] / len(x)
    print(f"{'configuration':<22}{'s/image':>10}{'images/s':>10}{'speed-up vs batch=1':>22}"
          f"{'completeness err':>18}")
    for name, elapsed, error in results:
        per = elapsed / len(x)
        print(f"{name:<22}{per:>10.3f}{1 / per:>10.2f}{one / per:>21.2f}x{error:>18.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
