"""DICOM X-rays for stage 2's folder source: detect, window, convert to 8-bit PNG, keep no PHI.

Reads:  DICOM files (Part 10 with the 'DICM' preamble, or a bare dataset without preamble, with
        any file name), uncompressed or compressed: JPEG baseline/extended/lossless, JPEG-LS and
        JPEG 2000 through GDCM (python-gdcm), RLE through pydicom itself.
Writes: nothing by itself; `convert` returns an 8-bit grayscale array (H, W) and a record of
        what was applied, which scraper/folder.py writes as images/<name>.png and as the
        record's "dicom" field in images-description.json.

Pixel pipeline (DICOM PS3.3 C.11 order): stored values (pydicom masks BitsStored and sign-
extends signed pixels) -> PixelPaddingValue mask -> Modality LUT (RescaleSlope/Intercept or a
Modality LUT Sequence) -> VOI: the VOI LUT Sequence, else WindowCenter/WindowWidth (LINEAR,
LINEAR_EXACT or SIGMOID), else a robust percentile window (0.5-99.5 % of the non-padding
pixels) -> MONOCHROME1 inverted -> padding drawn black -> 0..255. RGB/YBR (pydicom converts YBR
to RGB) becomes gray with the ITU-R 601 weights. Multi-frame images and modalities that are not
projection radiographs are refused with the reason. Decoded sizes and lookup tables are
checked from the headers before any decoder runs (scraper/dicom_checks.py); a file that still
trips pydicom, GDCM or numpy is one listed failure (DicomError), never the end of the import.

Privacy: nothing from the header is returned but the pixel record (modality, photometric
interpretation, bits, transfer syntax, rescale, window) and the grouping keys, which callers
store only as salted hashes (scraper/phi.py: `salted_id`, `IdentifierMask`).

Example (through the stage-2 command):
    cxr-scrape data --source folder --images dicom_export --labels labels.csv
"""
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from scraper.dicom_checks import (DicomError, check_inflated_size, check_lookup_tables,
                                  check_pixel_data, header_int as _int)
from scraper.fileio import TooLarge, read_regular
from scraper.images import max_pixels
from scraper.schema import normalize_modality, normalize_view

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic", ".ima")
# Projection radiography (DICOM PS3.3 C.7.3.1.1.1): imported without a word.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
# Secondary captures and "other" are common for research exports of X-rays: imported, counted
# and warned about (a CT slice saved as SC would pass; the warning says so).
TOLERATED_MODALITIES = ("OT", "SC", "")
MAX_DICOM_BYTES = 256 << 20      # an uncompressed 4k x 4k 16-bit radiograph is 32 MB
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: the index of a CD/export, no image
PERCENTILES = (0.5, 99.5)        # robust window when the header gives none
GROUP_KEYS = {"patient": "PatientID", "study": "StudyInstanceUID"}
# What can go wrong inside pydicom/GDCM/numpy on a broken or hostile file (one reason per file;
# the import goes on). MemoryError too: a decoder that still over-allocates fails one file.
_READ_ERRORS = (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, AttributeError,
                IndexError, NotImplementedError, RuntimeError, ArithmeticError, struct.error,
                OSError, UnicodeDecodeError, MemoryError, zlib.error)


def is_dicom_name(name):
    return os.path.splitext(name)[1].lower() in DICOM_EXTENSIONS and not name.startswith(".")


def _sniff(head):
    """'preamble', 'bare' (a dataset starting at byte 0) or None, from the first 132 bytes."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "preamble"
    if len(head) < 8:
        return None
    group, element = struct.unpack("<HH", head[:4])
    # A bare dataset opens with a file meta (0002) or identifying (0008) element, in tag order;
    # explicit VR shows two upper-case letters next, implicit VR a small little-endian length.
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return None
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    return "bare" if explicit or struct.unpack("<I", head[4:8])[0] < 1024 else None


def read_header(path):
    """(header without pixels, bare?) of a DICOM file; None when `path` is not DICOM at all.

    Raises DicomError when the file declares itself DICOM (preamble or .dcm name) but its
    header cannot be read, or when it would decode to more than the caps allow. `path` must be
    a regular file (the caller checks).
    """
    data = _read_bytes(path)
    kind = _sniff(data[:132])
    if kind is None:
        if is_dicom_name(os.path.basename(path)):
            raise DicomError("not a DICOM file (no 'DICM' preamble and no DICOM header)")
        return None
    try:
        if kind == "preamble":
            check_inflated_size(data)
        with warnings.catch_warnings():  # pydicom warns per odd element; the reason is enough
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                     force=kind == "bare")
        # force=True parses anything; a real image header has these.
        if kind == "bare" and not ("SOPClassUID" in header or "Rows" in header):
            return None
        header.get("Rows")  # decode a few elements now: a garbled header fails here
    except DicomError:
        raise
    except _READ_ERRORS as error:
        if kind == "bare" and not is_dicom_name(os.path.basename(path)):
            return None
        raise DicomError(f"unreadable DICOM header ({_short(error)})") from None
    return header, kind == "bare"


def _read_bytes(path):
    """The whole file (at most MAX_DICOM_BYTES): pydicom then parses from memory, where an
    element that claims gigabytes gets what is there, not an allocation of its claim."""
    try:
        return read_regular(path, MAX_DICOM_BYTES, "DICOM file")
    except TooLarge:
        raise DicomError(f"DICOM file is {os.path.getsize(path):,} bytes, more than the "
                         f"{MAX_DICOM_BYTES:,} allowed") from None


def _short(error):
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_importable(header):
    """Refuse what is not a single-frame projection radiograph; returns a warning or None."""
    if "PixelData" not in header and "Rows" not in header:
        raise DicomError("no pixel data (a report, structured report or presentation state, "
                         "not an image)")
    frames = _int(header.get("NumberOfFrames"), 1)
    if frames > 1:
        raise DicomError(f"multi-frame image ({frames} frames): not a single radiograph; "
                         f"export the frame you want as its own file")
    modality = str(header.get("Modality", "") or "").upper()
    if modality not in RADIOGRAPH_MODALITIES + TOLERATED_MODALITIES:
        raise DicomError(f"modality {modality} is not a projection radiograph (imported: "
                         f"{', '.join(RADIOGRAPH_MODALITIES)}; OT/SC with a warning)")
    rows, columns = _int(header.get("Rows"), 0), _int(header.get("Columns"), 0)
    if rows * columns > max_pixels():  # the images' shared limit, --max-image-pixels
        raise DicomError(f"image is {columns:,} x {rows:,} = {rows * columns:,} pixels, more "
                         f"than the {max_pixels():,} allowed (raise --max-image-pixels if it "
                         f"is real)")
    if rows <= 0 or columns <= 0:
        raise DicomError(f"image of {columns} x {rows} pixels (Rows/Columns missing or 0)")
    samples, bits = _int(header.get("SamplesPerPixel"), 1), _int(header.get("BitsAllocated"), 0)
    if samples not in (1, 3) or bits not in (1, 8, 16, 32):
        raise DicomError(f"unsupported pixel layout: {samples} sample(s) per pixel of {bits} "
                         f"bits allocated (supported: 1 or 3 samples of 1, 8, 16 or 32 bits)")
    if modality in TOLERATED_MODALITIES:
        return f"modality {modality or 'missing'}"
    return None


def convert(path, bare=False):
    """DICOM file -> (uint8 array (H, W), pixel record dict, full dataset). Raises DicomError."""
    with warnings.catch_warnings():  # one reason per file, not pydicom's running commentary
        warnings.simplefilter("ignore")
        return _convert(path, bare)


def is_media_directory(header):
    """True for a DICOMDIR (an export's index file): skipped like junk, not a failure."""
    meta = getattr(header, "file_meta", None)
    classes = {str(header.get("SOPClassUID", "")),
               str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""}
    return MEDIA_DIRECTORY in classes


def _convert(path, bare):
    try:
        ds = pydicom.dcmread(io.BytesIO(_read_bytes(path)), force=bare)
    except _READ_ERRORS as error:
        raise DicomError(f"unreadable DICOM file ({_short(error)})") from None
    check_importable(ds)
    if "PixelData" not in ds:
        raise DicomError("no pixel data (a report, structured report or presentation state, "
                         "not an image)")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:  # a bare dataset: uncompressed, in the encoding pydicom detected
        implicit, little = ds.original_encoding
        syntax = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                  pydicom.uid.ExplicitVRLittleEndian if little else
                  pydicom.uid.ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = syntax
    check_pixel_data(ds, syntax)  # sizes from the headers, before any decoder allocates
    check_lookup_tables(ds)
    try:
        return _pixels(ds, syntax)
    except DicomError:
        raise
    except _READ_ERRORS as error:  # whatever else a hostile file finds: this file fails
        raise DicomError(f"cannot convert the pixels ({_short(error)})") from None


def _pixels(ds, syntax):
    """Decode and convert: (uint8 (H, W), pixel record, dataset)."""
    try:
        stored = ds.pixel_array  # (H, W) or (H, W, 3); YBR already converted to RGB
    except _READ_ERRORS as error:
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise DicomError(f"cannot decode the pixel data ({name}): {_short(error)}") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    record = {"modality": normalize_modality(ds.get("Modality")), "photometric": photometric,
              "bits_stored": _int(ds.get("BitsStored"), None),
              "transfer_syntax": str(syntax or ""), "rows": int(stored.shape[0]),
              "columns": int(stored.shape[1])}
    colour = _int(ds.get("SamplesPerPixel"), 1) == 3
    if stored.ndim != (3 if colour else 2) or stored.shape[:2] != (ds.Rows, ds.Columns):
        raise DicomError(f"decoded pixel array has shape {stored.shape}, the header describes "
                         f"{ds.Rows} x {ds.Columns}" + (" x 3" if colour else ""))
    if colour:
        return _color_to_gray(stored, ds, record), record, ds
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"unsupported photometric interpretation {photometric or 'missing'} "
                         f"(supported: MONOCHROME1, MONOCHROME2, RGB, YBR_*)")
    return grayscale_to_uint8(stored, ds, record), record, ds


def _color_to_gray(rgb, ds, record):
    """(H, W, 3) RGB -> (H, W) uint8 with ITU-R 601 luma weights (what Pillow's 'L' uses)."""
    bits = _int(ds.get("BitsStored"), 8)
    scale = 255.0 / (2 ** bits - 1)
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) * scale
    record["window"] = {"from": "colour image converted to gray (no window)"}
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


def padding_mask(stored, ds):
    """True where the stored value is PixelPaddingValue (or within its range limit)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(stored.shape, dtype=bool)
    first = _int(ds.PixelPaddingValue, 0)
    last = _int(ds.get("PixelPaddingRangeLimit"), first)
    low, high = min(first, last), max(first, last)
    return (stored >= low) & (stored <= high)


def window_unit(values, center, width, function="LINEAR"):
    """Map modality values to [0, 1] with a DICOM window (PS3.3 C.11.2.1.2)."""
    values = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR with width 1 is a threshold at center - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _header_window(ds):
    """(center, width, function) from the first WindowCenter/WindowWidth, or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
    width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
    try:
        center, width = float(center), float(width)
    except (TypeError, ValueError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0 or (
            function == "LINEAR" and width < 1):
        return None
    return center, width, function


def _voi_lut_unit(values, ds):
    """[0, 1] through the first VOI LUT Sequence item, scaled by the LUT's own output range."""
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries = int(descriptor[0]) or 65536
    first = int(descriptor[1])
    if first >= 32768 and ds.get("PixelRepresentation", 0) == 1:
        first -= 65536  # first mapped value is signed for signed pixels
    # pydicom's LUT lookup wants integers (a LUT maps integer input values).
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float64)
    low, high = float(table.min()), float(table.max())
    mapped = apply_voi(np.round(values).astype(np.int64), ds).astype(np.float64)
    return np.clip((mapped - low) / (high - low), 0, 1) if high > low else mapped * 0


def grayscale_to_uint8(stored, ds, record):
    """Stored monochrome pixels (H, W) -> displayable uint8 (H, W); fills record["window"]."""
    padding = padding_mask(stored, ds)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    record["rescale"] = {"slope": float(ds.get("RescaleSlope", 1) or 1),
                         "intercept": float(ds.get("RescaleIntercept", 0) or 0)}
    if "ModalityLUTSequence" in ds:
        record["rescale"] = {"modality_lut": True}
    window = _header_window(ds)
    if "VOILUTSequence" in ds:
        unit = _voi_lut_unit(values, ds)
        record["window"] = {"from": "VOI LUT sequence"}
    elif window is not None:
        center, width, function = window
        unit = window_unit(values, center, width, function)
        record["window"] = {"from": "header WindowCenter/WindowWidth", "center": center,
                            "width": width, "function": function}
    else:
        inside = values[~padding] if (~padding).any() else values
        low, high = (float(v) for v in np.percentile(inside, PERCENTILES))
        high = high if high > low else low + 1.0
        unit = window_unit(values, (low + high) / 2, high - low, "LINEAR_EXACT")
        record["window"] = {"from": f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]} "
                                    f"(no window in the header)", "center": (low + high) / 2,
                            "width": high - low, "function": "LINEAR_EXACT"}
    if record["photometric"] == "MONOCHROME1":  # high values are dark: invert for display
        unit = 1.0 - unit
    record["inverted"] = record["photometric"] == "MONOCHROME1"
    unit[padding] = 0.0  # padding (outside the exposed field) drawn black
    record["padding_pixels"] = int(padding.sum())
    return np.round(unit * 255.0).astype(np.uint8)


# ---- grouping keys, views and privacy -------------------------------------------------------

def group_key(ds, by="patient"):
    """(kind, raw value) of the grouping element, falling back from patient to study; or None."""
    order = ("patient", "study") if by == "patient" else ("study",)
    for kind in order:
        value = str(ds.get(GROUP_KEYS[kind], "") or "").strip()
        if value:
            return kind, value
    return None


def view_of(ds):
    """ViewPosition -> the schema's vocabulary ('PA', 'AP', 'lateral', ..., 'other') or None."""
    return normalize_view(ds.get("ViewPosition"))


def modality_of(ds):
    """Modality -> the schema's vocabulary ('CR', 'DX', ..., 'other') or None."""
    return normalize_modality(ds.get("Modality"))


