"""End to end: run_pipeline.sh --demo on the bundled NIH images, offline, in a temp dir.

The weights URL points at a closed local port, so stage 1 fails the way it does on a machine
without internet and the demo falls back to random weights (loudly). Then: every stage's outputs
exist and are consistent; the terminal carries no TensorFlow chatter; a second run skips every
stage (the data folder's name has a space); a changed stage-6 parameter re-runs stage 6 only; a
run killed mid-stage recovers. The fast cases check the command line and the parameters file
without running a model.
"""
import csv
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from learning import safe_pickle
from scraper.schema import load_descriptions

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo" / "nih-24"
STAGES = ("download", "scrape", "features", "examples", "train", "visualize")


def closed_port_url():
    with socket.socket() as sock:  # bind then close: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/vgg16_notop.h5"


def pipeline_env():
    env = dict(os.environ)
    env["CXR_VENV"] = sys.prefix  # the venv running the tests already has everything
    env["CXR_WEIGHTS_URL"] = closed_port_url()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the user's default: the pipeline itself keeps quiet
    return env


def run_pipeline(data_dir, *args, check=True, demo=True):
    result = subprocess.run([str(ROOT / "run_pipeline.sh"), str(data_dir),
                             *(["--demo"] if demo else []), *args],
                            env=pipeline_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("pipeline") / "my data"  # a space: quoted everywhere
    first = run_pipeline(data)
    return data, first


def test_demo_produces_every_stage_output(demo_run):
    data, first = demo_run
    assert "RANDOM VGG16 WEIGHTS" in first.stderr
    assert "could not be had" in first.stderr
    assert not (data / "vgg16.weights.h5").exists()
    # A quiet terminal: no TensorFlow/absl chatter, no warning the pipeline causes itself,
    # retry waits announced, progress as plain lines (stderr is a pipe here, not a terminal).
    for chatter in ("oneDNN", "absl", "cpu_feature_guard", "I0000", "W0000", "E0000",
                    "ignoring the weights file"):
        assert chatter not in first.stderr + first.stdout, chatter
    assert "retry 5 of 5 in 8.0 s" in first.stderr and "\r" not in first.stderr

    with open(DEMO / "labels.csv", newline="") as handle:
        truth = {row["image"]: ("abnormal" if row["abnormal"] == "1" else "normal")
                 for row in csv.DictReader(handle)}
    records = load_descriptions(data / "images-description.json")
    assert {r["name"]: r["label"] for r in records} == truth
    assert sum(bool(r["boxes"]) for r in records) == 8
    assert all((data / r["image"]).is_file() for r in records)

    features = safe_pickle.load(data / "transfer_features.pickle", kind="cxr-features/2")
    assert sorted(features["names"]) == sorted(truth)
    assert tuple(features["shape"]) == (14, 14, 512)  # block4_pool at 224 px
    assert features["dtype"] == "float16" and sum(s["rows"] for s in features["shards"]) == 24
    assert features["params"]["weights"] == "random:seed=0"

    training = safe_pickle.load(data / "training.pickle", kind="cxr-examples/2")
    testing = safe_pickle.load(data / "testing.pickle", kind="cxr-examples/2")
    examples = json.loads((data / "examples.json").read_text())
    assert sorted(examples) == sorted(testing["names"])
    assert len(training["names"]) + len(testing["names"]) == 24
    assert not set(training["groups"]) & set(testing["groups"])  # patient-level split

    metrics = json.loads((data / "model" / "metrics.json").read_text())
    assert metrics["n_test"] == len(examples)
    assert any("tiny test set" in w for w in metrics["warnings"])  # 8 demo test images
    for name in ("head.keras", "classifier.keras", "roc.png", "training_curve.png",
                 "config.json", "test_predictions.csv"):
        assert (data / "model" / name).is_file(), name
    assert "WARNING: tiny test set: 8 images" in first.stderr

    index = json.loads((data / "results" / "index.json").read_text())
    assert {entry["name"] for entry in index} == set(examples)
    html = (data / "results" / "index.html").read_text()
    assert "random" in html.lower()
    for entry in index:
        for path in entry["files"].values():
            assert (data / "results" / path).is_file(), path


def test_second_run_skips_every_stage(demo_run):
    data, first = demo_run
    second = run_pipeline(data)
    for number, name in enumerate(STAGES, start=1):
        assert f"stage {number} ({name})" in second.stderr
    skipped = [line for line in second.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 6, second.stderr


def test_from_stage_reruns_that_stage_only_when_it_is_last(demo_run):
    data, _ = demo_run
    model_before = (data / "model" / "head.keras").stat().st_mtime_ns
    index_before = (data / "results" / "index.json").stat().st_mtime_ns
    third = run_pipeline(data, "--from", "visualize")
    assert "stage 5 (train): before --from 6, not checked" in third.stderr
    assert "stage 6 (visualize): cxr-visualize" in third.stderr
    assert (data / "model" / "head.keras").stat().st_mtime_ns == model_before
    assert (data / "results" / "index.json").stat().st_mtime_ns > index_before


def test_a_stage_6_parameter_reruns_stage_6_only(demo_run):
    """params.toml's [visualize] table plus a --set override: stages 1-5 skipped."""
    data, _ = demo_run
    model_before = (data / "model" / "head.keras").stat().st_mtime_ns
    (data / "params.toml").write_text('[visualize]\nmethod = "grad-cam"\n')
    limit = ["--limit", "3"] if "--limit" in visualize_flags() else []
    run = run_pipeline(data, "--set", "visualize.smooth=0", *limit)
    for number, name in enumerate(STAGES[1:5], start=2):
        assert f"stage {number} ({name}): up to date, skipped" in run.stderr
    assert "--method grad-cam --smooth 0" in run.stderr  # the stage's own command line
    assert (data / "model" / "head.keras").stat().st_mtime_ns == model_before
    index = json.loads((data / "results" / "index.json").read_text())
    assert {entry["method"] for entry in index} == {"grad-cam"}
    if limit:
        assert len(index) == 3


def visualize_flags():
    from learning.visualization import get_args_parser

    return {flag for action in get_args_parser()._actions for flag in action.option_strings}


def fast_run(*args, data=None, cwd=None):
    """run_pipeline.sh with arguments that must be refused before any stage runs."""
    return subprocess.run([str(ROOT / "run_pipeline.sh"), *([str(data)] if data else []), *args],
                          env=pipeline_env(), capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.mark.parametrize("args", [["mydata", "--ver"], ["mydata", "--vers"], ["--he"],
                                  ["mydata", "--", "--version"], ["mydata", "--", "-h"],
                                  ["mydata", "--source", "folder", "--images", "x", "--lab", "l"]])
def test_abbreviations_and_help_words_run_nothing(tmp_path, args):
    """No abbreviation is taken for a flag, and no printed text is ever run as a command
    (`mydata --ver` used to print "cxr-scrape 0.1.0", then run it: a folder 0.1.0/ appeared
    and an Open-i lookup started)."""
    result = fast_run(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("run_pipeline: error: ") and \
        len(result.stderr.splitlines()) == 1, result.stderr
    assert os.listdir(tmp_path) == [] and not (ROOT / "0.1.0").exists()


@pytest.mark.parametrize("args, stage, message", [
    (["--seed", "9999999999"], 4, "argument --seed: invalid seed '9999999999'"),
    (["--set", "visualize.method=deeplfit"], 6, "deeplfit"),
    (["--set", "train.epochs=-5"], 5, "-5"),
    (["--set", "train.epochs=5", "--set", "visualize.method=deeplfit"], 6, "deeplfit"),
    (["--set", "train.learning-rate=inf"], 5, "inf"),
])
def test_every_stage_command_is_checked_before_any_runs(tmp_path, args, stage, message):
    """Issue 17 defect 5: a value any stage refuses stops the pipeline before stage 1, with the
    stage's own parser on its complete command line (positionals and the pipeline's flags)."""
    from learning import pipeline_params

    name = pipeline_params.STAGES[stage - 1][1]
    flags = {"method": ["--method", "deeplfit"], "epochs": ["--epochs", "-5"],
             "learning-rate": ["--learning-rate", "inf"]}
    for key, words in flags.items():  # values only the stages' own argparse types can refuse
        if f"{name}.{key}=" in " ".join(args):
            positionals = [a for a in pipeline_params.stage_parser(name)._actions
                           if not a.option_strings]
            try:
                pipeline_params.stage_parser(name).parse_args(["x"] * len(positionals) + words)
            except Exception:
                break
            pytest.skip(f"cxr-{name}'s parser does not refuse {words} yet (its argparse type "
                        f"comes with helper store/stage6's change)")
    data = tmp_path / "d"
    result = fast_run("--demo", *args, data=data)
    # a --set value is checked with the table's parameters (exit 1), a flag on the command
    # line by the stage's parser on its whole command line (exit 2): both before any stage
    assert result.returncode in (1, 2), result.stderr
    assert (f"stage {stage} ({name}) would fail" in result.stderr or
            f"parameters [{name}]" in result.stderr) and message in result.stderr
    assert "== stage" not in result.stderr and not data.exists()


def test_paths_are_the_callers_and_stamps_are_only_read_as_files(tmp_path):
    """Relative paths are taken from the folder the user stands in (not the repository); a FIFO
    or a hard link planted as a stage's stamp is neither read (no hang) nor written through."""
    work = tmp_path / "work"
    (work / "xrays").mkdir(parents=True)
    for name in sorted(os.listdir(DEMO / "images"))[:3]:
        shutil.copy2(DEMO / "images" / name, work / "xrays" / name)
    args = ["d", "--source", "folder", "--images", "xrays", "--random-weights",
            "--set", "features.max-image-pixels=1"]  # stage 3 then fails fast: stage 2 only
    first = fast_run(*args, cwd=work)
    assert "stage 2 (scrape): cxr-scrape d --source folder --images xrays" in first.stderr
    assert len(load_descriptions(work / "d" / "images-description.json")) == 3
    assert not (ROOT / "d").exists() and not (ROOT / "xrays").exists()
    stamp = work / "d" / ".stamps" / "2-scrape"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for plant in (lambda: os.mkfifo(stamp), lambda: os.link(victim, stamp)):
        stamp.unlink()
        plant()
        again = fast_run(*args, cwd=work)  # 120 s timeout: a hang fails
        assert "stage 2 (scrape): cxr-scrape" in again.stderr  # an unreadable stamp: re-run
        assert stamp.is_file() and stamp.stat().st_nlink == 1
        assert victim.read_text() == "precious"


def test_unknown_options_and_parameters_are_refused_at_once(tmp_path):
    data = tmp_path / "my data"
    result = fast_run("--demo", "--random-weight", data=data)
    assert result.returncode == 2 and "unknown option --random-weight" in result.stderr
    result = fast_run("--demo", "--from", "visualize", "--method", "grad-cam", data=data)
    assert result.returncode == 2 and "--set visualize.method=VALUE" in result.stderr
    data.mkdir()
    (data / "params.toml").write_text("[visualize]\nmehtod = 'grad-cam'\n")
    result = fast_run("--demo", data=data)
    assert result.returncode != 0
    assert "unknown parameter [visualize] mehtod: cxr-visualize has no --mehtod" in result.stderr
    assert "== stage" not in result.stderr and sorted(os.listdir(data)) == ["params.toml"]
    help_text = fast_run("--help").stdout
    assert "params.toml" in help_text and 'method = ["deeplift", "grad-cam"]' in help_text
    assert fast_run("--version").stdout.startswith("run_pipeline ")


def test_images_added_to_a_folder_with_a_space_are_picked_up(tmp_path):
    """Stage 2 only (stage 3 is made to fail fast: a 1-pixel image limit refuses every image;
    a too small image size is now refused at parse time, before stage 2): an unchanged
    folder is skipped, an image added to "my xrays" re-runs stage 2."""
    xrays = tmp_path / "my xrays"
    xrays.mkdir()
    names = sorted(os.listdir(DEMO / "images"))[:5]
    for name in names[:4]:
        shutil.copy2(DEMO / "images" / name, xrays / name)
    data = tmp_path / "my data"
    args = ["--source", "folder", "--images", str(xrays), "--random-weights",
            "--set", "features.max-image-pixels=1"]
    first = run_pipeline(data, *args, check=False, demo=False)
    assert "stage 2 (scrape): cxr-scrape" in first.stderr and first.returncode != 0
    assert "could be read" in first.stderr and "--max-image-pixels" in first.stderr
    again = run_pipeline(data, *args, check=False, demo=False)
    assert "stage 2 (scrape): up to date, skipped" in again.stderr
    shutil.copy2(DEMO / "images" / names[4], xrays / names[4])  # keeps its old mtime
    third = run_pipeline(data, *args, check=False, demo=False)
    assert "stage 2 (scrape): cxr-scrape" in third.stderr
    assert len(load_descriptions(data / "images-description.json")) == 5


def test_killed_run_recovers(tmp_path):
    data = tmp_path / "data"
    env = pipeline_env()
    proc = subprocess.Popen([str(ROOT / "run_pipeline.sh"), str(data), "--demo"], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    seen = []
    for line in proc.stderr:  # kill while stage 3 runs, after some features were computed
        seen.append(line)
        if "stage 3 (features): cxr-extract-features" in line or time.monotonic() > deadline:
            time.sleep(6)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert any("stage 3" in line for line in seen), "".join(seen)
    assert not (data / "examples.json").exists()
    leftovers = [p for p in data.rglob("*") if p.name.endswith(".part")]
    assert len(leftovers) <= 1  # at most the temp file the kill interrupted; never a target

    again = run_pipeline(data)
    assert "stage 2 (scrape): up to date, skipped" in again.stderr
    assert (data / "results" / "index.html").is_file()
    features = safe_pickle.load(data / "transfer_features.pickle", kind="cxr-features/2")
    assert len(features["names"]) == 24
