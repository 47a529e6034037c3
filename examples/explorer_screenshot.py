"""A screenshot of the latent-space explorer page (`mine-vae explore`) on a trained model, for the docs.

It serves the page of `mine_vae.explorer` on 127.0.0.1 (a free port), opens it in headless Chromium (Selenium), types
the sentences into the Reconstruct box and reconstructs them, interpolates between the first two, and, given examples
of two labels, fills the Labels boxes and moves the sentences from label B towards label A; then it saves the whole
page as a PNG.

    mine-vae train                                   # writes ./mine-vae-small
    python examples/explorer_screenshot.py --model mine-vae-small --out docs/latent-report/explorer.png
    python examples/explorer_screenshot.py --model runs/pair --bf16 \\
        --sentence "the company said it expects to report a loss for the third quarter" \\
        --sentence "stocks fell sharply in heavy trading" \\
        --label_a "profits rose sharply" --label_a "sales grew strongly" \\
        --label_b "the company reported a loss" --label_b "revenue fell"

Needs Chromium, its driver and Selenium: `apt-get install -y chromium chromium-driver && pip install selenium`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mine_vae import MineVaeModel, MineVaeProcessor
from mine_vae.explorer import ExplorerServer, make_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
PROG = "explorer_screenshot"
# Short PTB-style sentences (lower case, no punctuation, as the corpus is): what a PTB model reconstructs best.
SENTENCES = [
    "the company said it expects to report a loss for the third quarter",
    "stocks fell sharply in heavy trading",
    "he was named chairman of the board",
]


class ScreenshotError(RuntimeError):
    """Something the page or the browser did wrong: one line on stderr and exit code 1."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mine-vae-small", help="folder written by `mine-vae train`")
    parser.add_argument("--out", default="docs/latent-report/explorer.png", help="the PNG to write")
    parser.add_argument(
        "--sentence", action="append", dest="sentences", metavar="TEXT", help="a sentence to reconstruct (repeat it)"
    )
    parser.add_argument("--label_a", action="append", default=[], metavar="TEXT", help="a label A example (repeat)")
    parser.add_argument("--label_b", action="append", default=[], metavar="TEXT", help="a label B example (repeat)")
    parser.add_argument("--steps", type=int, default=5, help="interpolation points, endpoints included")
    parser.add_argument("--no_interpolate", action="store_true", help="only reconstruct (and apply the attribute)")
    parser.add_argument("--strength", type=float, default=1.0, help="attribute strength, -3 to 3 (the page's slider)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="most tokens per decoded sentence")
    parser.add_argument("--bf16", action="store_true", help="run the model's requests under CPU autocast to bf16")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600, help="the window; the screenshot is the whole page")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each request")
    args = parser.parse_args(argv)
    args.sentences = args.sentences or list(SENTENCES)
    if bool(args.label_a) != bool(args.label_b):
        parser.error("give both --label_a and --label_b examples, or neither.")
    if not 2 <= args.steps <= 50:
        parser.error(f"--steps must be between 2 and 50, got {args.steps}.")
    if not -3 <= args.strength <= 3:
        parser.error(f"--strength must be between -3 and 3 (the page's slider), got {args.strength}.")
    return args


def browser_problem() -> str | None:
    """Why the browser cannot run here (one line, with the way to install it), or None."""
    if not os.path.exists(CHROMIUM) or not shutil.which(CHROMEDRIVER):
        return f"no Chromium at {CHROMIUM} and {CHROMEDRIVER}: install them with `{INSTALL}`"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: `{INSTALL}`"
    return None


def load(folder: str) -> tuple[MineVaeModel, MineVaeProcessor]:
    model = MineVaeModel.from_pretrained(folder).eval()
    return model, MineVaeProcessor.from_pretrained(folder)


def under_bf16_autocast(run: Callable[..., Any]) -> Callable[..., Any]:
    """`Explorer.run` under CPU autocast to bf16. Autocast is thread-local and the server answers each request on a
    thread of its own, so it has to be entered around the operation itself, not around `serve_forever`."""

    @functools.wraps(run)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def serving(model: MineVaeModel, processor: MineVaeProcessor, name: str, **options: Any) -> Iterator[ExplorerServer]:
    """The explorer served from a thread while the block runs; shut down and closed after it, also on errors."""
    server = make_server(model, processor, host="127.0.0.1", port=0, name=name, **options)
    thread = threading.Thread(target=server.serve_forever, name="explorer", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium(width: int, height: int) -> Iterator[Any]:
    """Headless Chromium (the options of tests/test_explorer.py), quit after the block, also on errors."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: containers run as root, where Chromium's sandbox refuses to start; --disable-dev-shm-usage: a
    # container's small /dev/shm would crash the renderer.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def run_operation(driver: Any, button_id: str, output_id: str, timeout: float) -> None:
    """Press `button_id` and wait until the page's request has finished (the output list's `data-state` is `done`);
    a request the server refused (`error`) is a `ScreenshotError` with the page's message."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("id", button_id).click()  # the click handler sets data-state="loading" before returning

    def finished(d: Any) -> str | bool:
        state = d.find_element("id", output_id).get_attribute("data-state")
        return state if state in ("done", "error") else False

    try:
        state = WebDriverWait(driver, timeout).until(finished)
    except TimeoutException:
        raise ScreenshotError(f"{output_id}: no answer within {timeout:g} s (a slow model: raise --timeout)") from None
    if state == "error":
        raise ScreenshotError(f"{output_id}: the page reported: {driver.find_element('id', 'error').text}")


def fill(driver: Any, element_id: str, text: str) -> None:
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(text)  # typed, as a person would: a "\n" is a new line in a text area


def drive_page(driver: Any, url: str, args: argparse.Namespace) -> None:
    """The page with the Reconstruct (and Interpolate, Labels, Attribute) results drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # The model line is filled in by a request of its own (/api/info): wait for it, or the shot says "loading...".
    WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "model").text.startswith("model:"))
    text = "\n".join(args.sentences)
    fill(driver, "reconstruct-input", text)
    run_operation(driver, "reconstruct-button", "reconstruct-output", args.timeout)
    if len(args.sentences) >= 2 and not args.no_interpolate:
        fill(driver, "interpolate-start", args.sentences[0])
        fill(driver, "interpolate-end", args.sentences[1])
        fill(driver, "interpolate-steps", str(args.steps))
        run_operation(driver, "interpolate-button", "interpolate-output", args.timeout)
    if args.label_a:
        fill(driver, "label-a", "\n".join(args.label_a))
        fill(driver, "label-b", "\n".join(args.label_b))
        fill(driver, "attribute-input", text)
        # A range input takes no typing: set its value and fire the event the page listens to for the label beside it.
        driver.execute_script(
            "const s = document.getElementById('attribute-strength'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));",
            str(args.strength),
        )
        run_operation(driver, "attribute-button", "attribute-output", args.timeout)


def full_page_png(driver: Any) -> bytes:
    """The whole page, not just the window: Chromium's DevTools capture beyond the viewport, clipped to the page's
    size (a screenshot through WebDriver stops at the window's bottom edge)."""
    width, height = driver.execute_script(
        "const e = document.documentElement;"
        "return [e.scrollWidth, Math.max(e.scrollHeight, document.body.scrollHeight)];"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    return base64.b64decode(shot["data"])


def write_atomically(path: Path, data: bytes) -> None:
    """Beside its final name first, then renamed over it: an existing picture is only ever replaced by a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(name, 0o644)  # mkstemp's 0600 would make a docs picture unreadable to others
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The cheap checks first: a missing browser or model is told in a second, not after the model has loaded.
    if not Path(args.model).is_dir():
        return fail(f"no model folder at {args.model!r}: train one with `mine-vae train` or pass --model FOLDER.", 2)
    problem = browser_problem()
    if problem:
        return fail(problem, 2)
    from selenium.common.exceptions import WebDriverException

    model, processor = load(args.model)
    options = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    out = Path(args.out)
    try:
        with serving(model, processor, name=Path(args.model).resolve().name, **options) as server:
            if args.bf16:
                # Wrapping the one instance's entry point: explorer.py stays as it is, every operation goes through run.
                server.explorer.run = under_bf16_autocast(server.explorer.run)
            with chromium(args.width, args.height) as driver:
                drive_page(driver, server.url, args)
                png = full_page_png(driver)
    except ScreenshotError as error:
        return fail(str(error), 1)
    except WebDriverException as error:  # e.g. a chromedriver that does not match the browser's version
        return fail(f"the browser failed: {error.msg or type(error).__name__}", 1)
    write_atomically(out, png)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
