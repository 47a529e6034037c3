import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Nothing here may reach the Hub; the tiny models and tokenizers are built in the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module's tests. The models are tiny: extra OpenMP threads only add synchronisation
    (on a busy machine spinning threads make training up to 10x slower), and one thread keeps numbers independent of
    the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers of transformers' common tests (tests/test_transformers_common.py runs them from the
    source tree of tests/transformers_sources.py), which its pyproject.toml declares, so pytest does not warn."""
    from transformers_sources import source_root

    root = source_root()
    pyproject = os.path.join(root, "pyproject.toml") if root else None
    if pyproject is None or not os.path.isfile(pyproject):
        return
    try:
        import tomllib
    except ImportError:  # Python 3.10: the markers stay unregistered, which only costs warnings
        return
    with open(pyproject, "rb") as file:
        markers = tomllib.load(file).get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", [])
    # transformers' tests/conftest.py, which the source distribution does not ship, registers these.
    markers += ["accelerate_tests: transformers' marker", "slow: transformers' marker", "torch_compile_test: ditto"]
    for marker in markers:
        config.addinivalue_line("markers", marker)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A tiny training and validation corpus as text files, one sentence a line (for the command-line tests)."""
    import tiny

    folder = tmp_path_factory.mktemp("corpus")
    files = {"train": folder / "train.txt", "validation": folder / "valid.txt"}
    files["train"].write_text("\n".join(tiny.sentences(80, seed=0)) + "\n")
    files["validation"].write_text("\n".join(tiny.sentences(20, seed=1)) + "\n")
    return files
