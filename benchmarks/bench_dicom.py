"""Benchmark: DICOM import speed (images/s) by transfer syntax, next to plain PNG import.

Builds N DICOM files per syntax from real X-ray PNGs (12-bit MONOCHROME2 with a window, at
--size px), then times the folder source (scraper.folder.import_folder: detection, header read,
decode, window, PNG write) on each set, and on the PNGs themselves (decode check + hard link).
Every run starts from an empty data folder. Prints images/s per set and the ratio to PNG.

    python benchmarks/bench_dicom.py demo/nih-24/images                 # 24 images, 512 px
    python benchmarks/bench_dicom.py path/to/nih/images --images 200 --size 1024

What bounds the numbers: uncompressed DICOM costs a 16-bit read, the header's window and
a PNG encode (the PNG import only decodes and hard-links); compressed syntaxes add the decoder
(GDCM for JPEG lossless / JPEG-LS / JPEG 2000, pydicom's pure-Python RLE).
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from scraper.folder import import_folder  # noqa: E402
from tests.scraper.dicom_factory import compress, write_dicom  # noqa: E402

SYNTAXES = ("uncompressed", "rle", "jpeg-lossless", "jpeg-ls", "jpeg2000")


def build_sets(pngs, size, root):
    """{set name: folder}: the PNGs (resized) and one DICOM folder per syntax."""
    folders = {name: os.path.join(root, name) for name in ("png",) + SYNTAXES}
    for folder in folders.values():
        os.makedirs(folder)
    for index, path in enumerate(pngs):
        image = Image.open(path).convert("L").resize((size, size), Image.BILINEAR)
        image.save(os.path.join(folders["png"], f"{index:05d}.png"))
        pixels = np.asarray(image, dtype=np.int64) * 4095 // 255  # 12 bits
        for syntax in SYNTAXES:
            target = os.path.join(folders[syntax], f"{index:05d}.dcm")
            write_dicom(target, pixels, WindowCenter=2048, WindowWidth=4096,
                        PatientID=f"P{index // 3}")
            if syntax != "uncompressed":
                compress(target, syntax)
    return folders


def time_import(folder, root, repeats):
    """Best of `repeats` wall times (s) of a fresh import of `folder`."""
    best = float("inf")
    for attempt in range(repeats):
        data = os.path.join(root, f"data-{os.path.basename(folder)}-{attempt}")
        started = time.perf_counter()
        summary = import_folder(data, folder, progress=False)
        best = min(best, time.perf_counter() - started)
        assert summary.failed == 0 and summary.saved > 0, summary
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="folder of X-ray PNGs to build the sets from")
    parser.add_argument("--images", dest="count", type=int, default=24, help="images per set")
    parser.add_argument("--size", type=int, default=512, help="side of the square images, px")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    pngs = sorted(os.path.join(args.images, n) for n in os.listdir(args.images)
                  if n.lower().endswith(".png"))[:args.count]
    if not pngs:
        parser.error(f"no PNGs in {args.images}")
    with tempfile.TemporaryDirectory() as root:
        folders = build_sets(pngs, args.size, root)
        sizes = {name: sum(os.path.getsize(os.path.join(f, n)) for n in os.listdir(f))
                 for name, f in folders.items()}
        seconds = {name: time_import(f, root, args.repeats) for name, f in folders.items()}
    n = len(pngs)
    print(f"{n} images of {args.size} x {args.size} px, best of {args.repeats}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'set':<15}{'MB on disk':>11}{'images/s':>10}{'vs PNG':>8}")
    for name in folders:
        rate = n / seconds[name]
        print(f"{name:<15}{sizes[name] / 1e6:>11.2f}{rate:>10.1f}"
              f"{rate / (n / seconds['png']):>7.2f}x")


if __name__ == "__main__":
    main()
