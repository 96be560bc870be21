"""Learning curve: does more training data move the maps?

Localization (pointing game, inside share) and test AUROC of the pipeline's DEFAULT against the
number of training images on nih-cxr-1000, with real ImageNet VGG16 features. The default is
stage 5's default head preset `cam` with all its defaults (ring mask 3, grid flips/shifts,
early stopping on validation loss) on stage 3's default block4_pool features at 224 px,
explained with stage 6's default method, Grad-CAM on the head's 1x1 conv, maps at 224 px.

Protocol (declared before the first run; nothing here is tuned on the 44 boxed images)
  * Split: benchmarks/bench_localization.py's, imported, not copied (make_split, split seed 0):
    every patient with an expert box is held out; the 44 boxed images are the localization
    set; test = the boxed patients' images + a 15 % patient-grouped "test-rest" (AUROC, CI over
    patients); "validation" (early stopping) and "test" are FIXED across sizes and seeds.
  * Training-set sizes: about 100, 200 and 400 images and all of the "train" part (~707).
    Subsamples are drawn over TRAINING PATIENTS (never images), stratified by label, with
    stage 4's stratified_group_split, NESTED: all -> 400 -> 200 -> 100, each step drawing
    round(target / current * class count) images of each class from the previous set
    (subsample seed 1000 * (seed + 1) + target). A new subsample is drawn for every seed; at
    "all" the seeds differ only in the model's initialisation and batch order.
  * Seeds 0, 1, 2 (the model seed of train_head and the subsample seed). One training per
    (size, seed): learning.fully_connected_layers_training.train_head, the code stage 5 runs.
  * Per run: test AUROC with its grouped-bootstrap 95 % CI (bench_localization.test_auroc);
    Grad-CAM maps of the 44 boxed images (bench_localization.explain), scored with
    learning.localization: pointing game and inside share, each mean with a 95 % percentile
    bootstrap CI over the 44 images (1,000 resamples).
  * Three controls, each scored on the same images and compared PAIRED (per-image difference
    map - control, mean with a bootstrap CI over images): the lung-field prior and the centred
    Gaussian (learning.localization, no model), and the image-independent control: the mean of
    the run's own 44 maps, each scaled to max 1 (issue 21; one map shown for every image). A
    run whose maps do not beat its own mean map carries no per-image localization evidence.
  * Per size: mean +- sample sd (n - 1) over the seeds, and a 95 % CI of the seed-mean from a
    two-level bootstrap: seeds resampled with replacement, images (AUROC: test patients)
    resampled with replacement, the same image draw for every run (the images are paired).
  * The slope (the headline): OLS of the per-run mean on log2(number of training images) over
    the 12 runs, i.e. the change per doubling of the training set, for AUROC, pointing,
    inside share and the paired differences versus the three controls; its 95 % CI from the
    same two-level bootstrap (a seed carries its 4 nested runs; 2,000 resamples). A CI that
    contains 0 is reported as "no detectable effect" at this sample size, whatever the point.
    With 3 seeds the seed level of the bootstrap is coarse; it is reported, not hidden.
  * float16 check (issue 16): every feature cast to float16 and back (what the feature store
    keeps by default) vs float32, at the full training set, seeds 0-2 (same seeds, so the
    per-seed difference is the cast's alone: training is deterministic). Declared criterion:
    float16 is "within the 3-seed noise" of float32 when |mean16 - mean32| <= the float32
    sample sd over seeds, for test AUROC and for the pointing game (inside share shown too).

  * Supplement, declared after the first runs showed that at 100 (and some 200) images the
    preset's 40-epoch cap, not early stopping, ended training (4 batches per epoch: ~160
    updates against ~600 at 707 images): sizes 100 and 200 again with a 160-epoch cap (same
    patience 8, same images and seeds; --max-epochs 160 --sizes 100,200 --precisions float32),
    reported apart, paired by seed with the default's runs. It tells whether the small sizes
    lack data or only updates; the curve itself stays the default's.

Results: one JSON line per (precision, size, seed, epoch cap) appended to
<cache>/learning-curve.jsonl (per-image metrics and test scores included, so the report and the
bootstraps need no retraining); a run skips what is already there, so it can be interrupted and
resumed; the summary goes to <cache>/learning-curve-summary.json.
`--report` prints the tables from that file only.

Example (features: a stage-3 pickle of block4_pool at 224 px with ImageNet weights, e.g. the
b4p-224.pickle cache of bench_localization.py):
    nice -n 10 python benchmarks/bench_learning_curve.py ../shared/datasets/nih-cxr-1000 \
        feature-cache/b4p-224.pickle curve-cache
    python benchmarks/bench_learning_curve.py ../shared/datasets/nih-cxr-1000 \
        feature-cache/b4p-224.pickle curve-cache --report

MEASURED (real ImageNet weights, nih-cxr-1000, 2 shared CPU cores, 2-6 min per run, December
2026). Split (bench_localization's): train 707, validation 78, test 215 (77 boxed-patient images +
138 others). Subsamples: exactly 100 / 200 / 400 images (46 % abnormal, like the 707), 64-81 /
135-146 / 264-277 patients of the 483. The "all" runs reproduce bench_localization's default
(cam-aug-r3) seeds 0-2 to the digit (0.919 / 0.318 / 0.264, ...): same code, same images.
No-model controls on the 44 boxed images: lung prior pointing 0.409 [0.27, 0.55], inside 0.227
[0.18, 0.29]; centred Gaussian 0.159 [0.07, 0.27] / 0.150 [0.11, 0.20]. The mean-map control
is computed per run (its own scores in the per-size table).

  precision size seed AUROC [CI]           pointing [CI]       inside [CI]         epochs run (kept)
  float32 100 s0      0.773 [.70,.84]     0.182 [.07,.30]     0.238 [.18,.30]     40 (35)
  float32 200 s0      0.878 [.83,.93]     0.341 [.20,.48]     0.269 [.21,.33]     35 (27)
  float32 400 s0      0.902 [.86,.95]     0.295 [.16,.43]     0.273 [.21,.34]     25 (17)
  float32 all s0      0.919 [.87,.96]     0.318 [.18,.45]     0.264 [.20,.33]     27 (19)
  float32 100 s1      0.819 [.76,.88]     0.250 [.14,.39]     0.214 [.15,.28]     40 (37)
  float32 200 s1      0.889 [.84,.93]     0.318 [.18,.45]     0.275 [.21,.34]     40 (35)
  float32 400 s1      0.907 [.86,.94]     0.341 [.20,.50]     0.273 [.21,.35]     22 (14)
  float32 all s1      0.912 [.86,.95]     0.364 [.23,.52]     0.280 [.21,.35]     20 (12)
  float32 100 s2      0.810 [.75,.88]     0.409 [.27,.57]     0.266 [.20,.34]     40 (38)
  float32 200 s2      0.891 [.84,.94]     0.477 [.34,.61]     0.277 [.21,.35]     40 (34)
  float32 400 s2      0.904 [.86,.95]     0.341 [.20,.48]     0.270 [.20,.34]     28 (20)
  float32 all s2      0.904 [.86,.95]     0.341 [.20,.50]     0.269 [.20,.34]     21 (13)
  float16 all s0      0.919 [.87,.96]     0.318 [.18,.45]     0.264 [.20,.33]     27 (19)
  float16 all s1      0.912 [.86,.95]     0.364 [.23,.52]     0.280 [.21,.35]     20 (12)
  float16 all s2      0.904 [.86,.95]     0.341 [.20,.50]     0.269 [.20,.34]     21 (13)
  f32 cap160 100 s0   0.773 [.70,.84]     0.182 [.07,.30]     0.238 [.18,.30]     43 (35)
  f32 cap160 200 s0   0.878 [.83,.93]     0.341 [.20,.48]     0.269 [.21,.33]     35 (27)
  f32 cap160 100 s1   0.857 [.80,.91]     0.273 [.16,.41]     0.229 [.17,.30]     59 (51)
  f32 cap160 200 s1   0.889 [.84,.93]     0.318 [.18,.45]     0.275 [.21,.34]     43 (35)
  f32 cap160 100 s2   0.838 [.78,.90]     0.432 [.30,.59]     0.267 [.20,.34]     73 (65)
  f32 cap160 200 s2   0.891 [.84,.94]     0.477 [.34,.61]     0.277 [.21,.35]     42 (34)

  paired per-image differences of the pointing game, map - control [95 % CI over images]
  size seed  - lung prior          - Gaussian            - mean-map control
  100  s0    -0.227 [-.39,-.07]    +0.023 [-.11,+.16]    +0.023 [-.11,+.16]
  200  s0    -0.068 [-.23,+.09]    +0.182 [+.00,+.36]    +0.159 [+.00,+.32]
  400  s0    -0.114 [-.30,+.05]    +0.136 [-.02,+.30]    -0.091 [-.27,+.07]
  all  s0    -0.091 [-.25,+.07]    +0.159 [+.00,+.32]    +0.091 [-.05,+.23]
  100  s1    -0.159 [-.32,+.00]    +0.091 [-.05,+.23]    -0.045 [-.18,+.09]
  200  s1    -0.091 [-.27,+.09]    +0.159 [+.00,+.32]    -0.068 [-.25,+.11]
  400  s1    -0.068 [-.23,+.11]    +0.182 [+.02,+.34]    -0.045 [-.20,+.14]
  all  s1    -0.045 [-.20,+.14]    +0.205 [+.05,+.36]    -0.023 [-.20,+.16]
  100  s2    +0.000 [-.18,+.20]    +0.250 [+.07,+.41]    +0.182 [+.05,+.32]
  200  s2    +0.068 [-.14,+.25]    +0.318 [+.16,+.48]    +0.091 [-.09,+.27]
  400  s2    -0.068 [-.25,+.11]    +0.182 [+.05,+.34]    +0.114 [+.00,+.23]
  all  s2    -0.068 [-.25,+.11]    +0.182 [+.02,+.34]    +0.114 [-.02,+.25]

  paired per-image differences of the inside share, map - control [95 % CI over images]
  size seed  - lung prior          - Gaussian            - mean-map control
  100  s0    +0.011 [-.02,+.04]    +0.088 [+.06,+.12]    +0.022 [-.00,+.05]
  200  s0    +0.043 [+.01,+.08]    +0.119 [+.09,+.15]    +0.046 [+.01,+.08]
  400  s0    +0.046 [+.01,+.08]    +0.123 [+.09,+.16]    +0.046 [+.01,+.08]
  all  s0    +0.038 [-.00,+.07]    +0.114 [+.08,+.15]    +0.045 [+.01,+.08]
  100  s1    -0.013 [-.06,+.03]    +0.064 [+.02,+.11]    +0.010 [-.02,+.04]
  200  s1    +0.049 [+.01,+.09]    +0.125 [+.09,+.17]    +0.039 [+.00,+.07]
  400  s1    +0.046 [+.00,+.09]    +0.123 [+.08,+.17]    +0.047 [+.01,+.08]
  all  s1    +0.053 [+.01,+.09]    +0.130 [+.09,+.16]    +0.053 [+.02,+.09]
  100  s2    +0.040 [-.00,+.09]    +0.116 [+.08,+.16]    +0.050 [+.02,+.09]
  200  s2    +0.050 [+.01,+.09]    +0.127 [+.09,+.17]    +0.052 [+.02,+.09]
  400  s2    +0.044 [+.00,+.09]    +0.120 [+.08,+.17]    +0.048 [+.01,+.08]
  all  s2    +0.042 [+.01,+.08]    +0.119 [+.08,+.16]    +0.046 [+.01,+.08]

  per size: mean +- sample sd over seeds 0-2 [95 % CI: seeds and images (AUROC: patients) resampled]
  100  AUROC 0.800+-0.024 [.74,.86]  pointing 0.280+-0.117 [.14,.45]  inside 0.240+-0.026 [.18,.31]
       - lung prior  pointing -0.129+-0.117 [-.32,+.07]  inside +0.013+-0.026 [-.03,+.06]
       - Gaussian    pointing +0.121+-0.117 [-.05,+.32]  inside +0.089+-0.026 [+.05,+.14]
       - mean map    pointing +0.053+-0.117 [-.11,+.21]  inside +0.027+-0.021 [-.01,+.07]
       mean map itself pointing 0.227+-0.068 [.11,.36]  inside 0.212+-0.007 [.15,.28]
  200  AUROC 0.886+-0.007 [.83,.93]  pointing 0.379+-0.086 [.23,.53]  inside 0.274+-0.004 [.21,.34]
       - lung prior  pointing -0.030+-0.086 [-.21,+.15]  inside +0.047+-0.004 [+.01,+.09]
       - Gaussian    pointing +0.220+-0.086 [+.04,+.39]  inside +0.124+-0.004 [+.09,+.16]
       - mean map    pointing +0.061+-0.117 [-.14,+.23]  inside +0.046+-0.006 [+.01,+.08]
       mean map itself pointing 0.318+-0.118 [.16,.49]  inside 0.228+-0.007 [.17,.29]
  400  AUROC 0.905+-0.003 [.86,.94]  pointing 0.326+-0.026 [.20,.46]  inside 0.272+-0.002 [.21,.34]
       - lung prior  pointing -0.083+-0.026 [-.25,+.08]  inside +0.045+-0.002 [+.01,+.09]
       - Gaussian    pointing +0.167+-0.026 [+.01,+.33]  inside +0.122+-0.002 [+.08,+.16]
       - mean map    pointing -0.008+-0.107 [-.20,+.16]  inside +0.047+-0.001 [+.01,+.08]
       mean map itself pointing 0.333+-0.092 [.18,.50]  inside 0.225+-0.002 [.17,.29]
  all  AUROC 0.912+-0.007 [.86,.95]  pointing 0.341+-0.023 [.20,.48]  inside 0.271+-0.008 [.21,.34]
       - lung prior  pointing -0.068+-0.023 [-.24,+.10]  inside +0.044+-0.008 [+.01,+.08]
       - Gaussian    pointing +0.182+-0.023 [+.02,+.34]  inside +0.121+-0.008 [+.08,+.16]
       - mean map    pointing +0.061+-0.073 [-.11,+.22]  inside +0.048+-0.004 [+.02,+.08]
       mean map itself pointing 0.280+-0.092 [.14,.45]  inside 0.223+-0.004 [.17,.29]

  slope per doubling of the training set (OLS on log2 n, 12 runs; 95 % CI, 2,000 two-level
  bootstrap resamples) and the gap all - 100 (mean over seeds):
    test AUROC           +0.038 [+0.021, +0.057]  gap +0.111 [+0.061, +0.170]  increases
    pointing game        +0.014 [-0.036, +0.065]  gap +0.061 [-0.076, +0.205]  no detectable effect
    inside share         +0.010 [-0.000, +0.022]  gap +0.032 [+0.000, +0.067]  not detectable (edge)
    pointing - mean map  -0.006 [-0.052, +0.039]  gap +0.008 [-0.114, +0.152]  no detectable effect
    inside - mean map    +0.007 [-0.002, +0.016]  gap +0.020 [-0.006, +0.048]  no detectable effect
    mean map's own pointing  +0.020 [-0.016, +0.071];  its inside share +0.003 [+0.000, +0.007]
    (the lung prior and the Gaussian are one fixed map, so the slopes of the differences to them
    are the slopes of the scores)

  float16-cast vs float32 features, all 707, seeds 0-2 (paired by seed):
    AUROC     0.912 +- 0.007 vs 0.912 +- 0.008, difference -0.0001 (per seed |d| <= 0.0003)
    pointing  0.341 +- 0.023 vs 0.341 +- 0.023, difference 0 (the same hit or miss on each of the
              44 images in every seed)
    inside    0.271 +- 0.008 vs 0.271 +- 0.008 (per image |d| <= 0.0008)
    Test scores (logit differences, sd ~2) differ by <= 0.010; the same epochs run and kept.
    Within the 3-seed noise of float32 (criterion |d| <= float32 seed sd): met, by 2 orders of
    magnitude.

  epoch-cap supplement (declared above): at 100 images the 40-epoch cap ended all three default
  runs (kept epochs 35-38), at 200 two of three. With a 160-epoch cap, paired by seed:
    100: AUROC 0.800 -> 0.823 (+0.022 +- 0.020), pointing 0.280 -> 0.295 (+0.015 +- 0.013),
         inside 0.240 -> 0.245 (+0.005 +- 0.009), kept epoch 37 -> 50 on average
    200: identical (early stopping ended every run by epoch 43 anyway)
    slopes with these runs in place: AUROC +0.031 [+0.013, +0.054], pointing +0.009 [-0.042,
    +0.058], inside +0.008 [-0.000, +0.018], pointing - mean map -0.011 [-0.054, +0.033],
    inside - mean map +0.006 [-0.003, +0.015]: the same verdict.

Conclusions. (1) More data moves the classifier, not the maps: test AUROC rises by +0.038 per
doubling (0.800 at 100 images to 0.912 at 707, CI of the slope above 0, still rising between 400
and 707), while the pointing game shows no detectable trend (+0.014 per doubling, CI -0.036 to
+0.065; seed-to-seed sd up to 0.12 at 100 images) and the inside share rises from 100 to 200
images (0.240 -> 0.274) and then stays flat (0.272, 0.271); its slope sits at the edge of
detection. (2) At no size does the pointing game beat the lung-field prior (best: 200 images,
-0.03 [-0.21, +0.15]); the inside share beats the prior and the maps' own mean map by +0.04 to
+0.05 from 200 images on (CIs above 0), and that margin does not grow with data (slope +0.007
[-0.002, +0.016]). (3) So between 100 and 707 images the head on frozen block4_pool features
reaches the localization it will reach by about 200 images; the extra images buy AUROC only.
The curve cannot rule out that 100x more data would move the maps (the pointing slope's upper
limit, +0.065 per doubling, is not small over 7 doublings), but nothing in it points that
way. (4) float16 feature storage changes nothing measurable. (5) The 44 boxed images are a
development set already used for the default's choice; no choice was made here.
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_localization  # noqa: E402
from benchmarks.bench_localization import (  # noqa: E402
    MAP_SIZE, explain, load_results, make_split, read_dataset, record, test_auroc,
    test_scores, train_config)
from learning.explain import localization  # noqa: E402
from learning.head import PRESETS  # noqa: E402
from learning.learning_examples_preparing import (  # noqa: E402
    load_features, stratified_group_split)
from scraper.cli import UserError, elapsed_since, exit_with, log  # noqa: E402
from scraper.fileio import atomic_write_json  # noqa: E402

CONFIG = "cam"  # bench_localization's name for the default: block4_pool + the cam preset
DEFAULT_EPOCHS = PRESETS["cam"]["epochs"]
DEFAULT_SIZES = "100,200,400,all"
METHOD = "grad-cam"
KEYS = ("pointing", "inside_share")
CONTROLS = ("lung_prior", "gaussian", "mean_map")
CONTROL_TITLES = {"lung_prior": "lung prior", "gaussian": "Gaussian",
                  "mean_map": "mean-map control"}


# ----------------------------------------------------------------------------- subsamples

def parse_sizes(text):
    """"100,200,400,all" -> [100, 200, 400, None] (None = the whole training part)."""
    sizes = []
    for value in (v.strip() for v in text.split(",") if v.strip()):
        if value == "all":
            sizes.append(None)
        elif value.isdigit() and int(value) >= 10:
            sizes.append(int(value))
        else:
            raise argparse.ArgumentTypeError(f"invalid size {value!r}: a number of training "
                                             f"images >= 10, or 'all'")
    return sizes


def size_label(size):
    return "all" if size is None else str(size)


def nested_subsamples(train_names, labels, groups, sizes, seed):
    """{size: sorted names} nested (the smaller set inside the larger), drawn over patients,
    stratified by label (stage 4's stratified_group_split), largest first."""
    current = list(train_names)
    result = {}
    for size in sorted(sizes, key=lambda s: np.inf if s is None else s, reverse=True):
        if size is not None and size < len(current):
            held = stratified_group_split(np.array([labels[n] for n in current]),
                                          [groups[n] for n in current], size / len(current),
                                          1000 * (seed + 1) + size)
            current = [n for n, keep in zip(current, held) if keep]
        result[size] = sorted(current)
    return result


def config_name(max_epochs):
    """bench_localization's configuration for the default with another epoch cap (registered
    in its CONFIGS, so train_config trains it exactly as it trains the default)."""
    if max_epochs == DEFAULT_EPOCHS:
        return CONFIG
    name = f"{CONFIG}-e{max_epochs}"
    bench_localization.CONFIGS.setdefault(name, ("b4p", "cam", {"epochs": max_epochs}))
    return name


def max_epochs_of(entry):
    return entry.get("max_epochs", DEFAULT_EPOCHS)


def run_part(part, chosen):
    """bench_localization's split with the training images outside `chosen` set aside."""
    chosen = set(chosen)
    return {n: ("unused" if p == "train" and n not in chosen else p) for n, p in part.items()}


# ----------------------------------------------------------------------------- maps

def per_image(maps, boxes_list):
    """{"pointing": [0/1] * N, "inside_share": [float] * N} of maps (N, H, W) vs boxes."""
    metrics = [localization.image_metrics(m, b) for m, b in zip(maps, boxes_list)]
    return {key: [float(m[key]) for m in metrics] for key in KEYS}


def mean_map(maps):
    """The image-independent control: the mean of the maps (N, H, W), each scaled to max 1."""
    maps = np.maximum(np.asarray(maps, np.float64), 0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return (maps / np.where(peak > 0, peak, 1)).mean(axis=0)


def fixed_controls(boxes_list):
    """Per-image metrics of the two no-model maps: {"lung_prior": ..., "gaussian": ...}."""
    shape = (MAP_SIZE, MAP_SIZE)
    return {"lung_prior": per_image([localization.lung_prior_map(shape)] * len(boxes_list),
                                    boxes_list),
            "gaussian": per_image([localization.gaussian_map(shape)] * len(boxes_list),
                                  boxes_list)}


def paired(values, control, n_resamples, seed):
    """Mean per-image difference values - control with a bootstrap CI over images."""
    return localization.bootstrap_ci(np.subtract(values, control), n_resamples, seed)


# ----------------------------------------------------------------------------- one run

def one_run(data, chosen, precision, size, seed, n_resamples, max_epochs=DEFAULT_EPOCHS):
    """Train the default on `chosen` training images, test it and explain the boxed images:
    the JSON-ready record of one (precision, size, seed, max_epochs)."""
    features = data["features"][precision]
    start = time.monotonic()
    head, kind, info, seconds = train_config(
        config_name(max_epochs), {"b4p": features}, data["labels"],
        run_part(data["part"], chosen), data["names"], seed, None)
    test, score = test_scores(head, features, data["part"], data["names"])
    auroc = test_auroc(test, score, data["labels"], data["groups"], n_resamples, seed)
    maps, _ = explain(METHOD, head, kind, {"b4p": features}, None, data["boxed_index"], None)
    own = per_image(maps, data["boxes"])
    control = per_image([mean_map(maps)] * len(maps), data["boxes"])
    controls = dict(data["controls"], mean_map=control)
    chosen_labels = np.array([data["label_of"][n] for n in chosen])
    entry = {
        "precision": precision, "size": size_label(size), "seed": seed,
        "max_epochs": max_epochs,
        "n_train": len(chosen), "n_train_per_class": np.bincount(chosen_labels, minlength=2)
        .tolist(), "n_train_patients": len({data["group_of"][n] for n in chosen}),
        "train_sha1": hashlib.sha1("\n".join(chosen).encode()).hexdigest()[:12],
        "n_validation": info["n_validation"], "epochs_run": info["epochs_run"],
        "best_epoch": info["best_epoch"], "train_seconds": round(seconds, 1),
        "validation_auroc_at_best": info["history"]["val_auroc"][info["best_epoch"] - 1],
        "auroc": auroc, "test_score": [float(s) for s in score],
        "per_image": own, "mean_map_per_image": control,
        "ci": {key: localization.bootstrap_ci(own[key], n_resamples, seed) for key in KEYS},
        "versus": {name: {key: paired(own[key], controls[name][key], n_resamples, seed)
                          for key in KEYS} for name in CONTROLS},
        "seconds": round(time.monotonic() - start, 1)}
    return entry


def load_data(args):
    """Dataset rows, split, features (float32 and float16-cast) and boxes, as one dict."""
    rows, boxes = read_dataset(args.dataset)
    boxed_images = sorted(boxes)
    part = make_split(rows, set(boxed_images))
    names, features, params = load_features(args.features)
    if features.ndim != 4 or features.shape[1:3] != (14, 14) or params.get("layer") not in (
            None, "block4_pool"):
        raise UserError(f"{args.features}: expected block4_pool features at 224 px, shape "
                        f"(N, 14, 14, 512); got {features.shape}, layer {params.get('layer')!r}")
    by_name = {r["image"]: r for r in rows}
    missing = sorted(set(part) - set(names))
    if missing:
        raise UserError(f"{args.features}: no features for {len(missing):,} dataset images "
                        f"(e.g. {missing[0]}); compute them for the whole dataset first")
    keep = [i for i, n in enumerate(names) if n in part]  # features of other images: unused
    names, features = [names[i] for i in keep], features[keep]
    index = {n: i for i, n in enumerate(names)}
    data = {"names": names, "part": part,
            "labels": np.array([int(by_name[n]["abnormal"]) for n in names]),
            "groups": [by_name[n]["patient_id"] for n in names],
            "label_of": {n: int(by_name[n]["abnormal"]) for n in names},
            "group_of": {n: by_name[n]["patient_id"] for n in names},
            "boxed_index": np.array([index[n] for n in boxed_images]),
            "boxes": [localization.scale_boxes(boxes[n], (512, 512), (MAP_SIZE, MAP_SIZE))
                      for n in boxed_images],  # nih-cxr-1000 images are 512 x 512
            "features": {"float32": features}, "feature_max": float(np.abs(features).max())}
    if "float16" in args.precisions:
        data["features"]["float16"] = features.astype(np.float16).astype(np.float32)
    data["controls"] = fixed_controls(data["boxes"])
    return data


# ----------------------------------------------------------------------------- statistics

def sample_sd(values):
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def batch_auc(labels, scores):
    """AUROC of each row of scores (R, n) against labels (n,) by ranks (ties averaged)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if not n1 or not n0:
        return np.full(len(scores), np.nan)
    ranks = rankdata(scores, axis=1)
    return (ranks[:, labels].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def curve_arrays(entries, value_of):
    """Runs of one precision arranged (sizes, seeds): x = log2(n_train) (S, K) and per-unit
    values (S, K, N) = value_of(entry) for each run (per-image values, or test scores).
    Only seeds present at every size are used."""
    sizes = sorted({e["size"] for e in entries}, key=lambda s: np.inf if s == "all" else int(s))
    seeds = sorted(set.intersection(*({e["seed"] for e in entries if e["size"] == s}
                                      for s in sizes)))
    by = {(e["size"], e["seed"]): e for e in entries}
    x = np.array([[np.log2(by[s, k]["n_train"]) for k in seeds] for s in sizes])
    values = np.array([[value_of(by[s, k]) for k in seeds] for s in sizes], np.float64)
    return sizes, seeds, x, values


def quantities(controls):
    """(name, value_of(entry) -> (N,) values) of everything the curve reports."""
    def own(key):
        return lambda e: np.asarray(e["per_image"][key], np.float64)

    def versus(key, control):
        if control == "mean_map":
            return lambda e: own(key)(e) - np.asarray(e["mean_map_per_image"][key])
        return lambda e: own(key)(e) - np.asarray(controls[control][key])

    result = [("auroc", lambda e: np.asarray(e["test_score"]))]
    result += [(key, own(key)) for key in KEYS]
    result += [(f"{key} - {control}", versus(key, control)) for control in CONTROLS
               for key in KEYS]
    result += [(f"mean_map {key}", (lambda k: lambda e: np.asarray(
        e["mean_map_per_image"][k], np.float64))(key)) for key in KEYS]
    return result


def slope_of(x, y):
    """OLS slope of y on x over all points of (S, K) arrays."""
    return float(np.polyfit(np.ravel(x), np.ravel(y), 1)[0])


def two_level_bootstrap(x, values, n_resamples, seed, test=None):
    """Point estimates and 95 % percentile CIs of the per-size means and of the slope on x.

    Each resample draws seeds with replacement (a seed carries its runs at every size) and
    units with replacement, the same units for every run: images for per-image values;
    for AUROC (test = {"labels", "groups"}) test patients, all their images."""
    rng = np.random.default_rng(seed)
    n_sizes, n_seeds, n_units = values.shape
    if test is not None:
        unique, inverse = np.unique(np.asarray(test["groups"], str), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(len(unique))]

    def statistic(k_idx, u_idx):  # (S, K') per-run statistic on the drawn units
        chosen = values[:, k_idx][:, :, u_idx]
        if test is None:
            return chosen.mean(axis=-1)
        flat = chosen.reshape(-1, len(u_idx))
        return batch_auc(np.asarray(test["labels"])[u_idx], flat).reshape(chosen.shape[:2])

    every = np.arange(n_seeds)
    point = statistic(every, np.arange(n_units))
    draws_means, draws_slope = [], []
    for _ in range(n_resamples):
        k_idx = rng.integers(0, n_seeds, n_seeds)
        u_idx = (rng.integers(0, n_units, n_units) if test is None else np.concatenate(
            [members[g] for g in rng.integers(0, len(members), len(members))]))
        y = statistic(k_idx, u_idx)
        if np.isnan(y).any():
            continue  # a patient draw holding one class: AUROC undefined
        draws_means.append(y.mean(axis=1))
        draws_slope.append(slope_of(x[:, k_idx], y) if n_sizes > 1 else np.nan)
    draws_means, draws_slope = np.array(draws_means), np.array(draws_slope)
    low, high = np.quantile(draws_means, [0.025, 0.975], axis=0)
    result = {"per_size": [{"mean": float(point[s].mean()), "sd": sample_sd(point[s]),
                            "low": float(low[s]), "high": float(high[s])}
                           for s in range(n_sizes)],
              "n_resamples": len(draws_slope), "n_seeds": n_seeds}
    if n_sizes > 1:
        gap = draws_means[:, -1] - draws_means[:, 0]
        result["slope"] = {"mean": slope_of(x, point),
                           "low": float(np.quantile(draws_slope, 0.025)),
                           "high": float(np.quantile(draws_slope, 0.975))}
        result["largest_minus_smallest"] = {
            "mean": float(point[-1].mean() - point[0].mean()),
            "low": float(np.quantile(gap, 0.025)), "high": float(np.quantile(gap, 0.975))}
    return result


def curve_summary(entries, controls, test, n_resamples, seed=0):
    """Per-size means with CIs and slopes for AUROC, pointing, inside share, the paired
    differences versus each control and the mean-map control's own scores:
    {quantity: two_level_bootstrap(...)} + "sizes", "seeds", "n_train"."""
    summary = {}
    for name, value_of in quantities(controls):
        sizes, seeds, x, values = curve_arrays(entries, value_of)
        summary[name] = two_level_bootstrap(x, values, n_resamples, seed,
                                            test if name == "auroc" else None)
    summary["sizes"], summary["seeds"] = sizes, seeds
    summary["n_train"] = [[_entry(entries, s, k)["n_train"] for k in seeds] for s in sizes]
    return summary


def _entry(entries, size, seed):
    return next(e for e in entries if e["size"] == size and e["seed"] == seed)


# ----------------------------------------------------------------------------- report

def ci3(ci, signed=False):
    """'0.318 [0.182, 0.455]' (signed: '+0.04 [-0.01, +0.09]')."""
    if ci.get("mean") is None:
        return "n/a"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if ci.get("low") is None:
        return fmt.format(ci["mean"])
    return f"{fmt.format(ci['mean'])} [{fmt.format(ci['low'])}, {fmt.format(ci['high'])}]"


def print_runs(entries):
    """One row per (precision, size, seed)."""
    print(f"{'precision size seed (n train)':<31}{'test AUROC [CI]':<24}{'pointing [CI]':<24}"
          f"{'inside share [CI]':<24}" + "".join(
              f"{'vs ' + CONTROL_TITLES[c] + ': pointing, inside':<48}" for c in CONTROLS))
    for e in entries:
        a = e["auroc"]
        cap = "" if max_epochs_of(e) == DEFAULT_EPOCHS else f" cap{max_epochs_of(e)}"
        label = f"{e['precision']}{cap} {e['size']} s{e['seed']} ({e['n_train']})"
        versus = "".join(f"{ci3(e['versus'][c]['pointing'], True)}, "
                         f"{ci3(e['versus'][c]['inside_share'], True):<24}" for c in CONTROLS)
        print(f"{label:<31}{ci3({'mean': a['auroc'], 'low': a['low'], 'high': a['high']}):<24}"
              f"{ci3(e['ci']['pointing']):<24}{ci3(e['ci']['inside_share']):<24}{versus}")


def size_cell(quantity, s, signed=False):
    """'0.341 +- 0.023 [0.20, 0.48]' for size index s of a two_level_bootstrap result."""
    cell = quantity["per_size"][s]
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return (f"{fmt.format(cell['mean'])} +- {cell['sd']:.3f} [{fmt.format(cell['low'])}, "
            f"{fmt.format(cell['high'])}]")


def print_sizes(summary):
    """Per size: mean +- sd over seeds [two-level bootstrap CI]; then the slopes."""
    print(f"\nper size, float32: mean +- sample sd over seeds {summary['seeds']} "
          f"[95 % CI, seeds and images resampled]")
    for s, size in enumerate(summary["sizes"]):
        n = summary["n_train"][s]
        print(f"  {size} (n train {min(n)}-{max(n)}): AUROC {size_cell(summary['auroc'], s)}; "
              f"pointing {size_cell(summary['pointing'], s)}; inside "
              f"{size_cell(summary['inside_share'], s)}")
        for control in CONTROLS:
            print(f"      minus {CONTROL_TITLES[control]:<17} pointing "
                  f"{size_cell(summary['pointing - ' + control], s, True)}; inside "
                  f"{size_cell(summary['inside_share - ' + control], s, True)}")
        print(f"      mean-map control itself: pointing "
              f"{size_cell(summary['mean_map pointing'], s)}; inside "
              f"{size_cell(summary['mean_map inside_share'], s)}")
    if len(summary["sizes"]) < 2:
        return
    print(f"\nslope per doubling of the training set (OLS on log2 n train, 95 % CI) and "
          f"{summary['sizes'][-1]} minus {summary['sizes'][0]}:")
    print("  (the lung prior and the Gaussian are the same map for every run, so the slopes "
          "of the differences against them equal the slopes of the scores themselves)")
    for name, quantity in summary.items():
        if name.endswith(("- lung_prior", "- gaussian")):
            continue
        if isinstance(quantity, dict) and "slope" in quantity:
            slope, gap = quantity["slope"], quantity["largest_minus_smallest"]
            verdict = ("no detectable effect" if slope["low"] <= 0 <= slope["high"]
                       else "increases" if slope["low"] > 0 else "decreases")
            print(f"  {name:<28} {ci3(slope, True):<28} gap {ci3(gap, True):<28} {verdict}")


def float16_comparison(entries):
    """float16-cast vs float32 features at the full training set, paired by seed."""
    full = {(e["precision"], e["seed"]): e for e in entries
            if e["size"] == "all" and max_epochs_of(e) == DEFAULT_EPOCHS}
    seeds = sorted(k for p, k in full if p == "float16" and ("float32", k) in full)
    if not seeds:
        return None
    values = {"auroc": lambda e: e["auroc"]["auroc"],
              "pointing": lambda e: e["ci"]["pointing"]["mean"],
              "inside_share": lambda e: e["ci"]["inside_share"]["mean"]}
    result = {"seeds": seeds}
    for key, value_of in values.items():
        v32 = [value_of(full["float32", k]) for k in seeds]
        v16 = [value_of(full["float16", k]) for k in seeds]
        difference = float(np.mean(v16) - np.mean(v32))
        result[key] = {"float32": v32, "float16": v16, "mean32": float(np.mean(v32)),
                       "mean16": float(np.mean(v16)), "sd32": sample_sd(v32),
                       "sd16": sample_sd(v16), "difference": difference,
                       "within_noise": bool(abs(difference) <= sample_sd(v32))}
    return result


def print_float16(comparison):
    if comparison is None:
        return
    print(f"\nfloat16-cast vs float32 features, full training set, seeds {comparison['seeds']} "
          f"(criterion: |mean16 - mean32| <= sample sd of float32 over seeds)")
    for key in ("auroc", "pointing", "inside_share"):
        c = comparison[key]
        per_seed = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(c["float32"], c["float16"]))
        print(f"  {key:<13} float32 {c['mean32']:.3f} +- {c['sd32']:.3f}   float16 "
              f"{c['mean16']:.3f} +- {c['sd16']:.3f}   difference {c['difference']:+.4f}   "
              f"{'within' if c['within_noise'] else 'OUTSIDE'} the noise   (per seed 32/16: "
              f"{per_seed})")


def cap_comparison(entries):
    """The epoch-cap supplement: each run with another cap next to the default's run of the
    same size and seed (same images): {size: {cap, seeds, per quantity default / capped}}."""
    default = {(e["size"], e["seed"]): e for e in entries
               if e["precision"] == "float32" and max_epochs_of(e) == DEFAULT_EPOCHS}
    values = {"auroc": lambda e: e["auroc"]["auroc"],
              "pointing": lambda e: e["ci"]["pointing"]["mean"],
              "inside_share": lambda e: e["ci"]["inside_share"]["mean"],
              "epochs_run": lambda e: e["epochs_run"], "best_epoch": lambda e: e["best_epoch"]}
    result = {}
    for e in entries:
        if e["precision"] != "float32" or max_epochs_of(e) == DEFAULT_EPOCHS:
            continue
        twin = default.get((e["size"], e["seed"]))
        if twin is None:
            continue
        assert twin["train_sha1"] == e["train_sha1"], "the supplement must use the same images"
        row = result.setdefault(f"{e['size']} cap{max_epochs_of(e)}", {"seeds": []})
        row["seeds"].append(e["seed"])
        for key, value_of in values.items():
            pair = row.setdefault(key, {"default": [], "capped": []})
            pair["default"].append(value_of(twin))
            pair["capped"].append(value_of(e))
    return result


def print_caps(comparison):
    for label, row in comparison.items():
        cells = []
        for key in ("auroc", "pointing", "inside_share", "best_epoch"):
            d, c = row[key]["default"], row[key]["capped"]
            paired_d = np.subtract(c, d)
            cells.append(f"{key} {np.mean(d):.3f} -> {np.mean(c):.3f} (paired "
                         f"{np.mean(paired_d):+.3f} +- {sample_sd(paired_d):.3f})")
        print(f"  {label} vs cap {DEFAULT_EPOCHS}, seeds {row['seeds']}: " + "; ".join(cells))


def report(entries, controls, test, n_resamples):
    """Print every table; returns the JSON-ready summary."""
    print_runs(entries)
    for name, per in controls.items():
        print(f"{CONTROL_TITLES[name]} (no model): pointing "
              f"{ci3(localization.bootstrap_ci(per['pointing'], n_resamples))}, inside "
              f"{ci3(localization.bootstrap_ci(per['inside_share'], n_resamples))}")
    curve = [e for e in entries if e["precision"] == "float32"
             and max_epochs_of(e) == DEFAULT_EPOCHS]
    summary = {"curve": curve_summary(curve, controls, test, 2 * n_resamples) if curve else None,
               "float16": float16_comparison(entries)}
    if summary["curve"]:
        print_sizes(summary["curve"])
    print_float16(summary["float16"])
    summary["epoch_cap"] = cap_comparison(entries)
    if summary["epoch_cap"]:
        print(f"\nepoch-cap supplement: mean over seeds, default cap {DEFAULT_EPOCHS} -> "
              f"larger cap (paired difference by seed, mean +- sd)")
        print_caps(summary["epoch_cap"])
        summary["epoch_cap_slopes"] = capped_slopes(entries, controls, test, 2 * n_resamples)
    return summary


def capped_slopes(entries, controls, test, n_resamples):
    """The slopes again with the supplement's runs in place of the default's (same size and
    seed): does the epoch cap at small sizes change the curve's verdict?"""
    caps = sorted({max_epochs_of(e) for e in entries} - {DEFAULT_EPOCHS})
    result = {}
    for cap in caps:
        replaced = {(e["size"], e["seed"]): e for e in entries
                    if e["precision"] == "float32" and max_epochs_of(e) == cap}
        curve = [replaced.get((e["size"], e["seed"]), e) for e in entries
                 if e["precision"] == "float32" and max_epochs_of(e) == DEFAULT_EPOCHS]
        summary = curve_summary(curve, controls, test, n_resamples)
        sizes = sorted({size for size, _ in replaced})
        print(f"  slopes per doubling with the cap-{cap} runs at sizes {', '.join(sizes)}:")
        result[cap] = {}
        for name in ("auroc", "pointing", "inside_share", "pointing - mean_map",
                     "inside_share - mean_map"):
            result[cap][name] = summary[name]["slope"]
            print(f"    {name:<26} {ci3(summary[name]['slope'], True)}")
    return result


# ----------------------------------------------------------------------------- main

def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Localization and AUROC of the default (cam head, Grad-CAM) against the "
                    "training-set size, with three controls and a float16 check.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", help="folder with images/, labels.csv and bboxes.csv")
    parser.add_argument("features", help="stage-3 features pickle: block4_pool at 224 px, "
                                         "ImageNet weights, every image of the dataset")
    parser.add_argument("cache", help="folder for the results file (learning-curve.jsonl)")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                        help="training-set sizes in images ('all' = the whole train part)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--precisions", default="float32,float16",
                        help="float32 (the curve) and/or float16 (features cast to float16 "
                             "and back; run at the full training set only)")
    parser.add_argument("--max-epochs", type=int, default=DEFAULT_EPOCHS,
                        help="epoch cap (the cam preset's by default); another value is the "
                             "declared supplement, reported apart from the curve")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples per CI (the slopes use twice as many)")
    parser.add_argument("--report", action="store_true",
                        help="only print the tables of what the results file holds")
    return parser


def plan(args, data):
    """[(precision, size, seed, chosen training names)] of every run, float32 curve first.

    Subsamples always follow the chain of the default sizes (plus any other size asked for),
    so a run asked for later gets the same images as the curve's run of that size and seed."""
    train_names = sorted(n for n, p in data["part"].items() if p == "train")
    chain = set(parse_sizes(DEFAULT_SIZES)) | set(args.sizes)
    runs = []
    for seed in args.seed_list:
        subsets = nested_subsamples(train_names, data["label_of"], data["group_of"], chain, seed)
        if "float32" in args.precisions:
            runs += [("float32", size, seed, subsets[size]) for size in sorted(
                args.sizes, key=lambda s: np.inf if s is None else s)]
    if "float16" in args.precisions:
        runs += [("float16", None, seed, train_names) for seed in args.seed_list]
    return runs


def main(argv=None):
    import keras

    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.precisions = [p for p in args.precisions.split(",") if p]
    bad = [p for p in args.precisions if p not in ("float32", "float16")]
    if bad:
        raise UserError(f"invalid precision {bad[0]!r}; allowed: float32, float16")
    os.makedirs(args.cache, exist_ok=True)
    results_path = os.path.join(args.cache, "learning-curve.jsonl")
    data = load_data(args)
    done = {(e["precision"], e["size"], e["seed"], max_epochs_of(e))
            for e in load_results(results_path)}
    runs = [(p, size, k, chosen) for p, size, k, chosen in ([] if args.report else plan(
        args, data)) if (p, size_label(size), k, args.max_epochs) not in done]
    log(f"[curve] feature max |value| {data['feature_max']:.1f} (float16 max 65504); "
        f"{len(runs)} runs to do (the others are in {results_path})")
    for precision, size, seed, chosen in runs:
        entry = one_run(data, chosen, precision, size, seed, args.bootstrap, args.max_epochs)
        record(results_path, entry)
        keras.backend.clear_session()
        log(f"[curve] {precision} {size_label(size)} s{seed} cap {args.max_epochs}: n train "
            f"{entry['n_train']}, "
            f"{entry['epochs_run']} epochs (kept {entry['best_epoch']}), AUROC "
            f"{entry['auroc']['auroc']:.3f}, pointing {ci3(entry['ci']['pointing'])}, inside "
            f"{ci3(entry['ci']['inside_share'])} ({entry['seconds']:.0f} s)")
    test = np.array([data["part"][n] in ("boxed", "test-rest") for n in data["names"]])
    test_info = {"labels": data["labels"][test], "groups": np.asarray(data["groups"])[test]}
    summary = report(load_results(results_path), data["controls"], test_info, args.bootstrap)
    atomic_write_json(os.path.join(args.cache, "learning-curve-summary.json"), summary)
    log(f"[curve] done in {elapsed_since(start)}")
    return 0


if __name__ == "__main__":
    exit_with(main, "bench_learning_curve")
