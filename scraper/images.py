"""The one image loader: decode checks for downloads and pixel arrays for the models.

Every stage that opens an X-ray goes through here, so PNG/JPEG, 8/16-bit grayscale, RGB and
RGBA are handled the same way everywhere, and the same limits hold everywhere: only regular
files are opened (a FIFO named x.png would hang, a link to /dev/zero would fill memory), at most
MAX_FILE_BYTES are read, and an image of more than `max_pixels()` pixels is refused from its
header, before its pixels are decoded (a 388 KB PNG can declare 20000 x 20000 pixels and take
gigabytes to decode). Stages that open images offer --max-image-pixels (see
`add_max_pixels_argument`) to raise the limit for unusually large scans.
"""
import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from scraper.cli import positive_int
from scraper.fileio import NotRegularFile, TooLarge, open_regular, read_regular

# Chest X-rays are at most about 4300 x 4300 (18.5 megapixels); 30 megapixels leaves room for
# other scanners and is a sixth of Pillow's own bomb limit. Decoded as RGB: 90 MB.
DEFAULT_MAX_PIXELS = 30_000_000
MAX_FILE_BYTES = 64 << 20  # a real X-ray file is < 30 MB (16-bit DICOM-derived PNGs included)
_limit = {"pixels": DEFAULT_MAX_PIXELS}
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS  # Pillow's own check (errors at twice this)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class BadImage(ValueError):
    """The bytes are not a decodable image (HTML page, truncated file, text...)."""


class ImageTooLarge(BadImage):
    """More pixels than the limit (a decompression bomb, or a scan beyond --max-image-pixels)."""


def max_pixels():
    return _limit["pixels"]


def set_max_pixels(limit):
    """Raise or lower the pixel limit for this process (the --max-image-pixels flag)."""
    _limit["pixels"] = int(limit)
    Image.MAX_IMAGE_PIXELS = int(limit)


def add_max_pixels_argument(parser):
    """Add --max-image-pixels to a stage's parser; call set_max_pixels(args.max_image_pixels)."""
    parser.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        metavar="N", help="refuse images with more pixels than this "
                        "(decompression bombs); chest X-rays have at most about 18,500,000")


def _too_large(width, height):
    return ImageTooLarge(f"image is {width:,} x {height:,} = {width * height:,} pixels, more than "
                         f"the {max_pixels():,} allowed (raise --max-image-pixels if it is real)")


def _open_verified(source):
    try:
        with warnings.catch_warnings():
            # Our own check below names the limit; Pillow's error (at twice it) stays a backstop.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
            if image.width * image.height > max_pixels():
                raise _too_large(image.width, image.height)
            image.load()  # full decode: a truncated PNG fails here, not later
        return image
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"{error} (limit {max_pixels():,} pixels, --max-image-pixels)") \
            from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, BadImage):
            raise
        raise BadImage(f"not a decodable image ({error})") from None


def _open_file(path):
    """A regular file's handle, or BadImage naming why not (FIFO, device, folder, missing)."""
    try:
        return open_regular(path, "image")
    except NotRegularFile as error:
        raise BadImage(str(error)) from None
    except IsADirectoryError:
        raise BadImage(f"image is a folder: {path}") from None
    except OSError as error:  # missing, unreadable
        raise BadImage(f"cannot open the image ({error.strerror or error}): {path}") from None


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
    """Like check_image_bytes for a file on disk (a regular file of at most MAX_FILE_BYTES)."""
    try:
        data = read_regular(path, MAX_FILE_BYTES, "image")
    except (NotRegularFile, TooLarge) as error:
        raise BadImage(str(error)) from None
    except IsADirectoryError:
        raise BadImage(f"image is a folder: {path}") from None
    return check_image_bytes(data)


def is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def load_rgb(path, size=None):
    """Image file -> uint8 array (H, W, 3); grayscale/16-bit/RGBA converted; resized if `size`.

    `size` is (width, height) or an int for a square. Raises BadImage if it does not decode.
    """
    with _open_file(path) as handle:
        image = _open_verified(handle)
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
    with _open_file(path) as handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(handle) as image:
                    return image.size
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(str(error)) from None
        except (UnidentifiedImageError, OSError) as error:
            raise BadImage(f"not a decodable image ({error})") from None
