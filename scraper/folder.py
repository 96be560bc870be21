"""Stage 2, source `folder`: import the user's own X-rays (PNG or JPEG, any mode, any size).

Reads:  an images folder (PNG, JPEG, ... and DICOM, found by content: the 'DICM' preamble
        or a bare DICOM header, whatever the file is called), labelled by a CSV (column `image`
        = path relative to the folder or a DICOM SOPInstanceUID, a label column normal/abnormal
        or 0/1, optional group column = patient/study id and optional `view`), or by class
        sub-folders (--normal-class names the normal one; every other sub-folder is abnormal),
        or not at all (every image unlabelled: allowed, warned); the CSV's finding labels
        (`finding_labels` / `Finding Labels` or --finding-column: NIH-style names joined by
        "|", scraper/findings.py) become each record's "finding_labels"; optionally a boxes CSV:
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
share prefixes that look like patients. DICOM groups are stored as salted hashes only
(scraper/groups.py).

Only regular files are opened: a FIFO or device (also behind a symbolic link) named like an
image is a failure with the reason, never read; a symbolic link to a regular file imports the
target's bytes. Files that are neither images nor DICOM (.DS_Store, Thumbs.db, notes.txt) are
skipped and counted; a file with an image extension that does not decode is a failure with its
reason, as is a broken DICOM or a CSV row naming an unusable path or a file that is no image;
images the CSV does not list are skipped; CSV rows naming images this folder does not hold (a
master list) are counted apart, in one line, not as failures (scraper/folder_csv.py reads the
CSVs). A re-run leaves unchanged files alone (counted as present). Nothing imported (0 saved,
0 present) is an error.

Privacy: for DICOM input every string that leaves the import (records' urls, failures, log
lines, errors) goes through one IdentifierMask built from all the DICOM headers found
(scraper/phi.py); records carry the masked source path, the normalised view and modality.

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
import dataclasses
import os
import re
import shutil
import stat
import time

import numpy as np
from PIL import Image

from scraper import dicom, phi
from scraper.cli import UserError, fmt_count, progress_bar
from scraper.fileio import atomic_write, open_regular, remove_stale_temp_files
from scraper.images import BadImage, check_image_file, is_image_name
from scraper.folder_csv import read_boxes_csv, read_labels_csv
from scraper.groups import assign_groups
from scraper.phi import mask, say
from scraper.schema import DESCRIPTION_FILE, IMAGES_DIR, load_descriptions, make_record
from scraper.summary import ScrapeSummary, finish, merge_records

_SKIPPED_DIRS = ("__MACOSX",)  # macOS zip leftovers: resource forks, never images


def flat_name(relative_path):
    """'abnormal/1.jpg' -> 'abnormal__1.jpg' (unique, flat, safe as a file name)."""
    return relative_path.replace("\\", "/").strip("/").replace("/", "__")


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
    with open_regular(source, "image") as source_file, atomic_write(target) as handle:
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
                    group_column, fail, finding_column=None):
    """({relative: {"label", "report_id"?, "view"?, "finding_labels"?}} to import, how many
    were skipped, and how many CSV rows name an image that is not in the folder)."""
    if labels_csv:
        listed, invalid = read_labels_csv(labels_csv, label_column, group_column,
                                          finding_column)
        entries = _resolve_uids(listed, _uid_index(sources), f"labels CSV {labels_csv}")
        csv_name = os.path.basename(labels_csv)
        for line, image, reason in invalid:
            fail(image, f"listed in {csv_name} row {line}: {reason}")
        on_disk = set(sources) | set(junk)
        absent = sorted((e["row"], r) for r, e in entries.items() if r not in on_disk)
        for relative, entry in list(entries.items()):
            if relative not in on_disk:
                del entries[relative]  # a master CSV lists more than one folder holds
            elif relative not in sources:
                fail(relative, f"listed in {csv_name} row {entry['row']} but not an image "
                               f"file")
                del entries[relative]
        if absent:
            say(f"{fmt_count(len(absent))} row(s) of {csv_name} name images that are not in "
                f"{images_dir}: not imported, not failures (e.g. row {absent[0][0]}: "
                f"{mask(absent[0][1], path=True)})")
        left_out = [p for p in sources if p not in entries]
        if left_out:
            say(f"{fmt_count(len(left_out))} image(s) not in {mask(labels_csv, path=True)}: "
                f"skipped (e.g. {mask(left_out[0], path=True)})")
        return entries, len(left_out), len(absent)
    if normal_class:
        labels = _class_labels(sorted(sources), normal_class, images_dir)
        loose = [p for p in sorted(sources) if p not in labels]
        if loose:
            say(f"{fmt_count(len(loose))} image(s) outside the class folders: skipped "
                f"(e.g. {mask(loose[0], path=True)})")
        return {p: {"label": label} for p, label in labels.items()}, len(loose), 0
    say("warning: no labels CSV and no normal class folder: every image is imported "
        "unlabelled (kept out of training)")
    return {p: {"label": None} for p in sorted(sources)}, 0, 0


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
            names[relative] = phi.salted_id(salt, "dcm", key) + ".png"
        elif by_class:
            plain[os.path.basename(relative)].append(relative)
        else:
            names[relative] = flat_name(relative)
    for base, relatives in plain.items():
        stem, extension = os.path.splitext(base)
        for relative in relatives:
            names[relative] = (base if len(relatives) == 1 else
                               f"{stem}-{phi.salted_hex(salt, relative, 8)}{extension}")
    return names


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
        say(f"warning: only the normal class folder {normal_class!r} has images: "
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
    extra = {key: entry[key] for key in ("report_id", "finding_labels") if key in entry}
    if header is not None:  # the source path, view and modality, PHI masked (issue 17 #7)
        extra["modality"] = dicom.modality_of(header)
        url = mask(url, path=True)
    if pixel_record is not None:  # what was applied: window, inversion, rescale, syntax
        extra["dicom"] = {key: mask(value) if isinstance(value, str) else value
                          for key, value in pixel_record.items()}
    return make_record(name, "folder", url=url, type="label", items=[label] if label else [],
                       label=label, view=view, boxes=boxes, **extra)


def _import_all(entries, sources, names, boxes, out_dir, images_dir, existing, summary, fail,
                progress):
    """Write every selected image into out_dir; returns the new records."""
    records, owner, tolerated = [], {}, []
    for relative in progress_bar(sorted(entries), unit="img", desc="folder images",
                                 disable=not progress, leave=False):
        source, name = sources[relative], names[relative]
        if name in owner:
            fail(relative, f"the same DICOM image (SOPInstanceUID) as "
                           f"{mask(owner[name], path=True)}: a duplicate"
                 if source.header is not None else
                 f"output name {name!r} collides with {owner[name]!r}; rename one")
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
                warning = dicom.check_importable(source.header)
                if warning:
                    tolerated.append(warning)
                pixel_record, saved = import_dicom(source, target, existing.get(name))
        except BadImage as error:
            fail(relative, str(error))
            continue
        except OSError as error:
            fail(relative, f"cannot read or copy: {error.strerror or error}")
            continue
        summary.saved += saved
        summary.present += not saved
        records.append(_record(name, entries[relative], source, boxes.get(relative, []), url,
                               pixel_record))
    if tolerated:
        say(f"warning: {fmt_count(len(tolerated))} DICOM image(s) imported whose modality is "
            f"not a radiograph's (CR/DX/DR/RG): {collections.Counter(tolerated).most_common(1)[0][0]}"
            f" ...; check that they are chest X-rays")
    return records


def import_folder(data_dir, images_dir, labels_csv=None, normal_class=None, boxes_csv=None,
                  label_column="label", group_column="group", group_pattern=None,
                  dicom_group="patient", progress=True, finding_column=None):
    """Import (and label) a folder of the user's own images into `data_dir` (see module doc).

    group_pattern: a compiled regex (or its text) whose first capture group, searched in each
    image's relative path, is the patient; dicom_group: "patient" or "study"; finding_column:
    the labels CSV's finding-labels column (scraper/folder_csv.py; default: `finding_labels`
    or `Finding Labels` when the CSV has one).
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
    # From here on every string that leaves goes through the one mask of this folder's DICOMs.
    with phi.masking(phi.IdentifierMask(s.header for s in sources.values()
                                        if s.header is not None)):
        try:
            return _import_sources(data_dir, images_dir, sources, junk, labels_csv,
                                   normal_class, boxes_csv, label_column, group_column, pattern,
                                   dicom_group, progress, summary, finding_column)
        except UserError as error:
            raise UserError(mask(str(error)), error.exit_code) from None


def _import_sources(data_dir, images_dir, sources, junk, labels_csv, normal_class, boxes_csv,
                    label_column, group_column, pattern, dicom_group, progress, summary,
                    finding_column=None):
    out_dir = os.path.join(data_dir, IMAGES_DIR)
    failures = []

    def fail(relative, reason):
        url = os.path.abspath(os.path.join(images_dir, relative))
        failures.append({"name": mask(flat_name(relative), path=True), "reason": mask(reason),
                         "url": mask(url, path=True)})

    boxes = read_boxes_csv(boxes_csv) if boxes_csv else {}  # both CSVs before any work
    boxes = _resolve_uids(boxes, _uid_index(sources), f"boxes CSV {boxes_csv}")
    entries, summary.skipped, summary.absent = _select_entries(
        sources, junk, labels_csv, normal_class, images_dir, label_column, group_column, fail,
        finding_column)
    if junk:
        say(f"{fmt_count(len(junk))} file(s) that are not images skipped (e.g. "
            f"{mask(junk[0], path=True)})")
    summary.skipped += len(junk)
    unused_boxes = sorted(set(boxes) - set(entries))
    if unused_boxes:
        say(f"warning: boxes for {fmt_count(len(unused_boxes))} image(s) that are not "
            f"imported are ignored (e.g. {mask(unused_boxes[0], path=True)})")

    salt = phi.data_salt(data_dir)
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
    summary = finish(data_dir, merge_records(kept, records), failures, summary, say=say)
    if summary.saved + summary.present == 0:
        reason = f"; first: {failures[0]['name']}: {failures[0]['reason']}" if failures else ""
        absent = (f", {fmt_count(summary.absent)} listed but not in the folder"
                  if summary.absent else "")
        raise UserError(f"nothing imported from {images_dir}: {fmt_count(len(failures))} "
                        f"failed, {fmt_count(summary.skipped)} skipped{absent}{reason}")
    return summary
