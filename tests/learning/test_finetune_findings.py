"""Fine-tuning with one output per finding (`cxr-train --train-blocks 5 --findings all`) on the
synthetic two-finding set of test_findings_maps.py (Effusion: a bright disc upper left, Nodule:
a dark disc lower right) at 64 px with random VGG16 weights: the model folder a findings model
has (config "findings", 2 + K logits, per-finding AUROC), stage 6 drawing one map per finding
from it with no flag about either, a SIGKILLed run resumed by the same command to the same
weights, and the data-dependent refusals in one line before any work."""
import contextlib
import csv
import io
import json
import os
import signal

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from learning import fully_connected_layers_training as stage5  # noqa: E402
from learning import learning_examples_preparing as stage4  # noqa: E402
from learning import transfer_feature_extraction as stage3  # noqa: E402
from learning.train.from_images import CHECKPOINT_SUFFIX  # noqa: E402
from scraper import folder  # noqa: E402
from scraper.cli import run_main  # noqa: E402
from tests.learning.finetune_worker import kill_cxr_train_in_epoch_2  # noqa: E402
from tests.learning.test_findings_maps import (write_set,  # noqa: E402
                                               write_split_without_findings)

SIZE = 64
FINDINGS = ["Effusion", "Nodule"]


def tune_argv(data, model, *extra):
    return [str(data / "training.pickle"), str(data / "testing.pickle"), str(model),
            "--train-blocks", "5", "--findings", "all", "--epochs", "2", "--batch-size", "4",
            "--bootstrap", "20", *extra]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Stages 2-4 on 24 synthetic images (boxes imported), then the fine-tuning findings run:
    -> (root, data folder, its stderr)."""
    root = tmp_path_factory.mktemp("ft-findings")
    src, _ = write_set(root, per_kind=6, seed=1)
    data = root / "data"
    folder.import_folder(data, src, root / "labels.csv", boxes_csv=root / "boxes.csv",
                         progress=False)
    assert stage3.main([str(data / "images"), str(data / "features.pickle"), "--random-weights",
                        "--image-size", str(SIZE), "--no-progress", "--workers", "1"]) == 0
    splits = [str(data / n) for n in ("training.pickle", "testing.pickle", "examples.json")]
    assert stage4.main([str(data / "images-description.json"), str(data / "features.pickle"),
                        *splits, "--test-fraction", "0.25"]) == 0
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run_main(stage5.main, "cxr-train", tune_argv(data, root / "model"))
    assert code == 0, err.getvalue()[-3000:]
    return root, data, err.getvalue() + out.getvalue()


def predictions(path):
    with open(path, newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def test_the_fine_tuned_findings_model_folder(tuned):
    root, data, stderr = tuned
    model = root / "model"
    assert not (root / (".model" + CHECKPOINT_SUFFIX)).exists()
    assert "epoch 2/2" in stderr and "VGG16 blocks 5 fine-tuned" in stderr
    assert "Effusion" in stderr and "Nodule" in stderr   # the per-finding report lines
    config = json.loads((model / "config.json").read_text())
    assert config["findings"] == FINDINGS and config["train_blocks"] == [5]
    assert config["output"].startswith("4 logits [normal, abnormal, Effusion, Nodule]")
    assert config["end_to_end"] == "classifier.keras" and "head.keras" not in os.listdir(model)
    network = keras.models.load_model(model / "classifier.keras")
    assert tuple(network.output.shape) == (None, 2 + len(FINDINGS))
    metrics = json.loads((model / "metrics.json").read_text())
    block = metrics["test"]["findings"]
    assert set(block) == set(FINDINGS) and metrics["epochs_run"] == 2
    for finding in FINDINGS:
        assert block[finding]["roc_auc"] is None or 0 <= block[finding]["roc_auc"] <= 1
    assert sum(block[f]["n_positive"] for f in FINDINGS) > 0
    rows = predictions(model / "test_predictions.csv")
    assert list(next(iter(rows.values())))[-2:] == ["p_Effusion", "p_Nodule"]
    # the predictions are the file's: p_<finding> = sigmoid of its logit
    from learning.vgg import load_image

    name, row = next(iter(rows.items()))
    logits = network.predict(load_image(str(data / "images" / name), SIZE)[None].astype(
        "float32"), verbose=0)[0]
    np.testing.assert_allclose([float(row["p_Effusion"]), float(row["p_Nodule"])],
                               1 / (1 + np.exp(-logits[2:])), atol=1e-5)


def test_stage_6_draws_one_map_per_finding_with_no_flag(tuned):
    from learning import visualization as stage6

    root, data, _ = tuned
    results = root / "results"
    assert stage6.main(["x", str(root / "model"), str(data / "examples.json"),
                        str(data / "images"), str(results), "--random-weights", "--workers",
                        "0", "--display-size", "64"]) == 0
    tested = json.loads((data / "examples.json").read_text())
    tested = [n if isinstance(n, str) else n["name"] for n in tested]
    boxes = {}
    for record in json.loads((data / "images-description.json").read_text()):
        boxes[record["name"]] = {box["finding"] for box in record.get("boxes") or ()}
    with np.load(results / "maps.npz") as maps:
        assert list(maps["findings"]) == FINDINGS
        keys = [key for key in maps.files if key.startswith("map/") and key.count("/") == 3]
        drawn = {}
        for key in keys:
            _, name, method, finding = key.split("/")
            assert method == "grad-cam" and finding in FINDINGS, key
            assert maps[key].shape == (SIZE, SIZE) and np.isfinite(maps[key]).all()
            drawn.setdefault(name, set()).add(finding)
    assert set(drawn) == set(tested)           # every test image: at least one finding map
    for name in tested:                         # and every boxed finding its own map
        assert boxes[name] <= drawn[name], name


def test_a_killed_findings_fine_tune_resumes_to_the_same_weights(tuned, capsys):
    """SIGKILLed in the middle of epoch 2, the same command resumes after epoch 1 and ends
    where the uninterrupted run (the fixture's, another process) ended."""
    root, data, _ = tuned
    work = root / "killed"
    work.mkdir()
    argv = tune_argv(data, root / "model-killed")
    checkpoint = root / (".model-killed" + CHECKPOINT_SUFFIX)
    assert kill_cxr_train_in_epoch_2(work, argv) == -signal.SIGKILL and checkpoint.is_file()

    capsys.readouterr()
    assert run_main(stage5.main, "cxr-train", argv) == 0
    stderr = capsys.readouterr().err
    assert f"resuming from {checkpoint} after epoch 1" in stderr and "epoch 1/2" not in stderr
    metrics = json.loads((root / "model-killed" / "metrics.json").read_text())
    reference = json.loads((root / "model" / "metrics.json").read_text())
    assert metrics["fine_tuning"]["resumed_from_epoch"] == 1
    np.testing.assert_allclose(metrics["history"]["val_loss"], reference["history"]["val_loss"],
                               rtol=1e-5)
    got, expected = (predictions(root / m / "test_predictions.csv") for m in ("model-killed",
                                                                               "model"))
    assert list(got) == list(expected)
    for column in ("p_abnormal", "p_Effusion", "p_Nodule"):
        np.testing.assert_allclose([float(r[column]) for r in got.values()],
                                   [float(r[column]) for r in expected.values()], atol=1e-5)


def test_the_checkpoint_of_other_findings_is_not_resumed(tmp_path):
    """The fingerprint covers the findings and their labels: a checkpoint of a run with
    other findings (or other finding labels) is a different run."""
    from learning.head import PRESETS
    from learning.train.finetune import finetune_config, make_batches, run_fingerprint

    paths = [str(tmp_path / f"{i}.png") for i in range(6)]
    labels, subset = [0, 1, 1, 0, 1, 1], ["train"] * 4 + ["validation"] * 2
    y = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1], [1, -1, 1]],
                 np.float32)

    def fingerprint(findings, rows):
        config = finetune_config(dict(PRESETS["cam"], head="cam", findings=findings))
        data = make_batches(paths, labels, subset, config, 32, 0, targets=rows)
        return run_fingerprint(config, (5,), 32, "random:seed=0", 0, data)

    plain = fingerprint(None, None)
    both = fingerprint(("Effusion", "Nodule"), y)
    assert len({plain, both, fingerprint(("Effusion", "Mass"), y)}) == 3
    changed = y.copy()
    changed[1, 2] = 1
    assert fingerprint(("Effusion", "Nodule"), changed) != both
    assert fingerprint(("Effusion", "Nodule"), y) == both
    with pytest.raises(ValueError, match="need \\(n, 1 \\+ K\\) target rows"):
        fingerprint(("Effusion",), y)


@pytest.mark.parametrize("flag, code, message", [
    ("Hernia", 1, "cxr-train: error: --findings: no training image carries Hernia; the training "
                  "images carry: "),
    ("Effusion,Fracture", 2, "cxr-train: error: argument --findings: invalid finding "
                             "'Fracture'"),
])
def test_bad_findings_are_one_line_before_any_work(tuned, tmp_path, capsys, flag, code,
                                                   message):
    """The frozen path's refusals, with the same exit codes (2: a flag value; 1: the data)."""
    _, data, _ = tuned
    argv = tune_argv(data, tmp_path / "m")
    argv[argv.index("all")] = flag
    assert run_main(stage5.main, "cxr-train", argv) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert [n for n in os.listdir(tmp_path) if n != ".cxr-lock"] == []  # no model, checkpoint


def test_findings_on_a_split_without_finding_labels_is_one_line(tuned, tmp_path, capsys):
    _, data, _ = tuned
    write_split_without_findings(data, tmp_path)
    argv = [str(tmp_path / "training.pickle"), str(tmp_path / "testing.pickle"),
            str(tmp_path / "m"), "--train-blocks", "5", "--findings", "all",
            "--images", str(data / "images")]
    assert run_main(stage5.main, "cxr-train", argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr-train: error: --findings: the training images carry no finding "
                          "labels") and len(err.splitlines()) == 1
    assert sorted(n for n in os.listdir(tmp_path) if n != ".cxr-lock") == [
        "testing.pickle", "training.pickle"]


def test_images_left_out_take_their_finding_rows_with_them(tuned, tmp_path, capsys):
    """An unreadable image leaves the split with its finding labels: the rows stay aligned."""
    from learning import safe_pickle
    from learning.train.from_images import with_images

    _, data, _ = tuned
    split = safe_pickle.load(data / "testing.pickle")
    (tmp_path / split["names"][0]).write_bytes(b"not an image")
    for name in split["names"][1:]:
        os.symlink(data / "images" / name, tmp_path / name)
    kept, failures = with_images(str(tmp_path), split, "test")
    assert len(failures) == 1 and kept["names"] == split["names"][1:]
    np.testing.assert_array_equal(kept["finding_labels"], split["finding_labels"][1:])
    assert len(kept["labels"]) == len(kept["finding_labels"]) == len(kept["paths"])
    assert split["names"][0] in capsys.readouterr().err


def test_blocks_4_5_with_a_named_finding(tuned, tmp_path, capsys):
    """--train-blocks 4,5 --findings Nodule: one finding output, blocks 4 and 5 trained."""
    from learning.vgg import build_conv_base

    _, data, _ = tuned
    argv = tune_argv(data, tmp_path / "m", "--epochs", "1")
    argv[argv.index("5")], argv[argv.index("all")] = "4,5", "nodule"
    assert run_main(stage5.main, "cxr-train", argv) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["findings"] == ["Nodule"] and config["train_blocks"] == [4, 5]
    network = keras.models.load_model(tmp_path / "m" / "classifier.keras")
    assert tuple(network.output.shape) == (None, 3)
    layers = {layer.name: layer for layer in network.get_layer("vgg16_head").layers}
    start = build_conv_base(None, True, 0, SIZE, "block5_conv3")
    for name in ("block3_conv3", "block4_conv3", "block5_conv3"):
        moved = np.abs(layers[name].get_weights()[0] - start.get_layer(name).get_weights()[0])
        assert (moved.max() > 1e-7) == (name != "block3_conv3"), name
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert list(metrics["test"]["findings"]) == ["Nodule"]
