"""Stage 6 throughput, side by side: this checkout vs another commit (default: main), one run.

    python benchmarks/bench_render.py --images DIR [--weights VGG16.h5] [--n 50] [--ref main]
        [--work DIR] [--method grad-cam] [--image-size 224] [--workers N]

Builds one data folder from the first --n images of DIR (PNG/JPEG): examples.json, a minimal
images-description.json, and a model folder with the stage-5 default head (cam head on
block4_pool features at --image-size, random initialisation: speed does not depend on what it
learned) and config.json naming --weights (or seeded random VGG16 weights). Then it runs
`python -m learning.visualization` on it twice, each a fresh process, same images, model,
method and flags (--display-size 512, the default): once from `git archive <ref>` extracted to
a temp folder, once from this checkout. Both read head.keras + the weights file (no
classifier.keras), so both explain the very same function. It prints, per version, the wall
time of the whole command (start-up included) and images per second, and the ratio. Timing
goals live here, never in tests. Issue 16 goal: >= 3x main's images per second, Grad-CAM at
224 px, on the same 2 cores.

MEASURED (December 2026; both versions in one run, same images, model and flags)
  machine                                  images  main (before)   this          speed-up
  2 shared CPU cores (AMD EPYC, load ~10   40      483.5 s         124.4 s       3.89x (goal 3x: met)
    from other jobs), TensorFlow, real             0.083 img/s     0.322 img/s
    ImageNet weights, Grad-CAM, 224 px
  H200 GPU + 16 cores, KERAS_BACKEND=jax,  100     270.6 s         24.5 s        11.06x
    random weights, Grad-CAM, 224 px               0.37 img/s      4.09 img/s
  Files: main wrote 905 files into ONE folder for 100 images (9 per image: map, base, X-ray,
  overlay, panel, 3 detail layers, page); this run 310, at most 10 per folder (pictures/<xx>/:
  X-ray, one picture per map, page). Wall time of the whole command, start-up included (the
  TensorFlow import alone took 40 s on the loaded CPU machine). Where the time went before:
  three passes of the network per image for Grad-CAM (the logits, the baseline's logits, the
  CAM), a matplotlib panel and five PNGs (optimize=True) per image and method, all in one
  process. Now: one pass (the CAM's pass gives the logits; the baseline's logits only for
  methods that check completeness, once per run for a shared baseline), one PNG per map drawn
  by --workers spawned processes while the model attributes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import learning  # noqa: E402,F401  (keeps TensorFlow's start-up chatter off the terminal)


def build_data(folder, images, n, weights, image_size, seed=0):
    """<folder>/images, images-description.json, examples.json, model/ -> the weights id."""
    import keras

    from learning.head import PRESETS, build_from_config
    from learning.vgg import build_conv_base, weights_identity
    from scraper.schema import make_record, save_descriptions

    names = sorted(n for n in os.listdir(images) if n.lower().endswith((".png", ".jpg")))[:n]
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for name in names:
        os.symlink(os.path.abspath(os.path.join(images, name)),
                   os.path.join(folder, "images", name))
    save_descriptions(os.path.join(folder, "images-description.json"),
                      [make_record(name, "folder") for name in names])
    with open(os.path.join(folder, "examples.json"), "w") as handle:
        json.dump(names, handle)
    base = build_conv_base(weights, weights is None, seed, image_size, "block4_pool")
    keras.utils.set_random_seed(seed)
    head = build_from_config(tuple(base.output.shape[1:]), PRESETS["cam"], {"scale": 0.01})
    model = os.path.join(folder, "model")
    os.makedirs(model, exist_ok=True)
    head.save(os.path.join(model, "head.keras"))
    weights_id = weights_identity(weights, weights is None, seed)
    with open(os.path.join(model, "config.json"), "w") as handle:
        json.dump({"feature_params": {"weights": weights_id, "image_size": image_size,
                                      "layer": "block4_pool", "pooling": "none"},
                   "class_names": ["normal", "abnormal"]}, handle)
    return names


def run_stage6(code, folder, weights, method, workers, label):
    """Run one version's stage 6 on the data folder; -> wall seconds."""
    results = os.path.join(folder, f"results-{label}")
    command = [sys.executable, "-m", "learning.visualization", weights or "unused.h5",
               os.path.join(folder, "model"), os.path.join(folder, "examples.json"),
               os.path.join(folder, "images"), results, "--method", method]
    if weights is None:
        command.append("--random-weights")
    if workers is not None and label == "this":
        command += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [code] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        CXR_PROGRESS_INTERVAL="600",
               TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{label} failed ({done.returncode}): {done.stderr[-2000:]}")
    files = sum(len(f) for _, _, f in os.walk(results))
    largest = max(len(f) for _, _, f in os.walk(results))
    print(f"  {label}: {files:,} files, at most {largest:,} in one folder", file=sys.stderr)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder of X-ray PNG/JPEG files")
    parser.add_argument("--weights", default=None, help="VGG16 no-top weights (default: random)")
    parser.add_argument("--n", type=int, default=50, help="images explained")
    parser.add_argument("--ref", default="main", help="git commit to compare with")
    parser.add_argument("--ref-dir", default=None,
                        help="an extracted tree of the reference instead of `git archive --ref` "
                             "(a machine without the repository's history)")
    parser.add_argument("--method", default="grad-cam")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None,
                        help="this checkout's --workers (default: its default)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="bench-render-")
    os.makedirs(work, exist_ok=True)
    if args.ref_dir:
        reference, sha = os.path.abspath(args.ref_dir), "extracted"
    else:
        reference = os.path.join(work, "reference")
        shutil.rmtree(reference, ignore_errors=True)
        os.makedirs(reference)
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.ref], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", reference], input=archive, check=True)
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.ref], check=True,
                             capture_output=True, text=True).stdout.strip()
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    names = build_data(data, args.images, args.n, args.weights, args.image_size)
    print(f"{len(names)} images, {args.method} at {args.image_size} px, display 512; "
          f"{os.cpu_count()} CPUs", file=sys.stderr)
    timing = {}
    for label, code in ((f"{args.ref} ({sha})", reference), ("this", os.path.abspath(ROOT))):
        timing[label] = run_stage6(code, data, args.weights, args.method, args.workers,
                                   "this" if code != reference else "reference")
    ref_s, this_s = timing[f"{args.ref} ({sha})"], timing["this"]
    for label, seconds in timing.items():
        print(json.dumps({"version": label, "images": len(names), "seconds": round(seconds, 1),
                          "images_per_second": round(len(names) / seconds, 3)}))
    print(json.dumps({"speed-up": round(ref_s / this_s, 2), "goal": 3.0}))


if __name__ == "__main__":
    main()
