"""Stage 6's results folder: names, shard folders, and runs that replace each other whole.

Used by learning/visualization.py.

* Names. Every file of one image starts with the original's prefix `<stem>[p_normal,p_abnormal]`
  (probabilities with {:.2f}); when two examples share a stem (`x.png`, `x.jpg`) both use their
  full name. Per-image files live in `pictures/<xx>/` (xx = the first two hex digits of the
  name's sha1: 256 folders, about 400 files each at 30,000 images), never in one flat folder.
* One run, one id, swapped in whole. A run writes everything into a staging folder
  `<results>/.cxr-run-<run id>.part/`. At the end (`Run.swap`) a journal
  (`.cxr-swap-<run id>.json`, written atomically) lists the moves, the top-level files and the
  `pictures/` folder are renamed into place, the previous run's files that this run did not
  write again are deleted, and the journal is removed. A run killed before the swap leaves the
  previous results untouched (maps.npz, index and run.json always belong to one run id); one
  killed during the swap leaves its journal, and the next run completes the swap first
  (roll forward) before anything else.
* Orphans. Staging folders of killed runs and our own temp files are removed by the next run,
  and listed (with their file counts) in its run.json under "orphans_removed".
* The manifest. run.json lists every top-level file of the run ("files") and the folders it
  owns ("folders": `pictures/`, replaced as a whole by each run: do not keep your own files
  there). A run deletes only top-level files named in the previous run's manifest (plain names,
  regular files, never an input), never a user's file.
* maps.npz is written entry by entry into a zip (memory stays one map, whatever the run size).
"""
import contextlib
import hashlib
import os
import re
import shutil
import stat
import uuid
import zipfile

import numpy as np

from scraper.cli import UserError, log
from scraper.fileio import atomic_write_json, read_json, remove_stale_temp_files

MAPS_FILE = "maps.npz"
RUN_FILE = "run.json"
PICTURES = "pictures"
_STAGING = re.compile(r"^\.cxr-run-([0-9a-f]{32})\.part$")
_OLD = re.compile(r"^\.cxr-old-([0-9a-f]{32})\.part$")
_JOURNAL = re.compile(r"^\.cxr-swap-([0-9a-f]{32})\.json$")


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


def shard(name):
    """'pictures/<xx>': the image's folder, xx = first two hex digits of sha1(name)."""
    return f"{PICTURES}/{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:2]}"


def image_paths(name, prefix, methods):
    """Relative ('/'-separated) paths of one image's files: the X-ray, the detail page and
    the one picture per method."""
    folder = f"{shard(name)}/{prefix}"
    return ({"xray": f"{folder}__xray.jpg", "page": f"{folder}.html"},
            {method: f"{folder}_{method}.png" for method in methods})


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


# ----------------------------------------------------------------------------- the run

def new_run_id():
    return uuid.uuid4().hex


class Run:
    """One stage-6 run: its id, its staging folder, and the swap that publishes it.

    run = Run(results); run.start()   # completes an interrupted swap, removes orphans
    run.path("maps.npz")              # where to write (inside the staging folder)
    run.swap()                        # publish all it holds; returns the old files removed
    """

    def __init__(self, results, protected=()):
        self.results = results
        self.run_id = new_run_id()
        self.staging = os.path.join(results, f".cxr-run-{self.run_id}.part")
        self.protected = {os.path.realpath(p) for p in protected}
        self.orphans = []
        self.previous = {"files": [], "run_id": None}

    def start(self):
        try:
            os.makedirs(self.results, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create results folder {self.results}: "
                            f"{error.strerror}") from None
        for name in sorted(os.listdir(self.results)):
            if _JOURNAL.match(name):
                finish_swap(self.results, name)
        self.orphans = remove_orphans(self.results)
        self.previous = previous_manifest(self.results)
        os.mkdir(self.staging)
        os.mkdir(os.path.join(self.staging, PICTURES))
        return self

    def path(self, relative):
        return os.path.join(self.staging, *relative.split("/"))

    def make_folders(self, relatives):
        for relative in set(relatives):
            os.makedirs(os.path.dirname(self.path(relative)), exist_ok=True)

    def staged(self):
        """(top-level files, top-level folders) of the staging folder, sorted: the manifest."""
        entries = sorted(os.scandir(self.staging), key=lambda entry: entry.name)
        return ([e.name for e in entries if not e.is_dir(follow_symlinks=False)],
                [e.name for e in entries if e.is_dir(follow_symlinks=False)])

    def swap(self):
        """Publish everything staged: journal, renames (run.json last), the previous run's
        files that were not written again removed. -> count removed."""
        files, folders = self.staged()
        moves = [name for name in files + folders if name != RUN_FILE] + [RUN_FILE]
        journal = f".cxr-swap-{self.run_id}.json"
        old = [name for name in self.previous["files"] if name not in set(files)]
        atomic_write_json(os.path.join(self.results, journal), {
            "run_id": self.run_id, "staging": os.path.basename(self.staging), "moves": moves,
            "remove": old})
        return finish_swap(self.results, journal, self.protected)

    def abandon(self):
        """Remove the staging folder (a run that stopped with an error before the swap)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def finish_swap(results, journal, protected=()):
    """Carry out (or complete, after a kill) the swap a journal describes; idempotent."""
    path = os.path.join(results, journal)
    try:
        plan = read_json(path, "swap journal")
        run_id = _JOURNAL.match(journal).group(1)
        staging = os.path.join(results, f".cxr-run-{run_id}.part")
        moves, remove = list(plan["moves"]), list(plan["remove"])
    except (UserError, KeyError, TypeError, AttributeError):
        log(f"note: {path} is unreadable; the interrupted run it belongs to is discarded")
        os.unlink(path)
        return 0
    old_dir = os.path.join(results, f".cxr-old-{run_id}.part")
    for name in moves:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            continue
        source, target = os.path.join(staging, name), os.path.join(results, name)
        if not os.path.lexists(source):
            continue  # moved before the kill
        if os.path.isdir(source) and os.path.lexists(target):
            os.makedirs(old_dir, exist_ok=True)
            os.replace(target, os.path.join(old_dir, name))
        os.replace(source, target)
    removed = remove_previous(results, remove, protected)
    shutil.rmtree(old_dir, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    os.unlink(path)
    return removed


def remove_orphans(results):
    """Delete staging and old folders of killed runs and our stale temp files; returns
    [{"path": name, "files": count}] for the manifest."""
    found = []
    for entry in sorted(os.scandir(results), key=lambda e: e.name):
        if (_STAGING.match(entry.name) or _OLD.match(entry.name)) \
                and entry.is_dir(follow_symlinks=False):
            count = sum(len(files) for _, _, files in os.walk(entry.path))
            shutil.rmtree(entry.path)
            found.append({"path": entry.name, "files": count})
    temps = remove_stale_temp_files(results)
    if temps:
        found.append({"path": ".<name>.cxr-tmp-*.part", "files": temps})
    if found:
        log(f"note: removed {sum(o['files'] for o in found):,} file(s) a killed run left in "
            f"{results} (listed in run.json under orphans_removed)")
    return found


def previous_manifest(results):
    """{"files": top-level names the previous run recorded, "run_id"}; empty when none."""
    path = os.path.join(results, RUN_FILE)
    empty = {"files": [], "run_id": None}
    if not os.path.isfile(path):
        return empty
    try:
        info = read_json(path, "previous run.json")
    except UserError as error:
        log(f"note: {error}; files of the previous run are left in place")
        return empty
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, list):
        return empty
    return {"files": [name for name in files if isinstance(name, str)],
            "run_id": info.get("run_id")}


def remove_previous(results, names, protected=()):
    """Delete the previous run's top-level files in `names`; returns the count.

    Only plain names (no folder part), regular files (not links), never a protected path.
    """
    protected = {os.path.realpath(p) for p in protected}
    removed = 0
    for name in set(names):
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
    """Write numpy arrays one by one into an .npz (a zip of .npy files).

    with MapsWriter(path) as maps: maps.add("map/x.png/deeplift", array) ...
    Written inside the run's staging folder: it becomes visible only with the run's swap.
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self._zip = zipfile.ZipFile(self.path, "x", zipfile.ZIP_DEFLATED, allowZip64=True)
        return self

    def add(self, key, array):
        with self._zip.open(key + ".npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)

    def add_rows(self, key, dtype, count, blocks):
        """A (count,) array of `dtype` written block by block from `blocks` (arrays or lists):
        the same .npy as add() of the whole array, in the memory of one block."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                  "fortran_order": False, "shape": (count,)}
        written = 0
        with self._zip.open(key + ".npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_1_0(entry, header)
            for block in blocks:
                block = np.asarray(block, dtype=dtype)
                entry.write(block.tobytes())
                written += len(block)
        if written != count:
            raise ValueError(f"{key}: {written} rows written, {count} announced")

    def __exit__(self, *exc):
        with contextlib.suppress(Exception) if exc[0] else contextlib.nullcontext():
            self._zip.close()
        return False

