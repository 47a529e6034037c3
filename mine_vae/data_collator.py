"""The default collator of MineVaeTrainer, beside the processor's own, and the checks that a dataset's columns are
ones it can batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchEncoding

from .modeling_mine_vae import MineVaeModel
from .processing_mine_vae import MineVaeDataCollator, MineVaeProcessor, pad_model_inputs

# A dataset of ready model inputs needs these; the default collator pads them (and the optional ones when present).
MODEL_INPUT_COLUMNS = ("input_ids", "decoder_input_ids", "labels")
OPTIONAL_MODEL_INPUT_COLUMNS = ("attention_mask", "token_type_ids", "decoder_attention_mask")


def check_train_dataset(dataset: Any) -> None:
    """A DatasetDict (or any dict of datasets) trains nothing or fails deep in the loader: name the fix instead."""
    if not isinstance(dataset, Mapping):
        return
    splits = list(dataset)
    split = "train" if "train" in splits else (splits[0] if splits else "train")
    kind = type(dataset).__name__
    raise ValueError(
        f"train_dataset is a {kind} with splits {splits}; the Trainer trains on one dataset: pass one split, e.g. "
        f"train_dataset=dataset[{split!r}] (several evaluation sets may go to eval_dataset as a dict)."
    )


def check_dataset_columns(dataset: Any, name: str, own_collator: bool, has_processor: bool) -> None:
    """Refuse, before training, a dataset that cannot work: too small to evaluate, or columns the default collator
    cannot batch. With the user's own collator any columns go."""
    if isinstance(dataset, Mapping):  # several evaluation sets
        for key, part in dataset.items():
            check_dataset_columns(part, f"{name}[{key!r}]", own_collator, has_processor)
        return
    if name.startswith("eval") and dataset is not None and hasattr(dataset, "__len__") and len(dataset) < 2:
        raise ValueError(
            f"{name} has {len(dataset)} example(s); the MI estimate (aggregate posterior) and active units need "
            "at least 2, and a few hundred for stable numbers."
        )
    columns = getattr(dataset, "column_names", None)
    if columns is None or own_collator:
        return
    present = set(columns)
    model_inputs = set(MODEL_INPUT_COLUMNS) <= present
    model_inputs_text = (
        f"model inputs {', '.join(map(repr, MODEL_INPUT_COLUMNS))} (and optionally "
        f"{', '.join(map(repr, OPTIONAL_MODEL_INPUT_COLUMNS))})"
    )
    if has_processor and (model_inputs or "text" in present or {"input_ids", "decoder_token_ids"} <= present):
        return
    if not has_processor and model_inputs:
        return
    if has_processor:
        raise ValueError(
            f"{name} has columns {columns}; it needs a 'text' column, the 'input_ids' and 'decoder_token_ids' "
            f"columns of MineVaeProcessor.encode_texts, or {model_inputs_text}. Rename your text column to 'text', "
            "or pass your own data_collator."
        )
    raise ValueError(
        f"{name} has columns {columns}; without a processing_class the default collator only pads "
        f"{model_inputs_text}. Pass processing_class=MineVaeProcessor(...) to train on a 'text' column or on "
        "MineVaeProcessor.encode_texts' columns, or pass your own data_collator."
    )


@dataclass
class MineVaeTrainingCollator:
    """
    The default collator of [`MineVaeTrainer`]. Each example is raw text (`{"text": ...}`), the output of
    `MineVaeProcessor.encode_texts` (`input_ids`, `decoder_token_ids`), or ready model inputs (`input_ids`,
    `decoder_input_ids`, `labels`, optionally `attention_mask`, `token_type_ids`, `decoder_attention_mask`). Model
    inputs are padded on the right: encoder ids with the encoder's pad id, decoder ids with the decoder's, labels
    with -100, masks with 0; a missing mask is built from the lengths so that padding is never attended to.
    Other fields of such examples are dropped, since the model takes only its inputs.
    """

    processor: MineVaeProcessor | None
    encoder_pad_token_id: int
    decoder_pad_token_id: int

    @classmethod
    def for_model(cls, model: MineVaeModel, processor: MineVaeProcessor | None) -> MineVaeTrainingCollator:
        """Pad ids from the processor's tokenizers, or (without one) from the model's config."""
        if processor is not None:
            return cls(processor, processor.encoder_tokenizer.pad_token_id, processor.decoder_tokenizer.pad_token_id)
        encoder_pad = getattr(model.config.encoder, "pad_token_id", None)
        decoder_pad = model.config.pad_token_id
        # Padding is masked (attention) or ignored (-100 labels), so any valid id serves when none is configured.
        return cls(None, encoder_pad if encoder_pad is not None else 0, decoder_pad if decoder_pad is not None else 0)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> BatchEncoding:
        if len(features) == 0:
            raise ValueError("Got an empty batch: give at least one example.")
        tokenized = all("input_ids" in f and "decoder_token_ids" in f for f in features)
        if not tokenized and all(all(key in f for key in MODEL_INPUT_COLUMNS) for f in features):
            return self.pad_model_inputs(features)
        if self.processor is not None and (tokenized or all("text" in f for f in features)):
            return MineVaeDataCollator(self.processor)(features)
        needs = f"model inputs {list(MODEL_INPUT_COLUMNS)}"
        if self.processor is not None:
            needs = f"a 'text' field, the 'input_ids' and 'decoder_token_ids' fields of encode_texts, or {needs}"
        raise ValueError(f"Each example needs {needs}; got fields {sorted(features[0])}.")

    def pad_model_inputs(self, features: Sequence[Mapping[str, Any]]) -> BatchEncoding:
        keys = [key for key in (*MODEL_INPUT_COLUMNS, *OPTIONAL_MODEL_INPUT_COLUMNS) if key in features[0]]
        rows = {key: [_as_ids(f[key]) for f in features] for key in keys}
        return pad_model_inputs(rows, self.encoder_pad_token_id, self.decoder_pad_token_id)


def _as_ids(value: Any) -> torch.Tensor:
    ids = torch.as_tensor(value)
    if ids.ndim != 1:
        raise ValueError(f"Model inputs must be one sequence per example; got a field of shape {tuple(ids.shape)}.")
    return ids


__all__ = [
    "MODEL_INPUT_COLUMNS",
    "OPTIONAL_MODEL_INPUT_COLUMNS",
    "MineVaeTrainingCollator",
    "check_dataset_columns",
    "check_train_dataset",
]
