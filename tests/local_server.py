"""The one way tests run an HTTP server: ThreadingHTTPServer on 127.0.0.1, port 0, own thread.

Subclasses define `_handler_class()` and call `_start_server()` from `__init__`; use them as
context managers. Nothing here listens anywhere but the loopback address.
"""
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def unused_port():
    """A TCP port on 127.0.0.1 that nothing listens on (for 'host unreachable' tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that keeps test output clean."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


def max_in_window(times, window=1.0):
    """Most of the sorted `times` (seconds) that fall within any `window`-second span."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


class LocalHTTPServer:
    def _handler_class(self):
        raise NotImplementedError

    def _start_server(self, queue_size=64, poll_interval=0.05):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = queue_size
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        args=(poll_interval,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    @property
    def port(self):
        return self._httpd.server_address[1]

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"
