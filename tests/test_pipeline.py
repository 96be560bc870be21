"""End to end: run_pipeline.sh --demo on the bundled NIH images, offline, in a temp dir.

The weights URL points at a closed local port, so stage 1 fails the way it does on a machine
without internet and the demo falls back to random weights (loudly). Then: every stage's outputs
exist and are consistent; a second run skips every stage; a run killed mid-stage recovers.
"""
import csv
import json
import os
import pathlib
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
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_pipeline(data_dir, *args, check=True):
    result = subprocess.run([str(ROOT / "run_pipeline.sh"), str(data_dir), "--demo", *args],
                            env=pipeline_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("pipeline") / "data"
    first = run_pipeline(data)
    return data, first


def test_demo_produces_every_stage_output(demo_run):
    data, first = demo_run
    assert "RANDOM VGG16 WEIGHTS" in first.stderr
    assert "could not be had" in first.stderr
    assert not (data / "vgg16.weights.h5").exists()

    with open(DEMO / "labels.csv", newline="") as handle:
        truth = {row["image"]: ("abnormal" if row["abnormal"] == "1" else "normal")
                 for row in csv.DictReader(handle)}
    records = load_descriptions(data / "images-description.json")
    assert {r["name"]: r["label"] for r in records} == truth
    assert sum(bool(r["boxes"]) for r in records) == 8
    assert all((data / r["image"]).is_file() for r in records)

    features = safe_pickle.load(data / "transfer_features.pickle", kind="cxr-features/1")
    assert sorted(features["names"]) == sorted(truth)
    assert features["features"].shape == (24, 14, 14, 512)  # block4_pool at 224 px
    assert features["params"]["weights"] == "random:seed=0"

    training = safe_pickle.load(data / "training.pickle", kind="cxr-examples/1")
    testing = safe_pickle.load(data / "testing.pickle", kind="cxr-examples/1")
    examples = json.loads((data / "examples.json").read_text())
    assert sorted(examples) == sorted(testing["names"])
    assert len(training["names"]) + len(testing["names"]) == 24
    assert not set(training["groups"]) & set(testing["groups"])  # patient-level split

    metrics = json.loads((data / "model" / "metrics.json").read_text())
    assert metrics["n_test"] == len(examples)
    for name in ("head.keras", "roc.png", "training_curve.png", "config.json"):
        assert (data / "model" / name).is_file(), name

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
    features = safe_pickle.load(data / "transfer_features.pickle", kind="cxr-features/1")
    assert len(features["names"]) == 24
