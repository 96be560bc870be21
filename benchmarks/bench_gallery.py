"""Gallery benchmark: does the results gallery stay usable at 10,000+ cards?

For N generated cards (tests/learning/gallery_data.py: the entries stage 6 hands to
learning.explain.gallery.write_pages, with a few distinct tiny pictures cycled), it measures
  * write_s, ms_per_card: write_pages (index.html, gallery-data.js, assets, N detail pages);
  * data_kb: the size of gallery-data.js;
  * open_ms: headless Chromium, index.html from file://, navigation start -> first page of
    cards built (the page's own `cxr-cards-ready` mark; median of --repeats cold loads);
  * filter_ms, sort_ms: in the page, time to re-render after ticking only FN / sorting by
    p(abnormal) ascending, over ALL cards;
  * images_in_page, images_loaded: <img> elements in the document (only the shown page's
    cards have any: 2 per card + the ROC) and how many had loaded a second later.
One JSON line per N. Goal (issue 16): open_ms < 2,000 at N = 10,000.

Needs Chromium + chromedriver (Debian: apt-get install chromium chromium-driver) and selenium
(requirements-test.txt).

Example:
    python benchmarks/bench_gallery.py OUTPUT_FOLDER --cards 2000,10000,50000

Measured (2 cores shared with other jobs, Chromium 150 headless, median of 3 cold loads):
    cards    write_s  ms/card  data_kb  open_ms  filter_ms  sort_ms
    2,000      9.3     4.66*     448      295       27         39
    10,000    11.7     1.17     2,239     403       40         38
    50,000    58.7     1.17    11,192     904      153         81
    (* the first N of a run pays one-off costs.) Goal open_ms < 2,000 at 10,000: met (0.4 s),
    and at 50,000 too. Detail pages are written without an fsync each (durable=False): with
    one, 10,000 cards took 35.7 s (3.6 ms/card), 2/3 of it in fsync.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from learning.explain import gallery  # noqa: E402
from tests.learning import gallery_data  # noqa: E402
from tests.learning.test_gallery_browser import page_images, start_browser  # noqa: E402


def in_page_ms(driver, action):
    """Run `action` (JS statements) in the page; ms until the grid is rebuilt."""
    return driver.execute_script(
        "const t = performance.now();" + action + "; return performance.now() - t;")


def measure(driver, folder, n, repeats):
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    entries = gallery_data.make_entries(folder, n, distinct=16)
    header = gallery_data.make_header(gallery)
    start = time.perf_counter()
    gallery.write_pages(folder, entries, list(gallery_data.METHODS), header)
    write_s = time.perf_counter() - start
    uri = "file://" + os.path.abspath(os.path.join(folder, "index.html"))
    opens = []
    for _ in range(repeats):
        driver.get("about:blank")
        driver.get(uri)
        while driver.execute_script("return document.body.dataset.ready !== '1'"):
            time.sleep(0.01)
        opens.append(driver.execute_script(
            "return performance.getEntriesByName('cxr-cards-ready')[0].startTime"))
    images = page_images(driver)
    filter_ms = in_page_ms(
        driver, "document.querySelectorAll('.outcome').forEach(b => { b.checked = "
                "b.value === 'FN'; }); document.getElementById('search')"
                ".dispatchEvent(new Event('input'))")
    sort_ms = in_page_ms(
        driver, "const s = document.getElementById('sort'); s.value = 'p-asc';"
                "s.dispatchEvent(new Event('input'))")
    return {"cards": n, "write_s": round(write_s, 2), "ms_per_card": round(1000 * write_s / n, 3),
            "data_kb": round(os.path.getsize(os.path.join(folder, gallery.DATA_FILE)) / 1024),
            "open_ms": round(statistics.median(opens)), "open_ms_all": [round(t) for t in opens],
            "filter_ms": round(filter_ms, 1), "sort_ms": round(sort_ms, 1),
            "images_in_page": images["all"], "images_loaded": images["loaded"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="scratch folder for the generated results folders")
    parser.add_argument("--cards", default="2000,10000,50000",
                        help="comma list of card counts (default: 2000,10000,50000)")
    parser.add_argument("--repeats", type=int, default=3, help="cold loads per N (default 3)")
    args = parser.parse_args(argv)
    driver = start_browser()
    try:
        for n in (int(value) for value in args.cards.split(",")):
            print(json.dumps(measure(driver, os.path.join(args.output, f"cards-{n}"), n,
                                     args.repeats)), flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
