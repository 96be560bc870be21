"""Localization metrics and the sanity-check statistics on synthetic maps with known answers."""
import numpy as np
import pytest

from learning import localization, sanity


def test_scale_boxes_and_mask():
    boxes = localization.scale_boxes([{"finding": "x", "x": 100, "y": 50, "w": 200, "h": 100}],
                                     (1000, 500), (10, 10))
    assert boxes == [{"finding": "x", "x": 1.0, "y": 1.0, "w": 2.0, "h": 2.0}]
    mask = localization.box_mask(boxes, (10, 10))
    assert mask.sum() == 4 and mask[1:3, 1:3].all()


def test_image_metrics_known_answers():
    heatmap = np.zeros((10, 10))
    heatmap[2, 2] = 3.0          # the peak, inside the box
    heatmap[8, 8] = 1.0          # weaker evidence outside
    heatmap[0, 0] = -5.0         # negative evidence is ignored
    box = [{"x": 1, "y": 1, "w": 4, "h": 4}]  # rows/cols 1..4: 16 pixels
    m = localization.image_metrics(heatmap, box, levels=(0.25, 0.5))
    assert m["pointing"] is True
    assert m["inside_share"] == pytest.approx(0.75)
    assert m["box_fraction"] == pytest.approx(0.16)
    # level 0.25: region = {(2,2), (8,8)}; inter 1, union 17
    assert m["iou@0.25"] == pytest.approx(1 / 17)
    assert m["iobb@0.25"] == pytest.approx(0.5)
    # level 0.5: region = {(2,2)}
    assert m["iou@0.5"] == pytest.approx(1 / 16)
    assert m["iobb@0.5"] == pytest.approx(1.0)


def test_pointing_miss_and_empty_map():
    box = [{"x": 0, "y": 0, "w": 2, "h": 2}]
    heatmap = np.zeros((6, 6))
    heatmap[5, 5] = 1
    assert localization.image_metrics(heatmap, box)["pointing"] is False
    empty = localization.image_metrics(np.zeros((6, 6)), box)
    assert empty["pointing"] is False and empty["inside_share"] == 0 and empty["iou@0.5"] == 0


def test_gaussian_baseline_centre():
    g = localization.gaussian_map((20, 20))
    assert g.max() == pytest.approx(np.exp(-0.5 * 2 * (0.5 / 5) ** 2))
    centre = [{"x": 8, "y": 8, "w": 4, "h": 4}]
    corner = [{"x": 0, "y": 0, "w": 4, "h": 4}]
    assert localization.image_metrics(g, centre)["pointing"] is True
    assert localization.image_metrics(g, corner)["pointing"] is False


def test_summarize_means_and_t_iobb():
    per_image = [{"pointing": True, "inside_share": 0.5, "box_fraction": 0.1,
                  "iou@0.5": 0.2, "iobb@0.5": 0.3},
                 {"pointing": False, "inside_share": 0.1, "box_fraction": 0.3,
                  "iou@0.5": 0.0, "iobb@0.5": 0.05}]
    s = localization.summarize(per_image, levels=(0.5,), thresholds=(0.1, 0.25, 0.5))
    assert s["images"] == 2 and s["pointing_game"] == 0.5
    assert s["inside_share"] == pytest.approx(0.3) and s["iou@0.5"] == pytest.approx(0.1)
    assert s["T(iobb>0.1)@0.5"] == 0.5 and s["T(iobb>0.5)@0.5"] == 0.0
    assert "pointing game 0.50" in localization.format_summary("x", s, 0.5, 0.25)
    assert localization.summarize([]) == {"images": 0}


def test_spearman_and_flags():
    a = np.arange(100.0).reshape(10, 10)
    assert sanity.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert sanity.spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(sanity.spearman(a, np.zeros_like(a)))
    report = sanity.summarize({"saliency": {"head": [0.95, 0.97], "head+block5": [0.5]},
                               "deeplift": {"head": [0.2, float("nan")], "head+block5": [0.1]}})
    assert report["flagged"] == ["saliency"]
    assert report["methods"]["deeplift"]["head"]["mean_rho"] == pytest.approx(0.2)
    lines = sanity.format_report(report)
    assert "FLAGGED" in lines[0] and "FLAGGED" not in lines[1]


def test_randomize_and_restore_layers():
    keras = pytest.importorskip("keras")
    layer = keras.layers.Dense(3, bias_initializer="ones")
    layer.build((None, 4))
    before = [w.copy() for w in layer.get_weights()]
    saved = sanity.randomize_layers([layer], np.random.default_rng(0))
    after = layer.get_weights()
    assert not np.allclose(after[0], before[0]) and np.array_equal(after[1], before[1])
    assert np.abs(after[0]).max() <= np.sqrt(6 / 7)
    sanity.restore(saved)
    assert np.array_equal(layer.get_weights()[0], before[0])
