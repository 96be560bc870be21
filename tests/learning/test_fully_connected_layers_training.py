"""Stage 5 on tiny synthetic features: model dir contract, determinism, logits, bad inputs."""
import csv
import json
import os
import pathlib
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
    assert config["run_id"] == metrics["run_id"] and len(config["run_id"]) == 32
    assert metrics["vgg16_weights"]["random"] is True and "RANDOM" in metrics["vgg16_weights"][
        "note"]
    assert "run_id" in config["description"] and "roc_auc" in metrics["description"]
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
    assert first.pop("run_id") != second.pop("run_id")   # each run has its own id
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
    test = dict(split, split="testing", subset=["test"] * 6,
                groups=[f"test-{g}" for g in split["groups"]])
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
    safe_pickle.dump(dict(split, split="testing", subset=["test"] * 6,
                          groups=[f"test-{g}" for g in split["groups"]]),
                     tmp_path / "testing.pickle")
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


# ---------------------------------------------------------------- streaming from the store

def store_splits(tmp_path, n=60, shape=SHAPE, dtype="float32", params=FEATURE_PARAMS,
                 features=None, validation_fraction=0.2):
    """A features store (shards of 8 rows) and stage 4 run on it: (training, testing) paths,
    the features (N, *shape) as written."""
    from learning.learning_examples_preparing import prepare
    from learning.store.index import write_store
    from scraper.schema import make_record, save_descriptions

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    if features is None:
        features = rng.normal(size=(n,) + shape).astype(np.float32)
        features[..., 0] += 3.0 * labels.reshape((n,) + (1,) * len(shape))[..., 0]
    names = [f"img{i:03d}.png" for i in range(n)]
    save_descriptions(tmp_path / "desc.json", [
        make_record(name, "folder", label=["normal", "abnormal"][label],
                    report_id=f"p{i // 2}") for i, (name, label) in enumerate(zip(names,
                                                                                  labels))])
    write_store(tmp_path / "features.pickle", names, [features], features.shape[1:], params,
                dtype, shard_bytes=8 * int(np.prod(features.shape[1:])) * 4)
    paths = [tmp_path / n for n in ("training.pickle", "testing.pickle", "examples.json")]
    prepare(tmp_path / "desc.json", tmp_path / "features.pickle", *paths, test_fraction=0.25,
            validation_fraction=validation_fraction)
    return paths[0], paths[1], features


def test_streamed_training_equals_training_on_the_array(tmp_path):
    """train_head on rows streamed from the store (shards, PyDataset) gives exactly the head
    trained on the same rows in memory (the benchmarks' way)."""
    from learning.fully_connected_layers_training import resolve_config, train_head
    from learning.store.splits import load_pair

    training_path, _, _ = store_splits(tmp_path)
    training, _ = load_pair(training_path, tmp_path / "testing.pickle")
    rows = training["source"].read(np.arange(len(training["names"])))
    config = resolve_config(type("A", (), dict(head="cam", epochs=3, batch_size=8,
                                               learning_rate=None, dropout=None,
                                               patience=None))())
    streamed, s_info = train_head(dict(training, features=training["source"]), config, 1,
                                  progress=False)
    in_memory, m_info = train_head({"features": rows, "labels": training["labels"],
                                    "subset": training["subset"]}, config, 1, progress=False)
    assert s_info["history"] == m_info["history"] and s_info["epochs_run"] == 3
    for a, b in zip(streamed.get_weights(), in_memory.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("head", ["original", "default", "cam"])
def test_every_head_trains_from_the_store(tmp_path, head):
    training, testing, _ = store_splits(tmp_path, n=40, shape=(4, 4, 8), dtype="float16")
    assert train(training, testing, tmp_path / "m", "--head", head, "--epochs", "8",
                 "--batch-size", "8", "--patience", "0") == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_test"] == 10 and metrics["epochs_run"] == 8
    if head != "original":       # Adam 1e-5 for 2 epochs learns little
        assert metrics["test"]["roc_auc"] > 0.9


def test_block5_head_trains_from_the_store(tmp_path):
    params = dict(FEATURE_PARAMS, layer="block4_pool")
    training, testing, _ = store_splits(tmp_path, n=20, shape=(2, 2, 512), params=params)
    assert train(training, testing, tmp_path / "m", "--head", "block5", "--epochs", "1") == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["head"]["conv_init"] == \
        "random:seed=0"


@pytest.mark.parametrize("value, message", [
    (np.nan, "hold NaN or infinite values (first: img"),
    (3e38, "hold values up to 3e+38 in magnitude (first: img"),
])
def test_corrupt_feature_values_are_one_line(tmp_path, capsys, value, message):
    features = np.random.default_rng(0).normal(size=(40,) + SHAPE).astype(np.float32)
    features[5:] = value
    training, testing, _ = store_splits(tmp_path, n=40, features=features)
    assert train(training, testing, tmp_path / "m") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "35 of 40 images" in err[0], err
    assert not (tmp_path / "m").exists()


def test_empty_feature_rows_are_one_line(tmp_path, capsys):
    """Features of shape (N, 0, 0, 512) or (N, 0): refused by stage 4 in one line."""
    from learning.learning_examples_preparing import main as prepare_main
    from learning.store.index import write_index
    from scraper.schema import make_record, save_descriptions

    save_descriptions(tmp_path / "d.json", [make_record(f"{i}.png", "folder", label="normal")
                                            for i in range(4)])
    for shape in ((0, 0, 512), (0,)):
        write_index(tmp_path / "f.pickle", [f"{i}.png" for i in range(4)], [""] * 4, shape,
                    "float16", [[0, i] for i in range(4)],
                    [{"file": "0.npy", "rows": 4, "bytes": 128, "sha256": ""}], FEATURE_PARAMS,
                    [])
        code = run_main(prepare_main, "cxr-prepare-examples",
                        [str(tmp_path / n) for n in ("d.json", "f.pickle", "tr.pickle",
                                                     "te.pickle", "ex.json")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and f"feature rows have shape {shape}" in err[0]


def test_split_files_that_do_not_belong_together_are_refused(tmp_path, capsys):
    training, testing, _ = store_splits(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_training, other_testing, _ = store_splits(other, n=64)
    cases = [(training, other_testing, "come from different runs of stage 4")]
    leaky = safe_pickle.load(testing)
    leaky["groups"][0] = safe_pickle.load(training)["groups"][0]
    safe_pickle.dump(leaky, tmp_path / "leaky.pickle")
    cases.append((training, tmp_path / "leaky.pickle", "patient groups are in both"))
    for train_path, test_path, message in cases:
        assert train(train_path, test_path, tmp_path / "m") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # The store rewritten after stage 4 (a new store_id): re-run stage 4, says stage 5.
    from learning.store.index import write_store
    write_store(tmp_path / "features.pickle", [f"img{i:03d}.png" for i in range(60)],
                [np.zeros((60,) + SHAPE, np.float32)], SHAPE, FEATURE_PARAMS, "float32")
    assert train(training, testing, tmp_path / "m") == 1
    err = capsys.readouterr().err
    assert "changed after stage 4 split it" in err and "re-run stage 4" in err
    assert not (tmp_path / "m").exists()


def test_replaced_shard_is_refused_by_its_checksum(tmp_path, capsys):
    from learning.store.index import shards_folder

    training, testing, _ = store_splits(tmp_path)
    shard = sorted(pathlib.Path(shards_folder(tmp_path / "features.pickle")).iterdir())[1]
    data = bytearray(shard.read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"          # same size, one value changed
    shard.write_bytes(bytes(data))
    assert train(training, testing, tmp_path / "m") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match its checksum" in err[0], err


def test_tiny_set_without_validation_says_early_stopping_is_off(tmp_path, capsys):
    """Issue 17 defect 9: a 5-image run had "validation 0 0 0" and silently ran every epoch."""
    training, testing, _ = store_splits(tmp_path, n=8, validation_fraction=0.0)
    assert "validation" not in safe_pickle.load(training)["subset"]
    assert train(training, testing, tmp_path / "m", "--epochs", "2") == 0
    err = capsys.readouterr().err
    line = "no validation images: early stopping is off, the last epoch is kept"
    assert err.count(line) == 2          # when it happens, and again next to the numbers
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert any(line in w for w in metrics["warnings"]) and metrics["early_stopping"] is None


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "-5", "must be between 1 and 10,000"),
    ("--epochs", "1e20", "invalid number of epochs '1e20'"),
    ("--batch-size", "0", "must be between 1 and 65,536"),
    ("--learning-rate", "0", "must be positive and at most 10"),
    ("--learning-rate", "1e20", "must be positive and at most 10"),
    ("--dropout", "1", "must be in [0, 1)"),
    ("--patience", "-1", "must be between 0 and 10,000"),
    ("--bootstrap", "0", "must be between 1 and 100,000"),
    ("--bootstrap", "1e9", "invalid number of resamples '1e9'"),
])
def test_flag_ranges_are_checked_at_parse_time(pickles, tmp_path, capsys, flag, value, message):
    training, testing = pickles
    code = run_main(main, "cxr-train", [str(training), str(testing), str(tmp_path / "m"),
                                        flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and flag in err[-1] and message in err[-1], err


def test_roc_marks_the_operating_point():
    from learning.metrics import evaluate
    from learning.train.plots import roc_figure

    labels = np.array([0, 0, 0, 1, 1, 1])
    logits = np.stack([np.zeros(6), np.array([-2, -1, 1, -1, 2, 3])], axis=1)
    metrics = evaluate(labels, logits, [str(i) for i in range(6)], n_resamples=10)
    figure = roc_figure(labels, logits, metrics)
    [point] = [line for line in figure.axes[0].get_lines()
               if line.get_label().startswith("operating point")]
    assert point.get_xdata()[0] == pytest.approx(1 / 3) and point.get_ydata()[0] == \
        pytest.approx(2 / 3)


def test_a_second_writer_of_the_data_folder_is_refused(pickles, tmp_path, capsys):
    import fcntl

    from scraper.fileio import LOCK_FILE

    training, testing = pickles
    with open(tmp_path / LOCK_FILE, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert train(training, testing, tmp_path / "m") == 1
        assert "another run is writing to" in capsys.readouterr().err


def test_model_folder_with_foreign_files_is_never_replaced(pickles, tmp_path, capsys):
    training, testing = pickles
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "my-notes.txt").write_text("mine")
    assert train(training, testing, tmp_path / "m") == 1
    assert "holds 1 entries stage 5 did not write (e.g. 'my-notes.txt')" in \
        capsys.readouterr().err
    assert (tmp_path / "m" / "my-notes.txt").read_text() == "mine"


def test_sigkill_leaves_the_old_or_the_new_complete_folder(pickles, tmp_path):
    """A real stage-5 process killed (SIGKILL) while it writes its outputs: the model folder
    is still the previous run's, complete (one run_id in config.json and metrics.json), with
    no stray temp files; the next run replaces it whole."""
    import signal
    import subprocess
    import sys
    import time

    training, testing = pickles
    model = tmp_path / "m"
    assert train(training, testing, model, "--epochs", "1") == 0
    old = {p.name: p.read_bytes() for p in model.iterdir()}
    root = pathlib.Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "learning.fully_connected_layers_training", str(training),
         str(testing), str(model), "--epochs", "1", "--bootstrap", "10"], cwd=root,
        stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(root)))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".m.cxr-new-*/head.keras")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.005)
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL
    process.stderr.close()
    assert {p.name: p.read_bytes() for p in model.iterdir()} == old
    assert not list(model.glob(".keras-*"))
    assert train(training, testing, model, "--epochs", "1", "--seed", "1") == 0
    assert not list(tmp_path.glob(".m.cxr-*"))           # the killed run's folder is gone
    config = json.loads((model / "config.json").read_text())
    metrics = json.loads((model / "metrics.json").read_text())
    assert config["run_id"] == metrics["run_id"] != json.loads(old["metrics.json"])["run_id"]
    assert config["args"]["seed"] == 1
