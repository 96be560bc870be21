"""Stage 3's decode pipeline: image files -> (S, S, 3) uint8 arrays, ahead of the network.

Two pools with one interface (`iter_decoded`):
  threads    Pillow releases the GIL in zlib inflate and resize, but not in the Python glue
             around them: on many cores threads stop scaling (measured on a 16-core GPU host:
             1 thread 174 img/s, 15 *processes* 1,330 img/s).
  processes  spawn-started worker processes (never fork: this process holds TensorFlow /
             JAX / torch threads); each decoded image comes back pickled (150 KB at 224 px).
             Start-up costs about a second, so "auto" uses them only where they can pay:
             more than AUTO_MIN_IMAGES images and more than 2 CPU cores.
Order is kept and at most `prefetch` decoded images are in flight, so memory stays bounded.
"""
import collections
import concurrent.futures
import ctypes
import multiprocessing
import os

from scraper.images import BadImage, load_rgb, max_pixels, set_max_pixels

DECODE_MODES = ("auto", "threads", "processes")
AUTO_MIN_IMAGES = 256


def load_one(path, image_size):
    """One image as (S, S, 3) uint8 RGB, or the BadImage saying why it cannot be used."""
    try:
        return load_rgb(path, image_size)
    except BadImage as error:
        return error
    except OSError as error:  # vanished or unreadable since it was listed
        return BadImage(f"unreadable file ({error.strerror or error})")


def choose_mode(mode, count, cpus=None):
    """'auto' -> 'processes' for big runs on more than 2 cores, else 'threads'."""
    if mode not in DECODE_MODES:
        raise ValueError(f"invalid decode mode {mode!r}; allowed: {', '.join(DECODE_MODES)}")
    if mode != "auto":
        return mode
    cpus = cpus or os.cpu_count() or 1
    return "processes" if count > AUTO_MIN_IMAGES and cpus > 2 else "threads"


def make_pool(mode, workers):
    if mode == "processes":
        # spawned workers start with the default pixel limit: pass this process's on
        return concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=set_max_pixels, initargs=(max_pixels(),))
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode")


def iter_decoded(paths, image_size, workers, prefetch, mode="threads"):
    """Yield (position, uint8 (S, S, 3) array or BadImage) in the order of `paths`."""
    with make_pool(mode, workers) as pool:
        items = iter(enumerate(paths))
        pending = collections.deque()
        for position, path in items:
            pending.append((position, pool.submit(load_one, path, image_size)))
            if len(pending) >= prefetch:
                break
        try:
            while pending:
                position, future = pending.popleft()
                following = next(items, None)
                if following is not None:
                    pending.append((following[0],
                                    pool.submit(load_one, following[1], image_size)))
                yield position, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def malloc_trim():
    """Give freed heap memory back to the OS (glibc); a no-op elsewhere.

    Decode threads and the backend's threads allocate from separate glibc arenas; without a
    trim their free lists grew the peak RSS by ~100 KB per image over long runs (measured:
    +69 MiB for 600 more 64 px images), so memory was not "output array + a constant".
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None
