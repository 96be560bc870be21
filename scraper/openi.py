"""Stage 2, Open-i source: list the chest X-ray collection through the Open-i search API and
download every image with its MeSH terms and report text.

Reads:  {base}/api/search?query=&coll=cxr&m=..&n=..   JSON pages (m, n: 1-based, inclusive)
        {base}{imgLarge}                              one PNG (at most 512 px) per record
Writes: <data_dir>/images/<name>.png                  each checked to decode, written atomically
        <data_dir>/images-description.json            rewritten every few seconds and at the end
        <data_dir>/images-failures.json               only when something could not be had

    cxr-scrape data --limit 200
    python -m scraper.scrape data --source openi --workers 8 --max-rps 10

Politeness and robustness: every request (API pages, images and every retry) starts through one
rate gate shared by all threads, so --max-rps is never exceeded; 429/5xx/timeouts/dropped
connections are retried with exponential backoff and Retry-After pauses the whole scraper; a
body that is not an image (an HTML maintenance page served with 200, a truncated PNG) is retried
a few times and then recorded as failed, never saved; 404 fails at once. A re-run requests no
image already saved and valid; a killed run leaves only complete images and a description that
lists only images on disk.

Hostile or broken servers: image URLs are built only on --base-url's own scheme and host (an
`imgLarge` of "@other-host/x.png" or "//other-host/x.png" is refused as a listed failure, and
so is a redirect to another host); every body is read with a cap (MAX_IMAGE_BYTES per image,
MAX_PAGE_BYTES per API page, and never past its Content-Length), so an endless body cannot
fill memory; an image over the pixel limit (scraper.images) fails at once, without retries.
"""
import concurrent.futures
import dataclasses
import email.utils
import json
import os
import posixpath
import re
import threading
import time
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from bs4 import BeautifulSoup
from scraper.cli import UserError, fmt_count, is_environment_error, log, progress_bar
from scraper.fileio import atomic_write_bytes, remove_stale_temp_files
from scraper.http_client import (MAX_IMAGE_BYTES, RETRY_STATUSES, BodyTooLarge, RateLimiter,
                                 describe_request_error, make_session, read_body)
from scraper.images import (BadImage, ImageTooLarge, check_image_bytes, check_image_file,
                            is_image_name)
from scraper.schema import (DESCRIPTION_FILE, IMAGES_DIR, file_name_problem, mesh_labels,
                            load_descriptions, make_record, save_descriptions)
from scraper.summary import ScrapeSummary, finish, require_saved

DEFAULT_BASE_URL = "https://openi.nlm.nih.gov"
DEFAULT_WORKERS = 8
# 10 requests/s is the rate NLM grants registered E-utilities clients; Open-i publishes no
# limit, so we stay at that level. See benchmarks/bench_scraper.py for what it costs.
DEFAULT_MAX_RPS = 10.0
DEFAULT_TIMEOUT = 30.0        # seconds, connect and read
DEFAULT_RETRIES = 4           # extra attempts after the first
DEFAULT_BACKOFF = 1.0         # first retry waits 1 s, then 2, 4, 8 ...
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 300.0       # a Retry-After longer than this is cut to it
BAD_BODY_RETRIES = 2          # an HTML page / truncated PNG served with 200: retried this often
PAGE_SIZE = 100               # records asked per API page (the server may return fewer)
MAX_PAGE_BYTES = 32 << 20     # a real 100-record page is ~300 KB
CHECKPOINT_SECONDS = 2.0      # rewrite images-description.json at most this often ...
CHECKPOINT_IMAGES = 200       # ... or after this many new images, whichever comes first
# Aim a little under the cap: request starts are spaced 1/(0.95*max_rps) apart, so scheduling
# jitter between our clock and the server's cannot squeeze max_rps + 1 starts into one second.
RATE_MARGIN = 0.95

NO_INTERNET_HINT = "no internet? use --source archive with local files or --source folder"
_VIEW_PATTERNS = (("PA", re.compile(r"\b(PA|postero-?anterior)\b", re.I)),
                  ("AP", re.compile(r"\b(AP|antero-?posterior)\b", re.I)),
                  ("lateral", re.compile(r"\b(lat|lateral)\b", re.I)))


class FetchFailed(Exception):
    """A request that cannot succeed (404, retries used up, body never decodes); `network` is
    True when the last attempt never got an HTTP answer (connection refused, DNS, timeout)."""

    def __init__(self, reason, network=False):
        super().__init__(reason)
        self.network = network


@dataclasses.dataclass
class RetryPolicy:
    retries: int = DEFAULT_RETRIES              # extra attempts after the first
    backoff: float = DEFAULT_BACKOFF            # seconds before the first retry, doubling
    max_backoff: float = MAX_BACKOFF
    bad_body_retries: int = BAD_BODY_RETRIES    # of those, how many for undecodable bodies
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(self, attempt):
        """Backoff before retry number `attempt` + 1 (attempt counts from 0)."""
        return min(self.backoff * (2 ** attempt), self.max_backoff)


class RequestGate:
    """Every request start passes here: the shared rate cap, plus a pause for all threads
    when a server answers 429/503 with Retry-After (it asked us, not one thread, to wait)."""

    def __init__(self, max_rps):
        self.limiter = RateLimiter(max_rps * RATE_MARGIN if max_rps else None)
        self._resume_at = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds):
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def wait(self):
        while True:
            with self._lock:
                delay = self._resume_at - time.monotonic()
            if delay <= 0:
                break
            time.sleep(delay)
        self.limiter.wait()


def parse_retry_after(value):
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ForeignURL(requests.exceptions.InvalidURL):
    """A URL (from a record or a redirect) that leaves the Open-i server we were given."""


def same_origin(url, base_url):
    """True when `url` is on base_url's host and port, with no user-info, over http(s); an
    upgrade from http to https on the same host is allowed (servers redirect to it)."""
    target, base = urlsplit(url), urlsplit(base_url)
    try:
        target_port, base_port = target.port, base.port
    except ValueError:  # a port that is not a number
        return False
    if ("@" in target.netloc or target.scheme not in ("http", "https")
            or not target.hostname or target.hostname != base.hostname):
        return False
    defaults = {"http": 80, "https": 443}
    target_port = target_port or defaults[target.scheme]
    if target.scheme == base.scheme:
        return target_port == (base_port or defaults[base.scheme])
    return (base.scheme, target.scheme) == ("http", "https") and target_port == 443


def image_url(base_url, img_large):
    """{base}{imgLarge} for an absolute path on the API's own server; ValueError otherwise
    ("@evil:9/x.png" would put the base in the user-info and fetch from evil)."""
    path = str(img_large)
    if not path.startswith("/") or path.startswith("//") or "\\" in path or any(
            ord(c) < 33 for c in path):
        raise ValueError(f"image path {path[:80]!r} is not an absolute path on the server")
    base = urlsplit(base_url)
    parts = urlsplit(path)
    url = urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path,
                      parts.query, ""))
    if not same_origin(url, base_url):
        raise ValueError(f"image path {path[:80]!r} leaves {base_url}")
    return url


def gated_get(session, gate, url, params=None, timeout=DEFAULT_TIMEOUT, max_redirects=5):
    """One streamed GET whose redirect hops also pass the gate (requests would follow them
    unseen) and may not leave the first URL's host. The caller has passed the gate for hop 1."""
    origin = url
    for hop in range(max_redirects + 1):
        if hop:
            gate.wait()
        response = session.get(url, params=params, timeout=timeout, allow_redirects=False,
                               stream=True)
        if not response.is_redirect:
            return response
        url, params = urljoin(response.url, response.headers["Location"]), None
        response.close()
        if not same_origin(url, origin):
            raise ForeignURL(f"redirected to another server ({url[:120]}); refused")
    raise requests.exceptions.TooManyRedirects(f"more than {max_redirects} redirects")


def fetch(session, gate, url, accept, policy, timeout, params=None, retry_connect=True):
    """GET `url` until `accept(response)` returns a value; FetchFailed with the reason otherwise.

    Every attempt passes the gate. Retried: connection errors (unless `retry_connect` is
    False), timeouts, broken transfers, 429 and 5xx (waiting Retry-After when given), and bodies
    `accept` rejects with BadImage (at most policy.bad_body_retries times). Other statuses
    (404, 403 ...) fail at once.
    """
    bad_bodies, network = 0, False
    for attempt in range(policy.retries + 1):
        gate.wait()
        wait, network = policy.delay(attempt), False
        response = None
        try:
            response = gated_get(session, gate, url, params, timeout)
            if response.status_code == 200:
                return accept(response)
        except (BodyTooLarge, ImageTooLarge, ForeignURL) as error:
            raise FetchFailed(str(error)) from None  # the same answer would come again
        except requests.exceptions.ConnectionError as error:
            reason, connected = _connection_problem(error, url)
            network = True
            if not retry_connect and not connected:
                raise FetchFailed(reason, network) from None
        except requests.exceptions.Timeout as error:
            reason, network = describe_request_error(error, url), True
        except (requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as error:
            reason = describe_request_error(error, url)
        except BadImage as error:
            reason = f"{error} (HTTP 200, Content-Type {response.headers.get('Content-Type')})"
            bad_bodies += 1
            if bad_bodies > policy.bad_body_retries:
                raise FetchFailed(f"{reason}, {bad_bodies} times") from None
        except requests.exceptions.RequestException as error:  # invalid URL, too many redirects
            raise FetchFailed(describe_request_error(error, url)) from None
        else:
            response.close()
            status = response.status_code
            reason = f"HTTP {status} {response.reason or ''}".rstrip()
            if status not in RETRY_STATUSES:
                raise FetchFailed(reason)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                retry_after = min(retry_after, policy.max_retry_after)
                gate.pause(retry_after)
                wait = max(wait, retry_after)
        if attempt == policy.retries:
            break
        time.sleep(wait)
    raise FetchFailed(f"{reason} (gave up after {policy.retries + 1} attempts)", network)


def _connection_problem(error, url):
    """(reason, connected) for a requests ConnectionError. With urllib3 retries off, a read
    timeout or a connection dropped before the headers also arrives as ConnectionError; only
    DNS failures, refused connections and connect timeouts mean we never got through."""
    cause = getattr(error.args[0], "reason", None) if error.args else None
    if isinstance(cause, urllib3.exceptions.ReadTimeoutError):
        return f"timed out talking to {url}", True
    return (describe_request_error(error, url),
            not isinstance(cause, urllib3.exceptions.ConnectTimeoutError))


# ---- records -------------------------------------------------------------------------------

def parse_abstract(html):
    """Open-i's report HTML -> {"findings": ..., "impression": ..., ...} (lower-case section
    names; '<p><b>Findings: </b>The heart ...</p>' -> {"findings": "The heart ..."})."""
    sections = {}
    if not html:
        return sections
    soup = BeautifulSoup(html, "html.parser")
    for paragraph in soup.find_all("p"):
        label = paragraph.find("b")
        if label is None:
            continue
        name = label.get_text(" ", strip=True).rstrip(":").strip().lower()
        label.extract()
        text = " ".join(paragraph.get_text(" ", strip=True).split())
        if name:
            sections[name] = text
    return sections


def guess_view(caption):
    """'PA', 'AP' or 'lateral' when the caption names exactly one of them, else None
    ('Xray Chest PA and Lateral' describes a study with two views: ambiguous -> None)."""
    found = [view for view, pattern in _VIEW_PATTERNS if pattern.search(caption or "")]
    return found[0] if len(found) == 1 else None


def record_from_api(item, base_url):
    """One API list entry -> a schema record (source "openi"); ValueError if it has no image."""
    img_large = str(item.get("imgLarge") or "")
    name = posixpath.basename(urlsplit(img_large).path)
    if not is_image_name(name):
        raise ValueError(f"record {str(item.get('uid'))[:80]!r} has no usable image path "
                         f"({img_large[:80]!r})")
    problem = file_name_problem(name)
    if problem:
        raise ValueError(f"record {str(item.get('uid'))[:80]!r}: {problem}")
    try:
        url = image_url(base_url, img_large)
    except ValueError as error:
        raise ValueError(f"record {str(item.get('uid'))[:80]!r}: {error}") from None
    mesh = item.get("MeSH") or {}
    items = [str(term) for term in (mesh.get("major") or [])]
    sections = parse_abstract(item.get("abstract") or "")
    caption = str((item.get("image") or {}).get("caption") or "")
    uid = str(item.get("uid") or "").strip() or os.path.splitext(name)[0]
    return make_record(
        name, "openi", url=url, type="MeSH", items=items,
        **mesh_labels(items), report_id=uid, findings=sections.get("findings", ""),
        impression=sections.get("impression") or str(item.get("impression") or "").strip(),
        caption=caption, view=guess_view(caption),
        license=str(item.get("licenseURL") or item.get("ccLicense") or ""))


# ---- bookkeeping ---------------------------------------------------------------------------

class _Book:
    """Thread-safe state of one run; the description on disk only ever lists images on disk."""

    def __init__(self, data_dir, existing, bar, checkpoint_seconds, checkpoint_images):
        self.path = os.path.join(data_dir, DESCRIPTION_FILE)
        self.records = {record["name"]: record for record in existing}
        self.failures = {}
        self.saved = self.present = 0
        self.bar = bar
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_images = checkpoint_images
        self._unwritten = 0
        self._last_write = time.monotonic()
        self._lock = threading.Lock()

    def kept(self, record, present):
        with self._lock:
            self.records[record["name"]] = record
            self.failures.pop(record["name"], None)
            if present:
                self.present += 1
            else:
                self.saved += 1
            self._unwritten += 1
            if (self._unwritten >= self.checkpoint_images
                    or time.monotonic() - self._last_write >= self.checkpoint_seconds):
                self._write()
            self.bar.update(1)

    def failed(self, record, reason):
        with self._lock:
            self.records.pop(record["name"], None)
            self.failures[record["name"]] = {"name": record["name"], "url": record["url"],
                                             "reason": reason}
            self.bar.update(1)

    def forget(self, name):
        """The file on disk is not a valid image: it must not stay described."""
        with self._lock:
            self.records.pop(name, None)

    def checkpoint(self):
        with self._lock:
            self._write()

    def _write(self):
        save_descriptions(self.path, list(self.records.values()))
        self._unwritten = 0
        self._last_write = time.monotonic()


def _existing_records(data_dir):
    """Records of an earlier run (any source) whose image is still on disk."""
    path = os.path.join(data_dir, DESCRIPTION_FILE)
    if not os.path.exists(path):
        return []
    records = load_descriptions(path)
    return [r for r in records if os.path.isfile(os.path.join(data_dir, r["image"]))]


# ---- API listing ---------------------------------------------------------------------------

def _json_page(response):
    try:
        page = json.loads(read_body(response, MAX_PAGE_BYTES))
    except ValueError:
        raise BadImage(f"not JSON (Content-Type {response.headers.get('Content-Type')})") from None
    if not isinstance(page, dict) or not isinstance(page.get("list", []), list):
        raise BadImage("JSON without a 'list' of records")
    return page


class ListingStopped(Exception):
    """The listing ended early after some records were already handed out."""


def iter_pages(session, gate, base_url, policy, timeout, query="", collection="cxr",
               limit=None, page_size=PAGE_SIZE):
    """Yield (items, total) per API page, following the server's max/total.

    The first page failing raises UserError (nothing can be done); a later page failing, or a
    server that stops making progress, raises ListingStopped (images listed so far are kept).
    """
    url = base_url.rstrip("/") + "/api/search"
    m, total, handed_out = 1, None, 0
    while limit is None or handed_out < limit:
        if total is not None and m > total:
            return
        n = m + page_size - 1
        if limit is not None:
            n = min(n, m + (limit - handed_out) - 1)
        if total is not None:
            n = min(n, total)
        params = {"query": query, "coll": collection, "m": m, "n": n}
        try:
            page = fetch(session, gate, url, _json_page, policy, timeout, params=params,
                         retry_connect=m != 1)
        except FetchFailed as error:
            if m == 1:  # nothing listed yet: one clear line
                raise UserError(f"{error} - {NO_INTERNET_HINT}" if error.network
                                else f"Open-i API {url}: {error}") from None
            raise ListingStopped(f"API page m={m} n={n} failed: {error}") from None
        items = page.get("list") or []
        try:
            total = int(page.get("total", m + len(items) - 1))
            last = int(page.get("max", m + len(items) - 1))
        except (TypeError, ValueError):
            raise ListingStopped(f"API page m={m}: unreadable max/total") from None
        if not items or last < m:
            if total >= m:
                raise ListingStopped(f"API page m={m} n={n} returned no records although "
                                     f"total is {fmt_count(total)} (server made no progress)")
            return
        if limit is not None:
            items = items[:limit - handed_out]
        handed_out += len(items)
        yield items, total
        m = last + 1


# ---- images --------------------------------------------------------------------------------

def _image_body(response):
    data = read_body(response, MAX_IMAGE_BYTES)
    check_image_bytes(data)  # raises BadImage: HTML page, truncated PNG, empty body
    return data


def _fetch_one(record, data_dir, session, gate, policy, timeout, book):
    path = os.path.join(data_dir, record["image"])
    if os.path.exists(path):
        try:
            check_image_file(path)
        except (BadImage, OSError):
            book.forget(record["name"])  # re-download below; the bad file is overwritten
        else:
            book.kept(record, present=True)
            return
    try:
        data = fetch(session, gate, record["url"], _image_body, policy, timeout)
        atomic_write_bytes(path, data)
    except FetchFailed as error:
        book.failed(record, str(error))
    except OSError as error:
        if is_environment_error(error):
            raise  # a full or read-only disk fails every image: stop with one line
        book.failed(record, f"cannot write {path}: {error.strerror or error}")
    else:
        book.kept(record, present=False)


def scrape_openi(data_dir, base_url=DEFAULT_BASE_URL, limit=None, workers=DEFAULT_WORKERS,
                 max_rps=DEFAULT_MAX_RPS, timeout=DEFAULT_TIMEOUT, retries=DEFAULT_RETRIES,
                 query="", collection="cxr", progress=True, backoff=DEFAULT_BACKOFF,
                 page_size=PAGE_SIZE, checkpoint_seconds=CHECKPOINT_SECONDS,
                 checkpoint_images=CHECKPOINT_IMAGES, session=None):
    """Scrape Open-i into `data_dir`; returns the ScrapeSummary (its line is printed)."""
    summary = ScrapeSummary()
    images_dir = os.path.join(data_dir, IMAGES_DIR)
    try:
        os.makedirs(images_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {images_dir}: {error.strerror or error}") from None
    stale = remove_stale_temp_files(images_dir) + remove_stale_temp_files(data_dir)
    if stale:
        log(f"removed {fmt_count(stale)} temp file(s) left by an interrupted run")
    existing = _existing_records(data_dir)
    session = session or make_session(retries=0, pool_size=workers + 2)  # retries are ours
    gate = RequestGate(max_rps)
    policy = RetryPolicy(retries=retries, backoff=backoff,
                         bad_body_retries=min(BAD_BODY_RETRIES, retries))
    pages = iter_pages(session, gate, base_url, policy, timeout, query, collection, limit,
                       page_size)
    # The first page comes before the progress bar, so "cannot reach" stays one line.
    try:
        first = next(pages, None)
    except ListingStopped as error:
        raise UserError(f"Open-i API {base_url}: {error}") from None
    bar = progress_bar(total=0, unit="img", desc="images", disable=not progress,
                       dynamic_ncols=True)
    book = _Book(data_dir, existing, bar, checkpoint_seconds, checkpoint_images)
    listing_error, seen, futures = None, set(), []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        batches = _chain_first(first, pages)
        try:
            for items, total in batches:
                for item in items:
                    try:
                        record = record_from_api(item, base_url)
                    except ValueError as error:
                        summary.skipped += 1
                        log(f"skipped: {error}")
                        continue
                    if record["name"] in seen:
                        summary.skipped += 1
                        continue
                    seen.add(record["name"])
                    futures.append(pool.submit(_fetch_one, record, data_dir, session, gate,
                                               policy, timeout, book))
                bar.total = len(futures)
                bar.refresh()
        except ListingStopped as error:
            listing_error = str(error)
        for future in concurrent.futures.as_completed(futures):
            future.result()  # re-raise programming errors; fetch failures are in the book
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        book.checkpoint()  # Ctrl-C: what is on disk stays described
        raise
    pool.shutdown()
    bar.close()
    summary.saved, summary.present = book.saved, book.present
    failures = list(book.failures.values())
    finish(data_dir, list(book.records.values()), failures, summary)
    if listing_error:
        raise UserError(f"{listing_error}; the {fmt_count(len(futures))} images listed before "
                        f"were handled, re-run to continue")
    if not futures and not summary.skipped:
        raise UserError(f"Open-i {base_url} listed no images for query {query!r} in "
                        f"collection {collection!r}: nothing saved")
    return require_saved(summary, f"Open-i {base_url}", sorted(failures, key=lambda f: f["name"]))


def _chain_first(first, pages):
    if first is not None:
        yield first
        yield from pages
