"""A small local web page for exploring a trained model's latent space (`mine-vae explore`).

The standard library's `http.server` serves one static page (`explorer.html`, package data) and a JSON API over the
operations of `mine_vae.text_latent` and `mine_vae.latent`:

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

Any web page the user has open can send requests to a server on their machine; what keeps other pages out:
- the `Host` header must name the address the server is bound to (or `localhost` when that is a loopback address; any
  IP address when bound to all of them): a DNS-rebinding page's requests carry its own host name, and are refused;
- `/api/` needs the per-launch token that the page holds (`X-Mine-Vae-Token`), which another site cannot read;
- a POST needs `Content-Type: application/json` and an `Origin` of this server: another site's form or `text/plain`
  POST (which browsers send without asking) is refused before it is read;
- a POST needs a `Content-Length` between 0 and `MAX_BODY_BYTES`, checked before anything is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import torch

from .latent import analogy, apply_attribute, attribute_vector, fit_label_region
from .text_latent import DEFAULT_MAX_NEW_TOKENS, decode_latents, encode_texts, interpolate, prior_latents

MAX_BODY_BYTES = 1_000_000
# Bounds on one request: the page is for looking at a handful of sentences, and a request that asked for thousands
# would hold the model (one request at a time) for minutes.
MAX_SENTENCES = 64
MAX_STEPS = 50
MAX_SAMPLES = 50
MAX_STRENGTH = 10.0
TOKEN_HEADER = "X-Mine-Vae-Token"
TOKEN_PLACEHOLDER = "{{MINE_VAE_TOKEN}}"  # in explorer.html: where the page gets this launch's token


class ExplorerInputError(ValueError):
    """A request the page should word differently: answered with status 400 and the message."""


class _Refused(Exception):
    """A request refused before its body is read (not from this server's page, or of a size not allowed)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        path = interpolate(means[0], means[1], steps, method=method)
        return [{"t": index / (steps - 1), "text": text} for index, text in enumerate(self._decode(path))]

    def sample(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        source = _choice(body, "source", ("prior", "a", "b"))
        count = _integer(body, "count", 5, 1, MAX_SAMPLES)
        seed = _integer(body, "seed", 0, 0, 2**63 - 1)
        if source == "prior":
            latents = prior_latents(self.model.config.latent_size, count, seed)
        else:
            what = f"label {source.upper()} examples"
            region = fit_label_region(self._encode(_sentences(body, f"label_{source}", what)))
            latents = region.sample(count, generator=torch.Generator().manual_seed(seed))
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
        return decode_latents(self.model, self.processor, latents, max_new_tokens=self.max_new_tokens)


class ExplorerServer(ThreadingHTTPServer):
    """The HTTP server of one `Explorer`; `url` is where the page is (the port is the bound one, also for port 0)."""

    daemon_threads = True  # a hanging browser connection never keeps the process alive

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.explorer = explorer
        self.token = secrets.token_urlsafe(32)  # per launch: a page of another site can neither read nor guess it
        page = resources.files(__package__).joinpath("explorer.html").read_text(encoding="utf-8")
        self.page = page.replace(TOKEN_PLACEHOLDER, self.token)
        super().__init__((host, port), _Handler)
        # The names this machine answers to, looked up once (getfqdn may ask DNS): for a server on every address.
        self.machine_names = ("localhost", socket.gethostname().lower(), socket.getfqdn().lower())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def serves_host(self, header: str | None) -> bool:
        """Whether a request's `Host` header names this server: its address and port (`localhost` too when bound to
        a loopback address; any IP address, this machine's name and `localhost` when bound to all addresses). A
        DNS-rebinding page reaches the server under its own host name, which is none of these."""
        header = (header or "").strip().lower()
        if header.startswith("["):  # [IPv6 address]:port
            name, _, rest = header[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest or "80"
        else:
            name, _, port = header.partition(":")
            port = port or "80"
        if not name or port != str(self.server_address[1]):
            return False
        bound = ipaddress.ip_address(str(self.server_address[0]).split("%")[0])
        if bound.is_unspecified:
            return _is_ip_address(name) or name in self.machine_names
        if _is_ip_address(name):
            return ipaddress.ip_address(name) == bound
        return name == "localhost" and bound.is_loopback


def make_server(model: Any, processor: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> ExplorerServer:
    """An `ExplorerServer` bound to `host:port` (port 0: a free one), not yet serving: call `serve_forever()` (in a
    thread for tests) and `shutdown()`; `options` go to `Explorer`."""
    return ExplorerServer(Explorer(model, processor, **options), host, port)


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"  # keep-alive, with a Content-Length on every answer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        try:
            self._check_host()
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, self.server.page.encode("utf-8"), "text/html; charset=utf-8")
            elif path == "/api/info":
                self._check_token()
                self._send_json(HTTPStatus.OK, self.server.explorer.info())
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page at {path}"})
        except _Refused as refusal:
            self._send_json(refusal.status, {"error": str(refusal)})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        try:
            # Every check before a byte of the body is read: a refused request costs nothing.
            self._check_host()
            length = self._content_length()
            if not path.startswith("/api/"):
                raise _Refused(HTTPStatus.NOT_FOUND, f"no API at {path}")
            self._check_same_origin()
            self._check_token()
            results = self.server.explorer.run(path[len("/api/") :], self._body(length))
            self._send_json(HTTPStatus.OK, {"results": results})
        except _Refused as refusal:
            self.close_connection = True  # the unread body would otherwise be taken for the next request
            self._send_json(refusal.status, {"error": str(refusal)})
        except ExplorerInputError as error:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": _one_line(str(error))})
        except Exception as error:  # noqa: BLE001 (the page shows it; the server keeps serving)
            message = f"{type(error).__name__}: {_one_line(str(error))}"
            print(f"explorer: {self.path} failed: {message}", file=sys.stderr, flush=True)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})

    def _check_host(self) -> None:
        if not self.server.serves_host(self.headers.get("Host")):
            self.close_connection = True
            raise _Refused(
                HTTPStatus.FORBIDDEN,
                f"this server answers requests for {self.server.url} only, not for Host "
                f"{self.headers.get('Host')!r}; open {self.server.url}.",
            )

    def _check_same_origin(self) -> None:
        """A POST from the page itself: a same-origin `Origin` (browsers send one with every POST) and a JSON body
        (another site may send a form or `text/plain` POST without asking the server first, never a JSON one)."""
        origin = self.headers.get("Origin")
        if origin is None or origin.strip().lower() != f"http://{self.headers.get('Host', '').strip().lower()}":
            raise _Refused(HTTPStatus.FORBIDDEN, f"requests must come from the explorer's page (Origin {origin!r}).")
        media_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise _Refused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"the request must be Content-Type application/json, not {media_type or 'none'!r}.",
            )

    def _check_token(self) -> None:
        token = self.headers.get(TOKEN_HEADER) or ""
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise _Refused(
                HTTPStatus.FORBIDDEN,
                f"the request lacks this launch's {TOKEN_HEADER}; use the page at {self.server.url}.",
            )

    def _content_length(self) -> int:
        """The body's size from `Content-Length`, refused when missing (a chunked body included), not a number,
        negative (`rfile.read(-1)` would read to the end of the stream, whatever its size) or over the cap."""
        value = self.headers.get("Content-Length")
        if value is None or self.headers.get("Transfer-Encoding"):
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length (no chunked bodies).")
        if not value.strip().isdigit():
            raise _Refused(HTTPStatus.BAD_REQUEST, f"the request's Content-Length {value!r} is not a size in bytes.")
        length = int(value)
        if length > MAX_BODY_BYTES:
            raise _Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request is over {MAX_BODY_BYTES:,} bytes; send fewer sentences.",
            )
        return length

    def _body(self, length: int) -> dict[str, Any]:
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
            # Not framed by another site's page (which could trick clicks), not sniffed into another type.
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", "frame-ancestors 'none'")
            self.send_header("X-Content-Type-Options", "nosniff")
            if self.close_connection:  # tell the client, which would otherwise send its next request here
                self.send_header("Connection", "close")
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


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())
