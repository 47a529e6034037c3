"""`mine-vae explore`: the JSON API of mine_vae.explorer on a tiny saved model, and the page end to end in headless
Chromium (Selenium).

The browser test needs Chromium and its driver (`apt-get install -y chromium chromium-driver`) and
`pip install selenium`; without them it is skipped, unless MINE_VAE_REQUIRE_BROWSER=1 (CI sets it), where it fails
(tests/browser.py).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import socket
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
from mine_vae.explorer import MAX_BODY_BYTES, TOKEN_HEADER, ExplorerServer, make_server

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


def page_headers(server: ExplorerServer) -> dict[str, str]:
    """What the page's own requests carry: a same-origin Origin, a JSON body and the token from the page."""
    with urllib.request.urlopen(server.url, timeout=30) as response:
        token = re.search(r'<meta name="mine-vae-token" content="([^"]+)">', response.read().decode())
    assert token is not None
    return {"Origin": server.url.rstrip("/"), "Content-Type": "application/json", TOKEN_HEADER: token.group(1)}


def post(server: ExplorerServer, operation: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.url}api/{operation}", data=data, headers=page_headers(server))
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
    request = urllib.request.Request(f"{server.url}api/info", headers=page_headers(server))
    with urllib.request.urlopen(request, timeout=30) as response:
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

    monkeypatch.setattr("mine_vae.explorer.decode_latents", broken)
    code, answer = post(server, "reconstruct", {"sentences": ["a dog"]})
    assert code == 500 and answer["error"] == "RuntimeError: the decoder fell over"
    monkeypatch.undo()
    assert post(server, "reconstruct", {"sentences": ["a dog"]})[0] == 200


# ----------------------------------------------------------------------------------------------------------------------
# Other web pages: what a page of another site (or a DNS-rebinding one) can send to the live server on 127.0.0.1
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_model_runs(monkeypatch) -> list[int]:
    """Every call of the model's decoding: a refused request must run nothing."""
    calls: list[int] = []
    original = latent.decode

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("mine_vae.explorer.decode_latents", counting)
    return calls


def raw_request(server: ExplorerServer, method: str, path: str, headers: dict[str, str], body: bytes = b""):
    """One request exactly as given (http.client adds neither a Host nor a Content-Length of its own here)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders(body or None)
    response = connection.getresponse()
    answer = response.status, json.loads(response.read())
    connection.close()
    return answer


def attack_headers(server: ExplorerServer, **changes: str | None) -> dict[str, str]:
    """The page's own headers for a reconstruct request, with `changes` (None: the header left out)."""
    headers = {"Host": server.url.split("//")[1].rstrip("/"), **page_headers(server)}
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


RECONSTRUCT = json.dumps({"sentences": ["the cat sees the moon"]}).encode()


def test_the_pages_own_request_is_answered(server, no_model_runs):
    headers = attack_headers(server, Content_Length=str(len(RECONSTRUCT)))
    status, answer = raw_request(server, "POST", "/api/reconstruct", headers, RECONSTRUCT)
    assert status == 200 and len(answer["results"]) == 1 and no_model_runs


@pytest.mark.parametrize(
    ("changes", "status", "fragment"),
    [
        # DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends it as the Host.
        ({"Host": "attacker.example:{port}", "Origin": "http://attacker.example:{port}"}, 403, "answers requests for"),
        ({"Host": "attacker.example"}, 403, "answers requests for"),
        ({"Host": "127.0.0.1:1"}, 403, "answers requests for"),
        ({"Host": None}, 403, "answers requests for"),
        # A form or fetch of another site: a "simple" text/plain POST, which browsers send without asking first.
        ({"Origin": "http://attacker.example", "Content_Type": "text/plain"}, 403, "come from the explorer's page"),
        ({"Origin": "null"}, 403, "come from the explorer's page"),
        ({"Origin": None}, 403, "come from the explorer's page"),
        ({"Content_Type": "text/plain"}, 415, "application/json"),
        ({"Content_Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        # The token that only the page holds.
        ({TOKEN_HEADER: None}, 403, TOKEN_HEADER),
        ({TOKEN_HEADER: "guessed"}, 403, TOKEN_HEADER),
    ],
)
def test_requests_not_from_the_page_run_nothing(server, no_model_runs, changes, status, fragment):
    port = str(server.server_address[1])
    changes = {k: v.replace("{port}", port) if v else v for k, v in changes.items()}
    headers = attack_headers(server, Content_Length=str(len(RECONSTRUCT)), **changes)
    code, answer = raw_request(server, "POST", "/api/reconstruct", headers, RECONSTRUCT)
    assert code == status and fragment in answer["error"], answer
    assert no_model_runs == []


def test_another_host_cannot_read_the_page_or_the_info(server):
    for path in ("/", "/api/info"):
        code, answer = raw_request(server, "GET", path, {"Host": f"attacker.example:{server.server_address[1]}"})
        assert code == 403 and "answers requests for" in answer["error"]
    code, answer = raw_request(server, "GET", "/api/info", {"Host": f"localhost:{server.server_address[1]}"})
    assert code == 403 and TOKEN_HEADER in answer["error"]  # localhost is this server too; the API needs the token


def test_the_host_names_each_binding_answers_to(server, loaded):
    port = server.server_address[1]
    assert server.serves_host(f"127.0.0.1:{port}") and server.serves_host(f"LOCALHOST:{port}")
    others = (f"127.0.0.2:{port}", f"[::1]:{port}", "127.0.0.1", f"rebind.example:{port}", "", f"127.0.0.1:{port}x")
    for other in others:
        assert not server.serves_host(other), other
    everywhere = make_server(*loaded, host="0.0.0.0", port=0)  # the address of every interface: any IP, no DNS name
    try:
        port = everywhere.server_address[1]
        assert everywhere.serves_host(f"192.0.2.7:{port}") and everywhere.serves_host(f"[2001:db8::1]:{port}")
        assert everywhere.serves_host(f"localhost:{port}")
        assert not everywhere.serves_host(f"rebind.example:{port}") and not everywhere.serves_host("192.0.2.7:1")
    finally:
        everywhere.server_close()


@pytest.mark.parametrize(
    ("length", "status", "fragment"),
    [
        ("-1", 400, "not a size in bytes"),
        (None, 411, "needs a Content-Length"),
        ("lots", 400, "not a size in bytes"),
        (str(MAX_BODY_BYTES + 1), 413, "over"),
    ],
)
def test_a_content_length_not_allowed_is_refused_before_reading(server, no_model_runs, length, status, fragment):
    # A 3 MB body the server must not read: it answers at once, and the server keeps serving others.
    body = b'{"sentences": ["' + b"a" * 3_000_000 + b'"]}'
    headers = attack_headers(server, Content_Length=length)
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=60) as connection:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        connection.sendall(f"POST /api/reconstruct HTTP/1.1\r\n{head}\r\n".encode() + body[:1000])
        response = http.client.HTTPResponse(connection)
        response.begin()
        answer = json.loads(response.read())
    assert response.status == status and fragment in answer["error"], answer
    assert response.getheader("Connection") == "close"
    assert no_model_runs == []
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
