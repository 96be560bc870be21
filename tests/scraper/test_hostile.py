"""Stages 1 and 2 against hostile servers, planted files and careless use (issue 8).

Each test is one attack: what it must not do (fetch from another host, follow a planted link,
read without end, hang on a FIFO, lose records to a second writer, print a traceback) and the
one line it must print instead. Real local HTTP servers, real files, real subprocesses.
"""
import errno
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
from PIL import Image

from scraper import openi
from scraper.cli import UserError, run_main
from scraper.download import PARTIAL_SUFFIX, download
from scraper.download_model import main as download_main
from scraper.fileio import atomic_write, remove_stale_temp_files
from scraper.images import BadImage, check_image_file, load_rgb
from tests.file_server import FileServer
from tests.scraper.fake_openi import FakeOpenI
from tests.scraper.test_openi import failures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORTS = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "openi", "reports", "*.xml")))
FAST = dict(backoff=0.02, retries=1, progress=False, max_rps=200)
ENV = dict(os.environ, PYTHONPATH=ROOT)


def scrape(server, data_dir, **kwargs):
    return openi.scrape_openi(str(data_dir), base_url=server.base_url, **{**FAST, **kwargs})


def described(data_dir):
    with open(os.path.join(data_dir, "images-description.json"), encoding="utf-8") as handle:
        return sorted(r["name"] for r in json.load(handle))


def run_isolated(code, timeout=30, memory=2 << 30):
    """Run Python `code` in a child with a memory cap: a hang or a runaway read fails the test
    instead of taking the machine down. Returns (returncode, stderr) or None on a timeout."""
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, timeout=timeout,
                              capture_output=True, text=True, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return None
    return done.returncode, done.stderr


def bomb_png(path, side=6000):
    """A real PNG declaring side x side pixels (36 megapixels at 6000): ~40 KB on disk."""
    Image.new("L", (side, side)).save(path, optimize=False)
    return path


# ---- stage 1: downloads ----------------------------------------------------------------------

@pytest.mark.parametrize("plant, kind", [(os.symlink, "it is a symbolic link"),
                                         (os.link, "it has 2 hard links")])
def test_planted_download_link_is_not_written_through(tmp_path, capsys, plant, kind):
    """A symlink, or a hard link (issue 18: it shares the victim's bytes), at the temp name."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    target = tmp_path / "w.h5"
    plant(victim, str(target) + PARTIAL_SUFFIX)
    with FileServer({"/w.h5": b"server bytes" * 100}) as server:
        code = run_main(download_main, "cxr-download-model",
                        [str(target), "--url", server.url("/w.h5"), "--hash", "",
                         "--no-progress", "--retries", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and victim.read_bytes() == b"precious" and not target.exists()
    assert err[-1] == (f"cxr-download-model: error: refusing to use "
                       f"{target}{PARTIAL_SUFFIX}: {kind}, not a download of "
                       f"ours (remove it and re-run)")


def test_download_body_is_capped_by_content_length_and_maximum(tmp_path):
    with FileServer({"/big": b"x" * 5000}) as server:
        with pytest.raises(UserError, match="declares 5,000 bytes, more than the 4,000 allowed"):
            download(server.url("/big"), tmp_path / "big", progress=False, max_bytes=4000)
    assert os.listdir(tmp_path) == []  # neither the target nor a .download is left


def test_endless_download_stops_at_the_cap(tmp_path):
    with FakeOpenI(n_records=1) as server:
        server.fault(server.names[0], "endless")
        url = server.base_url + server.image_path(server.names[0])
        with pytest.raises(UserError, match="sent more than the 1,000,000 bytes allowed"):
            download(url, tmp_path / "x.png", progress=False, max_bytes=1_000_000)
        time.sleep(0.2)
        assert server.endless_sent < 50_000_000  # the client hung up long before 1 GB
    assert os.listdir(tmp_path) == []


# ---- stage 2, Open-i: the response must not choose the host ---------------------------------

@pytest.mark.parametrize("shape", ["@127.0.0.1:{port}/x/evil.png", "//127.0.0.1:{port}/evil.png",
                                   "http://127.0.0.1:{port}/evil.png", "evil.png"])
def test_image_url_from_the_api_cannot_pick_another_host(tmp_path, shape):
    with FakeOpenI(n_records=3) as server, FakeOpenI(n_records=1) as other:
        server.records[1]["imgLarge"] = shape.format(port=other.port)
        summary = scrape(server, tmp_path)
        assert other.requests == []  # not one request reached the other server
    assert summary.skipped == 1 and summary.saved == 2
    assert described(tmp_path) == sorted([server.names[0], server.names[2]])


def test_redirect_to_another_host_is_a_listed_failure(tmp_path):
    with FakeOpenI(n_records=2) as server, FakeOpenI(n_records=1) as other:
        location = other.base_url + other.image_path(other.names[0])
        server.fault(server.names[0], "offsite", location=location)
        scrape(server, tmp_path)
        assert other.requests == []
    reason = failures(tmp_path)[server.names[0]]
    assert reason.startswith("redirected to another server (http://127.0.0.1:")
    assert described(tmp_path) == [server.names[1]]


def test_same_origin_rules():
    base = "https://openi.example.org"
    assert openi.same_origin(base + "/imgs/x.png", base)
    assert not openi.same_origin("https://user@openi.example.org/x.png", base)
    assert not openi.same_origin("https://openi.example.org:8443/x.png", base)
    assert not openi.same_origin("ftp://openi.example.org/x.png", base)
    assert not openi.same_origin("http://openi.example.org/x.png", base)  # no downgrade
    assert openi.same_origin("https://openi.example.org/x.png", "http://openi.example.org")
    with pytest.raises(ValueError, match="not an absolute path"):
        openi.image_url(base, "@evil.example.org/x.png")


# ---- stage 2, Open-i: bounded bodies ------------------------------------------------------

def test_endless_image_body_is_cut_at_the_cap_and_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(openi, "MAX_IMAGE_BYTES", 2_000_000, raising=False)
    with FakeOpenI(n_records=2) as server:
        server.fault(server.names[0], "endless")
        scrape(server, tmp_path)
        time.sleep(0.2)
        assert server.endless_sent < 60_000_000
    assert "passed 2,000,000 bytes; stopped reading" in failures(tmp_path)[server.names[0]]
    assert described(tmp_path) == [server.names[1]]


def test_declared_huge_image_is_refused_without_reading(tmp_path):
    with FakeOpenI(n_records=2) as server:
        server.fault(server.names[0], "huge")
        scrape(server, tmp_path)
        assert server.count(server.image_path(server.names[0])) == 1  # no retry of the same
    assert "(Content-Length)" in failures(tmp_path)[server.names[0]]


def test_decompression_bomb_is_a_listed_failure_not_retried(tmp_path):
    with FakeOpenI(n_records=2) as server:
        path = server.image_path(server.names[0])
        server.bodies[path] = bomb_png(tmp_path / "bomb.png").read_bytes()
        scrape(server, tmp_path / "data")
        assert server.count(path) == 1
    reason = failures(tmp_path / "data")[server.names[0]]
    assert reason.startswith("image is 6,000 x 6,000 = 36,000,000 pixels, more than the "
                             "30,000,000 allowed")
    assert described(tmp_path / "data") == [server.names[1]]


def test_pixel_limit_holds_for_files_and_can_be_raised(tmp_path):
    from scraper import images
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="36,000,000 pixels"):
        check_image_file(bomb)
    with pytest.raises(BadImage, match="36,000,000 pixels"):
        load_rgb(bomb, 32)  # stage 3 and 6 load through here: refused before decoding
    try:
        images.set_max_pixels(40_000_000)
        assert check_image_file(bomb) == (6000, 6000, "PNG")
    finally:
        images.set_max_pixels(images.DEFAULT_MAX_PIXELS)


# ---- non-regular files --------------------------------------------------------------------

def test_fifo_and_dev_zero_named_png_are_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    result = run_isolated(
        "from scraper.images import BadImage, check_image_file, load_rgb\n"
        f"for name in ('fifo.png', 'zero.png'):\n"
        f"    for check in (check_image_file, load_rgb):\n"
        f"        try:\n"
        f"            check({str(tmp_path)!r} + '/' + name)\n"
        f"        except BadImage as error:\n"
        f"            print(error, file=__import__('sys').stderr)\n", timeout=20)
    assert result is not None, "hung on a FIFO"
    code, err = result
    assert code == 0, err
    assert err.splitlines() == [f"image is not a regular file (a FIFO/named pipe): "
                                f"{tmp_path}/fifo.png"] * 2 + [
        f"image is not a regular file (a character device): {tmp_path}/zero.png"] * 2


def test_fifo_report_xml_is_a_listed_failure_not_a_hang(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(REPORTS[0], reports)
    os.mkfifo(reports / "zz-fifo.xml")
    result = run_isolated(
        "import sys\n"
        "from scraper.archive import read_reports\n"
        f"fields, failures = read_reports({str(reports)!r}, 'reports')\n"
        "print(len(fields), failures[0]['name'], failures[0]['reason'], file=sys.stderr)\n",
        timeout=20)
    assert result is not None, "hung on a FIFO named *.xml"
    code, err = result
    assert code == 0, err
    assert err.splitlines()[-1] == (f"2 zz-fifo.xml report XML is not a regular file (a "
                                    f"FIFO/named pipe): {reports}/zz-fifo.xml")


# ---- one writer per data folder -----------------------------------------------------------

def test_second_writer_of_a_data_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    with FakeOpenI(n_records=16, latency=0.15) as server:
        args = [sys.executable, "-m", "scraper.scrape", str(data), "--base-url", server.base_url,
                "--workers", "1", "--max-rps", "100", "--no-progress"]
        first = subprocess.Popen(args, cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not any(p == server.image_path(n) for _, p, _ in server.requests
                          for n in server.names):
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.05)
            second = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True,
                                    timeout=60)
            assert first.poll() is None, "the first run ended before the second started"
            first_err = first.communicate(timeout=60)[1]
        finally:
            if first.poll() is None:
                first.kill()
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"cxr-scrape: error: another run is writing to {data} (process {first.pid} cxr-scrape);"
        f" wait for it to finish or use another folder"]
    assert first.returncode == 0, first_err
    assert described(data) == sorted(server.names)  # nothing lost to the second run


# ---- temp files: only ours, never a running writer's ----------------------------------------

def test_clean_up_spares_other_files_and_running_writers(tmp_path):
    (tmp_path / ".notes.part").write_text("the user's own file")
    (tmp_path / ".x.png.abc.part").write_text("not named by us either")
    stale = tmp_path / ".y.png.cxr-tmp-abcd1234.part"
    stale.write_bytes(b"left by a killed run")
    with atomic_write(tmp_path / "z.png") as handle:  # a writer at work (maybe another run)
        handle.write(b"first half ")
        assert remove_stale_temp_files(tmp_path) == 1
        handle.write(b"second half")
    assert (tmp_path / "z.png").read_bytes() == b"first half second half"
    assert sorted(os.listdir(tmp_path)) == [".notes.part", ".x.png.abc.part", "z.png"]


# ---- one line, never a traceback ----------------------------------------------------------

@pytest.mark.parametrize("number, line", [
    (errno.ENOSPC, "no space left on the device: /data/images-description.json"),
    (errno.EROFS, "the file system is read-only: /data/images-description.json"),
    (errno.ENAMETOOLONG, "file name too long: /data/images-description.json"),
])
def test_environment_os_errors_are_one_line(number, line, capsys):
    def main(argv):
        raise OSError(number, os.strerror(number), "/data/images-description.json")
    assert run_main(main, "cxr-x", []) == 1
    assert capsys.readouterr().err == f"cxr-x: error: {line}\n"


def test_full_disk_during_a_scrape_is_one_line(tmp_path):
    # RLIMIT_FSIZE makes every write past 64 KB fail with EFBIG, as a full disk fails with
    # ENOSPC: the run must stop with one line, not list every image as failed or crash.
    data = tmp_path / "data"
    with FakeOpenI(n_records=6) as server:
        code = ("import resource, signal, sys\n"
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
                "from scraper.scrape import cli\n"
                f"sys.argv = ['cxr-scrape', {str(data)!r}, '--base-url', {server.base_url!r}, "
                "'--no-progress', '--retries', '0']\n"
                "cli()\n")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, timeout=60,
                              capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("cxr-scrape: error: file too large for the file system")
    assert not any(".cxr-tmp-" in n for n in os.listdir(data / "images"))


def test_300_character_image_name_is_skipped_with_its_reason(tmp_path, capsys):
    with FakeOpenI(n_records=2) as server:
        long_name = "CXR" + "7" * 300 + "_IM-0001-1001.png"
        path = server.records[0]["imgLarge"]
        server.records[0]["imgLarge"] = os.path.dirname(path) + "/" + long_name
        server.bodies[server.records[0]["imgLarge"]] = server.bodies[path]
        summary = scrape(server, tmp_path)
    assert (summary.saved, summary.skipped) == (1, 1)
    assert "is longer than the 200 a file name may have here" in capsys.readouterr().err


def test_300_character_image_id_in_an_archive_is_a_listed_failure(tmp_path):
    from scraper.archive import scrape_archive
    long_id = "CXR1_" + "9" * 300
    xml = open(REPORTS[0], "rb").read().replace(b'<parentImage id="CXR1_1_IM-0001-3001">',
                                                 f'<parentImage id="{long_id}">'.encode())
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "1.xml").write_bytes(xml)
    shutil.copy(os.path.join(os.path.dirname(REPORTS[0]), "2.xml"), reports / "2.xml")
    png = io.BytesIO()
    Image.new("L", (64, 64)).save(png, "PNG")
    pngs = tmp_path / "png.tgz"
    with tarfile.open(pngs, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name in (long_id + ".png", "CXR2_IM-0652-1001.png", "CXR2_IM-0652-2001.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png.getvalue())
            tar.addfile(info, io.BytesIO(png.getvalue()))
    summary = scrape_archive(tmp_path / "data", pngs, reports, progress=False)
    assert summary.saved == 2
    reason = failures(tmp_path / "data")["1.xml"]
    assert reason.startswith("report 'CXR1': image name of 309 bytes")
