"""Stages 4 and 5 and the safe pickle loader against mistakes and crafted input (issue 8).

Every attack ends in one line and a non-zero exit, with the inputs byte for byte unchanged
and nothing written; crafted pickles are refused before they can build anything big.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from learning import safe_pickle
from learning.fully_connected_layers_training import main as train_main
from learning.learning_examples_preparing import main as prepare_main
from scraper.cli import UserError, run_main
from scraper.schema import make_record, save_descriptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARAMS = {"weights": "random:seed=0", "image_size": 32, "layer": "block5_pool",
          "pooling": "none", "preprocessing": "caffe", "precision": "float32"}


def features_dict(n, features=None, names=None, params=PARAMS):
    rng = np.random.default_rng(0)
    return {"format": "cxr-features/1",
            "names": [f"r{i}.png" for i in range(n)] if names is None else names,
            "features": (rng.normal(size=(n, 2, 2, 4)).astype(np.float32)
                         if features is None else features),
            "content_hashes": ["x"] * n, "params": params, "failures": []}


@pytest.fixture
def stage4(tmp_path):
    """images-description.json (20 images, 10 reports, both labels) + features pickle."""
    records = [make_record(f"r{i}.png", "folder", label="abnormal" if i % 4 < 2 else "normal",
                           report_id=f"p{i // 2}") for i in range(20)]
    descriptions = tmp_path / "images-description.json"
    save_descriptions(descriptions, records)
    features = tmp_path / "transfer_features.pickle"
    safe_pickle.dump(features_dict(20), features)
    return descriptions, features


def contents(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def one_line(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---- stage 4: outputs may never overwrite inputs or each other -------------------------------

@pytest.mark.parametrize("outputs, message", [
    (("{f}", "testing.pickle", "examples.json"),
     "the training output {f} is the same file as the features: refusing to overwrite an "
     "input; nothing was written"),
    (("training.pickle", "training.pickle", "examples.json"),
     "the testing output {t}/training.pickle is the same file as the training output"),
    (("training.pickle", "testing.pickle", "{d}"),
     "the examples output {d} is the same file as the descriptions"),
    (("link.pickle", "testing.pickle", "examples.json"),  # a symlink to the features
     "the training output {t}/link.pickle is the same file as the features ({f})"),
    (("hard.pickle", "testing.pickle", "examples.json"),  # a hard link to the features
     "the training output {t}/hard.pickle is the same file as the features ({f})"),
    (("examples.json", "training.pickle", "testing.pickle"),  # shifted by one
     "the training output {t}/examples.json should end in .pickle or .pkl"),
    (("training.pickle", "testing.pickle", "model"),
     "the examples output {t}/model should end in .json"),
])
def test_outputs_equal_to_inputs_or_each_other_are_refused(stage4, tmp_path, capsys, outputs,
                                                           message):
    descriptions, features = stage4
    os.symlink(features, tmp_path / "link.pickle")
    os.link(features, tmp_path / "hard.pickle")
    before = contents(tmp_path)
    fill = dict(f=features, d=descriptions, t=tmp_path)
    paths = [o.format(**fill) if "{" in o else str(tmp_path / o) for o in outputs]
    code = run_main(prepare_main, "cxr-prepare-examples",
                    [str(descriptions), str(features)] + paths)
    assert code == 1
    assert one_line(capsys).startswith("cxr-prepare-examples: error: " + message.format(**fill))
    assert contents(tmp_path) == before  # nothing written, nothing overwritten


@pytest.mark.parametrize("change, message", [
    (dict(features=np.full((20, 2, 2, 4), "a")),
     "'features' holds <U1 values, expected numbers"),
    (dict(names=[[f"r{i}"] for i in range(20)]), "'names' must be a list of strings"),
    (dict(params=["weights", "x"]), "'params' is list, expected a dict"),
    (dict(features=np.full((20, 2, 2, 4), np.nan, np.float32)),
     "'features' has NaN or infinite values in 20 of 20 rows (first: row 0)"),
])
def test_well_formed_pickle_with_wrong_contents_is_one_line(stage4, tmp_path, capsys, change,
                                                            message):
    descriptions, features = stage4
    safe_pickle.dump(features_dict(20, **change), features)
    code = run_main(prepare_main, "cxr-prepare-examples",
                    [str(descriptions), str(features)] +
                    [str(tmp_path / n) for n in ("tr.pickle", "te.pickle", "ex.json")])
    assert code == 1 and message in one_line(capsys)
    assert not (tmp_path / "tr.pickle").exists()


def test_stage4_negative_seed_is_one_line(stage4, tmp_path, capsys):
    descriptions, features = stage4
    code = run_main(prepare_main, "cxr-prepare-examples",
                    [str(descriptions), str(features)] +
                    [str(tmp_path / n) for n in ("tr.pickle", "te.pickle", "ex.json")] +
                    ["--seed", "-5"])
    assert code == 2 and ("argument --seed: invalid seed '-5': must be between 0 and "
                          "4,294,967,295") in one_line(capsys)


# ---- stage 5 ---------------------------------------------------------------------------------

def examples(split, n=40, features=None):
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 2
    return {"format": "cxr-examples/1", "split": split,
            "names": [f"{split}{i}.png" for i in range(n)],
            "features": (rng.normal(size=(n, 2, 2, 4)).astype(np.float32) + labels[:, None, None,
                                                                                    None]
                         if features is None else features),
            "labels": labels.astype(np.int64), "groups": [f"{split}-p{i}" for i in range(n)],
            "subset": ["validation" if i % 5 == 0 and split == "training" else
                       ("train" if split == "training" else "test") for i in range(n)],
            "feature_params": PARAMS, "split_params": {"seed": 0}, "class_names": ["normal",
                                                                                   "abnormal"]}


@pytest.fixture
def stage5(tmp_path):
    training, testing = tmp_path / "training.pickle", tmp_path / "testing.pickle"
    safe_pickle.dump(examples("training"), training)
    safe_pickle.dump(examples("testing"), testing)
    return training, testing


def test_nan_features_are_refused_before_training(stage5, tmp_path, capsys):
    training, testing = stage5
    bad = examples("training")
    bad["features"][3, 1, 0, 2] = np.nan
    bad["features"][7] = np.inf
    safe_pickle.dump(bad, training)
    code = run_main(train_main, "cxr-train", [str(training), str(testing),
                                              str(tmp_path / "model"), "--epochs", "1"])
    assert code == 1
    assert one_line(capsys) == (f"cxr-train: error: {training}: 'features' has NaN or infinite "
                                f"values in 2 of 40 rows (first: row 3); re-run the stage that "
                                f"made them")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("model, message", [
    ("training.pickle", "the model folder must be a folder, but {t}/training.pickle is a file"),
    ("model.json", "the model folder {t}/model.json looks like a file name, not a folder"),
])
def test_model_folder_may_not_be_an_input(stage5, tmp_path, capsys, model, message):
    before = contents(tmp_path)
    code = run_main(train_main, "cxr-train", [str(stage5[0]), str(stage5[1]),
                                              str(tmp_path / model)])
    assert code == 1 and one_line(capsys).startswith(
        "cxr-train: error: " + message.format(t=tmp_path))
    assert contents(tmp_path) == before


def test_stage5_seed_is_range_checked(stage5, tmp_path, capsys):
    code = run_main(train_main, "cxr-train", [str(stage5[0]), str(stage5[1]),
                                              str(tmp_path / "model"), "--seed", "-5"])
    assert code == 2 and "argument --seed: invalid seed '-5'" in one_line(capsys)


# ---- the safe loader: nothing big from something small ----------------------------------------

class _Reduce:
    """Pickles as func(*args) (plus a BUILD `state`): how a crafted pickle is written."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args,
                                                                  self.state)


def _reconstruct():
    from numpy._core.multiarray import _reconstruct as reconstruct
    return reconstruct


BOMBS = {
    "bytes(2**31)": (pickle.dumps(_Reduce(bytes, (2 ** 31,)), protocol=4),
                     "it asks to build bytes(2147483648), a run of zero bytes"),
    "list(range(10**10))": (pickle.dumps(_Reduce(list, (range(10 ** 10),)), protocol=4),
                            "it asks to build list() from range"),
    "ndarray((10**5, 10**5))": (pickle.dumps(_Reduce(np.ndarray, ((10 ** 5, 10 ** 5),)),
                                             protocol=4),
                                "it asks to build numpy.ndarray called directly"),
    "10**12 zero-byte elements": (
        pickle.dumps(_Reduce(_reconstruct(), (np.ndarray, (0,), b"b"),
                             (1, (10 ** 12,), np.dtype([]), False, b"")), protocol=4),
        "it asks to build numpy arrays of dtype [] (only numbers and strings)"),
}


def test_small_pickles_cannot_expand(tmp_path):
    """Each crafted pickle is under 200 bytes; loading it in a child capped at 1 GB of address
    space must give the refusal, not a MemoryError or a 2 GB allocation."""
    for name, (data, _) in BOMBS.items():
        assert len(data) < 200, name
        (tmp_path / (name + ".pickle")).write_bytes(data)
    code = ("import sys, glob, resource\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from learning import safe_pickle\n"
            "from scraper.cli import UserError\n"
            f"for path in sorted(glob.glob({str(tmp_path)!r} + '/*.pickle')):\n"
            "    try:\n"
            "        safe_pickle.load(path)\n"
            "        print('LOADED', path, file=sys.stderr)\n"
            "    except UserError as error:\n"
            "        print(error, file=sys.stderr)\n")
    # numpy/BLAS reserve address space at import: the cap is set before, so it must fit in 1 GB
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT,
                                                          OPENBLAS_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    expected = sorted(BOMBS.items(), key=lambda item: item[0])
    assert len(lines) == len(expected), done.stderr
    for line, (name, (_, message)) in zip(lines, sorted(
            expected, key=lambda item: str(tmp_path / (item[0] + ".pickle")))):
        assert line.startswith(f"refusing to load pickle {tmp_path}/{name}.pickle: {message}"), \
            line


def _deep(depth):
    # EMPTY_LIST x depth, then APPEND x (depth - 1): a list nested `depth` levels, built
    # without recursion (comparing or printing it later raises RecursionError)
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."


@pytest.mark.parametrize("data, message", [
    (_deep(100_000), "is nested too deeply; not a pipeline pickle"),
    (pickle.dumps(_Reduce(float, (10 ** 400,)), protocol=4),
     "corrupt or not a pipeline pickle (OverflowError: int too large to convert to float)"),
    (pickle.dumps(_Reduce(str, (b"a", "no-such-codec")), protocol=4),
     "corrupt or not a pipeline pickle (LookupError: unknown encoding: no-such-codec)"),
    (pickle.dumps(_Reduce(_reconstruct(), (np.ndarray, (0,), b"b"),
                          (1, (2,), np.dtype(object), False, ["a", "b"])), protocol=4),
     "it asks to build numpy dtype object"),
])
def test_odd_pickles_are_one_line(tmp_path, data, message):
    path = tmp_path / "odd.pickle"
    path.write_bytes(data)
    with pytest.raises(UserError) as caught:
        safe_pickle.load(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_file_size_is_capped_before_reading(tmp_path):
    path = tmp_path / "big.pickle"
    safe_pickle.dump({"format": "x", "a": np.zeros(1000)}, path)
    with pytest.raises(UserError, match=r"pickle is 8,\d{3} bytes, more than the 4,096 allowed"):
        safe_pickle.load(path, max_bytes=4096)


def test_fifo_pickle_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "features.pickle")
    done = subprocess.run(
        [sys.executable, "-c", "from learning import safe_pickle\n"
         f"safe_pickle.load({str(tmp_path / 'features.pickle')!r}, 'features pickle')"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=30)
    assert "features pickle is not a regular file (a FIFO/named pipe)" in done.stderr


def test_over_long_output_name_is_one_line(stage4, tmp_path, capsys):
    descriptions, features = stage4
    long_name = "t" * 300 + ".pickle"
    code = run_main(prepare_main, "cxr-prepare-examples",
                    [str(descriptions), str(features), str(tmp_path / "tr.pickle"),
                     str(tmp_path / long_name), str(tmp_path / "ex.json")])
    line = one_line(capsys)
    assert code == 1 and line.startswith("cxr-prepare-examples: error: file name too long: ")
    assert line.endswith(f"tttt.pickle ({len(str(tmp_path / long_name))} characters)")
