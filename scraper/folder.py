"""Stage 2, source `folder`: import the user's own X-rays (PNG or JPEG, any mode, any size).

Reads:  an images folder, labelled by a CSV (column `image` = path relative to the folder,
        a label column normal/abnormal or 0/1, optional group column = patient/study id and
        optional `view`), or by class sub-folders (--normal-class names the normal one; every
        other sub-folder is abnormal), or not at all (every image unlabelled: allowed, warned);
        optionally a boxes CSV: image, finding, x, y, w, h in original-image pixels
Writes: <data_dir>/images/<flat name> (hard link, or an atomic copy across file systems; the
        name is the relative path with '/' -> '__', so normal/1.jpg and abnormal/1.jpg differ),
        <data_dir>/images-description.json (merged with the records already there),
        <data_dir>/images-failures.json

Files that are not images (.DS_Store, Thumbs.db, notes.txt) are skipped and counted; a file
with an image extension that does not decode is a failure with its reason, as is a CSV row
naming a missing image; images the CSV does not list are skipped. A re-run leaves unchanged
files alone (counted as present).

Example (through the stage-2 command):
    cxr-scrape data --source folder --images demo/nih-24/images \\
        --labels demo/nih-24/labels.csv --label-column abnormal --group-column patient_id \\
        --boxes demo/nih-24/bboxes.csv
    cxr-scrape data --source folder --images ~/xrays --normal-class normal
"""
import contextlib
import csv
import os
import shutil
import time

from scraper.cli import UserError, fmt_count, log, progress_bar
from scraper.fileio import atomic_write, remove_stale_temp_files
from scraper.images import BadImage, check_image_file, is_image_name
from scraper.schema import (DESCRIPTION_FILE, IMAGES_DIR, load_descriptions, make_box,
                            make_record, normalize_label)
from scraper.summary import ScrapeSummary, finish, merge_records

IMAGE_COLUMN = "image"
VIEW_COLUMN = "view"
BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
_SKIPPED_DIRS = ("__MACOSX",)  # macOS zip leftovers: resource forks, never images


def flat_name(relative_path):
    """'abnormal/1.jpg' -> 'abnormal__1.jpg' (unique, flat, safe as a file name)."""
    return relative_path.replace("\\", "/").strip("/").replace("/", "__")


def clean_relative(path_text):
    """A CSV's image path -> normalised '/'-separated relative path, or None if it climbs out."""
    text = path_text.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or ":" in parts[0]:
        return None
    return "/".join(parts)


def list_files(images_dir, exclude=None):
    """Every file under `images_dir` as a sorted list of '/'-separated relative paths.

    Hidden folders (.git, ...) and __MACOSX are not entered; `exclude` (the output images
    folder, when it lies inside the input) is left out.
    """
    found = []
    exclude = os.path.realpath(exclude) if exclude else None
    for root, dirs, files in os.walk(images_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS
                         and os.path.realpath(os.path.join(root, d)) != exclude)
        relative_root = os.path.relpath(root, images_dir)
        for name in files:
            relative = name if relative_root == "." else f"{relative_root}/{name}"
            found.append(relative.replace(os.sep, "/"))
    return sorted(found)


def _open_csv(path, what):
    """(rows as dicts with their line numbers, column names); UserError on unreadable files."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a CSV file: {path}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{what} {path} is not a readable UTF-8 CSV ({error})") from None
    if not columns:
        raise UserError(f"{what} {path} is empty: expected a header row")
    return rows, columns


def _require_columns(path, what, columns, wanted, hint=""):
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise UserError(f"{what} {path} has no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(columns)}){hint}")


def _cell(row, column):
    return (row.get(column) or "").strip()


def read_labels_csv(path, label_column="label", group_column="group"):
    """{relative path: {"label", "report_id"?, "view"?, "row"}} from a labels CSV."""
    rows, columns = _open_csv(path, "labels CSV")
    _require_columns(path, "labels CSV", columns, (IMAGE_COLUMN, label_column),
                     "; name the label column with --label-column")
    if group_column not in columns and group_column != "group":
        raise UserError(f"labels CSV {path} has no group column {group_column!r} "
                        f"(columns: {', '.join(columns)})")
    entries = {}
    for line, row in rows:
        image = _cell(row, IMAGE_COLUMN)
        if not image and not any(_cell(row, c) for c in columns):
            continue  # blank line
        relative = clean_relative(image)
        if relative is None:
            raise UserError(f"labels CSV {path}: row {line}: invalid image path {image!r} "
                            f"(must be relative to the images folder, without '..')")
        value = _cell(row, label_column)
        try:
            label = normalize_label(value)
        except ValueError:
            raise UserError(f"labels CSV {path}: row {line} (image {image}): invalid "
                            f"{label_column} {value!r}; use normal/abnormal or 0/1") from None
        if relative in entries:
            raise UserError(f"labels CSV {path}: image {image!r} is listed twice "
                            f"(rows {entries[relative]['row']} and {line})")
        entry = {"label": label, "row": line}
        if _cell(row, group_column):
            entry["report_id"] = _cell(row, group_column)
        if _cell(row, VIEW_COLUMN):
            entry["view"] = _cell(row, VIEW_COLUMN)
        entries[relative] = entry
    return entries


def read_boxes_csv(path):
    """{relative path: [box, ...]} from a CSV with columns image, finding, x, y, w, h."""
    rows, columns = _open_csv(path, "boxes CSV")
    _require_columns(path, "boxes CSV", columns, BOX_COLUMNS)
    boxes = {}
    for line, row in rows:
        if not any(_cell(row, c) for c in columns):
            continue
        relative = clean_relative(_cell(row, "image"))
        try:
            if relative is None:
                raise ValueError(f"invalid image path {_cell(row, 'image')!r}")
            box = make_box(*(_cell(row, c) for c in BOX_COLUMNS[1:]))
        except ValueError as error:
            raise UserError(f"boxes CSV {path}: row {line}: {error}") from None
        boxes.setdefault(relative, []).append(box)
    return boxes


def _unchanged(source, target):
    """True when `target` is `source` (hard link) or a copy with the same size and mtime."""
    try:
        if os.path.samefile(source, target):
            return True
        a, b = os.stat(source), os.stat(target)
    except OSError:
        return False
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def place_file(source, target):
    """Hard-link `source` at `target` (same file system), else copy it atomically (+ mtime)."""
    temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.link.part")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    try:
        os.link(source, temp)
        os.replace(temp, target)
        return
    except OSError:  # other file system, no permission to link, ...: copy instead
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    with open(source, "rb") as source_file, atomic_write(target) as handle:
        shutil.copyfileobj(source_file, handle, 1 << 20)
    stat = os.stat(source)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _existing_records(data_dir):
    path = os.path.join(data_dir, DESCRIPTION_FILE)
    return load_descriptions(path) if os.path.exists(path) else []


def _class_labels(images, normal_class, images_dir):
    """{relative path: label} from the first folder level; root-level files are not labelled."""
    classes = sorted({p.split("/")[0] for p in images if "/" in p})
    if normal_class not in classes:
        raise UserError(f"normal class folder {normal_class!r} not found in {images_dir}; "
                        f"sub-folders with images: {', '.join(classes) or 'none'}")
    if len(classes) == 1:
        log(f"warning: only the normal class folder {normal_class!r} has images: "
            f"every image is labelled normal")
    return {p: ("normal" if p.split("/")[0] == normal_class else "abnormal")
            for p in images if "/" in p}


def import_folder(data_dir, images_dir, labels_csv=None, normal_class=None, boxes_csv=None,
                  label_column="label", group_column="group", progress=True):
    """Import (and label) a folder of the user's own images into `data_dir` (see module doc)."""
    summary = ScrapeSummary(started=time.monotonic())
    data_dir, images_dir = os.fspath(data_dir), os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise UserError(f"images folder not found: {images_dir}")
    if labels_csv and normal_class:
        raise UserError("give either a labels CSV or a normal class folder, not both")
    out_dir = os.path.join(data_dir, IMAGES_DIR)
    files = list_files(images_dir, exclude=out_dir)
    images = [p for p in files if is_image_name(os.path.basename(p))]
    image_set = set(images)
    junk = [p for p in files if p not in image_set]
    failures = []

    def fail(relative, reason):
        failures.append({"name": flat_name(relative), "url": os.path.abspath(
            os.path.join(images_dir, relative)), "reason": reason})

    # relative path -> {"label", optional "report_id", "view"}: what gets imported
    if labels_csv:
        entries = read_labels_csv(labels_csv, label_column, group_column)
        on_disk = set(files)
        for relative, entry in list(entries.items()):
            if relative not in on_disk:
                fail(relative, f"listed in {os.path.basename(labels_csv)} row {entry['row']} "
                               f"but not found in {images_dir}")
                del entries[relative]
            elif relative not in image_set:
                fail(relative, f"listed in {os.path.basename(labels_csv)} row {entry['row']} "
                               f"but not an image file")
                del entries[relative]
        not_listed = [p for p in images if p not in entries]
        if not_listed:
            log(f"{fmt_count(len(not_listed))} image(s) not in {labels_csv}: skipped "
                f"(e.g. {not_listed[0]})")
        summary.skipped += len(not_listed)
    elif normal_class:
        labels = _class_labels(images, normal_class, images_dir)
        loose = [p for p in images if p not in labels]
        if loose:
            log(f"{fmt_count(len(loose))} image(s) outside the class folders: skipped "
                f"(e.g. {loose[0]})")
        summary.skipped += len(loose)
        entries = {p: {"label": label} for p, label in labels.items()}
    else:
        log("warning: no labels CSV and no normal class folder: every image is imported "
            "unlabelled (kept out of training)")
        entries = {p: {"label": None} for p in images}
    if junk:
        log(f"{fmt_count(len(junk))} file(s) that are not images skipped (e.g. {junk[0]})")
    summary.skipped += len(junk)

    boxes = read_boxes_csv(boxes_csv) if boxes_csv else {}
    unused_boxes = sorted(set(boxes) - set(entries))
    if unused_boxes:
        log(f"warning: boxes for {fmt_count(len(unused_boxes))} image(s) that are not "
            f"imported are ignored (e.g. {unused_boxes[0]})")

    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temp_files(out_dir)
    records, owner = [], {}
    for relative in progress_bar(sorted(entries), unit="img", desc="folder images",
                                 disable=not progress, leave=False):
        entry, name = entries[relative], flat_name(relative)
        if name in owner:
            fail(relative, f"flat name {name!r} collides with {owner[name]!r}; rename one")
            continue
        owner[name] = relative
        source, target = os.path.join(images_dir, relative), os.path.join(out_dir, name)
        if _unchanged(source, target):
            summary.present += 1
        else:
            try:
                check_image_file(source)
                place_file(source, target)
            except BadImage as error:
                fail(relative, str(error))
                continue
            except OSError as error:
                fail(relative, f"cannot read or copy: {error.strerror or error}")
                continue
            summary.saved += 1
        label = entry["label"]
        extra = {"report_id": entry["report_id"]} if entry.get("report_id") else {}
        records.append(make_record(
            name, "folder", url=os.path.abspath(source), type="label",
            items=[label] if label else [], label=label, view=entry.get("view"),
            boxes=boxes.get(relative, []), **extra))
    return finish(data_dir, merge_records(_existing_records(data_dir), records), failures,
                  summary)
