"""cxr-scrape end to end: dispatch, flag checks, one-line errors, kill -9 and re-run."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest

from scraper import scrape
from scraper.cli import run_main
from scraper.images import check_image_file
from scraper.schema import load_descriptions
from scraper.summary import ScrapeSummary
from tests.scraper.fake_openi import ROOT, FakeOpenI, unused_port


def run_cli(argv, capsys):
    code = run_main(scrape.main, "cxr-scrape", argv)
    return code, capsys.readouterr().err


def run_module(args, timeout=60):
    return subprocess.run([sys.executable, "-m", "scraper.scrape", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_main_scrapes_openi_end_to_end(tmp_path, capsys):
    with FakeOpenI(n_records=6) as server:
        server.fault(server.names[2], "404")
        code, err = run_cli([str(tmp_path), "--base-url", server.base_url, "--no-progress",
                             "--max-rps", "100", "--backoff", "0.01", "--workers", "3"], capsys)
    assert code == 0
    assert re.fullmatch(r"cxr-scrape: 5 saved, 0 already present, 1 failed, 0 skipped, "
                        r"2 unlabelled, \d+\.\d s -> (.*)", err.strip().splitlines()[-1]
                        ).group(1) == str(tmp_path / "images-description.json")
    records = load_descriptions(tmp_path / "images-description.json")
    assert sorted(r["name"] for r in records) == sorted(n for i, n in enumerate(server.names)
                                                         if i != 2)
    failed = json.loads((tmp_path / "images-failures.json").read_text())
    assert [(f["name"], f["reason"]) for f in failed] == [(server.names[2], "HTTP 404 Not Found")]


@pytest.mark.parametrize("argv, message", [
    (["--source", "folder"], "--source folder needs --images DIR"),
    (["--source", "folder", "--images", "x", "--labels", "a.csv", "--normal-class", "n"],
     "--labels and --normal-class are exclusive"),
    (["--source", "folder", "--images", "x", "--limit", "3"],
     "--limit applies to --source openi or archive, not --source folder"),
    (["--source", "archive", "--workers", "3"],
     "--workers applies to --source openi, not --source archive"),
    (["--images", "x"], "--images applies to --source folder, not --source openi"),
    (["--source", "folder", "--images", "x", "--group-column", "patient"],
     "--label-column and --group-column need --labels CSV"),
    (["--limit", "0"], "argument --limit: invalid count '0': must be at least 1"),
    (["--max-rps", "-1"], "argument --max-rps: invalid number '-1': must be positive"),
    (["--source", "web"], "argument --source: invalid choice: 'web'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, argv, message):
    code, err = run_cli([str(tmp_path / "data"), *argv], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("cxr-scrape: error: ") and message in err
    assert not (tmp_path / "data").exists()


def test_missing_data_dir_is_one_line(capsys):
    code, err = run_cli([], capsys)
    assert (code, len(err.splitlines())) == (2, 1)
    assert "the following arguments are required: data_dir" in err


def test_folder_and_archive_dispatch(tmp_path, monkeypatch, capsys):
    calls = []
    fake_folder = types.ModuleType("scraper.folder")
    fake_folder.import_folder = lambda *a, **k: calls.append(("folder", a, k)) or ScrapeSummary()
    fake_archive = types.ModuleType("scraper.archive")
    fake_archive.ARCHIVE_PNG_URL, fake_archive.ARCHIVE_REPORTS_URL = "png-url", "reports-url"
    fake_archive.scrape_archive = lambda *a, **k: calls.append(("archive", a, k)) or ScrapeSummary()
    monkeypatch.setitem(sys.modules, "scraper.folder", fake_folder)
    monkeypatch.setitem(sys.modules, "scraper.archive", fake_archive)
    data = str(tmp_path)
    assert run_cli([data, "--source", "folder", "--images", "imgs", "--labels", "l.csv",
                    "--boxes", "b.csv", "--group-column", "patient_id", "--no-progress"],
                   capsys)[0] == 0
    assert run_cli([data, "--source", "folder", "--images", "imgs", "--normal-class", "ok"],
                   capsys)[0] == 0
    assert run_cli([data, "--source", "archive", "--limit", "5"], capsys)[0] == 0
    assert run_cli([data, "--source", "archive", "--png-archive", "p.tgz",
                    "--reports-archive", "r.tgz"], capsys)[0] == 0
    assert calls == [
        ("folder", (data, "imgs"), dict(labels_csv="l.csv", normal_class=None, boxes_csv="b.csv",
                                        label_column="label", group_column="patient_id",
                                        group_pattern=None, dicom_group="patient",
                                        progress=False, finding_column=None)),
        ("folder", (data, "imgs"), dict(labels_csv=None, normal_class="ok", boxes_csv=None,
                                        label_column="label", group_column="group",
                                        group_pattern=None, dicom_group="patient",
                                        progress=True, finding_column=None)),
        ("archive", (data, "png-url", "reports-url"), dict(limit=5, progress=True)),
        ("archive", (data, "p.tgz", "r.tgz"), dict(limit=None, progress=True)),
    ]


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        scrape.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "(default: https://openi.nlm.nih.gov)" in out
    assert "(default: 8)" in out and "(default: 10.0)" in out


def test_unreachable_server_exits_with_one_line_no_traceback(tmp_path):
    base = f"http://127.0.0.1:{unused_port()}"
    result = run_module([str(tmp_path / "data"), "--base-url", base])
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cxr-scrape: error: cannot reach {base}/api/search")
    assert lines[0].endswith("no internet? use --source archive with local files or "
                             "--source folder")
    assert result.stdout == ""


def test_kill_9_mid_run_leaves_complete_images_and_a_valid_description(tmp_path):
    data = tmp_path / "data"
    images = data / "images"
    with FakeOpenI(n_records=40, page_limit=10, latency=0.2) as server:
        args = [str(data), "--base-url", server.base_url, "--workers", "2", "--max-rps", "50",
                "--no-progress"]
        process = subprocess.Popen([sys.executable, "-m", "scraper.scrape", *args], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=dict(os.environ, PYTHONPATH=ROOT))
        try:
            deadline = time.monotonic() + 30
            # wait for the first checkpoint of the description (every ~2 s), then kill -9
            while not (data / "images-description.json").exists():
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
            time.sleep(0.3)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)

        on_disk = sorted(n for n in os.listdir(images) if not n.startswith("."))
        leftovers = sorted(n for n in os.listdir(images) if n.startswith("."))
        assert 4 <= len(on_disk) < 40
        assert all(n.endswith(".part") for n in leftovers)  # only temp files, never a .png
        for name in on_disk:
            check_image_file(images / name)  # every image under its final name is complete
            assert (images / name).read_bytes() == server.body(name)
        described = [r["name"] for r in load_descriptions(data / "images-description.json")]
        assert described and set(described) <= set(on_disk)

        before = {name: server.count(server.image_path(name)) for name in server.names}
        result = run_module(args)
        assert result.returncode == 0, result.stderr
        assert f"{len(on_disk)} already present" in result.stderr
        # the re-run asked for none of the images the killed run had saved
        assert all(server.count(server.image_path(n)) == before[n] for n in on_disk)
        assert sorted(os.listdir(images)) == sorted(server.names)  # temp files cleaned up
        described = [r["name"] for r in load_descriptions(data / "images-description.json")]
        assert sorted(described) == sorted(server.names)


def test_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "data"
    target.write_text("not a directory")
    code, err = run_cli([str(target), "--base-url", f"http://127.0.0.1:{unused_port()}"], capsys)
    assert code == 1
    assert err.splitlines() == [f"cxr-scrape: error: {target} is a file, expected a folder"]
