"""A sentence-transformers module for a MINE-VAE: the posterior mean of q(z|x) as the sentence embedding.

Every saved MINE-VAE carries this file and a `modules.json` naming it, so that (with the optional extra
`pip install "mine-vae[sentence-transformers]"`, or sentence-transformers alone)

    SentenceTransformer(folder_or_hub_id, trust_remote_code=True).encode(["the cat sat on the mat"])

returns the posterior means `mine_vae.latent.encode_texts` returns. This file also loads as remote code: it imports
installed libraries only (the model loads through `AutoModel`). sentence-transformers is imported inside `try`, so the
modelling code, which names this file, loads without it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

try:
    from sentence_transformers.base.modules.input_module import InputModule
except ImportError:  # the optional extra is missing: the class below is then unusable, and says so
    InputModule = None  # type: ignore[assignment,misc]

ENCODER_TOKENIZER_FOLDER = "encoder_tokenizer"
DECODER_TOKENIZER_FOLDER = "decoder_tokenizer"
_MISSING = (
    "Embedding with sentence-transformers needs it installed: pip install 'mine-vae[sentence-transformers]' "
    "(or pip install sentence-transformers)."
)


class MineVaeSentenceEncoder(InputModule if InputModule is not None else torch.nn.Module):
    """
    The MINE-VAE's encoder and posterior as a sentence-transformers input module: texts are tokenised with the
    encoder's tokenizer and embedded as the posterior means (`latent_size` numbers each), as
    `mine_vae.latent.encode_texts` computes them.

    Args:
        model: the `MineVaeModel`.
        encoder_tokenizer: its encoder's tokenizer.
        max_seq_length: longest encoder input, special tokens included (default: the tokenizer's limit).
    """

    config_keys = ["max_seq_length"]
    # Never `config.json`: that is the model's, in the same folder.
    config_file_name = "sentence_mine_vae_config.json"

    def __init__(self, model: Any, encoder_tokenizer: Any, max_seq_length: int | None = None) -> None:
        if InputModule is None:
            raise ImportError(_MISSING)
        super().__init__()
        self.model = model
        self.tokenizer = encoder_tokenizer
        self.max_seq_length = max_seq_length or min(int(encoder_tokenizer.model_max_length), 512)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> MineVaeSentenceEncoder:
        """The model and the encoder tokenizer from a MINE-VAE folder or Hub repo (what sentence-transformers calls
        for the `modules.json` entry)."""
        hub = {key: kwargs[key] for key in ("token", "revision", "local_files_only") if kwargs.get(key) is not None}
        if kwargs.get("cache_folder"):
            hub["cache_dir"] = kwargs["cache_folder"]
        path = model_name_or_path if not subfolder else f"{model_name_or_path}/{subfolder}"
        # The modelling code of the same folder (the auto_map's MineVaeModel, which loads safetensors only): the
        # caller trusted it by loading this module.
        model = AutoModel.from_pretrained(path, trust_remote_code=True, **hub, **(kwargs.get("model_kwargs") or {}))
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder=ENCODER_TOKENIZER_FOLDER, **hub)
        limit = _processor_limit(path, hub)
        return cls(model.eval(), tokenizer, max_seq_length=limit)

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        return dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt")
        )

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        posterior = self.model.encode(features["input_ids"], features.get("attention_mask"))
        features["sentence_embedding"] = posterior.mu
        return features

    def get_embedding_dimension(self) -> int:
        return self.model.config.latent_size

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The MINE-VAE folder again: the model (with `modules.json`) and its encoder tokenizer."""
        self.model.save_pretrained(output_path)
        self.tokenizer.save_pretrained(os.path.join(output_path, ENCODER_TOKENIZER_FOLDER))


def _processor_limit(path: str, hub: dict[str, Any]) -> int | None:
    """The encoder length limit `MineVaeProcessor` saved (`processor_config.json`), so both truncate alike."""
    from transformers.utils import cached_file

    try:
        found = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False, **hub)
    except OSError:
        return None
    if found is None:
        return None
    with open(found, encoding="utf-8") as f:
        return json.load(f).get("max_encoder_length")


__all__ = ["MineVaeSentenceEncoder"]
