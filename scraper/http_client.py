"""The one HTTP set-up: a requests Session with urllib3 retries, timeouts and a user agent.

Retries cover connection errors, read errors and 429/500/502/503/504 with exponential backoff,
honouring Retry-After. Callers always pass a timeout and call raise_for_status().
"""
import sys
import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

MAX_IMAGE_BYTES = 50 << 20  # one X-ray; Open-i's PNGs are < 1 MB, a 16-bit full-size scan < 40 MB
USER_AGENT = "cxr-localization/0.1 (+research pipeline; polite scraper)"
DEFAULT_TIMEOUT = (10, 60)  # (connect, read) seconds
RETRY_STATUSES = (429, 500, 502, 503, 504)


class AnnouncedRetry(Retry):
    """Retry that says on stderr what it is waiting for: stage 1's five retries offline add up
    to 15 s, which look like a hang without a word."""

    def sleep(self, response=None):
        wait = (self.get_retry_after(response) if response is not None else None)
        wait = self.get_backoff_time() if wait is None else wait
        last = self.history[-1] if self.history else None
        reason = (f"HTTP {last.status}" if last and last.status else
                  str(last.error).split(": ")[-1][:120] if last and last.error else "no answer")
        if wait > 0:
            print(f"  {reason}; retry {len(self.history)} of {len(self.history) + self.total} "
                  f"in {wait:.1f} s", file=sys.stderr, flush=True)
        super().sleep(response)


def make_session(retries=5, backoff=0.5, pool_size=16, max_backoff=30, announce=False):
    """Session retrying idempotent GETs; backoff doubles each try (0.5, 1, 2, 4 s ...).
    `announce`: print one line per retry wait (for single downloads, not concurrent scrapes)."""
    retry_class = AnnouncedRetry if announce else Retry
    retry = retry_class(total=retries, connect=retries, read=retries, status=retries,
                        backoff_factor=backoff, backoff_max=max_backoff,
                        status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "HEAD"}),
                        respect_retry_after_header=True, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


class RateLimiter:
    """Thread-safe cap on request starts: at most `max_rps` per second (None/0 = no cap)."""

    def __init__(self, max_rps):
        self.interval = 1.0 / max_rps if max_rps else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self):
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class BodyTooLarge(requests.exceptions.RequestException):
    """A response larger than its declared Content-Length or than the reader's cap."""


def declared_length(response):
    """Content-Length as an int, or None when absent or unreadable."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def read_body(response, max_bytes, chunk_size=1 << 16):
    """The body of a streamed (stream=True) response, never more than `max_bytes`.

    Refuses at once a declared Content-Length over the cap, and stops reading an endless or
    chunked body as soon as it passes the cap (BodyTooLarge), so memory stays bounded.
    """
    declared = declared_length(response)
    if declared is not None and declared > max_bytes:
        response.close()
        raise BodyTooLarge(f"response of {declared:,} bytes (Content-Length) from "
                           f"{response.url}, more than the {max_bytes:,} allowed")
    parts, size = [], 0
    for chunk in response.iter_content(chunk_size):
        size += len(chunk)
        if size > max_bytes:
            response.close()
            raise BodyTooLarge(f"response from {response.url} passed {max_bytes:,} bytes; "
                               f"stopped reading")
        parts.append(chunk)
    return b"".join(parts)


def describe_request_error(error, url):
    """One human line for a requests exception (no traceback)."""
    if isinstance(error, requests.exceptions.ConnectionError):
        return f"cannot reach {url} (connection failed: {_root_cause(error)})"
    if isinstance(error, requests.exceptions.Timeout):
        return f"timed out talking to {url}"
    if isinstance(error, requests.exceptions.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason} from {url}"
    return f"request to {url} failed: {error}"


def _root_cause(error):
    cause = error
    while getattr(cause, "__context__", None) is not None or getattr(cause, "reason", None):
        nxt = getattr(cause, "reason", None) or cause.__context__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    text = str(cause)
    return text.split(": ", 1)[-1][:200] if text else type(cause).__name__
