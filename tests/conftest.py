import os
import sys
from collections.abc import Iterator

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
