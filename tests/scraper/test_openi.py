"""scraper/openi.py against a real local HTTP server speaking the Open-i API (fake_openi.py)."""
import json
import os

import pytest

from scraper import openi
from scraper.cli import UserError
from scraper.images import check_image_file
from scraper.schema import load_descriptions
from tests.scraper.fake_openi import API_PATH, FIXTURE, MOVED, FakeOpenI, unused_port

FAST = dict(backoff=0.02, retries=3, progress=False)


def scrape(server, data_dir, **kwargs):
    return openi.scrape_openi(str(data_dir), base_url=server.base_url, **{**FAST, **kwargs})


def descriptions(data_dir):
    path = os.path.join(data_dir, "images-description.json")
    return {record["name"]: record for record in load_descriptions(path)}


def failures(data_dir):
    path = os.path.join(data_dir, "images-failures.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return {f["name"]: f["reason"] for f in json.load(handle)}


def saved_names(data_dir):
    return sorted(os.listdir(os.path.join(data_dir, "images")))


# ---- records -------------------------------------------------------------------------------

def test_record_from_the_real_api_response():
    with open(FIXTURE, encoding="utf-8") as handle:
        item = json.load(handle)["list"][0]
    record = openi.record_from_api(item, "https://openi.nlm.nih.gov/")
    assert record["name"] == "CXR1_1_IM-0001-3001.png"
    assert record["url"] == "https://openi.nlm.nih.gov/imgs/512/1/1/CXR1_1_IM-0001-3001.png"
    assert record["image"] == "images/CXR1_1_IM-0001-3001.png"
    assert (record["type"], record["items"], record["label"]) == ("MeSH", ["normal"], "normal")
    assert record["report_id"] == "CXR1"
    assert record["findings"].startswith("The cardiac silhouette and mediastinum size")
    assert record["findings"].endswith("There is no evidence of pneumothorax.")
    assert record["impression"] == "Normal chest x-XXXX."
    assert record["caption"] == "Xray Chest PA and Lateral"
    assert record["view"] is None  # two views named: ambiguous
    assert record["license"] == "http://creativecommons.org/licenses/by-nc-nd/4.0/"
    assert record["source"] == "openi"


def test_record_labels_and_fallbacks():
    with open(FIXTURE, encoding="utf-8") as handle:
        item = json.load(handle)["list"][0]
    item = dict(item, MeSH={"major": ["No Indexing"]}, abstract="<p><b>Indication: </b>x</p>",
                impression=" Clear lungs. ", licenseURL="", ccLicense="byncnd")
    record = openi.record_from_api(item, "http://h")
    assert record["label"] is None
    assert (record["findings"], record["impression"]) == ("", "Clear lungs.")
    assert record["license"] == "byncnd"
    item["MeSH"] = {"major": ["normal", "Cardiomegaly"]}
    assert openi.record_from_api(item, "http://h")["label"] == "abnormal"
    with pytest.raises(ValueError):
        openi.record_from_api(dict(item, imgLarge=""), "http://h")


@pytest.mark.parametrize("caption, view", [
    ("Xray Chest PA and Lateral", None), ("Chest PA view", "PA"), ("PA", "PA"),
    ("AP portable chest", "AP"), ("Chest lateral view", "lateral"), ("Lat. view", "lateral"),
    ("", None), ("Papers", None)])
def test_guess_view(caption, view):
    assert openi.guess_view(caption) == view


def test_parse_retry_after():
    assert openi.parse_retry_after("3") == 3.0
    assert openi.parse_retry_after(None) is None
    assert openi.parse_retry_after("soon") is None
    assert openi.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


# ---- paging, labels ------------------------------------------------------------------------

def test_short_pages_are_followed_and_labels_match_mesh(tmp_path):
    with FakeOpenI(n_records=23, page_limit=5) as server:
        summary = scrape(server, tmp_path, workers=4, max_rps=200)
        pages = [(q["m"][0], q["n"][0], q["coll"][0], q["query"][0])
                 for q in server.api_requests()]
        # every page asked where the previous one really ended (max + 1), n capped at total
        assert pages == [("1", "100", "cxr", ""), ("6", "23", "cxr", ""),
                         ("11", "23", "cxr", ""), ("16", "23", "cxr", ""),
                         ("21", "23", "cxr", "")]
        assert (summary.saved, summary.present, summary.failed) == (23, 0, 0)
        assert saved_names(tmp_path) == sorted(server.names)
        records = descriptions(tmp_path)
        for name in server.names:
            with open(tmp_path / "images" / name, "rb") as handle:
                assert handle.read() == server.body(name)
        # reports cycle normal / abnormal / No Indexing / abnormal, two images each
        labels = [records[n]["label"] for n in server.names]
        assert labels[:8] == ["normal"] * 2 + ["abnormal"] * 2 + [None] * 2 + ["abnormal"] * 2
        assert records["CXR2_1_IM-0002-1001.png"]["items"] == [
            "Cardiomegaly/mild", "Pulmonary Atelectasis/base/left"]
        assert records["CXR2_1_IM-0002-1001.png"]["report_id"] == "CXR2"
        assert records["CXR2_1_IM-0002-1001.png"]["findings"] == (
            "Findings of report 2: Cardiomegaly/mild, Pulmonary Atelectasis/base/left.")
        assert records["CXR5_1_IM-0005-1001.png"]["findings"] == ""  # no Findings paragraph
        assert records["CXR5_1_IM-0005-1001.png"]["impression"] == "Impression number 5."
        assert [records[n]["view"] for n in server.names[:3]] == [None, "PA", "lateral"]
        assert summary.unlabelled == 6  # reports 3, 7, 11 -> 6 images
        assert not os.path.exists(tmp_path / "images-failures.json")


def test_limit_stops_listing_and_downloads(tmp_path):
    with FakeOpenI(n_records=20) as server:
        summary = scrape(server, tmp_path, limit=7, max_rps=200, page_size=5)
        pages = [(q["m"][0], q["n"][0]) for q in server.api_requests()]
        assert pages == [("1", "5"), ("6", "7")]
        assert summary.saved == 7
        assert saved_names(tmp_path) == sorted(server.names[:7])
        assert server.image_request_count() == 7


def test_server_that_stops_making_progress_ends_with_one_error(tmp_path):
    with FakeOpenI(n_records=12, page_limit=4, stall_at=9) as server:
        with pytest.raises(UserError, match=r"m=9 .*no records although total is 12"):
            scrape(server, tmp_path, max_rps=200)
        assert len(server.api_requests()) == 3  # no endless loop
        assert saved_names(tmp_path) == sorted(server.names[:8])  # listed ones were handled
        assert len(descriptions(tmp_path)) == 8


# ---- faults --------------------------------------------------------------------------------

def test_each_fault_ends_as_expected(tmp_path):
    with FakeOpenI(n_records=10) as server:
        n = server.names
        server.fault(n[0], "500", times=1)
        server.fault(n[1], "429", times=1, retry_after=1)
        server.fault(n[2], "drop", times=1)
        server.fault(n[3], "html", times=1)
        server.fault(n[4], "html")
        server.fault(n[5], "truncated")
        server.fault(n[6], "404")
        server.fault(n[7], "503")
        summary = scrape(server, tmp_path, workers=4, max_rps=100, retries=3)
        counts = {name: server.count(server.image_path(name)) for name in n}
        assert counts == {n[0]: 2, n[1]: 2, n[2]: 2, n[3]: 2,
                          n[4]: 1 + openi.BAD_BODY_RETRIES, n[5]: 1 + openi.BAD_BODY_RETRIES,
                          n[6]: 1, n[7]: 4, n[8]: 1, n[9]: 1}
        first, second = server.times(server.image_path(n[1]))
        assert second - first >= 0.95  # Retry-After: 1 was waited
        reasons = failures(tmp_path)
        assert sorted(reasons) == sorted([n[4], n[5], n[6], n[7]])
        assert "HTML" in reasons[n[4]] and "text/html" in reasons[n[4]]
        assert "not a decodable image" in reasons[n[5]]
        assert reasons[n[6]] == "HTTP 404 Not Found"
        assert reasons[n[7]].startswith("HTTP 503") and "after 4 attempts" in reasons[n[7]]
        kept = [n[0], n[1], n[2], n[3], n[8], n[9]]
        assert saved_names(tmp_path) == sorted(kept)  # nothing bad was ever saved
        assert sorted(descriptions(tmp_path)) == sorted(kept)
        for name in kept:
            check_image_file(tmp_path / "images" / name)
            assert (tmp_path / "images" / name).read_bytes() == server.body(name)
        assert (summary.saved, summary.failed) == (6, 4)


def test_redirect_hops_are_followed_through_the_rate_gate(tmp_path, monkeypatch):
    gate_waits = []
    original_wait = openi.RequestGate.wait
    monkeypatch.setattr(openi.RequestGate, "wait",
                        lambda self: gate_waits.append(1) or original_wait(self))
    with FakeOpenI(n_records=3) as server:
        path = server.image_path(server.names[1])
        server.fault(server.names[1], "redirect", times=1)
        summary = scrape(server, tmp_path, max_rps=100)
        assert (server.count(path), server.count(MOVED + path)) == (1, 1)
        assert summary.saved == 3
        assert (tmp_path / "images" / server.names[1]).read_bytes() == server.body(server.names[1])
        assert len(gate_waits) == len(server.requests) == 5  # 1 page + 3 images + 1 hop


def test_first_page_without_records_is_one_error(tmp_path):
    with FakeOpenI(n_records=4, stall_at=1) as server:
        with pytest.raises(UserError, match=r"m=1 n=100 returned no records although total "
                                            r"is 4"):
            scrape(server, tmp_path, max_rps=100)


def test_a_timed_out_request_is_retried(tmp_path):
    with FakeOpenI(n_records=3) as server:
        slow = server.names[1]
        server.fault(slow, "hang", times=1, delay=1.0)
        summary = scrape(server, tmp_path, max_rps=100, timeout=0.3)
        assert server.count(server.image_path(slow)) == 2
        assert summary.saved == 3
        assert (tmp_path / "images" / slow).read_bytes() == server.body(slow)
        server.fault(slow, "hang", delay=1.0)
        os.unlink(tmp_path / "images" / slow)
        scrape(server, tmp_path, max_rps=100, timeout=0.3, retries=1)
        assert failures(tmp_path)[slow] == (f"timed out talking to {server.base_url}"
                                            f"{server.image_path(slow)} (gave up after 2 attempts)")


def test_api_page_errors_are_retried(tmp_path):
    with FakeOpenI(n_records=4) as server:
        server.fault(API_PATH, "503", times=2)
        summary = scrape(server, tmp_path, max_rps=100)
        assert len(server.api_requests()) == 3
        assert summary.saved == 4


def test_a_slow_first_api_page_is_retried_not_called_unreachable(tmp_path):
    with FakeOpenI(n_records=2) as server:
        server.fault(API_PATH, "hang", times=1, delay=1.0)
        summary = scrape(server, tmp_path, max_rps=100, timeout=0.3)
        assert (len(server.api_requests()), summary.saved) == (2, 2)


def test_api_page_that_is_not_json_is_one_error(tmp_path):
    with FakeOpenI(n_records=4) as server:
        server.fault(API_PATH, "html")
        with pytest.raises(UserError, match=r"Open-i API http://127.0.0.1:\d+/api/search: "
                                            r"not JSON \(Content-Type text/html\)"):
            scrape(server, tmp_path, max_rps=100, retries=1)


def test_unreachable_server_is_one_clear_error(tmp_path):
    base = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(UserError) as info:
        openi.scrape_openi(str(tmp_path), base_url=base, progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot reach {base}/api/search (connection failed")
    assert message.endswith(openi.NO_INTERNET_HINT)
    assert "\n" not in message


# ---- politeness ----------------------------------------------------------------------------

def test_rate_cap_holds_across_threads_and_retries(tmp_path):
    with FakeOpenI(n_records=36, page_limit=12) as server:
        for name in server.names[:6]:
            server.fault(name, "500", times=1)  # retries count against the cap too
        summary = scrape(server, tmp_path, workers=8, max_rps=15, backoff=0.0)
        assert summary.saved == 36
        assert len(server.requests) == 3 + 36 + 6
        # Starts are spaced 1/15 s apart, so a closed 1.0 s window can hold 16 of them when the
        # server clock sees one arrival a millisecond early (it did on a loaded machine). A
        # window half an interval shorter holds at most 15 and tolerates 33 ms of jitter.
        assert server.max_in_window(1.0 - 0.5 / 15) <= 15
        assert server.max_in_window(1.0) <= 16


# ---- re-runs -------------------------------------------------------------------------------

def test_rerun_requests_no_saved_image_and_replaces_a_broken_one(tmp_path):
    with FakeOpenI(n_records=8) as server:
        scrape(server, tmp_path, max_rps=200)
        assert server.image_request_count() == 8
        summary = scrape(server, tmp_path, max_rps=200)
        assert server.image_request_count() == 8  # nothing requested again
        assert len(server.api_requests()) == 2    # the listing is fetched again
        assert (summary.saved, summary.present) == (0, 8)
        assert len(descriptions(tmp_path)) == 8

        broken = tmp_path / "images" / server.names[3]
        broken.write_bytes(server.body(server.names[3])[:500])  # e.g. damaged by hand
        summary = scrape(server, tmp_path, max_rps=200)
        assert (summary.saved, summary.present) == (1, 7)
        assert server.count(server.image_path(server.names[3])) == 2
        assert broken.read_bytes() == server.body(server.names[3])


def test_rerun_merges_with_earlier_records_and_drops_missing_files(tmp_path):
    with FakeOpenI(n_records=6) as server:
        scrape(server, tmp_path, max_rps=200)
        os.unlink(tmp_path / "images" / server.names[5])
        stale = tmp_path / "images" / ".CXR9.png.cxr-tmp-abcd1234.part"  # a killed write
        stale.write_bytes(b"half")
        os.utime(stale, (0, 0))  # older than any running writer's temp file
        summary = scrape(server, tmp_path, limit=2, max_rps=200)
        # the earlier run's records stay (files on disk), the deleted one is gone
        assert sorted(descriptions(tmp_path)) == sorted(server.names[:5])
        assert summary.present == 2
        assert not stale.exists()
