"""Fine-tuning VGG16 blocks from images (learning/train/finetune.py) on random weights and tiny
real X-rays (the demo's NIH images decoded at 32 px): the flag's values, the model's contract,
which weights train, early stopping, and a real process SIGKILLed mid-epoch then resumed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from learning.train.finetune import record_epoch, train_blocks_type
from scraper.cli import ArgumentParser, UserError

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24")
WORKER = os.path.join(os.path.dirname(__file__), "finetune_worker.py")


@pytest.mark.parametrize("text, blocks", [("5", (5,)), ("4,5", (4, 5)), ("4-5", (4, 5)),
                                          (" 3,4,5 ", (3, 4, 5)), ("1-5", (1, 2, 3, 4, 5))])
def test_train_blocks_accepts_ranges_ending_at_block_5(text, blocks):
    assert train_blocks_type(text) == blocks


@pytest.mark.parametrize("text, says", [
    ("0", "VGG16 has conv blocks 1 to 5, not 0"), ("6", "not 6"), ("4,6", "not 6"),
    ("3,5", "without a gap up to block 5"), ("4", "without a gap up to block 5"),
    ("5,4", "without a gap"), ("5-4", "without a gap"), ("", "invalid train blocks ''"),
    ("five", "invalid train blocks 'five'"), ("4-5-6", "invalid train blocks '4-5-6'")])
def test_bad_train_blocks_get_one_clear_line_at_parse_time(text, says):
    parser = ArgumentParser(prog="cxr-train")
    parser.add_argument("--train-blocks", type=train_blocks_type)
    with pytest.raises(UserError) as error:
        parser.parse_args(["--train-blocks", text])
    message = str(error.value)
    assert says in message and "\n" not in message and error.value.exit_code == 2
    assert "blocks ending at 5" in message


def test_heads_that_cannot_sit_on_block_5_are_refused():
    from learning.head import PRESETS
    from learning.train.finetune import finetune_config

    for name in ("default", "original", "block5"):
        with pytest.raises(UserError, match=f"--head {name} .*use --head cam"):
            finetune_config(dict(PRESETS[name], head=name))
    config = finetune_config(dict(PRESETS["cam"], head="cam"))
    assert config["conv_learning_rate"] == 1e-5 and config["augment"]["rotation"] == 7.0
    with pytest.raises(UserError, match="rotation 45.0"):
        finetune_config(dict(PRESETS["cam"], head="cam", augment={"rotation": 45}))


def test_early_stopping_keeps_the_lowest_validation_loss_and_stops_after_patience():
    from learning.train.finetune import new_state

    state = new_state("sha256:x", None)
    bests = [record_epoch(state, 1.0, loss, 0.7, 0.01, patience=2)
             for loss in (0.9, 0.8, 0.85, 0.7, 0.75, 0.76)]
    assert bests == [True, True, False, True, False, False]
    assert state["best_epoch"] == 4 and state["best_loss"] == 0.7
    assert state["stopped"] and state["epochs_done"] == 6
    free = new_state("sha256:x", None)
    for loss in (0.5, 0.6, 0.7, 0.8):
        record_epoch(free, 1.0, loss, None, 0.01, patience=None)
    assert not free["stopped"] and free["best_epoch"] == 1


def make_examples(work, count=12):
    """Demo X-rays with their labels: 8 train, 4 validation (both classes in each)."""
    import csv

    with open(os.path.join(DEMO, "labels.csv"), newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["image"])
    by_class = [[r for r in rows if r["abnormal"] == c] for c in ("0", "1")]
    chosen = [r for pair in zip(*by_class) for r in pair][:count]
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    examples = []
    for i, row in enumerate(chosen):
        path = os.path.join(work, "images", row["image"])
        shutil.copy(os.path.join(DEMO, "images", row["image"]), path)
        examples.append([path, int(row["abnormal"]), "validation" if i >= count - 4 else "train"])
    with open(os.path.join(work, "examples.json"), "w") as handle:
        json.dump(examples, handle)
    return examples


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted run in this process: (work dir, model, info, examples)."""
    pytest.importorskip("keras")
    from tests.learning.finetune_worker import settings

    from learning.train.finetune import fine_tune

    work = str(tmp_path_factory.mktemp("finetune"))
    rows = make_examples(work)
    model, info = fine_tune(*zip(*rows), settings(), (5,), image_size=32, random_weights=True,
                            seed=3, progress=False)
    return work, model, info, rows


def test_only_the_chosen_blocks_and_the_head_train(trained):
    from learning.vgg import build_conv_base

    _, model, info, _ = trained
    start = build_conv_base(None, True, 3, 32, "block5_conv3")  # the same seeded init
    trained_base = model.get_layer("vgg16_head")  # conv base layers, then the head model
    for layer in start.layers:
        if not layer.weights:
            continue
        before, after = layer.get_weights()[0], trained_base.get_layer(layer.name).get_weights()[0]
        if layer.name.startswith("block5"):
            assert np.abs(after - before).max() > 1e-6, layer.name
        else:
            np.testing.assert_array_equal(after, before, err_msg=layer.name)
    assert info["epochs_run"] == 3 and info["n_train"] == 8 and info["n_validation"] == 4
    assert info["train_blocks"] == [5] and info["seconds_per_image_epoch"] > 0
    assert len(info["history"]["val_loss"]) == 3 and 1 <= info["best_epoch"] <= 3


def test_the_trained_model_is_a_classifier_keras_file(trained, tmp_path):
    """export.py's contract: RGB pixels (N, S, S, 3) 0..255 -> 2 logits, plain load_model."""
    import keras

    from learning.export import save_keras
    from learning.vgg import load_image

    work, model, _, rows = trained
    save_keras(model, str(tmp_path / "classifier.keras"))
    loaded = keras.models.load_model(str(tmp_path / "classifier.keras"))
    assert tuple(loaded.input.shape) == (None, 32, 32, 3) and tuple(loaded.output.shape) == (
        None, 2)
    pixels = np.stack([load_image(r[0], 32) for r in rows[:3]]).astype("float32")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0),
                               rtol=1e-5, atol=1e-5)


def _worker(work, *extra, backend=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    if backend:
        env["KERAS_BACKEND"] = backend
    return subprocess.Popen([sys.executable, WORKER, work, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_training_resumes_after_a_sigkill_and_ends_where_an_uninterrupted_run_ends(trained):
    """The reference run (this process) loads images in 1 thread, the killed and the resumed
    runs in 2: the weights must not depend on the loader either."""
    work, model, _, rows = trained
    run = os.path.join(work, "killed")
    os.makedirs(run)
    with open(os.path.join(run, "examples.json"), "w") as handle:
        json.dump(rows, handle)
    checkpoint = os.path.join(run, "checkpoint.npz")

    stalled = _worker(run, "--stall-epoch", "2", "--stall-batch", "1")
    deadline = time.monotonic() + 240
    while not os.path.exists(os.path.join(run, "stalled")):
        assert stalled.poll() is None, stalled.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the worker never reached epoch 3"
        time.sleep(0.2)
    stalled.send_signal(signal.SIGKILL)  # in the middle of epoch 3, batch 1 being loaded
    stalled.communicate()
    assert stalled.returncode == -signal.SIGKILL
    with np.load(checkpoint) as saved:
        state = json.loads(str(saved["state"]))
    assert state["epochs_done"] == 2 and len(state["history"]["loss"]) == 2

    resumed = _worker(run)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resuming from" in stderr and "after epoch 2" in stderr
    out = np.load(os.path.join(run, "tensorflow", "logits.npz"))
    assert int(out["resumed_from"]) == 2 and int(out["epochs_run"]) == 3
    weights = np.load(os.path.join(run, "tensorflow", "weights.npz"))
    expected = model.get_weights()
    assert len(weights.files) == len(expected)
    for i, value in enumerate(expected):  # the uninterrupted run's final weights, to rounding
        np.testing.assert_allclose(weights[f"arr_{i}"], value, rtol=1e-5, atol=1e-6)


@pytest.mark.backend
def test_fine_tuning_runs_under_jax_and_its_classifier_loads_under_tensorflow(trained):
    pytest.importorskip("jax")
    import keras

    work, _, _, rows = trained
    run = os.path.join(work, "jax-run")
    os.makedirs(run)
    with open(os.path.join(run, "examples.json"), "w") as handle:
        json.dump(rows, handle)
    done = _worker(run, "--epochs", "1", backend="jax")
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr[-3000:]
    from learning.store.image_batches import ImageBatches

    loaded = keras.models.load_model(os.path.join(run, "jax", "classifier.keras"))
    val = ImageBatches([r[0] for r in rows if r[2] == "validation"],
                       [r[1] for r in rows if r[2] == "validation"], 32, 4)
    theirs = np.load(os.path.join(run, "jax", "logits.npz"))["logits"]
    np.testing.assert_allclose(loaded.predict(val, verbose=0), theirs, rtol=1e-4, atol=1e-4)
    assert np.isfinite(theirs).all() and theirs.shape == (4, 2)


def test_argparse_type_is_importable_without_keras():
    """Stage 5 parses --train-blocks before importing Keras (a bad flag answers at once)."""
    code = ("import sys; from learning.train.finetune import train_blocks_type; "
            "print(train_blocks_type('4,5')); print('keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.join(os.path.dirname(__file__), "..", ".."), timeout=60)
    assert done.stdout.split() == ["(4,", "5)", "False"], done.stderr
