"""Stage 6 end to end on demo X-rays (64 px random VGG16 + a tiny head built here): file
naming as the original's, maps.npz from which every localization number is recomputed, the
gallery's and detail pages' links, the manifest, and one-line errors for bad input."""
import csv
import json
import os
import re
from urllib.parse import unquote

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from learning import box_scores, localization, results_folder, visualization  # noqa: E402
from scraper.cli import UserError, run_main  # noqa: E402
from scraper.images import image_size  # noqa: E402
from scraper.schema import load_descriptions, make_box  # noqa: E402
from tests.learning.stage6_data import BOXED, OTHERS, SIZE, argv, build_data  # noqa: E402


def test_index_rows_files_and_completeness(stage6_run):
    run = stage6_run
    rows = json.loads((run / "index.json").read_text())
    assert len(rows) == 6  # 3 images x 2 methods; the missing example was skipped
    assert [r["p_abnormal"] for r in rows] == sorted((r["p_abnormal"] for r in rows), reverse=True)
    for row in rows:
        assert row["p_normal"] + row["p_abnormal"] == pytest.approx(1.0, abs=1e-6)
        prefix = "{}[{:.2f},{:.2f}]".format(row["name"][:-4], row["p_normal"], row["p_abnormal"])
        assert row["files"]["heatmap"] == f"{prefix}_{row['method']}.png"
        assert row["files"]["base"] == f"{prefix}__base.png"  # the original's names
        for name in row["files"].values():
            assert (run / name).is_file()
        if row["method"] == "deeplift":
            assert row["completeness_delta"] < 1e-3
        else:
            assert row["completeness_delta"] is None
        expected = visualization.outcome(row["label"], row["p_abnormal"], 0.5)
        assert row["outcome"] == expected and expected in ("TP", "FP", "FN", "TN")
    assert re.fullmatch(r"00000150_002\[\d\.\d\d,\d\.\d\d\]__base\.png",
                        [r for r in rows if r["name"] == BOXED][0]["files"]["base"])
    table = list(csv.DictReader(open(run / "index.csv")))
    assert len(table) == 6 and set(table[0]) == set(visualization.INDEX_COLUMNS)
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["missing"] == ["not_there.png"] and run_info["explained"] == 3
    assert run_info["scale"] == "per-image" and run_info["colour_scales"] is None
    # the manifest names exactly what is in the folder
    assert sorted(run_info["files"]) == sorted(os.listdir(run))


def test_gallery_and_detail_links_resolve(stage6_run):
    run = stage6_run
    pages = [run / "index.html"] + sorted(run.glob("*.html"))
    assert len(pages) == 1 + 3 + 1  # the gallery (twice in the glob) and one page per image
    for page_path in set(pages):
        page = page_path.read_text()
        links = re.findall(r'(?:href|src)="([^"]+)"', page)
        assert len(links) >= 8
        for link in links:
            if link == "data:,":  # the empty favicon: no request for /favicon.ico
                continue
            assert not link.startswith(("/", "http", "file:", "//")), link
            assert (run / unquote(link)).is_file(), (page_path.name, link)
        assert "mean nothing clinically" in page
        assert "cdn" not in page.lower()  # scripts and styles: local files (checked above)
    gallery = (run / "index.html").read_text()
    assert "test AUROC <b>0.900</b> [0.850, 0.950]" in gallery  # from the model's metrics.json
    assert "majority baseline (always normal)" in gallery
    assert "lung-field prior (no model)" in gallery and "does NOT beat" in gallery
    assert "model_metrics.json" in gallery and "sanity check (model randomization" in gallery


def test_maps_npz_recomputes_every_localization_number(stage6_run, tmp_path):
    """What a user can do: from maps.npz and the boxes, every number of localization.json."""
    run = stage6_run
    with np.load(run / "maps.npz", allow_pickle=False) as maps:
        names = list(maps["names"])
        methods = list(maps["methods"])
        assert methods == ["deeplift", "grad-cam"] and sorted(names) == sorted([BOXED] + OTHERS)
        assert int(maps["image_size"]) == SIZE
        assert maps["p_abnormal"].shape == (3,) and maps["completeness_delta"].shape == (3, 2)
        assert np.isnan(maps["completeness_delta"][:, 1]).all()  # grad-cam has no completeness
        assert (maps["completeness_delta"][:, 0] < 1e-3).all()
        signed = {(n, m): maps[f"map/{n}/{m}"] for n in names for m in methods}
    assert all(a.dtype == np.float32 and a.shape == (SIZE, SIZE) for a in signed.values())
    assert any((a < 0).any() for (n, m), a in signed.items() if m == "deeplift")  # signed

    report = json.loads((run / "localization.json").read_text())
    # the boxes in map pixels are the description's boxes scaled by SIZE / original size
    records = {r["name"]: r for r in load_descriptions(str(run.parent / "images-description.json"))}
    for name, boxes in report["boxes"].items():
        original = image_size(str(run.parent / "images" / name))
        expected = localization.scale_boxes(records[name]["boxes"], original, (SIZE, SIZE))
        assert boxes == expected  # JSON keeps floats exactly
    seed = report["seed"]

    def check(block, heatmap_of):
        per_image = [dict(localization.image_metrics(heatmap_of(name), report["boxes"][name]),
                          name=name) for name in report["boxes"]]
        assert block["per_image"] == per_image  # exactly: JSON keeps floats as they were
        assert block["summary"] == localization.summarize(per_image)
        assert block["ci"] == localization.summarize_with_ci(per_image, seed=seed)
        return per_image

    shape = (SIZE, SIZE)
    baselines = {"centred_gaussian": localization.gaussian_map(shape),
                 "lung_prior": localization.lung_prior_map(shape)}
    base_scores = {key: check(report["baselines"][key], lambda name, m=m: m)
                   for key, m in baselines.items()}
    for method in methods:
        block = report["methods"][method]
        scores = check(block, lambda name: np.maximum(signed[(name, method)], 0))
        beats = True
        for key in baselines:
            for metric in ("pointing", "inside_share"):
                diff = [float(a[metric]) - float(b[metric])
                        for a, b in zip(scores, base_scores[key])]
                ci = localization.bootstrap_ci(diff, seed=seed)
                assert block["versus"][key][metric] == dict(
                    ci, beats=bool(ci["low"] is not None and ci["low"] > 0))
                beats = beats and block["versus"][key][metric]["beats"]
        assert block["beats_baselines"] == beats


def test_sanity_report(stage6_run):
    sanity = json.loads((stage6_run / "sanity.json").read_text())
    assert set(sanity["methods"]["deeplift"]) == {"head", "head+block5"}
    assert len(sanity["methods"]["deeplift"]["head"]["per_image"]) == 2


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
    # flags are checked at parse time: an absurd display size no longer reaches the OOM killer
    capsys.readouterr()
    for flag, value in (("--display-size", "100000"), ("--display-size", "0"),
                        ("--batch-size", "1e9"), ("--seed", "-5"), ("--smooth", "nan"),
                        ("--limit", "0")):
        assert run_main(visualization.main, "cxr-visualize", argv(root, flag, value)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err and value in err, err
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


def test_head_that_does_not_fit_the_conv_base(tmp_path):
    root = build_data(tmp_path / "b", head_input=(512,))
    with pytest.raises(UserError, match=r"head expects features of shape \(512,\) but the conv "
                                        r"base .* gives \(2, 2, 512\)"):
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
    assert visualization.main(argv(root, "--method", "grad-cam")) == 0
    first = set(json.loads((results / "run.json").read_text())["files"])
    # a user's files, one named like ours, survive any re-run
    mine = ["00000150_002[my notes].png", "notes.txt"]
    for name in mine:
        (results / name).write_text("mine")
    assert visualization.main(argv(root, "--method", "grad-cam", "--name", "0000015*")) == 0
    second = set(json.loads((results / "run.json").read_text())["files"])
    assert set(os.listdir(results)) == second | set(mine)
    assert len([n for n in second if n.endswith(".html")]) == 2  # gallery + the one image
    assert any(n.startswith("00000193_019[") for n in first)
    assert not any(n.startswith("00000193_019[") for n in os.listdir(results))
    with np.load(results / "maps.npz", allow_pickle=False) as maps:
        assert list(maps["names"]) == [BOXED]
    assert visualization.main(argv(root, "--method", "grad-cam", "--limit", "2",
                                   "--scale", "shared")) == 0
    info = json.loads((results / "run.json").read_text())
    assert info["explained"] == 2 and info["scale"] == "shared" and info["limit"] == 2
    assert info["colour_scales"]["grad-cam"]["positive"] > 0
    assert info["colour_scales"]["grad-cam"]["negative"] is None  # Grad-CAM is never negative
    assert set(os.listdir(results)) == set(info["files"]) | set(mine)


def test_same_stem_images_both_survive(tmp_path):
    root = build_data(tmp_path / "f", names={"x.png": BOXED, "x.jpg": OTHERS[0]}, boxes={})
    assert visualization.main(argv(root, "--method", "grad-cam")) == 0
    rows = json.loads((root / "results" / "index.json").read_text())
    assert sorted(r["name"] for r in rows) == ["x.jpg", "x.png"]
    bases = {r["name"]: r["files"]["base"] for r in rows}
    assert bases["x.png"].startswith("x.png[") and bases["x.jpg"].startswith("x.jpg[")
    for row in rows:
        for name in row["files"].values():
            assert (root / "results" / name).is_file()
    assert len(list((root / "results").glob("x.*.html"))) == 2
    assert not (root / "localization.json").exists()


def test_boxes_outside_the_image_are_clipped_and_a_whole_image_box_is_not_scored(tmp_path,
                                                                                 capsys):
    boxes = {BOXED: [make_box("far", 1e9, 1e9, 50, 50), make_box("edge", -100, 400, 300, 1e6)],
             OTHERS[0]: [make_box("everything", -10, -10, 1e5, 1e5)],
             OTHERS[1]: [make_box("small", 100, 100, 200, 200)]}
    root = build_data(tmp_path / "g", boxes=boxes)
    assert visualization.main(argv(root, "--method", "grad-cam")) == 0
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
    # the summary states the verdict against the baselines
    assert re.search(r"grad-cam (BEATS|does not beat) the no-model baselines", err)


def test_clip_boxes_and_outcome():
    kept = box_scores.clip_boxes([{"finding": "a", "x": -5, "y": 2, "w": 10, "h": 3},
                                  {"finding": "b", "x": "nan", "y": 0, "w": 1, "h": 1},
                                  {"finding": "c", "x": 1, "y": 1, "w": 2, "h": 2}],
                                 20, 10, "t")
    assert kept == [{"finding": "a", "x": 0.0, "y": 2.0, "w": 5.0, "h": 3.0},
                    {"finding": "c", "x": 1.0, "y": 1.0, "w": 2.0, "h": 2.0}]
    assert [visualization.outcome(label, p, 0.5) for label, p in
            (("abnormal", 0.9), ("normal", 0.9), ("abnormal", 0.5), ("normal", 0.1),
             (None, 0.9))] == ["TP", "FP", "FN", "TN", "unlabelled"]


def test_file_names_and_softmax():
    keys = results_folder.output_keys(["x.png", "y.png", "y.jpg"])
    assert keys == {"x.png": "x", "y.png": "y.png", "y.jpg": "y.jpg"}
    assert results_folder.file_prefix(keys["x.png"], 0.123, 0.877) == "x[0.12,0.88]"
    assert np.allclose(visualization.softmax([[0.0, 0.0]]), 0.5)
