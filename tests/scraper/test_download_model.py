"""Stage 1 against a local HTTP server: full, resumed, present, mismatched, unreachable, --from."""
import hashlib
import os

import pytest

from scraper.cli import run_main
from scraper.download import PARTIAL_SUFFIX
from scraper.download_model import WEIGHTS_HASH, WEIGHTS_URL, download_weights, main
from tests.file_server import FileServer, unused_port

SIZE = 300_000


@pytest.fixture(scope="module")
def weights():
    data = os.urandom(SIZE)
    return data, hashlib.md5(data).hexdigest()


def files_in(directory):
    return sorted(os.listdir(directory))


def test_defaults_match_learning_vgg():
    from learning import vgg
    assert (WEIGHTS_URL, WEIGHTS_HASH) == (vgg.WEIGHTS_URL, vgg.WEIGHTS_HASH)


def test_full_download_verifies_hash(tmp_path, weights, capsys):
    data, md5 = weights
    target = tmp_path / "data" / "vgg16.weights.h5"
    with FileServer({"/w.h5": data}) as server:
        code = run_main(main, "cxr-download-model",
                        [str(target), "--url", server.url("/w.h5"), "--hash", md5, "--no-progress"])
    assert code == 0
    assert target.read_bytes() == data
    assert files_in(target.parent) == ["vgg16.weights.h5"]
    assert [(r.range_header, r.status, r.sent) for r in server.requests] == [(None, 200, SIZE)]
    assert f"downloaded {target} (300,000 bytes, md5 verified)" in capsys.readouterr().err


def test_cut_transfer_resumes_with_range(tmp_path, weights):
    data, md5 = weights
    target = tmp_path / "w.h5"
    # First response hangs up after 100,000 bytes; the resume must ask only for the rest.
    with FileServer({"/w.h5": data}, cut_after=100_000, cut_times=1) as server:
        assert download_weights(target, server.url("/w.h5"), md5, retries=0,
                                progress=False) == "downloaded"
    assert target.read_bytes() == data
    assert not os.path.exists(str(target) + PARTIAL_SUFFIX)
    first, second = server.requests
    assert (first.range_header, first.status, first.sent) == (None, 200, 100_000)
    assert (second.range_header, second.status, second.sent) == ("bytes=100000-", 206, 200_000)


def test_partial_file_from_killed_run_is_resumed(tmp_path, weights):
    data, md5 = weights
    target = tmp_path / "w.h5"
    (tmp_path / ("w.h5" + PARTIAL_SUFFIX)).write_bytes(data[:123_456])
    with FileServer({"/w.h5": data}) as server:
        assert main([str(target), "--url", server.url("/w.h5"), "--hash", md5,
                     "--no-progress"]) == 0
    assert target.read_bytes() == data
    assert [(r.range_header, r.sent) for r in server.requests] == [
        ("bytes=123456-", SIZE - 123_456)]


def test_server_ignoring_range_restarts_cleanly(tmp_path, weights):
    data, md5 = weights
    target = tmp_path / "w.h5"
    (tmp_path / ("w.h5" + PARTIAL_SUFFIX)).write_bytes(b"x" * 5000)
    with FileServer({"/w.h5": data}, ignore_range=True) as server:
        assert download_weights(target, server.url("/w.h5"), md5, progress=False) == "downloaded"
    assert target.read_bytes() == data
    assert [(r.status, r.sent) for r in server.requests] == [(200, SIZE)]


def test_already_present_makes_no_request(tmp_path, weights, capsys):
    data, md5 = weights
    target = tmp_path / "w.h5"
    target.write_bytes(data)
    with FileServer({"/w.h5": data}) as server:
        assert main([str(target), "--url", server.url("/w.h5"), "--hash", md5]) == 0
    assert server.requests == []
    err = capsys.readouterr().err
    assert "already present (300,000 bytes, md5 verified); nothing to do" in err
    assert len(err.strip().splitlines()) == 1


def test_hash_mismatch_leaves_nothing(tmp_path, weights, capsys):
    data, _ = weights
    target = tmp_path / "w.h5"
    with FileServer({"/w.h5": data}) as server:
        code = run_main(main, "cxr-download-model",
                        [str(target), "--url", server.url("/w.h5"), "--hash", "0" * 32,
                         "--no-progress"])
    assert code != 0
    assert files_in(tmp_path) == []
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr-download-model: error: hash mismatch") and "\n" not in err
    assert "Traceback" not in err


def test_unreachable_host_mentions_from(tmp_path, weights, capsys):
    _, md5 = weights
    target = tmp_path / "w.h5"
    url = f"http://127.0.0.1:{unused_port()}/w.h5"
    code = run_main(main, "cxr-download-model", [str(target), "--url", url, "--hash", md5,
                                                 "--retries", "0"])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"cannot reach {url}" in err and "--from" in err
    assert files_in(tmp_path) == []


def test_http_404_is_one_line(tmp_path, capsys):
    with FileServer({}) as server:
        code = run_main(main, "cxr-download-model",
                        [str(tmp_path / "w.h5"), "--url", server.url("/missing.h5")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "HTTP 404" in err and "\n" not in err
    assert files_in(tmp_path) == []


def test_from_file_good_and_bad(tmp_path, weights, capsys):
    data, md5 = weights
    brought = tmp_path / "brought.h5"
    brought.write_bytes(data)
    target = tmp_path / "data" / "w.h5"
    assert main([str(target), "--from", str(brought), "--hash", md5]) == 0
    assert target.read_bytes() == data and brought.read_bytes() == data  # source kept
    assert f"installed {target}" in capsys.readouterr().err
    assert files_in(target.parent) == ["w.h5"]
    # a corrupt brought file: error, the good target stays, the user's file is not deleted
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[:-1] + b"!")
    code = run_main(main, "cxr-download-model", [str(target), "--from", str(bad), "--hash", md5])
    assert code != 0 and "hash mismatch" in capsys.readouterr().err
    assert target.read_bytes() == data and bad.exists()
    assert files_in(target.parent) == ["w.h5"]
    # a bad file into an empty place: no target at all
    other = tmp_path / "other" / "w.h5"
    assert run_main(main, "cxr-download-model",
                    [str(other), "--from", str(bad), "--hash", md5]) != 0
    assert not other.exists()


def test_from_missing_file_and_bad_hash_text(tmp_path, capsys):
    code = run_main(main, "cxr-download-model",
                    [str(tmp_path / "w.h5"), "--from", str(tmp_path / "nope.h5")])
    assert code != 0 and "--from file not found" in capsys.readouterr().err
    code = run_main(main, "cxr-download-model", [str(tmp_path / "w.h5"), "--hash", "xyz"])
    assert code != 0 and "invalid --hash 'xyz'" in capsys.readouterr().err


def test_flag_errors_are_one_line(tmp_path, capsys):
    code = run_main(main, "cxr-download-model", [str(tmp_path / "w.h5"), "--url", "ftp://x/y"])
    assert code == 1 and "invalid --url 'ftp://x/y'" in capsys.readouterr().err
    code = run_main(main, "cxr-download-model", [str(tmp_path / "w.h5"), "--bogus"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "unrecognized arguments: --bogus" in err
    assert run_main(main, "cxr-download-model", []) == 2
    assert "weights_path" in capsys.readouterr().err
