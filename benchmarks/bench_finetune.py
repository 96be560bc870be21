"""Fine-tuning VGG16 blocks from the images vs today's default: do the maps then localize?
(issue 21, parts 4 and 5)

DECLARED BEFORE ANY RUN (nothing below is chosen by looking at the 44 boxed images)
  Data: a folder with images/, labels.csv (image, abnormal, patient_id, ...) and bboxes.csv
    (image, finding, x, y, w, h in the image's own pixels): nih-cxr-1000, or a smaller copy
    made by `subset` (all boxed patients + N other images, 224-px lossless PNGs, boxes
    rescaled) for a GPU machine. Split: bench_localization.make_split (every boxed patient held
    out; the others by patient, stratified: 15 % test-rest, 10 % of the rest validation, split
    seed 0). `--train-images N` keeps N training images (whole patients, stratified, seed 0);
    validation and test stay whole. The localization set is the boxed images (44 on NIH-1000).
  Configurations, all at 224 px with ImageNet VGG16 weights:
    default  today's stage 5: the "cam" preset (ring mask 3, grid flips/shifts, Adam 1e-3,
             class weights, patience 8) trained on frozen block4_pool features
             (fully_connected_layers_training.train_head).
    ft5      learning/train/finetune.py: VGG16 up to block5_conv3 with block 5 trained (Adam
             1e-5), the same "cam" head (Adam 1e-3, input scale from 64 training images), image
             augmentation (shift 6 %, scale 8 %, rotation 7 deg, brightness 10 %, contrast 15 %,
             never a flip), class weights, early stopping on the validation loss, best epoch kept.
    ft45     the same with blocks 4 and 5 trained.
  Maps: Grad-CAM of the logit difference (abnormal - normal) on the last conv layer (the head's
    cam_conv), learning.explain.attribution.grad_cam on the whole classifier (pixels -> logits), 224 px.
  Localization metrics per boxed image (learning.localization): pointing game, inside share,
    T(IoBB) = IoBB of the map thresholded at half its maximum > 0.25 (Wang et al. 2017's
    T(IoBB) on pixel regions). Each mean with a 95 % bootstrap CI over images, and the paired
    per-image difference against each of three controls, with its bootstrap CI: the lung-field
    prior, the centred Gaussian, and the mean of the run's own maps over the boxed images (each
    scaled to max 1; "the same map on every image"). And against the default of the same seed.
  Classification: test AUROC [grouped-bootstrap CI] on the boxed patients' images + test-rest;
    validation AUROC at the kept epoch.
  Cost: seconds per training image per epoch (median over epochs; for the default the head's
    epochs on precomputed features, plus the one-time feature pass per image); peak host memory
    (ru_maxrss of the run's own process: each configuration and seed runs in a process of its
    own); peak accelerator memory under JAX.
  Decision rule (the lead's): the default changes only if a configuration beats it on the
    boxed images (paired differences with CIs above 0) AND on validation AUROC.

Usage (caches and results outside the repository; paths are arguments):
    python benchmarks/bench_finetune.py run DATASET WEIGHTS CACHE --configs default,ft5,ft45 \
        --seeds 0 --train-images 300 --epochs 8 --label cpu-300
    python benchmarks/bench_finetune.py report CACHE
    python benchmarks/bench_finetune.py time DATASET WEIGHTS CACHE --images 32 --epochs 2
    python benchmarks/bench_finetune.py subset SOURCE_DATASET OUT --others 300
    python benchmarks/bench_finetune.py pack-weights vgg16.h5 OUT.npz   # lossless, ~50 MB
WEIGHTS may be a Keras VGG16 .h5 or a file made by pack-weights (unpacked into CACHE).
On a GPU machine with JAX only (no TensorFlow): see benchmarks/gpu_finetune.sh.

MEASURED (2-core development machine shared with other jobs, load average 12-14, TensorFlow,
224 px, ImageNet weights, 2026-12-04). The full comparison did NOT fit: at that load one epoch
of block-5 fine-tuning on 200 images took 16 min. What was measured:
  cost, `time` (32 training images, batch 16, 2nd epoch), per training image per epoch:
    ft5   CPU 0.59 s, wall 3.9 s;   ft45  CPU 0.96 s, wall 6.1 s;   peak RSS 1.5-1.6 GB
    default: 0.005 CPU s / 0.05 s (head on features) + the one-time feature pass (block4_pool)
  `run --train-images 200 --epochs 6 --patience 3 --label cpu-200img-6ep`, seed 0 (default only
  finished; ft5 was stopped in its 2nd epoch, epoch 1: validation AUROC 0.692):
    default: train 200 (40 epochs), test AUROC 0.895 [0.845, 0.938], validation AUROC 0.897;
      Grad-CAM pointing 0.34 [0.20, 0.48], inside 0.26 [0.20, 0.33], T(IoBB) 0.50 [0.36, 0.66];
      paired map - control: lung prior pointing -0.07 [-0.25, 0.11], inside +0.04 [-0.00,
      0.08], T(IoBB) +0.05 [-0.16, 0.23]; centred Gaussian +0.18 [0.02, 0.34], +0.11 [0.08,
      0.15], +0.23 [0.07, 0.39]; the run's own mean map -0.05 [-0.23, 0.11], +0.04 [0.00,
      0.07], +0.18 [0.05, 0.32]. Peak RSS 1.7 GB.
  So on 200 images the default's maps do not beat the lung prior or their own mean map on
  pointing; they beat the Gaussian.
  `run --train-images 60 --epochs 3 --label cpu-60img-3ep`, seed 0 (UNDERTRAINED; only ft5
  finished, default and ft45 were stopped for lack of time, so no paired row vs the default):
    ft5: test AUROC 0.719 [0.643, 0.799], validation AUROC 0.657; pointing 0.23 [0.11, 0.36],
      inside 0.20 [0.14, 0.27], T(IoBB) 0.23 [0.11, 0.36]; vs lung prior -0.18 [-0.34, -0.02],
      -0.02 [-0.06, 0.01], -0.23 [-0.39, -0.07]; vs Gaussian +0.07 [-0.09, 0.23], +0.05
      [0.02, 0.09], -0.05 [-0.18, 0.09]; vs own mean map +0.14 [0.02, 0.27], +0.01 [-0.02,
      0.04], 0.00 [-0.14, 0.16]; 0.64 CPU-s (3.0 s wall) per image per epoch; peak RSS 1.6 GB.
  `run --configs ft5,ft45 --train-images 200 --epochs 6 --patience 3 --label cpu-200img-6ep`,
  seed 0 (lead, 21:27-22:14, load 5-8; ft5 finished all 6 epochs, still improving (kept epoch
  6); ft45 was stopped in its first epoch for time):
    ft5: test AUROC 0.849 [0.789, 0.905], validation AUROC 0.883; pointing 0.25 [0.14, 0.39],
      inside 0.22 [0.15, 0.29], T(IoBB) 0.34 [0.20, 0.48]; paired map - control: lung prior
      -0.16 [-0.30, -0.02], -0.01 [-0.05, 0.03], -0.11 [-0.30, 0.05]; centred Gaussian +0.09
      [-0.07, 0.23], +0.07 [0.03, 0.10], +0.07 [-0.11, 0.23]; own mean map +0.18 [0.05, 0.32],
      +0.02 [-0.01, 0.05], +0.09 [-0.05, 0.23]; ft5 - default (same seed): -0.09 [-0.23,
      0.05], -0.05 [-0.07, -0.03], -0.16 [-0.30, -0.05]. 1.50 s wall (0.53 CPU-s) per image
      per epoch; peak RSS 1.9 GB; 46 min 51 s in all.
  `run --configs ft45 --train-images 200 --epochs 6 --patience 3 --label cpu-200img-6ep`, seed
  0 (lead, 2026-12-04 23:16-00:07, nice 19 beside other jobs; all 6 epochs, kept epoch 5):
    ft45: test AUROC 0.845 [0.788, 0.900], validation AUROC 0.872; pointing 0.23 [0.11, 0.34],
      inside 0.22 [0.16, 0.30], T(IoBB) 0.36 [0.23, 0.50]; paired map - control: lung prior
      -0.18 [-0.34, -0.05], -0.00 [-0.04, 0.03], -0.09 [-0.23, 0.05]; centred Gaussian +0.07
      [-0.09, 0.20], +0.07 [0.04, 0.11], +0.09 [-0.07, 0.25]; own mean map +0.16 [0.02, 0.30],
      +0.02 [-0.02, 0.05], +0.09 [-0.05, 0.23]; ft45 - default (same seed): -0.11 [-0.27,
      0.02], -0.04 [-0.06, -0.02], -0.14 [-0.30, -0.02]. 1.84 s wall (0.81 CPU-s) per image
      per epoch; peak RSS 2.07 GB.
  `run --configs default,ft5 --seeds 1` then `--seeds 2`, same flags (lead, 2026-12-05
  00:11-01:00, nice 19, other jobs beside; the ft runs below are after the fit(shuffle=False)
  fix):
    default s1: test AUROC 0.901 [0.854, 0.943], val 0.891; pointing 0.30 [0.16, 0.43], inside
      0.27 [0.20, 0.34], T(IoBB) 0.45 [0.30, 0.61]; vs lung prior -0.11 [-0.27, 0.05], +0.04
      [-0.00, 0.08]; vs own mean map -0.09 [-0.25, 0.07], +0.04 [0.00, 0.07].
    default s2: test AUROC 0.891 [0.840, 0.936], val 0.893; pointing 0.34 [0.20, 0.48], inside
      0.26 [0.19, 0.33], T(IoBB) 0.43 [0.30, 0.59]; vs lung prior -0.07 [-0.25, 0.11], +0.03
      [-0.01, 0.08]; vs own mean map +0.11 [-0.02, 0.25], +0.03 [0.00, 0.07].
    ft5 s1 (kept epoch 5): test AUROC 0.812 [0.747, 0.872], val 0.887; pointing 0.23 [0.09,
      0.36], inside 0.22 [0.15, 0.29], T(IoBB) 0.32 [0.18, 0.45]; vs lung prior -0.18 [-0.32,
      -0.05], -0.01 [-0.05, 0.03]; vs own mean map +0.07 [-0.07, 0.20], +0.02 [-0.02, 0.05];
      ft5 - default -0.07 [-0.18, 0.05], -0.05 [-0.08, -0.03], T -0.14 [-0.25, -0.05]; 0.57 s
      wall (0.51 CPU-s) per image per epoch; peak RSS 2.03 GB.
    ft5 s2 (kept epoch 4): test AUROC 0.756 [0.682, 0.828], val 0.856; pointing 0.23 [0.11,
      0.34], inside 0.22 [0.15, 0.29], T(IoBB) 0.25 [0.14, 0.36]; vs lung prior -0.18 [-0.34,
      0.00], -0.01 [-0.05, 0.02]; vs own mean map +0.09 [-0.05, 0.23], +0.02 [-0.02, 0.05];
      ft5 - default -0.11 [-0.25, 0.02], -0.04 [-0.07, -0.02], T -0.18 [-0.34, -0.05]; 0.33 s
      wall (0.51 CPU-s); peak RSS 1.98 GB.
    mean +- sd over seeds 0-2: default AUROC 0.896 +- 0.004, val 0.894 +- 0.002, pointing
      0.326 +- 0.021, inside 0.265 +- 0.003, T(IoBB) 0.462 +- 0.028; ft5 AUROC 0.806 +- 0.038,
      val 0.875 +- 0.014, pointing 0.235 +- 0.011, inside 0.217 +- 0.001, T(IoBB) 0.303 +- 0.039.
  `run --configs ft45 --seeds 1`, same flags (lead, 2026-12-05 01:04-01:25, nice 19):
    ft45 s1 (kept epoch 6): test AUROC 0.891 [0.841, 0.933], val 0.907; pointing 0.25 [0.14,
      0.39], inside 0.23 [0.16, 0.31], T(IoBB) 0.39 [0.25, 0.52]; vs lung prior -0.16 [-0.32,
      -0.02], +0.00 [-0.04, 0.05]; vs own mean map +0.09 [-0.07, 0.23], +0.03 [-0.02, 0.07];
      ft45 - default -0.05 [-0.16, 0.07], -0.04 [-0.07, -0.01], T -0.07 [-0.18, 0.05]; 0.69 s
      wall (0.81 CPU-s); peak RSS 1.98 GB. Over seeds 0-1: AUROC 0.868 +- 0.023, val 0.890 +-
      0.018, pointing 0.239 +- 0.011, inside 0.228 +- 0.004, T(IoBB) 0.375 +- 0.011.
  So, on 200 images and 6 epochs: block-5 (and blocks 4-5) fine-tuning does not beat the
  default (AUROC lower, but for ft45 seed 1; paired inside-share CIs below 0 in every seed of
  both) nor the lung prior; the default stays. Seed 0's sign that the fine-tuned maps beat
  their own mean map on the pointing game (+0.18, CI above 0) did NOT hold in seeds 1 and 2
  (+0.07, +0.09, CIs crossing 0). The full comparison (more images and epochs, 3 seeds of
  ft45) needs the GPU run (gpu_finetune.sh) or an idle machine.
  Reproducibility note: the ft rows above were run before finetune.fine_tune called
  fit(shuffle=False) (commit 1cc3bd0, the resume fix: Keras' own shuffle of the batch order
  drew from Python's global `random`, so a resumed run saw another order). They stay valid as
  one seed's measurements; a rerun of the same seed now feeds each epoch's batches in another
  order, so its numbers differ within seed-to-seed noise.
  This benchmark calls fine_tune directly, not `cxr-train --train-blocks`, because its split
  (every boxed patient held out for localization) is not one stage 4 makes; the stage-5 path
  runs the same fine_tune on stage 4's split (learning/train/from_images.py).
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_localization import make_split, read_dataset  # noqa: E402
from learning.explain import localization  # noqa: E402
from learning.learning_examples_preparing import stratified_group_split  # noqa: E402
from learning.metrics import grouped_bootstrap_auc, roc_auc  # noqa: E402
from scraper.cli import UserError, elapsed_since, exit_with, log  # noqa: E402

SIZE = 224
CONFIGS = {"default": None, "ft5": (5,), "ft45": (4, 5)}
METRICS = ("pointing", "inside_share", "t_iobb")
CONTROLS = ("lung_prior", "centred_gaussian", "mean_map")
RESULTS = "bench-finetune.jsonl"


# ----------------------------------------------------------------------------- data

def load_data(dataset, train_images=None):
    """Namespace-like dict: rows by image, split part, boxed names, boxes at 224 px."""
    from scraper.images import image_size

    rows, boxes = read_dataset(dataset)
    part = make_split(rows, set(boxes))
    if train_images:
        part = keep_training_images(rows, part, train_images)
    boxed = sorted(boxes)
    boxes_224 = [localization.scale_boxes(boxes[n], image_size(image_path(dataset, n)),
                                          (SIZE, SIZE)) for n in boxed]
    return {"rows": {r["image"]: r for r in rows}, "part": part, "boxed": boxed,
            "boxes": boxes_224}


def image_path(dataset, name):
    return os.path.join(dataset, "images", name)


def keep_training_images(rows, part, count, seed=0):
    """Mark all but about `count` training images (whole patients, stratified) "unused"."""
    train = [r for r in rows if part[r["image"]] == "train"]
    if count >= len(train):
        return part
    held = stratified_group_split(np.array([int(r["abnormal"]) for r in train]),
                                  [r["patient_id"] for r in train], count / len(train), seed)
    part = dict(part)
    for row, keep in zip(train, held):
        if not keep:
            part[row["image"]] = "unused"
    return part


def examples(data, dataset, parts):
    """(paths, labels, subset, groups) of the images whose part is in `parts`."""
    names = sorted(n for n, p in data["part"].items() if p in parts)
    return ([image_path(dataset, n) for n in names],
            np.array([int(data["rows"][n]["abnormal"]) for n in names]),
            [data["part"][n] for n in names], [data["rows"][n]["patient_id"] for n in names])


def weights_file(weights, cache):
    """A Keras-layout .h5: `weights` itself, or the pack-weights file unpacked into the cache."""
    if not weights.endswith(".npz"):
        return weights
    target = os.path.join(cache, "vgg16-unpacked.h5")
    if not os.path.isfile(target):
        unpack_weights(weights, target)
    return target


# ----------------------------------------------------------------------------- training

def train_default(data, dataset, weights, cache, seed):
    """Today's stage 5 on frozen block4_pool features -> (classifier, info)."""
    from learning.export import build_classifier
    from learning.fully_connected_layers_training import train_head
    from learning.head import PRESETS
    from learning.vgg import build_conv_base

    paths, labels, subset, _ = examples(data, dataset, ("train", "validation"))
    base = build_conv_base(weights, image_size=SIZE, layer="block4_pool")
    started = time.monotonic()
    features = pixels_through(base, paths, preprocess=True)  # (N, 14, 14, 512)
    feature_seconds = (time.monotonic() - started) / len(paths)
    config = dict(PRESETS["cam"], head="cam")
    started, cpu_started = time.monotonic(), time.process_time()
    head, info = train_head({"features": features, "labels": labels, "subset": subset}, config,
                            seed, progress=False)
    image_epochs = info["n_train"] * info["epochs_run"]
    info["seconds_per_image_epoch"] = (time.monotonic() - started) / image_epochs
    info["cpu_seconds_per_image_epoch"] = (time.process_time() - cpu_started) / image_epochs
    info["feature_seconds_per_image"] = feature_seconds
    return build_classifier(base, head), info


def train_finetuned(data, dataset, weights, config_name, seed, args):
    from learning.head import PRESETS
    from learning.train.finetune import fine_tune

    paths, labels, subset, _ = examples(data, dataset, ("train", "validation"))
    config = dict(PRESETS["cam"], head="cam")
    for key in ("epochs", "patience", "batch_size"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    checkpoint = os.path.join(args.cache, f"checkpoint-{args.label}-{config_name}-s{seed}.npz")
    model, info = fine_tune(paths, labels, subset, config, CONFIGS[config_name], SIZE, weights,
                            seed=seed, checkpoint=checkpoint, workers=args.workers)
    return model, info


def pixels_through(model, paths, preprocess=False, batch_size=16):
    """model applied to the images (224 px, no augmentation), batch by batch: numpy."""
    from learning.store.image_batches import ImageBatches
    from learning.vgg import preprocess as vgg_preprocess

    batches = ImageBatches(paths, np.zeros(len(paths)), SIZE, batch_size, cache_bytes=0)
    outputs = []
    for i in range(len(batches)):
        pixels = batches[i][0]
        outputs.append(np.asarray(model.predict(vgg_preprocess(pixels) if preprocess else
                                                pixels, verbose=0)))
    return np.concatenate(outputs)


# ----------------------------------------------------------------------------- scoring

def grad_cam_maps(classifier, paths, chunk=11):
    """(N, 224, 224) Grad-CAM of the logit difference on the classifier's last conv."""
    from learning.explain import attribution
    from learning.vgg import load_image

    target = attribution.build_target_model(classifier, "difference")
    maps = []
    for start in range(0, len(paths), chunk):
        pixels = np.stack([load_image(p, SIZE) for p in paths[start:start + chunk]])
        maps.append(attribution.grad_cam(target, pixels.astype(np.float32))[..., 0])
    return np.concatenate(maps)


def per_image(maps, boxes):
    """{metric: (N,) values} for maps (N, H, W) against boxes."""
    scored = [localization.image_metrics(m, b) for m, b in zip(maps, boxes)]
    return {"pointing": np.array([s["pointing"] for s in scored], float),
            "inside_share": np.array([s["inside_share"] for s in scored], float),
            "t_iobb": np.array([s["iobb@0.5"] > 0.25 for s in scored], float)}


def control_maps(maps):
    """{control: (H, W) map}: the two no-model maps and the mean of the run's own maps."""
    positive = np.maximum(maps, 0)
    peak = positive.max(axis=(1, 2), keepdims=True)
    return {"lung_prior": localization.lung_prior_map(maps.shape[1:]),
            "centred_gaussian": localization.gaussian_map(maps.shape[1:]),
            "mean_map": (positive / np.where(peak > 0, peak, 1)).mean(axis=0)}


def score(maps, boxes, n_resamples=1000):
    """CIs of the metrics and of the paired differences against each control."""
    values = per_image(maps, boxes)
    result = {"per_image": {k: v.tolist() for k, v in values.items()},
              "metrics": {k: localization.bootstrap_ci(v, n_resamples) for k, v in
                          values.items()}, "versus": {}}
    for name, control in control_maps(maps).items():
        theirs = per_image(np.broadcast_to(control, maps.shape), boxes)
        result["versus"][name] = {k: localization.bootstrap_ci(values[k] - theirs[k],
                                                               n_resamples) for k in METRICS}
    return result


def auroc_of(classifier, data, dataset, parts):
    paths, labels, _, groups = examples(data, dataset, parts)
    logits = pixels_through(classifier, paths).astype(np.float64)
    score_ = logits[:, 1] - logits[:, 0]
    ci = grouped_bootstrap_auc(labels, score_, np.asarray(groups), 1000, 0)
    return {"auroc": roc_auc(labels, score_), "low": ci["low"], "high": ci["high"],
            "n": len(labels)}


def run_one(args, config_name, seed):
    """Train one configuration with one seed, score it; returns the result entry."""
    import keras

    from learning.gradients import deterministic

    deterministic(seed)
    data = load_data(args.dataset, args.train_images)
    weights = weights_file(args.weights, args.cache)
    started = time.monotonic()
    if config_name == "default":
        classifier, info = train_default(data, args.dataset, weights, args.cache, seed)
    else:
        classifier, info = train_finetuned(data, args.dataset, weights, config_name, seed, args)
    train_seconds = time.monotonic() - started
    history = info["history"]
    boxed_paths = [image_path(args.dataset, n) for n in data["boxed"]]
    entry = {"label": args.label, "config": config_name, "seed": seed,
             "backend": keras.backend.backend(), "device": device_name(),
             "n_train": info["n_train"], "n_validation": info["n_validation"],
             "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
             "val_auroc": (history["val_auroc"][info["best_epoch"] - 1]
                           if history["val_auroc"] else None),
             "test_auroc": auroc_of(classifier, data, args.dataset, ("boxed", "test-rest")),
             "seconds_per_image_epoch": info["seconds_per_image_epoch"],
             "cpu_seconds_per_image_epoch": info["cpu_seconds_per_image_epoch"],
             "feature_seconds_per_image": info.get("feature_seconds_per_image"),
             "train_seconds": round(train_seconds, 1),
             **score(grad_cam_maps(classifier, boxed_paths), data["boxes"]),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "peak_accelerator_mb": accelerator_peak_mb()}
    return entry


def device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    return "cpu"


def accelerator_peak_mb():
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


# ----------------------------------------------------------------------------- report

def load_results(cache):
    path = os.path.join(cache, RESULTS)
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def ci_text(ci):
    return localization.format_ci(ci, 2)


def versus_default(entry, entries, n_resamples=1000):
    """Paired per-image differences against the default of the same label and seed."""
    base = [e for e in entries if e["label"] == entry["label"] and e["seed"] == entry["seed"]
            and e["config"] == "default"]
    if not base or entry["config"] == "default":
        return None
    return {k: localization.bootstrap_ci(np.subtract(entry["per_image"][k],
                                                     base[0]["per_image"][k]), n_resamples)
            for k in METRICS}


def print_report(entries):
    """One block per run: metrics, paired differences vs each control and vs the default."""
    for e in entries:
        auc = e["test_auroc"]
        val = "n/a" if e["val_auroc"] is None else f"{e['val_auroc']:.3f}"
        accel = ("" if e.get("peak_accelerator_mb") is None
                 else f", peak accelerator {e['peak_accelerator_mb']:,.0f} MB")
        feature = ("" if not e.get("feature_seconds_per_image") else
                   f" (+ {e['feature_seconds_per_image']:.3f} s/img once for the features)")
        print(f"{e['label']} / {e['config']} / seed {e['seed']} ({e['backend']}, {e['device']}):"
              f" train {e['n_train']}, epochs {e['epochs_run']} (kept {e['best_epoch']}); "
              f"test AUROC {auc['auroc']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}], "
              f"validation AUROC {val}; {e['seconds_per_image_epoch']:.4f} s/img/epoch (CPU time "
              f"{e['cpu_seconds_per_image_epoch']:.4f}){feature}"
              f", peak RSS {e['peak_rss_mb']:,.0f} MB{accel}")
        rows = [("map", e["metrics"])] + [(f"- {c}", e["versus"][c]) for c in CONTROLS]
        paired = versus_default(e, entries)
        if paired:
            rows.append(("- default", paired))
        for title, cis in rows:
            print(f"    {title:<20}" + "".join(f"{k} {ci_text(cis[k]):<22}" for k in METRICS))
    print_means(entries)


def print_means(entries):
    groups = {}
    for e in entries:
        groups.setdefault((e["label"], e["config"]), []).append(e)
    print("\nmean +- sd over seeds: label / config (seeds): AUROC, val AUROC, pointing, inside, "
          "T(IoBB), s/img/epoch")
    for (label, config), runs in groups.items():
        cells = [[r["test_auroc"]["auroc"] for r in runs],
                 [r["val_auroc"] if r["val_auroc"] is not None else np.nan for r in runs]]
        cells += [[r["metrics"][k]["mean"] for r in runs] for k in METRICS]
        cells.append([r["seconds_per_image_epoch"] for r in runs])
        print(f"  {label} / {config} ({len(runs)}): " + ", ".join(
            f"{np.mean(v):.3f}+-{np.std(v):.3f}" for v in cells))


# ----------------------------------------------------------------------------- timing

def time_epochs(args):
    """Seconds (wall and CPU) per training image per epoch of each fine-tuning configuration
    on the first `--images` training images, `--epochs` epochs, no validation: the cost
    column alone, for machines where the full comparison does not fit."""
    from learning.head import PRESETS
    from learning.train.finetune import fine_tune

    data = load_data(args.dataset)
    paths, labels, _, _ = examples(data, args.dataset, ("train",))
    order = np.random.default_rng(0).permutation(len(paths))[:args.images]
    weights = weights_file(args.weights, args.cache)
    for name in args.configs.split(","):
        config = dict(PRESETS["cam"], head="cam", epochs=args.epochs, batch_size=16)
        _, info = fine_tune([paths[i] for i in order], labels[order], ["train"] * len(order),
                            config, CONFIGS[name], SIZE, weights, progress=False)
        history = info["history"]
        print(f"{name}: {len(order)} images x {info['epochs_run']} epochs: s/img/epoch wall "
              f"{history['seconds_per_image']}, CPU {history['cpu_seconds_per_image']}; peak "
              f"RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB",
              flush=True)


# ----------------------------------------------------------------------------- tools

def make_subset(source, out, others, seed=0):
    """Copy every boxed patient's images and `others` more (whole patients, stratified) as
    224-px lossless PNGs (8-bit grey when the image is grey), boxes rescaled to them."""
    from PIL import Image

    from scraper.images import image_size, load_rgb

    rows, boxes = read_dataset(source)
    boxed_patients = {r["patient_id"] for r in rows if r["image"] in boxes}
    rest = [r for r in rows if r["patient_id"] not in boxed_patients]
    picked = stratified_group_split(np.array([int(r["abnormal"]) for r in rest]),
                                    [r["patient_id"] for r in rest], others / len(rest), seed)
    chosen = [r for r in rows if r["patient_id"] in boxed_patients] + [
        r for r, keep in zip(rest, picked) if keep]
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    sizes = {}
    for row in chosen:
        sizes[row["image"]] = image_size(image_path(source, row["image"]))
        pixels = load_rgb(image_path(source, row["image"]), SIZE)
        grey = (pixels == pixels[..., :1]).all()
        Image.fromarray(pixels[..., 0] if grey else pixels).save(
            image_path(out, row["image"]), optimize=True)
    with open(os.path.join(out, "labels.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    with open(os.path.join(out, "bboxes.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "finding", "x", "y", "w", "h"])
        for name in sorted(boxes):
            for box in localization.scale_boxes(boxes[name], sizes[name], (SIZE, SIZE)):
                writer.writerow([name, box["finding"]] + [f"{box[k]:.2f}" for k in "xywh"])
    log(f"[bench] subset: {len(chosen)} images ({len(boxes)} boxed) -> {out}")


def pack_weights(h5_path, out):
    """Keras' legacy VGG16 .h5 -> a losslessly smaller .npz (bytes of each float32 array
    regrouped by significance before deflate: ~85 % of the size), for a 64 MiB transfer."""
    import h5py

    arrays, order = {}, []
    with h5py.File(h5_path, "r") as handle:
        for layer in [_text(n) for n in handle.attrs["layer_names"]]:
            names = [_text(w) for w in handle[layer].attrs.get("weight_names", [])]
            order.append([layer, names])
            for i, name in enumerate(names):
                value = np.ascontiguousarray(handle[layer][name], dtype="<f4")
                arrays[f"{layer}/{i}"] = value.view(np.uint8).reshape(-1, 4).T.copy()
                arrays[f"{layer}/{i}/shape"] = np.array(value.shape)
    np.savez_compressed(out, order=np.array(json.dumps(order)), **arrays)


def unpack_weights(packed, h5_path):
    """pack_weights' .npz -> the same arrays in Keras' legacy .h5 layout (vgg.load_weights)."""
    import h5py

    with np.load(packed, allow_pickle=False) as data, h5py.File(h5_path + ".part", "w") as out:
        order = json.loads(str(data["order"]))
        out.attrs["layer_names"] = [layer.encode() for layer, _ in order]
        for layer, names in order:
            group = out.create_group(layer)
            group.attrs["weight_names"] = [n.encode() for n in names]
            for i, name in enumerate(names):
                raw = np.ascontiguousarray(data[f"{layer}/{i}"].T)
                group[name] = raw.view("<f4").reshape(tuple(data[f"{layer}/{i}/shape"]))
    os.replace(h5_path + ".part", h5_path)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- main

def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and score configurations x seeds")
    run.add_argument("dataset")
    run.add_argument("weights", help="VGG16 no-top weights (.h5, or .npz from pack-weights)")
    run.add_argument("cache", help="folder for results, checkpoints and unpacked weights")
    run.add_argument("--configs", default="default,ft5,ft45")
    run.add_argument("--seeds", default="0")
    run.add_argument("--label", default="run", help="names this run's rows (e.g. cpu-300)")
    run.add_argument("--train-images", type=int, default=None)
    run.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (preset)")
    run.add_argument("--patience", type=int, default=None)
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--workers", type=int, default=1, help="image loader threads")
    run.add_argument("--one", default=None, help=argparse.SUPPRESS)  # CONFIG:SEED, in a child
    timing = commands.add_parser("time", help="s/img/epoch of fine-tuning only")
    for name in ("dataset", "weights", "cache"):
        timing.add_argument(name)
    timing.add_argument("--configs", default="ft5,ft45")
    timing.add_argument("--images", type=int, default=32)
    timing.add_argument("--epochs", type=int, default=2)
    report = commands.add_parser("report", help="print the results file")
    report.add_argument("cache")
    subset = commands.add_parser("subset", help="a small 224-px copy of a dataset")
    subset.add_argument("source")
    subset.add_argument("out")
    subset.add_argument("--others", type=int, default=300)
    pack = commands.add_parser("pack-weights", help="a lossless smaller copy of the weights")
    pack.add_argument("h5")
    pack.add_argument("out")
    return parser


def run_all(args, argv):
    """Each configuration and seed in a child process (its own peak memory, its own JIT)."""
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        raise UserError(f"invalid configuration {unknown[0]!r}; allowed: {', '.join(CONFIGS)}")
    os.makedirs(args.cache, exist_ok=True)
    done = {(e["label"], e["config"], e["seed"]) for e in load_results(args.cache)}
    for config in args.configs.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            if (args.label, config, seed) in done:
                continue
            started = time.monotonic()
            child = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv +
                                   ["--one", f"{config}:{seed}"])
            log(f"[bench] {args.label} {config} seed {seed}: exit {child.returncode} "
                f"({elapsed_since(started)})")
    print_report([e for e in load_results(args.cache) if e["label"] == args.label])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.command == "subset":
        return make_subset(args.source, args.out, args.others)
    if args.command == "pack-weights":
        return pack_weights(args.h5, args.out)
    if args.command == "time":
        return time_epochs(args)
    if args.command == "report":
        return print_report(load_results(args.cache))
    if args.one is None:
        return run_all(args, argv)
    config, seed = args.one.split(":")
    entry = run_one(args, config, int(seed))
    with open(os.path.join(args.cache, RESULTS), "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return 0


if __name__ == "__main__":
    exit_with(main, "bench_finetune")
