"""The console in a real browser: headless Chromium (Debian's) driven by Selenium.

``make test-console`` runs this (``make test`` does not collect ``tests/browser``: it needs
Chromium, and a browser's start-up is heavier than the rest of an e2e module). One local
stack at 600x speed, the console in front of it, one browser for the whole module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningStack, local_stack
from llmhost_local.cloud import ACCESS_KEY, LOCAL_API_KEY, REGION, SECRET_KEY
from llmhost_local.console import Upstreams, serve_console

webdriver = pytest.importorskip("selenium.webdriver", reason="make test-console installs it")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEPLOYMENT = "browser-test"
DOCUMENT = (
    "The console shows every deployment with its status. Scaling decisions are marked on "
    "the chart of copies. Traces keep the prompt, the sources and the answer."
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # Tokens 40 ms apart: a chat streams for a visible while, long enough to watch it grow.
    with local_stack(
        tmp_path_factory.mktemp("qdrant"), speed=600, token_interval_ms=40, drift_seconds=3600
    ) as running:
        yield running


@pytest.fixture(scope="module")
def console(stack: RunningStack) -> Iterator[str]:
    server = serve_console(
        0,
        Upstreams(
            api=stack.api,
            openai=stack.openai,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            api_key=LOCAL_API_KEY,
            region=REGION,
        ),
    )
    try:
        yield server.url
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.fail("Chromium and its driver are missing: make test-console installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, timeout: float = 60, message: str = "") -> Any:
    # The page redraws its tables as it polls: an element found may be replaced at once.
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(condition, message)


def _click(driver: Any, selector: str) -> None:
    def clicked(d: Any) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True

    _wait(driver, clicked, message=f"could not click {selector}")


def _proxy(console: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(
        method,
        f"{console}/api{path}",
        json=body,
        headers={"X-Llmhost-Console": "1"},
        timeout=120,
    )


def _errors(driver: Any) -> list[str]:
    """The page's script errors and CSP violations (an API's 4xx, which the page shows, and
    Chromium logs as a failed resource, is not one)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def test_create_a_deployment_watch_it_reach_in_service_and_chat_with_it(
    console: str, browser: Any
) -> None:
    # Given a collection with one document (made through the console's own proxy)
    assert _proxy(console, "POST", "/v1/collections", {"name": "docs"}).status_code in (200, 201)
    added = _proxy(
        console,
        "POST",
        "/v1/collections/docs/documents",
        {"documents": [{"id": "console.md", "text": DOCUMENT}]},
    )
    assert added.status_code < 300, added.text
    # When the console is loaded
    browser.get(console)
    _wait(browser, lambda d: d.find_element(By.ID, "spec").get_attribute("value"))
    # And a deployment is created from the spec typed into the page
    spec = {
        "name": DEPLOYMENT,
        "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    }
    browser.find_element(By.CSS_SELECTOR, "#create summary").click()
    textarea = browser.find_element(By.ID, "spec")
    textarea.clear()
    textarea.send_keys(json.dumps(spec))
    browser.find_element(By.ID, "create-button").click()
    _wait(
        browser,
        lambda d: "created browser-test" in d.find_element(By.ID, "create-result").text,
        message="the page did not report the deployment created",
    )
    # Then its row goes to IN_SERVICE by itself (the page polls), and its detail says so
    row = f'#deployments tbody tr[data-name="{DEPLOYMENT}"]'
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "IN_SERVICE",
        message="the deployment's row never read IN_SERVICE",
    )
    _wait(browser, lambda d: d.find_element(By.ID, "deployment-status").text == "IN_SERVICE")
    history = browser.find_element(By.CSS_SELECTOR, "#history tbody").text
    assert "CreateEndpoint" in history and "IN_SERVICE" in history, history
    # And the chart draws its copies: one in service
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, "#chart path.in-service").get_attribute("d"),
        message="no in-service line on the chart",
    )

    # When a question is sent to it, with the collection
    Select(browser.find_element(By.ID, "chat-model")).select_by_value(DEPLOYMENT)
    _wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#chat-collection option[value="docs"]')
    )
    Select(browser.find_element(By.ID, "chat-collection")).select_by_value("docs")
    browser.find_element(By.ID, "chat-input").send_keys("What does the console show?")
    browser.find_element(By.ID, "chat-send").click()
    # Then the answer grows on the page while it streams, chunk by chunk
    answer = ".message.assistant"
    _wait(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, answer).get_attribute("data-state") == "streaming"
        ),
        message="no streamed text arrived",
    )
    partial = browser.find_element(By.CSS_SELECTOR, answer).text
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, answer).get_attribute("data-state") == "done",
        message="the stream never ended",
    )
    final = browser.find_element(By.CSS_SELECTOR, answer)
    assert int(final.get_attribute("data-chunks")) > 3
    assert len(final.text) > len(partial) > 0
    # And the retrieved source is named under it
    assert "[console.md" in browser.find_element(By.CSS_SELECTOR, ".sources").text
    assert _errors(browser) == []


def test_a_trace_of_the_chat_opens_with_its_prompt_sources_and_answer(
    console: str, browser: Any
) -> None:
    # Given the chat above was traced; when the deployment's traces are listed and the
    # newest opened
    Select(browser.find_element(By.ID, "traces-model")).select_by_value(DEPLOYMENT)
    rows = "#traces tbody tr[data-id]"
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, rows), message="no trace listed")
    _click(browser, rows)
    # Then its prompt as sent, the sources and the answer are shown
    _wait(browser, lambda d: d.find_element(By.ID, "trace").is_displayed())
    trace = browser.find_element(By.ID, "trace")
    assert DEPLOYMENT in trace.find_element(By.TAG_NAME, "dl").text
    assert (
        "What does the console show?" in trace.find_element(By.CSS_SELECTOR, ".trace-prompt").text
    )
    assert trace.find_element(By.CSS_SELECTOR, ".trace-answer").text
    assert "console.md" in trace.find_element(By.CSS_SELECTOR, ".trace-sources").text
    assert "generate" in trace.find_element(By.CSS_SELECTOR, ".trace-spans").text
    # And it is the one the answer's "trace" button names
    listed = trace.find_element(By.CSS_SELECTOR, "h3").text.removeprefix("Trace ")
    button = browser.find_element(By.CSS_SELECTOR, "#conversation .open-trace")
    assert button.get_attribute("title") == f"open trace {listed}"
    # And a thumbs-up is stored with it
    _click(browser, "#trace .feedback button")
    _wait(
        browser,
        lambda d: "user: 1" in d.find_element(By.CSS_SELECTOR, "#trace .feedback").text,
        message="the feedback was not stored",
    )
    assert _errors(browser) == []


def test_a_refused_spec_shows_the_apis_message_naming_the_field(console: str, browser: Any) -> None:
    textarea = browser.find_element(By.ID, "spec")
    textarea.clear()
    textarea.send_keys(json.dumps({"name": "no-model-id", "model": {"kind": "hub"}}))
    browser.find_element(By.ID, "create-button").click()
    _wait(
        browser,
        lambda d: "model.model_id" in d.find_element(By.ID, "create-result").text,
        message="the refusal did not name the field",
    )
    assert browser.find_element(By.ID, "create-result").text.startswith("422: ")


def test_sleep_wake_and_delete_from_the_buttons(console: str, browser: Any) -> None:
    row = f'#deployments tbody tr[data-name="{DEPLOYMENT}"]'
    _click(browser, row)

    def reads(status: str) -> Any:
        return lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == status

    # When Sleep is pressed, the deployment goes to sleep; when Wake is, it serves again
    browser.find_element(By.ID, "sleep-button").click()
    _wait(browser, reads("SLEEPING"), message="never SLEEPING")
    browser.find_element(By.ID, "wake-button").click()
    _wait(browser, reads("IN_SERVICE"), message="never back IN_SERVICE")
    # And Delete (confirmed) removes it
    browser.find_element(By.ID, "delete-button").click()
    _wait(browser, lambda d: d.switch_to.alert).accept()
    _wait(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status")
            in {"DELETING", "DELETED"}
        ),
        message="never DELETING",
    )
    assert _errors(browser) == []
