"""Headless Chromium against the served editors' page and a page embedding the widget."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.helpers import Server, build_index, free_port, make_corpus

XSS_TITLE = "<img src=x onerror=alert(1)> Karsk envoy"
EDITOR_KEY = "browser-editor-key"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("REQUIRE_BROWSER"):
        raise RuntimeError("REQUIRE_BROWSER is set but chromium/chromedriver are not installed")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402 - after the skip above
from selenium.webdriver.common.by import By  # noqa: E402 - after the skip above
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402 - after the skip above
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402 - after the skip above


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir):
    from recommender.config import Settings

    root = tmp_path_factory.mktemp("browser")
    settings = Settings.load({"backend": "torch", "data_dir": root / "data", "model": str(tiny_model_dir), "min_confidence": 0.0},
                             environ={})
    rows = make_corpus()
    # The hostile title sits on the words of talks-1 in reverse order: the same
    # words (it ranks first in talks-1's list) but no shared 5-gram (not a copy).
    talks_1 = next(r for r in rows if r["id"] == "talks-1")
    rows.append({"id": "xss", "title": XSS_TITLE, "body": " ".join(reversed(talks_1["body"].split())),
                 "section": "world", "published": "2025-06-01"})
    build_index(settings, rows, legacy_urls={"xss": "javascript:alert(2)"})

    page_port = free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    server = Server(settings.data_dir, settings.model,
                    env={"RECOMMENDER_CORS_ORIGINS": page_origin, "RECOMMENDER_API_KEY": EDITOR_KEY})
    pages = root / "site"
    pages.mkdir()
    (pages / "article.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>A news article</title></head><body>"
        "<article><h1>Talks resume</h1><p>Story text.</p></article>"
        f"<div id='related' data-article-id='talks-1' data-k='6'></div>"
        f"<script src='{server.base}/widget.js' async></script></body></html>"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(pages))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield server, page_origin
    httpd.shutdown()
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def no_alert(driver) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def screenshot(driver, name: str) -> None:
    if os.environ.get("SAVE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / name))


def search_on_editors_page(browser, wait, server, query: str) -> list:
    """Open the editors' page, search, and return the result title buttons."""
    browser.get(server.base + "/")
    wait.until(EC.presence_of_element_located((By.ID, "q"))).send_keys(query)
    browser.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    return wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#results li .result-title")))


def test_editor_search_then_related_list(site, browser):
    server, _ = site
    wait = WebDriverWait(browser, 20)
    results = search_on_editors_page(browser, wait, server, "ceasefire envoy")
    titles = [r.text for r in results]
    assert XSS_TITLE in titles  # shown as text, not parsed as markup
    assert browser.find_elements(By.CSS_SELECTOR, "#results mark")  # highlighted snippet
    assert not browser.find_elements(By.CSS_SELECTOR, "#results img")
    results[0].click()
    related = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#related li .related-title")))
    assert len(related) == 10
    scores = browser.find_elements(By.CSS_SELECTOR, "#related .score")
    assert len(scores) == 10 and all(s.text for s in scores)
    assert no_alert(browser)
    screenshot(browser, "editors-page.png")


def test_widget_on_another_origin(site, browser):
    _, page_origin = site
    wait = WebDriverWait(browser, 20)
    browser.get(page_origin + "/article.html")
    items = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#related nav.rec-related li")))
    assert len(items) == 6
    nav = browser.find_element(By.CSS_SELECTOR, "#related nav")
    assert nav.get_attribute("aria-label") == "Related articles"
    texts = [i.text for i in items]
    assert any(XSS_TITLE in t for t in texts)
    assert not browser.find_elements(By.CSS_SELECTOR, "#related img")
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#related a")]
    assert not any(h and h.startswith("javascript:") for h in hrefs)
    assert no_alert(browser)
    screenshot(browser, "widget.png")


def test_editor_pins_an_article_and_the_list_marks_it(site, browser):
    server, _ = site
    wait = WebDriverWait(browser, 20)
    search_on_editors_page(browser, wait, server, "harbour bridge")[0].click()
    wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#related li .related-title")))
    assert not browser.find_elements(By.CSS_SELECTOR, "#related li.manual")
    browser.find_element(By.CSS_SELECTOR, "#rules-box summary").click()
    browser.find_element(By.ID, "api-key").send_keys(EDITOR_KEY)
    browser.find_element(By.ID, "pin-target").send_keys("drought-3")
    position = browser.find_element(By.ID, "pin-position")
    position.clear()
    position.send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "#pin-form button").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#related li.manual .badge")))
    items = browser.find_elements(By.CSS_SELECTOR, "#related > li")
    assert "manual" in items[1].get_attribute("class") and "pinned" in items[1].text
    assert all("manual" not in i.get_attribute("class") for i in items[:1] + items[2:])
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#rules li")))
    assert "pin drought-3 at 2" in browser.find_element(By.ID, "rules").text
    assert no_alert(browser)
    screenshot(browser, "editors-pin.png")
