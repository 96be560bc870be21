"""Benchmark: the Open-i scraper (scraper/openi.py) vs a plain one-request-at-a-time client.

Both download the same N images from the fake Open-i server (tests/scraper/fake_openi.py, run in
its own process so it does not share our GIL), which waits `--latency` seconds before every
answer. Prints images/s of both, the speed-up, and the most requests the server saw start in any
1-s window (server clock) against --max-rps.

    python benchmarks/bench_scraper.py                        # defaults: 200 images, 50 ms
    python benchmarks/bench_scraper.py --max-rps 1000         # the cap lifted: concurrency alone
    python benchmarks/bench_scraper.py --latency 0.5 --images 40   # closer to a far-away server

What bounds the numbers: the scraper cannot beat max_rps images/s (it aims 5 % under the cap),
and the sequential client does about 1 / (latency + overhead) images/s; so the speed-up is at
most max_rps * (latency + overhead), e.g. 10 rps * ~0.06 s = 0.6x at 50 ms latency.
"""
import argparse
import multiprocessing
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import requests  # noqa: E402

from scraper import openi  # noqa: E402
from tests.local_server import max_in_window  # noqa: E402
from tests.scraper.fake_openi import FakeOpenI  # noqa: E402


def _serve(conn, n_records, latency):
    """Child process: run the fake server until told to stop, then send back arrival times."""
    with FakeOpenI(n_records=n_records, latency=latency) as server:
        conn.send(server.base_url)
        conn.recv()
        conn.send(sorted(t for t, _, _ in server.requests))


class ServerProcess:
    def __init__(self, n_records, latency):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, n_records, latency),
                                        daemon=True)

    def __enter__(self):
        self._process.start()
        self.base_url = self._conn.recv()
        return self

    def stop(self):
        """Stop the server; returns the arrival times (monotonic seconds) of every request."""
        self._conn.send("stop")
        times = self._conn.recv()
        self._process.join(10)
        return times

    def __exit__(self, *exc):
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


def sequential_client(base_url, data_dir, n_images, page_size=openi.PAGE_SIZE):
    """The baseline: list pages, then GET each image in turn and write it (requests.Session)."""
    session = requests.Session()
    images = os.path.join(data_dir, "images")
    os.makedirs(images, exist_ok=True)
    paths, m = [], 1
    while len(paths) < n_images:
        response = session.get(f"{base_url}/api/search", timeout=30,
                               params={"query": "", "coll": "cxr", "m": m,
                                       "n": min(m + page_size - 1, n_images)})
        response.raise_for_status()
        page = response.json()
        paths += [item["imgLarge"] for item in page["list"]]
        m = page["max"] + 1
    for path in paths[:n_images]:
        response = session.get(base_url + path, timeout=30)
        response.raise_for_status()
        with open(os.path.join(images, os.path.basename(path)), "wb") as handle:
            handle.write(response.content)
    return len(paths[:n_images])


def timed(function, n_images, latency):
    with ServerProcess(n_images, latency) as server:
        with tempfile.TemporaryDirectory() as data_dir:
            start = time.monotonic()
            done = function(server.base_url, data_dir)
            seconds = time.monotonic() - start
        times = server.stop()
    return done, seconds, times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images to download")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="seconds the fake server waits before every answer")
    parser.add_argument("--workers", type=int, default=openi.DEFAULT_WORKERS)
    parser.add_argument("--max-rps", type=float, default=openi.DEFAULT_MAX_RPS)
    args = parser.parse_args(argv)

    print(f"fake Open-i (own process): {args.images} images, {args.latency * 1000:.0f} ms "
          f"latency per request")
    done, seq_s, _ = timed(lambda url, d: sequential_client(url, d, args.images), args.images,
                           args.latency)
    seq_rate = done / seq_s
    print(f"sequential client (requests, one at a time): {done} images in {seq_s:.1f} s = "
          f"{seq_rate:.1f} img/s")

    def scraper(url, data_dir):
        summary = openi.scrape_openi(data_dir, base_url=url, limit=args.images,
                                     workers=args.workers, max_rps=args.max_rps, progress=False)
        assert summary.failed == 0, summary
        return summary.saved

    done, par_s, times = timed(scraper, args.images, args.latency)
    par_rate = done / par_s
    peak = max_in_window(times)
    print(f"scraper (workers {args.workers}, max-rps {args.max_rps:g}): {done} images in "
          f"{par_s:.1f} s = {par_rate:.1f} img/s")
    print(f"speed-up: {par_rate / seq_rate:.2f}x (goal >= 6x; bound with this cap: "
          f"{args.max_rps / seq_rate:.2f}x)")
    print(f"max requests started in any 1-s window (server clock): {peak} of {len(times)} "
          f"requests; cap {args.max_rps:g} -> {'OK' if peak <= args.max_rps else 'EXCEEDED'}")
    return 0 if peak <= args.max_rps else 1


if __name__ == "__main__":
    sys.exit(main())
