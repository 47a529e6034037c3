"""Where transformers' own test sources are for tests/test_transformers_common.py, and how they get there.

transformers' common model tests (tests/test_modeling_common.py) ship in its source distribution, not in its wheel.
Run this file once after installing (the README's test command and .ci/run do): it downloads the source distribution
of the installed transformers release from the package index into `.transformers-tests/` at the top of the
repository (git-ignored) and unpacks it. The tests then find it there, or wherever TRANSFORMERS_TESTS_DIR points.

    python tests/transformers_sources.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

SOURCE_VARIABLE = "TRANSFORMERS_TESTS_DIR"
DOWNLOADS = Path(__file__).resolve().parent.parent / ".transformers-tests"
FETCH_COMMAND = "python tests/transformers_sources.py"


def default_root(version: str = transformers.__version__) -> Path:
    """Where this script unpacks the source of transformers `version`."""
    return DOWNLOADS / f"transformers-{version}"


def source_root() -> str | None:
    """The transformers source tree to import the common tests from: TRANSFORMERS_TESTS_DIR, else the one this script
    fetched for the installed release; None when neither is there."""
    if os.environ.get(SOURCE_VARIABLE):
        return os.environ[SOURCE_VARIABLE]
    root = default_root()
    return str(root) if root.is_dir() else None


def fetch(version: str = transformers.__version__) -> Path:
    """Download and unpack transformers `version`'s source distribution (once); returns the source tree."""
    root = default_root(version)
    if (root / "tests" / "test_modeling_common.py").is_file():
        return root
    DOWNLOADS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DOWNLOADS) as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"transformers=={version}", "-d", scratch],
            check=True,
        )  # fmt: skip
        archive = next(Path(scratch).glob("transformers-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        # Unpacked beside, then renamed into place: an interrupted fetch never leaves a half tree at `root`.
        os.replace(Path(scratch) / f"transformers-{version}", root)
    return root


if __name__ == "__main__":
    print(fetch())
