"""Feature shards: `.npy` files of (rows, *row_shape) float16/float32, written once, read by row.

A shard is a plain NumPy `.npy` file (`np.load(path, mmap_mode="r")` opens it), written through
a temp file beside it and renamed into place when complete, so a killed run leaves complete
shards and temp files only. Its name carries a random token, so a new shard never replaces one
that an older index still lists. The index (learning/store/index.py) records each shard's
row count, byte size and the sha256 of its data bytes (everything after the header).

Reading never memory-maps: the rows of a batch are read with `os.preadv` into a buffer the
caller may reuse (sorted rows, runs of neighbours in one call), so the pages read stay in the
kernel's page cache and never count in the process's RSS, however many images the store holds.
"""
import ast
import collections
import contextlib
import hashlib
import os
import secrets

import numpy as np

from scraper.cli import UserError
from scraper.fileio import atomic_write

MAGIC = b"\x93NUMPY\x01\x00"  # .npy format version 1.0
DTYPES = ("float16", "float32")
SUFFIX = ".npy"


def row_bytes(row_shape, dtype):
    return int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _header(rows, row_shape, dtype, length=None):
    """The .npy v1.0 header for (rows, *row_shape), padded with spaces to `length` bytes
    (a multiple of 64) so it can be rewritten in place once the row count is known."""
    shape = (rows,) + tuple(int(n) for n in row_shape)
    text = (f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, "
            f"'shape': {shape}, }}").encode("latin1")
    needed = len(MAGIC) + 2 + len(text) + 1
    length = length or (needed + 63) // 64 * 64
    if needed > length or length - len(MAGIC) - 2 > 0xFFFF:
        raise ValueError(f"shard header of {needed} bytes does not fit in {length}")
    padded = text + b" " * (length - needed) + b"\n"
    return MAGIC + (len(padded)).to_bytes(2, "little") + padded


def new_name(number):
    return f"{number:06d}-{secrets.token_hex(4)}{SUFFIX}"


class ShardWriter:
    """Rows in, complete shards out: `add(rows)` appends (n, *row_shape) float32 rows; a shard
    is closed (header, fsync, rename) when it holds `max_rows` rows or on `close_shard()`.
    `on_shard(entry, first_row_number)` is called for each closed shard with its index entry
    {"file", "rows", "bytes", "sha256"}."""

    def __init__(self, folder, row_shape, dtype, max_rows, on_shard, first_number=0):
        if dtype not in DTYPES:
            raise ValueError(f"invalid shard dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        self.folder, self.row_shape, self.dtype = folder, tuple(row_shape), np.dtype(dtype)
        self.max_rows, self.on_shard, self.number = max(1, int(max_rows)), on_shard, first_number
        self.header_length = len(_header(self.max_rows, self.row_shape, self.dtype))
        self._stack = self._handle = None
        self._rows = 0
        self._digest = None
        self._name = None

    def _open(self):
        os.makedirs(self.folder, exist_ok=True)
        self._name = new_name(self.number)
        self.number += 1
        self._stack = contextlib.ExitStack()
        self._handle = self._stack.enter_context(
            atomic_write(os.path.join(self.folder, self._name), "wb"))
        self._handle.write(b"\0" * self.header_length)   # rewritten when the shard closes
        self._rows, self._digest = 0, hashlib.sha256()

    def add(self, rows):
        """Append rows (n, *row_shape), any float dtype; they are stored as self.dtype."""
        rows = np.asarray(rows)
        start = 0
        while start < len(rows):
            if self._handle is None:
                self._open()
            take = min(len(rows) - start, self.max_rows - self._rows)
            data = np.ascontiguousarray(rows[start:start + take], dtype=self.dtype).tobytes()
            self._handle.write(data)
            self._digest.update(data)
            self._rows += take
            start += take
            if self._rows == self.max_rows:
                self.close_shard()

    def close_shard(self):
        """Close the shard being written (if it holds rows): it becomes a complete file."""
        if self._handle is None:
            return
        handle, stack, rows = self._handle, self._stack, self._rows
        self._handle = self._stack = None
        if rows == 0:
            stack.__exit__(RuntimeError, RuntimeError("empty shard"), None)  # drops the temp
            return
        handle.seek(0)
        handle.write(_header(rows, self.row_shape, self.dtype, self.header_length))
        handle.seek(0, os.SEEK_END)
        stack.close()                              # flush, fsync, rename into place
        entry = {"file": self._name, "rows": rows,
                 "bytes": self.header_length + rows * row_bytes(self.row_shape, self.dtype),
                 "sha256": self._digest.hexdigest()}
        self.on_shard(entry)

    def abandon(self):
        """Drop the shard being written (its temp file goes; complete shards stay)."""
        if self._stack is not None:
            stack, self._stack, self._handle = self._stack, None, None
            stack.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)


def read_header(path, handle=None):
    """(rows, row_shape, dtype, data offset) of a shard, or UserError naming the file."""
    try:
        with contextlib.ExitStack() as stack:
            if handle is None:
                handle = stack.enter_context(open(path, "rb"))
            head = os.pread(handle.fileno(), 4096, 0)
            if head[:6] != MAGIC[:6] or len(head) < 10:
                raise ValueError("not a .npy file")
            length = int.from_bytes(head[8:10], "little")
            if head[6] != 1 or len(head) < 10 + length:
                raise ValueError("unsupported .npy header")
            fields = ast.literal_eval(head[10:10 + length].decode("latin1"))
            dtype = np.dtype(fields["descr"])
            shape = tuple(int(n) for n in fields["shape"])
            if fields["fortran_order"] or dtype.name not in DTYPES or not shape:
                raise ValueError(f"unexpected array {dtype} {shape}")
            return shape[0], shape[1:], dtype.name, 10 + length
    except FileNotFoundError:
        raise UserError(f"feature shard missing: {path}") from None
    except (ValueError, SyntaxError, KeyError, TypeError) as error:
        raise UserError(f"feature shard {path} is not a shard ({error})") from None


class ShardReader:
    """Reads rows of the shards of one store by (shard number, row) with os.preadv; keeps up
    to `max_open` files open. Each shard's header is checked against its index entry (rows,
    row shape, dtype, byte size) the first time it is opened: a truncated or replaced shard is
    one UserError line."""

    def __init__(self, folder, shards, row_shape, dtype, max_open=64):
        self.folder, self.shards = folder, shards
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.row_bytes = row_bytes(row_shape, dtype)
        self.max_open = max_open
        self._open = collections.OrderedDict()   # shard number -> (fd, data offset)

    def path(self, number):
        return os.path.join(self.folder, self.shards[number]["file"])

    def check(self, number, fd=None):
        """-> data offset of shard `number`, after checking its header and size."""
        path, entry = self.path(number), self.shards[number]
        own = fd is None
        if own:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise UserError(f"feature shard missing: {path} (re-run stage 3, "
                                f"cxr-extract-features)") from None
        try:
            size = os.fstat(fd).st_size
            with os.fdopen(os.dup(fd), "rb") as handle:
                rows, shape, dtype, offset = read_header(path, handle)
        finally:
            if own:
                os.close(fd)
        if (rows, tuple(shape), dtype) != (entry["rows"], self.row_shape, self.dtype.name) \
                or size != entry["bytes"]:
            raise UserError(f"feature shard {path} was changed since its index was written "
                            f"({rows:,} rows of {shape} {dtype}, {size:,} bytes; the index "
                            f"says {entry['rows']:,} rows of {self.row_shape} "
                            f"{self.dtype.name}, {entry['bytes']:,} bytes): re-run stage 3")
        return offset

    def _fd(self, number):
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        try:
            fd = os.open(self.path(number), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise UserError(f"feature shard missing: {self.path(number)} (re-run stage 3, "
                            f"cxr-extract-features)") from None
        try:
            offset = self.check(number, fd)
        except BaseException:
            os.close(fd)
            raise
        self._open[number] = (fd, offset)
        if len(self._open) > self.max_open:
            old_fd, _ = self._open.popitem(last=False)[1]
            os.close(old_fd)
        return fd, offset

    def read_into(self, number, rows, out):
        """out[i] = row rows[i] of shard `number`; rows ascending. out: (len(rows), *shape)
        C-contiguous array of the shard dtype. Runs of consecutive rows are one preadv."""
        fd, offset = self._fd(number)
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            view = memoryview(out[start:stop]).cast("B")
            got = os.preadv(fd, [view], offset + int(rows[start]) * self.row_bytes)
            if got != len(view):
                raise UserError(f"feature shard {self.path(number)} is truncated: re-run "
                                f"stage 3 (cxr-extract-features)")
            start = stop

    def iter_blocks(self, number, block_rows):
        """Yield (first row, rows array) over the whole shard in order, and check the sha256
        of its data bytes at the end (UserError when it differs from the index)."""
        fd, offset = self._fd(number)
        entry = self.shards[number]
        digest = hashlib.sha256()
        buffer = np.empty((block_rows,) + self.row_shape, self.dtype)
        for first in range(0, entry["rows"], block_rows):
            n = min(block_rows, entry["rows"] - first)
            self.read_into(number, np.arange(first, first + n), buffer[:n])
            digest.update(memoryview(buffer[:n]).cast("B"))
            yield first, buffer[:n]
        if digest.hexdigest() != entry.get("sha256"):
            raise UserError(f"feature shard {self.path(number)} does not match its checksum "
                            f"in the index (changed or corrupted on disk): re-run stage 3")

    def damage(self, number, block_rows=64):
        """None when shard `number` is there with its recorded header, size and sha256; else
        the reason (one line). Reads the whole shard."""
        try:
            for _ in self.iter_blocks(number, block_rows):
                pass
        except UserError as error:
            self._forget(number)
            return str(error)
        return None

    def _forget(self, number):
        if number in self._open:
            os.close(self._open.pop(number)[0])

    def close(self):
        while self._open:
            os.close(self._open.popitem()[1][0])

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
