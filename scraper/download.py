"""Resumable, hash-checked downloads (the weights in stage 1, the bulk archives in stage 2).

The bytes stream into `<target>.download` beside the target, with a progress bar; a re-run
continues that file with an HTTP Range request; the hash is checked before the atomic rename,
so the target is either absent, the previous file, or the complete verified file.

The temp file is opened without following symlinks and only when it has a single hard link
(a link planted at `<target>.download` would make us append to whatever it points at, and the
final rename would move the victim), and locked while written (a second download into it is
refused). A body is never allowed past its declared Content-Length nor past
`max_bytes` (an endless body would fill the disk).
"""
import contextlib
import fcntl
import os
import shutil
import stat

import requests
from scraper.cli import UserError, log, progress_bar
from scraper.fileio import atomic_write, file_hash, open_nofollow, open_regular
from scraper.http_client import (DEFAULT_TIMEOUT, BodyTooLarge, declared_length,
                                 describe_request_error, make_session)

PARTIAL_SUFFIX = ".download"
CHUNK = 1 << 16
# The largest file a download may be: the PNG bulk archive is 1.4 GB, the weights 58 MB.
DEFAULT_MAX_BYTES = 8 << 30


class HashMismatch(UserError):
    pass


class DownloadRefused(UserError):
    """Not a network problem: a planted link, a body over the cap, a concurrent download."""


def guess_algorithm(expected_hash):
    """Keras convention: 64 hex digits = sha256, 32 = md5."""
    return "sha256" if len(expected_hash) == 64 else "md5"


def verify_hash(path, expected_hash):
    if not expected_hash:
        return True
    return file_hash(path, guess_algorithm(expected_hash)) == expected_hash.lower()


def download(url, target, expected_hash=None, session=None, timeout=DEFAULT_TIMEOUT,
             progress=True, max_resumes=5, max_bytes=DEFAULT_MAX_BYTES):
    """Download `url` to `target`; return "present" if it already verifies, else "downloaded".

    Raises UserError (one line) when the host is unreachable, the hash does not match, the
    body passes `max_bytes` or `<target>.download` is a symlink or not a regular file.
    """
    target = os.fspath(target)
    if os.path.isfile(target) and expected_hash and verify_hash(target, expected_hash):
        return "present"
    os.makedirs(os.path.dirname(os.path.abspath(target)) or ".", exist_ok=True)
    partial = target + PARTIAL_SUFFIX
    session = session or make_session()
    for _ in range(max_resumes + 1):
        try:
            complete = _fetch(session, url, partial, timeout, progress, max_bytes)
        except BodyTooLarge as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)  # not a file anyone wants: do not resume it either
            raise DownloadRefused(f"download refused: {error}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            if not _partial_size(partial):
                raise UserError(describe_request_error(error, url)) from None
            log(f"transfer interrupted at {os.path.getsize(partial):,} bytes; resuming")
            continue
        except requests.exceptions.RequestException as error:  # HTTP status, bad URL, ...
            raise UserError(describe_request_error(error, url)) from None
        if complete:
            break
    else:
        raise UserError(f"download of {url} kept breaking off; re-run to resume "
                        f"({os.path.getsize(partial):,} bytes kept in {partial})")
    return install(partial, target, expected_hash, source=url, move=True)


def install(source_path, target, expected_hash=None, source=None, move=False):
    """Verify `source_path` and atomically place it at `target` (copy unless `move`)."""
    if expected_hash and not verify_hash(source_path, expected_hash):
        actual = file_hash(source_path, guess_algorithm(expected_hash))
        if move:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source_path)
        raise HashMismatch(f"hash mismatch for {source or source_path}: expected "
                           f"{expected_hash}, got {actual}; file not installed")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    if move:
        os.replace(source_path, target)
    else:
        # copy through a unique temp file beside the target, so a killed copy leaves no half file
        with open_regular(source_path, "file") as source_file, atomic_write(target) as handle:
            shutil.copyfileobj(source_file, handle, CHUNK * 16)
    return "downloaded"


def _partial_size(partial):
    """Bytes already in the temp file (0 when absent); refuses a symlink or a non-file there."""
    try:
        info = os.lstat(partial)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise DownloadRefused(f"refusing to use {partial}: it is "
                        f"{'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a file'}, "
                        f"not a download of ours (remove it and re-run)")
    if info.st_nlink > 1:  # a hard link: appending would change the other file's bytes
        raise DownloadRefused(f"refusing to use {partial}: it has {info.st_nlink} hard links, "
                              f"not a download of ours (remove it and re-run)")
    return info.st_size


def _fetch(session, url, partial, timeout, progress, max_bytes=DEFAULT_MAX_BYTES):
    """One GET (ranged if a partial file exists). True when the server sent the whole rest."""
    have = _partial_size(partial)
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if response.status_code == 416 and have:  # nothing left to send: partial is complete
            return True
        response.raise_for_status()
        # Keep every byte that arrived before a cut (urllib3 would drop the last short chunk
        # with IncompleteRead); the length check below still notices the short body.
        response.raw.enforce_content_length = False
        if have and (response.status_code != 206 or not _range_starts_at(response, have)):
            have = 0  # server ignored Range (or answered another range): start over
        length = declared_length(response)
        total = length + have if length is not None else None
        if total is not None and total > max_bytes:
            raise BodyTooLarge(f"{url} declares {total:,} bytes, more than the {max_bytes:,} "
                               f"allowed")
        written = 0
        with _open_partial(partial, append=bool(have)) as handle, progress_bar(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(partial[:-len(PARTIAL_SUFFIX)]), disable=not progress,
                leave=False) as bar:
            for chunk in response.iter_content(CHUNK):
                if length is not None and written + len(chunk) > length:
                    chunk = chunk[:length - written]  # never more than the server declared
                if have + written + len(chunk) > max_bytes:
                    raise BodyTooLarge(f"{url} sent more than the {max_bytes:,} bytes allowed")
                handle.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
                if length is not None and written >= length:
                    break
        if length is not None and written < length:
            raise requests.exceptions.ChunkedEncodingError(
                f"connection closed after {written} of {length} bytes")
    return True


def _open_partial(partial, append):
    """The temp file, opened without following links and locked against a second download."""
    try:
        handle = open_nofollow(partial, append=True)  # never truncate before holding the lock
    except UserError as error:
        raise DownloadRefused(str(error)) from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DownloadRefused(f"another download into {partial} is running; wait for it to "
                              f"finish") from None
    if not append:
        handle.truncate(0)
    return handle


def _range_starts_at(response, offset):
    """True when a 206 answer's Content-Range ("bytes 100-199/200") starts at `offset`."""
    content_range = response.headers.get("Content-Range", "")
    try:
        return int(content_range.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False
