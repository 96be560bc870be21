"""Source `archive`: real Open-i report XMLs + demo X-rays packed as the two bulk archives."""
import glob
import io
import json
import os
import tarfile

import pytest
from PIL import Image

from scraper.archive import natural_key, parse_report, scrape_archive
from scraper.cli import UserError
from scraper.schema import load_descriptions
from scraper.cli import run_main
from tests.file_server import FileServer, unused_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORTS = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "openi", "reports", "*.xml")))
DEMO = sorted(glob.glob(os.path.join(ROOT, "demo", "nih-24", "images", "*.png")))
IDS = sorted((r["name"][:-4] for p in REPORTS for r in parse_report(open(p, "rb").read(), p)),
             key=natural_key)
MISSING = "CXR44_IM-2078-1001"   # referenced by a report, absent from the PNG archive
CORRUPT = "CXR45_IM-2081-1001"   # a truncated PNG in the archive
SAVED = [i + ".png" for i in IDS if i not in (MISSING, CORRUPT)]


def png_bytes(path, size=96):
    """A demo X-ray, shrunk (the point here is logic, not pixels)."""
    buffer = io.BytesIO()
    Image.open(path).convert("L").resize((size, size)).save(buffer, "PNG")
    return buffer.getvalue()


def add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def build_archives(directory, outside):
    """NLMCXR_reports.tgz (12 real XMLs) and NLMCXR_png.tgz with traps; returns both paths."""
    reports = os.path.join(directory, "NLMCXR_reports.tgz")
    with tarfile.open(reports, "w:gz") as tar:
        for path in REPORTS:
            add(tar, "ecgen-radiology/" + os.path.basename(path), open(path, "rb").read())
    pngs = os.path.join(directory, "NLMCXR_png.tgz")
    good = {i: png_bytes(DEMO[n % len(DEMO)]) for n, i in enumerate(IDS)}
    with tarfile.open(pngs, "w:gz") as tar:
        # hostile members come first, named like wanted images: all must be refused
        add(tar, "../../" + IDS[0] + ".png", good[IDS[0]])
        add(tar, os.path.join(outside, IDS[1] + ".png"), good[IDS[1]])  # absolute path
        add(tar, IDS[2] + ".png", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        add(tar, "../../evil.png", good[IDS[0]])
        add(tar, "evil_link.png", kind=tarfile.SYMTYPE, linkname="../../../outside.png")
        add(tar, "dev.png", kind=tarfile.CHRTYPE)
        add(tar, "README.txt", b"not an image")
        for n, image_id in enumerate(IDS):
            if image_id == MISSING:
                continue
            data = good[image_id][:300] if image_id == CORRUPT else good[image_id]
            add(tar, (f"sub/{image_id}.png" if n % 2 else f"{image_id}.png"), data)
    return pngs, reports


@pytest.fixture
def archives(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    return build_archives(str(work), str(outside)), tmp_path


def snapshot(directory):
    return {e.name: (e.stat().st_ino, e.stat().st_mtime_ns) for e in os.scandir(directory)}


def test_fixture_covers_the_cases():
    assert len(REPORTS) == 12 and len(IDS) == 19


def test_import_records_labels_and_counts(archives):
    (pngs, reports), tmp_path = archives
    data = tmp_path / "data"
    summary = scrape_archive(data, pngs, reports, progress=False)
    assert (summary.saved, summary.present, summary.failed, summary.skipped,
            summary.unlabelled) == (17, 0, 2, 3, 3)
    assert sorted(os.listdir(data / "images"), key=natural_key) == SAVED
    records = {r["name"]: r for r in load_descriptions(data / "images-description.json")}
    assert sorted(records, key=natural_key) == SAVED
    labels = [records[n]["label"] for n in SAVED]
    assert (labels.count("normal"), labels.count("abnormal"), labels.count(None)) == (7, 7, 3)

    first = records["CXR1_1_IM-0001-3001.png"]
    assert first == {
        "name": "CXR1_1_IM-0001-3001.png", "url": f"{pngs}#CXR1_1_IM-0001-3001.png",
        "type": "MeSH", "items": ["normal"], "image": "images/CXR1_1_IM-0001-3001.png",
        "label": "normal", "report_id": "CXR1",
        "findings": "The cardiac silhouette and mediastinum size are within normal limits. There "
                    "is no pulmonary edema. There is no focal consolidation. There are no XXXX of"
                    " a pleural effusion. There is no evidence of pneumothorax.",
        "impression": "Normal chest x-XXXX.", "caption": "Xray Chest PA and Lateral",
        "view": None, "boxes": [], "source": "archive",
        "license": "http://creativecommons.org/licenses/by-nc-nd/4.0/", "finding_labels": []}
    assert records["CXR1_1_IM-0001-4001.png"]["url"] == f"{pngs}#sub/CXR1_1_IM-0001-4001.png"
    assert records["CXR2_IM-0652-2001.png"]["items"] == ["Cardiomegaly/borderline",
                                                          "Pulmonary Artery/enlarged"]
    assert records["CXR2_IM-0652-2001.png"]["label"] == "abnormal"
    assert records["CXR2_IM-0652-2001.png"]["finding_labels"] == ["Cardiomegaly"]
    assert "finding_labels" not in records["CXR39_IM-1978-1002.png"]     # no label: unknown
    assert records["CXR39_IM-1978-1002.png"]["items"] == ["No Indexing"]
    assert records["CXR39_IM-1978-1002.png"]["label"] is None
    assert {records[f"CXR62_IM-2202-{s}.png"]["report_id"]
            for s in ("1001", "12012", "4004")} == {"CXR62"}
    assert records["CXR111_IM-0076-1001.png"]["caption"] == ""
    assert records["CXR111_IM-0076-1001.png"]["findings"] == ""

    failures = json.loads((data / "images-failures.json").read_text())
    assert [(f["name"], f["reason"].split(" (")[0]) for f in failures] == [
        (MISSING + ".png", "image referenced by report CXR44 is not in the PNG archive"),
        (CORRUPT + ".png", "not a decodable image")]
    # nothing escaped: only images/ and the two outputs, nothing beside the archives
    assert sorted(os.listdir(data)) == ["images", "images-description.json", "images-failures.json"]
    assert os.listdir(tmp_path / "outside") == []
    assert sorted(os.listdir(tmp_path)) == ["data", "outside", "work"]
    assert not os.path.exists("/evil.png") and not (tmp_path.parent / "evil.png").exists()


def test_rerun_rewrites_nothing(archives):
    (pngs, reports), tmp_path = archives
    data = tmp_path / "data"
    scrape_archive(data, pngs, reports, progress=False)
    before = snapshot(data / "images")
    summary = scrape_archive(data, pngs, reports, progress=False)
    assert (summary.saved, summary.present, summary.failed) == (0, 17, 2)
    assert snapshot(data / "images") == before
    assert len(load_descriptions(data / "images-description.json")) == 17


def test_limit_and_no_png_archive_needed_when_all_present(archives):
    (pngs, reports), tmp_path = archives
    data = tmp_path / "data"
    summary = scrape_archive(data, pngs, reports, limit=3, progress=False)
    assert (summary.saved, summary.failed) == (3, 0)
    assert sorted(os.listdir(data / "images"), key=natural_key) == SAVED[:3]
    # every wanted image is there: the PNG archive is not even opened
    summary = scrape_archive(data, tmp_path / "gone.tgz", reports, limit=3, progress=False)
    assert (summary.saved, summary.present) == (0, 3)
    # a damaged image on disk is replaced from the archive
    (data / "images" / SAVED[1]).write_bytes(b"\x89PNG broken")
    summary = scrape_archive(data, pngs, reports, limit=3, progress=False)
    assert (summary.saved, summary.present) == (1, 2)
    Image.open(data / "images" / SAVED[1]).load()


def test_one_bad_xml_is_a_failure_all_bad_is_an_error(tmp_path):
    good = tmp_path / "reports"
    good.mkdir()
    for path in REPORTS[:3]:
        (good / os.path.basename(path)).write_bytes(open(path, "rb").read())
    (good / "999.xml").write_text("<eCitation><uId id='CXR999'/>")  # truncated
    pngs = tmp_path / "p.tgz"
    with tarfile.open(pngs, "w:gz"):
        pass
    with pytest.raises(UserError, match=r"nothing saved from the archives .*p.tgz: 5 failed, "
                                        r"0 skipped; first: "):  # saved nothing: not a success
        scrape_archive(tmp_path / "d", pngs, good, progress=False)
    failures = json.loads((tmp_path / "d" / "images-failures.json").read_text())
    assert any(f["name"] == "999.xml" and "does not parse" in f["reason"] for f in failures)
    assert len(failures) == 5

    bad = tmp_path / "bad.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        add(tar, "ecgen-radiology/1.xml", b"<eCitation><oops></eCitation>")
    with pytest.raises(UserError, match=r"none of the 1 report XML file\(s\) .* is usable: "
                                        r"ecgen-radiology/1.xml: report XML does not parse"):
        scrape_archive(tmp_path / "d2", pngs, bad, progress=False)


def test_corrupt_archives_are_one_clear_error(archives):
    (pngs, reports), tmp_path = archives
    not_gzip = tmp_path / "reports.tgz"
    not_gzip.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="reports archive .* is not a tar.gz archive"):
        scrape_archive(tmp_path / "d", pngs, not_gzip, progress=False)
    truncated = tmp_path / "png.tgz"
    truncated.write_bytes(open(pngs, "rb").read()[:20_000])
    with pytest.raises(UserError, match="PNG archive .* is corrupt or truncated"):
        scrape_archive(tmp_path / "d", truncated, reports, progress=False)
    with pytest.raises(UserError, match="reports archive not found"):
        scrape_archive(tmp_path / "d", pngs, tmp_path / "nope.tgz", progress=False)


def test_archives_from_url(archives):
    (pngs, reports), tmp_path = archives
    data = tmp_path / "data"
    files = {"/c/NLMCXR_png.tgz": pngs, "/c/NLMCXR_reports.tgz": reports}
    with FileServer(files) as server:
        png_url, reports_url = server.url("/c/NLMCXR_png.tgz"), server.url("/c/NLMCXR_reports.tgz")
        summary = scrape_archive(data, png_url, reports_url, progress=False)
        assert (summary.saved, summary.failed, summary.skipped) == (17, 2, 3)
        assert sorted(r.path for r in server.requests) == sorted(files)
        # the downloads are kept and reused: a re-run sends no request
        summary = scrape_archive(data, png_url, reports_url, progress=False)
        assert (summary.saved, summary.present) == (0, 17)
        assert len(server.requests) == 2
    assert open(data / "archives" / "NLMCXR_png.tgz", "rb").read() == open(pngs, "rb").read()
    record = {r["name"]: r for r in load_descriptions(data / "images-description.json")}
    assert record["CXR3_IM-1384-1001.png"]["url"] == png_url + "#CXR3_IM-1384-1001.png"


def test_cxr_scrape_end_to_end(archives, capsys, monkeypatch):
    import scraper.download
    from scraper.http_client import make_session
    from scraper.scrape import main
    monkeypatch.setattr(scraper.download, "make_session", lambda: make_session(retries=0))
    (pngs, reports), tmp_path = archives
    data = tmp_path / "data"
    assert run_main(main, "cxr-scrape", [str(data), "--source", "archive", "--png-archive", pngs,
                                         "--reports-archive", reports, "--limit", "5",
                                         "--no-progress"]) == 0
    assert len(load_descriptions(data / "images-description.json")) == 5
    err = capsys.readouterr().err
    assert ("cxr-scrape: 5 saved, 0 already present, 0 failed, 3 skipped, 0 unlabelled"
            in err)
    # an unreachable archive URL: one line, no traceback, and the way out
    url = f"http://127.0.0.1:{unused_port()}/NLMCXR_reports.tgz"
    code = run_main(main, "cxr-scrape", [str(tmp_path / "d2"), "--source", "archive",
                                         "--reports-archive", url, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"cxr-scrape: error: cannot reach {url}")
    assert "give its local path" in err[-1]
