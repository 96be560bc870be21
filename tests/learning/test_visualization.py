"""Stage 6 end to end on 3 demo X-rays (64 px random VGG16 + a tiny head built here), file
naming as the original's, the gallery's links, and one-line errors for bad input."""
import csv
import json
import os
import re
from urllib.parse import unquote

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from learning import gallery, visualization  # noqa: E402
from scraper.cli import UserError, run_main  # noqa: E402
from scraper.schema import make_box, make_record, save_descriptions  # noqa: E402

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24")
SIZE = 64
BOXED = "00000150_002.png"  # pneumonia with an expert box
OTHERS = ["00000193_019.png", "00002218_003.png"]


def _build_data(root, seed_in_config=0, head_input=None):
    """<root>/images (3 demo X-rays), images-description.json, examples.json, model/."""
    from learning.vgg import build_conv_base

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels = {row["image"]: row for row in csv.DictReader(open(os.path.join(DEMO, "labels.csv")))}
    boxes = {}
    for row in csv.DictReader(open(os.path.join(DEMO, "bboxes.csv"))):
        boxes.setdefault(row["image"], []).append(
            make_box(row["finding"], row["x"], row["y"], row["w"], row["h"]))
    records = []
    for name in [BOXED] + OTHERS:
        (images / name).write_bytes(open(os.path.join(DEMO, "images", name), "rb").read())
        records.append(make_record(name, "folder", boxes=boxes.get(name, []),
                                   label="abnormal" if labels[name]["abnormal"] == "1" else "normal"))
    save_descriptions(str(root / "images-description.json"), records)
    (root / "examples.json").write_text(json.dumps([BOXED] + OTHERS + ["not_there.png"]))
    model = root / "model"
    model.mkdir(exist_ok=True)
    feature_shape = head_input or tuple(build_conv_base(random_weights=True, seed=0,
                                                        image_size=SIZE).output.shape[1:])
    keras.utils.set_random_seed(5)
    head = keras.Sequential([
        keras.Input(feature_shape), keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(2, bias_initializer="random_normal")])
    head.save(str(model / "head.keras"))
    (model / "config.json").write_text(json.dumps({
        "feature_params": {"weights": f"random:seed={seed_in_config}", "image_size": SIZE,
                           "layer": "block5_pool", "pooling": "none",
                           "preprocessing": "caffe", "precision": "float32"},
        "class_names": ["normal", "abnormal"], "head": {}, "args": {}}))
    return root


def _argv(root, *extra):
    return ["unused.h5", str(root / "model"), str(root / "examples.json"), str(root / "images"),
            str(root / "results"), "--random-weights", "--display-size", "128", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = _build_data(tmp_path_factory.mktemp("stage6"))
    assert visualization.main(_argv(root, "--method", "deeplift,grad-cam", "--batch-size", "2",
                                    "--sanity-check", "--sanity-images", "2")) == 0
    return root / "results"


def test_index_rows_files_and_completeness(run):
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
    assert re.fullmatch(r"00000150_002\[\d\.\d\d,\d\.\d\d\]__base\.png",
                        [r for r in rows if r["name"] == BOXED][0]["files"]["base"])
    table = list(csv.DictReader(open(run / "index.csv")))
    assert len(table) == 6 and set(table[0]) == set(visualization.INDEX_COLUMNS)
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["missing"] == ["not_there.png"] and run_info["explained"] == 3


def test_gallery_links_resolve_and_banner(run):
    page = (run / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert len(links) >= 3 * 4
    for link in links:
        assert not link.startswith(("/", "http", "file:"))
        assert (run / unquote(link)).is_file(), link
    assert "mean nothing clinically" in page


def test_localization_and_sanity_reports(run):
    report = json.loads((run / "localization.json").read_text())
    # 00000150_002 and 00000193_019 carry boxes, 00002218_003 (normal) does not
    assert report["methods"]["deeplift"]["summary"]["images"] == 2
    assert report["gaussian_baseline"]["summary"]["images"] == 2
    assert [m["name"] for m in report["gaussian_baseline"]["per_image"]] == [BOXED, OTHERS[0]]
    assert set(report["methods"]) == {"deeplift", "grad-cam"}
    sanity = json.loads((run / "sanity.json").read_text())
    assert set(sanity["methods"]["deeplift"]) == {"head", "head+block5"}
    assert len(sanity["methods"]["deeplift"]["head"]["per_image"]) == 2


def test_errors_are_one_line(tmp_path):
    root = _build_data(tmp_path / "a", seed_in_config=1)
    with pytest.raises(UserError, match="model was trained on features from random:seed=1, "
                                        "these weights are random:seed=0"):
        visualization.main(_argv(root))
    (root / "examples.json").write_text("[]")
    with pytest.raises(UserError, match="examples list is empty"):
        visualization.main(_argv(root))
    (root / "examples.json").write_text('["nope.png"]')
    with pytest.raises(UserError, match="none of the 1 examples has an image file"):
        visualization.main(_argv(root))
    assert run_main(visualization.main, "cxr-visualize", _argv(root)) == 1


def test_head_that_does_not_fit_the_conv_base(tmp_path):
    root = _build_data(tmp_path / "b", head_input=(512,))
    with pytest.raises(UserError, match=r"head expects features of shape \(512,\) but the conv "
                                        r"base .* gives \(2, 2, 512\)"):
        visualization.main(_argv(root))


def test_gallery_render_sorted_and_escaped():
    rows = [{"name": n, "label": None, "p_abnormal": p, "p_normal": 1 - p, "method": "deeplift",
             "files": visualization.file_names(visualization.file_prefix(n, 1 - p, p), "deeplift")}
            for n, p in (("a<b>.png", 0.2), ("z.png", 0.9))]
    page = gallery.render(rows, "t")
    assert page.index("z.png") < page.index("a&lt;b&gt;.png")
    assert "z%5B0.10%2C0.90%5D_deeplift_panel.png" in page and "banner" not in page.split("<body>")[1][:40]
    assert visualization.file_prefix("x.png", 0.123, 0.877) == "x[0.12,0.88]"
    assert np.allclose(visualization.softmax([[0.0, 0.0]]), 0.5)
