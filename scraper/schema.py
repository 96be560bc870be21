"""The one owner of the images-description.json schema (stage 2's output, read by stages 4-6).

images-description.json is a JSON list with one record per image:

    name        file name inside <data_dir>/images/ (unique key), e.g. "CXR1_1_IM-0001-3001.png"
    url         where the image came from (http URL, archive member or local path)
    type        heading of `items`, as the original scraper kept it ("MeSH" for Open-i)
    items       MeSH major terms for Open-i, e.g. ["normal"] or ["Cardiomegaly/mild"]
    image       path relative to the data dir, e.g. "images/CXR1_1_IM-0001-3001.png"
    label       "normal" | "abnormal" | None (unknown: kept out of training)
    report_id   grouping key: a report / study / patient may own several images
    findings    report text (FINDINGS section), "" when absent
    impression  report text (IMPRESSION section), "" when absent
    caption     figure caption, e.g. "Xray Chest PA and Lateral"
    view        one of VIEWS ("PA", "AP", "lateral", "oblique", "decubitus", "other") or None
                (unknown); header or CSV text is normalised by `normalize_view`, never copied
    boxes       list of {"finding", "x", "y", "w", "h"} in original-image pixels
    source      "openi" | "archive" | "folder"
    license     licence text or URL of the image/report

Optional fields (OPTIONAL_FIELDS; present on records that have them, e.g. DICOM imports):

    finding_labels  the findings the image is labelled with, in the finding vocabulary
                (scraper/findings.py: NIH ChestX-ray14's 14 names, in its order), e.g.
                ["Effusion", "Pneumonia"]; [] = none of them (always so for a normal image);
                absent = not known. From a labels CSV's finding column or Open-i's MeSH terms.
                (Not to be confused with `findings`, the report's FINDINGS text.)
    modality    one of MODALITIES ("CR", "DX", "DR", "RG", "OT", "SC", "other") or None: the
                DICOM Modality, normalised by `normalize_modality`
    dicom       what stage 2 applied to a DICOM file's pixels: {"modality", "photometric",
                "bits_stored", "transfer_syntax", "rows", "columns", "rescale", "window",
                "inverted", "padding_pixels", "source_size", "source_mtime_ns"}

For DICOM records `url` is the source file's path with every identifying header value masked
("/exports/[PatientID]/IM1.dcm"), `name` a salted hash ("dcm-<16 hex>.png") and `report_id`
a salted hash of the PatientID or StudyInstanceUID ("patient-<16 hex>"): no PHI.
"""
import math
import os

from scraper.cli import UserError
from scraper.findings import finding_problem, from_mesh
from scraper.fileio import atomic_write_json, read_json

FIELDS = ("name", "url", "type", "items", "image", "label", "report_id", "findings",
          "impression", "caption", "view", "boxes", "source", "license")
OPTIONAL_FIELDS = ("modality", "dicom", "finding_labels")
VIEWS = ("PA", "AP", "lateral", "oblique", "decubitus", "other")
MODALITIES = ("CR", "DX", "DR", "RG", "OT", "SC", "other")
# What view names say, in DICOM (ViewPosition defined terms) and in people's CSVs: lower case.
_VIEW_ALIASES = {
    "pa": "PA", "posteroanterior": "PA", "postero-anterior": "PA", "pa view": "PA",
    "ap": "AP", "anteroposterior": "AP", "antero-posterior": "AP", "ap view": "AP",
    "ap supine": "AP", "ap erect": "AP", "ap portable": "AP",
    "lateral": "lateral", "lat": "lateral", "ll": "lateral", "rl": "lateral",
    "left lateral": "lateral", "right lateral": "lateral",
    "oblique": "oblique", "obl": "oblique", "rao": "oblique", "lao": "oblique",
    "rpo": "oblique", "lpo": "oblique", "rlo": "oblique", "llo": "oblique",
    "decubitus": "decubitus", "lld": "decubitus", "rld": "decubitus", "ld": "decubitus",
}
LABELS = ("normal", "abnormal")
SOURCES = ("openi", "archive", "folder")
DESCRIPTION_FILE = "images-description.json"
FAILURES_FILE = "images-failures.json"
IMAGES_DIR = "images"

# Image names become file names; atomic_write's temp name adds 23 characters, and most file
# systems stop at 255 bytes per name.
MAX_NAME_BYTES = 200

_LABEL_ALIASES = {"normal": "normal", "0": "normal", "abnormal": "abnormal", "1": "abnormal",
                  "false": "normal", "true": "abnormal", "no finding": "normal"}


def file_name_problem(name):
    """Why `name` cannot be an image file name here (None when it can)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        return f"invalid image name {name[:80]!r}: must be a plain file name"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return (f"image name of {size} bytes ({name[:40]!r}...) is longer than the "
                f"{MAX_NAME_BYTES} a file name may have here")
    return None


def label_from_mesh(major_terms):
    """Open-i rule (the original's): normal iff the MeSH major terms are exactly ["normal"].

    A report indexed only as "No Indexing" (or with no terms at all) has no label: None.
    """
    terms = [str(t).strip() for t in (major_terms or []) if str(t).strip()]
    lowered = [t.lower() for t in terms]
    if not terms or lowered == ["no indexing"]:
        return None
    return "normal" if lowered == ["normal"] else "abnormal"


def mesh_labels(major_terms):
    """A record's label fields from Open-i MeSH major terms: {"label"} by `label_from_mesh`,
    plus "finding_labels" (scraper/findings.py's MeSH mapping) when the label is known."""
    label = label_from_mesh(major_terms)
    if label is None:
        return {"label": None}
    return {"label": label, "finding_labels": [] if label == "normal" else
            from_mesh(major_terms)}


def normalize_label(value):
    """'normal'/'abnormal'/0/1 (any case, any str/int) -> 'normal'|'abnormal'; '' -> None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip().lower()
    if text in ("", "none", "null", "unknown"):
        return None
    if text.endswith(".0"):  # "1.0" from spreadsheets
        text = text[:-2]
    try:
        return _LABEL_ALIASES[text]
    except KeyError:
        raise ValueError(f"invalid label {value!r}: use normal/abnormal or 0/1") from None


def normalize_view(value):
    """Header or CSV text -> one of VIEWS, or None when empty: 'pa ' -> 'PA', 'LL' ->
    'lateral', 'RAO' -> 'oblique'; anything unrecognised -> 'other' (never copied raw: a header
    field may hold free text, even a name)."""
    text = " ".join(str(value or "").replace("_", " ").split()).lower()
    if not text:
        return None
    return _VIEW_ALIASES.get(text, "other")


def normalize_modality(value):
    """DICOM Modality text -> one of MODALITIES, or None when empty; unknown -> 'other'."""
    text = str(value or "").strip().upper()
    if not text:
        return None
    return text if text in MODALITIES else "other"


def make_box(finding, x, y, w, h):
    box = {"finding": str(finding), "x": float(x), "y": float(y), "w": float(w), "h": float(h)}
    if not all(math.isfinite(box[k]) for k in "xywh") or box["w"] <= 0 or box["h"] <= 0:
        raise ValueError(f"invalid box {box}: x, y must be finite and w, h positive")
    return box


def make_record(name, source, **fields):
    """A complete record with every schema field; unknown keyword names are an error."""
    unknown = set(fields) - set(FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"unknown record field(s): {', '.join(sorted(unknown))}")
    record = {
        "name": name, "url": "", "type": "", "items": [],
        "image": f"{IMAGES_DIR}/{name}", "label": None, "report_id": os.path.splitext(name)[0],
        "findings": "", "impression": "", "caption": "", "view": None, "boxes": [],
        "source": source, "license": "",
    }
    record.update(fields)
    record["view"] = normalize_view(record["view"])
    validate_record(record)
    return record


def validate_record(record):
    """Raise ValueError naming the first problem with a record."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be an object, got {type(record).__name__}")
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"record {record.get('name')!r} lacks field(s): {', '.join(missing)}")
    name = record["name"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"invalid record name {name!r}: must be a plain file name")
    if record["label"] not in (None,) + LABELS:
        raise ValueError(f"record {name!r}: invalid label {record['label']!r}; "
                         f"allowed: normal, abnormal, null")
    if record["source"] not in SOURCES:
        raise ValueError(f"record {name!r}: invalid source {record['source']!r}; "
                         f"allowed: {', '.join(SOURCES)}")
    if not isinstance(record["items"], list) or not isinstance(record["boxes"], list):
        raise ValueError(f"record {name!r}: items and boxes must be lists")
    for box in record["boxes"]:
        if not isinstance(box, dict) or set(box) != {"finding", "x", "y", "w", "h"}:
            raise ValueError(f"record {name!r}: invalid box {box!r}")
    if not isinstance(record["report_id"], str) or not record["report_id"]:
        raise ValueError(f"record {name!r}: report_id must be a non-empty string")
    if "finding_labels" in record:
        problem = finding_problem(record["finding_labels"])
        if problem is None and record["finding_labels"] and record["label"] == "normal":
            problem = (f"labelled normal but finding_labels names "
                       f"{', '.join(record['finding_labels'])}")
        if problem:
            raise ValueError(f"record {name!r}: {problem}")


def load_descriptions(path):
    """Read and validate images-description.json; UserError on any problem."""
    data = read_json(path, "image descriptions")
    if not isinstance(data, list):
        raise UserError(f"image descriptions must be a JSON list of records: {path}")
    seen = set()
    for index, record in enumerate(data):
        try:
            validate_record(record)
        except ValueError as error:
            raise UserError(f"{path}: record #{index}: {error}") from None
        if record["name"] in seen:
            raise UserError(f"{path}: duplicate record name {record['name']!r}")
        seen.add(record["name"])
    return data


def save_descriptions(path, records):
    """Validate and atomically write records, sorted by name for stable diffs."""
    for record in records:
        validate_record(record)
    atomic_write_json(path, sorted(records, key=lambda r: r["name"]))


def label_counts(records):
    """{'normal': n, 'abnormal': n, 'unlabelled': n}"""
    counts = {"normal": 0, "abnormal": 0, "unlabelled": 0}
    for record in records:
        counts[record["label"] or "unlabelled"] += 1
    return counts
