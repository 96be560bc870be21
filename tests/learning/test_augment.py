"""Anatomy-respecting augmentation (learning/train/augment.py): it never flips, it moves pixels
exactly where its parameters say, it stays within its limits, and it is reproducible."""
import numpy as np
import pytest

from learning.train import augment

SIZE = 64


def marked_image(size=SIZE):
    """A dark film with one bright square in the image's left third (the patient's right)."""
    image = np.full((size, size, 3), 40, np.uint8)
    image[28:36, 8:16] = 250  # centre (x, y) = (12, 32) in pixel-centre coordinates + 0.5
    return image


def bright_centroid(pixels):
    weights = np.maximum(pixels.mean(axis=2) - 150.0, 0)
    ys, xs = np.indices(weights.shape)
    return (weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()


def test_no_transform_is_ever_a_mirror_image():
    """2,000 draws at the LARGEST allowed ranges: the linear part always has det > 0 (a
    rotation times a positive scale) and keeps the image's x axis pointing right."""
    limits = {k: np.nextafter(v, 0) for k, v in augment.MAX_LIMITS.items()}
    rng = np.random.default_rng(0)
    for _ in range(2000):
        linear = augment.forward_matrix(augment.sample(rng, limits), SIZE)[:, :2]
        assert np.linalg.det(linear) > 0
        assert linear[0, 0] > 0 and linear[1, 1] > 0  # |rotation| < 90 degrees, no flip


def test_a_left_sided_mark_stays_on_the_left_in_every_augmented_image():
    image = marked_image()
    x0, y0 = bright_centroid(image.astype(np.float32))
    for index in range(300):
        out = augment.augment(image, augment.image_rng(7, 0, index))
        x, y = bright_centroid(out)
        assert x < SIZE / 2 - 8, (index, x)  # never crosses to the other side
        # a flip would put it near SIZE - x0 = 52; the limits allow only a few pixels' move
        assert abs(x - x0) < 0.06 * SIZE + 0.08 * 20 + 20 * np.sin(np.radians(7)) + 1
        assert abs(y - y0) < 0.06 * SIZE + 0.08 * 20 + 20 * np.sin(np.radians(7)) + 1


def test_pixels_move_where_the_forward_matrix_says():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[20:22, 40:42] = 255  # a 2x2 dot centred at (41, 21) in continuous coordinates
    params = {"dx": 0.05, "dy": -0.03, "scale": 1.05, "rotation": 6.0, "brightness": 0.0,
              "contrast": 1.0}
    expected = augment.forward_matrix(params, SIZE) @ np.array([41.0, 21.0, 1.0])
    moved = augment.apply(image, params).mean(axis=2)  # (S, S), zero away from the dot
    ys, xs = np.indices(moved.shape)
    x, y = (moved * xs).sum() / moved.sum(), (moved * ys).sum() / moved.sum()
    np.testing.assert_allclose([x + 0.5, y + 0.5], expected, atol=0.6)


def test_brightness_and_contrast_stay_in_range_and_do_what_they_say():
    image = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (SIZE, 1, 3))
    still = {"dx": 0.0, "dy": 0.0, "scale": 1.0, "rotation": 0.0}
    same = augment.apply(image, dict(still, brightness=0.0, contrast=1.0))
    np.testing.assert_allclose(same, image.astype(np.float32), atol=1e-3)
    brighter = augment.apply(image, dict(still, brightness=0.1, contrast=1.0))
    np.testing.assert_allclose(brighter, np.minimum(image + 25.5, 255), atol=1e-3)
    flatter = augment.apply(image, dict(still, brightness=0.0, contrast=0.5))
    assert flatter.std() == pytest.approx(0.5 * same.std(), rel=1e-3)
    assert flatter.dtype == np.float32 and flatter.min() >= 0 and flatter.max() <= 255


def test_the_same_seed_epoch_and_image_give_the_same_pixels_and_others_do_not():
    image = marked_image()
    one = augment.augment(image, augment.image_rng(1, 2, 3))
    np.testing.assert_array_equal(one, augment.augment(image, augment.image_rng(1, 2, 3)))
    assert not np.array_equal(one, augment.augment(image, augment.image_rng(1, 3, 3)))
    assert not np.array_equal(one, augment.augment(image, augment.image_rng(1, 2, 4)))


@pytest.mark.parametrize("limits, says", [({"rotation": 30}, "rotation 30.0"),
                                          ({"scale": -0.1}, "scale -0.1"),
                                          ({"flip": 0.5}, "unknown augmentation 'flip'"),
                                          ({"shift": float("nan")}, "shift nan")])
def test_limits_out_of_range_are_refused(limits, says):
    with pytest.raises(ValueError, match=says):
        augment.check_limits(limits)
