"""Stage 6 end to end on demo X-rays (64 px random VGG16 + a tiny head built here): the one
picture per map (pixel-wise), file naming and shard folders, maps.npz from which every
localization number is recomputed, the three controls, the manifest, runs swapped in whole
(real SIGKILL), the model folder's checks, and one-line errors for bad input."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import quote, unquote

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from learning import visualization  # noqa: E402
from learning.explain import (entries, localization, outputs, render,  # noqa: E402
                              results_folder, verdict)
from scraper.cli import UserError, run_main  # noqa: E402
from scraper.images import image_size  # noqa: E402
from scraper.schema import load_descriptions, make_box  # noqa: E402
from tests.learning.stage6_data import (BOXED, DEMO, OTHERS, SIZE, add_classifier, argv,  # noqa
                                        build_data)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(run):
    return json.loads((run / "index.json").read_text())


def test_index_rows_files_and_completeness(stage6_run):
    run = stage6_run
    rows = _rows(run)
    assert len(rows) == 6  # 3 images x 2 methods; the missing example was skipped
    assert [r["p_abnormal"] for r in rows] == sorted((r["p_abnormal"] for r in rows), reverse=True)
    for row in rows:
        assert row["p_normal"] + row["p_abnormal"] == pytest.approx(1.0, abs=1e-6)
        prefix = "{}[{:.2f},{:.2f}]".format(row["name"][:-4], row["p_normal"], row["p_abnormal"])
        folder = results_folder.shard(row["name"])
        assert re.fullmatch(r"pictures/[0-9a-f]{2}", folder)
        assert row["files"] == {"picture": f"{folder}/{prefix}_{row['method']}.png",
                                "xray": f"{folder}/{prefix}__xray.jpg",
                                "page": f"{folder}/{prefix}.html"}  # the original's prefix
        for name in row["files"].values():
            assert (run / name).is_file()
        if row["method"] == "deeplift":
            assert row["completeness_delta"] < 1e-3
        else:
            assert row["completeness_delta"] is None
        expected = entries.outcome(row["label"], row["p_abnormal"], 0.5)
        assert row["outcome"] == expected and expected in ("TP", "FP", "FN", "TN")
    table = list(csv.DictReader(open(run / "index.csv")))
    assert len(table) == 6 and set(table[0]) == set(outputs.INDEX_COLUMNS)
    info = json.loads((run / "run.json").read_text())
    assert info["missing"] == ["not_there.png"] and info["explained"] == 3
    assert info["scale"] == "per-image" and info["colour_scales"] is None
    assert info["explained_model"] == "head.keras + weights" and info["model_run_id"] == \
        "train-run-1"
    # the manifest names exactly what is in the folder: its files and the pictures/ folder
    assert sorted(info["files"] + ["pictures"]) == sorted(os.listdir(run))
    assert info["folders"] == ["pictures/"] and info["orphans_removed"] == []
    pictures = [name for _, _, files in os.walk(run / "pictures") for name in files]
    assert len(pictures) == 3 * (1 + 2 + 1)  # per image: X-ray, 2 maps, detail page


def test_every_view_of_a_map_is_the_one_picture_pixel_for_pixel(stage6_run):
    """Issue 17 defect 2: the card and the detail page showed two different pictures of one
    map under one stated 'full colour at'. Now both show the file render.picture() made, and
    the stated top is exactly where full colour begins."""
    run = stage6_run
    info = json.loads((run / "run.json").read_text())
    data = (run / "gallery-data.js").read_text()
    from PIL import Image

    with np.load(run / "maps.npz", allow_pickle=False) as maps:
        for row in _rows(run):
            signed = maps[f"map/{row['name']}/{row['method']}"]
            drawn = np.asarray(Image.open(run / row["files"]["picture"]))
            expected = render.picture(signed, row["scale_top"], info["smooth"],
                                      info["display_size"])
            assert drawn.shape == (128, 128, 4) and np.array_equal(drawn, expected)
            # full colour (yellow / cyan) exactly where |smoothed map| >= the stated top
            values = render.resize(render.smooth(signed, info["smooth"]), 128)
            full = drawn[..., 1] == 255
            assert np.array_equal(full, np.abs(values) / np.float32(row["scale_top"]) >= 1)
            assert 0 < full.mean() < 0.05  # the 99.5th percentile: a few per cent, not 13 %
            # the card and the detail page reference this very file, and no other map picture
            assert quote(row["files"]["picture"], safe="/") in data
            page = (run / row["files"]["page"]).read_text()
            assert quote(os.path.basename(row["files"]["picture"]), safe="/") in page
            xray = np.asarray(Image.open(run / row["files"]["xray"]))
            assert xray.shape == (128, 128)
    bar = np.asarray(Image.open(run / render.COLOUR_BAR_FILE))
    assert np.array_equal(bar, render.colour_bar())
    assert np.array_equal(bar[0, -1], render.over_grey(render.colourize(np.float32([1]), 1),
                                                       128)[0])


def test_pages_link_only_files_of_the_results_folder(stage6_run):
    """Every href/src of the gallery and the detail pages (in pictures/<xx>/) resolves to a
    file of the results folder, relative to the page: the folder works copied anywhere."""
    run = stage6_run
    pages = [run / "index.html"] + sorted(run.glob("pictures/*/*.html"))
    assert len(pages) == 1 + 3
    for page_path in pages:
        page = page_path.read_text()
        links = [link for link in re.findall(r'(?:href|src)="([^"]+)"', page)
                 if link != "data:," and not link.startswith("#")]
        assert len(links) >= 3, page_path
        for link in links:
            assert not link.startswith(("/", "http", "file:", "//")), link
            target = (page_path.parent / unquote(link.split("#")[0])).resolve()
            assert target.is_file() and run.resolve() in target.parents, (page_path, link)
        assert "mean nothing clinically" in page and "cdn" not in page.lower()


def test_picture_colour_scale_is_signed_and_symmetric():
    signed = np.zeros((8, 8), np.float32)
    signed[2, 2], signed[5, 5], signed[0, 7] = 2.0, -2.0, 0.5
    rgba = render.picture(signed, 2.0, 0, 8)
    assert tuple(rgba[2, 2]) == (255, 255, 0, round(255 * render.MAX_ALPHA))  # +top: yellow
    assert tuple(rgba[5, 5]) == (0, 255, 255, round(255 * render.MAX_ALPHA))  # -top: cyan
    assert rgba[0, 0, 3] == 0 and rgba[0, 7, 0] == 255 and rgba[0, 7, 2] == 0  # 0: clear
    assert rgba[0, 7, 3] == round(255 * render.MAX_ALPHA * np.sqrt(63 / 255))  # trunc(63.75)
    assert render.scale_top(np.zeros((4, 4))) is None
    assert not render.picture(np.zeros((4, 4)), None, 1.0, 8).any()


def test_maps_npz_recomputes_every_localization_number(stage6_run):
    """What a user can do: from maps.npz and the boxes, every number of localization.json,
    the mean-map control included."""
    run = stage6_run
    with np.load(run / "maps.npz", allow_pickle=False) as maps:
        names, methods = list(maps["names"]), list(maps["methods"])
        assert methods == ["deeplift", "grad-cam"] and sorted(names) == sorted([BOXED] + OTHERS)
        assert int(maps["image_size"]) == SIZE and maps["image_size"].dtype == np.int64
        assert maps["p_abnormal"].shape == (3,) and maps["completeness_delta"].shape == (3, 2)
        assert np.isnan(maps["completeness_delta"][:, 1]).all()  # grad-cam has no completeness
        assert (maps["completeness_delta"][:, 0] < 1e-3).all()
        readme = json.loads(str(maps["README"]))
        assert "NaN for methods" in readme["completeness_delta"]
        run_id = str(maps["run_id"])
        signed = {(n, m): maps[f"map/{n}/{m}"] for n in names for m in methods}
    assert all(a.dtype == np.float32 and a.shape == (SIZE, SIZE) for a in signed.values())
    assert any((a < 0).any() for (n, m), a in signed.items() if m == "deeplift")  # signed

    report = json.loads((run / "localization.json").read_text())
    assert report["run_id"] == run_id == json.loads((run / "run.json").read_text())["run_id"]
    assert report["image_size"] == SIZE and isinstance(report["image_size"], int)
    assert "T(iobb>T)@L" in report["description"]["summary"]
    records = {r["name"]: r for r in load_descriptions(str(run.parent / "images-description.json"))}
    for name, boxes in report["boxes"].items():
        original = image_size(str(run.parent / "images" / name))
        assert boxes == localization.scale_boxes(records[name]["boxes"], original, (SIZE, SIZE))
    seed = report["seed"]

    def check(block, heatmap_of):
        per_image = [dict(localization.image_metrics(heatmap_of(name), report["boxes"][name]),
                          name=name) for name in report["boxes"]]
        assert block["per_image"] == per_image  # exactly: JSON keeps floats as they were
        assert block["summary"] == localization.summarize(per_image)
        assert block["ci"] == localization.summarize_with_ci(per_image, seed=seed)
        return per_image

    shape = (SIZE, SIZE)
    fixed = {"centred_gaussian": localization.gaussian_map(shape),
             "lung_prior": localization.lung_prior_map(shape)}
    control_scores = {key: check(report["controls"][key], lambda name, m=m: m)
                      for key, m in fixed.items()}
    for method in methods:
        block = report["methods"][method]
        scores = check(block, lambda name: np.maximum(signed[(name, method)], 0))
        positive = [np.maximum(signed[(n, method)], 0).astype(np.float64) for n in names]
        mean_map = sum(p / p.max() for p in positive if p.max() > 0) / len(names)
        own = check(block["mean_map"], lambda name: mean_map)
        localizes = True
        for key, control in dict(control_scores, mean_map=own).items():
            for metric in ("pointing", "inside_share"):
                diff = [float(a[metric]) - float(b[metric]) for a, b in zip(scores, control)]
                ci = localization.bootstrap_ci(diff, seed=seed)
                assert block["difference_vs"][key][metric] == dict(
                    ci, beats=bool(ci["low"] is not None and ci["low"] > 0))
                localizes = localizes and block["difference_vs"][key][metric]["beats"]
        assert block["localizes"] == localizes and block["verdict"]
        grid = block["argmax_grid"]
        assert np.array(grid["grid"]).shape == (8, 8) and grid["n"] + grid["no_positive"] == 3


def test_sanity_report_is_a_stated_sample(stage6_run):
    sanity = json.loads((stage6_run / "sanity.json").read_text())
    assert set(sanity["methods"]["deeplift"]["stages"]) == {"head", "head+block5"}
    assert len(sanity["methods"]["deeplift"]["stages"]["head"]["per_image"]) == 2
    assert "a sample of 2 of the 3 explained images" in sanity["sample_note"]
    assert "block5_conv3" in sanity["stages"]["head+block5"]
    assert sanity["run_id"] == json.loads((stage6_run / "run.json").read_text())["run_id"]


def test_provenance_reaches_the_pages(stage6_run):
    data = (stage6_run / "gallery-data.js").read_text()
    assert "/import/PATIENT-XXXX/00000193_019.png" in data and '"DX"' in data
    assert '"PA"' in data


def test_errors_are_one_line(tmp_path, capsys):
    root = build_data(tmp_path / "a", seed_in_config=1)
    with pytest.raises(UserError, match="model was trained on features from random:seed=1, "
                                        "these weights are random:seed=0"):
        visualization.main(argv(root))
    (root / "examples.json").write_text("[]")
    with pytest.raises(UserError, match="examples list is empty"):
        visualization.main(argv(root))
    (root / "examples.json").write_text('["nope.png"]')
    with pytest.raises(UserError, match="none of the 1 examples has an image file"):
        visualization.main(argv(root))
    assert run_main(visualization.main, "cxr-visualize", argv(root)) == 1
    # flags are checked at parse time (run_pipeline.sh parses every stage's flags first)
    capsys.readouterr()
    for flag, value in (("--display-size", "100000"), ("--display-size", "0"),
                        ("--batch-size", "1e9"), ("--seed", "-5"), ("--smooth", "nan"),
                        ("--limit", "0"), ("--method", "deeplfit"),
                        ("--method", "grad-cam,gradcam"),
                        ("--workers", "-1"), ("--sanity-images", "0")):
        assert run_main(visualization.main, "cxr-visualize", argv(root, flag, value)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err and value.split(",")[-1] in err, err
    run_main(visualization.main, "cxr-visualize", argv(root, "--method", "deeplfit"))
    assert "allowed: deeplift, integrated-gradients, grad-cam" in capsys.readouterr().err
    assert not (root / "results").exists()


@pytest.mark.parametrize("config, message", [
    ([1, 2], "feature_params must hold"),
    ({"feature_params": {"weights": "random:seed=0", "image_size": "abc", "layer": "block5_pool",
                         "pooling": "none"}}, "image_size 'abc' must be an integer"),
    ({"feature_params": {"weights": "random:seed=0", "image_size": 10 ** 9,
                         "layer": "block5_pool", "pooling": "none"}}, "between 32 and 2048"),
    ({"feature_params": {"weights": "random:seed=0", "image_size": 64, "layer": "fc9",
                         "pooling": "none"}}, "layer 'fc9' not one of"),
    ({"feature_params": {"weights": "random:seed=0", "image_size": 64, "layer": "block5_pool",
                         "pooling": "none"}, "class_names": "normal"}, "class_names 'normal'"),
])
def test_hand_edited_model_config_is_one_line(tmp_path, config, message):
    root = build_data(tmp_path / "c")
    (root / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=re.escape(message)):
        visualization.main(argv(root))
    (root / "model" / "config.json").write_text('{"feature_params": ')
    with pytest.raises(UserError, match="model config is not valid JSON"):
        visualization.main(argv(root))


def _patch_declared_size(path, member, size):
    """Make a zip's directory (and local header) DECLARE `size` inflated bytes for `member`."""
    import struct
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    struct.pack_into("<I", data, info.header_offset + 22, size)   # local file header
    patched = 0
    for start in [m.start() for m in re.finditer(b"PK\x01\x02", bytes(data))]:  # directory
        name_len = struct.unpack_from("<H", data, start + 28)[0]
        if bytes(data[start + 46:start + 46 + name_len]) == member.encode():
            struct.pack_into("<I", data, start + 24, size)
            patched += 1
    assert patched == 1
    path.write_bytes(bytes(data))


def test_model_folder_checks_are_one_line(tmp_path):
    """Issue 18: mixed run ids, a garbage head.keras, a zip bomb of a config.json."""
    root = build_data(tmp_path / "m")
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    (root / "model" / "metrics.json").write_text(json.dumps(dict(metrics, run_id="other-run")))
    with pytest.raises(UserError, match=r"mixes two training runs \(config.json 'train-run-1', "
                                        r"metrics.json 'other-run'\)"):
        visualization.main(argv(root))
    (root / "model" / "metrics.json").write_text(json.dumps(metrics))
    head = (root / "model" / "head.keras").read_bytes()
    (root / "model" / "head.keras").write_bytes(b"garbage, not a zip" * 10)
    with pytest.raises(UserError, match=r"head.keras is not a Keras model file \(a .keras file "
                                        r"is a zip archive"):
        visualization.main(argv(root))
    (root / "model" / "head.keras").write_bytes(head)
    _patch_declared_size(root / "model" / "head.keras", "config.json", 3_000_000_000)
    with pytest.raises(UserError, match=r"its config.json would inflate to 3,000,000,000 bytes .*"
                                        r"refused before reading it"):
        visualization.main(argv(root))
    assert not (root / "results").exists()


def test_classifier_keras_is_what_is_explained(tmp_path):
    """A folder with classifier.keras is explained through it: a fine-tuned conv base
    (config.json train_blocks) gives that network's probabilities, not the rebuilt one's, and
    Grad-CAM finds its conv layer; the weights argument is then not needed."""
    root = build_data(tmp_path / "k")
    assert visualization.main(argv(root, "--method", "grad-cam", "--workers", "0")) == 0
    rebuilt = {r["name"]: r["p_abnormal"] for r in _rows(root / "results")}
    classifier = add_classifier(root, fine_tuned=True)
    args = ["no-such-weights.h5"] + argv(root)[1:5] + ["--method", "grad-cam,deeplift",
                                                      "--display-size", "128", "--workers", "0"]
    assert visualization.main(args) == 0
    rows = _rows(root / "results")
    info = json.loads((root / "results" / "run.json").read_text())
    assert info["explained_model"] == "classifier.keras" and not info["random_weights"] is None
    from learning.vgg import load_image

    for row in rows:
        image = load_image(str(root / "images" / row["name"]), SIZE)[None].astype(np.float32)
        logits = np.asarray(classifier.predict(image, verbose=0), np.float64)[0]
        p = 1 / (1 + np.exp(logits[0] - logits[1]))
        assert row["p_abnormal"] == pytest.approx(p, abs=1e-5)
        assert abs(row["p_abnormal"] - rebuilt[row["name"]]) > 1e-4  # not the rebuilt network
        if row["method"] == "deeplift":
            assert row["completeness_delta"] < 1e-3
    with np.load(root / "results" / "maps.npz", allow_pickle=False) as maps:
        assert all(maps[f"map/{r['name']}/grad-cam"].max() > 0 for r in rows)
    os.unlink(root / "model" / "classifier.keras")  # fine-tuned without it: refused, one line
    with pytest.raises(UserError, match=r"fine-tuned \(train_blocks \[5\]\) but "
                                        r"classifier.keras is missing"):
        visualization.main(argv(root))


def test_results_folder_must_not_be_or_hold_inputs(tmp_path):
    root = build_data(tmp_path / "d")
    before = sorted(os.listdir(root / "images"))
    base = argv(root)[:4]
    for results, message in ((root / "images", "is the image folder"),
                             (root / "images" / "out", "is inside the image folder"),
                             (root, "contains the input")):
        with pytest.raises(UserError, match=message):
            visualization.main(base + [str(results), "--random-weights", "--method", "grad-cam"])
    os.symlink(root / "images", root / "link")  # a link to the image folder is the same folder
    with pytest.raises(UserError, match="is the image folder"):
        visualization.main(base + [str(root / "link"), "--random-weights"])
    assert sorted(os.listdir(root / "images")) == before


def test_rerun_deletes_only_files_it_wrote(tmp_path):
    root = build_data(tmp_path / "e")
    results = root / "results"
    assert visualization.main(argv(root, "--method", "grad-cam", "--workers", "1")) == 0
    first = json.loads((results / "run.json").read_text())
    # a user's files, one named like ours, survive any re-run
    mine = ["00000150_002[my notes].png", "notes.txt"]
    for name in mine:
        (results / name).write_text("mine")
    (results / "old-version[0.50,0.50]_grad-cam.png").write_text("x")  # an older run's file
    info = dict(first, files=first["files"] + ["old-version[0.50,0.50]_grad-cam.png"])
    (results / "run.json").write_text(json.dumps(info))
    assert visualization.main(argv(root, "--method", "grad-cam", "--name", "0000015*",
                                   "--workers", "1")) == 0
    second = json.loads((results / "run.json").read_text())
    assert second["previous_run_id"] == first["run_id"] != second["run_id"]
    assert set(os.listdir(results)) == set(second["files"]) | set(mine) | {"pictures"}
    pictures = [n for _, _, files in os.walk(results / "pictures") for n in files]
    assert len(pictures) == 3 and all(n.startswith("00000150_002[") for n in pictures)
    with np.load(results / "maps.npz", allow_pickle=False) as maps:
        assert list(maps["names"]) == [BOXED] and str(maps["run_id"]) == second["run_id"]
    assert visualization.main(argv(root, "--method", "grad-cam", "--limit", "2",
                                   "--scale", "shared", "--workers", "0")) == 0
    info = json.loads((results / "run.json").read_text())
    assert info["explained"] == 2 and info["scale"] == "shared" and info["limit"] == 2
    top = info["colour_scales"]["grad-cam"]
    assert top > 0 and {r["scale_top"] for r in _rows(results)} == {top}
    assert set(os.listdir(results)) == set(info["files"]) | set(mine) | {"pictures"}


def test_same_stem_images_both_survive(tmp_path):
    root = build_data(tmp_path / "f", names={"x.png": BOXED, "x.jpg": OTHERS[0]}, boxes={})
    assert visualization.main(argv(root, "--method", "grad-cam", "--workers", "0")) == 0
    rows = _rows(root / "results")
    assert sorted(r["name"] for r in rows) == ["x.jpg", "x.png"]
    xrays = {r["name"]: os.path.basename(r["files"]["xray"]) for r in rows}
    assert xrays["x.png"].startswith("x.png[") and xrays["x.jpg"].startswith("x.jpg[")
    for row in rows:
        for name in row["files"].values():
            assert (root / "results" / name).is_file()
    assert not (root / "results" / "localization.json").exists()


def test_boxes_outside_the_image_are_clipped_and_a_whole_image_box_is_not_scored(tmp_path,
                                                                                 capsys):
    boxes = {BOXED: [make_box("far", 1e9, 1e9, 50, 50), make_box("edge", -100, 400, 300, 1e6)],
             OTHERS[0]: [make_box("everything", -10, -10, 1e5, 1e5)],
             OTHERS[1]: [make_box("small", 100, 100, 200, 200)]}
    root = build_data(tmp_path / "g", boxes=boxes)
    assert visualization.main(argv(root, "--method", "grad-cam", "--workers", "0")) == 0
    err = capsys.readouterr().err
    assert f"{BOXED}: 2 expert box(es) reach outside" in err
    assert f"{OTHERS[0]}: its expert boxes cover 100% of the image" in err
    report = json.loads((root / "results" / "localization.json").read_text())
    assert set(report["excluded"]) == {OTHERS[0]}  # would score pointing 1.00 for free
    assert set(report["boxes"]) == {BOXED, OTHERS[1]}
    (edge,) = report["boxes"][BOXED]  # the far box is dropped, the edge box cut at the border
    assert image_size(str(root / "images" / BOXED)) == (512, 512)
    assert edge == {"finding": "edge", "x": 0.0, "y": 50.0, "w": 25.0, "h": 14.0}
    assert report["methods"]["grad-cam"]["summary"]["images"] == 2
    # the summary states the verdict against the three controls
    assert re.search(r"localization grad-cam on 2 boxed images: .*mean map .* It does not "
                     r"localize", err)


def test_clip_boxes_and_outcome():
    kept = verdict.clip_boxes([{"finding": "a", "x": -5, "y": 2, "w": 10, "h": 3},
                               {"finding": "b", "x": "nan", "y": 0, "w": 1, "h": 1},
                               {"finding": "c", "x": 1, "y": 1, "w": 2, "h": 2}], 20, 10, "t")
    assert kept == [{"finding": "a", "x": 0.0, "y": 2.0, "w": 5.0, "h": 3.0},
                    {"finding": "c", "x": 1.0, "y": 1.0, "w": 2.0, "h": 2.0}]
    assert [entries.outcome(label, p, 0.5) for label, p in
            (("abnormal", 0.9), ("normal", 0.9), ("abnormal", 0.5), ("normal", 0.1),
             (None, 0.9))] == ["TP", "FP", "FN", "TN", "unlabelled"]


def test_file_names_and_softmax():
    keys = results_folder.output_keys(["x.png", "y.png", "y.jpg"])
    assert keys == {"x.png": "x", "y.png": "y.png", "y.jpg": "y.jpg"}
    assert results_folder.file_prefix(keys["x.png"], 0.123, 0.877) == "x[0.12,0.88]"
    assert np.allclose(visualization.softmax([[0.0, 0.0]]), 0.5)
    shards = {results_folder.shard(f"{k:08d}.png") for k in range(2000)}
    assert len(shards) == 256  # 2,000 images spread over all 256 folders


# ----------------------------------------------------------------------------- runs, kills

def _stage6_env():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return env


def test_sigkill_while_rendering_never_mixes_two_runs(tmp_path):
    """Issue 18: a SIGKILL of stage 6 while rendering left maps.npz of the new run beside
    index/run.json of the old one, and 16 orphans in no manifest. Now the killed run's files
    stay in its staging folder; the next run lists and removes them."""
    names = {f"img{k}.png": name for k, name in
             enumerate(sorted(os.listdir(os.path.join(DEMO, "images")))[:8])}
    root = build_data(tmp_path / "kill", names=names, boxes={})
    results = root / "results"
    assert visualization.main(argv(root, "--method", "grad-cam", "--workers", "0")) == 0
    before = {name: (results / name).read_bytes() for name in
              ("run.json", "index.json", "maps.npz", "index.html")}
    first = json.loads(before["run.json"])
    process = subprocess.Popen(
        [sys.executable, "-m", "learning.visualization", *argv(
            root, "--method", "grad-cam,saliency", "--batch-size", "1", "--workers", "1",
            "--display-size", "1024")],
        cwd=ROOT, env=_stage6_env(), start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    staged = []
    while not staged and process.poll() is None and time.monotonic() < deadline:
        staged = [f for d in results.glob(".cxr-run-*.part/pictures/*") for f in os.listdir(d)
                  if f.endswith("_grad-cam.png")]
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the stage and its rendering workers
    process.wait()
    assert staged, process.stderr.read().decode()[-2000:]
    # the previous run is intact, every file of it, one run id
    assert {name: (results / name).read_bytes() for name in before} == before
    with np.load(results / "maps.npz", allow_pickle=False) as maps:
        assert str(maps["run_id"]) == first["run_id"]
    (orphan,) = [p.name for p in results.glob(".cxr-run-*.part")]
    assert visualization.main(argv(root, "--method", "grad-cam", "--workers", "0")) == 0
    info = json.loads((results / "run.json").read_text())
    assert [o["path"] for o in info["orphans_removed"]] == [orphan]
    assert info["orphans_removed"][0]["files"] >= 2  # its maps.npz and pictures
    assert not list(results.glob(".cxr-*"))
    with np.load(results / "maps.npz", allow_pickle=False) as maps:
        assert str(maps["run_id"]) == info["run_id"]


def test_a_swap_interrupted_midway_is_completed_by_the_next_run(tmp_path):
    """The swap's journal makes it roll forward: a kill between two renames of the swap
    leaves a journal, and the next run finishes the move before anything else."""
    results = tmp_path / "results"
    old = results_folder.Run(str(results)).start()
    for name in ("maps.npz", "index.json", "old-only.png"):
        open(old.path(name), "w").write(f"old {name}")
    os.makedirs(old.path("pictures/ab"))
    open(old.path("pictures/ab/a.png"), "w").write("old picture")
    open(old.path("run.json"), "w").write(json.dumps({"run_id": old.run_id, "files": [
        "maps.npz", "index.json", "old-only.png", "run.json"]}))
    assert old.swap() == 0
    new = results_folder.Run(str(results)).start()
    for name in ("maps.npz", "index.json"):
        open(new.path(name), "w").write(f"new {name}")
    os.makedirs(new.path("pictures/cd"))
    open(new.path("pictures/cd/c.png"), "w").write("new picture")
    open(new.path("run.json"), "w").write(json.dumps({"run_id": new.run_id, "files": [
        "maps.npz", "index.json", "run.json"]}))
    # the swap as Run.swap does it, killed after its first rename
    journal = f".cxr-swap-{new.run_id}.json"
    (results / journal).write_text(json.dumps({
        "run_id": new.run_id, "staging": os.path.basename(new.staging),
        "moves": ["maps.npz", "index.json", "pictures", "run.json"], "remove": ["old-only.png"]}))
    os.replace(new.path("maps.npz"), results / "maps.npz")
    assert (results / "index.json").read_text() == "old index.json"  # the mix a kill leaves
    later = results_folder.Run(str(results)).start()   # the next run: completes it first
    assert sorted(os.listdir(results)) == sorted(
        ["maps.npz", "index.json", "pictures", "run.json", os.path.basename(later.staging)])
    assert [(results / n).read_text() for n in ("maps.npz", "index.json")] == \
        ["new maps.npz", "new index.json"]
    assert json.loads((results / "run.json").read_text())["run_id"] == new.run_id
    assert os.listdir(results / "pictures") == ["cd"] and later.orphans == []
    later.abandon()
    assert sorted(os.listdir(results)) == ["index.json", "maps.npz", "pictures", "run.json"]


def test_a_killed_picture_worker_is_one_line(tmp_path):
    """A drawing process that dies (OOM killer, kill -9) ends the run with one line naming the
    way out (--workers 0), not a BrokenProcessPool traceback; the pictures of a live pool are
    exactly those of the in-process renderer."""
    image = os.path.join(DEMO, "images", BOXED)
    signed = np.random.default_rng(0).normal(size=(SIZE, SIZE)).astype(np.float32)

    def task(name, folder):
        os.makedirs(folder, exist_ok=True)
        return {"id": name, "path": image, "xray": os.path.join(folder, f"{name}.jpg"),
                "size": 96, "sigma": 1.0, "max_pixels": 10**8,
                "maps": [("m", signed, None, os.path.join(folder, f"{name}.png"))]}

    with render.Renderer(0) as here:
        here.submit(task("a", tmp_path / "here"))
    with render.Renderer(1) as pool:
        pool.submit(task("a", tmp_path / "pool"))
    assert pool.results == here.results
    assert (tmp_path / "pool" / "a.png").read_bytes() == (tmp_path / "here" / "a.png").read_bytes()
    with pytest.raises(UserError, match=r"processes drawing the pictures stopped .* --workers 0"):
        with render.Renderer(1) as pool:
            pool.submit(task("b", tmp_path / "killed"))
            for pid in list(pool._pool._processes):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            for k in range(8):
                pool.submit(task(f"c{k}", tmp_path / "killed"))
