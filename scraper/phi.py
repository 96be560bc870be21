"""Privacy for DICOM input: nothing that identifies a patient leaves stage 2.

- Grouping keys and output names are salted HMAC-SHA256 hashes (`salted_id`), the salt random
  per data folder (`data_salt`, kept in SALT_FILE): "patient-3f9c...", "dcm-81a0....png".
- `IdentifierMask` is the one masking function for every string that leaves a DICOM import:
  records' urls, failures (name, url, reason), log lines and error messages. The folder source
  builds one over every DICOM header it found and installs it for the import (`masking`);
  `mask(text)` and `say(text)` (log through the mask) use the installed one.
"""
import contextlib
import contextvars
import hashlib
import hmac
import os
import re
import secrets

import pydicom

from scraper.cli import log
from scraper.fileio import atomic_write_text, read_regular

SALT_FILE = ".id-salt"
# Header values that identify a patient or a study; used only to mask them out of file paths.
IDENTIFYING = ("PatientID", "OtherPatientIDs", "PatientName", "PatientBirthDate",
               "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "MedicalRecordLocator")
# The mask of the import running in this context (None: nothing to mask).
_MASK = contextvars.ContextVar("cxr_mask", default=None)


def data_salt(data_dir):
    """The data folder's secret salt (created on first use; hex text in SALT_FILE)."""
    path = os.path.join(os.fspath(data_dir), SALT_FILE)
    try:
        salt = read_regular(path, 1024, "salt file").decode("ascii", "replace").strip()
        if len(salt) >= 32:
            return salt
    except FileNotFoundError:
        pass
    salt = secrets.token_hex(32)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(path, salt + "\n")
    return salt


def salted_hex(salt, text, length=16):
    """HMAC-SHA256 of `text` under the data folder's salt, as `length` hex digits."""
    return hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()[:length]


def salted_id(salt, kind, value):
    """'kind-<16 hex>': a grouping key or name that cannot be turned back into `value`."""
    return f"{kind}-{salted_hex(salt, f'{kind}:{value}')}"


def mask_identifiers(text, ds):
    """The path `text` with `ds`'s identifying values masked (IdentifierMask for one header)."""
    return IdentifierMask([ds])(text, path=True)


class IdentifierMask:
    """The one masking function for every string stage 2 lets out for DICOM input.

    Built from the identifying header values (IDENTIFYING) of every DICOM file in the import;
    called on each record's url, each failure's name, url and reason, and each log line. A
    value of 4 characters or more is replaced wherever it appears (any case); a shorter one
    (PatientID "042", the "Li" and "Wu" of "Li^Wu") only where it stands as a token of its
    own (not next to a letter when it starts/ends with a letter, not next to a digit when it
    starts/ends with a digit). In a path (`path=True`: urls, failure names, every path put
    into a message) that is enough ("042/IM1.dcm", "pt042_", "Li Wu/" are masked, "1042" is
    not); in free text (the whole message, a second pass) the token must also touch one of
    PATH_PUNCTUATION or be the whole text, so that the counts of "2 saved, 1 failed" stay
    when a PatientID is "2". A name is also matched with its parts joined by nothing, "_",
    "-", "." or a space, either order. Each is replaced by "[Keyword]", e.g. "[PatientID]".
    """

    def __init__(self, headers=()):
        self.long = {}    # lower-case value (>= 4 characters) -> keyword
        self.short = {}   # lower-case value (1-3 characters) -> keyword
        self.heads = {}   # first 4 characters of a long value -> its lengths
        for header in headers:
            self.add(header)

    def add(self, ds):
        for keyword in IDENTIFYING:
            value = ds.get(keyword)
            if value is None:
                continue
            for item in (value if isinstance(value, pydicom.multival.MultiValue) else [value]):
                for variant in _variants(str(item)):
                    self._add(variant.lower(), keyword)
        return self

    def _add(self, text, keyword):
        if not text.strip():
            return
        if len(text) >= 4:
            if self.long.setdefault(text, keyword) == keyword:
                self.heads.setdefault(text[:4], set()).add(len(text))
        else:
            self.short.setdefault(text, keyword)

    def __bool__(self):
        return bool(self.long or self.short)

    def __call__(self, text, path=False):
        if not self or not text:
            return text
        text = str(text)
        lower = text.lower()
        found = []  # (start, end, keyword)
        for start in range(len(lower)):
            for length in self.heads.get(lower[start:start + 4], ()):
                keyword = self.long.get(lower[start:start + length])
                if keyword:
                    found.append((start, start + length, keyword))
            for length in (1, 2, 3):
                keyword = self.short.get(lower[start:start + length])
                if keyword and _standalone(lower, start, start + length, path):
                    found.append((start, start + length, keyword))
        if not found:
            return text
        out, at = [], 0
        for start, end, keyword in sorted(found, key=lambda f: (f[0], -f[1])):
            if start < at:
                continue  # inside a longer match already replaced
            out += [text[at:start], f"[{keyword}]"]
            at = end
        return "".join(out + [text[at:]])


def _variants(value):
    """A header value, its parts (split at ^ = and spaces) and the parts joined other ways."""
    value = value.strip()
    parts = [p for p in re.split(r"[\^=\s]+", value) if p]
    variants = {value, *parts}
    if len(parts) > 1:
        for joiner in ("", "_", "-", ".", " "):
            variants.add(joiner.join(parts))
            variants.add(joiner.join(reversed(parts)))
    return variants


def _kind(char):
    return "a" if char.isalpha() else "d" if char.isdigit() else ""


# Characters that join the parts of paths and file names, or quote them in a message (not
# those of prose or numbers: no space, comma, colon or bracket).
PATH_PUNCTUATION = frozenset("/\\_-.+=@#~'\"")


def _standalone(text, start, end, path):
    """True when text[start:end] is not glued to a letter (digit) on a letter (digit) side;
    outside a path, also only next to PATH_PUNCTUATION or a letter/digit of the other kind
    (inside a name such as "pt042"), or as all of `text`."""
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if (before and _kind(before) and _kind(before) == _kind(text[start])) or \
            (after and _kind(after) and _kind(after) == _kind(text[end - 1])):
        return False
    return path or (not before and not after) or bool(
        {before, after} & PATH_PUNCTUATION) or before.isalnum() or after.isalnum()


@contextlib.contextmanager
def masking(masker):
    """Install `masker` (an IdentifierMask) for `mask` and `say` within the block."""
    token = _MASK.set(masker)
    try:
        yield masker
    finally:
        _MASK.reset(token)


def mask(text, path=False):
    """`text` through the installed IdentifierMask (unchanged when none is installed);
    `path=True` for a path or file name (see IdentifierMask)."""
    masker = _MASK.get()
    return masker(text, path) if masker else text


def say(text):
    """log() (stderr) through the installed IdentifierMask."""
    log(mask(text))
