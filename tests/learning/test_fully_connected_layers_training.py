"""Stage 5 on tiny synthetic features: model dir contract, determinism, logits, bad inputs."""
import csv
import json
import os
import pickle

import numpy as np
import pytest

from learning import safe_pickle
from learning.fully_connected_layers_training import main
from scraper.cli import run_main

FEATURE_PARAMS = {"weights": "random:seed=0", "image_size": 32, "layer": "block5_pool",
                  "pooling": "none", "preprocessing": "caffe", "precision": "float32"}
SHAPE = (2, 2, 8)


def make_split(split, n, seed, subsets, shape=SHAPE, params=FEATURE_PARAMS):
    """Separable synthetic features: abnormal images have a raised first channel; two images
    per group (patient)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.normal(size=(n,) + shape).astype(np.float32)
    features[..., 0] += 3.0 * labels[:, None, None]
    return {"format": "cxr-examples/1", "split": split,
            "names": [f"{split}{i}.png" for i in range(n)], "features": features,
            "labels": labels.astype(np.int64), "groups": [f"{split}-p{i // 2}" for i in range(n)],
            "subset": [subsets(i) for i in range(n)], "feature_params": params,
            "split_params": {"seed": 0, "test_fraction": 0.1, "validation_fraction": 0.1},
            "class_names": ["normal", "abnormal"]}


@pytest.fixture
def pickles(tmp_path):
    training = tmp_path / "training.pickle"
    testing = tmp_path / "testing.pickle"
    safe_pickle.dump(make_split("training", 120, 0,
                                lambda i: "validation" if i % 10 in (0, 1) else "train"), training)
    safe_pickle.dump(make_split("testing", 40, 1, lambda i: "test"), testing)
    return training, testing


def train(training, testing, model_dir, *flags):
    return run_main(main, "cxr-train", [str(training), str(testing), str(model_dir),
                                        "--epochs", "3", "--bootstrap", "100"] + list(flags))


def test_model_directory_contract_and_logits(pickles, tmp_path, capsys):
    import keras

    training, testing = pickles
    model_dir = tmp_path / "model"
    assert train(training, testing, model_dir, "--head", "default") == 0
    # No classifier.keras: these synthetic (2, 2, 8) features come from no VGG16 layer.
    assert sorted(os.listdir(model_dir)) == ["config.json", "head.keras", "metrics.json",
                                             "roc.png", "test_predictions.csv",
                                             "training_curve.png"]
    captured = capsys.readouterr()
    out = captured.out
    assert "weighted avg" in out and "ROC AUC" in out and "majority baseline" in out
    assert "PR AUC" in out and "sensitivity" in out and "specificity" in out
    assert "WARNING: no classifier.keras written" in captured.err
    assert "tiny" not in captured.err  # 20 + 20 test, 12 + 12 validation images
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_validation"], metrics["n_test"]) == (96, 24, 40)
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 3
    test = metrics["test"]
    assert test["roc_auc"] > 0.9  # separable synthetic data
    assert test["roc_auc_ci"]["low"] <= test["roc_auc"] <= test["roc_auc_ci"]["high"]
    assert test["roc_auc_ci"]["n_groups"] == 20  # resampled patients, not 40 images
    assert "baseline_majority" not in metrics  # one baseline entry, inside "test"
    assert test["baseline_majority"]["accuracy"] == 0.5
    assert test["baseline_majority"]["roc_auc"] == 0.5
    assert set(test["classification"]) == {"normal", "abnormal", "accuracy", "macro avg",
                                           "weighted avg"}
    assert 0.9 < test["pr_auc"] <= 1 and test["pr_auc_baseline"] == 0.5
    matrix = np.array(test["confusion_matrix"]["matrix"])
    point = test["operating_point"]
    assert point["sensitivity"] == matrix[1, 1] / 20 and point["specificity"] == matrix[0, 0] / 20
    assert metrics["warnings"] == []
    # Saved without Adam's two moment estimates: about the parameters' own bytes.
    params = sum(int(np.prod(w.shape)) for w in keras.models.load_model(
        model_dir / "head.keras").weights)
    assert metrics["files"]["head_bytes"] < 4 * params * 1.2 + 100_000
    with open(model_dir / "test_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    testing_data = safe_pickle.load(testing)
    assert [r["name"] for r in rows] == testing_data["names"]
    assert [r["group"] for r in rows] == testing_data["groups"]
    assert [r["label"] for r in rows] == ["normal", "abnormal"] * 20
    p_abnormal = np.array([float(r["p_abnormal"]) for r in rows])
    assert ((p_abnormal > 0.5) == (np.array([r["predicted"] for r in rows]) == "abnormal")).all()
    assert (p_abnormal > 0.5).sum() == matrix[:, 1].sum()
    assert sum(map(sum, test["confusion_matrix"]["matrix"])) == 40
    config = json.loads((model_dir / "config.json").read_text())
    assert config["feature_params"] == FEATURE_PARAMS
    assert config["class_names"] == ["normal", "abnormal"]
    assert config["head"]["head"] == "default" and config["head"]["activation"] == "relu"
    assert config["args"]["epochs"] == 3
    # Stage 6 loads the head with no custom objects; it outputs 2 logits, not probabilities.
    head = keras.models.load_model(model_dir / "head.keras")
    features = safe_pickle.load(testing)["features"][:5]
    logits = np.asarray(head(features))
    assert logits.shape == (5, 2)
    assert head.layers[-1].get_config()["activation"] == "linear"
    assert not np.allclose(logits.sum(axis=1), 1.0)


def test_two_runs_with_one_seed_give_identical_metrics(pickles, tmp_path):
    training, testing = pickles
    assert train(training, testing, tmp_path / "a", "--seed", "3") == 0
    assert train(training, testing, tmp_path / "b", "--seed", "3") == 0
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert first == second


def test_original_head_reproduces_the_2018_choices(pickles, tmp_path):
    training, testing = pickles
    assert train(training, testing, tmp_path / "m", "--head", "original") == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())["head"]
    assert (config["activation"], config["learning_rate"], config["class_weights"],
            config["patience"], config["dropout"]) == ("tanh", 1e-5, False, None, 0.0)
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["epochs_run"] == metrics["best_epoch"] == 3  # no early stopping


def test_tiny_sets_warn_loudly_with_their_numbers(tmp_path, capsys):
    training = tmp_path / "training.pickle"
    testing = tmp_path / "testing.pickle"
    safe_pickle.dump(make_split("training", 40, 0,
                                lambda i: "validation" if i % 10 in (0, 1) else "train"), training)
    tiny = make_split("testing", 4, 1, lambda i: "test")
    tiny["groups"] = ["p0", "p1", "p2", "p3"]  # one image per patient
    safe_pickle.dump(tiny, testing)
    assert train(training, testing, tmp_path / "m", "--epochs", "1") == 0
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("WARNING: tiny test set: 4 images (2 normal, 2 abnormal)") == 2
    assert err.count("WARNING: tiny validation set: 8 images (4 normal, 4 abnormal)") == 2
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 2
    skipped = metrics["test"]["roc_auc_ci"]["n_skipped"]
    assert skipped > 0  # about 1 in 8 resamples of 4 patients holds one class
    assert f"{skipped:,} of 100 resamples skipped" in captured.out


def test_single_class_test_set_gives_null_auroc(tmp_path):
    training = tmp_path / "training.pickle"
    testing = tmp_path / "testing.pickle"
    safe_pickle.dump(make_split("training", 40, 0,
                                lambda i: "validation" if i % 10 in (0, 1) else "train"), training)
    one_class = make_split("testing", 8, 1, lambda i: "test")
    one_class["labels"][:] = 1
    safe_pickle.dump(one_class, testing)
    assert train(training, testing, tmp_path / "m", "--epochs", "2") == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] is None and "only one class" in metrics["test"]["note"]


def test_bad_inputs_are_one_line_errors(pickles, tmp_path, capsys):
    training, testing = pickles

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    crafted = tmp_path / "crafted.pickle"
    crafted.write_bytes(pickle.dumps({"format": "cxr-examples/1", "features": Evil()}))
    corrupt = tmp_path / "corrupt.pickle"
    corrupt.write_bytes(training.read_bytes()[:100])
    other_shape = tmp_path / "other_shape.pickle"
    safe_pickle.dump(make_split("testing", 10, 1, lambda i: "test", shape=(2, 2, 4)), other_shape)
    other_params = tmp_path / "other_params.pickle"
    safe_pickle.dump(make_split("testing", 10, 1, lambda i: "test",
                                params=dict(FEATURE_PARAMS, weights="sha256:abc")), other_params)
    cases = [(crafted, testing, "refusing to load"), (corrupt, testing, "corrupt"),
             (tmp_path / "missing.pickle", testing, "not found"),
             (training, other_shape, "feature shapes differ"),
             (training, other_params, "feature parameters differ"),
             (testing, training, "holds the 'testing' split")]
    for train_path, test_path, message in cases:
        assert train(train_path, test_path, tmp_path / "m") == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m").exists()


def test_without_validation_subset_trains_all_epochs(tmp_path):
    training = tmp_path / "training.pickle"
    testing = tmp_path / "testing.pickle"
    safe_pickle.dump(make_split("training", 40, 0, lambda i: "train"), training)
    safe_pickle.dump(make_split("testing", 10, 1, lambda i: "test"), testing)
    assert train(training, testing, tmp_path / "m", "--epochs", "3") == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert (metrics["epochs_run"], metrics["best_epoch"], metrics["n_validation"]) == (3, 3, 0)
    assert metrics["early_stopping"] is None


def test_head_stacks_on_the_real_conv_base(tmp_path):
    """Real images and a (random, 32 px) VGG16: the saved head stacked on the conv base gives
    the same logits as the head on precomputed features - what stage 6 does."""
    import keras

    from learning.vgg import build_conv_base, load_image, preprocess

    root = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24", "images")
    names = sorted(os.listdir(root))[:6]
    base = build_conv_base(random_weights=True, seed=0, image_size=32)
    pixels = preprocess(np.stack([load_image(os.path.join(root, n), 32) for n in names]))
    features = np.asarray(base(pixels))  # (6, 1, 1, 512)
    assert features.shape == (6, 1, 1, 512)
    split = make_split("training", 6, 0, lambda i: "train", shape=(1, 1, 512))
    split["features"] = features
    test = dict(split, split="testing", subset=["test"] * 6)
    safe_pickle.dump(split, tmp_path / "training.pickle")
    safe_pickle.dump(test, tmp_path / "testing.pickle")
    assert train(tmp_path / "training.pickle", tmp_path / "testing.pickle", tmp_path / "m",
                 "--epochs", "2") == 0
    head = keras.models.load_model(tmp_path / "m" / "head.keras")
    stacked = keras.Model(base.input, head(base.output))
    np.testing.assert_allclose(np.asarray(stacked(pixels)), np.asarray(head(features)),
                               rtol=1e-5, atol=1e-5)


def test_end_to_end_classifier_reproduces_stage_6_logits(tmp_path):
    """classifier.keras (raw RGB pixels -> logits) loads with plain keras.models.load_model and
    gives the logits stage 6 computes with its own conv base + head, on real tiny images."""
    import keras

    from learning.explain.attribution import Explainer
    from learning.explain.model import load_keras
    from learning.export import build_classifier
    from learning.vgg import build_conv_base, load_image, preprocess

    root = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24", "images")
    names = sorted(os.listdir(root))[:6]
    images = np.stack([load_image(os.path.join(root, n), 32) for n in names])  # (6, 32, 32, 3)
    base = build_conv_base(random_weights=True, seed=0, image_size=32)
    split = make_split("training", 6, 0, lambda i: "train", shape=(1, 1, 512))
    split["features"] = np.asarray(base(preprocess(images)))
    safe_pickle.dump(split, tmp_path / "training.pickle")
    safe_pickle.dump(dict(split, split="testing", subset=["test"] * 6), tmp_path / "testing.pickle")
    assert train(tmp_path / "training.pickle", tmp_path / "testing.pickle", tmp_path / "m",
                 "--epochs", "2") == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    exported_file = tmp_path / "m" / "classifier.keras"
    assert metrics["files"]["classifier_bytes"] == exported_file.stat().st_size
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["end_to_end"] == "classifier.keras"

    classifier = keras.models.load_model(tmp_path / "m" / "classifier.keras")
    exported = np.asarray(classifier.predict(images.astype(np.float32), verbose=0))
    params = sum(int(np.prod(w.shape)) for w in classifier.weights)
    assert metrics["files"]["classifier_bytes"] < 4 * params * 1.05 + 200_000  # no optimizer

    head = load_keras(str(tmp_path / "m" / "head.keras"), "head")  # stage 6's fallback path
    stage6_base = build_conv_base(None, True, 0, 32, "block5_pool", "none")
    stage6 = Explainer(build_classifier(stage6_base, head), "difference", ["saliency"], "black",
                       32)
    x, _ = stage6.inputs(images)
    np.testing.assert_allclose(exported, stage6.logits(x), rtol=1e-5, atol=1e-5)
    assert exported.shape == (6, 2) and np.ptp(exported[:, 1] - exported[:, 0]) > 0


def test_export_refuses_a_weights_file_that_did_not_make_the_features(pickles, tmp_path, capsys):
    training, testing = pickles
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"not these weights")
    params = dict(FEATURE_PARAMS, weights="sha256:ab")  # features from a real weights file
    safe_pickle.dump(dict(safe_pickle.load(training), feature_params=params), training)
    safe_pickle.dump(dict(safe_pickle.load(testing), feature_params=params), testing)
    assert train(training, testing, tmp_path / "m", "--weights", str(other)) == 1
    err = capsys.readouterr().err
    assert "is not the VGG16 weights file stage 3 used" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()  # refused before training
    assert train(training, testing, tmp_path / "m", "--weights", str(tmp_path / "nope.h5")) == 1
    assert "VGG16 weights file not found" in capsys.readouterr().err
