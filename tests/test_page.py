"""The page at GET / (service/page.html) in a real headless Chromium, driven
by Selenium, against a real server and Redis: a compression renders kept
words as highlighted spans that reassemble to the server's text, the
dropped ones greyed, and a second run shows the cache hits.

Chromium and its driver come from Debian (`apt-get install chromium
chromium-driver`; `make test` installs them when run as root). Without them
the tests fail, saying so, unless SEGPRESS_SKIP_BROWSER=1 skips them on purpose.
"""

import os
import shutil

import httpx
import pytest

from service.config import Config
from tiny import Tiny

from conftest import free_port
from helpers import InProcessServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
TEXT = ("The keeper climbed the tower every evening to light the lamp.\n\n"
        "Ships far out at sea saw the beam and kept clear of the rocks below.\n\n"
        "In the morning he wrote the weather, the ships and the oil burned in his log.")


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("SEGPRESS_SKIP_BROWSER") == "1":
        pytest.skip("SEGPRESS_SKIP_BROWSER=1")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]'")
    if not (CHROMIUM and DRIVER):
        pytest.fail("the page tests need Chromium and its driver: apt-get install chromium "
                    "chromium-driver (Debian/Ubuntu), or set SEGPRESS_SKIP_BROWSER=1 to skip them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def srv(redis_proc):
    config = Config(port=0, http_port=free_port(), redis_url=redis_proc.url, metrics_port=0)
    s = InProcessServer(config, {"tiny": Tiny()})
    yield s
    s.stop()


def compress_on_page(driver, url: str, text: str, question: str = "", split: bool = True,
                     threshold: str = "") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#compressor option"))
    driver.execute_script("document.getElementById('text').value = arguments[0]", text)
    if not split:
        driver.find_element(By.ID, "split").click()
    if question:
        driver.find_element(By.ID, "question").send_keys(question)
    if threshold:
        driver.find_element(By.ID, "threshold").send_keys(threshold)
    runs = driver.execute_script("return Number(document.body.dataset.runs || 0)")
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: d.execute_script("return Number(document.body.dataset.runs || 0)") > runs
               or d.find_element(By.ID, "error").text)
    assert not driver.find_element(By.ID, "error").text


def rendered(driver) -> list[dict]:
    """Per context on the page: its marked pieces, its whole text, its header."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#result .context')].map(box => ({
          kept: [...box.querySelectorAll('mark.kept')].map(m => m.textContent),
          dropped: box.querySelectorAll('span.dropped').length,
          text: box.querySelector('.body').textContent,
          header: box.querySelector('header').textContent}));""")


def test_kept_words_reassemble_to_the_servers_text(browser, srv):
    compress_on_page(browser, srv.http_url, TEXT)
    contexts = [p for p in TEXT.split("\n\n")]
    want = httpx.post(srv.http_url + "/v1/compress", json={"contexts": contexts}).json()
    boxes = rendered(browser)
    assert len(boxes) == len(contexts) == len(want["contexts"])
    for box, original, c in zip(boxes, contexts, want["contexts"]):
        assert box["text"] == original  # kept and dropped spans make up the original
        assert " ".join(box["kept"]) == " ".join(c["text"].split()) and box["kept"]
        assert box["dropped"] > 0  # tiny keeps only some words
    stats = browser.find_element("id", "stats")
    assert f"{want['stats']['originalTokens']} tokens" in stats.text


def test_a_second_run_shows_cache_hits(browser, srv):
    text = "A fresh paragraph nobody has compressed before: " + os.urandom(6).hex()
    compress_on_page(browser, srv.http_url, text, split=False)
    stats = browser.find_element("id", "stats")
    assert stats.get_attribute("data-cache-hits") == "0"
    compress_on_page(browser, srv.http_url, text, split=False)
    stats = browser.find_element("id", "stats")
    assert stats.get_attribute("data-cache-hits") == stats.get_attribute("data-segments") != "0"
    assert "cache hits 1 of 1 segments" in stats.text


def test_an_error_is_shown(browser, srv):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(srv.http_url + "/")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#compressor option"))
    browser.execute_script("document.getElementById('text').value = 'x'; "
                           "document.getElementById('question').value = 'why?'")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text)
    assert "400 INVALID_ARGUMENT" in browser.find_element(By.ID, "error").text


@pytest.fixture(scope="module")
def query_srv(redis_proc, llmlingua2, sentence_vectors):
    config = Config(port=0, http_port=free_port(), redis_url=redis_proc.url, metrics_port=0)
    s = InProcessServer(config, {"llmlingua2": llmlingua2}, sentence_vectors)
    yield s
    s.stop()


def test_selection_shows_relevance_and_kept_flags(browser, query_srv):
    question = "What did the keeper write in his log?"
    compress_on_page(browser, query_srv.http_url, TEXT, question=question)
    contexts = TEXT.split("\n\n")
    want = httpx.post(query_srv.http_url + "/v1/compress", timeout=60, json={
        "contexts": contexts, "query": question, "compressor": "llmlingua2",
        "llmlingua2": {"rate": 0.33, "granularity": "GRANULARITY_WORD"}}).json()
    boxes = rendered(browser)
    for box, original, c in zip(boxes, contexts, want["contexts"]):
        assert box["text"] == original
        assert " ".join(box["kept"]) == " ".join(c["text"].split())
        assert f"relevance {c['relevance']:.2f}, rank {c['rank'] + 1}" in box["header"]
        assert ("kept" if c["kept"] else "dropped") in box["header"]


def test_a_threshold_replaces_the_rate(browser, query_srv):
    """The page's threshold field sends llmlingua2.threshold in place of the
    rate: every word scoring at least it, as the API keeps them."""
    compress_on_page(browser, query_srv.http_url, TEXT, threshold="0.6")
    contexts = TEXT.split("\n\n")
    want = httpx.post(query_srv.http_url + "/v1/compress", timeout=60, json={
        "contexts": contexts, "compressor": "llmlingua2",
        "llmlingua2": {"threshold": 0.6, "granularity": "GRANULARITY_WORD"}}).json()
    rate = httpx.post(query_srv.http_url + "/v1/compress", timeout=60, json={
        "contexts": contexts, "compressor": "llmlingua2",
        "llmlingua2": {"rate": 0.33, "granularity": "GRANULARITY_WORD"}}).json()
    assert want["text"] != rate["text"]  # the threshold is not the rate's output
    for box, c in zip(rendered(browser), want["contexts"]):
        assert " ".join(box["kept"]) == " ".join(c["text"].split())
