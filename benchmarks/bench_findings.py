"""Per-finding maps benchmark: does a map of a finding's own output point at that finding's boxes?

Declared before running (issue 21 part 3). Data: a folder dataset with images/, labels.csv
(image, abnormal, finding_labels NIH-style, patient_id) and bboxes.csv (image, finding, x, y,
w, h), e.g. nih-cxr-1000; block4_pool features of stage 3 at 224 px (bench_localization's
feature cache <cache>/b4p-224.pickle, real ImageNet weights; make it with bench_localization).

Protocol (bench_localization's): every patient with an expert box is held out of training; the
others are split by patient (split seed 0): 15 % test-rest, 10 % of the remainder validation,
the rest train. Two models per seed, both the default cam head (learning/head.py PRESETS["cam"],
train_head = stage 5's code):
  binary    normal vs abnormal (today's default)
  findings  the same head with --findings all (one sigmoid logit per finding the training
            images carry, learning/train/findings.py)
Maps: Grad-CAM on the head's 1x1 conv (learning.explain.attribution.grad_cam_and_outputs,
stage 6's code), upsampled to 224 px, of
  binary / abnormal     logit(abnormal) - logit(normal), scored against ALL of an image's boxes
  findings / abnormal   the same target of the findings model, against all boxes
  findings / own        each box's own finding's logit, scored against the boxes of that
                        finding only (stage 6's learning/explain/findings.py rule)
Each with T(IoBB>0.1) at region level 0.5, pointing and inside share (95% bootstrap CIs over
images) next to the lung-field prior, the centred Gaussian and the mean of the same maps, and
Wang et al. 2017's T(IoBB)=0.1 value for the finding; AUROC of abnormal (patient-grouped CI)
on boxed + test-rest images, and the per-finding AUROC on the same images. Seeds 0, 1, 2.
Nothing is chosen on the 44 boxed images: the flag's default stays off whatever this shows.

Example:
    python benchmarks/bench_findings.py ../shared/datasets/nih-cxr-1000 vgg16-imagenet.h5 \\
        feature-cache --seeds 0,1,2

MEASURED (real ImageNet weights, nih-cxr-1000, block4_pool at 224 px, cam head, 2 shared CPU
cores at load 5-7, December 2026; seeds 0 / 1 / 2; T = T(IoBB>0.1) at region level 0.5, values
with 95% bootstrap CIs over images; the controls' CIs are the same for every seed)
  AUROC abnormal on boxed + test-rest (215 images, patient-grouped CI):
    binary    0.910 [0.864, 0.949] / 0.915 [0.867, 0.955] / 0.912 [0.865, 0.953]
    findings  0.909 [0.863, 0.949] / 0.910 [0.860, 0.950] / 0.913 [0.869, 0.954]
    (12 findings trained; Hernia left out: no training image carries it)
  Maps on the 44 boxed images (49 boxes; controls: lung prior T 0.91 [0.82, 0.98], pointing
  0.41 [0.27, 0.55]; centred Gaussian T 0.77 [0.64, 0.89]):
    binary / abnormal vs all boxes      T 0.66 / 0.66 / 0.66   pointing 0.27 / 0.32 / 0.30
                                        (own mean map T 0.73 / 0.73 / 0.66)
    findings / abnormal vs all boxes    T 0.68 / 0.73 / 0.73   pointing 0.34 / 0.36 / 0.39
    findings / Pneumonia vs its own 43  T 0.67 [0.53, 0.81] / 0.70 [0.56, 0.84] /
      boxed images                        0.70 [0.56, 0.84]; pointing 0.28 / 0.40 / 0.33,
                                        inside 0.25 / 0.27 / 0.26; own mean map of the
                                        Pneumonia maps T 0.72 / 0.74 / 0.70, pointing 0.37 /
                                        0.37 / 0.37; lung prior on these 43: T 0.91
                                        [0.81, 0.98], pointing 0.40; Wang et al. 2017: 0.75
    the other findings have 1 or 2 boxes each (Cardiomegaly, Effusion, Mass, Pneumothorax 1,
    Infiltration 2): their numbers are single images (0 or 1), not estimates.
  Per-finding AUROC on the same 215 images (no CI; most findings have few positives there):
    Pneumonia 0.90-0.91, Nodule 0.85-0.87, Emphysema 0.80-0.83, Edema 0.79-0.82, Mass
    0.77-0.82, Effusion 0.78-0.80, Infiltration 0.75-0.76, Pleural_Thickening 0.67-0.77,
    Cardiomegaly 0.67-0.71, Consolidation 0.60-0.71, Atelectasis 0.62-0.65, Pneumothorax
    0.52-0.62.
  Training seconds (one head, 707 + 78 images, early stopping): binary 184-363, findings 79-384
  (load varied; no systematic difference).
Reading: one output per finding costs no AUROC, and the Pneumonia map on Pneumonia's own boxes
is not better than the binary map on all boxes: T(IoBB>0.1) 0.67-0.70 against the lung-field
prior's 0.91, pointing 0.28-0.40 against its 0.40, and no better than the mean of its own maps.
It does not localize on this set. T(IoBB>0.1) is lenient for broad maps on large boxes: the
lung prior, which uses no image, scores 0.91 here, above Wang et al.'s 0.75 - so a per-finding
number at or above Wang's row says little by itself; read it against the controls.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_localization import (  # noqa: E402
    MAP_SIZE, make_split, read_dataset, resize_maps)
from learning.explain import attribution, findings as explain_findings  # noqa: E402
from learning.explain import localization  # noqa: E402
from learning.explain.verdict import MeanMap  # noqa: E402
from learning.head import PRESETS  # noqa: E402
from learning.learning_examples_preparing import load_features  # noqa: E402
from learning.metrics import grouped_bootstrap_auc, roc_auc  # noqa: E402
from learning.train import findings as train_findings  # noqa: E402
from learning.train.loop import train_head  # noqa: E402
from scraper import findings as vocabulary  # noqa: E402
from scraper.cli import log  # noqa: E402

KEY = "T(iobb>0.1)@0.5"


def finding_matrix(rows, names):
    """(N, 14) int8 finding labels of `names` from labels.csv's finding_labels column."""
    by_name = {r["image"]: r for r in rows}
    matrix = np.zeros((len(names), len(vocabulary.FINDINGS)), np.int8)
    for i, name in enumerate(names):
        parsed = vocabulary.parse_labels(by_name[name].get("finding_labels", ""))
        for finding in (parsed or ([], []))[0]:
            matrix[i, vocabulary.FINDINGS.index(finding)] = 1
    return matrix


def train(features, labels, matrix, part, names, seed, with_findings):
    subset = np.array([part[n] for n in names])
    keep = np.isin(subset, ("train", "validation"))
    config = dict(PRESETS["cam"], head="cam")
    training = {"features": features[keep], "labels": labels[keep],
                "subset": list(subset[keep]), "finding_names": list(vocabulary.FINDINGS),
                "finding_labels": matrix[keep]}
    if with_findings:
        config["findings"] = train_findings.resolve_findings("all", training)
    start = time.monotonic()
    head, info = train_head(training, config, seed, progress=False)
    return head, config.get("findings") or (), info, time.monotonic() - start


def cams(head, features, n_findings):
    """Grad-CAM (N, 224, 224) of the abnormal target and (N, 224, 224, K) of each finding."""
    matrix = attribution.output_matrix("difference", n_findings)
    maps, logits = attribution.grad_cam_and_outputs(head, features, matrix)   # (N, h, w, 1+K)
    resized = np.stack([resize_maps(maps[..., t]) for t in range(maps.shape[-1])], -1)
    return resized[..., 0], resized[..., 1:], logits


def scored(maps, boxes_list, seed):
    """T(IoBB>0.1)@0.5, pointing, inside share with CIs for maps and the three controls."""
    per_image = [localization.image_metrics(np.maximum(m, 0), b) for m, b in zip(maps, boxes_list)]
    mean = MeanMap(MAP_SIZE)
    for m in maps:
        mean.add(np.maximum(m, 0))
    shape = (MAP_SIZE, MAP_SIZE)
    controls = {"lung_prior": localization.lung_prior_map(shape),
                "gaussian": localization.gaussian_map(shape), "own_mean": mean.mean()}
    result = {"maps": explain_findings.summarize(per_image, seed)}
    for key, heatmap in controls.items():
        result[key] = explain_findings.summarize(
            [localization.image_metrics(heatmap, b) for b in boxes_list], seed)
    return result


def boxes_224(boxes, sizes):
    return [localization.scale_boxes(b, size, (MAP_SIZE, MAP_SIZE)) for b, size in
            zip(boxes, sizes)]


def run_seed(data, seed):
    features, labels, matrix, part, names, groups, boxed, boxes, sizes = data
    test = np.array([part[n] in ("boxed", "test-rest") for n in names])
    out = {}
    for kind in ("binary", "findings"):
        head, modelled, info, seconds = train(features, labels, matrix, part, names, seed,
                                              kind == "findings")
        abnormal, own, logits = cams(head, features[boxed], len(modelled))
        out[(kind, "abnormal")] = scored(abnormal, boxes_224(boxes, sizes), seed)
        test_logits = np.asarray(head.predict(features[test], batch_size=64, verbose=0))
        score = test_logits[:, 1] - test_logits[:, 0]
        ci = grouped_bootstrap_auc(labels[test], score, groups[test], 1000, seed)
        out[(kind, "auroc")] = (roc_auc(labels[test], score), ci["low"], ci["high"])
        out[(kind, "seconds")] = seconds
        if kind == "findings":
            out["modelled"] = list(modelled)
            for j, finding in enumerate(modelled):
                own_boxes = [[b for b in image_boxes if vocabulary.canonical(b["finding"])
                              == finding] for image_boxes in boxes_224(boxes, sizes)]
                have = [k for k, b in enumerate(own_boxes) if b]
                if have:
                    out[("findings", finding)] = scored(own[have, ..., j],
                                                        [own_boxes[k] for k in have], seed)
                column = vocabulary.FINDINGS.index(finding)
                out[("auroc", finding)] = roc_auc(matrix[test, column], test_logits[:, 2 + j])
    return out


def ci(block):
    return localization.format_ci(block, 2)


def print_seed(seed, out):
    auroc = {kind: "{:.3f} [{:.3f}, {:.3f}]".format(*out[(kind, "auroc")])
             for kind in ("binary", "findings")}
    log(f"seed {seed}: AUROC abnormal (boxed + test-rest) binary {auroc['binary']}, findings "
        f"{auroc['findings']}; training s: binary {out[('binary', 'seconds')]:.0f}, findings "
        f"{out[('findings', 'seconds')]:.0f}")
    aurocs = ", ".join(f"{f} {out[('auroc', f)]:.2f}" for f in out["modelled"]
                       if out.get(("auroc", f)) is not None)
    log(f"  per-finding AUROC (same test images): {aurocs}")
    for key in [("binary", "abnormal"), ("findings", "abnormal")] + [
            ("findings", f) for f in out["modelled"] if ("findings", f) in out]:
        block = out[key]
        wang = explain_findings.WANG_2017.get(key[1])
        log(f"  {key[0]:>8} / {key[1]:<13} n {block['maps']['n']:>2}: T(IoBB>0.1) "
            f"{ci(block['maps'][KEY])} pointing {ci(block['maps']['pointing'])} inside "
            f"{ci(block['maps']['inside_share'])} | lung prior T {ci(block['lung_prior'][KEY])} "
            f"pt {ci(block['lung_prior']['pointing'])} | gaussian T {ci(block['gaussian'][KEY])} "
            f"| own mean T {ci(block['own_mean'][KEY])} pt {ci(block['own_mean']['pointing'])}"
            + (f" | Wang 2017 {wang:.2f}" if wang is not None else ""))


def load(args):
    from PIL import Image

    rows, boxes = read_dataset(args.dataset)
    names, features, _ = load_features(os.path.join(args.cache, f"b4p-{MAP_SIZE}.pickle"))
    by_name = {r["image"]: r for r in rows}
    labels = np.array([int(by_name[n]["abnormal"]) for n in names])
    groups = np.array([by_name[n]["patient_id"] for n in names], dtype=object)
    part = make_split([by_name[n] for n in names], set(boxes), seed=0)
    boxed = np.array([i for i, n in enumerate(names) if n in boxes])
    sizes = [Image.open(os.path.join(args.dataset, "images", names[i])).size for i in boxed]
    return (features, labels, finding_matrix(rows, names), part, names, groups, boxed,
            [boxes[names[i]] for i in boxed], sizes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="folder with images/, labels.csv, bboxes.csv")
    parser.add_argument("cache", help="folder holding b4p-224.pickle (stage-3 block4_pool "
                                      "features of the dataset, real ImageNet weights)")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    data = load(args)
    log(f"[bench] {len(data[4]):,} images, {len(data[6])} boxed; Wang et al. 2017: "
        f"{explain_findings.WANG_SOURCE}")
    for seed in (int(s) for s in args.seeds.split(",")):
        print_seed(seed, run_seed(data, seed))


if __name__ == "__main__":
    main()
