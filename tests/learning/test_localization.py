"""Localization metrics and the sanity-check statistics on synthetic maps with known answers."""
import numpy as np
import pytest

from learning.explain import localization, sanity


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
    head = report["methods"]["deeplift"]["stages"]["head"]
    assert head["mean_rho"] == pytest.approx(0.2) and (head["checked"], head["images"]) == (1, 2)
    assert report["methods"]["deeplift"]["status"] == "passes"
    lines = sanity.format_report(report)
    assert "FLAGGED" in lines[0] and "FLAGGED" not in lines[1]
    assert "1 of 2 images checked" in lines[1]


def test_sanity_nan_is_could_not_be_checked_never_a_pass():
    """Issue 17: 'head rho nan' was shown as a green pass ('changes with the weights')."""
    report = sanity.summarize({"grad-cam": {"head": [float("nan")] * 3, "head+block4": [0.21]}})
    block = report["methods"]["grad-cam"]
    assert block["stages"]["head"] == {"mean_rho": None, "checked": 0, "images": 3,
                                       "per_image": [None] * 3, "flag": None,
                                       "status": "could not be checked"}
    assert block["status"] == "could not be checked" and report["unchecked"] == ["grad-cam"]
    assert report["flagged"] == []
    (line,) = sanity.format_report(report)
    assert "could not be checked" in line and "changes with the weights" not in line
    assert "head rho n/a" in line and "nan" not in line.lower()


def test_sanity_cascade_names_what_it_redraws():
    """A block4_pool model re-draws block4 in its second stage, and says 'head+block4'."""
    keras = pytest.importorskip("keras")
    from learning.explain.deeplift import leaf_layers
    from learning.export import build_classifier
    from learning.head import PRESETS, build_from_config
    from learning.vgg import build_conv_base

    base = build_conv_base(random_weights=True, seed=0, image_size=32, layer="block4_pool")
    keras.utils.set_random_seed(1)
    head = build_from_config(tuple(base.output.shape[1:]), dict(PRESETS["cam"], hidden=4),
                             {"scale": 1.0})
    stages = sanity.cascade(list(leaf_layers(build_classifier(base, head))))
    assert [name for name, _ in stages] == ["head", "head+block4"]
    assert [layer.name for layer in stages[0][1]] == ["cam_conv", "logits"]
    assert [layer.name for layer in stages[1][1]][2:] == ["block4_conv1", "block4_conv2",
                                                          "block4_conv3"]
    described = sanity.describe(stages)
    assert "block4" in described["head+block4"] and "block5" not in described["head+block4"]
    assert "vgg16_preprocess" not in str(described)


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


def _verdict_of(maps, boxes, size=32):
    """verdict.report on synthetic maps (name -> (size, size)) and boxes (name -> [box])."""
    from learning.explain import verdict

    mean_map, grid = verdict.MeanMap(size), verdict.ArgmaxGrid(size)
    entries = []
    for name, heatmap in maps.items():
        mean_map.add(heatmap)
        grid.add(heatmap)
        entries.append({"name": name, "scored_boxes": boxes[name], "excluded": None,
                        "scores": {"m": localization.image_metrics(heatmap, boxes[name])}})
    return verdict.report(entries, ["m"], size, 0, {}, {"m": mean_map}, {"m": grid})


def test_maps_that_are_noise_around_a_fixed_pattern_do_not_localize():
    """Issue 21: per-image maps = one fixed pattern (where boxes often are) + noise. They beat
    the two no-model maps, but not their own mean: the verdict says so plainly."""
    rng = np.random.default_rng(0)
    size = 32
    y, x = np.mgrid[0:size, 0:size]
    pattern = np.exp(-((y - 12) ** 2 + (x - 10) ** 2) / 30.0)  # upper left lung, fixed
    maps, boxes = {}, {}
    for k in range(60):
        cy, cx = (12, 10) if k % 2 else rng.integers(4, 24, size=2)  # half the findings there
        boxes[f"i{k}"] = [{"finding": "f", "x": float(cx - 4), "y": float(cy - 4), "w": 8.0,
                           "h": 8.0}]
        maps[f"i{k}"] = np.maximum(pattern + rng.normal(0, 0.15, (size, size)), 0)
    report = _verdict_of(maps, boxes, size)
    block = report["methods"]["m"]
    assert block["difference_vs"]["lung_prior"]["pointing"]["beats"]  # it beats the prior...
    own = block["difference_vs"]["mean_map"]  # ...not its own mean
    assert own["inside_share"]["mean"] < 0 and not own["pointing"]["beats"]
    assert block["localizes"] is False
    assert block["verdict"][0] == ("The maps vary from image to image but not with the "
                                   "findings: their own average, the same map shown for every "
                                   "image, scores as well or better.")
    assert "does not beat the mean of its own maps" in block["verdict"][1]
    grid = np.array(block["argmax_grid"]["grid"])
    assert grid.sum() == 60 and grid[3, 2] + grid[3, 3] + grid[2, 2] + grid[2, 3] > 50


def test_maps_that_follow_the_findings_localize():
    """The positive control of the same test: each map peaks on its own image's box."""
    rng = np.random.default_rng(1)
    size = 32
    y, x = np.mgrid[0:size, 0:size]
    maps, boxes = {}, {}
    for k in range(60):
        cy, cx = rng.integers(4, 28, size=2)
        boxes[f"i{k}"] = [{"finding": "f", "x": float(cx - 3), "y": float(cy - 3), "w": 6.0,
                           "h": 6.0}]
        maps[f"i{k}"] = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 4.0) \
            + rng.uniform(0, 0.05, (size, size))
    block = _verdict_of(maps, boxes, size)["methods"]["m"]
    assert block["localizes"] is True and block["verdict"][0].startswith("It localizes")
