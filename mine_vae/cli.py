"""The `mine-vae` command line: `train`, `evaluate`, `generate`, `interpolate` (and `push`, from its own module).

Every command is an `HfArgumentParser` over dataclasses, so each field is a flag (`--max_steps` or `--max-steps`), and a
JSON or YAML file of the same names is an alternative (`mine-vae train run.yaml`, `--config run.yaml`). Values are
layered: dataclass defaults < the preset's < the config file's < flags.

Output contract: results (tables, or one JSON document with `--json`) go to stdout; progress, logs and warnings go to
stderr. Bad input ends in one line on stderr naming the fix and exit code 2, never a traceback. Ctrl-C during `train`
finishes the current step, saves a resumable checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import __version__
from .presets import DEFAULT_PRESET, PRESETS, Preset, build_from_scratch, build_pretrained, get_preset

PROG = "mine-vae"
EXIT_USAGE = 2  # bad input: the convention of argparse and most Unix tools
EXIT_INTERRUPTED = 130  # 128 + SIGINT
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# What `mine-vae train` writes into an output folder, so that --overwrite removes exactly that and nothing else.
RESULTS_FILE = "mine_vae_results.json"
_OWN_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "configuration_mine_vae.py",
    "modeling_mine_vae.py",
    "critic.py",
    "mine_vae_processor.json",
    "training_args.bin",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    RESULTS_FILE,
)
_OWN_FOLDERS = ("encoder_tokenizer", "decoder_tokenizer")


NUM_THREADS_HELP = (
    "CPU threads for torch (default: torch's, or fewer when other processes already keep the cores busy: "
    "oversubscribed threads that wait on each other run many times slower)."
)


class CliError(Exception):
    """Reported as one line naming the fix, without a traceback; exit code 2 (bad input) unless told otherwise."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ====================================================================================================================
# Argument dataclasses
# ====================================================================================================================
@dataclass
class ModelArguments:
    """Which model to build (`train`)."""

    _argument_group_name = "model"

    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={"help": f"Recipe of model, tokenizers, training defaults and data settings: {', '.join(PRESETS)}."},
    )
    encoder: str | None = field(
        default=None, metadata={"help": "A pretrained encoder (local folder or Hub id) instead of the preset's."}
    )
    decoder: str | None = field(
        default=None, metadata={"help": "A pretrained causal decoder (local folder or Hub id) instead of the preset's."}
    )
    latent_size: int | None = field(default=None, metadata={"help": "Dimension of z (default: the preset's)."})
    pooling: str | None = field(default=None, metadata={"help": "Encoder pooling: pooler, first or mean."})
    latent_injection: str | None = field(
        default=None, metadata={"help": "How z reaches the decoder: memory, embedding or both."}
    )
    critic_hidden_size: int | None = field(default=None, metadata={"help": "Width of the critic's hidden layers."})
    xi: str | None = field(default=None, metadata={"help": "xi of the MI bound: a positive number, 'dv' or 'ema'."})
    kl_weight: float | None = field(default=None, metadata={"help": "Peak beta (weight of the KL term)."})
    mi_weight: float | None = field(default=None, metadata={"help": "Peak lambda (weight of the MI lower bound)."})

    def config_kwargs(self) -> dict[str, Any]:
        """The `MineVaeConfig` fields given (flag, config file or preset), with `xi` as a number where it is one."""
        names = ("latent_size", "pooling", "latent_injection", "critic_hidden_size", "xi", "kl_weight", "mi_weight")
        kwargs = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if "xi" in kwargs:
            kwargs["xi"] = _parse_xi(kwargs["xi"])
        return kwargs


@dataclass
class DataArguments:
    """Where the text comes from and how it is cut (`train`, `evaluate`)."""

    _argument_group_name = "data"

    train_file: str | None = field(
        default=None, metadata={"help": "Training text: .txt (a sentence a line), .json(l), .csv, .tsv, .parquet."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation text (same formats)."})
    test_file: str | None = field(default=None, metadata={"help": "Test text (same formats)."})
    text_column: str = field(default="text", metadata={"help": "Column of sentences in json/csv/parquet files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id instead of files."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    max_length: int | None = field(
        default=None, metadata={"help": "Most tokens per sentence, special tokens excluded (default: preset / model)."}
    )
    overlength: str = field(
        default="drop", metadata={"help": "Sentences over --max_length: 'drop' them or 'truncate' them (counted)."}
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "From-scratch presets: most words per vocabulary (default: every word)."}
    )
    min_frequency: int = field(default=1, metadata={"help": "From-scratch presets: least count for a word to be kept."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Train on the first N sentences only."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Evaluate on the first N sentences only."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Held out of the training text when the corpus has no validation split."}
    )


@dataclass
class TrainRunArguments:
    """How `train` behaves around the training itself."""

    _argument_group_name = "run"

    config: str | None = field(default=None, metadata={"help": "JSON or YAML file of flag values (flags win)."})
    resume: bool = field(
        default=False, metadata={"help": "Continue from the newest complete checkpoint in --output_dir."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace the model and checkpoints already in --output_dir."}
    )
    num_samples: int = field(default=5, metadata={"help": "Prior samples printed after training."})
    num_reconstructions: int = field(default=3, metadata={"help": "Reconstructions printed after training."})
    interpolation_steps: int = field(default=5, metadata={"help": "Steps of the interpolation printed after training."})
    json_output: bool = field(default=False, metadata={"aliases": ["--json"], "help": "Print one JSON document."})
    num_threads: int | None = field(default=None, metadata={"help": NUM_THREADS_HELP})


@dataclass
class LoadArguments:
    """Which trained model to use (`evaluate`, `generate`, `interpolate`)."""

    _argument_group_name = "model"

    model: str = field(
        default=PRESETS[DEFAULT_PRESET].training["output_dir"],
        metadata={"help": "Folder written by `mine-vae train` (or a checkpoint-N in it, or a Hub id)."},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    seed: int = field(default=0, metadata={"help": "Seed of the latent draws and of sampling."})
    config: str | None = field(default=None, metadata={"help": "JSON or YAML file of flag values (flags win)."})
    json_output: bool = field(default=False, metadata={"aliases": ["--json"], "help": "Print one JSON document."})
    num_threads: int | None = field(default=None, metadata={"help": NUM_THREADS_HELP})


@dataclass
class EvaluateArguments:
    """What `evaluate` measures."""

    _argument_group_name = "evaluation"

    split: str | None = field(
        default=None, metadata={"help": "Split to evaluate (default: validation, else test, else the only split)."}
    )
    file: str | None = field(
        default=None, metadata={"help": "Evaluate on this file instead (same formats as training)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Sentences per batch."})
    importance_samples: int = field(
        default=10, metadata={"help": "Importance samples per sentence for the NLL (papers use 100; slower)."}
    )
    bleu: bool = field(default=False, metadata={"help": "Also compute reconstruction BLEU (greedy decoding)."})


@dataclass
class DecodingArguments:
    """How text is decoded from a latent (`generate`, `interpolate`)."""

    _argument_group_name = "decoding"

    max_new_tokens: int = field(
        default=50, metadata={"help": "Most tokens per generated sentence (capped at what the decoder can hold)."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample tokens instead of greedy / beam decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_k: int | None = field(default=None, metadata={"help": "Sample among the k likeliest tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling: the smallest set with mass p."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: greedy or sampling)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty on repeated tokens (1: none)."})

    def generate_kwargs(self, model: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": min(self.max_new_tokens, generation_limit(model)),
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:  # transformers warns about sampling options given without sampling
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


@dataclass
class GenerateArguments:
    """What `generate` decodes."""

    _argument_group_name = "generation"

    num_samples: int = field(default=5, metadata={"help": "Sentences drawn from the prior when no input is given."})
    input_file: str | None = field(
        default=None, metadata={"help": "Reconstruct the sentences of this file (one a line)."}
    )
    sample_latent: bool = field(
        default=False, metadata={"help": "Reconstruct from a posterior sample instead of the posterior mean."}
    )
    num_return_sequences: int = field(default=1, metadata={"help": "Outputs per input sentence."})


@dataclass
class InterpolateArguments:
    _argument_group_name = "interpolation"

    steps: int = field(default=5, metadata={"help": "Points on the line between the two latents, endpoints included."})


# ====================================================================================================================
# The command registry
# ====================================================================================================================
@dataclass(frozen=True)
class Command:
    """
    One `mine-vae` subcommand. Other modules add theirs with `register_command` (the `push` command of the Hub issue
    belongs in its own module and registers itself; see `_PLUGIN_MODULES`).

    Args:
        name: the word after `mine-vae`.
        usage: the usage line of `mine-vae NAME --help` (argparse's own would list every option).
        summary: one line for `mine-vae --help`.
        examples: shown at the end of `mine-vae NAME --help`.
        dataclasses: the argument dataclasses; their instances reach `run` in this order.
        run: does the work, returns the exit code.
        positionals: adds positional arguments to the parser; their values reach `run` as a last `Namespace`.
        preset_defaults: the command takes the preset's defaults (and a `--preset` flag).
        positional_config: `mine-vae NAME config.yaml` reads a config file (commands without positionals).
    """

    name: str
    usage: str
    summary: str
    examples: str
    dataclasses: tuple[type, ...]
    run: Callable[..., int]
    positionals: Callable[[argparse.ArgumentParser], None] | None = None
    preset_defaults: bool = False
    positional_config: bool = False


COMMANDS: dict[str, Command] = {}

# Modules imported on first use of the CLI so that they can `register_command` (e.g. "mine_vae.hub" for `push`).
_PLUGIN_MODULES: tuple[str, ...] = ("mine_vae.hub",)


def register_command(command: Command) -> None:
    """Add (or replace) a subcommand of `mine-vae`."""
    COMMANDS[command.name] = command


# ====================================================================================================================
# Parsing: flags over config file over preset over dataclass defaults
# ====================================================================================================================
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, and the examples epilog printed as written."""


class _Parser(HfArgumentParser):
    """An `HfArgumentParser` whose usage errors are one `CliError` line instead of usage text and `sys.exit`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see `{self.prog} --help`)")


def _make_parser(command: Command) -> _Parser:
    parser = _Parser(
        command.dataclasses,
        prog=f"{PROG} {command.name}",
        usage=command.usage,
        description=command.summary,
        epilog=command.examples,
        formatter_class=_HelpFormatter,
    )
    # Fields of dataclasses without a group name (the Trainer's arguments) land in argparse's default group.
    has_training_arguments = any(issubclass(cls, TrainingArguments) for cls in command.dataclasses)
    parser._optionals.title = (
        "training arguments (MineVaeTrainingArguments) and help" if has_training_arguments else "help"
    )
    if command.positionals is not None:
        command.positionals(parser)
    elif command.positional_config:
        parser.add_argument("config_file", nargs="?", default=None, help="JSON or YAML file of flag values.")
    return parser


def _parse(command: Command, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse `argv` into the command's dataclasses (plus a Namespace of positionals when it has any)."""
    config_path = _config_path(command, argv)
    file_values = _read_config(config_path) if config_path else {}
    parser = _make_parser(command)
    dests = {action.dest for action in parser._actions}
    if command.preset_defaults:
        preset = _preset_from(argv, file_values)
        parser.set_defaults(**{k: v for k, v in preset.defaults().items() if k in dests})
    unknown = sorted(set(file_values) - _all_dests())
    if unknown:
        raise CliError(f"{config_path}: unknown setting(s) {', '.join(unknown)}; see `{PROG} {command.name} --help`.")
    parser.set_defaults(**{k: v for k, v in file_values.items() if k in dests})
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=list(argv), return_remaining_strings=True, look_for_args_file=False
        )
    except (ValueError, TypeError, ImportError) as error:  # a dataclass's own checks (MineVaeTrainingArguments)
        raise CliError(str(error)) from error
    if remaining:
        raise CliError(f"unrecognized arguments: {' '.join(remaining)} (see `{PROG} {command.name} --help`)")
    return tuple(parsed)


def _config_path(command: Command, argv: Sequence[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(list(argv))
    if known.config:
        return known.config
    if command.positional_config and rest and not rest[0].startswith("-") and rest[0].endswith(CONFIG_SUFFIXES):
        return rest[0]
    return None


def _read_config(path: str) -> dict[str, Any]:
    """A flat mapping of flag names (dashes or underscores) from a JSON or YAML file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CliError(f"config file {path!r} does not exist; check the path.")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".json":
            values = json.loads(text) if text.strip() else {}
        else:
            values = _load_yaml(text)
    except ValueError as error:
        raise CliError(f"config file {path!r} is not valid {file.suffix[1:].upper()}: {error}") from error
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CliError(
            f"config file {path!r} must hold a mapping of flag names to values, not {type(values).__name__}."
        )
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError as error:
        raise CliError("YAML config files need PyYAML: `pip install pyyaml`, or write the config as JSON.") from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(" ".join(str(error).split())) from error


def _preset_from(argv: Sequence[str], file_values: Mapping[str, Any]) -> Preset:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(list(argv))
    name = known.preset or file_values.get("preset") or DEFAULT_PRESET
    try:
        return get_preset(str(name))
    except ValueError as error:
        raise CliError(f"{error} (`--preset NAME`)") from error


def _all_dests() -> set[str]:
    """Every setting any command takes: a shared config file may hold settings of other commands."""
    names = {"config_file"}
    for command in COMMANDS.values():
        for cls in command.dataclasses:
            names.update(f.name for f in dataclasses.fields(cls) if f.init)
    return names


def _parse_xi(value: Any) -> float | str:
    """`--xi 1.0` is a number, `--xi dv` a mode (the flag is a string: HfArgumentParser takes one type per flag)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# ====================================================================================================================
# Errors, output and shared helpers
# ====================================================================================================================
@contextlib.contextmanager
def _user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the package's checks of user input (clear ValueErrors, missing files) into one-line CLI errors."""
    try:
        yield
    except types as error:
        raise CliError(str(error)) from error


_INPUT_ERRORS = (ValueError, FileNotFoundError, OSError, TypeError, ImportError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None, title: str | None = None) -> str:
    """Rows as aligned plain-text columns (numbers right-aligned, text left-aligned)."""
    cells = [[_cell(value) for value in row] for row in rows]
    if headers is not None:
        cells.insert(0, list(headers))
    if not cells:
        return title or ""
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(len(r) for r in cells))]
    numeric = [all(_is_number(row[i]) for row in rows if i < len(row)) for i in range(len(widths))]
    lines = [title] if title else []
    for index, row in enumerate(cells):
        parts = [
            value.rjust(widths[i]) if numeric[i] and not (headers and index == 0) else value.ljust(widths[i])
            for i, value in enumerate(row)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
        if headers is not None and index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())  # a generated newline would break the table's rows
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _print_json(document: Mapping[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=_json_default, allow_nan=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _quiet_libraries(show_progress: bool) -> None:
    """Library logs at warning level on stderr; datasets' per-map progress bars only where they help (training)."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_warning()
    datasets.logging.set_verbosity_warning()
    if show_progress:
        datasets.enable_progress_bars()
        transformers.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        transformers.logging.disable_progress_bar()
    # The Trainer's default pin_memory=True warns on every CPU-only dataloader; it changes nothing there.
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")


def _set_threads(requested: int | None) -> None:
    """Use `requested` CPU threads, or pick them: torch's default (one per core) on an idle machine, fewer when
    the load average says other processes already use the cores. Oversubscribed OpenMP threads spin at every
    barrier while the thread they wait for is descheduled; on a shared 2-core machine that made a training step
    15 times slower with 2 threads than with 1."""
    if requested is not None:
        if requested < 1:
            raise CliError(f"--num_threads must be at least 1, got {requested}.")
        torch.set_num_threads(requested)
        return
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return  # the user already chose, or the platform cannot tell
    default = torch.get_num_threads()
    load = os.getloadavg()[0]
    idle_cores = (os.cpu_count() or default) - load
    threads = max(1, min(default, int(idle_cores + 0.5)))
    if threads < default:
        torch.set_num_threads(threads)
        # A log line, not stderr output: error paths must stay one line long. (`train` states its thread count in
        # the model summary, printed once the inputs have been checked.)
        logging.getLogger(__name__).info(
            f"The machine is busy (load {load:.1f} on {os.cpu_count()} cores): using {threads} thread(s) instead of "
            f"{default}; --num_threads N to choose."
        )


# ====================================================================================================================
# Corpus, model and tokenisation
# ====================================================================================================================
def _load_corpus(data: DataArguments, validation_file: str | None = None) -> Any:
    from .data import load_corpus

    with _user_errors(*_INPUT_ERRORS):
        return load_corpus(
            train_file=data.train_file,
            validation_file=validation_file or data.validation_file,
            test_file=data.test_file,
            dataset_name=data.dataset_name,
            dataset_config=data.dataset_config,
            text_column=data.text_column,
        )


def _tokenize(corpus: Any, processor: Any, max_length: int, overlength: str) -> tuple[Any, dict[str, int]]:
    """Tokenise for both models. The limits are applied by `tokenize_corpus`, which counts what it drops or cuts;
    the processor's own truncation is lifted so that `overlength="drop"` can see the long sentences."""
    from .data import tokenize_corpus

    encoder_limit = min(max_length + 2, processor.max_encoder_length)  # + [CLS] ... [SEP]
    decoder_limit = min(max_length, processor.max_decoder_length - 1)  # the collator adds BOS / EOS
    with _user_errors(ValueError):
        encode = functools.partial(processor.encode_texts, truncate=False)
        return tokenize_corpus(corpus, encode, encoder_limit, decoder_limit, overlength=overlength)


def _load_trained(location: str, device: str | None) -> tuple[Any, Any]:
    """A model folder written by `mine-vae train` (model + both tokenizers), on `device`, in eval mode."""
    from .modeling_mine_vae import MineVaeModel
    from .processing_mine_vae import PROCESSOR_CONFIG_NAME, MineVaeProcessor

    path = Path(location).expanduser()
    if not path.exists():
        if not _looks_like_hub_id(location):
            raise CliError(
                f"no model at {location!r}: train one with `{PROG} train --output_dir {location}`, or pass --model "
                "<folder written by mine-vae train>."
            )
        _err(f"{location!r} is not a local folder; loading it as a Hub id.")
    elif not (path / "config.json").is_file():
        newest = _newest_checkpoint(path) if path.is_dir() else None
        hint = f" Its newest checkpoint is {newest}: pass --model {newest}." if newest else ""
        raise CliError(
            f"{location!r} holds no trained model (no config.json).{hint} Train one with `{PROG} train --output_dir "
            f"{location}`, or pass --model <folder written by mine-vae train>."
        )
    elif not (path / PROCESSOR_CONFIG_NAME).is_file():
        raise CliError(
            f"{location!r} has a model but no {PROCESSOR_CONFIG_NAME} (its two tokenizers); save them there with "
            "`MineVaeProcessor(...).save_pretrained(folder)`, or use a folder written by `mine-vae train`."
        )
    source = str(path) if path.exists() else location
    with _user_errors(*_INPUT_ERRORS):
        model = MineVaeModel.from_pretrained(source)
        processor = MineVaeProcessor.from_pretrained(source)
    with _user_errors(RuntimeError, AssertionError):  # e.g. --device cuda on a machine without one
        model.to(_device(device)).eval()
    return model, processor


def _looks_like_hub_id(location: str) -> bool:
    """`owner/name`: what a Hub model id looks like (a bare name is far more often a mistyped local folder)."""
    parts = location.split("/")
    return len(parts) == 2 and all(parts) and not location.startswith((".", "~"))


def _device(name: str | None) -> torch.device:
    if name:
        with _user_errors(RuntimeError):
            return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _newest_checkpoint(folder: Path) -> str | None:
    from .trainer import last_complete_checkpoint

    return last_complete_checkpoint(str(folder))


def generation_limit(model: Any) -> int:
    """Most new tokens the decoder can generate: its positions, less z's key/value position and the start token."""
    positions = getattr(model.config.decoder, "max_position_embeddings", None)
    if positions is None:
        return sys.maxsize
    return positions - (1 if model.config.injects_memory else 0) - 1


def decode(processor: Any, sequences: torch.Tensor) -> list[str]:
    """Generated ids to text: the start token dropped, cut at the first EOS, pads dropped. Other special tokens are
    kept, so a word-level decoder's `<unk>` stays visible instead of silently vanishing from PTB-style samples."""
    tokenizer = processor.decoder_tokenizer
    start, eos, pad = processor.decoder_start_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    texts = []
    for row in sequences.tolist():
        if row and row[0] == start:
            row = row[1:]
        if eos in row:
            row = row[: row.index(eos)]
        row = [token for token in row if token != pad]
        texts.append(tokenizer.decode(row, skip_special_tokens=False).strip())
    return texts


# ====================================================================================================================
# Evaluation, samples, reconstructions, interpolation: shared by train and the other commands
# ====================================================================================================================
# How `train` decodes its prior samples (see _final_report).
REPORT_SAMPLING = {"do_sample": True, "top_p": 0.9, "temperature": 0.8}
REPORT_SAMPLING_TEXT = "nucleus sampling, top_p 0.9, temperature 0.8"
METRIC_ORDER = ("nll", "ppl", "ppl_word", "kl", "mi", "au", "mi_bound", "reconstruction", "elbo", "bleu")
METRIC_HELP = {
    "nll": "negative log-likelihood per sentence (importance-weighted, nats)",
    "ppl": "perplexity per decoder token",
    "ppl_word": "perplexity per word (+1 end-of-sentence per sentence)",
    "kl": "KL(q(z|x) || p(z)) per sentence (nats)",
    "mi": "mutual information I(x; z) under the aggregate posterior (nats)",
    "au": "active units (latent dimensions with Var[mu] > 0.01)",
    "mi_bound": "the critic's lower bound on I(x; z) (nats)",
    "reconstruction": "-log p(x|z), one posterior sample (nats)",
    "elbo": "evidence lower bound per sentence (nats)",
    "bleu": "reconstruction BLEU, greedy from the posterior mean",
}


def evaluate_split(
    model: Any,
    processor: Any,
    dataset: Any,
    batch_size: int,
    importance_samples: int,
    bleu: bool = False,
    show_progress: bool = True,
) -> dict[str, float]:
    """`evaluate_vae` over a tokenised split (columns text, input_ids, decoder_token_ids), with word perplexity."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .evaluation import count_words, evaluate_vae
    from .processing_mine_vae import MineVaeDataCollator

    if "length" in dataset.column_names:  # similar lengths per batch: less padding; the metrics are sums anyway
        lengths = dataset["length"]
        dataset = dataset.select(sorted(range(len(dataset)), key=lengths.__getitem__))
    loader = DataLoader(
        dataset.select_columns(["input_ids", "decoder_token_ids"]),
        batch_size=batch_size,
        collate_fn=MineVaeDataCollator(processor),
    )
    batches = tqdm(loader, desc="Evaluating", file=sys.stderr, disable=not show_progress, leave=False)
    return evaluate_vae(
        model,
        batches,
        num_importance_samples=importance_samples,
        word_counts=count_words(dataset["text"]),
        compute_bleu=bleu,
        processor=processor,
    )


def metrics_table(metrics: Mapping[str, float], title: str) -> str:
    rows = [(name, metrics[name], METRIC_HELP[name]) for name in METRIC_ORDER if name in metrics]
    return format_table(rows, headers=("metric", "value", "meaning"), title=title)


@torch.no_grad()
def prior_samples(model: Any, processor: Any, count: int, seed: int, **generate_kwargs: Any) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(count, model.config.latent_size, generator=generator).to(model.device)
    torch.manual_seed(seed)  # token sampling, when asked for
    return decode(processor, model.generate(latent=latent, **generate_kwargs))


@torch.no_grad()
def reconstructions(
    model: Any, processor: Any, sentences: Sequence[str], seed: int, sample_latent: bool = False, **generate_kwargs: Any
) -> list[str]:
    batch = processor(list(sentences)).to(model.device)
    torch.manual_seed(seed)
    generated = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        sample_latent=sample_latent,
        **generate_kwargs,
    )
    return decode(processor, generated)


@torch.no_grad()
def interpolation(
    model: Any, processor: Any, start: str, end: str, steps: int, seed: int, **generate_kwargs: Any
) -> list[tuple[float, str]]:
    """Decode `steps` latents evenly spaced between the posterior means of `start` and `end`."""
    batch = processor([start, end]).to(model.device)
    posterior = model.encode(batch["input_ids"], batch["attention_mask"])
    with _user_errors(ValueError):
        latents = model.interpolate(posterior.mu[0], posterior.mu[1], steps)
    torch.manual_seed(seed)
    texts = decode(processor, model.generate(latent=latents, **generate_kwargs))
    return [(index / (steps - 1), text) for index, text in enumerate(texts)]


def _check_sentences(sentences: Sequence[str], what: str) -> list[str]:
    cleaned = [s.strip() for s in sentences]
    if not cleaned or any(not s for s in cleaned):
        raise CliError(f'{what} must be non-empty sentences; give the text in quotes, e.g. "the market fell".')
    return cleaned


# ====================================================================================================================
# train
# ====================================================================================================================
class _StopOnInterrupt(TrainerCallback):
    """The first Ctrl-C asks the Trainer to save a checkpoint and stop at the end of the current step (a step cut in
    half, with the critic updated but not the VAE, would not resume exactly); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


@contextlib.contextmanager
def _interrupt_handler(stopper: _StopOnInterrupt) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        if stopper.requested:
            raise KeyboardInterrupt
        stopper.requested = True
        _err("\nCtrl-C: saving a checkpoint at the end of this step (press Ctrl-C again to quit without saving).")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _LogLines(TrainerCallback):
    """One compact line per log on stderr, instead of the Trainer printing dicts to stdout (which `--json` owns)."""

    KEYS = ("loss", "reconstruction", "kl", "mi_bound", "critic_loss", "beta", "lambda", "learning_rate")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            line = f"Trained {state.global_step} steps in {logs['train_runtime']:.0f} s."
        elif "loss" in logs:
            parts = [f"step {state.global_step}/{state.max_steps}"]
            parts += [f"{key} {logs[key]:.4g}" for key in self.KEYS if isinstance(logs.get(key), (int, float))]
            line = " | ".join(parts)
        else:
            return
        from tqdm.auto import tqdm  # a dependency of transformers

        tqdm.write(line, file=sys.stderr)  # above the progress bar, not through it


def _check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a saved model or checkpoints unless told to (--overwrite) or continuing them (--resume)."""
    if resume:
        return
    if output_dir.exists() and not output_dir.is_dir():
        raise CliError(f"--output_dir {str(output_dir)!r} is a file; choose a folder.")
    holds_model = (output_dir / "config.json").is_file() or (output_dir / "model.safetensors").is_file()
    checkpoints = sorted(output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    if not (holds_model or checkpoints):
        return
    if not overwrite:
        what = "a trained model" if holds_model else f"{len(checkpoints)} checkpoint(s) of an unfinished run"
        raise CliError(
            f"--output_dir {str(output_dir)!r} already holds {what}; pass --overwrite to replace it, --resume to "
            "continue its run, or choose another --output_dir."
        )
    _remove_previous_run(output_dir, checkpoints)


def _remove_previous_run(output_dir: Path, checkpoints: Sequence[Path]) -> None:
    """Delete what a previous `mine-vae train` wrote there, and only that (the folder may hold the user's files)."""
    for folder in [*checkpoints, *(output_dir / name for name in _OWN_FOLDERS)]:
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in _OWN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    _err(f"--overwrite: removed the previous model and checkpoints from {output_dir}.")


def _resume_checkpoint(training_args: Any, run: TrainRunArguments) -> str | None:
    from .trainer import is_complete_checkpoint, last_complete_checkpoint

    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not is_complete_checkpoint(explicit):
            raise CliError(
                f"--resume_from_checkpoint {explicit!r} is not a complete checkpoint; pass a checkpoint-N folder "
                "holding trainer_state.json, or use --resume for the newest one in --output_dir."
            )
        return explicit
    if not run.resume:
        return None
    checkpoint = last_complete_checkpoint(training_args.output_dir)
    if checkpoint is None:
        raise CliError(
            f"--resume: no complete checkpoint in {training_args.output_dir!r}; check --output_dir, or start a new run "
            "without --resume."
        )
    return checkpoint


def _build_model(
    preset: Preset, model_args: ModelArguments, data: DataArguments, train_texts: Sequence[str], checkpoint: str | None
) -> tuple[Any, Any]:
    """The model and processor to train: from the checkpoint when resuming (its architecture and tokenizers win over
    flags), else a pretrained pair (--encoder/--decoder or the preset's), else the preset's from-scratch model."""
    from .modeling_mine_vae import MineVaeModel
    from .processing_mine_vae import MineVaeProcessor

    with _user_errors(*_INPUT_ERRORS):
        if checkpoint is not None:
            return MineVaeModel.from_pretrained(checkpoint), MineVaeProcessor.from_pretrained(checkpoint)
        config_kwargs = model_args.config_kwargs()
        if model_args.encoder or model_args.decoder or not preset.from_scratch:
            encoder = model_args.encoder or _preset_side(preset, "encoder")
            decoder = model_args.decoder or _preset_side(preset, "decoder")
            return build_pretrained(encoder, decoder, data.max_length, **{**preset.model, **config_kwargs})
        return build_from_scratch(
            preset, train_texts, data.max_length, data.vocab_size, data.min_frequency, **config_kwargs
        )


def _preset_side(preset: Preset, side: str) -> str:
    if preset.from_scratch:
        raise CliError(
            f"--encoder and --decoder go together: preset {preset.name!r} builds both from scratch; give both "
            f"pretrained models, or use --preset minilm-smollm2."
        )
    return preset.encoder_path() if side == "encoder" else preset.decoder_path()


def _split_for_eval(corpus: Any, data: DataArguments, seed: int) -> tuple[Any, str]:
    """The training split and the evaluation split; without a validation split, a held-out share of the training
    text (the final metrics must come from sentences the model has not trained on)."""
    from datasets import DatasetDict

    if "train" not in corpus:
        raise CliError(f"the corpus has no train split (splits: {', '.join(corpus)}); pass --train_file.")
    for name in ("validation", "test"):
        if name in corpus:
            return corpus, name
    share = data.validation_split_percentage / 100
    if not 0 < share < 1 or len(corpus["train"]) < 4:
        raise CliError(
            "the corpus has no validation split: pass --validation_file, or --validation_split_percentage between "
            "1 and 99 with at least 4 training sentences."
        )
    parts = corpus["train"].train_test_split(test_size=max(2, round(share * len(corpus["train"]))), seed=seed)
    _err(f"No validation split: holding out {len(parts['test'])} training sentences for the final evaluation.")
    return DatasetDict({"train": parts["train"], "validation": parts["test"]}), "validation"


def _first(dataset: Any, count: int | None) -> Any:
    return dataset if count is None or count >= len(dataset) else dataset.select(range(count))


def _data_summary(counts: Mapping[str, int], source: str) -> str:
    rows = []
    for split in dict.fromkeys(key.split("/")[0] for key in counts):
        rows.append(
            (
                split,
                counts[f"{split}/kept"],
                counts[f"{split}/dropped_too_long"],
                counts[f"{split}/truncated_encoder"] + counts[f"{split}/truncated_decoder"],
                counts[f"{split}/dropped_empty"],
            )
        )
    return format_table(rows, headers=("split", "sentences", "too long (dropped)", "truncated", "empty"), title=source)


def _model_summary(model: Any, preset_name: str) -> str:
    def describe(config: Any) -> str:
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", "?")
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", "?")
        return f"{config.model_type} {layers}x{hidden}"

    parameters = sum(p.numel() for p in model.parameters())
    config = model.config
    return (
        f"Model ({preset_name}): encoder {describe(config.encoder)}, decoder {describe(config.decoder)}, latent "
        f"{config.latent_size}, xi={config.xi}, peak beta={config.kl_weight}, peak lambda={config.mi_weight}; "
        f"{parameters:,} parameters; {torch.get_num_threads()} CPU thread(s) (--num_threads)."
    )


def _replace_progress_printing(trainer: Any) -> None:
    trainer.remove_callback(PrinterCallback)
    if trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
    else:
        # Keep the progress bar, drop its dict printing: the bar's on_log prints to stdout.
        trainer.pop_callback(ProgressCallback)
        trainer.add_callback(_QuietProgress())
    trainer.add_callback(_LogLines())


class _QuietProgress(ProgressCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def run_train(
    training_args: Any, model_args: ModelArguments, data: DataArguments, run: TrainRunArguments, extra: Any
) -> int:
    _quiet_libraries(show_progress=not training_args.disable_tqdm)
    _set_threads(run.num_threads)
    preset = get_preset(model_args.preset)
    output_dir = Path(training_args.output_dir)
    if run.resume and run.overwrite:
        raise CliError("--resume continues the run in --output_dir and --overwrite deletes it; pass only one.")
    checkpoint = _resume_checkpoint(training_args, run)
    _check_output_dir(output_dir, resume=checkpoint is not None, overwrite=run.overwrite)

    # The Trainer seeds only when it is built, after the model: seed first so that a run's initial weights repeat.
    set_seed(training_args.seed)
    corpus, eval_name = _split_for_eval(_load_corpus(data), data, training_args.seed)
    corpus["train"] = _first(corpus["train"], data.max_train_examples)
    corpus[eval_name] = _first(corpus[eval_name], data.max_eval_examples)
    model, processor = _build_model(preset, model_args, data, corpus["train"]["text"], checkpoint)
    max_length = data.max_length or processor.max_decoder_length - 1
    tokenized, counts = _tokenize(_subset(corpus, ["train", eval_name]), processor, max_length, data.overlength)
    _err(_data_summary(counts, f"Corpus: {_describe_source(data)} (max {max_length} tokens a sentence)"))
    _err(_model_summary(model, f"from {checkpoint}" if checkpoint else preset.name))

    trainer, stopper = _make_trainer(model, processor, training_args, tokenized["train"])
    with _interrupt_handler(stopper), _stdout_to_stderr(run.json_output):
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except FloatingPointError as error:  # diverged: the message names the checkpoint to resume from
            raise CliError(str(error), exit_code=1) from error
    if stopper.requested and trainer.state.global_step < trainer.state.max_steps:
        _err(
            f"Stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; checkpoint saved in "
            f"{_newest_checkpoint(output_dir)}. Continue with the same command plus --resume."
        )
        return EXIT_INTERRUPTED
    trainer.save_model(str(output_dir))
    trainer.save_state()
    _err(f"Saved the model and both tokenizers to {output_dir}.")

    report = _final_report(model, processor, tokenized[eval_name], eval_name, training_args, run, counts)
    report.update(
        command="train", output_dir=str(output_dir), preset=preset.name, global_step=trainer.state.global_step
    )
    (output_dir / RESULTS_FILE).write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    _print_report(report, run.json_output)
    return 0


def _make_trainer(model: Any, processor: Any, training_args: Any, train_dataset: Any) -> tuple[Any, _StopOnInterrupt]:
    from .trainer import MineVaeTrainer

    stopper = _StopOnInterrupt()
    with _user_errors(ValueError, TypeError):  # e.g. a batch size the MI bound cannot pair
        trainer = MineVaeTrainer(
            model=model,
            args=training_args,
            processing_class=processor,
            train_dataset=train_dataset,
            callbacks=[stopper],
        )
    _replace_progress_printing(trainer)
    return trainer, stopper


def _subset(corpus: Any, names: Sequence[str]) -> Any:
    from datasets import DatasetDict

    return DatasetDict({name: corpus[name] for name in dict.fromkeys(names)})


def _describe_source(data: DataArguments) -> str:
    files = [
        f"{name}={path}"
        for name, path in (("train", data.train_file), ("validation", data.validation_file), ("test", data.test_file))
        if path
    ]
    if files:
        return ", ".join(files)
    if data.dataset_name:
        return f"dataset {data.dataset_name}" + (f" ({data.dataset_config})" if data.dataset_config else "")
    return "the embedded Penn Treebank"


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """With --json, whatever a library prints during training goes to stderr: stdout carries one JSON document."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _final_report(
    model: Any,
    processor: Any,
    eval_set: Any,
    eval_name: str,
    training_args: Any,
    run: TrainRunArguments,
    counts: Mapping[str, int],
) -> dict[str, Any]:
    """Metrics on the evaluation split, prior samples, reconstructions and one interpolation between two evaluation
    sentences. Prior samples are drawn with nucleus sampling: greedy decoding from a small model trained for minutes
    falls into loops of its most frequent words ("the <unk> of the <unk>"), which shows the decoder's mode, not what
    the model generates. Reconstructions and the interpolation are greedy (without repeated 3-grams): they show what
    z alone carries."""
    model.eval()
    metrics = evaluate_split(
        model,
        processor,
        eval_set,
        training_args.per_device_eval_batch_size,
        training_args.eval_importance_samples,
        bleu=training_args.eval_bleu,
        show_progress=not training_args.disable_tqdm,
    )
    texts = eval_set["text"]
    # No repeated 3-gram: a briefly trained decoder otherwise loops on its commonest words ("the <unk> <unk> ...").
    greedy = {"max_new_tokens": processor.max_decoder_length, "do_sample": False, "no_repeat_ngram_size": 3}
    sampled = {"max_new_tokens": processor.max_decoder_length, **REPORT_SAMPLING}
    sources = list(texts[: run.num_reconstructions])
    report: dict[str, Any] = {
        "split": eval_name,
        "importance_samples": training_args.eval_importance_samples,
        "metrics": metrics,
        "data": dict(counts),
        "samples": prior_samples(model, processor, run.num_samples, training_args.seed, **sampled)
        if run.num_samples > 0
        else [],
        "reconstructions": [
            {"input": s, "output": o}
            for s, o in zip(sources, reconstructions(model, processor, sources, training_args.seed, **greedy))
        ]
        if sources
        else [],
    }
    if len(texts) >= 2 and run.interpolation_steps >= 2:
        start, end = texts[0], texts[len(texts) // 2]
        steps = interpolation(model, processor, start, end, run.interpolation_steps, training_args.seed, **greedy)
        report["interpolation"] = {"start": start, "end": end, "steps": [{"t": t, "text": s} for t, s in steps]}
    return report


def _print_report(report: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(report)
        return
    metrics = report["metrics"]
    title = (
        f"Metrics on {report['split']} ({int(metrics['num_examples'])} sentences, "
        f"{report['importance_samples']} importance samples)"
    )
    sections = [metrics_table(metrics, title)]
    if report.get("samples"):
        rows = list(enumerate(report["samples"], 1))
        sections.append(
            format_table(rows, headers=("#", "sentence"), title=f"Samples from the prior ({REPORT_SAMPLING_TEXT})")
        )
    if report.get("reconstructions"):
        pairs = [f"  in:  {_cell(r['input'])}\n  out: {_cell(r['output'])}" for r in report["reconstructions"]]
        sections.append("Reconstructions (posterior mean, greedy, no repeated 3-gram)\n" + "\n".join(pairs))
    if report.get("interpolation"):
        steps = [(f"{step['t']:.2f}", step["text"]) for step in report["interpolation"]["steps"]]
        sections.append(
            format_table(
                steps,
                headers=("t", "sentence"),
                title="Interpolation between posterior means (greedy, no repeated 3-gram)",
            )
        )
    print("\n\n".join(sections))


# ====================================================================================================================
# evaluate
# ====================================================================================================================
def run_evaluate(load: LoadArguments, data: DataArguments, options: EvaluateArguments, extra: Any) -> int:
    _quiet_libraries(show_progress=False)
    _set_threads(load.num_threads)
    model, processor = _load_trained(load.model, load.device)
    corpus = _load_corpus(data, validation_file=options.file)
    split = _choose_split(corpus, options.split if not options.file else "validation")
    dataset = _first(corpus[split], data.max_eval_examples)
    max_length = data.max_length or processor.max_decoder_length - 1
    tokenized, counts = _tokenize(_subset({split: dataset}, [split]), processor, max_length, data.overlength)
    if len(tokenized[split]) < 2:
        raise CliError("the evaluation needs at least 2 sentences (MI and active units compare sentences); give more.")
    torch.manual_seed(load.seed)
    metrics = evaluate_split(
        model,
        processor,
        tokenized[split],
        options.batch_size,
        options.importance_samples,
        bleu=options.bleu,
        show_progress=not load.json_output,
    )
    report = {
        "command": "evaluate",
        "model": load.model,
        "split": split,
        "importance_samples": options.importance_samples,
        "metrics": metrics,
        "data": counts,
    }
    if load.json_output:
        _print_json(report)
    else:
        dropped = counts[f"{split}/dropped"]
        note = f", {dropped} over {max_length} tokens dropped" if dropped else ""
        title = (
            f"Metrics on {split} ({int(metrics['num_examples'])} sentences{note}, "
            f"{options.importance_samples} importance samples)"
        )
        print(metrics_table(metrics, title))
    return 0


def _choose_split(corpus: Any, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in corpus:
            raise CliError(f"the corpus has no {wanted!r} split; pass --split with one of: {', '.join(corpus)}.")
        return wanted
    for name in ("validation", "test"):
        if name in corpus:
            return name
    return next(iter(corpus))


# ====================================================================================================================
# generate, interpolate
# ====================================================================================================================
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


def _training_arguments_class() -> type:
    from .training_args import MineVaeTrainingArguments

    return MineVaeTrainingArguments


def _register_builtin_commands() -> None:
    register_command(
        Command(
            name="train",
            usage=f"{PROG} train [CONFIG_FILE] [--preset NAME] [--output_dir DIR] [options]",
            summary="Train a MINE-VAE and save a folder loadable with MineVaeModel/MineVaeProcessor.from_pretrained.",
            examples="""examples:
  mine-vae train                                   # the small preset on the embedded Penn Treebank (~15 min, CPU)
  mine-vae train --preset tiny --output_dir /tmp/t # seconds: a smoke run
  mine-vae train --train_file train.txt --validation_file valid.txt --max_steps 3000
  mine-vae train --train_file data.csv --text_column sentence --latent_size 64 --mi_weight 2
  mine-vae train --preset minilm-smollm2 --bf16    # the pretrained pair, on a GPU
  mine-vae train run.yaml                          # flags from a YAML/JSON file (flags on the line win)
  mine-vae train --resume                          # continue after Ctrl-C or a crash
  mine-vae train --overwrite                       # replace the model already in --output_dir

Ctrl-C saves a checkpoint at the end of the current step; --resume continues from it.""",
            dataclasses=(_training_arguments_class(), ModelArguments, DataArguments, TrainRunArguments),
            run=run_train,
            preset_defaults=True,
            positional_config=True,
        )
    )
    register_command(
        Command(
            name="evaluate",
            usage=f"{PROG} evaluate [CONFIG_FILE] [--model DIR] [--split NAME | --file PATH] [options]",
            summary="Print the text-VAE metrics (NLL, PPL, KL, MI, active units, bound) of a trained model.",
            examples="""examples:
  mine-vae evaluate                                  # ./mine-vae-small on the PTB validation split
  mine-vae evaluate --model runs/ptb --split test --importance_samples 100
  mine-vae evaluate --model runs/mine --file held_out.txt --json""",
            dataclasses=(LoadArguments, DataArguments, EvaluateArguments),
            run=run_evaluate,
            positional_config=True,
        )
    )
    register_command(
        Command(
            name="generate",
            usage=f"{PROG} generate [SENTENCE ...] [--model DIR] [--num_samples N] [options]",
            summary="Sample sentences from the prior, or reconstruct given sentences.",
            examples="""examples:
  mine-vae generate                                  # 5 samples from the prior of ./mine-vae-small (greedy)
  mine-vae generate --num_samples 10 --do_sample --top_p 0.9 --temperature 0.8
  mine-vae generate "the company said it expects a loss" "stocks fell sharply"
  mine-vae generate --input_file sentences.txt --sample_latent --num_return_sequences 3 --do_sample --json""",
            dataclasses=(LoadArguments, DecodingArguments, GenerateArguments),
            run=run_generate,
            positionals=_generate_positionals,
        )
    )
    register_command(
        Command(
            name="interpolate",
            usage=f"{PROG} interpolate START END [--steps N] [--model DIR] [options]",
            summary="Decode points on the line between the latents of two sentences.",
            examples="""examples:
  mine-vae interpolate "the market rose" "he resigned as chairman" --steps 7
  mine-vae interpolate "A" "B" --model runs/ptb --num_beams 4 --json""",
            dataclasses=(LoadArguments, DecodingArguments, InterpolateArguments),
            run=run_interpolate,
            positionals=_interpolate_positionals,
        )
    )


def _ensure_commands() -> None:
    if not COMMANDS:
        _register_builtin_commands()
        for module in _PLUGIN_MODULES:
            importlib.import_module(module).register_cli_commands()


# ====================================================================================================================
# Entry point
# ====================================================================================================================
def _overview() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options and examples)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {command.summary}" for name, command in COMMANDS.items()]
    lines += [
        "",
        "start here:",
        f"  {PROG} train            # train the default small model on the Penn Treebank",
        f"  {PROG} generate         # then sample from it",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mine-vae` with `argv` (default: the process's arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _ensure_commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name not in COMMANDS:
            raise CliError(f"unknown command {name!r}; use one of: {', '.join(COMMANDS)} (see `{PROG} --help`).")
        command = COMMANDS[name]
        parsed = _parse(command, rest)
        extra = parsed[-1] if isinstance(parsed[-1], argparse.Namespace) else argparse.Namespace()
        arguments = parsed[:-1] if isinstance(parsed[-1], argparse.Namespace) else parsed
        return command.run(*arguments, extra)
    except CliError as error:
        _err(f"{PROG} {name}: error: {_one_line(str(error))}")
        return error.exit_code
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    except KeyboardInterrupt:
        _err(f"{PROG} {name}: interrupted.")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
