"""The one image loader: decode checks for downloads and pixel arrays for the models.

Every stage that opens an X-ray goes through here, so PNG/JPEG, 8/16-bit grayscale, RGB and
RGBA are handled the same way everywhere.
"""
import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Open-i and NIH PNGs are at most a few megapixels; refuse decompression bombs politely.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class BadImage(ValueError):
    """The bytes are not a decodable image (HTML page, truncated file, text...)."""


def _open_verified(source):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            image.load()  # full decode: a truncated PNG fails here, not later
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"not a decodable image ({error})") from None


def check_image_bytes(data):
    """Decode `data` fully; return (width, height, format) or raise BadImage with the reason."""
    if not data:
        raise BadImage("empty body")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise BadImage("got an HTML/XML page instead of an image")
    image = _open_verified(io.BytesIO(data))
    return image.width, image.height, image.format


def check_image_file(path):
    """Like check_image_bytes for a file on disk."""
    with open(path, "rb") as handle:
        return check_image_bytes(handle.read())


def is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def load_rgb(path, size=None):
    """Image file -> uint8 array (H, W, 3); grayscale/16-bit/RGBA converted; resized if `size`.

    `size` is (width, height) or an int for a square. Raises BadImage if it does not decode.
    """
    image = _open_verified(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit X-rays: stretch the used range to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else array * 0
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "P", "PA"):
        # Flatten transparency onto black (X-ray background) before dropping alpha.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    if size is not None:
        if isinstance(size, int):
            size = (size, size)
        if image.size != tuple(size):
            image = image.resize(tuple(size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def image_size(path):
    """(width, height) without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise BadImage(f"not a decodable image ({error})") from None
