"""Corpus, tokenisation and trained-model loading shared by the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .arguments import DataArguments
from .commands import INPUT_ERRORS, PROG, CliError, inform, one_line, user_errors
from .output import describe_os_error


def corpus_from_arguments(data: DataArguments, validation_file: str | None = None) -> Any:
    from ..data import load_corpus

    with user_errors(*INPUT_ERRORS):
        return load_corpus(
            train_file=data.train_file,
            validation_file=validation_file or data.validation_file,
            test_file=data.test_file,
            dataset_name=data.dataset_name,
            dataset_config=data.dataset_config,
            text_column=data.text_column,
        )


def tokenize_splits(corpus: Any, processor: Any, max_length: int, overlength: str) -> tuple[Any, dict[str, int]]:
    """Tokenise for both models (`mine_vae.runs.tokenize`), its errors as one-line CLI errors."""
    from ..runs import tokenize

    with user_errors(ValueError):
        return tokenize(corpus, processor, max_length, overlength)


def load_trained(location: str, device: str | None) -> tuple[Any, Any]:
    """A model folder written by `mine-vae train` (model + both tokenizers), on `device`, in eval mode."""
    from ..processing_mine_vae import PROCESSOR_CONFIG_NAME, has_processor_config

    path = Path(location).expanduser()
    if not path.exists():
        if not _looks_like_hub_id(location):
            raise CliError(
                f"no model at {location!r}: train one with `{PROG} train --output_dir {location}`, or pass --model "
                "<folder written by mine-vae train>."
            )
        inform(f"{location!r} is not a local folder; loading it as a Hub id.")
    elif not (path / "config.json").is_file():
        newest = newest_checkpoint(path) if path.is_dir() else None
        hint = f" Its newest checkpoint is {newest}: pass --model {newest}." if newest else ""
        raise CliError(
            f"{location!r} holds no trained model (no config.json).{hint} Train one with `{PROG} train --output_dir "
            f"{location}`, or pass --model <folder written by mine-vae train>."
        )
    elif not has_processor_config(path):
        raise CliError(
            f"{location!r} has a model but no processor_config.json nor {PROCESSOR_CONFIG_NAME} (its two "
            "tokenizers); save them there with "
            "`MineVaeProcessor(...).save_pretrained(folder)`, or use a folder written by `mine-vae train`."
        )
    source = str(path) if path.exists() else location
    model, processor = load_checked(source, location)
    with user_errors(RuntimeError, AssertionError):  # e.g. --device cuda on a machine without one
        model.to(_device(device)).eval()
    return model, processor


def load_checked(source: str, name: str) -> tuple[Any, Any]:
    """The model and processor saved in `source`, refused (one `CliError` line) when they cannot work together: a
    config.json that does not match the weights (transformers would fail with a report table and a traceback, or
    silently leave the missing layers random), or tokenizers with more tokens than the model's embeddings (an
    IndexError at the first sentence that uses one)."""
    from ..modeling_mine_vae import MineVaeModel
    from ..processing_mine_vae import MineVaeProcessor

    with user_errors(*INPUT_ERRORS), _library_logs_off():
        # ignore_mismatched_sizes: report every differing tensor below, not the first one as a RuntimeError.
        model, loading = MineVaeModel.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True)
        processor = MineVaeProcessor.from_pretrained(source)
    problem = _weights_problem(loading)
    if problem:
        raise CliError(
            f"{name!r}: config.json does not match the saved weights ({problem}); use the config.json saved with "
            "these weights, or train the model again."
        )
    with user_errors(ValueError):
        try:
            processor.check_model(model)
        except ValueError as error:
            raise ValueError(f"{name!r}: the saved tokenizers do not fit the model. {error}") from error
    return model, processor


def _weights_problem(loading: dict[str, Any]) -> str | None:
    mismatched = sorted(loading.get("mismatched_keys") or [])
    if mismatched:
        key, saved, built = mismatched[0]
        return (
            f"{len(mismatched)} tensor(s) differ in shape, e.g. {key} is {list(saved)} in the weights and "
            f"{list(built)} in the config"
        )
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        return f"{len(missing)} tensor(s) of the config are missing from the weights, e.g. {missing[0]}"
    unexpected = sorted(loading.get("unexpected_keys") or [])
    if unexpected:
        return f"the weights hold {len(unexpected)} tensor(s) the config has no place for, e.g. {unexpected[0]}"
    return None


@contextlib.contextmanager
def _library_logs_off() -> Iterator[None]:
    """transformers' own load report is a multi-line table on stderr; `load_checked` says what matters in one line."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def _looks_like_hub_id(location: str) -> bool:
    """`owner/name`: what a Hub model id looks like (a bare name is far more often a mistyped local folder)."""
    parts = location.split("/")
    return len(parts) == 2 and all(parts) and not location.startswith((".", "~"))


def _device(name: str | None) -> torch.device:
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as error:
            message = one_line(str(error))
            raise CliError(f"--device {name!r} is not a device ({message}); use cpu, cuda or cuda:N.") from None
        if device.type == "meta":  # tensors without data: every computation would fail
            raise CliError("--device meta holds no data to compute with; use cpu, cuda or cuda:N.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def newest_checkpoint(folder: Path) -> str | None:
    from ..checkpointing import last_complete_checkpoint

    return last_complete_checkpoint(str(folder))


def subset_splits(corpus: Any, names: Sequence[str]) -> Any:
    from datasets import DatasetDict

    return DatasetDict({name: corpus[name] for name in dict.fromkeys(names)})


def read_sentences(path: str, flag: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; one `CliError` line, naming `flag`, when there are none or
    the file cannot be read."""
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise CliError(f"{flag} {path!r} {what}; give a text file with one sentence a line.")
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of the text
    except UnicodeDecodeError as error:
        raise CliError(
            f"{flag} {path!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at position {error.start}); "
            f"convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > utf8.txt`."
        ) from error
    except OSError as error:
        raise CliError(f"{flag} {path!r} cannot be read ({describe_os_error(error)}).") from error
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CliError(f"{flag} {path!r} holds no sentences; give a file with one sentence a line.")
    return lines
