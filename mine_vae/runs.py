"""Assembling a training run from a preset, a corpus and options: the held-out splits, the model (from scratch or a
pretrained pair), the tokenised data (the length rule), and the trainer with one line on stderr per log. `mine-vae
train` and the study build their runs with these, so a study's run is the one `mine-vae train --preset ...` trains."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .data import tokenize_corpus
from .presets import Preset, build_from_scratch, build_pretrained
from .trainer import LOGGED_TERMS, MineVaeTrainer

# What `mine-vae train` shows of each log line: the Trainer's loss and learning rate around MineVaeTrainer's terms.
TRAIN_LOG_KEYS = ("loss", *LOGGED_TERMS, "learning_rate")


def hold_out(corpus: Any, names: Iterable[str], percentage: float, seed: int = 0) -> tuple[Any, list[str]]:
    """The corpus with each split of `names` it lacks held out of its training text (`percentage` % of it each, at
    least 2 sentences, and at least 2 left to train on), the same sentences for a given seed. Returns the corpus and
    the names of the splits held out; a ValueError names the split and the fix when the text is too short."""
    from datasets import DatasetDict

    if "train" not in corpus:
        splits = ", ".join(corpus) or "none"
        raise ValueError(f"The corpus has no train split (splits: {splits}); give a training text.")
    splits = dict(corpus)
    held_out = [name for name in names if name not in splits]
    for name in held_out:
        size = max(2, round(percentage / 100 * len(corpus["train"])))
        if not 0 < percentage < 100 or len(splits["train"]) - size < 2:
            raise ValueError(
                f"The corpus has no {name} split and {len(splits['train'])} training sentences: give a {name} file, "
                "or a held-out percentage between 1 and 99 of a training text of more sentences."
            )
        parts = splits["train"].train_test_split(test_size=size, seed=seed)
        splits["train"], splits[name] = parts["train"], parts["test"]
    return DatasetDict(splits), held_out


def build_model(
    preset: Preset,
    train_texts: Sequence[str],
    max_length: int,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    encoder: str | None = None,
    decoder: str | None = None,
    **config_kwargs: Any,
) -> tuple[Any, Any]:
    """The preset's model and processor, `config_kwargs` over its model settings: a pretrained pair (`encoder` /
    `decoder`, or the preset's) or the preset's from-scratch model, whose vocabulary is read from `train_texts`."""
    if encoder or decoder or not preset.from_scratch:
        if preset.from_scratch and not (encoder and decoder):
            raise ValueError(
                f"The encoder and the decoder go together: preset {preset.name!r} builds both from scratch; give "
                "both pretrained models, or use preset 'minilm-smollm2'."
            )
        encoder, decoder = encoder or preset.encoder_path(), decoder or preset.decoder_path()
        return build_pretrained(encoder, decoder, max_length, **{**preset.model, **config_kwargs})
    return build_from_scratch(preset, train_texts, max_length, vocab_size, min_frequency, **config_kwargs)


def tokenize(corpus: Any, processor: Any, max_length: int, overlength: str) -> tuple[Any, dict[str, int]]:
    """Tokenise every split for both models, sentences of at most `max_length` tokens (`overlength`: "drop" or
    "truncate" the others). The limits are applied by `tokenize_corpus`, which counts what it drops or cuts; the
    processor's own truncation is lifted so that "drop" can see the long sentences."""
    encode = functools.partial(processor.encode_texts, truncate=False)
    return tokenize_corpus(corpus, encode, *processor.token_limits(max_length), overlength=overlength)


class LogLines(TrainerCallback):
    """One compact line per log on stderr (`[label] step 3/8 | loss 4.2 | kl 1.1 | ...`), in place of the Trainer
    printing dicts to stdout, which a command's results own."""

    def __init__(self, keys: Sequence[str] = TRAIN_LOG_KEYS, label: str | None = None) -> None:
        self.keys = tuple(keys)
        self.prefix = f"[{label}] " if label else ""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            line = f"Trained {state.global_step} steps in {logs['train_runtime']:.0f} s."
        elif "loss" in logs:
            parts = [f"step {state.global_step}/{state.max_steps}"]
            parts += [f"{key} {logs[key]:.4g}" for key in self.keys if isinstance(logs.get(key), (int, float))]
            line = " | ".join(parts)
        else:
            return
        from tqdm.auto import tqdm  # a dependency of transformers

        tqdm.write(self.prefix + line, file=sys.stderr)  # above a progress bar, not through it


class _QuietProgress(ProgressCallback):
    """The progress bar without its printing of each log's dict (to stdout)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def make_trainer(
    model: Any,
    processor: Any,
    args: Any,
    train_dataset: Any,
    *,
    trainer_class: Callable[..., MineVaeTrainer] = MineVaeTrainer,
    log_keys: Sequence[str] = TRAIN_LOG_KEYS,
    log_label: str | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    **trainer_kwargs: Any,
) -> MineVaeTrainer:
    """A `MineVaeTrainer` (or `trainer_class`) of the run whose logs are `LogLines` on stderr: the progress bar is
    kept unless `args.disable_tqdm`, the Trainer's printing of dicts goes."""
    trainer = trainer_class(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=train_dataset,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )
    trainer.remove_callback(PrinterCallback)
    if args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
    else:
        trainer.pop_callback(ProgressCallback)
        trainer.add_callback(_QuietProgress())
    trainer.add_callback(LogLines(log_keys, log_label))
    return trainer


__all__ = ["TRAIN_LOG_KEYS", "LogLines", "build_model", "hold_out", "make_trainer", "tokenize"]
