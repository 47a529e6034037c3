"""`mine-vae generate` and `mine-vae interpolate`: decode a trained model's prior, reconstructions or the line
between two sentences."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arguments import DecodingArguments, GenerateArguments, InterpolateArguments, LoadArguments
from .common import _load_trained
from .core import CliError, _print_json, _quiet_libraries, _set_threads, _user_errors, format_table
from .decoding import interpolation, prior_samples, reconstructions


def _check_sentences(sentences: Sequence[str], what: str) -> list[str]:
    cleaned = [s.strip() for s in sentences]
    if not cleaned or any(not s for s in cleaned):
        raise CliError(f'{what} must be non-empty sentences; give the text in quotes, e.g. "the market fell".')
    return cleaned


def run_generate(load: LoadArguments, decoding: DecodingArguments, options: GenerateArguments, extra: Any) -> int:
    _quiet_libraries(show_progress=False)
    _set_threads(load.num_threads)
    sentences = list(extra.sentences)
    if options.input_file:
        sentences += _read_lines(options.input_file)
    if options.num_samples < 1 and not sentences:
        raise CliError("--num_samples must be at least 1 (or give sentences to reconstruct).")
    model, processor = _load_trained(load.model, load.device)
    kwargs = {**decoding.generate_kwargs(model), "num_return_sequences": options.num_return_sequences}
    with _user_errors(ValueError):
        if sentences:
            sentences = _check_sentences(sentences, "sentences to reconstruct")
            outputs = reconstructions(model, processor, sentences, load.seed, options.sample_latent, **kwargs)
            per = options.num_return_sequences
            rows = [{"input": s, "output": outputs[i * per + j]} for i, s in enumerate(sentences) for j in range(per)]
        else:
            outputs = prior_samples(model, processor, options.num_samples, load.seed, **kwargs)
            rows = [{"output": text} for text in outputs]
    if load.json_output:
        _print_json(
            {
                "command": "generate",
                "model": load.model,
                "mode": "reconstruction" if sentences else "prior",
                "results": rows,
            }
        )
    elif sentences:
        latent = "a posterior sample" if options.sample_latent else "the posterior mean"
        print(
            format_table(
                [(r["input"], r["output"]) for r in rows],
                headers=("input", "output"),
                title=f"Reconstructions (from {latent})",
            )
        )
    else:
        print(format_table(list(enumerate(outputs, 1)), headers=("#", "sentence"), title="Samples from the prior"))
    return 0


def _read_lines(path: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise CliError(f"--input_file {path!r} does not exist; check the path.")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise CliError(f"--input_file {path!r} holds no sentences; give a file with one sentence a line.")
    return lines


def run_interpolate(load: LoadArguments, decoding: DecodingArguments, options: InterpolateArguments, extra: Any) -> int:
    _quiet_libraries(show_progress=False)
    _set_threads(load.num_threads)
    start, end = _check_sentences([extra.start, extra.end], "the two sentences")
    if options.steps < 2:
        raise CliError(f"--steps must be at least 2 (both endpoints are included), got {options.steps}.")
    model, processor = _load_trained(load.model, load.device)
    steps = interpolation(model, processor, start, end, options.steps, load.seed, **decoding.generate_kwargs(model))
    if load.json_output:
        _print_json(
            {
                "command": "interpolate",
                "model": load.model,
                "start": start,
                "end": end,
                "steps": [{"t": t, "text": text} for t, text in steps],
            }
        )
    else:
        print(
            format_table(
                [(f"{t:.2f}", text) for t, text in steps],
                headers=("t", "sentence"),
                title=f"Interpolation from {start!r} to {end!r}",
            )
        )
    return 0


def _generate_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sentences", nargs="*", help="Sentences to reconstruct (none: sample from the prior).")


def _interpolate_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("start", help="The first sentence (t = 0).")
    parser.add_argument("end", help="The last sentence (t = 1).")
