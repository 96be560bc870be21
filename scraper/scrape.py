"""Stage 2: gather chest X-rays and their labels into a data directory.

Reads (by --source):
  openi    the Open-i search API and its PNGs (default; https://openi.nlm.nih.gov)
  archive  the official bulk files NLMCXR_png.tgz + NLMCXR_reports.tgz (URLs or local paths)
  folder   your own images, labelled by a CSV (--labels) or by class sub-folders (--normal-class)
Writes: <data_dir>/images/, <data_dir>/images-description.json,
        <data_dir>/images-failures.json (only when something failed), and a summary line.

    cxr-scrape data                                        # Open-i, all chest X-rays
    cxr-scrape data --limit 200 --workers 8 --max-rps 10
    cxr-scrape data --source archive --png-archive NLMCXR_png.tgz \\
        --reports-archive NLMCXR_reports.tgz
    cxr-scrape data --source folder --images my_xrays --normal-class normal
    python -m scraper.scrape data --source folder --images my_xrays --labels labels.csv
"""
import argparse
import copy
import importlib
import re

from scraper import openi
from scraper.cli import (ArgumentParser, UserError, exit_with, non_negative_float, non_negative_int,
                         positive_float, positive_int)
from scraper.fileio import folder_lock
from scraper.images import add_max_pixels_argument, set_max_pixels

PROG = "cxr-scrape"
SOURCES = ("openi", "archive", "folder")
# Which options belong to which source (dest names); giving one to another source is an error.
OPTIONS = {
    "openi": ("base_url", "limit", "workers", "max_rps", "timeout", "retries", "backoff",
              "query", "collection"),
    "archive": ("png_archive", "reports_archive", "limit"),
    "folder": ("images", "labels", "normal_class", "boxes", "label_column", "group_column",
               "group_pattern", "dicom_group", "finding_column"),
}


def _archive_defaults():
    try:  # scraper.archive is optional at import time: only --source archive needs it
        from scraper.archive import ARCHIVE_PNG_URL, ARCHIVE_REPORTS_URL
    except ImportError:
        return "the official NLMCXR_png.tgz URL", "the official NLMCXR_reports.tgz URL"
    return ARCHIVE_PNG_URL, ARCHIVE_REPORTS_URL


MAX_PATTERN_CHARS = 500  # a patient pattern is a few dozen characters


def _group_pattern(text):
    """An argparse type: a regular expression with at least one capture group (the patient).
    Bounded: at most MAX_PATTERN_CHARS long; each search is stopped after a second
    (scraper.folder.bounded_search); what re cannot compile ('(a){99999999999}') is one line."""
    if len(text) > MAX_PATTERN_CHARS:
        raise argparse.ArgumentTypeError(f"invalid pattern of {len(text):,} characters: at most "
                                         f"{MAX_PATTERN_CHARS} allowed")
    try:
        pattern = re.compile(text)
    except (re.error, OverflowError, RecursionError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {error}") \
            from None
    if pattern.groups < 1:
        raise argparse.ArgumentTypeError(
            f"invalid pattern '{text}': it needs a capture group for the patient, e.g. "
            f"'person(\\d+)_' or '^(\\d+)_'")
    return pattern


def get_args_parser():
    parser = ArgumentParser(
        prog=PROG, description="Stage 2: gather chest X-rays, their labels and report text.")
    parser.add_argument("data_dir", help="output directory (images/ and "
                        "images-description.json go here)")
    parser.add_argument("--source", choices=SOURCES, default="openi",
                        help="where the images come from")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="at most this many images (openi, archive); default: all")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_max_pixels_argument(parser)

    group = parser.add_argument_group("--source openi")
    group.add_argument("--base-url", default=openi.DEFAULT_BASE_URL,
                       help="Open-i server (tests point this at a local server)")
    group.add_argument("--workers", type=positive_int, default=openi.DEFAULT_WORKERS,
                       help="parallel image downloads")
    group.add_argument("--max-rps", type=positive_float, default=openi.DEFAULT_MAX_RPS,
                       help="cap on requests started per second, API pages and retries "
                            "included (never exceeded)")
    group.add_argument("--timeout", type=positive_float, default=openi.DEFAULT_TIMEOUT,
                       help="seconds to connect and to wait for data, per request")
    group.add_argument("--retries", type=non_negative_int, default=openi.DEFAULT_RETRIES,
                       help="extra attempts after a failed request (5xx, 429, timeout, "
                            "dropped connection, body that is not an image)")
    group.add_argument("--backoff", type=non_negative_float, default=openi.DEFAULT_BACKOFF,
                       help="seconds before the first retry, doubling each time (Retry-After "
                            "is honoured when longer)")
    group.add_argument("--query", default="", help="Open-i search words (default: empty = everything)")
    group.add_argument("--collection", default="cxr", help="Open-i collection (coll=)")

    png_default, reports_default = _archive_defaults()
    group = parser.add_argument_group("--source archive")
    group.add_argument("--png-archive", default=None,
                       help=f"NLMCXR_png.tgz URL or path (default: {png_default})")
    group.add_argument("--reports-archive", default=None,
                       help=f"NLMCXR_reports.tgz URL or path (default: {reports_default})")

    group = parser.add_argument_group("--source folder")
    group.add_argument("--images", default=None, help="folder of your images (required)")
    group.add_argument("--labels", default=None,
                       help="CSV with columns image, label (normal/abnormal or 0/1) and "
                            "optionally a group column")
    group.add_argument("--normal-class", default=None,
                       help="label by sub-folder instead: this sub-folder is normal, the "
                            "others abnormal")
    group.add_argument("--boxes", default=None,
                       help="CSV of expert boxes: image, finding, x, y, w, h (pixels)")
    group.add_argument("--label-column", default="label", help="label column in --labels")
    group.add_argument("--group-column", default="group",
                       help="grouping column in --labels (patient/study; keeps a group on one "
                            "side of the split)")
    group.add_argument("--finding-column", default=None, metavar="COLUMN",
                       help="finding-labels column in --labels: NIH-style names joined by '|' "
                            "(e.g. 'Effusion|Pneumonia', 'No Finding'), matched to the NIH-14 "
                            "vocabulary (scraper/findings.py); default: the column "
                            "finding_labels or 'Finding Labels' when the CSV has one")
    group.add_argument("--group-pattern", type=_group_pattern, default=None, metavar="REGEX",
                       help="the patient is the first capture group of REGEX searched in each "
                            "image's path, e.g. 'person(\\d+)_' (used where --labels gives no "
                            "group; DICOM files are grouped by PatientID without it)")
    group.add_argument("--dicom-group", choices=("patient", "study"), default="patient",
                       help="group DICOM files by PatientID or by StudyInstanceUID (stored "
                            "as salted hashes only)")
    return parser


def explicit_options(parser, argv):
    """Dest names the user actually typed (defaults suppressed), to catch misplaced flags."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:  # argparse has no public way to list actions
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def check_options(args, given):
    """One clear line for flags that do not fit together."""
    allowed = set(OPTIONS[args.source]) | {"data_dir", "source", "no_progress",
                                           "max_image_pixels"}
    for dest in sorted(given - allowed):
        owners = [s for s in SOURCES if dest in OPTIONS[s]]
        flag = "--" + dest.replace("_", "-")
        raise UserError(f"{flag} applies to --source {' or '.join(owners)}, "
                        f"not --source {args.source}", exit_code=2)
    if args.source == "folder":
        if not args.images:
            raise UserError("--source folder needs --images DIR (the folder of your images)",
                            exit_code=2)
        if args.labels and args.normal_class:
            raise UserError("--labels and --normal-class are exclusive: label by a CSV or by "
                            "sub-folder, not both", exit_code=2)
        if not args.labels and ({"label_column", "group_column"} & given):
            raise UserError("--label-column and --group-column need --labels CSV",
                            exit_code=2)
        if not args.labels and "finding_column" in given:
            raise UserError("--finding-column needs --labels CSV", exit_code=2)


def run(args):
    """Dispatch to the source; each returns a ScrapeSummary and prints its summary line."""
    progress = not args.no_progress
    if args.source == "openi":
        return openi.scrape_openi(
            args.data_dir, base_url=args.base_url, limit=args.limit, workers=args.workers,
            max_rps=args.max_rps, timeout=args.timeout, retries=args.retries,
            backoff=args.backoff, query=args.query, collection=args.collection,
            progress=progress)
    if args.source == "archive":
        archive = importlib.import_module("scraper.archive")  # only this source needs it
        return archive.scrape_archive(
            args.data_dir, args.png_archive or archive.ARCHIVE_PNG_URL,
            args.reports_archive or archive.ARCHIVE_REPORTS_URL, limit=args.limit,
            progress=progress)
    folder = importlib.import_module("scraper.folder")  # only this source needs it
    return folder.import_folder(
        args.data_dir, args.images, labels_csv=args.labels, normal_class=args.normal_class,
        boxes_csv=args.boxes, label_column=args.label_column, group_column=args.group_column,
        group_pattern=args.group_pattern, dicom_group=args.dicom_group, progress=progress,
        finding_column=args.finding_column)


def check_argv(argv):
    """Parse `argv` and check the flag combinations: the arguments, or UserError (one line).
    run_pipeline.sh calls this (through learning.pipeline_params) before any stage runs."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_options(args, explicit_options(parser, argv))
    return args


def main(argv=None):
    args = check_argv(argv)
    set_max_pixels(args.max_image_pixels)
    with folder_lock(args.data_dir, PROG):  # one writer per data folder
        run(args)
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
