"""`mine-vae generate` and `mine-vae interpolate`: decode a trained model's prior, reconstructions or the line
between two sentences."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..text_latent import interpolation, prior_sample_batches, reconstruction_batches
from .arguments import DecodingArguments, GenerateArguments, InterpolateArguments, LoadArguments
from .commands import (
    CliError,
    format_cell,
    format_table,
    inform,
    print_json,
    quiet_library_logs,
    set_threads,
    user_errors,
)
from .decoding import INTERPOLATION_BATCH, most_that_fit, sequence_bytes
from .loading import load_trained, read_sentences
from .output import describe_os_error, replace_on_success, stdout_stream


def _check_sentences(sentences: Sequence[str], what: str) -> list[str]:
    cleaned = [s.strip() for s in sentences]
    if not cleaned or any(not s for s in cleaned):
        raise CliError(f'{what} must be non-empty sentences; give the text in quotes, e.g. "the market fell".')
    return cleaned


def run_generate(load: LoadArguments, decoding: DecodingArguments, options: GenerateArguments, extra: Any) -> int:
    quiet_library_logs(show_progress=False)
    set_threads(load.num_threads)
    sentences = list(extra.sentences)
    if options.input_file:
        sentences += read_sentences(options.input_file, "--input_file")
    if sentences:
        sentences = _check_sentences(sentences, "sentences to reconstruct")
    elif options.num_samples < 1:
        raise CliError("--num_samples must be at least 1 (or give sentences to reconstruct).")
    per_input = options.num_return_sequences
    if per_input > decoding.num_beams and not decoding.do_sample:
        raise CliError(
            f"--num_return_sequences {per_input} needs --do_sample, or --num_beams {per_input} or more: greedy "
            "decoding has one output per latent."
        )
    # The output file is created (beside its final name) before the model loads: a folder that cannot be written
    # fails now, not after the decoding it would cost.
    output = replace_on_success(Path(options.output_file), "--output_file") if options.output_file else stdout_stream()
    with output as stream:
        model, processor = load_trained(load.model, load.device)
        kwargs = {**decoding.generate_kwargs(model), "num_return_sequences": per_input}
        batch = _batch_that_fits(model, options, decoding, kwargs["max_new_tokens"], len(sentences))
        rows = _row_writer(stream, load, options, sentences)
        with user_errors(ValueError):  # transformers' own checks of the decoding flags
            if sentences:
                outputs = reconstruction_batches(
                    model, processor, sentences, load.seed, batch, options.sample_latent, **kwargs
                )
                for start, texts in zip(range(0, len(sentences), batch), outputs):
                    inputs = [s for s in sentences[start : start + batch] for _ in range(per_input)]
                    rows.write([{"input": s, "output": o} for s, o in zip(inputs, texts)])
            else:
                samples = prior_sample_batches(
                    model, processor, options.num_samples, load.seed, batch, options.prior_scale, **kwargs
                )
                for texts in samples:
                    rows.write([{"output": text} for text in texts])
        rows.finish()
    if options.output_file:
        inform(f"Wrote {rows.count} results to {options.output_file}.")
    return 0


def _batch_that_fits(
    model: Any, options: GenerateArguments, decoding: DecodingArguments, max_new_tokens: int, inputs: int
) -> int:
    """--batch_size, lowered where its sequences (inputs x --num_return_sequences x --num_beams) would not fit in
    memory; counts that cannot fit even one input at a time are refused with the most that fits."""
    per_input = options.num_return_sequences * decoding.num_beams
    fit = most_that_fit(sequence_bytes(model, max_new_tokens), model.device)
    if per_input > fit:
        raise CliError(
            f"--num_return_sequences {options.num_return_sequences} (x --num_beams {decoding.num_beams}) does not fit "
            f"in memory: at most {max(fit // decoding.num_beams, 1)} here; ask for fewer, or lower --max_new_tokens."
        )
    most_latents = most_that_fit(4 * model.config.latent_size, model.device)  # the prior's draws are made up front
    if not inputs and options.num_samples > most_latents:
        raise CliError(f"--num_samples {options.num_samples} does not fit in memory: at most {most_latents} here.")
    batch = min(options.batch_size, fit // per_input)
    if batch < options.batch_size:
        inform(f"Decoding {batch} inputs at a time: --batch_size {options.batch_size} does not fit in memory.")
    return batch


def _row_writer(stream: IO[str], load: LoadArguments, options: GenerateArguments, sentences: Sequence[str]) -> _Rows:
    if load.json_output:
        head = {"command": "generate", "model": load.model, "mode": "reconstruction" if sentences else "prior"}
        return _JsonRows(stream, head, "results")
    if sentences:
        latent = "a posterior sample" if options.sample_latent else "the posterior mean"
        width = max(len(format_cell(s)) for s in [*sentences, "input"])
        return _TableRows(stream, f"Reconstructions (from {latent})", ("input", "output"), width, numbered=False)
    width = max(len("#"), len(str(options.num_samples * options.num_return_sequences)))
    return _TableRows(stream, "Samples from the prior", ("#", "sentence"), width, numbered=True)


class _Rows:
    """Results written as each batch is decoded, in the layout of the complete output, and flushed: a long run
    shows its progress (and keeps what is done) instead of printing everything at the end."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.count = 0

    def write(self, rows: Sequence[dict[str, str]]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Close the layout (the end of a JSON document)."""

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as error:
            raise CliError(f"could not write the results ({describe_os_error(error)}).") from error


class _TableRows(_Rows):
    """The table of `format_table`, its first column's width fixed before the rows arrive (the row number, or the
    input sentence), the output last."""

    def __init__(self, stream: IO[str], title: str, headers: tuple[str, str], width: int, numbered: bool) -> None:
        super().__init__(stream)
        self.width, self.numbered = width, numbered
        header = self._line(headers[0].ljust(width), headers[1])
        rule = self._line("-" * width, "-" * len(headers[1]))
        self._emit(f"{title}\n{header}\n{rule}\n")

    def write(self, rows: Sequence[dict[str, str]]) -> None:
        lines = []
        for row in rows:
            self.count += 1
            first = str(self.count).rjust(self.width) if self.numbered else format_cell(row["input"]).ljust(self.width)
            lines.append(self._line(first, format_cell(row["output"])) + "\n")
        self._emit("".join(lines))

    @staticmethod
    def _line(first: str, second: str) -> str:
        return f"  {first}  {second}".rstrip()


class _JsonRows(_Rows):
    """One JSON document, `head`'s keys and then the list of results under `key`, written result by result."""

    def __init__(self, stream: IO[str], head: dict[str, Any], key: str) -> None:
        super().__init__(stream)
        fields = "".join(f"  {json.dumps(name)}: {json.dumps(value)},\n" for name, value in head.items())
        self._emit(f"{{\n{fields}  {json.dumps(key)}: [")

    def write(self, rows: Sequence[dict[str, str]]) -> None:
        parts = []
        for row in rows:
            parts.append(("," if self.count else "") + f"\n    {json.dumps(row)}")
            self.count += 1
        self._emit("".join(parts))

    def finish(self) -> None:
        self._emit(("\n  " if self.count else "") + "]\n}\n")


def run_interpolate(load: LoadArguments, decoding: DecodingArguments, options: InterpolateArguments, extra: Any) -> int:
    quiet_library_logs(show_progress=False)
    set_threads(load.num_threads)
    start, end = _check_sentences([extra.start, extra.end], "the two sentences")
    if options.steps < 2:
        raise CliError(f"--steps must be at least 2 (both endpoints are included), got {options.steps}.")
    model, processor = load_trained(load.model, load.device)
    kwargs = decoding.generate_kwargs(model)
    # The latents and the texts of every step are held until the table is printed (a text: up to a few dozen bytes
    # a token as a Python string); the decoding itself goes in batches of what fits.
    most = most_that_fit(4 * model.config.latent_size + 64 * kwargs["max_new_tokens"], model.device)
    if options.steps > most:
        raise CliError(f"--steps {options.steps} does not fit in memory: at most {most} here.")
    fit = most_that_fit(sequence_bytes(model, kwargs["max_new_tokens"]), model.device)
    if decoding.num_beams > fit:
        raise CliError(f"--num_beams {decoding.num_beams} does not fit in memory: at most {fit} here.")
    batch = min(INTERPOLATION_BATCH, fit // decoding.num_beams)
    with user_errors(ValueError):  # transformers' own checks of the decoding flags
        steps = interpolation(model, processor, start, end, options.steps, load.seed, batch_size=batch, **kwargs)
    if load.json_output:
        print_json(
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


def generate_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sentences", nargs="*", help="Sentences to reconstruct (none: sample from the prior).")


def interpolate_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("start", help="The first sentence (t = 0).")
    parser.add_argument("end", help="The last sentence (t = 1).")
