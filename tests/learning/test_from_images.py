"""Stage 5 with --train-blocks (learning/train/from_images.py) on the demo's 24 X-rays at 64 px
with random VGG16 weights, through run_pipeline.sh: first the frozen-feature head (it writes
head.keras), then `--set train.train-blocks=5`, which re-runs stages 5 and 6 only. Then: the
model folder (no stale head.keras), stage 6 and cxr-explain explaining the fine-tuned network as
it is, a SIGKILLed cxr-train resumed by the same command, unreadable images left out and listed,
and bad values refused in one line before any work (by cxr-train and by the pipeline's
pre-check)."""
import csv
import json
import os
import shutil
import signal

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from learning.fully_connected_layers_training import main as stage5  # noqa: E402
from learning.train.from_images import CHECKPOINT_SUFFIX  # noqa: E402
from scraper.cli import run_main  # noqa: E402
from tests.learning.finetune_worker import kill_cxr_train_in_epoch_2  # noqa: E402
from tests.test_pipeline import fast_run, run_pipeline  # noqa: E402

SIZE = 64
COMMON = [f"features.image-size={SIZE}"]
TUNE = ["train.train-blocks=5", "train.epochs=3", "train.batch-size=4", "train.bootstrap=50",
        "visualize.method=grad-cam,deeplift", "visualize.display-size=96"]
MODEL_FILES = ["classifier.keras", "config.json", "metrics.json", "roc.png",
               "test_predictions.csv", "training_curve.png"]


def sets(*values):
    return [w for value in values for w in ("--set", value)]


def tune_argv(data, model="model"):
    """The stage-5 command run_pipeline.sh ran for TUNE (its --seed 0 included)."""
    return [str(data / "training.pickle"), str(data / "testing.pickle"), str(data / model),
            "--seed", "0", "--train-blocks", "5", "--epochs", "3", "--batch-size", "4",
            "--bootstrap", "50"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """-> (data folder, the fine-tuning run's stderr, head.keras existed before it)."""
    data = tmp_path_factory.mktemp("from-images") / "data"
    run_pipeline(data, "--random-weights", *sets(*COMMON, "train.epochs=1",
                                                 "visualize.method=grad-cam"))
    had_head = (data / "model" / "head.keras").is_file()
    second = run_pipeline(data, "--random-weights", *sets(*COMMON, *TUNE))
    return data, second.stderr, had_head


def predictions(path):
    with open(path, newline="") as handle:
        return {row["name"]: float(row["p_abnormal"]) for row in csv.DictReader(handle)}


def test_the_model_folder_holds_the_fine_tuned_classifier_and_no_stale_head(tuned):
    from learning import safe_pickle
    from learning.vgg import build_conv_base

    data, stderr, had_head = tuned
    model = data / "model"
    assert had_head and sorted(os.listdir(model)) == MODEL_FILES  # head.keras gone
    assert not (data / (".model" + CHECKPOINT_SUFFIX)).exists()  # removed once swapped in
    assert "epoch 3/3" in stderr and "VGG16 blocks 5 fine-tuned trained on 14 images" in stderr
    for number, name in ((2, "scrape"), (3, "features"), (4, "examples")):
        assert f"stage {number} ({name}): up to date, skipped" in stderr
    assert "== stage 5 (train): cxr-train" in stderr and "--train-blocks 5" in stderr
    config = json.loads((model / "config.json").read_text())
    metrics = json.loads((model / "metrics.json").read_text())
    assert config["run_id"] == metrics["run_id"] and config["train_blocks"] == [5]
    assert config["feature_params"] == {
        "weights": "random:seed=0", "image_size": SIZE, "layer": "block5_conv3",
        "pooling": "none", "preprocessing": config["feature_params"]["preprocessing"],
        "precision": "fp32"}
    assert config["end_to_end"] == "classifier.keras" and "grid_augment" not in config["head"]
    tuning = config["fine_tuning"]
    assert tuning["images"] == str(data / "images") and tuning["conv_learning_rate"] == 1e-5
    assert tuning["stage3_feature_params"]["layer"] == "block4_pool"
    assert tuning["augment"]["rotation"] > 0 and "flip" not in json.dumps(tuning["augment"])
    assert (metrics["n_train"], metrics["n_validation"], metrics["n_test"]) == (14, 2, 8)
    assert metrics["epochs_run"] == 3 and len(metrics["history"]["val_loss"]) == 3
    assert metrics["fine_tuning"]["train_blocks"] == [5]
    assert metrics["fine_tuning"]["cpu_seconds_per_image_epoch"] > 0
    assert metrics["fine_tuning"]["images_left_out"] == {"training": 0, "test": 0}
    assert metrics["vgg16_weights"]["random"] and metrics["files"]["classifier_bytes"] > 0
    testing = safe_pickle.load(data / "testing.pickle")
    assert list(predictions(model / "test_predictions.csv")) == testing["names"]
    # the file is the trained network: block 5 moved from its start, blocks 1-4 did not
    network = keras.models.load_model(model / "classifier.keras")
    layers = {layer.name: layer for layer in network.get_layer("vgg16_head").layers}
    start = build_conv_base(None, True, 0, SIZE, "block5_conv3")
    for name in ("block4_conv3", "block5_conv3"):
        moved = np.abs(layers[name].get_weights()[0] - start.get_layer(name).get_weights()[0])
        assert (moved.max() > 1e-7) == name.startswith("block5"), name


def test_stage_6_and_cxr_explain_explain_the_fine_tuned_network(tuned, tmp_path):
    from learning import apply

    data, _, _ = tuned
    expected = predictions(data / "model" / "test_predictions.csv")
    results = data / "results"  # stage 6, as run_pipeline.sh ran it: no flag about fine-tuning
    run = json.loads((results / "run.json").read_text())
    assert run["explained_model"] == "classifier.keras" and run["explained"] == 8
    assert run["feature_params"]["layer"] == "block5_conv3"
    assert run["model_run_id"] == json.loads((data / "model" / "config.json").read_text())[
        "run_id"]
    index = json.loads((results / "index.json").read_text())
    assert len(index) == 16 and {row["name"] for row in index} == set(expected)
    for row in index:
        assert abs(row["p_abnormal"] - expected[row["name"]]) < 1e-5, row["name"]
        assert (results / row["files"]["picture"]).is_file()
        if row["method"] == "deeplift":
            assert row["completeness_delta"] < 1e-3
    with np.load(results / "maps.npz") as maps:
        arrays = [maps[key] for key in maps.files if key.startswith("map/")]
        assert len(arrays) == 16 and all(a.shape == (SIZE, SIZE) for a in arrays)
        assert all(np.isfinite(a).all() for a in arrays)
        assert sum(a.std() > 0 for a in arrays) >= 8
    # cxr-explain on two of the test images, no flag about the fine-tuning
    new = tmp_path / "new"
    new.mkdir()
    for name in sorted(expected)[:2]:
        shutil.copy(data / "images" / name, new / name)
    assert apply.main([str(data / "model"), str(new), str(tmp_path / "explained")]) == 0
    got = predictions(tmp_path / "explained" / "predictions.csv")
    assert set(got) == set(sorted(expected)[:2])
    for name, p in got.items():
        assert abs(p - expected[name]) < 1e-5, name


def test_a_third_run_skips_every_stage(tuned):
    data, _, _ = tuned
    third = run_pipeline(data, "--random-weights", *sets(*COMMON, *TUNE))
    skipped = [line for line in third.stderr.splitlines() if "up to date, skipped" in line]
    assert len(skipped) == 5, third.stderr  # stages 2-6 (random weights: no stage 1)


def test_a_killed_fine_tune_resumes_with_the_same_command(tuned, capsys):
    """cxr-train SIGKILLed in the middle of epoch 2, then the same command: it resumes after
    epoch 1 from the hidden checkpoint and ends where the uninterrupted run ended."""
    data, _, _ = tuned
    work = data.parent / "killed"
    work.mkdir()
    argv = tune_argv(data, "model-killed")
    checkpoint = data / (".model-killed" + CHECKPOINT_SUFFIX)
    assert kill_cxr_train_in_epoch_2(work, argv) == -signal.SIGKILL
    assert not (data / "model-killed").exists() and checkpoint.is_file()
    with np.load(checkpoint) as saved:
        assert json.loads(str(saved["state"]))["epochs_done"] == 1

    capsys.readouterr()
    assert run_main(stage5, "cxr-train", argv) == 0
    stderr = capsys.readouterr().err
    assert f"resuming from {checkpoint} after epoch 1" in stderr and "epoch 2/3" in stderr
    assert "epoch 1/3" not in stderr and not checkpoint.exists()
    metrics = json.loads((data / "model-killed" / "metrics.json").read_text())
    assert metrics["fine_tuning"]["resumed_from_epoch"] == 1
    reference = json.loads((data / "model" / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["history"]["val_loss"], reference["history"]["val_loss"],
                               rtol=1e-5)
    got = predictions(data / "model-killed" / "test_predictions.csv")
    expected = predictions(data / "model" / "test_predictions.csv")
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-5)


def test_unreadable_images_are_left_out_counted_and_listed(tuned, tmp_path, capsys):
    from learning import safe_pickle

    data, _, _ = tuned
    images = tmp_path / "images"
    shutil.copytree(data / "images", images)
    training = safe_pickle.load(data / "training.pickle")
    testing = safe_pickle.load(data / "testing.pickle")
    broken = [n for n, s in zip(training["names"], training["subset"]) if s == "train"][0]
    (images / broken).write_bytes(b"not an image")
    (images / testing["names"][0]).unlink()
    capsys.readouterr()
    assert run_main(stage5, "cxr-train", tune_argv(data)[:2] + [
        str(tmp_path / "model"), "--train-blocks", "5", "--epochs", "1", "--images", str(images),
        "--bootstrap", "20"]) == 0
    stderr = capsys.readouterr().err
    assert f"{broken}:" in stderr and f"{testing['names'][0]}:" in stderr
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_test"]) == (13, 7)
    assert metrics["fine_tuning"]["images_left_out"] == {"training": 1, "test": 1}
    assert any("1 training and 1 test images could not be read" in w
               for w in metrics["warnings"])
    assert testing["names"][0] not in predictions(tmp_path / "model" / "test_predictions.csv")


@pytest.mark.parametrize("flags, message", [
    (["--train-blocks", "0"], "invalid train blocks '0': VGG16 has conv blocks 1 to 5, not 0"),
    (["--train-blocks", "3,5"], "without a gap up to block 5"),
    (["--train-blocks", "5", "--head", "default"], "--head default flattens: use --head cam"),
    (["--images", "x"], "--images applies only with --train-blocks"),
    (["--conv-learning-rate", "1e-4"], "--conv-learning-rate applies only with --train-blocks"),
    (["--train-blocks", "5", "--conv-learning-rate", "0"], "invalid learning rate"),
    (["--train-blocks", "5", "--images", "no-such-folder"], "image folder not found"),
])
def test_bad_values_are_one_line_before_any_work(tuned, tmp_path, capsys, flags, message):
    """Flags: exit 2 at parse time; a missing image folder: exit 1, before any training."""
    data = tuned[0]
    flags = [str(tmp_path / f) if f == "no-such-folder" else f for f in flags]
    code = run_main(stage5, "cxr-train", tune_argv(data)[:2] + [str(tmp_path / "m")] + flags)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert code == (1 if "not found" in message else 2)
    assert err.startswith("cxr-train: error: ") and "epoch" not in err
    assert [n for n in os.listdir(tmp_path) if n != ".cxr-lock"] == []  # no model, checkpoint


@pytest.mark.parametrize("sets, message", [
    (["train.train-blocks=0"], "not 0"),
    (["train.train-blocks=5", "train.head=default"], "use --head cam"),
])
def test_the_pipeline_refuses_bad_fine_tuning_values_before_stage_1(tmp_path, sets, message):
    data = tmp_path / "d"
    result = fast_run("--demo", *[w for s in sets for w in ("--set", s)], data=data)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert ("stage 5 (train) would fail" in result.stderr or "parameters [train]" in
            result.stderr) and len(result.stderr.splitlines()) == 1
    assert "== stage" not in result.stderr
    assert not data.exists()
