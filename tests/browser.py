"""Whether headless Chromium can drive a page here (tests/test_explorer.py, tests/test_examples.py).

The browser tests need Chromium and its driver (`apt-get install -y chromium chromium-driver`) and
`pip install selenium`; without them they are skipped, unless MINE_VAE_REQUIRE_BROWSER=1 (CI sets it), where they fail
so that a CI image that lost the browser cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"


def browser_or_skip() -> None:
    """Return when Chromium, chromedriver and selenium are all there; else skip the test (or fail it under
    MINE_VAE_REQUIRE_BROWSER=1) with the way to install what is missing."""
    problem = None
    if not os.path.exists(CHROMIUM) or not shutil.which(CHROMEDRIVER):
        problem = f"no Chromium at {CHROMIUM} and {CHROMEDRIVER}: install them with `{INSTALL}`"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            problem = f"selenium is not installed: `{INSTALL}`"
    if problem is None:
        return
    if os.environ.get("MINE_VAE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MINE_VAE_REQUIRE_BROWSER=1 but {problem}")
    pytest.skip(problem)
