"""A fake Open-i server on 127.0.0.1 for tests and benchmarks (real HTTP, threaded, port 0).

It speaks the shape of GET /api/search?query=&coll=cxr&m=..&n=.. (records built from the real
captured record in tests/fixtures/openi/api-search-response.json, varying uid, imgLarge, MeSH,
abstract and caption) and serves real PNGs from demo/nih-24/images at each record's imgLarge.

    with FakeOpenI(n_records=12, page_limit=5, latency=0.05) as server:
        server.fault(server.names[3], "500", times=1)     # 500 once, then the image
        scrape_openi(data_dir, base_url=server.base_url)
        server.count(server.image_path(server.names[3]))  # -> 2 requests
        server.max_in_window(1.0)                         # most requests started in any 1 s

Faults (per image name, or API_PATH for the API pages), each for the first `times` requests
(None = always): "500", "503", "429" (with `retry_after` seconds), "drop" (announce the full
Content-Length, send half the body, close the socket), "html" (200 + text/html maintenance
page), "truncated" (200 + a PNG cut in half, consistent Content-Length), "404",
"redirect" (302 to MOVED + path, which serves the image), "hang" (wait `delay` seconds
before answering normally: a client timeout); hostile ones: "endless" (a chunked body that
never ends: PNG bytes, then zeros until the client hangs up), "huge" (announce a 10 GB
Content-Length, send 1 KB, close), "offsite" (302 to `location`, another server).
`page_limit` makes the API return at most that many records per page (short pages);
`stall_at` makes it return no records for any page starting at or after that 1-based index.
"""
import copy
import json
import os
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

from tests.local_server import (  # noqa: F401 (unused_port re-exported)
    LocalHTTPServer, QuietHandler, max_in_window, unused_port)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "openi", "api-search-response.json")
DEMO_IMAGES = os.path.join(ROOT, "demo", "nih-24", "images")
API_PATH = "/api/search"
FAULT_KINDS = ("500", "503", "429", "drop", "html", "truncated", "404", "redirect", "hang",
               "endless", "huge", "offsite")
MOVED = "/moved"  # "redirect" sends a 302 to MOVED + path, where the same body is served

# MeSH major terms per report, cycled: normal, abnormal (two terms), unlabelled, abnormal.
DEFAULT_MESH = (["normal"], ["Cardiomegaly/mild", "Pulmonary Atelectasis/base/left"],
                ["No Indexing"], ["Opacity/lung/base/right"])
CAPTIONS = ("Xray Chest PA and Lateral", "Chest PA view", "Chest lateral view")
MAINTENANCE_PAGE = (b"<!DOCTYPE html><html><head><title>Open-i maintenance</title></head>"
                    b"<body><h1>Service temporarily unavailable</h1></body></html>")


def load_template():
    with open(FIXTURE, encoding="utf-8") as handle:
        return json.load(handle)["list"][0]


def make_api_records(n_records, mesh=DEFAULT_MESH, images_per_report=2):
    """`n_records` API records, `images_per_report` images per report (uid)."""
    template = load_template()
    records = []
    for index in range(n_records):
        report, image = index // images_per_report + 1, index % images_per_report + 1
        terms = list(mesh[(report - 1) % len(mesh)])
        item = copy.deepcopy(template)
        item["uid"] = f"CXR{report}"
        stem = f"CXR{report}_{image}_IM-{report:04d}-{1000 + image}"
        for key, size in (("imgThumb", 100), ("imgLarge", 512), ("imgThumbLarge", 137),
                          ("imgGrid150", 150)):
            item[key] = f"/imgs/{size}/{report}/{image}/{stem}.png"
        item["MeSH"] = {"major": terms, "minor": []}
        item["Problems"] = ";".join(terms)
        impression = f"Impression number {report}."
        item["impression"] = impression
        if report % 5 == 0:  # some reports have no Findings/Impression paragraphs
            item["abstract"] = "<p><b>Indication: </b>Cough</p>"
        else:
            item["abstract"] = (f"<p><b>Comparison: </b>None.</p><p><b>Findings: </b>Findings of "
                                f"report {report}: {', '.join(terms)}.</p>"
                                f"<p><b>Impression: </b>{impression}</p>")
        item["image"] = dict(item["image"], caption=CAPTIONS[index % len(CAPTIONS)])
        records.append(item)
    return records


class FakeOpenI(LocalHTTPServer):
    def __init__(self, n_records=12, page_limit=None, latency=0.0, mesh=DEFAULT_MESH,
                 images_dir=DEMO_IMAGES, stall_at=None, total=None):
        self.records = make_api_records(n_records, mesh)
        self.names = [os.path.basename(r["imgLarge"]) for r in self.records]
        sources = sorted(f for f in os.listdir(images_dir) if f.endswith(".png"))
        self.bodies = {}
        for index, record in enumerate(self.records):
            with open(os.path.join(images_dir, sources[index % len(sources)]), "rb") as handle:
                self.bodies[record["imgLarge"]] = handle.read()
        self.page_limit = page_limit
        self.latency = latency
        self.stall_at = stall_at
        self.total = total  # announce a different total than the records held
        self.faults = {}    # path -> [kind, remaining (None = always), retry_after]
        self.requests = []  # (monotonic time at arrival, path, query dict)
        self._lock = threading.Lock()
        self._start_server(poll_interval=0.5)

    # -- lifecycle ---------------------------------------------------------------------------

    # -- configuration -----------------------------------------------------------------------
    def image_path(self, name):
        return next(r["imgLarge"] for r in self.records if r["imgLarge"].endswith("/" + name))

    def body(self, name):
        return self.bodies[self.image_path(name)]

    def fault(self, name, kind, times=None, retry_after=None, delay=1.0, location=None):
        """Make requests for image `name` (or API_PATH) fail with `kind`."""
        assert kind in FAULT_KINDS, kind
        path = name if name == API_PATH else self.image_path(name)
        extra = {"hang": delay, "offsite": location}.get(kind, retry_after)
        self.faults[path] = [kind, times, extra]

    # -- observations ------------------------------------------------------------------------
    def count(self, path):
        with self._lock:
            return sum(1 for _, p, _ in self.requests if p == path)

    def times(self, path):
        with self._lock:
            return [t for t, p, _ in self.requests if p == path]

    def api_requests(self):
        with self._lock:
            return [q for _, p, q in self.requests if p == API_PATH]

    def image_request_count(self):
        with self._lock:
            return sum(1 for _, p, _ in self.requests if p != API_PATH)

    def max_in_window(self, window=1.0):
        """Most requests that arrived within any `window` seconds (server clock)."""
        with self._lock:
            times = sorted(t for t, _, _ in self.requests)
        return max_in_window(times, window)

    # -- serving -----------------------------------------------------------------------------
    def _take_fault(self, path):
        with self._lock:
            fault = self.faults.get(path)
            if fault is None:
                return None, None
            kind, remaining, retry_after = fault
            if remaining is not None:
                if remaining <= 0:
                    return None, None
                fault[1] = remaining - 1
            return kind, retry_after

    def _page(self, query):
        m = int(query.get("m", ["1"])[0])
        n = int(query.get("n", ["10"])[0])
        total = len(self.records) if self.total is None else self.total
        last = min(n, len(self.records))
        if self.page_limit:
            last = min(last, m + self.page_limit - 1)
        if self.stall_at is not None and m >= self.stall_at:
            last = m - 1
        items = self.records[m - 1:last] if last >= m else []
        return {"min": m, "max": m + len(items) - 1, "count": len(items), "total": total,
                "approximage": "false", "list": items}

    def _handler_class(self):
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                arrived = time.monotonic()
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                with server._lock:
                    server.requests.append((arrived, parts.path, query))
                if server.latency:
                    time.sleep(server.latency)
                kind, retry_after = server._take_fault(parts.path)
                if parts.path == API_PATH:
                    body, ctype = json.dumps(server._page(query)).encode(), "application/json"
                elif parts.path in server.bodies:
                    body, ctype = server.bodies[parts.path], "image/png"
                elif parts.path.startswith(MOVED) and parts.path[len(MOVED):] in server.bodies:
                    body, ctype = server.bodies[parts.path[len(MOVED):]], "image/png"
                else:
                    kind = "404"
                if kind in ("500", "503", "404"):
                    return self._send(int(kind), b"error", "text/plain")
                if kind == "429":
                    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    return self._send(429, b"slow down", "text/plain", headers)
                if kind == "hang":
                    time.sleep(retry_after)  # the fault's delay
                if kind == "redirect":
                    return self._send(302, b"", "text/plain", {"Location": MOVED + parts.path})
                if kind == "offsite":
                    return self._send(302, b"", "text/plain", {"Location": retry_after})
                if kind == "endless":
                    return self._send_endless(body)
                if kind == "huge":
                    return self._send(200, body[:1024], ctype,
                                      {"Content-Length": str(10 << 30)}, cut=1024)
                if kind == "html":
                    return self._send(200, MAINTENANCE_PAGE, "text/html")
                if kind == "truncated":
                    return self._send(200, body[:len(body) // 2], ctype)
                if kind == "drop":
                    return self._send(200, body, ctype, cut=len(body) // 2)
                return self._send(200, body, ctype)

            def _send_endless(self, body, limit=1 << 30):
                """Chunked transfer: the PNG, then zeros, until the client hangs up (or 1 GB)."""
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                chunk, sent = b"\0" * (1 << 16), 0
                try:
                    for part in [body] + [chunk] * (limit // len(chunk)):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        sent += len(part)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                with server._lock:
                    server.endless_sent = max(getattr(server, "endless_sent", 0), sent)

            def _send(self, status, body, ctype, headers=None, cut=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    if "Content-Length" not in (headers or {}):
                        self.send_header("Content-Length", str(len(body)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body if cut is None else body[:cut])
                    self.wfile.flush()
                    if cut is not None:  # hang up mid-body: the client sees a broken transfer
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler

