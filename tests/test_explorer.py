"""`mine-vae explore`: the JSON API of mine_vae.explorer on a tiny saved model, and the page end to end in headless
Chromium (Selenium).

The browser test needs Chromium and its driver (`apt-get install -y chromium chromium-driver`) and
`pip install selenium`; without them it is skipped, unless MINE_VAE_REQUIRE_BROWSER=1 (CI sets it), where it fails
(tests/browser.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiny
from browser import CHROMEDRIVER, CHROMIUM, browser_or_skip

from mine_vae import latent
from mine_vae.cli import main
from mine_vae.cli.loading import load_trained
from mine_vae.explorer import ExplorerServer, make_server

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

MAX_NEW_TOKENS = 8  # short sentences: the untrained model rarely stops on its own


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return tiny.saved_model(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture(scope="module")
def loaded(saved):
    """The model and processor as `mine-vae explore` loads them."""
    return load_trained(str(saved), "cpu")


@pytest.fixture(scope="module")
def server(loaded, saved) -> Iterator[ExplorerServer]:
    model, processor = loaded
    server = make_server(model, processor, port=0, name=str(saved), max_new_tokens=MAX_NEW_TOKENS)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def post(server: ExplorerServer, operation: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.url}api/{operation}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def reference(loaded, sentences: list[str]) -> list[str]:
    model, processor = loaded
    return latent.decode(
        model, processor, latent.encode_texts(model, processor, sentences), max_new_tokens=MAX_NEW_TOKENS
    )


# ----------------------------------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------------------------------
def test_the_page_and_the_info_are_served(server):
    assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0/")
    with urllib.request.urlopen(server.url, timeout=30) as response:
        page = response.read().decode()
    assert 'id="error"' in page and 'id="reconstruct-button"' in page
    with urllib.request.urlopen(f"{server.url}api/info", timeout=30) as response:
        info = json.loads(response.read())
    assert info["latent_size"] == 8 and info["max_new_tokens"] == MAX_NEW_TOKENS


def test_reconstruct_equals_decode_of_the_posterior_means(server, loaded):
    sentences = tiny.sentences(3, seed=5)
    status, answer = post(server, "reconstruct", {"sentences": "\n".join(sentences) + "\n\n"})
    assert status == 200, answer
    assert answer["results"] == [{"input": s, "output": o} for s, o in zip(sentences, reference(loaded, sentences))]


def test_every_operation_answers(server, loaded):
    model, processor = loaded
    a_examples, b_examples = tiny.sentences(4, seed=1), tiny.sentences(4, seed=2)
    status, answer = post(server, "interpolate", {"start": "the cat sees the moon", "end": "a dog", "steps": 4})
    assert status == 200 and [r["t"] for r in answer["results"]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    means = latent.encode_texts(model, processor, ["the cat sees the moon", "a dog"])
    expected = latent.decode(model, processor, latent.slerp(means[0], means[1], 4), max_new_tokens=MAX_NEW_TOKENS)
    assert [r["text"] for r in answer["results"]] == expected
    for source in ("prior", "a", "b"):
        body = {"source": source, "count": 3, "seed": 1, "label_a": a_examples, "label_b": b_examples}
        status, answer = post(server, "sample", body)
        assert status == 200 and len(answer["results"]) == 3, answer
    body = {"sentences": ["the cat sees the moon"], "label_a": a_examples, "label_b": b_examples, "strength": 0}
    status, answer = post(server, "attribute", body)
    assert status == 200 and answer["results"][0]["output"] == reference(loaded, ["the cat sees the moon"])[0]
    status, answer = post(server, "attribute", {**body, "strength": 2.5, "method": "probe"})
    assert status == 200 and len(answer["results"]) == 1
    status, answer = post(server, "analogy", {"a": "a dog", "b": "a dog", "c": "the old man"})
    assert status == 200 and answer["results"][0]["text"] == reference(loaded, ["the old man"])[0]


@pytest.mark.parametrize(
    "operation, body, status, fragment",
    [
        ("reconstruct", {"sentences": "  \n "}, 400, "type at least one sentence"),
        ("reconstruct", {}, 400, "give a list of sentences"),
        ("interpolate", {"start": "a dog", "end": "", "steps": 3}, 400, "the last sentence"),
        ("interpolate", {"start": "a dog", "end": "a cat", "steps": 1}, 400, "steps must be between 2"),
        ("sample", {"source": "a", "label_a": ""}, 400, "label A examples"),
        ("sample", {"source": "c"}, 400, "source must be one of"),
        ("attribute", {"sentences": "a dog", "label_a": "a", "label_b": "b", "strength": "x"}, 400, "strength"),
        ("transmogrify", {}, 400, "unknown operation"),
        ("reconstruct", b"{not json", 400, "not JSON"),
        ("reconstruct", b"[1, 2]", 400, "JSON object"),
    ],
)
def test_bad_requests_are_json_errors_and_the_server_keeps_serving(server, operation, body, status, fragment):
    code, answer = post(server, operation, body)
    assert code == status and fragment in answer["error"], answer
    assert post(server, "reconstruct", {"sentences": ["a dog"]})[0] == 200


def test_a_failing_operation_is_a_500_error_and_the_server_keeps_serving(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the decoder fell over")

    monkeypatch.setattr("mine_vae.explorer.decode", broken)
    code, answer = post(server, "reconstruct", {"sentences": ["a dog"]})
    assert code == 500 and answer["error"] == "RuntimeError: the decoder fell over"
    monkeypatch.undo()
    assert post(server, "reconstruct", {"sentences": ["a dog"]})[0] == 200


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_explore_prints_the_url_and_stops_on_ctrl_c(saved, monkeypatch):
    answered: list[int] = []

    def serve_then_interrupt(self, poll_interval=0.5):
        """Answer one request of a client thread, then stop as Ctrl-C would."""
        client = threading.Thread(target=lambda: answered.append(urllib.request.urlopen(self.url, timeout=30).status))
        client.start()
        self.handle_request()
        client.join(timeout=30)
        raise KeyboardInterrupt

    monkeypatch.setattr(ExplorerServer, "serve_forever", serve_then_interrupt)
    code, out, err = run_cli(["explore", str(saved), "--port", "0", "--device", "cpu"])
    assert code == 0, err
    assert answered == [200]
    assert "http://127.0.0.1:" in out and "Stopped." in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--host", "203.0.113.7"], "cannot listen on 203.0.113.7"),
    ],
)
def test_explore_errors_are_one_line(saved, argv, fragment):
    code, out, err = run_cli(["explore", str(saved), "--device", "cpu", *argv])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


# ----------------------------------------------------------------------------------------------------------------------
# The page in a browser
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for_state(driver, output_id: str) -> str:
    """Wait until the page's request for `output_id` has finished; its state: done or error."""
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(d):
        state = d.find_element("id", output_id).get_attribute("data-state")
        return state if state in ("done", "error") else False

    return WebDriverWait(driver, 60).until(finished)


def test_the_page_in_headless_chromium(server, loaded, browser, tmp_path):
    sentence = "the old man sees a red ball"
    browser.get(server.url)
    # Reconstruct: the page shows what latent.decode gives for the sentence's posterior mean.
    box = browser.find_element("id", "reconstruct-input")
    box.clear()
    box.send_keys(sentence)
    browser.find_element("id", "reconstruct-button").click()
    assert wait_for_state(browser, "reconstruct-output") == "done"
    outputs = browser.find_elements("css selector", "#reconstruct-output li .output")
    assert [element.get_attribute("textContent") for element in outputs] == reference(loaded, [sentence])
    assert not browser.find_element("id", "error").is_displayed()
    # An error: interpolate with an empty sentence is reported in the page's #error element.
    browser.find_element("id", "interpolate-start").send_keys(sentence)
    browser.find_element("id", "interpolate-button").click()
    assert wait_for_state(browser, "interpolate-output") == "error"
    error = browser.find_element("id", "error")
    assert error.is_displayed() and "the last sentence: type a sentence" in error.text
    # The server is still there: the next request works and clears the error.
    browser.find_element("id", "interpolate-end").send_keys("a dog")
    browser.find_element("id", "interpolate-button").click()
    assert wait_for_state(browser, "interpolate-output") == "done"
    assert len(browser.find_elements("css selector", "#interpolate-output li")) == 5
    assert not browser.find_element("id", "error").is_displayed()
    screenshot = tmp_path / "explorer.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
