"""The page writer without a browser: escaping, links, the card data, the header's words.

Fast (no model, no browser): generated entries shaped as stage 6 hands them over
(tests/learning/gallery_data.py). The browser test (test_gallery_browser.py) checks what the
pages do; this file checks what they say.
"""
import html
import json
import math
import os
import re
from urllib.parse import unquote

import numpy as np
import pytest

from learning.explain import gallery, gallery_header
from tests.learning import gallery_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    results = tmp_path_factory.mktemp("pages")
    entries, written = gallery_data.make_run(results, 30, limit=30, examples=208)
    return results, entries, written


def _data(results):
    text = (results / gallery.DATA_FILE).read_text(encoding="ascii")
    prefix = "window.CXR_GALLERY = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix):-2])


@pytest.mark.parametrize("p, text", [(0.498, "0.498"), (0.5, "0.50"), (0.5001, "0.5001"),
                                     (0.49999, "0.49999"), (0.123, "0.12"), (0.876, "0.88"),
                                     (0.9996, "0.9996"), (0.0004, "0.0004"), (1.0, "1.00"),
                                     (0.0, "0.00")])
def test_p_never_contradicts_the_threshold(p, text):
    assert gallery.format_p(p, 0.5) == text


def test_p_formatting_keeps_the_side_of_any_threshold():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(size=2000), 0.5 + rng.normal(0, 1e-4, 2000),
                             0.3 + rng.normal(0, 1e-6, 500)])
    for threshold in (0.5, 0.3):
        for p in values.clip(0, 1):
            shown = float(gallery.format_p(p, threshold))
            assert (shown > threshold) == (p > threshold), (p, threshold)


def test_links_are_relative_percent_encoded_and_resolve(run):
    results, entries, written = run
    assert gallery.href("xray/a b#c?.png", "pages/0a") == "../../xray/a%20b%23c%3F.png"
    assert gallery.href("x[0.1,0.9].png") == "x%5B0.1%2C0.9%5D.png"
    assert gallery.root_of("pages/0a/x.html") == "../../" and gallery.root_of("x.html") == ""
    for path in written:
        assert (results / path).is_file(), path
    assert len([p for p in written if p.startswith("pictures/")]) == len(entries)
    for path in ["index.html"] + [e["files"]["page"] for e in entries]:
        page = (results / path).read_text()
        folder = (results / path).parent
        for link in re.findall(r'(?:href|src)="([^"]+)"', page):
            if link == "data:,":
                continue
            assert not link.startswith(("/", "http", "file:", "//")), link
            target = (folder / unquote(link)).resolve()
            assert target.is_file() and str(target).startswith(str(results.resolve())), link


def test_every_user_string_is_escaped(run):
    results, entries, _ = run
    index = (results / "index.html").read_text()
    assert "<test>" not in index and "&lt;test&gt;" in index  # the title
    assert "<or better>" not in index and "&lt;or better&gt;" in index  # a verdict sentence
    for entry in entries[:len(gallery_data.NASTY)]:  # the hostile names
        page = (results / entry["files"]["page"]).read_text()
        escaped = html.escape(entry["name"], quote=True)
        assert escaped == entry["name"] or entry["name"] not in page
        assert f"<h1>{escaped}</h1>" in page
        assert "/site/&lt;masked&gt;/" in page
    boxed = (results / entries[0]["files"]["page"]).read_text()
    assert "<span>Nodule &lt;b&gt;</span>" in boxed  # a finding's name
    assert "<img" not in index.replace('<img src="colour-bar.png"', "")  # cards are data ...
    assert "onerror" not in index
    names = [row[0] for row in _data(results)["rows"]]  # ... JSON, ASCII only, read back exact
    assert names == [entry["name"] for entry in entries]


def test_card_data_holds_every_card_and_its_facts(run):
    results, entries, _ = run
    data = _data(results)
    assert data["columns"] == list(gallery.COLUMNS)
    assert data["methods"] == list(gallery_data.METHODS) and data["threshold"] == 0.5
    rows = [dict(zip(data["columns"], row)) for row in data["rows"]]
    assert len(rows) == len(entries)
    for entry, row in zip(entries, rows):
        assert row["name"] == entry["name"] and row["outcome"] == entry["outcome"]
        assert row["p"] == entry["p_abnormal"]
        assert row["p_text"] == gallery.format_p(entry["p_abnormal"])
        assert row["source"] == entry["source"] and row["view"] == entry["view"]
        assert row["modality"] == (entry["modality"] or "")
        assert unquote(row["page"]) == entry["files"]["page"]
        assert [unquote(p) for p in row["pictures"]] == [
            entry["methods"][m]["picture"] for m in gallery_data.METHODS]
        expected = [None if not entry["methods"][m]["score"]
                    else int(entry["methods"][m]["score"]["pointing"])
                    for m in gallery_data.METHODS]
        assert row["pointing"] == expected
        assert len(row["boxes"]) == len(entry["boxes"])
        for box, (finding, left, top, width, height) in zip(entry["boxes"], row["boxes"]):
            assert finding == box["finding"]
            assert math.isclose(left, 100 * box["x"] / 128, abs_tol=1e-3)
            assert math.isclose(height, 100 * box["h"] / 128, abs_tol=1e-3)
    assert rows[3]["p_text"] == "0.498" and rows[3]["outcome"] == "FN"


def test_detail_page_shows_provenance_colour_bar_and_the_card_picture(run):
    results, entries, _ = run
    entry = entries[4]
    page = (results / entry["files"]["page"]).read_text()
    for fact in ("/site/&lt;masked&gt;/study-4/IM00004.dcm", "<td>AP</td>", "<td>DX</td>"):
        assert fact in page
    for method in gallery_data.METHODS:
        picture = "../../" + entry["methods"][method]["picture"]
        assert f'<img class="layer map" src="{picture}"' in page  # the card's picture file
    assert page.count('src="../../colour-bar.png"') == 2
    assert "full colour at &plusmn;0.0123 logit units (per-image scale" in page
    assert "full colour at &plusmn;0.0246 logit units (per-image scale" in page
    assert "<span>&minus;0.0123</span>" in page and "+0.0123</span>" in page
    assert page.count('class="peak" style="left:29.00%;top:50.00%"') == 2
    assert "run 20260101-120000-abcd" in page
    assert ("<th>findings</th><td>Heart size normal. &lt;script&gt;window.PWNED=2&lt;/script&gt; 4"
            "</td>") in page and "<th>impression</th><td>No acute disease.</td>" in page
    assert "<th>terms</th><td>normal</td>" in page
    assert "<th>impression</th>" not in (results / entries[5]["files"]["page"]).read_text()
    assert "smoothing: Gaussian, sigma 1.5 px of the model input" in page
    assert "<b>" + gallery.format_p(entry["p_abnormal"]) + "</b>" in page
    assert 'data-index="4"' in page and 'data-root="../../"' in page


def test_header_words(run):
    results, _, _ = run
    index = (results / "index.html").read_text()
    assert ("AUROC and accuracy are on the model's whole test set of 208 images (stage 5); "
            "this gallery shows 30 cards (--limit 30 of 208 examples).") in index
    for control in gallery_header.CONTROLS.values():
        assert html.escape(control, quote=True) in index
    assert "does NOT beat the controls" in index and "localizes: beats all 3 controls" in index
    assert index.count("its own average map") == 2  # each method's own mean-map control
    assert "&lt;or better&gt;" in index and "maps that use no image &lt;no model&gt;" in index
    assert "(+2 with no positive value)" in index and "run 20260101-120000-abcd" in index
    sanity = index[index.index('<div id="sanity">'):]
    grad_cam = sanity[sanity.index("<td>grad-cam</td>"):sanity.index("<td>deeplift</td>")]
    assert "head kernels re-drawn: <span class=\"unsure\">could not be checked" in grad_cam
    assert "rho 0.21 (2 of 2 images)" in grad_cam and "changes with the weights" not in grad_cam
    assert "could not be checked (a correlation is undefined" in grad_cam  # never a pass
    assert "changes with the weights" in sanity[sanity.index("<td>deeplift</td>"):]
    assert "rho above 0.90" in sanity
    assert index.count("<div class=\"argmax\"") == 2 and "inside the lung fields 88%" in index
    assert index.count("<td style=\"background:rgb(") == 2 * 64  # two 8 x 8 grids
    assert 'id="roc"' in index and "mean nothing clinically" in index
    outcome_counts = re.findall(r'class="badge (\w+)">\1</span> (\d+)</label>', index)
    assert sum(int(n) for _, n in outcome_counts) == 30


def test_sanity_nan_and_missing_reports():
    nan = {"methods": {"grad-cam": {"head": {"mean_rho": float("nan")}}}, "flagged": [],
           "images": ["a"]}
    text = gallery_header.sanity_html(nan)
    assert "could not be checked" in text and "changes with the weights" not in text
    none = {"methods": {"grad-cam": {"head": {"mean_rho": None}}}, "flagged": [], "images": []}
    assert "could not be checked" in gallery_header.sanity_html(none)
    flagged = {"methods": {"x": {"head": {"mean_rho": 0.9}}}, "flagged": ["x"], "images": []}
    assert "FLAGGED" in gallery_header.sanity_html(flagged)
    assert "not run" in gallery_header.sanity_html(None)


def test_scope_without_limit_and_a_localizing_method():
    assert gallery_header.scope_html(None, {}, 1) == (
        "<div class=\"meta\" id=\"scope\">this gallery shows 1 card.</div>")
    assert "(--name '0001*')" in gallery_header.scope_html(
        50, {"name_filter": "0001*"}, 3).replace("&#x27;", "'")
    assert "localizes: beats all 3 controls" in gallery_header._verdict({"localizes": True}, 3)
    assert "whole test set of 50 images" in gallery_header.classifier_html(
        {"test": {"roc_auc": 0.9}}, {"test_n": 50}, 3)


def test_an_older_localization_report_still_reads():
    """Today's localization.json: `baselines`, `versus`, `beats_baselines`."""
    block = {"summary": {"box_fraction": 0.09},
             "ci": {"pointing": {"mean": 0.3, "low": 0.1, "high": 0.5},
                    "inside_share": {"mean": 0.2, "low": 0.1, "high": 0.3}, "images": 7}}
    report = {"methods": {"deeplift": dict(block, beats_baselines=False, versus={
        "lung_prior": {"pointing": {"mean": -0.1, "low": -0.3, "high": 0.1, "beats": False},
                       "inside_share": {"mean": 0.0, "low": -0.1, "high": 0.1, "beats": False}}})},
        "baselines": {"centred_gaussian": block, "lung_prior": block}}
    text = gallery_header.localization_html(report)
    assert "Localization on 7 image(s)" in text and "does NOT beat the controls" in text
    assert "lung-field prior (no model)" in text and "centred Gaussian (no model)" in text
    assert "deeplift &minus; lung-field prior (no model)</td><td class=\"\">-0.10 [-0.30, 0.10]" \
        in text
    assert "own average map" not in text and "chance level: the boxes cover 0.09" in text
    assert "nothing scored" in gallery_header.localization_html(None)


def test_assets_ship_with_the_package():
    folder = os.path.join(os.path.dirname(gallery.__file__), "assets")
    for name in gallery.ASSETS:
        assert os.path.getsize(os.path.join(folder, name)) > 1000
    setup = open(os.path.join(os.path.dirname(gallery.__file__), "..", "..", "setup.cfg")).read()
    assert "learning.explain = assets/*.js, assets/*.css" in setup


def test_10000_cards_write_one_compact_data_file(tmp_path):
    entries = gallery_data.make_entries(str(tmp_path), 10_000, distinct=4)
    text = "".join(gallery.gallery_data(entries, list(gallery_data.METHODS),
                                        gallery_data.make_header(gallery)))
    assert len(text) < 400 * 10_000  # ~0.3 KB a card: parsed in milliseconds
    assert len(json.loads(text[len("window.CXR_GALLERY = "):-2])["rows"]) == 10_000


# ----------------------------------------------------------------------------- a findings model

@pytest.fixture(scope="module")
def findings_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("findings")
    entries, written = gallery_data.make_run(results, 30, findings=gallery_data.FINDINGS)
    return results, entries, written


def test_findings_cards_hold_p_per_finding_and_each_finding_map(findings_run):
    results, entries, _ = findings_run
    data = _data(results)
    names = list(gallery_data.FINDINGS)
    assert data["columns"] == list(gallery.COLUMNS) + list(gallery.FINDING_COLUMNS)
    assert data["findings"] == names and data["finding_p"] == 0.5
    rows = [dict(zip(data["columns"], row)) for row in data["rows"]]
    assert len(rows) == len(entries)
    without = 0
    for entry, row in zip(entries, rows):
        assert row["findings"] == [entry["findings"][name] for name in names]  # exact floats
        maps = {(gallery_data.METHODS[m], names[f]): (unquote(picture), hit)
                for m, f, picture, hit in row["finding_maps"]}
        expected = {(info["method"], info["finding"]): (
            info["picture"], None if not info["score"] else int(info["score"]["pointing"]))
            for info in entry["finding_maps"].values()}
        assert maps == expected
        without += not maps
    assert without == 6  # every fifth image has no finding map: its cards must say so
    assert rows[1]["findings"] == [0.9] * 3 and len(rows[1]["finding_maps"]) == 6
    assert max(rows[2]["findings"]) < 0.5 and len(rows[2]["finding_maps"]) == 2  # most probable


def test_findings_controls_count_each_predicted_finding(findings_run):
    results, entries, _ = findings_run
    summary = gallery.card_summary(iter_once(entries), list(gallery_data.METHODS))
    assert summary["total"] == 30
    assert summary["findings"] == {name: sum(e["findings"][name] > 0.5 for e in entries)
                                   for name in gallery_data.FINDINGS}
    index = (results / "index.html").read_text()
    for name, n in summary["findings"].items():
        assert f'<option value="{name}">{name} ({n})</option>' in index
        assert f'<option value="grad-cam:{name}">Grad-CAM of {name}</option>' in index
        assert f'<option value="deeplift:{name}">DeepLIFT (Rescale) of {name}</option>' in index
        assert f'<option value="finding:{name}">p({name}), highest first</option>' in index
    page = (results / entries[1]["files"]["page"]).read_text()  # every finding predicted
    for name in gallery_data.FINDINGS:
        assert (f'<figure data-method="grad-cam" data-finding="{name}"><figcaption><b>Grad-CAM '
                f'of {name} (p = 0.90)</b>') in page
        assert f"<b>{name} 0.90</b>" in page


def iter_once(entries):
    """A one-pass stream (stage 6's entries are read as streams, never as a list)."""
    class Stream:
        def __iter__(self):
            return iter(entries)
    return Stream()


def test_a_binary_model_has_no_finding_columns_nor_controls(run):
    results, entries, _ = run
    data = _data(results)
    assert "findings" not in data and data["columns"] == list(gallery.COLUMNS)
    assert all(len(row) == len(gallery.COLUMNS) for row in data["rows"])
    index = (results / "index.html").read_text()
    assert 'id="finding"' not in index and "finding:" not in index
    assert "predicted finding" not in index and "no-map" not in index
    assert gallery.card_summary(entries, list(gallery_data.METHODS))["findings"] == {}
    assert gallery.card_row(entries[0], list(gallery_data.METHODS), 0.5) == gallery.card_row(
        entries[0], list(gallery_data.METHODS), 0.5, findings=[])
