"""The gallery and a detail page in a real headless Chromium (Selenium + chromedriver).

Loads the pages from disk (file://, as a user opens them), with no console error; the outcome,
boxes and name filters change which cards are shown; sorting reorders them; every link and
image resolves; the detail page's view, opacity and boxes controls act on the layers.

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`; .ci/run
installs them). Without them the test is skipped locally with that reason; under CI
(CXR_REQUIRE_BROWSER=1, set by .ci/run) a missing browser is a failure, never a skip.
"""
import os
import shutil
from urllib.parse import unquote, urlparse

import pytest

if os.environ.get("CXR_REQUIRE_BROWSER"):
    from selenium import webdriver
else:
    webdriver = pytest.importorskip("selenium.webdriver")

CANDIDATES = {"browser": ("chromium", "chromium-browser", "google-chrome"),
              "driver": ("chromedriver",)}


def _find(kind):
    for name in CANDIDATES[kind]:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}")
                                      else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _find("browser"), _find("driver")
    if not (binary and driver_path):
        message = ("no Chromium + chromedriver found (Debian: apt-get install chromium "
                   "chromium-driver)")
        if os.environ.get("CXR_REQUIRE_BROWSER"):
            pytest.fail(message + "; CI requires the browser test")
        pytest.skip(message)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, path):
    driver.get(path.as_uri())
    driver.get_log("browser")  # drop messages of the previous page
    driver.refresh()


def _errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _check_resources(driver, folder):
    """Every <a href> resolves to a file in the results folder; every <img> decoded."""
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a'), a => a.href)")
    assert hrefs
    for link in hrefs:
        url = urlparse(link)
        assert url.scheme == "file", link
        assert os.path.isfile(unquote(url.path)), link
        assert os.path.dirname(unquote(url.path)) == str(folder), link
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.src)")
    assert broken == []


def _visible_names(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.card'))"
        ".filter(c => c.offsetParent !== null).map(c => c.dataset.name)")


def test_gallery_filters_sort_and_links(browser, stage6_run):
    from selenium.webdriver.common.by import By

    _open(browser, stage6_run / "index.html")
    for _ in range(2):  # lazy images load once scrolled into view
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        browser.execute_script("document.querySelectorAll('img').forEach(i => i.loading='eager')")
    assert _errors(browser) == []
    _check_resources(browser, stage6_run)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    outcomes = {card.get_attribute("data-name"): card.get_attribute("data-outcome")
                for card in cards}
    assert len(outcomes) == 3
    assert browser.find_element(By.ID, "shown-count").text == "3 of 3"
    ps = [float(card.get_attribute("data-p")) for card in cards]
    assert ps == sorted(ps, reverse=True)

    # filter: untick one outcome -> its cards disappear, the count follows
    first = sorted(set(outcomes.values()))[0]
    browser.find_element(By.CSS_SELECTOR, f".outcome[value='{first}']").click()
    expected = sorted(n for n, o in outcomes.items() if o != first)
    assert sorted(_visible_names(browser)) == expected
    assert browser.find_element(By.ID, "shown-count").text == f"{len(expected)} of 3"
    browser.find_element(By.CSS_SELECTOR, f".outcome[value='{first}']").click()

    # only images with expert boxes (two of the three demo images have one)
    browser.find_element(By.ID, "boxes-only").click()
    assert sorted(_visible_names(browser)) == ["00000150_002.png", "00000193_019.png"]
    browser.find_element(By.ID, "boxes-only").click()

    # p(abnormal) range: only cards with p >= the median one stay
    middle = sorted(ps)[1]
    field = browser.find_element(By.ID, "p-min")
    field.clear()
    field.send_keys(f"{middle:.6f}")
    assert sorted(_visible_names(browser)) == sorted(
        card.get_attribute("data-name") for card in cards
        if float(card.get_attribute("data-p")) >= middle)
    assert len(_visible_names(browser)) == 2
    field.clear()
    field.send_keys("0")

    # name filter and sort
    browser.find_element(By.ID, "search").send_keys("2218")
    assert _visible_names(browser) == ["00002218_003.png"]
    browser.find_element(By.ID, "search").clear()
    browser.execute_script("const s = document.getElementById('sort'); s.value = 'p-asc';"
                           "s.dispatchEvent(new Event('input'));")
    names = _visible_names(browser)
    ps = {card.get_attribute("data-name"): float(card.get_attribute("data-p")) for card in cards}
    assert [ps[n] for n in names] == sorted(ps.values())
    assert _errors(browser) == []


def test_detail_page_views_opacity_and_boxes(browser, stage6_run):
    from selenium.webdriver.common.by import By

    page = next(stage6_run.glob("00000150_002*.html"))
    _open(browser, page)
    assert _errors(browser) == []
    _check_resources(browser, stage6_run)
    figures = browser.find_elements(By.CSS_SELECTOR, "figure")
    assert [f.get_attribute("data-method") for f in figures] == ["deeplift", "grad-cam"]

    def shown_views():
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('.layer'))"
            ".filter(i => !i.classList.contains('hidden')).map(i => i.dataset.view)")

    assert shown_views() == ["positive", "positive"]
    browser.find_element(By.CSS_SELECTOR, "input[name=view][value=negative]").click()
    assert shown_views() == ["negative", "negative"]
    browser.execute_script("const o = document.getElementById('opacity'); o.value = 30;"
                           "o.dispatchEvent(new Event('input'));")
    opacities = browser.execute_script(
        "return Array.from(document.querySelectorAll('.layer'), i => i.style.opacity)")
    assert set(opacities) == {"0.3"}
    boxes = browser.find_elements(By.CSS_SELECTOR, ".box")
    assert len(boxes) == 2 and all(box.is_displayed() for box in boxes)  # one per method
    browser.find_element(By.ID, "show-boxes").click()
    assert not any(box.is_displayed() for box in boxes)
    assert "p(abnormal)" in browser.find_element(By.ID, "numbers").text
    assert _errors(browser) == []
