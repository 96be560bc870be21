"""The one picture of an attribution map, drawn once, and the pool of processes that draws them.

Used by stage 6 (learning/visualization.py). Every place a map is shown (gallery card, detail
page) shows the file `picture()` wrote for it, stacked over the image's X-ray picture; there is
no second rendering of a map, so two views of one map cannot disagree.

One colour scale, signed and symmetric: a map value v is shown through `colour_table()` at
v / top, clipped to [-1, 1]. Positive values (evidence for "abnormal") go from red (weak) to
yellow (at +top and above); negative values (evidence against) from blue to cyan (at -top and
below); alpha grows with sqrt(|v| / top) up to MAX_ALPHA, so zero is fully transparent and the
X-ray stays visible where a map shows nothing. `top` is the 99.5th percentile of |smoothed map|
(`scale_top`: one hot pixel does not wash out the rest), per image or pooled over the run
(stage 6's --scale). The colour bar (`colour_bar()`) is the same table, left = -top, right = +top.

One smoothing: the map (model-input pixels, S x S) is smoothed with a Gaussian of `sigma`
model-input pixels (pixel-level DeepLIFT maps are speckled), then resized bilinearly to the
display size. The scale's top is measured on that same smoothed map. maps.npz and every metric
keep the raw, unsmoothed map.

Pictures are written by a bounded pool of spawned processes (`Renderer`): numpy, Pillow and
scipy only (no TensorFlow in the workers), at most `workers` processes and 4 pending images per
worker, so memory stays flat whatever the run size.
"""
import contextlib
import io
import os

import numpy as np

MAX_ALPHA = 0.8
PERCENTILE = 99.5
COLOUR_BAR_SIZE = (512, 24)  # (width, height) of colorbar.png
COLOUR_BAR_FILE = "colorbar.png"
XRAY_QUALITY = 90  # JPEG quality of the display X-ray (grayscale)
_STEPS = 255  # colour-table steps per sign: index = trunc(v * 255) + 255, v in [-1, 1]


def colour_table():
    """(511, 4) uint8 RGBA for v = (index - 255) / 255 in [-1, 1]: the one colour scale."""
    v = (np.arange(2 * _STEPS + 1) - _STEPS) / _STEPS   # (511,)
    m = np.abs(v)
    rgba = np.zeros((len(v), 4))
    positive = v > 0
    rgba[positive, 0] = 1.0                  # red -> yellow
    rgba[positive, 1] = m[positive]
    rgba[~positive, 1] = m[~positive]        # blue -> cyan
    rgba[~positive, 2] = 1.0
    rgba[:, 3] = MAX_ALPHA * np.sqrt(m)
    return (rgba * 255).round().astype(np.uint8)


_TABLE = colour_table()


def smooth(signed, sigma):
    """(S, S) map -> float32 (S, S), Gaussian-smoothed with `sigma` pixels (0: unchanged)."""
    signed = np.asarray(signed, np.float32)
    if not sigma or sigma <= 0:
        return signed
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(signed, sigma)


def scale_top(smoothed):
    """The value shown at full colour: the 99.5th percentile of |map| where it is not 0;
    None when the map is all zero (nothing to show)."""
    magnitude = np.abs(np.asarray(smoothed, np.float32))
    values = magnitude[magnitude > 0]
    if values.size == 0:
        return None
    top = float(np.percentile(values, PERCENTILE))
    return top if top > 0 else float(values.max())


def scale_sample(smoothed, rng, size=256):
    """A fixed-size random sample of |map| (not 0), to pool one run-wide top (--scale shared):
    256 float32 per map, whatever its size."""
    magnitude = np.abs(np.asarray(smoothed, np.float32))
    values = magnitude[magnitude > 0]
    if values.size > size:
        values = rng.choice(values, size, replace=False)
    return values


def resize(values, size):
    """(h, w) float map -> (size, size) float32, bilinear (Pillow, mode F)."""
    from PIL import Image

    values = np.asarray(values, np.float32)
    if values.shape == (size, size):
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize((size, size), Image.BILINEAR),
                      np.float32)


def colourize(values, top):
    """Map values (any shape) -> RGBA uint8 through the colour table at `top` (None: clear)."""
    if not top:
        return np.zeros(np.shape(values) + (4,), np.uint8)
    scaled = np.clip(np.asarray(values, np.float32) / np.float32(top), -1, 1)
    # truncated towards 0: full colour exactly where |value| >= top, clear below top / 255
    return _TABLE[np.trunc(scaled * _STEPS).astype(np.intp) + _STEPS]


def picture(signed, top, sigma, size):
    """THE picture of a signed map: (S, S) -> RGBA uint8 (size, size, 4); see the docstring."""
    return colourize(resize(smooth(signed, sigma), size), top)


def colour_bar(width=COLOUR_BAR_SIZE[0], height=COLOUR_BAR_SIZE[1], grey=128):
    """The colour bar: -top (left) .. 0 .. +top (right) through `colourize`, over mid-grey."""
    values = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, 0)
    return over_grey(colourize(values, 1.0), grey)


def over_grey(rgba, grey):
    """Composite RGBA over an opaque grey (what the picture looks like on such an X-ray)."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255
    rgb = rgba[..., :3].astype(np.float32) * alpha + grey * (1 - alpha)
    return rgb.round().astype(np.uint8)


def composite(xray_gray, rgba):
    """What a browser shows: the RGBA picture stacked over the grey X-ray -> RGB uint8."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255
    base = np.asarray(xray_gray, np.float32)[..., None]
    return (rgba[..., :3].astype(np.float32) * alpha + base * (1 - alpha)).round().astype(np.uint8)


def png_bytes(array):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def jpeg_bytes(gray):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(gray, np.uint8), mode="L").save(buffer, format="JPEG",
                                                               quality=XRAY_QUALITY)
    return buffer.getvalue()


def write_new(path, data):
    """Write a new file in the run's staging folder (no temp + rename: the whole folder is
    swapped in at the end); refuses to follow a link or overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


# ----------------------------------------------------------------------------- one image

def render_image(task):
    """Draw one image's pictures (runs in a worker). task: {"id": what the caller matches the
    result by (stage 6: the entry's index), "path": the image file,
    "xray": output path, "size": display px, "sigma": smoothing, "max_pixels": decode cap,
    "maps": [(method, signed (S, S) float32, top or None for per-image, output path)]}.
    Returns (id, {method: top used}); a top of None means the map is all zero."""
    from scraper.images import load_rgb, set_max_pixels

    set_max_pixels(task["max_pixels"])
    xray = load_rgb(task["path"], task["size"]).mean(-1).round().astype(np.uint8)  # (D, D)
    write_new(task["xray"], jpeg_bytes(xray))
    tops = {}
    for method, signed, top, path in task["maps"]:
        smoothed = smooth(signed, task["sigma"])
        if top is None:
            top = scale_top(smoothed)
        tops[method] = top
        write_new(path, png_bytes(colourize(resize(smoothed, task["size"]), top)))
    return task["id"], tops


@contextlib.contextmanager
def _pool_errors():
    """A dead worker (killed, out of memory, or a script without a __main__ guard re-run by
    spawn) -> one line with the way out, instead of BrokenProcessPool's traceback."""
    from concurrent.futures.process import BrokenProcessPool

    from scraper.cli import UserError

    try:
        yield
    except BrokenProcessPool:
        raise UserError("the processes drawing the pictures stopped (killed, out of memory, or "
                        "started from a script without `if __name__ == \"__main__\":`); run "
                        "again, or with --workers 0 to draw in this process") from None


class Renderer:
    """A bounded pool of spawned worker processes running `render_image`.

    with Renderer(workers) as renderer:
        renderer.submit(task)          # blocks while 4 x workers images are pending
    renderer.results                   # {id: {method: top}} once the block has ended
    workers = 0 renders in this process (small runs, tests of the picture itself).
    on_result(id, tops), when given, takes each result instead of `results` (stage 6 keeps
    them in its EntryLog: memory flat in the number of images).
    """

    def __init__(self, workers, on_result=None):
        self.workers = workers
        self.results = {}
        self._on_result = on_result or self.results.__setitem__
        self._pending = []
        self._pool = None

    def __enter__(self):
        if self.workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self

    def submit(self, task):
        if self._pool is None:
            self._collect_one(render_image(task))
            return
        with _pool_errors():
            while len(self._pending) >= 4 * self.workers:
                self._collect_one(self._pending.pop(0).result())
            self._pending.append(self._pool.submit(render_image, task))

    def _collect_one(self, result):
        self._on_result(*result)

    def __exit__(self, kind, value, traceback):
        try:
            if kind is None:
                with _pool_errors():
                    while self._pending:
                        self._collect_one(self._pending.pop(0).result())
        finally:
            if self._pool is not None:
                for future in self._pending:
                    future.cancel()
                self._pool.shutdown(wait=True, cancel_futures=True)
        return False
