import os
import sys

# Nothing here may reach the Hub; the tiny models and tokenizers are built in the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))
