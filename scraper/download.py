"""Resumable, hash-checked downloads (the weights in stage 1, the bulk archives in stage 2).

The bytes stream into `<target>.download` beside the target, with a progress bar; a re-run
continues that file with an HTTP Range request; the hash is checked before the atomic rename,
so the target is either absent, the previous file, or the complete verified file.
"""
import contextlib
import os
import shutil

import requests
from scraper.cli import UserError, log, progress_bar
from scraper.fileio import atomic_write, file_hash
from scraper.http_client import DEFAULT_TIMEOUT, describe_request_error, make_session

PARTIAL_SUFFIX = ".download"
CHUNK = 1 << 16


class HashMismatch(UserError):
    pass


def guess_algorithm(expected_hash):
    """Keras convention: 64 hex digits = sha256, 32 = md5."""
    return "sha256" if len(expected_hash) == 64 else "md5"


def verify_hash(path, expected_hash):
    if not expected_hash:
        return True
    return file_hash(path, guess_algorithm(expected_hash)) == expected_hash.lower()


def download(url, target, expected_hash=None, session=None, timeout=DEFAULT_TIMEOUT,
             progress=True, max_resumes=5):
    """Download `url` to `target`; return "present" if it already verifies, else "downloaded".

    Raises UserError (one line) when the host is unreachable or the hash does not match.
    """
    target = os.fspath(target)
    if os.path.exists(target) and expected_hash and verify_hash(target, expected_hash):
        return "present"
    os.makedirs(os.path.dirname(os.path.abspath(target)) or ".", exist_ok=True)
    partial = target + PARTIAL_SUFFIX
    session = session or make_session()
    for _ in range(max_resumes + 1):
        try:
            complete = _fetch(session, url, partial, timeout, progress)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            if not os.path.exists(partial) or os.path.getsize(partial) == 0:
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
        with open(source_path, "rb") as source_file, atomic_write(target) as handle:
            shutil.copyfileobj(source_file, handle, CHUNK * 16)
    return "downloaded"


def _fetch(session, url, partial, timeout, progress):
    """One GET (ranged if a partial file exists). True when the server sent the whole rest."""
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
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
        length = response.headers.get("Content-Length")
        total = int(length) + have if length and length.isdigit() else None
        mode = "ab" if have else "wb"
        written = 0
        with open(partial, mode) as handle, progress_bar(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(partial[:-len(PARTIAL_SUFFIX)]), disable=not progress,
                leave=False) as bar:
            for chunk in response.iter_content(CHUNK):
                handle.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if length and length.isdigit() and written < int(length):
            raise requests.exceptions.ChunkedEncodingError(
                f"connection closed after {written} of {length} bytes")
    return True


def _range_starts_at(response, offset):
    """True when a 206 answer's Content-Range ("bytes 100-199/200") starts at `offset`."""
    content_range = response.headers.get("Content-Range", "")
    try:
        return int(content_range.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False
