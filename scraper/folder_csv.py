"""The folder source's CSVs: labels (image, label, optional group, view and finding labels)
and expert boxes (image, finding, x, y, w, h in original-image pixels), read as bounded
regular files.

Finding labels (scraper/findings.py): the column `finding_labels` or `Finding Labels` (NIH's
Data_Entry_2017.csv) when the CSV has one, or the column --finding-column names; names joined
by "|", "No Finding" = none, an empty cell = not known. Names outside the vocabulary are left
out with one warning that counts them; a column in which no cell names a vocabulary finding is
refused (it is the wrong column), as is a row labelled normal that names a finding.

A labels CSV may list more images than the folder holds (a master list such as NIH's
Data_Entry_2017.csv): that is the importer's business (scraper/folder.py counts those rows
apart). A row whose image path is unusable (absolute, '..', a Windows drive) comes back in a
list of its own, to be a listed failure; a bad label or box value stops the import with one
line naming the row, because it means the wrong column or file.
"""
import csv
import io
import re

from scraper import findings
from scraper.cli import UserError, fmt_count
from scraper.fileio import read_regular
from scraper.phi import say
from scraper.schema import make_box, normalize_label

IMAGE_COLUMN = "image"
VIEW_COLUMN = "view"
FINDING_COLUMNS = ("finding_labels", "Finding Labels")   # looked for when none is named
BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")
# NIH's full Data_Entry_2017.csv (112,120 rows) is 7.9 MB: a CSV past 256 MB is not labels,
# and a link to /dev/zero or a FIFO is refused before a byte is read.
MAX_CSV_BYTES = 256 << 20


def clean_relative(path_text):
    """A CSV's image path -> normalised '/'-separated relative path, or None if it climbs out
    ('..', an absolute path, a Windows drive 'C:/...'). A ':' elsewhere is a plain character
    of a file name ('scan:1.png')."""
    text = path_text.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or re.match(r"[A-Za-z]:(/|$)", text):
        return None
    return "/".join(parts)


def _open_csv(path, what):
    """(rows as dicts with their line numbers, column names); UserError on unreadable files.
    Only a regular file of at most MAX_CSV_BYTES is read (a FIFO, device or /dev/zero link is
    refused before reading)."""
    try:
        text = read_regular(path, MAX_CSV_BYTES, what).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a CSV file: {path}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{what} {path} is not a readable UTF-8 CSV ({error})") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None
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


def finding_column_of(path, columns, finding_column=None):
    """The finding-labels column to read: the one named (which must exist), else the first of
    FINDING_COLUMNS the CSV has, else None."""
    if finding_column:
        _require_columns(path, "labels CSV", columns, (finding_column,),
                         " (--finding-column)")
        return finding_column
    return next((c for c in FINDING_COLUMNS if c in columns), None)


class FindingCells:
    """Parses one finding column cell by cell; remembers the names outside the vocabulary and
    whether any cell named a vocabulary finding (`check` refuses a column that never did)."""

    def __init__(self, path, column):
        self.path, self.column = path, column
        self.unknown, self.known, self.filled = {}, False, 0

    def parse(self, text, label, line, image):
        """A cell -> a list of vocabulary findings, or None (empty cell: not known)."""
        parsed = findings.parse_labels(text)
        if parsed is None:
            return [] if label == "normal" else None
        names, unknown = parsed
        self.filled += 1
        self.known = self.known or bool(names) or not unknown
        for name in unknown:
            self.unknown[name] = self.unknown.get(name, 0) + 1
        if names and label == "normal":
            raise UserError(f"labels CSV {self.path}: row {line} (image {image}) is labelled "
                            f"normal but its {self.column} names {', '.join(names)}")
        return names

    def check(self):
        if self.filled and not self.known:
            raise UserError(f"labels CSV {self.path}: column {self.column!r} names no finding "
                            f"of the vocabulary (e.g. {next(iter(self.unknown))[:60]!r}); known: "
                            f"{', '.join(findings.FINDINGS)} and 'No Finding'")
        if self.unknown:
            common = sorted(self.unknown.items(), key=lambda item: -item[1])[:5]
            say(f"warning: {fmt_count(sum(self.unknown.values()))} finding name(s) in "
                f"{self.column!r} are not in the vocabulary and were left out: "
                f"{', '.join(f'{name[:40]} ({n:,})' for name, n in common)}")


def read_labels_csv(path, label_column="label", group_column="group", finding_column=None):
    """({relative path: {"label", "report_id"?, "view"?, "finding_labels"?, "row"}},
    [(row, image, reason)]) from a labels CSV; the list holds rows whose image path is unusable
    (absolute, '..'): each is a listed failure, the import goes on."""
    rows, columns = _open_csv(path, "labels CSV")
    _require_columns(path, "labels CSV", columns, (IMAGE_COLUMN, label_column),
                     "; name the label column with --label-column")
    if group_column not in columns and group_column != "group":
        raise UserError(f"labels CSV {path} has no group column {group_column!r} "
                        f"(columns: {', '.join(columns)})")
    finding_column = finding_column_of(path, columns, finding_column)
    cells = FindingCells(path, finding_column)
    entries, invalid = {}, []
    for line, row in rows:
        image = _cell(row, IMAGE_COLUMN)
        if not image and not any(_cell(row, c) for c in columns):
            continue  # blank line
        relative = clean_relative(image)
        if relative is None:
            invalid.append((line, image, "invalid image path (must be relative to the images "
                                         "folder, without '..')"))
            continue
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
        if finding_column:
            names = cells.parse(_cell(row, finding_column), label, line, image)
            if names is not None:
                entry["finding_labels"] = names
        entries[relative] = entry
    cells.check()
    return entries, invalid


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
