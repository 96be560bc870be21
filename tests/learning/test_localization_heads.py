"""Issue 10: the lung-field prior and CI helpers, the grid heads (cam, block5) through stage 5
(train, save, load) and stage 6 (DeepLIFT completeness, Grad-CAM inside the head)."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from learning.explain import localization  # noqa: E402
from learning.head import augment_grid  # noqa: E402
from scraper.cli import UserError, run_main  # noqa: E402


# ----------------------------------------------------------------------------- prior and CIs

def test_lung_prior_peaks_over_the_lung_fields():
    prior = localization.lung_prior_map((200, 100))  # (H, W)
    # peaks at x = 0.30 / 0.70 of the width (cols 29-30 / 69-70), y = 0.55 of the height
    row, col = np.unravel_index(np.argmax(prior), prior.shape)
    assert row in (109, 110) and col in (29, 30)
    np.testing.assert_allclose(prior, prior[:, ::-1], atol=1e-12)  # left-right symmetric
    # between the lungs (x = 0.5): two Gaussians 2 sigma away each: 2 exp(-2) = 0.2707
    assert localization.lung_prior_map((2, 2), centres=((0.25, 0.25),), sigma=(1, 1))[0, 0] \
        == pytest.approx(1.0)
    mid = localization.lung_prior_map((1000, 1000))[550, 499:501].mean()
    assert mid == pytest.approx(2 * np.exp(-2), abs=1e-3)


def test_bootstrap_ci_of_a_mean():
    ci = localization.bootstrap_ci([True, False, True, True], n_resamples=2000, seed=0)
    assert ci["mean"] == 0.75 and ci["n"] == 4
    assert 0 <= ci["low"] < 0.75 < ci["high"] <= 1.0
    assert localization.bootstrap_ci([1, 0, 1, 1], n_resamples=2000, seed=0) == ci  # seeded
    constant = localization.bootstrap_ci([0.3] * 10)
    assert constant["low"] == pytest.approx(0.3) and constant["high"] == pytest.approx(0.3)
    single = localization.bootstrap_ci([0.5])
    assert single["mean"] == 0.5 and single["low"] is None
    assert localization.format_ci(ci) == f"0.750 [{ci['low']:.3f}, {ci['high']:.3f}]"


def test_baseline_summaries_score_both_no_model_maps():
    # a box on the right-image lung field (x 0.6-0.8, y 0.45-0.65 of 100 px), one at the centre
    boxes = {"lung.png": [{"x": 60, "y": 45, "w": 20, "h": 20}],
             "centre.png": [{"x": 45, "y": 45, "w": 10, "h": 10}]}
    result = localization.baseline_summaries(boxes, (100, 100), n_resamples=200)
    prior, centre = result["lung_prior"], result["centred_gaussian"]
    # argmax of the symmetric prior is the first peak in raster order: the LEFT lung field,
    # which misses both boxes; the centred Gaussian hits the centre box only.
    assert prior["summary"]["pointing_game"] == 0.0
    assert centre["summary"]["pointing_game"] == 0.5
    assert centre["ci"]["pointing"]["mean"] == 0.5
    # inside share of the prior in the lung box: half its mass is in the right lung, and the
    # box holds most of that lung's central mass (+-1 sigma in x, +-0.67 sigma in y).
    lung_share = localization.image_metrics(localization.lung_prior_map((100, 100)),
                                            boxes["lung.png"])["inside_share"]
    assert 0.15 < lung_share < 0.5
    assert prior["ci"]["inside_share"]["mean"] == pytest.approx(
        prior["summary"]["inside_share"])


def test_augment_grid_flips_and_shifts_with_zero_fill():
    grid = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
    rng = np.random.default_rng(0)
    out = augment_grid(grid, rng, max_shift=0)
    for original, augmented in zip(grid, out):  # each either unchanged or mirrored
        assert (np.array_equal(augmented, original)
                or np.array_equal(augmented, original[:, ::-1]))
    shifted = augment_grid(np.ones((20, 3, 3, 1), np.float32), np.random.default_rng(1))
    # a shift empties one row and/or column: the sums are 9, 6 or 4
    assert set(shifted.sum(axis=(1, 2, 3)).tolist()) <= {9.0, 6.0, 4.0}
    assert min(shifted.sum(axis=(1, 2, 3))) < 9


# ----------------------------------------------------------------------------- stages 5 and 6

BLOCK4_PARAMS = {"weights": "random:seed=0", "image_size": 64, "layer": "block4_pool",
                 "pooling": "none", "preprocessing": "caffe", "precision": "fp32"}


def _pickles(root, shape=(4, 4, 512)):
    from learning import safe_pickle
    from tests.learning.test_fully_connected_layers_training import make_split

    training, testing = root / "training.pickle", root / "testing.pickle"
    safe_pickle.dump(make_split("training", 40, 0, lambda i: "validation" if i % 10 == 0
                                else "train", shape=shape, params=BLOCK4_PARAMS), training)
    safe_pickle.dump(make_split("testing", 12, 1, lambda i: "test", shape=shape,
                                params=BLOCK4_PARAMS), testing)
    return training, testing


def _train(training, testing, model_dir, *flags):
    from learning.fully_connected_layers_training import main

    return run_main(main, "cxr-train", [str(training), str(testing), str(model_dir),
                                        "--epochs", "2", "--bootstrap", "50"] + list(flags))


def test_block5_head_starts_from_stage3s_block5_and_reloads(tmp_path):
    import keras

    from learning.head import block5_weights

    training, testing = _pickles(tmp_path)
    # 0 epochs is refused, so compare the init through a 1e-12 learning rate: block5 barely moves
    assert _train(training, testing, tmp_path / "m", "--head", "block5",
                  "--learning-rate", "1e-12") == 0
    head = keras.models.load_model(tmp_path / "m" / "head.keras")  # no custom objects
    expected = block5_weights(random_weights=True, seed=0)  # stage 3's seeded random VGG16
    np.testing.assert_allclose(head.get_layer("block5_conv1").get_weights()[0], expected[0][0],
                               atol=1e-9)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["head"]["kind"] == "block5" and config["head"]["conv_init"] == "random:seed=0"
    features = np.zeros((1, 4, 4, 512), np.float32)
    assert np.asarray(head(features)).shape == (1, 2)


def test_block5_head_refuses_other_features_and_foreign_weights(tmp_path, capsys):
    from learning import safe_pickle

    training, testing = _pickles(tmp_path)
    for path in (training, testing):  # real-weights features: stage 5 needs --weights
        data = safe_pickle.load(path)
        data["feature_params"] = dict(BLOCK4_PARAMS, weights="sha256:abc")
        safe_pickle.dump(data, path)
    assert _train(training, testing, tmp_path / "m", "--head", "block5") != 0
    assert "pass them with --weights PATH" in capsys.readouterr().err
    other = tmp_path / "other.h5"
    other.write_bytes(b"not the weights")
    assert _train(training, testing, tmp_path / "m", "--head", "block5",
                  "--weights", str(other)) != 0
    assert "is not the VGG16 weights file stage 3 used" in capsys.readouterr().err
    assert not (tmp_path / "m" / "head.keras").exists()


@pytest.mark.parametrize("head_name,extra", [("block5", ["--dropout", "0"]),
                                             ("cam", [])])
def test_stage6_explains_grid_heads_with_complete_deeplift(tmp_path, head_name, extra):
    """Stage 5 trains the head on real block4_pool features of 3 demo X-rays (64 px random
    VGG16), stage 6 explains it: DeepLIFT completeness holds (the stage checks it and stops
    otherwise) and Grad-CAM finds the conv inside the head."""
    from learning import safe_pickle, visualization
    from learning.vgg import build_conv_base, load_image, preprocess
    from tests.learning.stage6_data import BOXED, OTHERS
    from tests.learning.stage6_data import argv as _argv, build_data as _build_data

    root = _build_data(tmp_path)
    base = build_conv_base(random_weights=True, seed=0, image_size=64, layer="block4_pool")
    names = [BOXED] + OTHERS
    features = np.asarray(base(preprocess(np.stack(
        [load_image(str(root / "images" / n), 64) for n in names]))))  # (3, 4, 4, 512)
    for split, subsets in (("training", ["train", "train", "validation"]),
                           ("testing", ["test"] * 3)):
        safe_pickle.dump({"format": "cxr-examples/1", "split": split, "names": names,
                          "features": features, "labels": np.array([1, 0, 1]),
                          "groups": [f"{split}-{g}" for g in "abc"], "subset": subsets,
                          "feature_params": BLOCK4_PARAMS}, root / f"{split}.pickle")
    assert _train(root / "training.pickle", root / "testing.pickle", root / "model",
                  "--head", head_name, *extra) == 0
    assert visualization.main(_argv(root, "--method", "deeplift,grad-cam",
                                    "--batch-size", "3")) == 0
    rows = json.loads((root / "results" / "index.json").read_text())
    deeplift = [r for r in rows if r["method"] == "deeplift"]
    assert len(deeplift) == 3 and len(rows) == 6
    assert all(r["completeness_delta"] is not None and r["completeness_delta"] < 1e-3
               for r in deeplift)


def test_grad_cam_inside_the_head_matches_the_head_level_computation():
    """attribution.grad_cam on conv base + a nested CAM head equals Grad-CAM computed on the
    head alone from the conv base's features (the benchmark's computation)."""
    import keras
    import tensorflow as tf

    from learning.explain import attribution
    from learning.head import PRESETS, build_from_config
    from learning.vgg import build_conv_base

    base = build_conv_base(random_weights=True, seed=0, image_size=64, layer="block4_pool")
    keras.utils.set_random_seed(3)
    head = build_from_config((4, 4, 512), dict(PRESETS["cam"], hidden=8),
                             {"scale": 0.5})
    target = attribution.build_target_model(attribution.build_full_model(base, head),
                                            "original")  # both logits: one has a positive CAM
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32) * 50
    maps = attribution.grad_cam(target, x)  # (2, 64, 64, 2)
    features = tf.convert_to_tensor(np.asarray(base(x)))
    conv = head.get_layer("cam_conv")
    lower, upper = keras.Model(head.input, conv.output), keras.Model(conv.output, head.output)
    grid = tf.convert_to_tensor(np.asarray(lower(features)))  # (2, 4, 4, 8)
    for output in (0, 1):
        with tf.GradientTape() as tape:
            tape.watch(grid)
            score = upper(grid)[:, output]
        grads = tape.gradient(score, grid)
        cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, (1, 2), keepdims=True) * grid, -1))
        expected = tf.image.resize(cam[..., None], (64, 64))[..., 0].numpy()
        np.testing.assert_allclose(maps[..., output], expected, rtol=1e-4, atol=1e-5)
    assert maps.max() > 0


def test_grid_head_needs_a_grid():
    from learning.head import PRESETS, build_from_config

    with pytest.raises(ValueError, match="needs a feature grid"):
        build_from_config((512,), PRESETS["cam"])
    with pytest.raises(UserError):
        from learning.fully_connected_layers_training import resolve_conv_weights

        resolve_conv_weights(dict(PRESETS["block5"], head="block5"),
                             dict(BLOCK4_PARAMS, layer="block5_pool"))


def test_ring_mask_scales_with_the_grid_and_keeps_a_centre():
    from learning.head import ring_cells

    assert [ring_cells(2, (14, 14)), ring_cells(2, (28, 28)), ring_cells(3, (14, 14))] == [2, 4, 3]
    assert [ring_cells(2, (4, 4)), ring_cells(3, (2, 2)), ring_cells(0, (14, 14))] == [1, 0, 0]


def test_cam_head_the_stage5_default_learns_separable_grids(tmp_path):
    """cxr-train with no --head trains the cam head (ring mask, grid augmentation) and it
    separates synthetic 4x4 grids whose abnormal cells carry a raised channel."""
    from learning import safe_pickle
    from tests.learning.test_fully_connected_layers_training import make_split

    training, testing = tmp_path / "training.pickle", tmp_path / "testing.pickle"
    safe_pickle.dump(make_split("training", 80, 0, lambda i: "validation" if i % 10 in (0, 1)
                                else "train", shape=(4, 4, 8)), training)
    safe_pickle.dump(make_split("testing", 20, 1, lambda i: "test", shape=(4, 4, 8)), testing)
    from learning.fully_connected_layers_training import main

    assert run_main(main, "cxr-train", [str(training), str(testing), str(tmp_path / "m"),
                                        "--epochs", "15", "--bootstrap", "50"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    config = json.loads((tmp_path / "m" / "config.json").read_text())["head"]
    assert (config["head"], config["ring_mask"], config["grid_augment"]) == ("cam", 3, True)
    assert metrics["test"]["roc_auc"] > 0.9
