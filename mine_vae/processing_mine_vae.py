"""The two tokenizers of a MINE-VAE as one object, and the collator that turns raw text into model inputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase
from transformers.utils import PushToHubMixin, logging

logger = logging.get_logger(__name__)

PROCESSOR_CONFIG_NAME = "mine_vae_processor.json"
ENCODER_TOKENIZER_FOLDER = "encoder_tokenizer"
DECODER_TOKENIZER_FOLDER = "decoder_tokenizer"
# Tokenizers without a real limit report a huge model_max_length; past this we treat it as "none given".
_NO_LIMIT = 1_000_000


class MineVaeProcessor(PushToHubMixin):
    """
    Holds the encoder's and the decoder's tokenizers, saves and loads both with the model folder in one call, and
    turns text into the inputs [`MineVaeModel`] takes.

    The decoder sees `BOS + tokens` and predicts `tokens + EOS`; text longer than the limits is truncated with a
    warning (a corpus routinely holds a few over-long lines, and stopping a long run for them would lose more than it
    protects).

    Args:
        encoder_tokenizer: the encoder's tokenizer (adds its own special tokens, e.g. [CLS] ... [SEP]).
        decoder_tokenizer: the decoder's tokenizer; needs a pad token and an EOS token.
        max_encoder_length: longest encoder input, special tokens included (default: the tokenizer's limit, or 512).
        max_decoder_length: longest decoder input, BOS included (default: the tokenizer's limit minus the latent's
            position, or 512).
    """

    # What transformers' length-grouped sampler measures (`model_input_names[0]`) when the dataset has no length column.
    model_input_names: list[str] = ["input_ids", "attention_mask"]

    def __init__(
        self,
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizer: PreTrainedTokenizerBase,
        max_encoder_length: int | None = None,
        max_decoder_length: int | None = None,
    ):
        if decoder_tokenizer.pad_token_id is None:
            raise ValueError(
                "The decoder tokenizer has no pad token; set one before building the processor, e.g. "
                "`decoder_tokenizer.pad_token = decoder_tokenizer.eos_token` (padding is masked out of the loss)."
            )
        if decoder_tokenizer.eos_token_id is None:
            raise ValueError(
                "The decoder tokenizer has no EOS token; set `decoder_tokenizer.eos_token` so sentences end."
            )
        if encoder_tokenizer.pad_token_id is None:
            raise ValueError("The encoder tokenizer has no pad token; set `encoder_tokenizer.pad_token`.")
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.max_encoder_length = max_encoder_length or _tokenizer_limit(encoder_tokenizer, reserve=0)
        self.max_decoder_length = max_decoder_length or _tokenizer_limit(decoder_tokenizer, reserve=1)

    @property
    def decoder_start_token_id(self) -> int:
        """BOS, or EOS for decoders without one (GPT-2 uses <|endoftext|> for both)."""
        bos = self.decoder_tokenizer.bos_token_id
        return bos if bos is not None else self.decoder_tokenizer.eos_token_id

    # ----------------------------------------------------------------------------------------------------------------
    # Text -> token ids -> tensors
    # ----------------------------------------------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], truncate: bool = True) -> dict[str, list[list[int]]]:
        """
        Tokenise a batch of texts for both models, without padding (for `datasets.map(batched=True)`).

        Args:
            texts: non-empty strings.
            truncate: cut over-long texts to `max_encoder_length` / `max_decoder_length` (with one warning per call);
                `False` returns them whole, for callers that filter or count them themselves
                (`mine_vae.data.tokenize_corpus`).

        Returns:
            `{"input_ids": [...], "decoder_token_ids": [...]}`: encoder ids with its special tokens; decoder ids with
            no BOS/EOS (the collator adds them).
        """
        texts = _check_texts(texts)
        encoder_ids = self.encoder_tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        decoder_ids = self.decoder_tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if not truncate:
            return {"input_ids": encoder_ids, "decoder_token_ids": decoder_ids}
        truncated = 0
        for ids, limit, keep_last in (
            (encoder_ids, self.max_encoder_length, True),
            (decoder_ids, self.max_decoder_length - 1, False),
        ):
            for i, seq in enumerate(ids):
                if len(seq) > limit:
                    truncated += 1
                    # Keep the encoder's closing special token ([SEP]) where there is one.
                    ids[i] = seq[: limit - 1] + seq[-1:] if keep_last else seq[:limit]
        if truncated:
            logger.warning(
                f"Truncated {truncated} over-long sequence(s) to max_encoder_length={self.max_encoder_length} / "
                f"max_decoder_length={self.max_decoder_length}; raise these (up to the models' limits) to keep more."
            )
        return {"input_ids": encoder_ids, "decoder_token_ids": decoder_ids}

    def pad(self, features: Sequence[dict[str, Any]]) -> BatchEncoding:
        """
        Pad tokenised examples (`input_ids`, `decoder_token_ids`) into model inputs: `input_ids`, `attention_mask`,
        `decoder_input_ids` (BOS + tokens), `decoder_attention_mask`, and `labels` (tokens + EOS, -100 on padding),
        each of shape `(batch_size, length)`.
        """
        if len(features) == 0:
            raise ValueError("Got an empty batch: give at least one example.")
        encoder = self.encoder_tokenizer.pad(
            {"input_ids": [f["input_ids"] for f in features]}, padding=True, return_tensors="pt"
        )
        start, eos, pad = (
            self.decoder_start_token_id,
            self.decoder_tokenizer.eos_token_id,
            self.decoder_tokenizer.pad_token_id,
        )
        sequences = [list(f["decoder_token_ids"]) for f in features]
        length = max(len(s) for s in sequences) + 1
        decoder_input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        labels = torch.full((len(sequences), length), -100, dtype=torch.long)
        decoder_attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            decoder_input_ids[row, : len(seq) + 1] = torch.tensor([start, *seq], dtype=torch.long)
            labels[row, : len(seq) + 1] = torch.tensor([*seq, eos], dtype=torch.long)
            decoder_attention_mask[row, : len(seq) + 1] = 1
        return BatchEncoding(
            {
                "input_ids": encoder["input_ids"],
                "attention_mask": encoder["attention_mask"],
                "decoder_input_ids": decoder_input_ids,
                "decoder_attention_mask": decoder_attention_mask,
                "labels": labels,
            }
        )

    def __call__(self, texts: str | Sequence[str]) -> BatchEncoding:
        """Raw text (one string or a batch) to padded model inputs (see `pad`)."""
        texts = [texts] if isinstance(texts, str) else texts
        encoded = self.encode_texts(texts)
        features = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
        return self.pad(features)

    def batch_decode(self, sequences: torch.Tensor | Iterable[Iterable[int]], **kwargs) -> list[str]:
        """Decoder token ids (e.g. from `model.generate`) to text, special tokens dropped."""
        kwargs.setdefault("skip_special_tokens", True)
        return self.decoder_tokenizer.batch_decode(sequences, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Compatibility with a model
    # ----------------------------------------------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Raise a `ValueError` naming the fix if these tokenizers cannot feed `model` (a `MineVaeModel`)."""
        for side, tokenizer, embeddings in (
            ("encoder", self.encoder_tokenizer, model.encoder.get_input_embeddings()),
            ("decoder", self.decoder_tokenizer, model.decoder.get_input_embeddings()),
        ):
            rows = embeddings.weight.shape[0]
            if len(tokenizer) > rows:
                raise ValueError(
                    f"The {side} tokenizer has {len(tokenizer)} tokens but the {side}'s embedding has {rows} rows: "
                    f"use the tokenizer the {side} was trained with, or grow the embedding with "
                    f"`model.{side}.resize_token_embeddings(len(tokenizer))`."
                )
        for side, length, prefix in (
            ("encoder", self.max_encoder_length, 0),
            ("decoder", self.max_decoder_length, 1 if model.config.injects_memory else 0),
        ):
            limit = getattr(getattr(model.config, side), "max_position_embeddings", None)
            if limit is not None and length + prefix > limit:
                raise ValueError(
                    f"max_{side}_length={length} (+{prefix} latent position) exceeds the {side}'s {limit} positions; "
                    f"build the processor with max_{side}_length={limit - prefix}."
                )
        eos = self.decoder_tokenizer.eos_token_id
        if model.config.eos_token_id is not None and eos not in _as_list(model.config.eos_token_id):
            raise ValueError(
                f"model.config.eos_token_id={model.config.eos_token_id} but the decoder tokenizer ends sentences with "
                f"id {eos}; generation would not stop. Set `model.config.eos_token_id = {eos}` and "
                f"`model.generation_config.eos_token_id = {eos}`."
            )
        if model.config.decoder_start_token_id != self.decoder_start_token_id:
            raise ValueError(
                f"model.config.decoder_start_token_id={model.config.decoder_start_token_id} but the decoder tokenizer "
                f"starts sentences with id {self.decoder_start_token_id}; set "
                f"`model.config.decoder_start_token_id = {self.decoder_start_token_id}` (and bos_token_id) to match."
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Save / load
    # ----------------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Write both tokenizers (in `encoder_tokenizer/` and `decoder_tokenizer/`) and the processor's settings."""
        os.makedirs(save_directory, exist_ok=True)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", str(save_directory).split(os.path.sep)[-1])
            repo_id = self._create_repo(repo_id, **kwargs)
            files_timestamps = self._get_files_timestamps(save_directory)
        files = list(self.encoder_tokenizer.save_pretrained(os.path.join(save_directory, ENCODER_TOKENIZER_FOLDER)))
        files += self.decoder_tokenizer.save_pretrained(os.path.join(save_directory, DECODER_TOKENIZER_FOLDER))
        config_file = os.path.join(save_directory, PROCESSOR_CONFIG_NAME)
        with open(config_file, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "processor_class": type(self).__name__,
                    "max_encoder_length": self.max_encoder_length,
                    "max_decoder_length": self.max_decoder_length,
                },
                f,
                indent=2,
            )
        files.append(config_file)
        if push_to_hub:
            self._upload_modified_files(
                save_directory,
                repo_id,
                files_timestamps,
                commit_message=kwargs.get("commit_message"),
                token=kwargs.get("token"),
            )
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> MineVaeProcessor:
        """Load both tokenizers from a model folder or Hub repo written by `save_pretrained` (kwargs such as
        `revision`, `token`, `cache_dir` are passed to each tokenizer's `from_pretrained`)."""
        from transformers.utils.hub import cached_file

        config_file = cached_file(pretrained_model_name_or_path, PROCESSOR_CONFIG_NAME, **kwargs)
        with open(config_file, encoding="utf-8") as f:
            settings = json.load(f)
        settings.pop("processor_class", None)
        tokenizers = {
            name: AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=folder, **kwargs)
            for name, folder in (
                ("encoder_tokenizer", ENCODER_TOKENIZER_FOLDER),
                ("decoder_tokenizer", DECODER_TOKENIZER_FOLDER),
            )
        }
        return cls(**tokenizers, **settings)


@dataclass
class MineVaeDataCollator:
    """
    Batches examples for [`MineVaeModel`]: each example is either raw text (`{"text": ...}`) or already tokenised
    by `MineVaeProcessor.encode_texts` (`{"input_ids": ..., "decoder_token_ids": ...}`, e.g. from `datasets.map`).
    """

    processor: MineVaeProcessor

    def __call__(self, features: Sequence[dict[str, Any]]) -> BatchEncoding:
        if len(features) == 0:
            raise ValueError("Got an empty batch: give at least one example.")
        if all("input_ids" in f and "decoder_token_ids" in f for f in features):
            return self.processor.pad(features)
        if all("text" in f for f in features):
            return self.processor([f["text"] for f in features])
        raise ValueError(
            f"Each example needs a 'text' field or the 'input_ids' and 'decoder_token_ids' fields of "
            f"MineVaeProcessor.encode_texts; got fields {sorted(features[0])}."
        )


def _check_texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise TypeError("Give a list of texts, not one string.")
    if len(texts) == 0:
        raise ValueError("Got an empty batch of texts: give at least one sentence.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text at index {i} is a {type(text).__name__}, not a string.")
        if not text.strip():
            raise ValueError(f"Text at index {i} is empty; remove empty lines from the corpus (a VAE needs some x).")
    return texts


def _as_list(value: int | list[int]) -> list[int]:
    return value if isinstance(value, list) else [value]


def _tokenizer_limit(tokenizer: PreTrainedTokenizerBase, reserve: int) -> int:
    limit = tokenizer.model_max_length
    return 512 if limit is None or limit > _NO_LIMIT else int(limit) - reserve


__all__ = ["MineVaeDataCollator", "MineVaeProcessor"]
