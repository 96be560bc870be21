"""Shared stage-6 test data: 3 demo X-rays (64 px random VGG16 + a tiny head built here)."""
import csv
import json
import os

import keras

from scraper.schema import make_box, make_record, save_descriptions

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24")
SIZE = 64
BOXED = "00000150_002.png"  # pneumonia with an expert box
OTHERS = ["00000193_019.png", "00002218_003.png"]


def build_data(root, seed_in_config=0, head_input=None, names=None, boxes=None):
    """<root>/images (demo X-rays), images-description.json, examples.json, model/.

    names: {file name in images/: demo file} (default: the three above, same names);
    boxes: {file name: [make_box(...)]} (default: the demo's bboxes.csv).
    """
    from learning.vgg import build_conv_base

    names = names or {name: name for name in [BOXED] + OTHERS}
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(DEMO, "labels.csv")) as handle:
        labels = {row["image"]: row for row in csv.DictReader(handle)}
    if boxes is None:
        boxes = {}
        for row in csv.DictReader(open(os.path.join(DEMO, "bboxes.csv"))):
            boxes.setdefault(row["image"], []).append(
                make_box(row["finding"], row["x"], row["y"], row["w"], row["h"]))
    records = []
    for name, demo in names.items():
        if name.endswith(".jpg"):
            from PIL import Image

            Image.open(os.path.join(DEMO, "images", demo)).convert("L").save(images / name)
        else:
            (images / name).write_bytes(open(os.path.join(DEMO, "images", demo), "rb").read())
        label = "abnormal" if labels[demo]["abnormal"] == "1" else "normal"
        record = make_record(name, "folder", boxes=boxes.get(name, []), label=label,
                             url=f"/import/PATIENT-XXXX/{name}", view="PA")
        if name == OTHERS[0]:
            record["dicom"] = {"modality": "DX"}  # what stage 2 records for a DICOM import
        records.append(record)
    save_descriptions(str(root / "images-description.json"), records)
    (root / "examples.json").write_text(json.dumps(list(names) + ["not_there.png"]))
    model = root / "model"
    model.mkdir(exist_ok=True)
    feature_shape = head_input or tuple(build_conv_base(random_weights=True, seed=0,
                                                        image_size=SIZE).output.shape[1:])
    keras.utils.set_random_seed(5)
    head = keras.Sequential([
        keras.Input(feature_shape), keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(2, bias_initializer="random_normal")])
    head.save(str(model / "head.keras"))
    (model / "config.json").write_text(json.dumps({
        "run_id": "train-run-1",
        "feature_params": {"weights": f"random:seed={seed_in_config}", "image_size": SIZE,
                           "layer": "block5_pool", "pooling": "none",
                           "preprocessing": "caffe", "precision": "float32"},
        "class_names": ["normal", "abnormal"], "head": {}, "args": {}}))
    (model / "metrics.json").write_text(json.dumps({"run_id": "train-run-1", "test": {
        "n": 100, "accuracy": 0.8, "roc_auc": 0.9, "roc_auc_ci": {"low": 0.85, "high": 0.95,
                                                                "n_groups": 76},
        "baseline_majority": {"predicts": "normal", "accuracy": 0.5, "roc_auc": 0.5}}}))
    return root


def argv(root, *extra):
    return ["unused.h5", str(root / "model"), str(root / "examples.json"), str(root / "images"),
            str(root / "results"), "--random-weights", "--display-size", "128", *extra]


def add_classifier(root, fine_tuned=False):
    """model/classifier.keras as stage 5 exports it (learning/export.py), from the folder's
    head.keras on the 64-px random conv base. fine_tuned: block5_conv3's kernel is changed, as
    fine-tuning would, and config.json says "train_blocks": [5]: only the file knows the network.
    Returns the classifier."""
    import numpy as np

    from learning.export import build_classifier
    from learning.vgg import build_conv_base

    model = root / "model"
    head = keras.models.load_model(str(model / "head.keras"))
    classifier = build_classifier(build_conv_base(random_weights=True, seed=0, image_size=SIZE),
                                  head)
    if fine_tuned:
        conv = [layer for layer in classifier.get_layer("vgg16_head").layers
                if layer.name == "block5_conv3"][0]
        kernel, bias = conv.get_weights()
        conv.set_weights([kernel * 1.5 + np.random.default_rng(0).normal(
            0, 0.01, kernel.shape).astype(np.float32), bias])
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps(dict(config, train_blocks=[5])))
    classifier.save(str(model / "classifier.keras"))
    return classifier
