"""A small local web page for exploring a trained model's latent space (`mine-vae explore`).

The standard library's `http.server` serves one static page (`explorer.html`, package data) and a JSON API over the
operations of `mine_vae.latent`:

    POST /api/reconstruct  {"sentences": [...]}                                  -> [{"input", "output"}]
    POST /api/interpolate  {"start", "end", "steps", "method": "slerp"|"lerp"}    -> [{"t", "text"}]
    POST /api/sample       {"source": "prior"|"a"|"b", "count", "seed", "label_a": [...], "label_b": [...]}
                                                                                   -> [{"text"}]
    POST /api/attribute    {"sentences", "label_a", "label_b", "strength", "method": "mean"|"probe"}
                                                                                   -> [{"input", "output"}]
    POST /api/analogy      {"a", "b", "c"}                                         -> [{"text"}]
    GET  /api/info                                                                 -> {"model", "latent_size", ...}

Every answer is `{"results": [...]}`, or `{"error": "one line"}` with status 400 (bad input) or 500 (anything else):
a failing request is reported on the page and the server keeps serving. Decoding is greedy, so the page shows what
each latent decodes to, not sampling noise.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import torch

from .latent import (
    DEFAULT_MAX_NEW_TOKENS,
    analogy,
    apply_attribute,
    attribute_vector,
    decode,
    encode_texts,
    fit_label_region,
    lerp,
    slerp,
)

MAX_BODY_BYTES = 1_000_000
# Bounds on one request: the page is for looking at a handful of sentences, and a request that asked for thousands
# would hold the model (one request at a time) for minutes.
MAX_SENTENCES = 64
MAX_STEPS = 50
MAX_SAMPLES = 50
MAX_STRENGTH = 10.0


class ExplorerInputError(ValueError):
    """A request the page should word differently: answered with status 400 and the message."""


class Explorer:
    """
    The page's operations on one model. Each takes a request's decoded JSON body and returns the list of results;
    bad input raises `ExplorerInputError`. Calls are serialised by a lock: the model runs one request at a time.

    Args:
        model: a `MineVaeModel` (put in eval mode).
        processor: its `MineVaeProcessor`.
        name: how the page names the model (its folder).
        max_new_tokens: most tokens per decoded sentence (greedy decoding).
    """

    def __init__(
        self, model: Any, processor: Any, name: str = "model", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()
        self.operations: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "reconstruct": self.reconstruct,
            "interpolate": self.interpolate,
            "sample": self.sample,
            "attribute": self.attribute,
            "analogy": self.analogy,
        }

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "latent_size": self.model.config.latent_size,
            "max_new_tokens": self.max_new_tokens,
            "limits": {"sentences": MAX_SENTENCES, "steps": MAX_STEPS, "samples": MAX_SAMPLES},
        }

    def run(self, operation: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        if operation not in self.operations:
            raise ExplorerInputError(f"unknown operation {operation!r}; use one of: {', '.join(self.operations)}.")
        with self.lock:
            return self.operations[operation](body)

    # -- the operations ------------------------------------------------------------------------------------------------
    def reconstruct(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        sentences = _sentences(body, "sentences", "sentences to reconstruct")
        outputs = self._decode(self._encode(sentences))
        return [{"input": s, "output": o} for s, o in zip(sentences, outputs)]

    def interpolate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        start = _sentence(body, "start", "the first sentence")
        end = _sentence(body, "end", "the last sentence")
        steps = _integer(body, "steps", 5, 2, MAX_STEPS)
        method = _choice(body, "method", ("slerp", "lerp"))
        means = self._encode([start, end])
        path = (slerp if method == "slerp" else lerp)(means[0], means[1], steps)
        return [{"t": index / (steps - 1), "text": text} for index, text in enumerate(self._decode(path))]

    def sample(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        source = _choice(body, "source", ("prior", "a", "b"))
        count = _integer(body, "count", 5, 1, MAX_SAMPLES)
        seed = _integer(body, "seed", 0, 0, 2**63 - 1)
        generator = torch.Generator().manual_seed(seed)
        if source == "prior":
            latents = torch.randn(count, self.model.config.latent_size, generator=generator)
        else:
            what = f"label {source.upper()} examples"
            region = fit_label_region(self._encode(_sentences(body, f"label_{source}", what)))
            latents = region.sample(count, generator=generator)
        return [{"text": text} for text in self._decode(latents)]

    def attribute(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        sentences = _sentences(body, "sentences", "sentences to change")
        positive = _sentences(body, "label_a", "label A examples")
        negative = _sentences(body, "label_b", "label B examples")
        strength = _number(body, "strength", 1.0, -MAX_STRENGTH, MAX_STRENGTH)
        method = _choice(body, "method", ("mean", "probe"))
        vector = attribute_vector(self._encode(positive), self._encode(negative), method=method)
        outputs = self._decode(apply_attribute(self._encode(sentences), vector, strength))
        return [{"input": s, "output": o} for s, o in zip(sentences, outputs)]

    def analogy(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        a, b, c = (_sentence(body, key, f"sentence {key}") for key in ("a", "b", "c"))
        means = self._encode([a, b, c])
        return [{"text": text} for text in self._decode(analogy(means[0], means[1], means[2]))]

    # -- helpers -------------------------------------------------------------------------------------------------------
    def _encode(self, sentences: list[str]) -> torch.Tensor:
        try:
            return encode_texts(self.model, self.processor, sentences)
        except (ValueError, TypeError) as error:  # the processor's checks of the text
            raise ExplorerInputError(str(error)) from error

    def _decode(self, latents: torch.Tensor) -> list[str]:
        return decode(self.model, self.processor, latents, max_new_tokens=self.max_new_tokens)


class ExplorerServer(ThreadingHTTPServer):
    """The HTTP server of one `Explorer`; `url` is where the page is (the port is the bound one, also for port 0)."""

    daemon_threads = True  # a hanging browser connection never keeps the process alive

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.explorer = explorer
        self.page = resources.files(__package__).joinpath("explorer.html").read_text(encoding="utf-8")
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


def make_server(model: Any, processor: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> ExplorerServer:
    """An `ExplorerServer` bound to `host:port` (port 0: a free one), not yet serving: call `serve_forever()` (in a
    thread for tests) and `shutdown()`; `options` go to `Explorer`."""
    return ExplorerServer(Explorer(model, processor, **options), host, port)


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"  # keep-alive, with a Content-Length on every answer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._send_json(HTTPStatus.OK, self.server.explorer.info())
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page at {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        try:
            if not path.startswith("/api/"):
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no API at {path}"})
                return
            results = self.server.explorer.run(path[len("/api/") :], self._body())
            self._send_json(HTTPStatus.OK, {"results": results})
        except ExplorerInputError as error:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": _one_line(str(error))})
        except Exception as error:  # noqa: BLE001 (the page shows it; the server keeps serving)
            message = f"{type(error).__name__}: {_one_line(str(error))}"
            print(f"explorer: {self.path} failed: {message}", file=sys.stderr, flush=True)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as error:
            raise ExplorerInputError("the request's Content-Length is not a number.") from error
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would otherwise be taken for the next request
            raise ExplorerInputError(f"the request is over {MAX_BODY_BYTES:,} bytes; send fewer sentences.")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ExplorerInputError(f"the request is not JSON ({error}).") from error
        if not isinstance(body, dict):
            raise ExplorerInputError("the request must be a JSON object.")
        return body

    def _send_json(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        self._send(status, json.dumps(document).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser went away: nothing to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        """Quiet: a line per request would bury the URL and the errors on the terminal."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading a request's fields
# ----------------------------------------------------------------------------------------------------------------------
def _sentences(body: dict[str, Any], key: str, what: str) -> list[str]:
    """A list of sentences, or one text with a sentence a line (a text area's value); blank lines are skipped."""
    value = body.get(key)
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ExplorerInputError(f"{what}: give a list of sentences (or text with one sentence a line).")
    sentences = [item.strip() for item in value if item.strip()]
    if not sentences:
        raise ExplorerInputError(f"{what}: type at least one sentence.")
    if len(sentences) > MAX_SENTENCES:
        raise ExplorerInputError(f"{what}: at most {MAX_SENTENCES} sentences at a time, got {len(sentences)}.")
    return sentences


def _sentence(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ExplorerInputError(f"{what}: type a sentence.")
    return value.strip()


def _integer(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ExplorerInputError(f"{key} must be a whole number, got {value!r}.") from None
    if not low <= number <= high:
        raise ExplorerInputError(f"{key} must be between {low} and {high}, got {number}.")
    return number


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ExplorerInputError(f"{key} must be a number, got {value!r}.") from None
    if not low <= number <= high:  # also refuses NaN
        raise ExplorerInputError(f"{key} must be between {low:g} and {high:g}, got {value!r}.")
    return number


def _choice(body: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = body.get(key, choices[0])
    if value not in choices:
        raise ExplorerInputError(f"{key} must be one of {', '.join(choices)}, got {value!r}.")
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())
