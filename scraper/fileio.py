"""Atomic file writes and careful reads shared by every stage.

A write goes to a temp file in the target's own directory and is renamed over the target only
once complete (os.replace is atomic on POSIX), so a killed stage leaves either the previous
file or the new one, never half of one.
"""
import contextlib
import hashlib
import json
import os
import tempfile

from scraper.cli import UserError

TMP_SUFFIX = ".part"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Open a temp file beside `path`; on clean exit fsync it and rename it over `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX,
                               dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data):
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path, text):
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path, obj, indent=1):
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path, what="JSON file"):
    """Load JSON or raise UserError naming the file and what is wrong with it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what} is not valid JSON: {path} ({error})") from None


def file_hash(path, algorithm="sha256", chunk_size=1 << 20):
    """Hex digest of a file, read in chunks (weights files are hundreds of MB)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temp_files(directory):
    """Delete temp files a killed run left behind in `directory`; returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed
