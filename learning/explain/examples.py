"""Which images stage 6 explains, and what is known about them: the examples list, the image
files, and the records of images-description.json (labels, boxes, provenance).

Used by learning/visualization.py.
"""
import fnmatch
import os

from scraper.cli import UserError, log
from scraper.fileio import read_json
from scraper.images import is_image_name


def load_examples(path):
    names = read_json(path, "examples list")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise UserError(f"examples list must be a JSON list of image names: {path}")
    if not names:
        raise UserError(f"examples list is empty: {path}; nothing to explain")
    return list(dict.fromkeys(names))


def resolve_image(images_dir, name):
    """Path of example `name` inside images_dir (the original listed names without '.png')."""
    if os.path.basename(name) != name or name in (".", ".."):
        return None
    path = os.path.join(images_dir, name)
    if os.path.isfile(path):
        return path
    if not is_image_name(name) and os.path.isfile(path + ".png"):
        return path + ".png"
    return None


def load_records(descriptions, images_dir):
    """{name: record} from images-description.json; {} (with a note) when the default is absent."""
    from scraper.schema import load_descriptions

    path = descriptions or os.path.join(os.path.dirname(os.path.abspath(images_dir)),
                                        "images-description.json")
    if not os.path.isfile(path):
        if descriptions:
            raise UserError(f"image descriptions not found: {descriptions}")
        log(f"note: no {path}; labels and expert boxes unknown, localization metrics skipped")
        return {}, None
    by_name = {}
    for record in load_descriptions(path):
        by_name[record["name"]] = record
        by_name.setdefault(os.path.splitext(record["name"])[0], record)
    return by_name, path


def select_examples(names, pattern, limit):
    """--name (shell pattern) then --limit (the first N, in the examples list's order)."""
    if pattern:
        names = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not names:
            raise UserError(f"no example name matches --name {pattern!r}")
    return names[:limit] if limit else names
