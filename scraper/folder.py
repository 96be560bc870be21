"""Stage 2, source `folder`: import the user's own X-rays (PNG or JPEG, any mode, any size).

Reads:  an images folder (PNG, JPEG, ... and DICOM, found by content: the 'DICM' preamble
        or a bare DICOM header, whatever the file is called), labelled by a CSV (column `image`
        = path relative to the folder or a DICOM SOPInstanceUID, a label column normal/abnormal
        or 0/1, optional group column = patient/study id and optional `view`), or by class
        sub-folders (--normal-class names the normal one; every other sub-folder is abnormal),
        or not at all (every image unlabelled: allowed, warned); optionally a boxes CSV:
        image, finding, x, y, w, h in original-image pixels
Writes: <data_dir>/images/<name>: a hard link (or an atomic copy across file systems) of each
        PNG/JPEG, named by its relative path with '/' -> '__' for a CSV import and by its own
        file name for class sub-folders (the class never appears in the name; two files with
        the same name get a salted-hash suffix); each DICOM as an 8-bit PNG named
        dcm-<salted hash>.png (scraper/dicom.py); <data_dir>/images-description.json (merged
        with the records already there), <data_dir>/images-failures.json, <data_dir>/.id-salt

Groups (report_id, kept on one side of the split): the CSV's group column, else the first
capture group of --group-pattern on the relative path, else a DICOM's PatientID (or its
StudyInstanceUID with --dicom-group study), else the image itself - with a warning when names
share prefixes that look like patients. DICOM groups are stored as salted hashes only.

Only regular files are opened: a FIFO or device (also behind a symbolic link) named like an
image is a failure with the reason, never read; a symbolic link to a regular file imports the
target's bytes. Files that are neither images nor DICOM (.DS_Store, Thumbs.db, notes.txt) are
skipped and counted; a file with an image extension that does not decode is a failure with its
reason, as is a broken DICOM or a CSV row naming a missing image; images the CSV does not list
are skipped. A re-run leaves unchanged files alone (counted as present). Nothing imported
(0 saved, 0 present) is an error.

Example (through the stage-2 command):
    cxr-scrape data --source folder --images demo/nih-24/images \\
        --labels demo/nih-24/labels.csv --label-column abnormal --group-column patient_id \\
        --boxes demo/nih-24/bboxes.csv
    cxr-scrape data --source folder --images ~/xrays --normal-class normal \\
        --group-pattern 'person(\\d+)_'
    cxr-scrape data --source folder --images ~/dicom_export --labels labels.csv
"""
import collections
import contextlib
import csv
import dataclasses
import os
import re
import shutil
import stat
import time

import numpy as np
from PIL import Image

from scraper import dicom
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
    info = os.stat(source)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))



_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO/named pipe"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def source_path(path):
    """The real path of `path` when it is, or links to, a regular file; else BadImage why not.

    Nothing is opened: a FIFO would block a read forever and /dev/zero would never end.
    """
    try:
        info = os.lstat(path)
        link = stat.S_ISLNK(info.st_mode)
        real = os.path.realpath(path) if link else path
        if link:
            info = os.stat(real)
    except FileNotFoundError:
        raise BadImage(f"broken symbolic link (its target {os.readlink(path)!r} does not "
                       f"exist)") from None
    except OSError as error:
        raise BadImage(f"cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
        behind = f" behind a symbolic link to {real}" if link else ""
        raise BadImage(f"not a regular file ({kind}{behind}): refused, never read")
    return real


@dataclasses.dataclass
class Source:
    """One candidate file: its resolved path, and for DICOM its header (no pixels)."""
    relative: str
    real: str = ""
    header: object = None     # pydicom Dataset without pixel data, for DICOM files
    bare: bool = False        # DICOM without preamble (read with force)
    error: str = ""           # why it cannot be imported, reported only if it is selected


def scan_folder(images_dir, exclude=None):
    """({relative: Source} for images and DICOM files, [junk relative paths]) under images_dir."""
    sources, junk = {}, []
    for relative in list_files(images_dir, exclude=exclude):
        name = os.path.basename(relative)
        named = is_image_name(name) or dicom.is_dicom_name(name)
        try:
            real = source_path(os.path.join(images_dir, relative))
        except BadImage as error:
            if named:
                sources[relative] = Source(relative, error=str(error))
            else:
                junk.append(relative)
            continue
        if is_image_name(name):
            sources[relative] = Source(relative, real)
            continue
        if name.startswith("."):
            junk.append(relative)
            continue
        try:
            found = dicom.read_header(real)
        except dicom.DicomError as error:
            sources[relative] = Source(relative, real, error=str(error))
            continue
        if found is None or dicom.is_media_directory(found[0]):
            junk.append(relative)
        else:
            sources[relative] = Source(relative, real, header=found[0], bare=found[1])
    return sources, junk


def _uid_index(sources):
    """{SOPInstanceUID: relative path} of the DICOM files, so CSVs may name them by UID."""
    return {str(s.header.SOPInstanceUID): r for r, s in sources.items()
            if s.header is not None and s.header.get("SOPInstanceUID")}


def _resolve_uids(listed, uids, what):
    """A CSV's {key: value} with SOPInstanceUID keys turned into relative paths."""
    resolved = {}
    paths = set(uids.values())
    for key, value in listed.items():
        relative = key if key in paths else uids.get(key, key)
        if relative in resolved:
            raise UserError(f"{what}: image {relative!r} is listed twice (by path and by its "
                            f"SOPInstanceUID)")
        resolved[relative] = value
    return resolved


def _select_entries(sources, junk, labels_csv, normal_class, images_dir, label_column,
                    group_column, fail):
    """{relative: {"label", "report_id"?, "view"?}} to import, and how many were skipped."""
    if labels_csv:
        entries = _resolve_uids(read_labels_csv(labels_csv, label_column, group_column),
                                _uid_index(sources), f"labels CSV {labels_csv}")
        on_disk = set(sources) | set(junk)
        for relative, entry in list(entries.items()):
            where = f"listed in {os.path.basename(labels_csv)} row {entry['row']}"
            if relative not in on_disk:
                fail(relative, f"{where} but not found in {images_dir}")
                del entries[relative]
            elif relative not in sources:
                fail(relative, f"{where} but not an image file")
                del entries[relative]
        left_out = [p for p in sources if p not in entries]
        if left_out:
            log(f"{fmt_count(len(left_out))} image(s) not in {labels_csv}: skipped "
                f"(e.g. {left_out[0]})")
        return entries, len(left_out)
    if normal_class:
        labels = _class_labels(sorted(sources), normal_class, images_dir)
        loose = [p for p in sorted(sources) if p not in labels]
        if loose:
            log(f"{fmt_count(len(loose))} image(s) outside the class folders: skipped "
                f"(e.g. {loose[0]})")
        return {p: {"label": label} for p, label in labels.items()}, len(loose)
    log("warning: no labels CSV and no normal class folder: every image is imported "
        "unlabelled (kept out of training)")
    return {p: {"label": None} for p in sorted(sources)}, 0


def output_names(entries, sources, salt, by_class):
    """{relative: file name in images/}: DICOM -> dcm-<hash>.png; class folders -> own name.

    A class folder's name never reaches the output (the model and the reader must not see the
    true class); names that collide get a salted-hash suffix, all of them, not just the second.
    """
    names, plain = {}, collections.defaultdict(list)
    for relative in entries:
        header = sources[relative].header
        if header is not None:
            key = str(header.get("SOPInstanceUID", "") or f"path:{relative}")
            names[relative] = dicom.salted_id(salt, "dcm", key) + ".png"
        elif by_class:
            plain[os.path.basename(relative)].append(relative)
        else:
            names[relative] = flat_name(relative)
    for base, relatives in plain.items():
        stem, extension = os.path.splitext(base)
        for relative in relatives:
            names[relative] = (base if len(relatives) == 1 else
                               f"{stem}-{dicom.salted_hex(salt, relative, 8)}{extension}")
    return names


def assign_groups(entries, sources, salt, pattern=None, dicom_group="patient"):
    """Fill entry["report_id"]: CSV group, else --group-pattern, else DICOM header, else none.

    DICOM groups are salted hashes (the raw value is never stored). Warns about images the
    pattern does not match and, when nothing groups the images, about shared name prefixes.
    """
    ungrouped = []
    for relative, entry in entries.items():
        header = sources[relative].header
        value, kind = entry.get("report_id"), "group"
        if not value and pattern is not None:
            match = pattern.search(relative)
            value = match.group(1) if match and match.group(1) else None
        if not value and header is not None:
            kind, value = dicom.group_key(header, dicom_group) or ("group", None)
        if value and header is not None:
            value = dicom.salted_id(salt, kind, value)
        if value:
            entry["report_id"] = value
        else:
            ungrouped.append(relative)
    if ungrouped and pattern is not None:
        log(f"warning: {fmt_count(len(ungrouped))} image(s) do not match --group-pattern "
            f"{pattern.pattern!r}: each is its own group (e.g. {ungrouped[0]})")
    if pattern is None and len(ungrouped) == len(entries):
        warn_shared_prefixes(ungrouped)


_PREFIX = re.compile(r"^([A-Za-z]*\d+[A-Za-z]*)([_\-])")


def shared_prefixes(relatives):
    """{prefix: n} for name prefixes (before the first _ or -, with a digit) shared by 2+."""
    counts = collections.Counter()
    for relative in relatives:
        match = _PREFIX.match(os.path.basename(relative))
        if match:
            counts[match.group(1) + match.group(2)] += 1
    return {prefix: n for prefix, n in counts.items() if n >= 2}


def warn_shared_prefixes(relatives):
    """Say so when ungrouped images share patient-like name prefixes (one patient, many films)."""
    # A prefix on more than a tenth of the images is a naming scheme ('NORMAL2-'), not a patient.
    cap = max(3, len(relatives) // 10)
    shared = {p: n for p, n in shared_prefixes(relatives).items() if n <= cap}
    if not shared:
        return
    example, count = max(shared.items(), key=lambda item: (item[1], item[0]))
    head, separator = example[:-1], example[-1]
    letters = re.match(r"[A-Za-z]*", head).group(0)
    suggestion = (f"^({letters}\\d+){separator}" if re.fullmatch(r"[A-Za-z]*\d+", head)
                  else f"^([^{separator}]+){separator}")
    log(f"warning: {fmt_count(sum(shared.values()))} of {fmt_count(len(relatives))} images "
        f"share a name prefix with another image ({fmt_count(len(shared))} prefixes, e.g. "
        f"{example!r} x {count}) but no group is given, so each image is its own group; if a "
        f"prefix is a patient, keep each patient on one side of the split with --group-pattern "
        f"'{suggestion}' (the first capture group names the patient)")


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


def _dicom_unchanged(previous, source, target):
    """True when `target` was converted from this very DICOM file (size and mtime recorded)."""
    info = os.stat(source)
    seen = (previous or {}).get("dicom") or {}
    return (os.path.isfile(target) and seen.get("source_size") == info.st_size
            and seen.get("source_mtime_ns") == info.st_mtime_ns)


def import_dicom(source, target, previous=None):
    """Convert one DICOM file to an 8-bit PNG at `target`; returns (pixel record, saved?)."""
    if _dicom_unchanged(previous, source.real, target):
        return previous["dicom"], False
    pixels, record, _ = dicom.convert(source.real, bare=source.bare)
    info = os.stat(source.real)
    record.update(source_size=info.st_size, source_mtime_ns=info.st_mtime_ns)
    with atomic_write(target) as handle:
        # zlib level 1: a fifth of the default's (6) encode time for ~16 % larger files
        Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(handle, format="PNG",
                                                                     compress_level=1)
    return record, True


def _import_plain(source, target):
    """Hard-link or copy one PNG/JPEG after a full decode check; True when written."""
    if _unchanged(source.real, target):
        return False
    check_image_file(source.real)
    place_file(source.real, target)
    return True


def _record(name, entry, source, boxes, url, pixel_record=None):
    label = entry["label"]
    header = source.header
    view = entry.get("view") or (dicom.view_of(header) if header is not None else None)
    extra = {"report_id": entry["report_id"]} if entry.get("report_id") else {}
    record = make_record(name, "folder", url=url, type="label", items=[label] if label else [],
                         label=label, view=view, boxes=boxes, **extra)
    if pixel_record is not None:
        record["dicom"] = pixel_record  # what was applied: window, inversion, rescale, syntax
    return record


def _import_all(entries, sources, names, boxes, out_dir, images_dir, existing, summary, fail,
                progress):
    """Write every selected image into out_dir; returns the new records."""
    records, owner, tolerated = [], {}, []
    for relative in progress_bar(sorted(entries), unit="img", desc="folder images",
                                 disable=not progress, leave=False):
        source, name = sources[relative], names[relative]
        if name in owner:
            fail(relative, f"the same DICOM image (SOPInstanceUID) as {owner[name]}: a duplicate"
                 if source.header is not None else
                 f"output name {name!r} collides with {owner[name]!r}; rename one", source.header)
            continue
        owner[name] = relative
        target = os.path.join(out_dir, name)
        url = os.path.abspath(os.path.join(images_dir, relative))
        try:
            if source.error:
                raise BadImage(source.error)
            if source.header is None:
                pixel_record, saved = None, _import_plain(source, target)
            else:
                url = dicom.mask_identifiers(url, source.header)
                warning = dicom.check_importable(source.header)
                if warning:
                    tolerated.append(warning)
                pixel_record, saved = import_dicom(source, target, existing.get(name))
        except BadImage as error:
            fail(relative, str(error), source.header)
            continue
        except OSError as error:
            fail(relative, f"cannot read or copy: {error.strerror or error}", source.header)
            continue
        summary.saved += saved
        summary.present += not saved
        records.append(_record(name, entries[relative], source, boxes.get(relative, []), url,
                               pixel_record))
    if tolerated:
        log(f"warning: {fmt_count(len(tolerated))} DICOM image(s) imported whose modality is "
            f"not a radiograph's (CR/DX/DR/RG): {collections.Counter(tolerated).most_common(1)[0][0]}"
            f" ...; check that they are chest X-rays")
    return records


def import_folder(data_dir, images_dir, labels_csv=None, normal_class=None, boxes_csv=None,
                  label_column="label", group_column="group", group_pattern=None,
                  dicom_group="patient", progress=True):
    """Import (and label) a folder of the user's own images into `data_dir` (see module doc).

    group_pattern: a compiled regex (or its text) whose first capture group, searched in each
    image's relative path, is the patient; dicom_group: "patient" or "study".
    """
    summary = ScrapeSummary(started=time.monotonic())
    data_dir, images_dir = os.fspath(data_dir), os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise UserError(f"images folder not found: {images_dir}")
    if labels_csv and normal_class:
        raise UserError("give either a labels CSV or a normal class folder, not both")
    if dicom_group not in dicom.GROUP_KEYS:
        raise UserError(f"invalid DICOM grouping {dicom_group!r}; use patient or study")
    pattern = re.compile(group_pattern) if isinstance(group_pattern, str) else group_pattern
    out_dir = os.path.join(data_dir, IMAGES_DIR)
    sources, junk = scan_folder(images_dir, exclude=out_dir)
    failures = []

    def fail(relative, reason, header=None):
        url = os.path.abspath(os.path.join(images_dir, relative))
        name = flat_name(relative)
        if header is not None:  # a DICOM's own path may hold its PatientID
            url, name = dicom.mask_identifiers(url, header), dicom.mask_identifiers(name, header)
        failures.append({"name": name, "url": url, "reason": reason})

    entries, summary.skipped = _select_entries(sources, junk, labels_csv, normal_class,
                                               images_dir, label_column, group_column, fail)
    if junk:
        log(f"{fmt_count(len(junk))} file(s) that are not images skipped (e.g. {junk[0]})")
    summary.skipped += len(junk)
    boxes = read_boxes_csv(boxes_csv) if boxes_csv else {}
    boxes = _resolve_uids(boxes, _uid_index(sources), f"boxes CSV {boxes_csv}")
    unused_boxes = sorted(set(boxes) - set(entries))
    if unused_boxes:
        log(f"warning: boxes for {fmt_count(len(unused_boxes))} image(s) that are not "
            f"imported are ignored (e.g. {unused_boxes[0]})")

    salt = dicom.data_salt(data_dir)
    names = output_names(entries, sources, salt, by_class=bool(normal_class))
    assign_groups(entries, sources, salt, pattern, dicom_group)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temp_files(out_dir)
    existing = {r["name"]: r for r in _existing_records(data_dir)}
    records = _import_all(entries, sources, names, boxes, out_dir, images_dir, existing,
                          summary, fail, progress)
    # A re-import under a new name (e.g. an older version's class-prefixed names) replaces
    # the record of the same source file instead of keeping both.
    urls = {r["url"] for r in records}
    kept = [r for r in existing.values() if r["source"] != "folder" or r["url"] not in urls]
    summary = finish(data_dir, merge_records(kept, records), failures, summary)
    if summary.saved + summary.present == 0:
        reason = f"; first: {failures[0]['name']}: {failures[0]['reason']}" if failures else ""
        raise UserError(f"nothing imported from {images_dir}: {fmt_count(len(failures))} "
                        f"failed, {fmt_count(summary.skipped)} skipped{reason}")
    return summary
