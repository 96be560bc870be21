"""Image batches streamed from files (learning/store/image_batches.py), on demo X-rays at 32 px."""
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("keras")

from learning.store.image_batches import ImageBatches, usable_images  # noqa: E402
from learning.train import augment  # noqa: E402
from scraper.cli import UserError  # noqa: E402
from scraper.images import load_rgb  # noqa: E402

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24", "images")


@pytest.fixture
def images(tmp_path):
    names = sorted(os.listdir(DEMO))[:7]
    paths = []
    for name in names:
        shutil.copy(os.path.join(DEMO, name), tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths, np.array([0, 1, 0, 1, 1, 0, 1])


def test_batches_cover_every_image_once_per_epoch_in_a_seeded_order(images):
    paths, labels = images
    batches = ImageBatches(paths, labels, 32, 3, seed=5, augment={}, shuffle=True,
                           class_weights={0: 1.25, 1: 0.75})
    assert len(batches) == 3
    orders = []
    for epoch in (0, 1, 0):
        batches.set_epoch(epoch)
        seen = [batches[i] for i in range(len(batches))]
        assert [len(b[0]) for b in seen] == [3, 3, 1]
        pixels, y, weights = (np.concatenate(parts) for parts in zip(*seen))
        assert pixels.shape == (7, 32, 32, 3) and pixels.dtype == np.float32
        np.testing.assert_array_equal(y, labels[batches.order])
        np.testing.assert_array_equal(weights, np.where(y == 0, 1.25, 0.75))
        assert sorted(batches.order) == list(range(7))
        orders.append(list(batches.order))
    assert orders[0] == orders[2] and orders[0] != orders[1]


def test_validation_batches_are_the_decoded_images_in_their_order(images):
    paths, labels = images
    batches = ImageBatches(paths, labels, 32, 4)
    pixels, y = batches[1]
    np.testing.assert_array_equal(y, labels[4:])
    for row, path in zip(pixels, paths[4:]):
        np.testing.assert_array_equal(row, load_rgb(path, 32).astype(np.float32))


def test_an_image_gets_the_same_augmentation_whatever_its_batch(images):
    paths, labels = images
    one = ImageBatches(paths, labels, 32, 2, seed=9, augment={}, shuffle=True)
    other = ImageBatches(paths, labels, 32, 7, seed=9, augment={}, shuffle=True,
                         cache_bytes=0)  # no cache: decoded afresh
    assert one.cache is not None and other.cache is None
    one.set_epoch(2)
    other.set_epoch(2)
    first = np.concatenate([one[i][0] for i in reversed(range(len(one)))][::-1])
    np.testing.assert_array_equal(first, other[0][0])
    image = one.order[0]
    expected = augment.augment(load_rgb(paths[image], 32), augment.image_rng(9, 2, image))
    np.testing.assert_array_equal(first[0], expected)
    assert not np.array_equal(first[0], load_rgb(paths[image], 32))


def test_unreadable_images_are_listed_up_front_and_named_if_they_break_later(images, tmp_path):
    paths, labels = images
    (tmp_path / "notes.png").write_text("not an image")
    keep, failures = usable_images(paths + [str(tmp_path / "notes.png"),
                                            str(tmp_path / "gone.png")])
    assert keep.tolist() == [True] * 7 + [False, False]
    assert [os.path.basename(f[0]) for f in failures] == ["notes.png", "gone.png"]
    batches = ImageBatches(paths, labels, 32, 4, cache_bytes=0)
    os.remove(paths[5])
    batches[0]
    with pytest.raises(UserError, match=f"image {paths[5]} can no longer be decoded"):
        batches[1]
