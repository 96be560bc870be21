"""Batches of X-ray images streamed from their files, for end-to-end training (fine-tuning).

`ImageBatches` is a keras.utils.PyDataset (backend-neutral: TensorFlow, JAX and torch fits all
take it): batch i -> (pixels float32 (B, S, S, 3) in 0..255 RGB, labels int32 (B,) or the given
targets float32 (B, T)[, sample weights float32 (B,)]). Images are decoded when their batch is
asked for, through the project's one image loader (features_decode.load_one ->
scraper.images.load_rgb), so memory holds the batches in flight, not the data set. Only when
every decoded image together fits under `cache_bytes` (default 1 GiB: about 7,000 images at 224
px) are they kept after their first decode, which spares a decode per image per epoch on small
sets (on a GPU the decode, not the network, is then the slow part); larger sets are always
decoded per batch.

Order and augmentation are functions of (seed, epoch, index) alone: `set_epoch(e)` fixes the
shuffled order of epoch e and every image's transform (learning/train/augment.py), so loader
threads, batch order and a resume after a kill all see the same pixels.
"""
import numpy as np

import keras

from learning.features_decode import load_one
from learning.train import augment as augmentation
from scraper.cli import UserError
from scraper.images import BadImage, image_size as header_size

DEFAULT_CACHE_BYTES = 1 << 30


def usable_images(paths):
    """(bool mask of paths whose file is a readable image header, [(path, reason)] of the
    others): a cheap check before training, so a missing or broken file is counted and
    listed up front instead of stopping an epoch half way."""
    keep = np.ones(len(paths), bool)
    failures = []
    for i, path in enumerate(paths):
        try:
            header_size(path)
        except BadImage as error:
            keep[i] = False
            failures.append((str(path), str(error)))
    return keep, failures


class ImageBatches(keras.utils.PyDataset):
    """Batches of (pixels, labels[, sample weights]) decoded from `paths` (see module doc).

    augment: None (validation, testing) or a dict of augmentation limits (augment.LIMITS).
    shuffle: a new order every epoch (seeded); else the order of `paths`.
    class_weights: {class: weight} -> each batch also yields per-image sample weights.
    workers: loader threads (PyDataset's); 1 decodes in the training thread.
    targets: (N, T) rows the batches yield instead of the labels (e.g. --findings' [label,
    y_1..y_K], learning/train/findings.targets); the labels still give the class weights.
    """

    def __init__(self, paths, labels, image_size, batch_size, seed=0, augment=None,
                 shuffle=False, class_weights=None, workers=1, cache_bytes=DEFAULT_CACHE_BYTES,
                 targets=None):
        super().__init__(workers=workers, use_multiprocessing=False,
                         max_queue_size=max(2, 2 * workers))
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, np.int32)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.targets = None if targets is None else np.asarray(targets, np.float32)
        if self.targets is not None and len(self.targets) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.targets)} target rows")
        if not self.paths:
            raise ValueError("no images to stream")
        self.image_size, self.batch_size, self.seed = int(image_size), int(batch_size), seed
        self.limits = None if augment is None else augmentation.check_limits(augment)
        self.shuffle = shuffle
        self.weights = None if class_weights is None else np.asarray(
            [class_weights[int(c)] for c in self.labels], np.float32)
        fits = len(self.paths) * self.image_size ** 2 * 3 <= cache_bytes
        self.cache = {} if fits else None
        self.epoch = 0
        self.order = self._order()

    def set_epoch(self, epoch):
        """Fix the order and augmentation of epoch `epoch` (0-based)."""
        self.epoch = int(epoch)
        self.order = self._order()

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.paths))
        return np.random.default_rng([int(self.seed), self.epoch]).permutation(len(self.paths))

    def __len__(self):
        return -(-len(self.paths) // self.batch_size)

    def decoded(self, index):
        """uint8 (S, S, 3) of image `index` (from the cache when one is kept)."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image = load_one(self.paths[index], self.image_size)
        if isinstance(image, BadImage):
            raise UserError(f"image {self.paths[index]} can no longer be decoded ({image}); "
                            f"it was readable when training started: restore it and re-run "
                            f"(training resumes from its last checkpoint)")
        if self.cache is not None:
            self.cache[index] = image
        return image

    def pixels(self, index):
        """float32 (S, S, 3) 0..255 of image `index` as this epoch feeds it to the model."""
        image = self.decoded(index)
        if self.limits is None:
            return image.astype(np.float32)
        rng = augmentation.image_rng(self.seed, self.epoch, index)
        return augmentation.augment(image, rng, self.limits)

    def __getitem__(self, batch):
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} of {len(self)}")
        rows = self.order[batch * self.batch_size:(batch + 1) * self.batch_size]
        pixels = np.empty((len(rows), self.image_size, self.image_size, 3), np.float32)
        for out, index in enumerate(rows):
            pixels[out] = self.pixels(index)  # (S, S, 3)
        y = self.labels[rows] if self.targets is None else self.targets[rows]
        if self.weights is None:
            return pixels, y
        return pixels, y, self.weights[rows]

    def on_epoch_end(self):
        """Nothing: the trainer calls set_epoch, so order never depends on fit's bookkeeping."""
