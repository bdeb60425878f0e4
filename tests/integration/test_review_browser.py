"""The review page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) on a real ``htrq api`` process with keys required,
opened through a review link, as an archivist uses it."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from htrq.db import make_sessions
from htrq.models import Tenant
from htrq.resources import REVIEW_BELOW
from htrq.settings import Settings
from htrq.storage import open_store
from htrq.tenants import create_key
from tests.finished import finish, handwritten_letter, letter_png, submit
from tests.services import Processes, service_env, wait_for

pytestmark = pytest.mark.slow

TENANT = "review-browser"
#: Where to keep the test's screenshot of the page besides its tmp folder. The picture on
#: docs/review.md is made so (HTRQ_TEST_REVIEW_SCREENSHOT=docs/review.png), reduced to 128
#: colours to halve its size.
SCREENSHOT = os.environ.get("HTRQ_TEST_REVIEW_SCREENSHOT")
#: Collects uncaught errors and rejected promises from the first script on.
CATCH_ERRORS = """
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__errors.push(String(e.reason)));
"""


def _program(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium at a laptop's screen size, logging the page's console."""
    chromium = _program("chromium", "chromium-browser", "google-chrome")
    driver_path = _program("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (dev)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)  # no sandbox: CI runs the tests as root
    options.add_argument("--window-size=1366,860")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_ERRORS})
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def reviewed_job(
    processes: Processes, settings: Settings, engine: Engine
) -> Iterator[tuple[str, dict[str, str], uuid.UUID, list]]:
    """An API process with keys required, a tenant's key and a job of two pages: a finished
    handwritten page (stored through the job service, its result written as a worker writes
    it) and a queued one; the job and the tenant are deleted afterwards."""
    settings = settings.model_copy(update={"auth": "required"})
    sessions = make_sessions(engine)
    _, key = create_key(sessions, tenant=TENANT)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with sessions() as s:
            tenant = s.scalars(select(Tenant.id).where(Tenant.name == TENANT)).one()
        png, lines = handwritten_letter()
        files = [("letter.png", png), ("back.png", letter_png())]  # page 2 stays queued
        job = submit(sessions, open_store(settings), settings, tenant, files)
        finish(sessions, job, 0, lines, (1400, 1000))
        url = processes.api(service_env(settings))
        yield url, headers, job, lines
        assert httpx.delete(f"{url}/v1/jobs/{job}", headers=headers).status_code == 204
    finally:
        with sessions.begin() as s:
            for t in s.scalars(select(Tenant).where(Tenant.name == TENANT)):
                s.delete(t)


def test_an_archivist_corrects_a_line_in_the_browser(
    browser: Any, reviewed_job: tuple, tmp_path: Path
) -> None:
    """Through a review link: the page image and one outline per line appear, doubtful lines
    listed first; clicking line 0, typing and Enter stores the correction (the API and the
    txt export carry it) and opens the next doubtful line; Tab skips to the one after, Esc
    closes the editor onto the line's button, whose focus shows and which Enter opens again;
    the next page (still queued) says so, and the previous one comes back; no JavaScript
    error on the way."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, headers, job, lines = reviewed_job
    link = httpx.post(f"{url}/v1/jobs/{job}/review-link", headers=headers).json()["url"]
    assert "#t=" in link and "?" not in link  # the token in the fragment, never sent
    token = link.split("#t=", 1)[1]
    browser.get(link)

    def ready() -> bool:
        return bool(
            browser.execute_script(
                "const img = document.getElementById('page-image');"
                "return img.complete && img.naturalWidth > 0 &&"
                f" document.querySelectorAll('#overlay [data-line-index]').length === {len(lines)};"
            )
        )

    wait_for(ready, "the review page to show the page and its lines")
    shapes = browser.find_elements(By.CSS_SELECTOR, "#overlay [data-line-index]")
    assert sorted(int(s.get_attribute("data-line-index")) for s in shapes) == list(
        range(len(lines))
    )
    assert (
        browser.execute_script("return document.getElementById('page-image').naturalWidth") == 1400
    )
    doubtful = [i for i, ln in enumerate(lines) if ln.confidence < REVIEW_BELOW]
    listed = browser.find_elements(By.CSS_SELECTOR, "#review-list [data-line-index]")
    assert [int(b.get_attribute("data-line-index")) for b in listed] == doubtful
    counter = browser.find_element(By.ID, "counter")
    assert counter.text.startswith(f"{len(doubtful)} of {len(lines)} lines left to review")
    # Inside the doubtful lines, the doubtful words are marked on the page and in the list.
    page = httpx.get(f"{url}/v1/jobs/{job}/pages/0", headers=headers).json()
    unsure = [w for ln in page["lines"] if ln["needs_review"] for w in ln["words"]]
    unsure = [w for w in unsure if w["needs_review"]]
    assert unsure and len(unsure) < sum(len(ln["words"]) for ln in page["lines"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay .doubtful-word")) == len(unsure)
    marked = browser.find_elements(By.CSS_SELECTOR, "#review-list mark.doubtful-word")
    assert [m.text for m in marked] == [w["text"] for w in unsure]
    # Which model read the page (tests.finished stores its pages as read by test-model).
    assert browser.find_element(By.ID, "read-by").text == "Read by test-model"

    browser.find_element(By.CSS_SELECTOR, '#overlay [data-line-index="0"]').click()
    field = browser.find_element(By.ID, "line-text")
    wait_for(lambda: field.is_displayed(), "the editor to open")
    assert browser.switch_to.active_element == field
    assert field.get_attribute("value") == lines[0].text
    field.clear()
    field.send_keys("Corrected by an archivist", Keys.ENTER)

    def stored() -> bool:
        page = httpx.get(f"{url}/v1/jobs/{job}/pages/0", headers=headers).json()
        return page["lines"][0]["corrected"]

    wait_for(stored, "the correction to be stored")
    line = httpx.get(f"{url}/v1/jobs/{job}/pages/0", headers=headers).json()["lines"][0]
    assert (line["text"], line["model_text"]) == ("Corrected by an archivist", lines[0].text)
    export = httpx.get(f"{url}/v1/jobs/{job}/pages/0/export", headers=headers).text
    assert export.splitlines()[0] == "Corrected by an archivist"

    # Enter moved on to the first doubtful line; Tab skips to the next without saving.
    title = browser.find_element(By.ID, "editor-title")
    wait_for(lambda: title.text == f"Line {doubtful[0] + 1} of {len(lines)}", "the next line")
    assert browser.switch_to.active_element == field
    browser.save_screenshot(str(tmp_path / "review.png"))
    if SCREENSHOT:
        shutil.copyfile(tmp_path / "review.png", SCREENSHOT)
    field.send_keys(Keys.TAB)
    wait_for(lambda: title.text == f"Line {doubtful[1] + 1} of {len(lines)}", "Tab to skip")
    field.send_keys(Keys.ESCAPE)
    wait_for(lambda: not field.is_displayed(), "Esc to close the editor")
    focused = browser.switch_to.active_element
    assert focused.get_attribute("data-line-index") == str(doubtful[1])  # back on its button
    # From there, the keyboard alone: the focus shows, Enter on the button opens the line.
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    focused.send_keys(Keys.ENTER)
    wait_for(lambda: field.is_displayed(), "Enter on a line's button to open it")
    assert title.text == f"Line {doubtful[1] + 1} of {len(lines)}"
    assert browser.switch_to.active_element == field

    # The next page has no reading yet: the page says so; back on page 1, its lines again.
    field.send_keys(Keys.ESCAPE)
    browser.find_element(By.ID, "next-page").click()
    message = browser.find_element(By.ID, "message")
    wait_for(lambda: "Page 2 is queued" in message.text, "page 2 to say it is queued")
    assert not browser.find_elements(By.CSS_SELECTOR, "#overlay [data-line-index]")
    browser.find_element(By.ID, "prev-page").click()
    wait_for(ready, "page 1 to come back")
    assert browser.execute_script("return location.hash") == "#page=1"

    # The token travelled in no address the browser asked for (page, script, JSON, images),
    # and left the address bar; the image was not cached.
    asked = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert len(asked) > 3 and not [a for a in asked if token in a], asked
    image = httpx.get(f"{url}/v1/jobs/{job}/pages/0/image", headers={"X-Review-Token": token})
    assert image.status_code == 200 and image.headers["cache-control"] == "no-store"

    errors = browser.execute_script("return window.__errors")
    console = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [] and console == [], (errors, console)
