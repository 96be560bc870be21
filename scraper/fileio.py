"""Atomic file writes and careful reads shared by every stage.

A write goes to a temp file in the target's own directory and is renamed over the target only
once complete (os.replace is atomic on POSIX), so a killed stage leaves either the previous
file or the new one, never half of one.

Also here, for every stage:
- `check_outputs`: refuse (before anything is written) an output that is an input or another
  output (same resolved path, symlink or hard link) or does not look like what it should be;
- `open_regular` / `read_regular`: open only regular files (a FIFO named *.png would hang a
  read, a link to /dev/zero would fill memory), with a size cap;
- `open_nofollow`: open a file we write into without following a planted symlink;
- `folder_lock`: one writer per data folder;
- `csv_text` / `atomic_write_csv`: the one CSV writer; a cell that a spreadsheet would read as
  a formula (starts with = + - @, tab or carriage return) is written with a leading `'`;
- temp files named unmistakably ours (`.NAME.cxr-tmp-XXXXXXXX.part`) and locked while written,
  so `remove_stale_temp_files` deletes only our own, and never a running writer's.
"""
import contextlib
import csv
import errno
import io
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
import time

from scraper.cli import UserError

TMP_SUFFIX = ".part"
TMP_MARKER = ".cxr-tmp-"  # mkstemp adds 8 random characters after it
_OUR_TEMP = re.compile(r"^\..+" + re.escape(TMP_MARKER) + r"[A-Za-z0-9_]{8}" +
                       re.escape(TMP_SUFFIX) + "$")
LOCK_FILE = ".cxr-lock"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, durable=True):
    """Open a temp file beside `path`; on clean exit fsync it and rename it over `path`.

    durable=False skips the fsync, for many small files a re-run regenerates (the gallery's
    detail pages: an fsync each was 2/3 of their writing time): a killed process still leaves
    the old file or the new one, never half of one; only a power cut can lose the new content.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _locked_temp(path, directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _locked_temp(path, directory):
    """(fd, name) of a new temp file beside `path`, locked (flock) until closed, so another
    run's `remove_stale_temp_files` leaves it alone. Should a clean-up slip in between the
    creation and the lock, the name no longer leads to our file: make another."""
    for _ in range(10):
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TMP_MARKER,
                                       suffix=TMP_SUFFIX, dir=directory)
        except OSError as error:  # name the file the user asked for, not our temp name
            raise OSError(error.errno, error.strerror, path) from None
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a clean-up holds it, briefly
        try:
            if os.path.samestat(os.stat(tmp, follow_symlinks=False), os.fstat(fd)):
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)
    raise UserError(f"cannot keep a temp file beside {path}: something keeps deleting them")


def atomic_write_bytes(path, data):
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path, text, durable=True):
    with atomic_write(path, "w", encoding="utf-8", durable=durable) as handle:
        handle.write(text)


def atomic_write_json(path, obj, indent=1):
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_json_rows(path, rows):
    """atomic_write_json(path, list(rows)), byte for byte, written row by row: memory of one
    row, not of the whole list and its text (stage 6's index.json: ~7 KB an image)."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        opening = "["
        for row in rows:
            handle.write(opening + "\n " + json.dumps(row, indent=1, ensure_ascii=False)
                         .replace("\n", "\n "))   # a JSON string holds no raw newline
            opening = ","
        handle.write("[]\n" if opening == "[" else "\n]\n")


# A spreadsheet evaluates a cell starting with one of these as a formula (CSV injection, OWASP):
# such text cells get a leading apostrophe. Numbers we format ourselves ("-0.5") stay as they are.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def csv_cell(value):
    """One CSV cell as text, neutralised against formula injection (see _FORMULA_START)."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def write_csv(handle, header, rows):
    """CSV (\\n line ends) of a header and rows into a text handle, every cell through
    `csv_cell`, row by row."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow([csv_cell(cell) for cell in header])
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])


def csv_text(header, rows):
    """CSV text of a header and rows (write_csv)."""
    buffer = io.StringIO()
    write_csv(buffer, header, rows)
    return buffer.getvalue()


def atomic_write_csv(path, header, rows):
    """Write a CSV file atomically, row by row (`rows` may be a generator); every cell is
    neutralised against formula injection."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        write_csv(handle, header, rows)


def read_json(path, what="JSON file"):
    """Load JSON or raise UserError naming the file and what is wrong with it."""
    path = os.fspath(path)
    try:
        with open_regular(path, what) as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what} is not valid JSON: {path} ({error})") from None


def file_hash(path, algorithm="sha256", chunk_size=1 << 20):
    """Hex digest of a file, read in chunks (weights files are hundreds of MB)."""
    digest = hashlib.new(algorithm)
    with open_regular(path) as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_our_temp_name(name):
    """True for the temp names `atomic_write` makes ('.x.png.cxr-tmp-ab12cd34.part')."""
    return bool(_OUR_TEMP.match(name))


def remove_stale_temp_files(directory, min_age=0.0):
    """Delete temp files a killed run left behind in `directory`; returns how many.

    Only files named by `atomic_write` are touched (a user's own '.notes.part' stays), only
    when older than `min_age` seconds, and only when no process holds their lock: a running
    writer, in this program or another run, keeps its temp file (a killed one's lock is gone).
    """
    removed = 0
    now = time.time()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            if not is_our_temp_name(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age:
                continue
            if _unlink_if_unlocked(entry.path):
                removed += 1
    return removed


def _unlink_if_unlocked(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a writer is still at work on it
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)


# ---- reading only regular files ------------------------------------------------------------

def open_regular(path, what="file"):
    """Open `path` for binary reading only if it is (or links to) a regular file.

    O_NONBLOCK keeps a FIFO from blocking the open itself; it is refused right after. Raises
    UserError naming the path when it is a FIFO, device, socket or folder.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{what} is not a regular file ({_kind(mode)}): {path}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class NotRegularFile(UserError):
    """A FIFO, device, socket or folder where a regular file was expected."""


class TooLarge(UserError):
    """A file or body larger than the cap its reader sets."""


def _kind(mode):
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO/named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path, max_bytes, what="file"):
    """The bytes of a regular file, refused (TooLarge) when over `max_bytes`."""
    with open_regular(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise TooLarge(f"{what} is {size:,} bytes, more than the {max_bytes:,} allowed: "
                           f"{path}")
        # read(n) allocates n bytes up front: ask for the size stat gave, then read on in
        # small chunks in case the file grew meanwhile.
        parts = [handle.read(size)]
        total = len(parts[0])
        while chunk := handle.read(1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(f"{what} is more than the {max_bytes:,} bytes allowed: {path}")
            parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def open_nofollow(path, append=False):
    """Open `path` for binary writing (or appending) without following a symlink planted there.

    Refuses (UserError) a symlink, a non-regular file or a file with more than one hard link at
    `path`: a planted link would make us write into whatever it points at (`check_private`).
    Truncation (append=False) happens only after the checks: O_TRUNC is not passed to open.
    """
    path = os.fspath(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if append else 0
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"refusing to write through a symbolic link: {path} (remove it "
                            f"and re-run)") from None
        if error.errno == errno.ENXIO:  # a FIFO without reader
            raise NotRegularFile(f"refusing to write into a FIFO: {path}") from None
        raise
    try:
        check_private(fd, path)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    if not append:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, "ab" if append else "wb")


def check_private(fd, path, what="refusing to write into"):
    """Refuse (UserError) to write into an open file that is not a regular file of its own:
    a hard link planted at a temp or lock file's name (`ln victim data/w.h5.download`) shares
    the victim's bytes, and writing there would change the victim."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(f"{what} {path}: {_kind(info.st_mode)}")
    if info.st_nlink > 1:
        raise UserError(f"{what} {path}: it has {info.st_nlink} hard links (its bytes are "
                        f"another file's too); remove it and re-run")


# ---- outputs must not clobber inputs -------------------------------------------------------

FILE_KINDS = {".pickle": (".pickle", ".pkl"), ".json": (".json",), ".keras": (".keras",),
              ".h5": (".h5",)}
_FILE_LOOKING = (".pickle", ".pkl", ".json", ".keras", ".h5", ".csv", ".png", ".jpg", ".xml")


def check_outputs(inputs=(), outputs=()):
    """Refuse, before anything is written, outputs that would destroy data or look wrong.

    inputs:  [(what, path), ...]          e.g. [("features pickle", "data/f.pickle")]
    outputs: [(what, path, kind), ...]    kind: ".pickle", ".json", ".keras", ".h5", "folder"
                                          or None (any file)
    Raises UserError (one line, naming both paths) when an output is the same file as an input
    or as another output - compared after resolving symlinks, and by device + inode so hard
    links count too - or when an output does not have its kind's suffix, is a folder where a
    file belongs, or a file where a folder belongs.
    """
    seen = [(what, os.fspath(path), "input") for what, path in inputs]
    for what, path, kind in outputs:
        path = os.fspath(path)
        _check_kind(what, path, kind)
        for other_what, other_path, role in seen:
            if _same_file(path, other_path):
                also = f" ({other_path})" if other_path != path else ""
                raise UserError(f"the {what} {path} is the same file as the {other_what}{also}: "
                                f"refusing to overwrite {'an input' if role == 'input' else 'it'}"
                                f"; nothing was written (check the order of the arguments)")
        seen.append((what, path, "output"))


def _check_kind(what, path, kind):
    if kind == "folder":
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"the {what} must be a folder, but {path} is a file; nothing was "
                            f"written (check the order of the arguments)")
        if path.lower().endswith(_FILE_LOOKING):
            raise UserError(f"the {what} {path} looks like a file name, not a folder; nothing "
                            f"was written (check the order of the arguments)")
        return
    if os.path.isdir(path):
        raise UserError(f"the {what} {path} is a folder, expected a file name; nothing was "
                        f"written")
    if kind is not None and not path.lower().endswith(FILE_KINDS[kind]):
        raise UserError(f"the {what} {path} should end in {' or '.join(FILE_KINDS[kind])}; "
                        f"nothing was written (check the order of the arguments)")


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # st_dev + st_ino: hard links
    except OSError:  # one of them does not exist yet
        return False


# ---- one writer per data folder ------------------------------------------------------------

_HELD = {}  # (st_dev, st_ino) of a lock file this process holds -> [fd, depth]


@contextlib.contextmanager
def folder_lock(directory, prog):
    """Hold an exclusive lock on `directory` (its .cxr-lock file) for the `with` block.

    A second writer is refused at once with one line naming the holder's process id (waiting
    could hang behind a stuck run). The lock dies with its process: a killed run leaves none.
    Re-entrant within a process (a stage that calls another stage's code on the same folder).
    The lock file is only ever written when it is a regular file of its own: a symlink, FIFO,
    folder or hard link planted at .cxr-lock is refused with one line, never written through.
    """
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{directory} is a file, expected a folder") from None
    path = os.path.join(directory, LOCK_FILE)
    fd = _open_lock(path)
    key = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
    if key in _HELD:  # this process holds it already: nest
        os.close(fd)
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            holder = "".join(c for c in holder if c.isprintable()) or "unknown"
            raise UserError(f"another run is writing to {directory} (process {holder}); wait "
                            f"for it to finish or use another folder") from None
        check_private(fd, path, "refusing to use the lock file")  # a link made meanwhile
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {prog}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # releases the lock


def _open_lock(path):
    """The lock file's fd (created if missing), never following a link; UserError when the
    name holds something that is not our own regular file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"refusing to use {path}: it is a symbolic link (remove it)") \
                from None
        if error.errno in (errno.EISDIR, errno.ENXIO, errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot use the lock file {path}: {error.strerror} (remove it, "
                            f"or use a folder you may write)") from None
        raise
    try:
        check_private(fd, path, "refusing to use the lock file")
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd
