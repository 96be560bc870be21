"""A DICOM file's decoded size and lookup tables, checked from its headers before any decoder
allocates (stage 2's folder source, through scraper/dicom.py).

A file's size says little about what it decodes to: a 416 KB deflated dataset can inflate to
1.7 GB, a JPEG codestream can declare 40,000 x 40,000 pixels under a 64 x 64 header, and
uncompressed pixel data can hold two frames under NumberOfFrames=1. Each check here reads only
headers (the deflate stream is measured, never kept) and raises DicomError with the reason the
user reads in images-failures.json; the import goes on with the next file.

    check_inflated_size(data)      deflated transfer syntax: inflated size <= MAX_INFLATED_BYTES
    check_pixel_data(ds, syntax)   uncompressed: bytes == Rows x Columns x samples x bits (one
                                   frame); compressed: the codestream's own size == the header's
    check_lookup_tables(ds)        Modality/VOI LUT Sequences complete, RescaleSlope/Intercept
                                   finite numbers
"""
import struct
import zlib

import numpy as np
import pydicom

from scraper.images import BadImage

# Deflated datasets (PS3.5 A.5) are inflated by pydicom in one piece: measured first, in a
# stream, and refused past this decoded size (an uncompressed 4k x 4k 16-bit radiograph is
# 32 MB; the file-size cap, scraper.dicom.MAX_DICOM_BYTES, is the same 256 MB).
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
MAX_INFLATED_BYTES = 256 << 20
RLE_SYNTAX = "1.2.840.10008.1.2.5"


class DicomError(BadImage):
    """A DICOM file that cannot be imported; the message is the reason shown to the user."""


def header_int(value, default):
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def check_inflated_size(data, limit=None):
    """Refuse a deflated dataset (Deflated Explicit VR Little Endian) that inflates past
    `limit` bytes (MAX_INFLATED_BYTES), measured in a stream before pydicom inflates it."""
    limit = MAX_INFLATED_BYTES if limit is None else limit
    syntax, start = _file_meta_syntax(data)
    if syntax != DEFLATED_SYNTAX:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, view = 0, memoryview(data)[start:]
    for offset in range(0, len(view), 1 << 16):
        chunk = view[offset:offset + (1 << 16)]
        while chunk:
            total += len(inflater.decompress(chunk, 1 << 20))
            if total > limit:
                raise DicomError(f"deflated DICOM inflates to more than {limit:,} bytes: "
                                 f"refused before decoding")
            chunk = inflater.unconsumed_tail
        if inflater.eof:
            break


_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV")


def _file_meta_syntax(data):
    """(TransferSyntaxUID, offset where the dataset starts) from a Part-10 file's meta group
    (0002, always explicit VR little endian, after the 132-byte preamble)."""
    offset, syntax = 132, ""
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = bytes(data[offset + 4:offset + 6])
        if vr in _LONG_VRS:
            length, head = struct.unpack_from("<I", data, offset + 8)[0], 12
        else:
            length, head = struct.unpack_from("<H", data, offset + 6)[0], 8
        if element == 0x0010:
            syntax = bytes(data[offset + head:offset + head + length]).rstrip(b"\0 ").decode(
                "ascii", "replace")
        offset += head + length
    return syntax, offset


def check_pixel_data(ds, syntax):
    """Refuse pixel data whose decoded size the headers do not vouch for, before decoding.

    Uncompressed: the bytes must be what Rows x Columns x samples x BitsAllocated (one frame)
    make, give or take the one pad byte (two frames' worth under NumberOfFrames=1 is refused).
    Compressed: the codestream's own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) must
    declare the header's Rows x Columns: a decoder sizes its buffers from the codestream.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = header_int(ds.get("SamplesPerPixel"), 1), header_int(ds.get("BitsAllocated"), 0)
    if not getattr(syntax, "is_encapsulated", False):
        expected = (rows * columns * samples * bits + 7) // 8
        have = len(ds.PixelData)
        if not expected <= have <= expected + 1:
            frames = f"; {have / expected:.3g} frames' worth" if have > expected else ""
            raise DicomError(f"the pixel data holds {have:,} bytes but the header describes "
                             f"{expected:,} ({columns} x {rows}, {samples} sample(s) of {bits} "
                             f"bits, one frame){frames}")
        return
    if str(syntax) == RLE_SYNTAX:
        return  # RLE decodes into Rows x Columns buffers sized from the header
    fragment = _first_fragment(ds.PixelData)
    size = codestream_size(fragment) if fragment is not None else None
    if size is None:
        raise DicomError(f"no image header found in the compressed pixel data "
                         f"({getattr(syntax, 'name', syntax)})")
    if size != (columns, rows):
        raise DicomError(f"the compressed pixel data declares {size[0]:,} x {size[1]:,} "
                         f"pixels, the header {columns:,} x {rows:,}: refused before decoding")


def _first_fragment(data, head=1 << 16):
    """The first `head` bytes of the first fragment after the basic offset table, or None."""
    offset, items = 0, 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, offset)
        if (group, element) != (0xFFFE, 0xE000):
            return None
        if items == 1:
            return bytes(data[offset + 8:offset + 8 + min(length, head)])
        offset, items = offset + 8 + length, items + 1
    return None


_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # + JPEG-LS SOF55
_J2K_SIZ = b"\xff\x4f\xff\x51"


def codestream_size(data):
    """(width, height) a JPEG, JPEG-LS or JPEG 2000 codestream declares, or None."""
    if data[:2] == b"\xff\xd8":
        offset = 2
        while offset + 4 <= len(data):
            if data[offset] != 0xFF:
                return None
            marker = data[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):
                offset += 2
                continue
            length = struct.unpack_from(">H", data, offset + 2)[0]
            if marker in _SOF_MARKERS and offset + 9 <= len(data):
                height, width = struct.unpack_from(">HH", data, offset + 5)
                return width, height
            if marker == 0xDA:  # start of scan before any frame header
                return None
            offset += 2 + length
        return None
    at = data.find(_J2K_SIZ)  # a bare codestream, or one inside a JP2 'jp2c' box
    if at < 0 or at + 24 > len(data):
        return None
    x_size, y_size, x_origin, y_origin = struct.unpack_from(">IIII", data, at + 8)
    return x_size - x_origin, y_size - y_origin


def check_lookup_tables(ds):
    """Refuse, naming it, a Modality/VOI LUT or rescale that cannot be applied as given."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            raw = ds[keyword].value
            try:
                value = float(raw) if raw not in (None, "") else 0.0
            except (TypeError, ValueError):
                raise DicomError(f"invalid {keyword} {str(raw)[:40]!r}: not a number") from None
            if not np.isfinite(value):
                raise DicomError(f"invalid {keyword} {value}: not a finite number")
    for keyword in ("ModalityLUTSequence", "VOILUTSequence"):
        if keyword not in ds:
            continue
        items = ds[keyword].value
        if not items:
            raise DicomError(f"{keyword} is empty")
        item = items[0]
        if "LUTDescriptor" not in item or "LUTData" not in item:
            missing = "LUTDescriptor" if "LUTDescriptor" not in item else "LUTData"
            raise DicomError(f"{keyword} item without {missing}")
        descriptor = item.LUTDescriptor
        if len(descriptor) != 3:
            raise DicomError(f"{keyword} LUTDescriptor has {len(descriptor)} values, not 3")
        entries = int(descriptor[0]) or 65536  # 0 means 2**16 entries (PS3.3 C.11.1.1)
        data = item.LUTData
        if isinstance(data, bytes):  # OW: 16-bit words
            have = len(data) // 2
        else:
            have = len(data) if isinstance(data, (list, pydicom.multival.MultiValue)) else 1
        if have < entries:
            raise DicomError(f"{keyword} LUTData has {have:,} entries, its LUTDescriptor "
                             f"declares {entries:,}")
