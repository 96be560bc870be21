"""A tiny static HTTP file server on 127.0.0.1 for download tests (threaded, HTTP Range aware).

    with FileServer({"/w.h5": b"..."}) as server:
        url = server.url("/w.h5")
        server.cut_after = 1000      # the next responses send 1000 body bytes, then hang up
        ...
        server.requests              # [Request(path, range_header, status, sent), ...]

Bodies are bytes or paths of files on disk (served in chunks, so big archives stay on disk).
`cut_after` is the number of body bytes sent before the connection is closed (Content-Length
still announces the full length, so the client sees a broken transfer); `cut_times` limits it
to the first N responses. `ignore_range` makes the server answer ranged requests with 200.
"""
import dataclasses
import os
import re
import socket
import threading

from tests.local_server import (  # noqa: F401 (unused_port re-exported)
    LocalHTTPServer, QuietHandler, unused_port)

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclasses.dataclass
class Request:
    path: str
    range_header: str | None
    status: int
    sent: int  # body bytes actually written


class FileServer(LocalHTTPServer):
    def __init__(self, files=None, cut_after=None, cut_times=None, ignore_range=False):
        self.files = dict(files or {})
        self.cut_after = cut_after
        self.cut_times = cut_times
        self.ignore_range = ignore_range
        self.requests = []
        self._lock = threading.Lock()
        self._start_server()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def _take_cut(self):
        with self._lock:
            if self.cut_after is None:
                return None
            if self.cut_times is not None:
                if self.cut_times <= 0:
                    return None
                self.cut_times -= 1
            return self.cut_after

    def _handler_class(self):
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                range_header = self.headers.get("Range")
                if body is None:
                    self._send_status(404, range_header)
                    return
                size = os.path.getsize(body) if isinstance(body, (str, os.PathLike)) else len(body)
                start, end, status = 0, size - 1, 200
                match = _RANGE.match(range_header or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    if start >= size:
                        self._send_status(416, range_header, {"Content-Range": f"bytes */{size}"})
                        return
                    status = 206
                length = end - start + 1
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                limit = server._take_cut()
                to_send = length if limit is None else min(limit, length)
                sent = self._write_body(body, start, to_send)
                with server._lock:
                    server.requests.append(Request(self.path, range_header, status, sent))
                if to_send < length:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _write_body(self, body, start, count):
                sent = 0
                try:
                    if isinstance(body, (bytes, bytearray)):
                        self.wfile.write(body[start:start + count])
                        sent = count
                    else:
                        with open(body, "rb") as handle:
                            handle.seek(start)
                            while sent < count:
                                chunk = handle.read(min(1 << 16, count - sent))
                                if not chunk:
                                    break
                                self.wfile.write(chunk)
                                sent += len(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return sent

            def _send_status(self, status, range_header, headers=None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with server._lock:
                    server.requests.append(Request(self.path, range_header, status, 0))

        return Handler
