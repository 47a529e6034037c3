"""`mine-vae embed MODEL TEXT_FILE --output FILE`: the posterior means of a file's sentences, as .npy or .parquet."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkstemp
from typing import Any

from .arguments import NUM_THREADS_HELP
from .commands import CliError, inform, quiet_library_logs, set_threads, user_errors
from .loading import load_trained, read_sentences
from .output import describe_os_error

FORMATS = (".npy", ".parquet")


@dataclass
class EmbedArguments:
    """What `mine-vae embed` writes."""

    _argument_group_name = "embed"

    output: str = field(
        metadata={
            "help": "File to write: .npy (numpy: mu of shape (n, latent_size), or with --with_logvar an array of "
            "shape (2, n, latent_size): `mu, logvar = numpy.load(file)`) or .parquet (columns text, mu[, logvar]). "
            "An existing file is replaced once the new one is complete."
        },
    )
    with_logvar: bool = field(default=False, metadata={"help": "Also write the posterior log-variances."})
    batch_size: int = field(default=64, metadata={"help": "Sentences per forward pass of the encoder."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    num_threads: int | None = field(default=None, metadata={"help": NUM_THREADS_HELP})


def embed_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Folder written by `mine-vae train` (or a checkpoint-N in it, or a Hub id).")
    parser.add_argument("text_file", help="UTF-8 text, one sentence a line (blank lines are skipped).")


def run_embed(options: EmbedArguments, extra: argparse.Namespace) -> int:
    quiet_library_logs(show_progress=False)
    set_threads(options.num_threads)
    # Every check of the input comes before the model loads: a typo costs nothing.
    output = Path(options.output).expanduser()
    if output.suffix.lower() not in FORMATS:
        raise CliError(
            f"--output {options.output!r} has an unknown extension; use .npy (numpy) or .parquet (datasets)."
        )
    if output.is_dir():
        raise CliError(f"--output {options.output!r} is a folder; give a file name.")
    if not output.parent.absolute().is_dir():
        raise CliError(
            f"--output {options.output!r}: the folder {str(output.parent)!r} does not exist; create it first."
        )
    if options.batch_size < 1:
        raise CliError(f"--batch_size must be at least 1, got {options.batch_size}.")
    texts = read_sentences(extra.text_file, "TEXT_FILE")

    from ..text_latent import encode_texts

    model, processor = load_trained(extra.model, options.device)
    with user_errors(ValueError, TypeError):
        mu, logvar = encode_texts(model, processor, texts, options.batch_size, return_logvar=True, progress=True)
    write_embeddings(output, texts, mu.numpy(), logvar.numpy() if options.with_logvar else None)
    inform(f"Wrote {len(texts)} embeddings of size {mu.shape[1]} to {options.output}.")
    return 0


def write_embeddings(path: Path, texts: list[str], mu: Any, logvar: Any | None) -> None:
    """
    Write `mu` (`numpy.ndarray` of shape `(n, latent_size)`, and `logvar` of that shape when given) to `path`, a
    .npy or .parquet file, atomically: into a temporary file beside it, then renamed over it, so that an existing
    file is only ever replaced by a complete one.
    """
    if path.suffix.lower() == ".npy":
        write = _npy_writer(mu, logvar)
    else:
        write = _parquet_writer(texts, mu, logvar)
    try:
        handle, partial_name = mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.close(handle)
    except OSError as error:
        raise CliError(f"--output {str(path)!r} cannot be written ({describe_os_error(error)}).") from error
    partial = Path(partial_name)
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as error:
        raise CliError(f"could not write --output {str(path)!r} ({describe_os_error(error)}).") from error
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)  # after a failure; after the rename the name no longer exists


def _npy_writer(mu: Any, logvar: Any | None) -> Callable[[Path], None]:
    import numpy as np

    array = mu if logvar is None else np.stack([mu, logvar])

    def write(target: Path) -> None:
        with open(target, "wb") as stream:  # a file object: np.save would append .npy to the temporary name
            np.save(stream, array.astype(np.float32, copy=False))

    return write


def _parquet_writer(texts: list[str], mu: Any, logvar: Any | None) -> Callable[[Path], None]:
    import datasets

    columns: dict[str, Any] = {"text": texts, "mu": list(mu)}
    features = {"text": datasets.Value("string"), "mu": datasets.List(datasets.Value("float32"))}
    if logvar is not None:
        columns["logvar"] = list(logvar)
        features["logvar"] = datasets.List(datasets.Value("float32"))

    def write(target: Path) -> None:
        dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        dataset.to_parquet(str(target))

    return write
