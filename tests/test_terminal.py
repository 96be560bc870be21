"""A quiet, honest terminal: no TensorFlow start-up chatter, errors before TensorFlow loads,
progress as plain lines in logs, announced retry waits."""
import io
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import requests

from scraper.cli import progress_bar
from scraper.http_client import make_session


def python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=environ)


def test_tensorflow_import_prints_nothing_and_leaves_onednn_alone():
    """Quiet on any x86-64 CPU, whether TensorFlow turns oneDNN on by itself (AVX-512 CPUs) or
    not (e.g. AMD EPYC without AVX-512), and whatever TF_ENABLE_ONEDNN_OPTS the user set:
    `learning` filters the chatter and never changes that choice (the suite is also run with
    TF_ENABLE_ONEDNN_OPTS=0 exported)."""
    result = python("""
        import os, learning, keras, tensorflow as tf
        print(os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"))
        print(float(keras.layers.Dense(1)(tf.ones((1, 2))).shape[0]))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no "oneDNN custom operations are on", no absl/CPU notice
    assert result.stdout.split() == [os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"), "1.0"]


def test_tensorflow_chatter_is_shown_when_asked_for():
    """TF_CPP_MIN_LOG_LEVEL=0 shows everything. oneDNN is forced on so that TensorFlow has a
    notice to print on every CPU (without AVX-512 it does not turn oneDNN on by itself)."""
    result = python("import learning, tensorflow", TF_CPP_MIN_LOG_LEVEL="0",
                    TF_ENABLE_ONEDNN_OPTS="1")
    assert result.returncode == 0 and "oneDNN custom operations are on" in result.stderr


def test_errors_that_need_no_model_come_before_tensorflow(tmp_path):
    """Each stage with a missing input: one error line and TensorFlow never imported."""
    (tmp_path / "images").mkdir()
    (tmp_path / "examples.json").write_text(json.dumps(["a.png"]))
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "d.json").write_text("[]")
    (tmp_path / "head-only").mkdir()  # a model folder without classifier.keras needs weights
    (tmp_path / "head-only" / "config.json").write_text(json.dumps({"feature_params": {
        "weights": "sha256:0", "image_size": 32, "layer": "block5_pool", "pooling": "none"}}))
    cases = [
        ("learning.transfer_feature_extraction",
         [str(tmp_path / "images"), str(tmp_path / "f.pickle"), str(tmp_path / "no.h5")],
         "VGG16 weights file not found"),
        ("learning.learning_examples_preparing",
         [str(tmp_path / "d.json"), str(tmp_path / "none.pickle"), str(tmp_path / "a.pickle"),
          str(tmp_path / "b.pickle"), str(tmp_path / "c.json")],
         "made by stage 3, cxr-extract-features"),
        ("learning.fully_connected_layers_training",
         [str(tmp_path / "none.pickle"), str(tmp_path / "t.pickle"), str(tmp_path / "m")],
         "made by stage 4, cxr-prepare-examples"),
        ("learning.visualization",
         ["w", str(tmp_path / "no-model"), str(tmp_path / "examples.json"),
          str(tmp_path / "images"), str(tmp_path / "r"), "--random-weights"],
         "model directory not found"),
        ("learning.visualization",
         [str(tmp_path / "no.h5"), str(tmp_path / "head-only"), str(tmp_path / "examples.json"),
          str(tmp_path / "images"), str(tmp_path / "r")], "VGG16 weights file not found"),
        ("learning.visualization", ["w", "m", "e", "i", "r", "--method", "paint"],
         "invalid method 'paint'"),
    ]
    result = python(f"""
        import importlib, io, contextlib, json, sys
        from scraper.cli import run_main
        out = []
        for module, argv, _ in {cases!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = run_main(importlib.import_module(module).main, "x", argv)
            out.append([rc, err.getvalue()])
        print(json.dumps([out, "tensorflow" in sys.modules]))
    """)
    assert result.returncode == 0, result.stderr
    outcomes, tensorflow_loaded = json.loads(result.stdout)
    for (module, _, message), (rc, err) in zip(cases, outcomes):
        errors = [line for line in err.splitlines() if line.startswith("x: error:")]
        assert rc != 0 and len(errors) == 1 and message in errors[0], (module, err)
        assert "Traceback" not in err
    assert not tensorflow_loaded


class Log(io.StringIO):
    def isatty(self):
        return False


def test_progress_in_a_log_is_plain_periodic_lines(monkeypatch):
    monkeypatch.setenv("CXR_PROGRESS_INTERVAL", "0")
    log = Log()
    for _ in progress_bar(range(5), desc="features", unit="img", file=log, leave=False):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("features:   0%") and lines[-1].startswith("features: 100%")
    assert len(lines) == len(set(lines)) and len(lines) >= 3  # one line per refresh, no repeat
    monkeypatch.setenv("CXR_PROGRESS_INTERVAL", "3600")  # a slow loop: first and last only
    log = Log()
    for _ in progress_bar(range(1000), desc="x", file=log):
        pass
    assert len(log.getvalue().splitlines()) == 2


def test_retry_waits_are_announced(capsys):
    with socket.socket() as sock:  # bind then close: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    session = make_session(retries=3, backoff=0.01, announce=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"http://127.0.0.1:{port}/w.h5", timeout=5)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("; ")[1] for line in lines] == [
        "retry 2 of 3 in 0.0 s", "retry 3 of 3 in 0.0 s"]  # retry 1 is immediate
    assert all("refused" in line.lower() for line in lines)
    quiet = make_session(retries=1, backoff=0.01)  # concurrent scrapes stay quiet
    with pytest.raises(requests.exceptions.ConnectionError):
        quiet.get(f"http://127.0.0.1:{port}/w.h5", timeout=5)
    assert capsys.readouterr().err == ""
