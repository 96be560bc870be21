"""Stage 6's per-image entries, kept on disk while the run goes on: memory flat in the number
of images.

Each explained image has one entry (a dict: name, label, probabilities, outcome, boxes, files,
per-method picture/score/argmax/delta, report text; learning/visualization.py describe_item).
Every later step reads them: maps.npz's index, the pictures' colour scales, the verdict,
index.json/.csv, gallery-data.js and one detail page each. Held in a list they cost ~3.5 KB an
image (~400 MB at NIH ChestX-ray14's 112,120, more with report text), so `EntryLog` writes
each entry as one JSON line into an unnamed temporary file (in the run's staging folder: the
results' disk; it has no name, so it is never part of the published run and vanishes with
the process, even after a kill) and keeps in memory only what ordering needs, ~100 bytes an
image: the line's offset, p(abnormal), the name (UTF-8 bytes), and each picture's
colour-scale top.

    log = EntryLog(folder)
    log.append(entry)                   # in the order explained: index 0, 1, ...
    log.set_tops(index, {key: top})     # the renderer's result for entry `index`
    for entry in log: ...               # re-iterable; every pass reads the file again
    log.sort_by_probability()           # then: p(abnormal) highest first, name
    log.public()                        # the same entries without INTERNAL keys (pages)
    log.by_name()                       # the same entries, by name
    len(log)

What an entry read back is: the dict as appended after one JSON round trip (tuples become
lists, NaN and inf become None, numpy scalars Python numbers), plus `decorate(entry, tops)`
(set by the caller) applied with the tops set for it.
"""
import json
import math
import tempfile
from array import array

import numpy as np

from learning.explain.outputs import jsonable

# Entry keys for stage 6's own steps, not for the pages.
INTERNAL = ("path", "scored_boxes", "scores")
NO_TOP = -1.0   # a colour-scale top of None (an all-zero map); real tops are >= 0


def outcome(label, p_abnormal, threshold):
    """An entry's "outcome": TP / FP / FN / TN at the threshold (predicted abnormal iff
    p > threshold), or 'unlabelled'."""
    if label not in ("normal", "abnormal"):
        return "unlabelled"
    predicted = p_abnormal > threshold
    return ("T" if predicted == (label == "abnormal") else "F") + ("P" if predicted else "N")


class _View:
    """The log's entries in one order, re-iterable, with a length (what the writers need)."""

    def __init__(self, log, order, drop=()):
        self._log, self._order, self._drop = log, order, drop

    def __len__(self):
        return len(self._log)

    def __iter__(self):
        for index in self._order():
            entry = self._log.read(index)
            for key in self._drop:
                entry.pop(key, None)
            yield entry


class EntryLog:
    """Entries on disk, one JSON line each; see the module docstring."""

    def __init__(self, folder=None):
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".cxr-entries-")
        self._end = 0
        self._offsets = array("q")
        self._p = array("d")
        self._names = bytearray()  # every name in UTF-8, one after another (~2/3 less than
        self._name_ends = array("q")   # a list of str): name(i) = _names[end(i-1):end(i)]
        self._tops = {}   # key -> array("d") by entry index: NaN = not set, NO_TOP = None
        self._order = None         # None = as appended; else an int64 array of indices
        self.decorate = None       # callable(entry, {key: top}) applied on reading

    # ------------------------------------------------------------------------- writing

    def append(self, entry):
        line = (json.dumps(jsonable(entry), ensure_ascii=False, allow_nan=False,
                           separators=(",", ":")) + "\n").encode("utf-8")
        self._file.seek(self._end)
        self._file.write(line)
        self._offsets.append(self._end)
        self._end += len(line)
        self._p.append(float(entry["p_abnormal"]))
        self._names += entry["name"].encode("utf-8")
        self._name_ends.append(len(self._names))
        self._order = None

    def set_tops(self, index, tops):
        """The colour-scale top of each of entry `index`'s pictures (None: an all-zero map)."""
        for key, top in tops.items():
            column = self._tops.get(key)
            if column is None:
                column = self._tops[key] = array("d")
            if len(column) <= index:
                column.extend([math.nan] * (index + 1 - len(column)))
            column[index] = NO_TOP if top is None else float(top)

    def close(self):
        self._file.close()

    # ------------------------------------------------------------------------- reading

    def __len__(self):
        return len(self._offsets)

    def name(self, index):
        """Entry `index`'s name (from memory: no read)."""
        start = self._name_ends[index - 1] if index else 0
        return self._names[start:self._name_ends[index]].decode("utf-8")

    def read(self, index):
        """Entry `index` (in the order appended), decorated."""
        self._file.seek(self._offsets[index])
        entry = json.loads(self._file.readline())
        if self.decorate is not None:
            tops = {}
            for key, column in self._tops.items():
                top = column[index] if index < len(column) else math.nan
                if not math.isnan(top):
                    tops[key] = None if top == NO_TOP else top
            self.decorate(entry, tops)
        return entry

    def _current(self):
        return range(len(self)) if self._order is None else iter(self._order.tolist())

    def __iter__(self):
        return iter(_View(self, self._current))

    def items(self):
        """(index, entry) in the order appended (the index set_tops takes)."""
        for index in range(len(self)):
            yield index, self.read(index)

    def public(self):
        """The entries in the current order without the INTERNAL keys."""
        return _View(self, self._current, INTERNAL)

    def by_name(self):
        """The entries ordered by name."""
        return _View(self, lambda: sorted(range(len(self)), key=self.name))

    # ------------------------------------------------------------------------- order

    def sort_by_probability(self):
        """From now on iterate by p(abnormal), highest first, then by name: the gallery's and
        the index's order. Sorted as arrays; only runs of equal p are sorted by name."""
        p = np.array(self._p, dtype=np.float64)
        order = np.argsort(-p, kind="stable")
        ranked = p[order]
        cuts = np.flatnonzero(np.diff(ranked) != 0) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [len(order)]))
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            order[start:end] = sorted(order[start:end].tolist(), key=self.name)
        self._order = order
