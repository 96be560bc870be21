"""Source `folder`: the user's own images, labelled by CSV (NIH columns) or class folders."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import scraper.folder as folder
import scraper.groups as groups
from scraper.cli import UserError
from scraper.folder import flat_name, import_folder
from scraper.images import load_rgb
from scraper.schema import load_descriptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NIH = os.path.join(ROOT, "demo", "nih-24")
NIH_IMAGES = sorted(os.listdir(os.path.join(NIH, "images")))


def nih(n, size=64):
    """Demo X-ray n as a small grayscale PIL image."""
    return Image.open(os.path.join(NIH, "images", NIH_IMAGES[n])).convert("L").resize((size, size))


def records_by_name(data):
    return {r["name"]: r for r in load_descriptions(os.path.join(data, "images-description.json"))}


def records_by_source(data, images_dir):
    """{path relative to images_dir: record} (class-folder names no longer show the path)."""
    return {os.path.relpath(r["url"], images_dir): r for r in records_by_name(data).values()}


def failures_of(data):
    path = os.path.join(data, "images-failures.json")
    return json.load(open(path)) if os.path.exists(path) else []


def snapshot(directory):
    return {e.name: (e.stat().st_ino, e.stat().st_mtime_ns) for e in os.scandir(directory)}


@pytest.fixture
def class_tree(tmp_path):
    """normal/ and abnormal/ with JPEG, RGBA PNG, 16-bit PNG, a corrupt PNG and junk files."""
    src = tmp_path / "xrays"
    (src / "normal").mkdir(parents=True)
    (src / "abnormal").mkdir()
    nih(0).save(src / "normal" / "1.jpg", quality=90)
    rgba = nih(1).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(src / "normal" / "2.png")
    nih(2).convert("RGB").save(src / "abnormal" / "1.jpg")  # same name as normal/1.jpg
    sixteen = (np.asarray(nih(3), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(src / "abnormal" / "3.png")
    assert Image.open(src / "abnormal" / "3.png").mode.startswith("I;16")
    (src / "abnormal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "normal" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (src / "notes.txt").write_text("patient list\n")
    nih(4).save(src / "loose.png")                                         # no class folder
    (src / ".git").mkdir()
    (src / ".git" / "x.png").write_bytes(b"never looked at")
    return src


def test_flat_names():
    assert flat_name("normal/1.jpg") == "normal__1.jpg"
    assert flat_name("a/b/c.png") == "a__b__c.png"


def test_class_folders_with_mixed_formats_and_junk(class_tree, tmp_path, capsys):
    data = tmp_path / "data"
    summary = import_folder(data, class_tree, normal_class="normal", progress=False)
    assert (summary.saved, summary.present, summary.failed, summary.skipped,
            summary.unlabelled) == (4, 0, 1, 4, 0)
    # names are the files' own, never the class; the two 1.jpg get salted-hash suffixes
    names = sorted(os.listdir(data / "images"))
    assert names[2:] == ["2.png", "3.png"]
    assert all(re.fullmatch(r"1-[0-9a-f]{8}\.jpg", n) for n in names[:2]) and names[0] != names[1]
    assert not any("normal" in n or "abnormal" in n for n in names)
    records = records_by_source(data, class_tree)
    assert {p: (r["label"], r["name"] in names) for p, r in records.items()} == {
        "abnormal/1.jpg": ("abnormal", True), "abnormal/3.png": ("abnormal", True),
        "normal/1.jpg": ("normal", True), "normal/2.png": ("normal", True)}
    first = records["normal/2.png"]
    assert first == {
        "name": "2.png", "url": str(class_tree / "normal" / "2.png"), "type": "label",
        "items": ["normal"], "image": "images/2.png", "label": "normal",
        "report_id": "2", "findings": "", "impression": "", "caption": "", "view": None,
        "boxes": [], "source": "folder", "license": ""}
    # the copies are the user's bytes, and every mode loads as (H, W, 3) uint8
    assert (data / "images" / "3.png").read_bytes() == \
        (class_tree / "abnormal" / "3.png").read_bytes()
    assert load_rgb(data / "images" / "3.png").shape == (64, 64, 3)
    assert load_rgb(data / "images" / "2.png").dtype == np.uint8
    failures = failures_of(data)
    assert [(f["name"], f["reason"].split(" (")[0]) for f in failures] == [
        ("abnormal__broken.png", "not a decodable image")]
    err = capsys.readouterr().err
    assert "1 image(s) outside the class folders: skipped (e.g. loose.png)" in err
    assert "3 file(s) that are not images skipped" in err


def test_rerun_copies_nothing_and_picks_up_changes(class_tree, tmp_path):
    data = tmp_path / "data"
    import_folder(data, class_tree, normal_class="normal", progress=False)
    before = snapshot(data / "images")
    summary = import_folder(data, class_tree, normal_class="normal", progress=False)
    assert (summary.saved, summary.present, summary.failed, summary.skipped) == (0, 4, 1, 4)
    assert snapshot(data / "images") == before
    # a replaced source file (new inode, new content) is imported again
    os.unlink(class_tree / "normal" / "1.jpg")
    nih(5).save(class_tree / "normal" / "1.jpg")
    summary = import_folder(data, class_tree, normal_class="normal", progress=False)
    assert (summary.saved, summary.present) == (1, 3)
    name = records_by_source(data, class_tree)["normal/1.jpg"]["name"]
    assert (data / "images" / name).read_bytes() == (class_tree / "normal" / "1.jpg").read_bytes()


def test_copy_when_hard_links_are_impossible(class_tree, tmp_path, monkeypatch):
    def no_link(*args):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(folder.os, "link", no_link)
    data = tmp_path / "data"
    assert import_folder(data, class_tree, normal_class="normal", progress=False).saved == 4
    copy, source = data / "images" / "2.png", class_tree / "normal" / "2.png"
    assert copy.read_bytes() == source.read_bytes()
    assert copy.stat().st_ino != source.stat().st_ino
    assert [n for n in os.listdir(data / "images") if n.startswith(".")] == []
    summary = import_folder(data, class_tree, normal_class="normal", progress=False)
    assert (summary.saved, summary.present) == (0, 4)


def test_unknown_normal_class_names_the_folders(class_tree, tmp_path):
    with pytest.raises(UserError, match=r"normal class folder 'healthy' not found .*; "
                                        r"sub-folders with images: abnormal, normal"):
        import_folder(tmp_path / "d", class_tree, normal_class="healthy", progress=False)


def test_nih_csv_with_boxes(tmp_path):
    data = tmp_path / "data"
    summary = import_folder(data, os.path.join(NIH, "images"), os.path.join(NIH, "labels.csv"),
                            boxes_csv=os.path.join(NIH, "bboxes.csv"), label_column="abnormal",
                            group_column="patient_id", progress=False)
    assert (summary.saved, summary.failed, summary.skipped, summary.unlabelled) == (24, 0, 0, 0)
    records = records_by_name(data)
    labels = [r["label"] for r in records.values()]
    assert (labels.count("normal"), labels.count("abnormal")) == (12, 12)
    first = records["00000150_002.png"]
    assert (first["label"], first["items"], first["report_id"], first["view"]) == (
        "abnormal", ["abnormal"], "150", "AP")
    assert first["boxes"] == [{"finding": "Pneumonia", "x": 300.7, "y": 298.0, "w": 107.8,
                               "h": 90.5}]
    assert sum(len(r["boxes"]) for r in records.values()) == 8
    with open(os.path.join(NIH, "labels.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert all(records[row["image"]]["view"] == row["view"] for row in rows)


def test_csv_missing_rows_unlisted_images_and_subfolders(tmp_path):
    src = tmp_path / "src"
    (src / "study7").mkdir(parents=True)
    nih(0).save(src / "a.png")
    nih(1).save(src / "study7" / "b.png")
    nih(2).save(src / "unlisted.png")
    (src / "notes.txt").write_text("x")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label,group\n"
                      "a.png,normal,p1\n"
                      "./study7/b.png,1,p1\n"
                      "gone.png,abnormal,p2\n"
                      "notes.txt,0,p3\n"
                      "c.png,,\n")
    nih(3).save(src / "c.png")
    data = tmp_path / "data"
    summary = import_folder(data, src, labels, progress=False)
    assert (summary.saved, summary.failed, summary.skipped, summary.unlabelled) == (3, 1, 2, 1)
    assert summary.absent == 1  # gone.png: listed, not in this folder, not a failure
    records = records_by_name(data)
    assert {n: (r["label"], r["report_id"]) for n, r in records.items()} == {
        "a.png": ("normal", "p1"), "study7__b.png": ("abnormal", "p1"), "c.png": (None, "c")}
    assert records["c.png"]["items"] == []
    assert [(f["name"], f["reason"]) for f in failures_of(data)] == [
        ("notes.txt", "listed in labels.csv row 5 but not an image file")]


def test_bad_label_value_names_row_and_value(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nih(0).save(src / "a.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,abnormal\na.png,1\nb.png,maybe\n")
    with pytest.raises(UserError, match=r"labels CSV .*labels.csv: row 3 \(image b.png\): "
                                        r"invalid abnormal 'maybe'; use normal/abnormal or 0/1"):
        import_folder(tmp_path / "d", src, labels, label_column="abnormal", progress=False)
    with pytest.raises(UserError, match=r"has no column 'label' \(columns: image, abnormal\); "
                                        r"name the label column with --label-column"):
        import_folder(tmp_path / "d", src, labels, progress=False)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,finding,x,y,w,h\na.png,Mass,1,2,0,4\n")
    with pytest.raises(UserError, match=r"boxes CSV .*: row 2: invalid box .*w, h positive"):
        import_folder(tmp_path / "d", src, boxes_csv=boxes, progress=False)
    with pytest.raises(UserError, match="images folder not found"):
        import_folder(tmp_path / "d", tmp_path / "nope", progress=False)
    assert not (tmp_path / "d" / "images-description.json").exists()


def test_unlabelled_folder_is_allowed_with_a_warning(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nih(0).save(src / "a.png")
    shutil.copy(src / "a.png", src / "b.PNG")
    summary = import_folder(tmp_path / "data", src, progress=False)
    assert (summary.saved, summary.unlabelled) == (2, 2)
    assert "warning: no labels CSV and no normal class folder" in capsys.readouterr().err
    assert {r["label"] for r in records_by_name(tmp_path / "data").values()} == {None}


def test_output_inside_the_input_folder_is_not_reimported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nih(0).save(src / "a.png")
    import_folder(src / "data", src, progress=False)
    summary = import_folder(src / "data", src, progress=False)
    assert (summary.saved, summary.present, summary.skipped) == (0, 1, 2)  # json, salt: junk
    assert sorted(os.listdir(src / "data" / "images")) == ["a.png"]


def test_cxr_scrape_end_to_end(class_tree, tmp_path, capsys):
    from scraper.cli import run_main
    from scraper.scrape import main
    data = tmp_path / "data"
    assert run_main(main, "cxr-scrape", [str(data), "--source", "folder", "--images",
                                         str(class_tree), "--normal-class", "normal",
                                         "--no-progress"]) == 0
    assert "cxr-scrape: 4 saved, 0 already present, 1 failed, 4 skipped, 0 unlabelled" in \
        capsys.readouterr().err
    code = run_main(main, "cxr-scrape", [str(tmp_path / "d2"), "--source", "folder", "--images",
                                         os.path.join(NIH, "images"), "--labels",
                                         os.path.join(NIH, "labels.csv"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err
    assert err.startswith("cxr-scrape: error: labels CSV") and "--label-column" in err


# ---- only regular files are read (issue 8) --------------------------------------------------

def _import_in_subprocess(data, src, timeout=60, memory=1 << 30):
    """Run the folder import in a child with a memory cap and a deadline (a hang or an endless
    read must fail the test, not the machine)."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory * 3, memory * 3))
    code = ("import sys; from scraper.cli import run_main; from scraper.scrape import main; "
            "sys.exit(run_main(main, 'cxr-scrape', sys.argv[1:]))")
    try:
        return subprocess.run([sys.executable, "-c", code, str(data), "--source", "folder",
                               "--images", str(src), "--no-progress"], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail("the import hung (it opened a FIFO or read an endless file)")


@pytest.mark.parametrize("name, make, reason", [
    ("pipe.png", os.mkfifo, "not a regular file (a FIFO/named pipe): refused, never read"),
    ("zero.png", lambda path: os.symlink("/dev/zero", path),
     "not a regular file (a character device behind a symbolic link to /dev/zero): refused, "
     "never read")])
def test_fifo_and_dev_zero_named_png_are_refused_not_read(tmp_path, name, make, reason):
    src = tmp_path / "src"
    src.mkdir()
    nih(0).save(src / "good.png")
    make(src / name)
    result = _import_in_subprocess(tmp_path / "data", src)
    assert result.returncode == 0, result.stderr
    assert [(f["name"], f["reason"]) for f in failures_of(tmp_path / "data")] == [(name, reason)]
    assert sorted(os.listdir(tmp_path / "data" / "images")) == ["good.png"]


def test_symlinks_import_the_target_bytes_and_dangling_ones_fail(tmp_path):
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    nih(0).save(elsewhere / "target.png")
    os.symlink(os.path.join("..", "elsewhere", "target.png"), src / "linked.png")  # relative
    os.symlink(os.path.join("..", "elsewhere", "gone.png"), src / "dangling.png")
    data = tmp_path / "data"
    summary = import_folder(data, src, progress=False)
    assert (summary.saved, summary.failed) == (1, 1)
    copy = data / "images" / "linked.png"
    assert not copy.is_symlink() and copy.read_bytes() == (elsewhere / "target.png").read_bytes()
    assert [(f["name"], f["reason"]) for f in failures_of(data)] == [
        ("dangling.png", "broken symbolic link (its target '../elsewhere/gone.png' does not "
                         "exist)")]
    assert not (data / "images" / "dangling.png").exists()


# ---- patients kept together ----------------------------------------------------------------

def pediatric_tree(root):
    """Class folders named like the pediatric pneumonia set: personN_kind_M.jpeg, 2-3 films
    per patient, and normals IM-000N-0001.jpeg."""
    (root / "NORMAL").mkdir(parents=True)
    (root / "PNEUMONIA").mkdir()
    n = 0
    for person in range(8):
        for film in range(2 + person % 2):
            kind = "bacteria" if film % 2 else "virus"
            nih(n % 24, 32).save(root / "PNEUMONIA" / f"person{person}_{kind}_{film}.jpeg")
            n += 1
    for person in range(8):
        for film in range(2):
            nih(n % 24, 32).save(root / "NORMAL" / f"NORMAL2-IM{person:04d}-{film:04d}.jpeg")
            n += 1


def test_group_pattern_keeps_each_patient_on_one_side_of_the_split(tmp_path, capsys):
    from learning.learning_examples_preparing import split_examples
    pediatric_tree(tmp_path / "src")
    data = tmp_path / "data"
    import_folder(data, tmp_path / "src", normal_class="NORMAL", progress=False)
    err = capsys.readouterr().err
    # 20 pneumonia films of 8 patients share prefixes ('NORMAL2-' on 16 films is no patient)
    assert ("warning: 20 of 36 images share a name prefix with another image (8 prefixes, "
            "e.g. 'person7_' x 3) but no group is given") in err
    assert "--group-pattern '^(person\\d+)_'" in err
    import_folder(data, tmp_path / "src", normal_class="NORMAL",
                  group_pattern=r"(person\d+|IM\d+)", progress=False)
    assert "share a name prefix" not in capsys.readouterr().err
    records = sorted(records_by_name(data).values(), key=lambda r: r["name"])
    assert len(records) == 36
    patient = {r["name"]: r["report_id"] for r in records}
    assert len(set(patient.values())) == 16
    assert patient["person7_bacteria_1.jpeg"] == "person7"
    labels = [int(r["label"] == "abnormal") for r in records]
    for seed in range(5):
        subsets = split_examples(labels, [r["report_id"] for r in records], 0.25, 0.25, seed)
        sides = {}
        for record, subset in zip(records, subsets):
            sides.setdefault(record["report_id"], set()).add(subset)
        assert all(len(s) == 1 for s in sides.values()), sides
        assert {"train", "test"} <= set(subsets)


def test_group_pattern_flag_and_misses(tmp_path, capsys):
    from scraper.cli import run_main
    from scraper.scrape import main
    src = tmp_path / "src"
    src.mkdir()
    for name in ("p1_a.png", "p1_b.png", "p2_a.png", "odd.png"):
        nih(0, 32).save(src / name)
    argv = [str(tmp_path / "data"), "--source", "folder", "--images", str(src), "--no-progress"]
    assert run_main(main, "cxr-scrape", argv + ["--group-pattern", r"^(p\d+)_"]) == 0
    assert ("warning: 1 image(s) do not match --group-pattern '^(p\\\\d+)_': each is its own "
            "group (e.g. odd.png)") in capsys.readouterr().err
    groups = {n: r["report_id"] for n, r in records_by_name(tmp_path / "data").items()}
    assert groups == {"p1_a.png": "p1", "p1_b.png": "p1", "p2_a.png": "p2", "odd.png": "odd"}
    assert run_main(main, "cxr-scrape", argv + ["--group-pattern", r"p\d+"]) == 2
    assert "it needs a capture group for the patient" in capsys.readouterr().err


@pytest.mark.parametrize("names, expected", [
    ([f"{p:08d}_{i:03d}.png" for p in range(10) for i in range(2)],
     "20 of 20 images share a name prefix with another image (10 prefixes, e.g. '00000009_' x 2)"
     " but no group is given, so each image is its own group; if a prefix is a patient, keep "
     "each patient on one side of the split with --group-pattern '^(\\d+)_'"),
    ([f"img_{i:03d}.png" for i in range(20)], None),            # one scheme, no patient
    ([f"scan{i}.png" for i in range(20)], None),                  # nothing shared
])
def test_shared_prefix_warning(capsys, names, expected):
    groups.warn_shared_prefixes(names)
    err = capsys.readouterr().err.strip()
    assert err == (f"warning: {expected} (the first capture group names the patient)"
                   if expected else "")
