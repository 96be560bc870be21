"""Stage 2, source `archive`: the official Open-i bulk files, NLMCXR_png.tgz + NLMCXR_reports.tgz.

Reads:  the two archives, each a URL (downloaded, resumably, to <data_dir>/archives/) or a local
        path; the reports source may also be a folder of the extracted XMLs
Writes: <data_dir>/images/<id>.png, <data_dir>/images-description.json (one record per image,
        merged with the records already there), <data_dir>/images-failures.json

Both archives are streamed (tarfile "r|*": the 1.4 GB PNG archive is never held in memory or
extracted as a whole). Only regular-file members whose base name is an image a report refers
to are written, to images/<base name>, after a full decode check; links, devices and members
whose path is absolute or climbs out ("../") are refused by tarfile's data filter and counted
as skipped. Reports: uId -> report_id, MeSH/major -> items and label (normal iff exactly
["normal"]; "No Indexing" -> no label), FINDINGS / IMPRESSION -> text, one record per
parentImage. A re-run keeps valid images already present (and does not fetch the PNG archive
at all when every wanted image is there).

Example (through the stage-2 command):
    cxr-scrape data --source archive
    cxr-scrape data --source archive --png-archive ~/NLMCXR_png.tgz \\
        --reports-archive ~/NLMCXR_reports.tgz
"""
import os
import re
import tarfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zlib

from scraper.cli import UserError, fmt_count, log, progress_bar
from scraper.download import DownloadRefused, download
from scraper.fileio import (NotRegularFile, TooLarge, atomic_write_bytes, open_regular,
                            read_regular, remove_stale_temp_files)
from scraper.images import BadImage, check_image_bytes, check_image_file
from scraper.schema import (DESCRIPTION_FILE, IMAGES_DIR, file_name_problem,
                            mesh_labels, load_descriptions, make_record)
from scraper.summary import ScrapeSummary, finish, merge_records, require_saved

ARCHIVE_PNG_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz"
ARCHIVE_REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
ARCHIVES_DIR = "archives"
MAX_XML_BYTES = 4 << 20     # a real report is ~5 KB; refuse anything absurd before parsing it
MAX_IMAGE_BYTES = 64 << 20  # a real PNG member is < 5 MB
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def is_url(source):
    return urllib.parse.urlsplit(str(source)).scheme in ("http", "https")


def fetch_source(source, data_dir, what, session=None, progress=True):
    """Local path of an archive source: a URL is downloaded to <data_dir>/archives/ (resumable;
    a finished download is reused), a path must exist."""
    source = os.fspath(source)
    if not is_url(source):
        if not os.path.exists(source):
            raise UserError(f"{what} not found: {source}")
        if not (os.path.isfile(source) or os.path.isdir(source)):  # a FIFO would block tarfile
            raise UserError(f"{what} is not a regular file: {source}")
        return source
    name = os.path.basename(urllib.parse.urlsplit(source).path) or f"{what.replace(' ', '_')}.tgz"
    target = os.path.join(data_dir, ARCHIVES_DIR, name)
    if os.path.isfile(target):  # downloads are renamed into place only when complete
        log(f"using the {what} downloaded earlier: {target}")
        return target
    log(f"downloading the {what} {source} -> {target}")
    try:
        download(source, target, None, session=session, progress=progress)
    except DownloadRefused:
        raise
    except UserError as error:
        raise UserError(f"{error}; without access, download the {what} elsewhere and give its "
                        f"local path (--png-archive / --reports-archive)") from None
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}") from None
    return target


def natural_key(text):
    """'CXR10_IM-2' sorts after 'CXR9_IM-1' (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _text(element):
    return " ".join((element.text or "").split()) if element is not None else ""


def parse_report(xml_bytes, origin):
    """One Open-i report XML -> list of record field dicts (without `url`), one per parentImage.

    Raises ValueError with the reason when the XML is not a usable report.
    """
    if len(xml_bytes) > MAX_XML_BYTES:
        raise ValueError(f"report XML is {len(xml_bytes):,} bytes, more than a report can be")
    if b"<!DOCTYPE" in xml_bytes or b"<!ENTITY" in xml_bytes:
        raise ValueError("report XML declares a DTD/entities; refused")
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as error:
        raise ValueError(f"report XML does not parse ({error})") from None
    if root.tag != "eCitation":
        raise ValueError(f"not an Open-i report (root element <{root.tag}>, expected <eCitation>)")
    uid = root.find("uId")
    stem = os.path.splitext(os.path.basename(origin))[0]
    report_id = (uid.get("id") if uid is not None else "") or stem
    major = [_text(term) for term in root.findall("MeSH/major") if _text(term)]
    sections = {}
    for abstract in root.iter("AbstractText"):
        sections.setdefault((abstract.get("Label") or "").upper(), _text(abstract))
    license_text = _text(root.find("licenseURL")) or _text(root.find("licenseType"))
    records = []
    for parent in root.findall("parentImage"):
        image_id = (parent.get("id") or "").strip()
        if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
            continue  # not a usable file name; never build a path from it
        problem = file_name_problem(image_id + ".png")
        if problem:
            raise ValueError(f"report {report_id[:80]!r}: {problem}")
        records.append(dict(
            name=image_id + ".png", type="MeSH", items=major, **mesh_labels(major),
            report_id=report_id, findings=sections.get("FINDINGS", ""),
            impression=sections.get("IMPRESSION", ""), caption=_text(parent.find("caption")),
            license=license_text))
    return records


def _stream_members(path, what):
    """Yield (member, read) for each member of a tar(.gz) at `path`, streamed ("r|*").

    `read()` returns the member's bytes. Corrupt or non-tar input -> UserError naming the file.
    """
    handle = open_regular(path, what)  # a FIFO or device is refused here, never read
    try:
        tar = tarfile.open(fileobj=handle, mode="r|*")
    except _ARCHIVE_ERRORS as error:
        handle.close()
        raise UserError(f"{what} {path} is not a tar.gz archive ({error})") from None
    count = 0
    with handle, tar:
        while True:
            try:
                member = tar.next()
            except _ARCHIVE_ERRORS as error:
                raise UserError(f"{what} {path} is corrupt or truncated after {count:,} members "
                                f"({error}); delete it and re-run to fetch it again") from None
            if member is None:
                return
            count += 1

            def read(member=member):
                try:
                    return tar.extractfile(member).read()
                except _ARCHIVE_ERRORS as error:
                    raise UserError(f"{what} {path} is corrupt or truncated at member "
                                    f"{member.name!r} "
                                    f"({error}); delete it and re-run") from None
            yield member, read


def _local_reports(path):
    """Yield (name, bytes) of the XML reports in a folder, a single XML file, or a tar.gz."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files, key=natural_key):
                if name.lower().endswith(".xml"):
                    full = os.path.join(root, name)
                    yield os.path.relpath(full, path), _read_xml(full)
    elif path.lower().endswith(".xml"):
        yield os.path.basename(path), _read_xml(path)
    else:
        for member, read in _stream_members(path, "reports archive"):
            if member.isreg() and member.name.lower().endswith(".xml"):
                if member.size > MAX_XML_BYTES:
                    yield member.name, b"\0" * (MAX_XML_BYTES + 1)  # refused by parse_report
                else:
                    yield member.name, read()


def _read_xml(path):
    """A report file's bytes; a FIFO, device or oversized file gives the ValueError to list
    as its failure (a FIFO named *.xml would otherwise block the read forever)."""
    try:
        return read_regular(path, MAX_XML_BYTES, "report XML")
    except (NotRegularFile, TooLarge) as error:
        return ValueError(str(error))
    except OSError as error:
        return ValueError(f"cannot read the report ({error.strerror or error})")


def read_reports(reports_path, reports_source):
    """All records from the reports -> (fields by image name, failures); UserError if none parse."""
    by_name, failures, n_reports, n_without_images = {}, [], 0, 0
    for member_name, data in _local_reports(reports_path):
        n_reports += 1
        try:
            if isinstance(data, ValueError):
                raise data
            records = parse_report(data, member_name)
        except ValueError as error:
            failures.append({"name": member_name, "url": f"{reports_source}#{member_name}",
                             "reason": str(error)})
            continue
        n_without_images += not records
        for record in records:
            by_name[record["name"]] = record
    if n_reports == 0:
        raise UserError(f"no report XML files (*.xml) in {reports_source}")
    if len(failures) == n_reports:
        raise UserError(f"none of the {n_reports:,} report XML file(s) in {reports_source} is "
                        f"usable: {failures[0]['name']}: {failures[0]['reason']}")
    log(f"{fmt_count(n_reports)} reports read ({fmt_count(len(failures))} unusable, "
        f"{fmt_count(n_without_images)} without images) -> {fmt_count(len(by_name))} images")
    return by_name, failures


def _refusal(member, images_dir):
    """Why a member may not be written (None when it may): tarfile's data filter + regular files."""
    if not member.isreg():
        return "not a regular file (link, device or folder)"
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        return "absolute path"  # the data filter would strip the '/'; a real archive has none
    try:
        tarfile.data_filter(member, images_dir)
    except tarfile.FilterError as error:
        return str(error)
    return None


def _existing_records(data_dir):
    path = os.path.join(data_dir, DESCRIPTION_FILE)
    return load_descriptions(path) if os.path.exists(path) else []


def scrape_archive(data_dir, png_source, reports_source, limit=None, progress=True, session=None):
    """Import images + reports from the Open-i bulk archives into `data_dir` (see module doc)."""
    summary = ScrapeSummary(started=time.monotonic())
    data_dir = os.fspath(data_dir)
    png_source, reports_source = os.fspath(png_source), os.fspath(reports_source)
    if limit is not None and limit < 1:
        raise UserError(f"invalid limit {limit}: must be 1 or more")
    images_dir = os.path.join(data_dir, IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    remove_stale_temp_files(images_dir)
    existing = _existing_records(data_dir)
    old_urls = {record["name"]: record["url"] for record in existing}

    reports_path = fetch_source(reports_source, data_dir, "reports archive", session, progress)
    fields, failures = read_reports(reports_path, reports_source)
    wanted = sorted(fields, key=natural_key)[:limit]

    urls, needed = {}, set()
    for name in wanted:
        path = os.path.join(images_dir, name)
        try:
            check_image_file(path)
        except (BadImage, OSError):
            needed.add(name)
            continue
        summary.present += 1
        urls[name] = old_urls.get(name) or f"{png_source}#{name}"

    refused = []
    if needed:
        png_path = fetch_source(png_source, data_dir, "PNG archive", session, progress)
        with progress_bar(total=len(needed), unit="img", desc="archive images",
                          disable=not progress, leave=False) as bar:
            for member, read in _stream_members(png_path, "PNG archive"):
                base = os.path.basename(member.name)
                if base not in needed:
                    continue
                reason = _refusal(member, images_dir)
                if reason:
                    refused.append(member.name)
                    log(f"refused archive member {member.name!r}: {reason}")
                    continue
                url = f"{png_source}#{member.name}"
                needed.discard(base)
                bar.update(1)
                try:
                    if member.size > MAX_IMAGE_BYTES:
                        raise BadImage(f"archive member is {member.size:,} bytes, more than "
                                       f"{MAX_IMAGE_BYTES:,}; not read")
                    data = read()
                    check_image_bytes(data)
                except BadImage as error:
                    failures.append({"name": base, "url": url, "reason": str(error)})
                    continue
                atomic_write_bytes(os.path.join(images_dir, base), data)
                summary.saved += 1
                urls[base] = url
                if not needed:
                    break  # everything wanted is written: no need to read the rest
    summary.skipped = len(refused)
    for name in sorted(needed, key=natural_key):
        failures.append({"name": name, "url": f"{png_source}#{name}",
                         "reason": f"image referenced by report {fields[name]['report_id']} "
                                   f"is not in the PNG archive"})

    records = [make_record(source="archive", url=urls[name], **fields[name])
               for name in wanted if name in urls]
    finish(data_dir, merge_records(existing, records), failures, summary)
    return require_saved(summary, f"the archives {png_source}", failures)
