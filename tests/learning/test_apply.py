"""cxr-explain: a model trained by the stages (demo images, 64 px, random weights) applied to
new X-rays. Its predictions equal stage 6's for the same images, on the demo PNGs and on DICOM
files (PHI masked everywhere); --labels metrics are the hand-computed ones; bad models,
weights and folders are refused in one line."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest

from learning import apply, visualization
from learning.explain import external
from scraper.cli import run_main
from scraper.schema import load_descriptions

pytest.importorskip("keras")

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24")
FAST = ["--display-size", "64", "--workers", "0", "--bootstrap", "200"]
STAGE6_FAST = ["--display-size", "64", "--workers", "0"]


def stage(main, prog, argv):
    assert run_main(main, prog, [str(a) for a in argv]) == 0, prog


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stages 2-5 on the 24 demo X-rays at 64 px (random VGG16, the cam head, 2 epochs):
    <root>/data (images, examples.json = the test split, model/ with classifier.keras)."""
    from learning import fully_connected_layers_training as train
    from learning import learning_examples_preparing as prepare
    from learning import transfer_feature_extraction as features
    from scraper import scrape

    data = tmp_path_factory.mktemp("apply") / "data"
    stage(scrape.main, "cxr-scrape", [
        data, "--source", "folder", "--images", os.path.join(DEMO, "images"), "--labels",
        os.path.join(DEMO, "labels.csv"), "--label-column", "abnormal", "--group-column",
        "patient_id", "--boxes", os.path.join(DEMO, "bboxes.csv"), "--no-progress"])
    stage(features.main, "cxr-extract-features", [
        data / "images", data / "transfer_features.pickle", "--random-weights", "--image-size",
        "64", "--no-progress"])
    stage(prepare.main, "cxr-prepare-examples", [
        data / "images-description.json", data / "transfer_features.pickle",
        data / "training.pickle", data / "testing.pickle", data / "examples.json",
        "--test-fraction", "0.3"])
    stage(train.main, "cxr-train", [data / "training.pickle", data / "testing.pickle",
                                    data / "model", "--epochs", "2", "--bootstrap", "50"])
    assert (data / "model" / "classifier.keras").is_file()
    return data


def stage6_probabilities(model, images, examples, results):
    """{name: p_abnormal} of cxr-visualize on `examples` (a list of names in `images`)."""
    listed = results.parent / f"{results.name}-examples.json"
    listed.write_text(json.dumps(examples))
    stage(visualization.main, "cxr-visualize", [
        "unused.h5", model, listed, images, results, *STAGE6_FAST])
    return {row["name"]: row["p_abnormal"] for row in json.loads((results / "index.json")
                                                                  .read_text())}


def predictions(results):
    with open(results / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the demo

@pytest.fixture(scope="module")
def demo_applied(trained):
    """cxr-explain on the 24 demo X-rays with their labels and boxes."""
    results = trained.parent / "external"
    stage(apply.main, "cxr-explain", [
        trained / "model", os.path.join(DEMO, "images"), results, "--labels",
        os.path.join(DEMO, "labels.csv"), "--label-column", "abnormal", "--group-column",
        "patient_id", "--boxes", os.path.join(DEMO, "bboxes.csv"), *FAST])
    return results


def test_predictions_equal_stage_6_and_the_gallery_is_written(trained, demo_applied):
    rows = {row["name"]: row for row in predictions(demo_applied)}
    assert len(rows) == 24 and list(rows) == sorted(rows)
    tested = json.loads((trained / "examples.json").read_text())
    by_stage6 = stage6_probabilities(trained / "model", trained / "images", tested,
                                     trained / "results")
    assert len(by_stage6) == len(tested) >= 6
    for name, p in by_stage6.items():
        assert abs(float(rows[name]["p_abnormal"]) - p) < 1e-5, name
    for row in rows.values():
        p = float(row["p_abnormal"])
        assert row["predicted"] == ("abnormal" if p > 0.5 else "normal")
        assert row["source"] == os.path.abspath(os.path.join(DEMO, "images", row["name"]))
        assert row["label"] in ("normal", "abnormal") and row["group"]
        assert (demo_applied / row["page"]).is_file()
    maps = np.load(demo_applied / "maps.npz")
    assert sorted(maps["names"].tolist()) == sorted(rows)
    index = (demo_applied / "index.html").read_text()
    assert "a trained model on new X-rays" in index and "external validation" in index
    for name in ("gallery-data.js", "colorbar.png", "localization.json", "calibration.png",
                 "external_roc.png", "model_metrics.json"):
        assert (demo_applied / name).is_file(), name
    run = json.loads((demo_applied / "run.json").read_text())
    assert "data/" in run["folders"] and "predictions.csv" in run["files"]
    assert "predictions.csv" in (demo_applied / "README.txt").read_text()
    localization = json.loads((demo_applied / "localization.json").read_text())
    assert set(localization["controls"]) == {"centred_gaussian", "lung_prior"}
    assert "mean_map" in localization["methods"]["grad-cam"]["difference_vs"]


def test_external_metrics_are_those_of_the_predictions(trained, demo_applied):
    from sklearn.metrics import roc_auc_score

    report = json.loads((demo_applied / "external_metrics.json").read_text())
    maps = np.load(demo_applied / "maps.npz")
    labels = (maps["labels"] == "abnormal").astype(int)
    p = maps["p_abnormal"]
    ext = report["external"]
    assert ext["n"] == 24 and report["unlabelled"] == 0
    assert ext["roc_auc"] == pytest.approx(roc_auc_score(labels, p), abs=1e-12)
    assert ext["roc_auc_ci"]["resampling"] == "groups"
    patients = {row["patient_id"] for row in csv.DictReader(open(os.path.join(DEMO,
                                                                              "labels.csv")))}
    assert ext["roc_auc_ci"]["n_groups"] == len(patients)
    predicted = p > 0.5
    assert ext["operating_point"]["sensitivity"] == pytest.approx(predicted[labels == 1].mean())
    assert ext["operating_point"]["specificity"] == pytest.approx(1 - predicted[labels == 0]
                                                                  .mean())
    assert ext["calibration"]["brier"] == pytest.approx(np.mean((p - labels) ** 2))
    assert ext["calibration"]["prevalence"] == pytest.approx(labels.mean())
    own = json.loads((trained / "model" / "metrics.json").read_text())["test"]
    assert report["model_test"]["roc_auc"] == own["roc_auc"]
    assert report["model_test"]["calibration"]["bins"]  # from test_predictions.csv
    assert report["description"]["calibration.ece_if_calibrated"]


# ----------------------------------------------------------------------------- hand-checked

def test_metrics_on_a_hand_checkable_case():
    # p = 0.1, 0.4 (normal), 0.35, 0.8 (abnormal); patients a, a, b, c
    labels, p_abnormal = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    report = external.evaluate_set(labels, 1 - p_abnormal, p_abnormal, ["a", "a", "b", "c"],
                                   n_resamples=200)
    # pairs (abnormal, normal) ranked right: 0.35>0.1, 0.8>0.1, 0.8>0.4; wrong: 0.35<0.4
    assert report["roc_auc"] == pytest.approx(0.75)
    assert report["roc_auc_ci"]["n_groups"] == 3
    point = report["operating_point"]  # at p > 0.5 only 0.8 is called abnormal
    assert (point["sensitivity"], point["specificity"]) == (0.5, 1.0)
    assert report["accuracy"] == 0.75
    cal = report["calibration"]
    assert cal["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert cal["brier_baseline"] == pytest.approx(0.25)
    # one image per bin: (|0.1-0| + |0.4-0| + |0.35-1| + |0.8-1|) / 4
    assert cal["ece"] == pytest.approx(1.35 / 4)
    assert [(b["low"], b["n"], b["observed"]) for b in cal["bins"]] == [
        (0.1, 1, 0.0), (0.3, 1, 1.0), (0.4, 1, 0.0), (0.8, 1, 1.0)]
    assert cal["brier_ci"]["low"] <= cal["brier"] <= cal["brier_ci"]["high"]
    assert 0 < cal["ece_if_calibrated"]["mean"] < cal["ece_if_calibrated"]["p95"]
    assert external.ece([0, 1, 1, 0], [0.05, 0.95, 0.95, 0.05]) == pytest.approx(0.05)
    lines = external.format_table({"external": report, "model_test": None, "unlabelled": 0,
                                   "n_images": 4})
    assert "0.750" in lines[2] and lines[2].rstrip().endswith("-")


# ----------------------------------------------------------------------------- DICOM

PHI = {"PatientName": "DOE^JANE^Q", "PatientID": "PID7734521", "AccessionNumber": "ACC99887766",
       "PatientBirthDate": "19450317", "StudyID": "STUDY4242"}
PHI2 = {"PatientName": "ROE^RICHARD", "PatientID": "PID5550001", "AccessionNumber": "ACC1234321",
        "PatientBirthDate": "19600101", "StudyID": "STUDY777"}


def test_ten_dicom_files_predicted_as_stage_6_with_phi_masked(trained, tmp_path, capsys):
    from scraper.folder import import_folder
    from tests.scraper.dicom_factory import write_dicom
    from tests.scraper.test_folder import nih

    src = tmp_path / "export"
    datasets = []
    for patient, (phi, view) in enumerate(((PHI, "PA"), (PHI2, "AP"))):
        folder = src / phi["PatientName"].replace("^", "_") / phi["PatientID"]
        folder.mkdir(parents=True)
        for i in range(5):
            pixels = np.asarray(nih(5 * patient + i, 96), np.int64) * 4095 // 255
            datasets.append(write_dicom(folder / f"{patient}-{i}.dcm", pixels, ViewPosition=view,
                                        WindowCenter=2048, WindowWidth=4096, **phi))
    results = tmp_path / "results"
    capsys.readouterr()
    stage(apply.main, "cxr-explain", [trained / "model", src, results, *FAST])
    err = capsys.readouterr().err
    rows = predictions(results)
    assert len(rows) == 10 and all(row["modality"] == "DX" for row in rows)
    assert {row["view"] for row in rows} == {"PA", "AP"}
    assert len({row["group"] for row in rows}) == 2
    assert all("/[PatientName]/[PatientID]/" in row["source"] for row in rows)
    # stage 2 + stage 6 on the same files: the same probabilities, matched by masked source
    data = tmp_path / "stage2"
    import_folder(data, src, progress=False)
    records = load_descriptions(str(data / "images-description.json"))
    by_stage6 = stage6_probabilities(trained / "model", data / "images", [r["name"] for r in records],
                                     tmp_path / "stage6")
    by_source = {r["url"]: by_stage6[r["name"]] for r in records}
    for row in rows:
        assert abs(float(row["p_abnormal"]) - by_source[row["source"]]) < 1e-5
    # no identifier in any text the run wrote, in file names, or on the terminal
    secrets = [v for phi in (PHI, PHI2) for v in phi.values()] + ["DOE", "JANE", "RICHARD"]
    secrets += [str(getattr(ds, key)) for ds in datasets
                for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
    # as whole tokens: "DOE" is a name, "does" in the gallery's own text is not
    found = re.compile("|".join(rf"(?<![a-z0-9]){re.escape(s.lower())}(?![a-z0-9])"
                                for s in secrets)).findall
    for root, _, names in os.walk(results):
        for name in names:
            assert not found(name.lower()), name
            if name.endswith((".csv", ".json", ".js", ".html", ".txt")):
                text = open(os.path.join(root, name), encoding="utf-8").read().lower()
                assert not found(text), name
    assert not found(err.lower())
    # a re-run keeps the names (the data folder's salt is kept) and replaces data/ whole
    stage(apply.main, "cxr-explain", [trained / "model", src, results, *FAST])
    assert [row["name"] for row in predictions(results)] == [row["name"] for row in rows]
    assert len(os.listdir(results / "data" / "images")) == 10


# ----------------------------------------------------------------------------- refusals

def error_line(capsys, argv, code=1):
    capsys.readouterr()
    assert run_main(apply.main, "cxr-explain", [str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("cxr-explain: error: "), err
    return err[-1]


def copied_model(trained, tmp_path, **params):
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    if params:
        config = json.loads((model / "config.json").read_text())
        config["feature_params"].update(params)
        (model / "config.json").write_text(json.dumps(config))
    return model


def test_mismatches_and_bad_folders_are_refused_in_one_line(trained, tmp_path, capsys):
    images = os.path.join(DEMO, "images")
    model = trained / "model"
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"not the weights the model was trained on")
    line = error_line(capsys, [model, images, tmp_path / "r", "--weights", other])
    assert "trained on features from random:seed=0" in line and "sha256:" in line
    line = error_line(capsys, [copied_model(trained, tmp_path / "a", image_size=96), images,
                               tmp_path / "r"])
    assert "expected (96, 96, 3)" in line
    line = error_line(capsys, [copied_model(trained, tmp_path / "b", layer="block5_pool"),
                               images, tmp_path / "r"])
    assert "no layer of that name" in line
    garbage = copied_model(trained, tmp_path / "c")
    (garbage / "classifier.keras").write_bytes(b"PK\x03\x04 not a zip")
    assert "not a Keras model file" in error_line(capsys, [garbage, images, tmp_path / "r"])
    (garbage / "config.json").write_text("{")
    assert "config" in error_line(capsys, [garbage, images, tmp_path / "r"])
    assert "model directory not found" in error_line(capsys, [tmp_path / "nope", images,
                                                              tmp_path / "r"])
    assert "model folder" in error_line(capsys, [model, images, model / "results"])
    inside = tmp_path / "imgs"
    shutil.copytree(images, inside)
    assert "image folder" in error_line(capsys, [model, inside, inside / "results"])
    assert "image folder" in error_line(capsys, [model, inside, inside])
    assert "contains the input" in error_line(capsys, [model, inside, tmp_path])
    line = error_line(capsys, [model, images, tmp_path / "r", "--label-column", "x"], code=2)
    assert "need --labels" in line
    assert not (tmp_path / "r").exists()  # nothing was written by any refusal


def test_run_pipeline_explain_runs_the_command(trained, tmp_path):
    import subprocess
    import sys

    images = tmp_path / "new xrays"  # a space: passed through quoted
    images.mkdir()
    for name in sorted(os.listdir(os.path.join(DEMO, "images")))[:2]:
        shutil.copy(os.path.join(DEMO, "images", name), images / name)
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    result = subprocess.run(
        [os.path.join(root, "run_pipeline.sh"), "--explain", str(trained / "model"),
         str(images), "results", *FAST], cwd=tmp_path, env=dict(os.environ, CXR_VENV=sys.prefix),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(predictions(tmp_path / "results")) == 2  # relative to the caller's folder
    assert "cxr-explain: 2 images explained" in result.stderr


def test_a_model_folder_without_classifier_keras_runs_its_head_on_the_rebuilt_base(
        trained, demo_applied, tmp_path, capsys):
    model = copied_model(trained, tmp_path / "m")
    (model / "classifier.keras").unlink()  # an older model folder: head.keras only
    images = tmp_path / "two"
    images.mkdir()
    names = sorted(os.listdir(os.path.join(DEMO, "images")))[:2]
    for name in names:
        shutil.copy(os.path.join(DEMO, "images", name), images / name)
    stage(apply.main, "cxr-explain", [model, images, tmp_path / "r", *FAST])
    expected = {row["name"]: float(row["p_abnormal"]) for row in predictions(demo_applied)}
    for row in predictions(tmp_path / "r"):  # the seeded random conv base config.json records
        assert abs(float(row["p_abnormal"]) - expected[row["name"]]) < 1e-5
    config = json.loads((model / "config.json").read_text())
    config["feature_params"]["weights"] = "sha256:" + "ab" * 32
    (model / "config.json").write_text(json.dumps(config))
    line = error_line(capsys, [model, images, tmp_path / "r2"])
    assert "has no classifier.keras" in line and "pass it with --weights" in line


def test_calibration_plot_with_pure_bins(tmp_path):
    # bins that are all normal or all abnormal (0 of 7, 10 of 10): Wilson bounds at the ends
    labels = np.array([0] * 7 + [1] * 10 + [0, 1, 1, 0])
    p_abnormal = np.array([0.05] * 7 + [0.95] * 10 + [0.45, 0.55, 0.6, 0.4])
    report = external.evaluate_set(labels, 1 - p_abnormal, p_abnormal, list("abcdefghijklmnopqrstu"),
                                   n_resamples=50)
    external.plot_calibration({"external": report, "model_test": None}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
