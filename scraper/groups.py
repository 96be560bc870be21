"""Patient groups (report_id) for the folder source: a CSV's group column, else the first
capture group of --group-pattern on the relative path, else a DICOM's PatientID (or
StudyInstanceUID), else the image itself; with a warning when names share patient-like
prefixes. DICOM groups are salted hashes (scraper/phi.py); the user's pattern runs under a time
bound (`bounded_search`).
"""
import collections
import os
import re
import signal
import threading

from scraper import dicom, phi
from scraper.cli import UserError, fmt_count
from scraper.phi import mask, say

# --group-pattern is the user's regex, searched in every path: a pattern that backtracks
# catastrophically ('(a+)+b' on 'aaaa...!.png') is stopped after this long on one path.
PATTERN_SECONDS = 1.0


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
            match = bounded_search(pattern, relative)
            value = match.group(1) if match and match.group(1) else None
        if not value and header is not None:
            kind, value = dicom.group_key(header, dicom_group) or ("group", None)
        if value and header is not None:
            value = phi.salted_id(salt, kind, value)
        if value:
            entry["report_id"] = value
        else:
            ungrouped.append(relative)
    if ungrouped and pattern is not None:
        say(f"warning: {fmt_count(len(ungrouped))} image(s) do not match --group-pattern "
            f"{pattern.pattern!r}: each is its own group (e.g. "
            f"{mask(ungrouped[0], path=True)})")
    if pattern is None and len(ungrouped) == len(entries):
        warn_shared_prefixes(ungrouped)


class _PatternExpired(Exception):
    pass


def _expire(signum, frame):
    raise _PatternExpired()


def bounded_search(pattern, text, seconds=PATTERN_SECONDS):
    """pattern.search(text), stopped after `seconds` with one line (UserError): Python's re
    backtracks, and a user's '(a+)+b' on 'aaaa...!.png' would run for minutes while the data
    folder is locked. The match loop checks signals, so a timer interrupts it (main thread;
    elsewhere the search runs unbounded, as re does)."""
    if threading.current_thread() is not threading.main_thread():
        return pattern.search(text)
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return pattern.search(text)
    except _PatternExpired:
        raise UserError(f"--group-pattern {pattern.pattern!r} ran for more than {seconds:g} s "
                        f"on one path ({mask(text, path=True)!r}) and was stopped: it backtracks "
                        f"catastrophically (nested repeats such as '(a+)+'); simplify it, "
                        f"e.g. '^([^_]+)_'") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
    say(f"warning: {fmt_count(sum(shared.values()))} of {fmt_count(len(relatives))} images "
        f"share a name prefix with another image ({fmt_count(len(shared))} prefixes, e.g. "
        f"{mask(example, path=True)!r} x {count}) but no group is given, so each image is its "
        f"own group; if a prefix is a patient, keep each patient on one side of the split "
        f"with --group-pattern '{suggestion}' (the first capture group names the patient)")
