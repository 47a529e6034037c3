"""The two tokenizers of a MINE-VAE as one object, and the collator that turns raw text into model inputs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import PROCESSOR_NAME, cached_file, hf_api, logging

logger = logging.get_logger(__name__)

# The settings file of mine_vae before the processor became a transformers `ProcessorMixin`. `save_pretrained` still
# writes it next to transformers' `processor_config.json` (PROCESSOR_NAME): older mine_vae versions load folders by it,
# and the CLI and `mine_vae.hub` recognise a folder holding a processor by it. `from_pretrained` reads it only when
# `processor_config.json` is missing, i.e. for folders written before the switch.
PROCESSOR_CONFIG_NAME = "mine_vae_processor.json"
# `ProcessorMixin` saves a tokenizer that is not *the* `tokenizer` in a subfolder named after its attribute, which are
# exactly the folders older versions wrote, so both layouts share them.
ENCODER_TOKENIZER_FOLDER = "encoder_tokenizer"
DECODER_TOKENIZER_FOLDER = "decoder_tokenizer"
# The `from_pretrained` arguments that locate a file in a folder or Hub repo (for reading the older settings file).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")
# Tokenizers without a real limit report a huge model_max_length; past this we treat it as "none given".
_NO_LIMIT = 1_000_000
# The length rule: a sentence of n tokens takes n + 2 encoder positions (its tokenizer's [CLS] ... [SEP]) and n + 1
# decoder positions (BOS + tokens in, tokens + EOS out).
ENCODER_SPECIAL_TOKENS, DECODER_SPECIAL_TOKENS = 2, 1


def processor_lengths(max_length: int) -> tuple[int, int]:
    """`max_encoder_length` and `max_decoder_length` of a processor for sentences of at most `max_length` tokens."""
    return max_length + ENCODER_SPECIAL_TOKENS, max_length + DECODER_SPECIAL_TOKENS


class MineVaeProcessor(ProcessorMixin):
    """
    Holds the encoder's and the decoder's tokenizers, saves and loads both with the model folder in one call, and
    turns text into the inputs [`MineVaeModel`] takes.

    A transformers processor: `save_pretrained` writes `processor_config.json` (the max lengths) and the tokenizers in
    `encoder_tokenizer/` and `decoder_tokenizer/`, and with `mine_vae` imported
    `transformers.AutoProcessor.from_pretrained(folder)` returns this class.

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
        # First, so that something other than a tokenizer gets transformers' TypeError naming the argument.
        super().__init__(encoder_tokenizer, decoder_tokenizer)
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
        self.encoder_tokenizer: PreTrainedTokenizerBase = encoder_tokenizer
        self.decoder_tokenizer: PreTrainedTokenizerBase = decoder_tokenizer
        self.max_encoder_length = max_encoder_length or _tokenizer_limit(encoder_tokenizer, reserve=0)
        self.max_decoder_length = max_decoder_length or _tokenizer_limit(decoder_tokenizer, reserve=1)

    @property
    def decoder_start_token_id(self) -> int:
        """BOS, or EOS for decoders without one (GPT-2 uses <|endoftext|> for both)."""
        bos = self.decoder_tokenizer.bos_token_id
        return bos if bos is not None else self.decoder_tokenizer.eos_token_id

    @property
    def max_sentence_length(self) -> int:
        """The most tokens of a sentence, special tokens excluded, that `max_decoder_length` leaves room for."""
        return self.max_decoder_length - DECODER_SPECIAL_TOKENS

    def token_limits(self, max_length: int) -> tuple[int, int]:
        """For sentences of at most `max_length` tokens, the longest encoder ids (special tokens included) and
        decoder ids (without BOS/EOS, which `pad` adds) of `encode_texts`, within this processor's limits: what
        `mine_vae.data.tokenize_corpus` takes."""
        encoder_length, _ = processor_lengths(max_length)
        return min(encoder_length, self.max_encoder_length), min(max_length, self.max_sentence_length)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """
        The decoder's tokenizer, the one whose ids the model generates. transformers reads `processor.tokenizer` from
        any `ProcessorMixin`: `Trainer` aligns the text model's (here the decoder's) special tokens with it, and
        `ProcessorMixin.decode` decodes with it.
        """
        return self.decoder_tokenizer

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
            (decoder_ids, self.max_sentence_length, False),
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
        start, eos = self.decoder_start_token_id, self.decoder_tokenizer.eos_token_id
        sequences = [list(f["decoder_token_ids"]) for f in features]
        rows = {
            "input_ids": [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features],
            "decoder_input_ids": [torch.tensor([start, *seq], dtype=torch.long) for seq in sequences],
            "labels": [torch.tensor([*seq, eos], dtype=torch.long) for seq in sequences],
        }
        return pad_model_inputs(rows, self.encoder_tokenizer.pad_token_id, self.decoder_tokenizer.pad_token_id)

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

    def decode(self, token_ids: torch.Tensor | Iterable[int], **kwargs) -> str:
        """One sequence of decoder token ids to text, special tokens dropped (as `batch_decode`)."""
        kwargs.setdefault("skip_special_tokens", True)
        return self.decoder_tokenizer.decode(token_ids, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Compatibility with a model
    # ----------------------------------------------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Raise a `ValueError` naming the fix if these tokenizers cannot feed `model` (a `MineVaeModel`)."""
        for side, tokenizer, embeddings in (
            ("encoder", self.encoder_tokenizer, model.encoder.get_input_embeddings()),
            ("decoder", self.decoder_tokenizer, model.decoder.get_input_embeddings()),
        ):
            rows = embeddings.num_embeddings  # not weight.shape: DeepSpeed ZeRO-3 partitions the weight to 0 rows
            if len(tokenizer) > rows:
                raise ValueError(
                    f"The {side} tokenizer has {len(tokenizer)} tokens but the {side}'s embedding has {rows} rows: "
                    f"use the tokenizer the {side} was trained with, or grow the embedding with "
                    f"`{'model.encoder' if side == 'encoder' else 'model'}.resize_token_embeddings(len(tokenizer))`."
                )
        for side, length, prefix in (
            ("encoder", self.max_encoder_length, 0),
            ("decoder", self.max_decoder_length, model.config.num_latent_positions),
        ):
            limit = getattr(getattr(model.config, side), "max_position_embeddings", None)
            if limit is not None and length + prefix > limit:
                raise ValueError(
                    f"max_{side}_length={length} (+{prefix} latent positions) exceeds the {side}'s {limit} positions; "
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
        """
        Write both tokenizers (in `encoder_tokenizer/` and `decoder_tokenizer/`; the decoder's also at the top, for
        `AutoTokenizer.from_pretrained(folder)`) and the processor's settings (`processor_config.json`, plus the same
        settings in `mine_vae_processor.json` for older mine_vae versions).

        Args:
            save_directory: the folder (created if missing); a model folder is fine, the names do not clash.
            push_to_hub: also upload the folder's new and changed files to the Hub repo `repo_id` (a keyword
                argument; default: the folder's name). `commit_message` and `token` apply to the upload, the other
                keyword arguments (e.g. `private`) to creating the repo.

        Returns:
            The paths of the two settings files.
        """
        save_directory = str(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        if push_to_hub:
            # Uploaded here rather than by ProcessorMixin, whose upload would run before the older settings file is
            # written below and so leave it out of the repo.
            commit_message = kwargs.pop("commit_message", None)
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            repo_id = hf_api().create_repo(repo_id, exist_ok=True, **kwargs).repo_id
            files_timestamps = self._get_files_timestamps(save_directory)
        files = list(super().save_pretrained(save_directory))
        # The decoder's tokenizer (`self.tokenizer`, whose ids the model reads and generates) also at the top of the
        # folder, where `AutoTokenizer.from_pretrained(folder)` and transformers' pipelines look for a tokenizer.
        self.decoder_tokenizer.save_pretrained(save_directory)
        legacy_file = os.path.join(save_directory, PROCESSOR_CONFIG_NAME)
        with open(legacy_file, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "processor_class": type(self).__name__,
                    "max_encoder_length": self.max_encoder_length,
                    "max_decoder_length": self.max_decoder_length,
                },
                f,
                indent=2,
            )
        files.append(legacy_file)
        if push_to_hub:
            self._upload_modified_files(
                save_directory, repo_id, files_timestamps, commit_message=commit_message, token=kwargs.get("token")
            )
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> MineVaeProcessor:
        """
        Load both tokenizers and the max lengths from a folder or Hub repo written by `save_pretrained`, including
        folders written by mine_vae versions before `processor_config.json` (they hold only `mine_vae_processor.json`).

        Keyword arguments such as `revision`, `token`, `cache_dir` locate the files and are passed to each tokenizer's
        `from_pretrained`; `max_encoder_length` / `max_decoder_length` override the saved lengths.
        """
        if os.path.isdir(pretrained_model_name_or_path):
            folder = os.path.join(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if has_processor_config(folder):
                for name in (ENCODER_TOKENIZER_FOLDER, DECODER_TOKENIZER_FOLDER):
                    check_tokenizer_folder(os.path.join(folder, name))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def get_processor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        transformers' reading of `processor_config.json`, falling back to `mine_vae_processor.json` for folders
        written before the processor was a `ProcessorMixin`. Raises `OSError` when the folder holds neither.
        """
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        processor_dict, unused_kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        # ProcessorMixin returns a dict without `processor_class` (at most a chat template) when there is no
        # processor_config.json, rather than raising, for Hub repos older than that file.
        if "processor_class" in processor_dict or os.path.isfile(pretrained_model_name_or_path):
            return processor_dict, unused_kwargs
        legacy_file = cached_file(
            pretrained_model_name_or_path,
            PROCESSOR_CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            **hub_kwargs,
        )
        if legacy_file is None:
            # Without this the tokenizers would be looked for in the folder itself (ProcessorMixin's fallback for a
            # missing subfolder), and a folder holding only a model would fail with a less helpful message.
            raise OSError(
                f"{pretrained_model_name_or_path} holds no {PROCESSOR_NAME} (nor the {PROCESSOR_CONFIG_NAME} of older "
                "mine_vae versions): it is not a MineVaeProcessor folder. Save one there with "
                "`processor.save_pretrained(folder)`."
            )
        with open(legacy_file, encoding="utf-8") as f:
            processor_dict.update(json.load(f))
        return processor_dict, unused_kwargs


def has_processor_config(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a processor's settings: `processor_config.json`, or the `mine_vae_processor.json` of
    older mine_vae versions (either one loads)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in (PROCESSOR_NAME, PROCESSOR_CONFIG_NAME))


def check_tokenizer_folder(folder: str | os.PathLike) -> None:
    """
    Raise `OSError` naming the folder and the file when a saved tokenizer's files are missing or unreadable.
    transformers would not refuse such a folder: without `tokenizer.json` it builds a tokenizer of the special tokens
    alone (every word becomes the unknown token, and the model computes on that without a word), and a damaged file
    ends in a message about installing sentencepiece or tiktoken.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise OSError(f"the tokenizer folder {folder} is missing; save the processor again with save_pretrained.")
    settings = _read_tokenizer_file(folder, "tokenizer_config.json")
    backend = settings.get("backend", "tokenizers")
    if backend == "tokenizers" or os.path.exists(os.path.join(folder, "tokenizer.json")):
        _read_tokenizer_file(folder, "tokenizer.json")
    elif backend == "sentencepiece" and not any(name.endswith(".model") for name in os.listdir(folder)):
        raise OSError(
            f"{folder} holds no sentencepiece model (*.model) for its {settings.get('tokenizer_class')}; save the "
            "processor again with save_pretrained."
        )


def _read_tokenizer_file(folder: str, name: str) -> dict[str, Any]:
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise OSError(
            f"{folder} lacks {name}: the tokenizer cannot be loaded as it was saved (transformers would build another "
            "one in its place); copy the file back, or save the processor again with save_pretrained."
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "it is not valid JSON"
        raise OSError(
            f"{folder}: {name} cannot be read ({reason}); copy the file back, or save the processor again with "
            "save_pretrained."
        ) from None
    if not isinstance(document, dict):
        raise OSError(f"{folder}: {name} is not a JSON object; copy the file back, or save the processor again.")
    return document


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


# The model inputs in the order a batch holds them, and each one's padding value (None: the side's pad token id).
_PADDING = {
    "input_ids": None,
    "attention_mask": 0,
    "token_type_ids": 0,
    "decoder_input_ids": None,
    "decoder_attention_mask": 0,
    "labels": -100,
}
_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pad_model_inputs(
    rows: Mapping[str, Sequence[torch.Tensor]], encoder_pad_token_id: int, decoder_pad_token_id: int
) -> BatchEncoding:
    """
    Pad per-example model inputs (`input_ids`, `decoder_input_ids`, `labels`, optionally `attention_mask`,
    `token_type_ids`, `decoder_attention_mask`; one 1-D tensor per example each) on the right into
    `(batch_size, length)` tensors: encoder ids with `encoder_pad_token_id`, decoder ids with `decoder_pad_token_id`,
    labels with -100, masks with 0. A missing mask is built from the lengths, so padding is never attended to.
    """
    rows = dict(rows)
    if "attention_mask" not in rows:
        rows["attention_mask"] = [torch.ones_like(ids) for ids in rows["input_ids"]]
    if "decoder_attention_mask" not in rows:
        rows["decoder_attention_mask"] = [torch.ones_like(ids) for ids in rows["decoder_input_ids"]]
    # Decoder inputs, their mask and the labels stay aligned position by position: one length for all three.
    encoder_length = max(len(ids) for ids in rows["input_ids"])
    decoder_length = max(len(ids) for key in ("decoder_input_ids", "labels") for ids in rows[key])
    batch = {}
    for key, value in _PADDING.items():
        if key not in rows:
            continue
        sequences = rows[key]
        encoder_side = key in _ENCODER_INPUTS
        if value is None:
            value = encoder_pad_token_id if encoder_side else decoder_pad_token_id
        padded = torch.full(
            (len(sequences), encoder_length if encoder_side else decoder_length), value, dtype=sequences[0].dtype
        )
        for row, ids in enumerate(sequences):
            padded[row, : len(ids)] = ids
        batch[key] = padded
    return BatchEncoding(batch)


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


__all__ = ["MineVaeDataCollator", "MineVaeProcessor", "pad_model_inputs", "processor_lengths"]
