"""What stage 6 writes into its results folder, and how it cleans up after itself.

Used by learning/visualization.py. Three concerns, kept apart from the stage's flow:

* File names. Every file of one image starts with the original's prefix
  `<stem>[p_normal,p_abnormal]` (probabilities with {:.2f}). When two examples share a stem
  (`x.png` and `x.jpg`), both use their full name instead (`x.png[...]`, `x.jpg[...]`), so
  neither overwrites the other.
* The manifest. run.json lists every file the run wrote (`"files"`). A later run deletes only
  files named in the previous run's manifest that it did not write again, and only plain files
  directly inside the results folder: never a file it did not write, never an input image.
  (Results from a version without a manifest are left alone.)
* maps.npz, written entry by entry into a zip (memory stays one map, whatever the run size),
  atomically. The layout is documented in visualization.py's docstring; `np.load(path,
  allow_pickle=False)` reads it.
"""
import os
import stat
import zipfile

import numpy as np

from scraper.cli import UserError, log
from scraper.fileio import atomic_write, read_json

MAPS_FILE = "maps.npz"
RUN_FILE = "run.json"


# ----------------------------------------------------------------------------- names

def output_keys(names):
    """{image name: key used in file names}: the stem, or the full name when stems collide."""
    stems = {}
    for name in names:
        stems.setdefault(os.path.splitext(name)[0], []).append(name)
    return {name: (stem if len(group) == 1 else name)
            for stem, group in stems.items() for name in group}


def file_prefix(key, p_normal, p_abnormal):
    """The original's naming: '<key>[p_normal,p_abnormal]' with {:.2f}; key from output_keys."""
    return "{}[{:.2f},{:.2f}]".format(key, p_normal, p_abnormal)


def file_names(prefix, method):
    """Pictures of one image and method; the detail page's layers are RGBA maps."""
    return {"heatmap": f"{prefix}_{method}.png", "base": f"{prefix}__base.png",
            "overlay": f"{prefix}_{method}_overlay.png", "panel": f"{prefix}_{method}_panel.png",
            "positive": f"{prefix}_{method}_positive.png",
            "negative": f"{prefix}_{method}_negative.png",
            "absolute": f"{prefix}_{method}_absolute.png"}


def image_files(prefix):
    """Per-image (not per-method) files: the display-size X-ray and the detail page."""
    return {"xray": f"{prefix}__xray.png", "page": f"{prefix}.html"}


# ----------------------------------------------------------------------------- folder checks

def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_results_folder(results, images, inputs):
    """Refuse a results folder that is, or lies in, the image folder, or holds an input.

    `inputs`: other paths the run reads (model folder, examples list, descriptions, weights).
    Compared after resolving symlinks, so a link to the image folder is refused as well.
    """
    if _inside(results, images):
        where = "the" if _inside(images, results) else "inside the"
        raise UserError(f"results folder {results} is {where} image folder {images}: choose a "
                        f"separate folder (stage 6 must never write or delete next to your images)")
    for path in [images] + [p for p in inputs if p]:
        if os.path.exists(path) and _inside(path, results):
            raise UserError(f"results folder {results} contains the input {path}: choose a "
                            f"separate, dedicated folder")


# ----------------------------------------------------------------------------- manifest

def previous_manifest(results):
    """Files the previous run recorded in run.json; [] when there is none or it is unusable."""
    path = os.path.join(results, RUN_FILE)
    if not os.path.isfile(path):
        return []
    try:
        info = read_json(path, "previous run.json")
    except UserError as error:
        log(f"note: {error}; files of the previous run are left in place")
        return []
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, list):
        return []
    return [name for name in files if isinstance(name, str)]


def remove_previous(results, old_files, written, protected=()):
    """Delete the previous run's files that this run did not write again; returns the count.

    Only plain names (no folder part), regular files (not links), never a protected path.
    """
    protected = {os.path.realpath(p) for p in protected}
    removed = 0
    for name in set(old_files) - set(written):
        if os.path.basename(name) != name or name in ("", ".", "..", RUN_FILE):
            continue
        path = os.path.join(results, name)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode) or os.path.realpath(path) in protected:
            continue
        os.unlink(path)
        removed += 1
    return removed


# ----------------------------------------------------------------------------- maps.npz

class MapsWriter:
    """Write numpy arrays one by one into an .npz (a zip of .npy files), atomically.

    with MapsWriter(path) as maps: maps.add("map/x.png/deeplift", array) ...
    The file appears (renamed into place) only when the block ends without an error.
    """

    def __init__(self, path):
        self.path = path
        self._atomic = atomic_write(path, "wb")

    def __enter__(self):
        handle = self._atomic.__enter__()
        self._zip = zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, allowZip64=True)
        return self

    def add(self, key, array):
        with self._zip.open(key + ".npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)

    def __exit__(self, *exc):
        self._zip.close()
        return self._atomic.__exit__(*exc)
