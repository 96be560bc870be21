"""Shared helpers: the description schema, atomic writes, the image loader."""
import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from scraper import fileio, images, schema
from scraper.cli import UserError, run_main

DEMO_IMAGE = pathlib.Path(__file__).resolve().parents[2] / "demo/nih-24/images/00000150_002.png"


@pytest.mark.parametrize("terms, label", [
    (["normal"], "normal"), (["Normal"], "normal"), (["Cardiomegaly/mild"], "abnormal"),
    (["normal", "Granuloma"], "abnormal"), (["No Indexing"], None), ([], None), (None, None),
])
def test_label_from_mesh_follows_the_original_rule(terms, label):
    assert schema.label_from_mesh(terms) == label


@pytest.mark.parametrize("value, label", [
    ("normal", "normal"), ("ABNORMAL", "abnormal"), (0, "normal"), ("1", "abnormal"),
    (1.0, "abnormal"), ("", None), (None, None), (float("nan"), None)])
def test_normalize_label(value, label):
    assert schema.normalize_label(value) == label


def test_normalize_label_names_the_bad_value():
    with pytest.raises(ValueError, match="invalid label 'maybe'"):
        schema.normalize_label("maybe")


def test_records_validate_and_round_trip(tmp_path):
    record = schema.make_record("a.png", "folder", label="abnormal", report_id="p1",
                                boxes=[schema.make_box("Pneumonia", 1, 2, 3, 4)])
    assert set(record) == set(schema.FIELDS) and record["image"] == "images/a.png"
    schema.save_descriptions(tmp_path / "d.json", [record])
    assert schema.load_descriptions(tmp_path / "d.json") == [record]
    for bad in ({**record, "label": "sick"}, {**record, "name": "../x.png"},
                {**record, "source": "web"}):
        with pytest.raises(ValueError):
            schema.validate_record(bad)
    with pytest.raises(ValueError, match="positive"):
        schema.make_box("x", 0, 0, 0, 5)


def test_load_descriptions_reports_the_bad_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"name": "a.png"}]')
    with pytest.raises(UserError, match=r"record #0: .*lacks field"):
        schema.load_descriptions(path)
    path.write_text("<html>")
    with pytest.raises(UserError, match="not valid JSON"):
        schema.load_descriptions(path)


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "out.json"
    fileio.atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target, "w", encoding="utf-8") as handle:
            handle.write('{"v": 2, "half')
            raise RuntimeError("killed")
    assert fileio.read_json(target) == {"v": 1}
    assert os.listdir(tmp_path) == ["out.json"]  # no temp file left behind
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_image_checks_reject_html_and_truncated_png():
    data = DEMO_IMAGE.read_bytes()
    assert images.check_image_bytes(data) == (512, 512, "PNG")
    with pytest.raises(images.BadImage, match="HTML"):
        images.check_image_bytes(b"<!DOCTYPE html><html>down for maintenance</html>")
    with pytest.raises(images.BadImage, match="not a decodable image"):
        images.check_image_bytes(data[: len(data) // 2])
    with pytest.raises(images.BadImage, match="empty"):
        images.check_image_bytes(b"")


def test_load_rgb_handles_modes_and_sizes(tmp_path):
    gray = np.asarray(Image.open(DEMO_IMAGE))
    rgb = images.load_rgb(DEMO_IMAGE, 64)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 2])  # grayscale copied to 3 channels
    sixteen = tmp_path / "16bit.png"
    Image.fromarray(gray.astype(np.uint16) * 200 + 1000).save(sixteen)
    out = images.load_rgb(sixteen)
    assert out.min() == 0 and out.max() == 255  # stretched, not clipped at 255
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)])).save(rgba)
    assert np.array_equal(images.load_rgb(rgba)[..., 0], gray)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "JPEG")
    (tmp_path / "x.jpg").write_bytes(buffer.getvalue())
    assert images.load_rgb(tmp_path / "x.jpg", (32, 48)).shape == (48, 32, 3)


def test_run_main_turns_user_errors_into_one_line(capsys):
    def main(argv):
        raise UserError("bad thing: /x", exit_code=3)
    assert run_main(main, "cxr-x") == 3
    assert capsys.readouterr().err == "cxr-x: error: bad thing: /x\n"


def test_csv_cells_that_a_spreadsheet_would_evaluate_are_neutralised(tmp_path):
    from scraper.fileio import atomic_write_csv, csv_cell

    for formula in ("=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(formula) == "'" + formula
    for plain in ("-0.5", "+3", "1e-05", "normal", "", "a=b"):
        assert csv_cell(plain) == plain
    assert csv_cell(None) == ""
    path = tmp_path / "x.csv"
    atomic_write_csv(path, ["name", "p"], [["=cmd|' /C calc'!A0", "-0.250000"]])
    assert path.read_text() == "name,p\n'=cmd|' /C calc'!A0,-0.250000\n"


@pytest.mark.parametrize("rows", [[], [{"a": 1}], [
    {"name": "\u00fc \"q\" \\n <x>", "files": {"page": "a/b.html"}, "v": [1, 2.5, None, []]},
    {"b": {}, "c": "line\nbreak"}]])
def test_json_rows_are_the_same_bytes_as_the_list(tmp_path, rows):
    fileio.atomic_write_json_rows(tmp_path / "rows.json", iter(rows))
    fileio.atomic_write_json(tmp_path / "list.json", rows)
    assert (tmp_path / "rows.json").read_bytes() == (tmp_path / "list.json").read_bytes()


def test_json_rows_and_csv_are_written_row_by_row(tmp_path):
    """20,000 rows of ~250 bytes from a generator (5 MB of text): the writers hold one row,
    not the list or its text (stage 6's index.json and index.csv at 100,000 images)."""
    import csv
    import json
    import tracemalloc

    def rows():
        return ({"name": f"img_{i:06d}.png", "p": i / 20_000, "files": {
            "picture": f"pictures/{i % 256:02x}/img_{i:06d}[0.50,0.50]_grad-cam.png",
            "page": f"pictures/{i % 256:02x}/img_{i:06d}[0.50,0.50].html"}}
            for i in range(20_000))
    peaks = []
    for write in (lambda: fileio.atomic_write_json_rows(tmp_path / "index.json", rows()),
                  lambda: fileio.atomic_write_csv(tmp_path / "index.csv", ["name", "p", "page"], (
                      [r["name"], f"{r['p']:.6f}", r["files"]["page"]] for r in rows()))):
        tracemalloc.start()
        write()
        peaks.append(tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
    assert max(peaks) < 0.5 < 2.5 < (tmp_path / "index.json").stat().st_size / 1e6, peaks
    back = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    assert len(back) == 20_000 and back[7] == next(r for k, r in enumerate(rows()) if k == 7)
    with open(tmp_path / "index.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert len(table) == 20_001 and table[20_000] == [
        "img_019999.png", "0.999950", "pictures/1f/img_019999[0.50,0.50].html"]
