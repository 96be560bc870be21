"""One map per finding, end to end on a synthetic two-finding set (random VGG16 weights).

Finding A (Effusion) is a bright disc in the upper-left quarter, finding B (Nodule) a dark
disc in the lower-right quarter, on a noisy grey field (both inside the cam head's ring mask);
images have none, A, B or both. Stages 2-6 run as a user runs them (labels CSV with a
finding_labels column, --findings Effusion,Nodule); each finding's Grad-CAM map must peak in
its own quarter on held-out images that show both, and each expert box is scored against its
own finding's map. cxr-explain gives the same per finding.
"""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from learning import fully_connected_layers_training as stage5
from learning import learning_examples_preparing as stage4
from learning import transfer_feature_extraction as stage3
from learning import visualization as stage6
from scraper import folder
from scraper.cli import run_main

SIZE = 128
CENTRES = {"Effusion": (48, 48), "Nodule": (80, 80)}   # (row, col): upper-left, lower-right
RADIUS = 11
VALUES = {"Effusion": 240, "Nodule": 5}


def synthetic(kinds, rng):
    """A (SIZE, SIZE) uint8 image showing the findings in `kinds`."""
    image = rng.normal(100, 12, (SIZE, SIZE))
    rows, cols = np.mgrid[:SIZE, :SIZE]
    for finding in kinds:
        cy, cx = CENTRES[finding]
        image[(rows - cy) ** 2 + (cols - cx) ** 2 <= RADIUS ** 2] = VALUES[finding]
    return np.clip(image, 0, 255).astype(np.uint8)


KINDS = [(), ("Effusion",), ("Nodule",), ("Effusion", "Nodule")]


def write_split_without_findings(data, out):
    """training/testing.pickle of the folder `data` as stage 4 wrote them before finding labels
    (no finding_names / finding_labels), into `out`, still pointing at data's features."""
    from learning import safe_pickle

    for name in ("training.pickle", "testing.pickle"):
        split = safe_pickle.load(data / name)
        del split["finding_names"], split["finding_labels"]
        split["features"]["index"] = str(data / "features.pickle")
        safe_pickle.dump(split, out / name)


def write_set(root, per_kind, seed, boxes=False):
    """<root>/src/*.png + labels.csv (image, label, finding_labels, group) [+ boxes.csv]."""
    rng = np.random.default_rng(seed)
    src = root / "src"
    src.mkdir(parents=True)
    rows, box_rows = [], []
    for k, kinds in enumerate(KINDS):
        for i in range(per_kind):
            name = f"s{seed}_{k}_{i:02d}.png"
            Image.fromarray(synthetic(kinds, rng)).save(src / name)
            rows.append([name, "abnormal" if kinds else "normal",
                         "|".join(kinds) or "No Finding", name])
            for finding in kinds:
                cy, cx = CENTRES[finding]
                box_rows.append([name, finding, cx - RADIUS, cy - RADIUS, 2 * RADIUS,
                                 2 * RADIUS])
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "label", "finding_labels", "group"]] + rows)
    with open(root / "boxes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "finding", "x", "y", "w", "h"]] + box_rows)
    return src, [row[0] for row in rows]


@pytest.fixture(scope="module")
def findings_model(tmp_path_factory):
    """Stages 2-5 on the training set: the data folder and the trained model folder."""
    root = tmp_path_factory.mktemp("findings")
    src, _ = write_set(root, per_kind=16, seed=1)
    data = root / "data"
    folder.import_folder(data, src, root / "labels.csv", progress=False)
    assert stage3.main([str(data / "images"), str(data / "features.pickle"), "--random-weights",
                        "--image-size", str(SIZE), "--no-progress", "--workers", "1"]) == 0
    splits = [str(data / n) for n in ("training.pickle", "testing.pickle", "examples.json")]
    assert stage4.main([str(data / "images-description.json"), str(data / "features.pickle"),
                        *splits, "--test-fraction", "0.2"]) == 0
    assert stage5.main([*splits[:2], str(root / "model"), "--findings", "Effusion,nodule",
                        "--epochs", "60", "--patience", "0", "--bootstrap", "50"]) == 0
    return root, data


def test_each_finding_map_peaks_in_its_own_region(findings_model, tmp_path):
    root, data = findings_model
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["findings"] == ["Effusion", "Nodule"]
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert set(metrics["test"]["findings"]) == {"Effusion", "Nodule"}
    # held-out images with both findings and their boxes: stage 2 into a data folder of its own
    held = tmp_path / "held"
    src, names = write_set(held, per_kind=3, seed=2)
    folder.import_folder(held / "data", src, held / "labels.csv", boxes_csv=held / "boxes.csv",
                         progress=False)
    both = [n for n in names if "_3_" in n]
    (held / "examples.json").write_text(json.dumps(both))
    results = tmp_path / "results"
    assert stage6.main(["x", str(root / "model"), str(held / "examples.json"),
                        str(held / "data" / "images"), str(results), "--random-weights",
                        "--workers", "0", "--display-size", "64"]) == 0
    quarter = {"Effusion": (slice(0, SIZE // 2), slice(0, SIZE // 2)),
               "Nodule": (slice(SIZE // 2, SIZE), slice(SIZE // 2, SIZE))}
    with np.load(results / "maps.npz") as maps:
        assert list(maps["findings"]) == ["Effusion", "Nodule"]
        for name in both:
            for finding, (rows, cols) in quarter.items():
                signed = maps[f"map/{name}/grad-cam/{finding}"]
                row, col = np.unravel_index(int(np.argmax(signed)), signed.shape)
                assert rows.start <= row < rows.stop and cols.start <= col < cols.stop, \
                    (name, finding, row, col)
    index = json.loads((results / "localization.json").read_text())["findings"]
    for finding in ("Effusion", "Nodule"):
        block = index["methods"]["grad-cam"][finding]
        assert block["n"] == len(both)
        assert block["pointing"]["mean"] == 1.0            # each box vs its own map
        assert block["T(iobb>0.1)@0.5"]["mean"] == 1.0
        assert "lung_prior" in block["controls"] and "mean_map" in block["controls"]
    assert index["methods"]["grad-cam"]["Effusion"]["wang_2017"] == 0.7124
    assert index["methods"]["grad-cam"]["Nodule"]["wang_2017"] == 0.1645
    page = next((results / "pictures").rglob(f"{both[0][:-4]}*.html")).read_text()
    assert "of Effusion (p = " in page and "of Nodule (p = " in page
    assert len(list((results / "pictures").rglob("*_grad-cam_Effusion.png"))) == len(both)


def test_stage5_findings_outputs_and_predictions(findings_model):
    root, _ = findings_model
    with open(root / "model" / "test_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["name", "group", "label", "p_abnormal", "predicted", "p_Effusion",
                             "p_Nodule"]
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["output"].startswith("4 logits [normal, abnormal, Effusion, Nodule]")
    block = json.loads((root / "model" / "metrics.json").read_text())["test"]["findings"]
    assert block["Effusion"]["n_positive"] + block["Nodule"]["n_positive"] > 0
    assert 0 <= block["Effusion"]["roc_auc"] <= 1


@pytest.mark.parametrize("flag, code, message", [
    ("Hernia", 1, "cxr-train: error: --findings: no training image carries Hernia; the training "
                  "images carry: "),
    ("Effusion,Fracture", 2, "cxr-train: error: argument --findings: invalid finding "
                             "'Fracture'; use 'all' or names from the vocabulary: Atelectasis"),
])
def test_bad_findings_are_one_line_before_any_work(findings_model, tmp_path, capsys, flag,
                                                   code, message):
    _, data = findings_model
    argv = [str(data / "training.pickle"), str(data / "testing.pickle"), str(tmp_path / "m"),
            "--findings", flag]
    assert run_main(stage5.main, "cxr-train", argv) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()


def test_findings_on_a_split_without_finding_labels_is_one_line(findings_model, tmp_path,
                                                                capsys):
    _, data = findings_model
    write_split_without_findings(data, tmp_path)
    argv = [str(tmp_path / "training.pickle"), str(tmp_path / "testing.pickle"),
            str(tmp_path / "m"), "--findings", "all"]
    assert run_main(stage5.main, "cxr-train", argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr-train: error: --findings: the training images carry no finding "
                          "labels") and len(err.splitlines()) == 1


def test_findings_loss_matches_numpy_and_ignores_unknown_findings():
    import keras

    from learning.train import findings

    rng = np.random.default_rng(0)
    y = np.column_stack([rng.integers(0, 2, 6), rng.integers(-1, 2, (6, 3))]).astype(np.float32)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    table = findings.positive_weights(y, balanced=True)
    loss = findings.findings_loss(table)
    per_image = keras.ops.convert_to_numpy(loss(y, logits))
    np.testing.assert_allclose(per_image.mean(), findings.numpy_loss(y, logits, table),
                               rtol=1e-5)
    changed = logits.copy()
    changed[:, 2:][y[:, 1:] < 0] += 50.0          # an unknown finding's logit changes nothing
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(y, changed)), per_image,
                               rtol=1e-5)


def test_cxr_explain_predicts_and_maps_each_finding(findings_model, tmp_path):
    from learning import apply

    root, _ = findings_model
    src, names = write_set(tmp_path, per_kind=1, seed=3)
    results = tmp_path / "results"
    assert apply.main([str(root / "model"), str(src), str(results), "--labels",
                       str(tmp_path / "labels.csv"), "--boxes", str(tmp_path / "boxes.csv"),
                       "--workers", "0", "--display-size", "64", "--bootstrap", "20"]) == 0
    with open(results / "predictions.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(names)
    assert {"p_Effusion", "p_Nodule"} <= set(next(iter(rows.values())))
    both = next(n for n in names if "_3_" in n)
    assert float(rows[both]["p_Effusion"]) > 0.5 and float(rows[both]["p_Nodule"]) > 0.5
    block = json.loads((results / "localization.json").read_text())["findings"]
    assert {f: b["n"] for f, b in block["methods"]["grad-cam"].items()} == {"Effusion": 2,
                                                                           "Nodule": 2}


def test_shared_scale_and_a_second_method_draw_every_finding_map(findings_model, tmp_path):
    root, _ = findings_model
    src, names = write_set(tmp_path, per_kind=1, seed=4)
    folder.import_folder(tmp_path / "data", src, tmp_path / "labels.csv",
                         boxes_csv=tmp_path / "boxes.csv", progress=False)
    (tmp_path / "examples.json").write_text(json.dumps(names))
    results = tmp_path / "results"
    assert stage6.main(["x", str(root / "model"), str(tmp_path / "examples.json"),
                        str(tmp_path / "data" / "images"), str(results), "--random-weights",
                        "--workers", "0", "--display-size", "64", "--scale", "shared",
                        "--method", "grad-cam,occlusion", "--occlusion-patch", "32"]) == 0
    tops = json.loads((results / "run.json").read_text())["colour_scales"]
    assert {"grad-cam:Effusion", "grad-cam:Nodule", "occlusion:Effusion"} <= set(tops)
    with np.load(results / "maps.npz") as maps:
        drawn = [key for key in maps.files if key.count("/") == 3]
    pictures = {p.name for p in (results / "pictures").rglob("*.png")}
    assert drawn and len([p for p in pictures if p.endswith(("_Effusion.png", "_Nodule.png"))]) \
        == len(drawn)          # one picture per kept finding map, whatever the method
    assert all(any(p.startswith(key.split("/")[1][:-len(".png")] + "[") for p in pictures)
               for key in drawn)
