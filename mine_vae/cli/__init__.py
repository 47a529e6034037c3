"""The `mine-vae` command line: `train`, `evaluate`, `generate`, `interpolate`, `study`, `push`, one module each.

Every command is an `HfArgumentParser` over dataclasses, so each field is a flag (`--max_steps` or `--max-steps`), and a
JSON or YAML file of the same names is an alternative (`mine-vae train run.yaml`, `--config run.yaml`). Values are
layered: dataclass defaults < the preset's < the config file's < flags.

Output contract: results (tables, or one JSON document with `--json`) go to stdout; progress, logs and warnings go to
stderr. Bad input ends in one line on stderr naming the fix and exit code 2, never a traceback. Ctrl-C during `train`
finishes the current step, saves a resumable checkpoint and exits with 130; SIGTERM does the same with exit code 143.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from .arguments import (
    DataArguments,
    DecodingArguments,
    EvaluateArguments,
    GenerateArguments,
    InterpolateArguments,
    LoadArguments,
    LoraArguments,
    ModelArguments,
    TrainRunArguments,
    training_arguments_class,
)
from .commands import (
    COMMANDS,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PROG,
    CliError,
    Command,
    Terminated,
    format_table,
    inform,
    one_line,
    register_command,
    sigterm_as_interrupt,
)
from .embed import EmbedArguments, embed_positionals, run_embed
from .evaluate import run_evaluate
from .explore import ExploreArguments, explore_positionals, run_explore
from .generate import generate_positionals, interpolate_positionals, run_generate, run_interpolate
from .parsing import parse_command
from .push import PushArguments, push_positionals, run_push
from .study import STUDY_COMMAND
from .train import run_train

__all__ = [
    "COMMANDS",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "PROG",
    "CliError",
    "Command",
    "format_table",
    "main",
    "register_command",
]

def _register_builtin_commands() -> None:
    register_command(
        Command(
            name="train",
            usage=f"{PROG} train [CONFIG_FILE] [--preset NAME] [--output_dir DIR] [options]",
            summary="Train a MINE-VAE and save a folder loadable with MineVaeModel/MineVaeProcessor.from_pretrained.",
            examples="""examples:
  mine-vae train                                   # MiniLM -> z -> SmolLM2 on the embedded PTB (~15 min, CPU)
  mine-vae train --preset tiny --output_dir /tmp/t # seconds: a smoke run
  mine-vae train --train_file train.txt --validation_file valid.txt --max_steps 3000
  mine-vae train --train_file data.csv --text_column sentence --latent_size 64 --mi_weight 2
  mine-vae train --preset small                    # from scratch, word-level, no asset packages (~15 min, CPU)
  mine-vae train --lora_r 8                        # LoRA adapters on the decoder's attention (merged when saved)
  mine-vae train run.yaml                          # flags from a YAML/JSON file (flags on the line win)
  mine-vae train --resume                          # continue after Ctrl-C or a crash
  mine-vae train --overwrite                       # replace the model already in --output_dir

Ctrl-C saves a checkpoint at the end of the current step; --resume continues from it.""",
            dataclasses=(training_arguments_class(), ModelArguments, DataArguments, TrainRunArguments, LoraArguments),
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
  mine-vae evaluate                                  # ./mine-vae-minilm-smollm2 on the PTB validation split
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
  mine-vae generate                                  # 5 samples from the prior of ./mine-vae-minilm-smollm2 (greedy)
  mine-vae generate --num_samples 10 --do_sample --top_p 0.9 --temperature 0.8
  mine-vae generate "the company said it expects a loss" "stocks fell sharply"
  mine-vae generate --input_file sentences.txt --sample_latent --num_return_sequences 3 --do_sample --json""",
            dataclasses=(LoadArguments, DecodingArguments, GenerateArguments),
            run=run_generate,
            positionals=generate_positionals,
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
            positionals=interpolate_positionals,
        )
    )
    register_command(
        Command(
            name="embed",
            usage=f"{PROG} embed MODEL TEXT_FILE --output FILE [--with_logvar] [--batch_size N]",
            summary="Write the posterior means of a file's sentences to a .npy or .parquet file.",
            examples="""examples:
  mine-vae embed mine-vae-minilm-smollm2 sentences.txt --output means.npy
  mine-vae embed runs/ptb sentences.txt --output means.parquet --with_logvar --batch_size 256""",
            dataclasses=(EmbedArguments,),
            run=run_embed,
            positionals=embed_positionals,
        )
    )
    register_command(
        Command(
            name="explore",
            usage=f"{PROG} explore MODEL [--port 0] [--host 127.0.0.1]",
            summary="A local web page to explore the latent space: reconstruct, interpolate, sample, attributes.",
            examples="""examples:
  mine-vae explore mine-vae-minilm-smollm2         # prints the URL (a free port) and serves until Ctrl-C
  mine-vae explore runs/ptb --port 8080""",
            dataclasses=(ExploreArguments,),
            run=run_explore,
            positionals=explore_positionals,
        )
    )
    register_command(STUDY_COMMAND)
    register_command(
        Command(
            name="push",
            usage=f"{PROG} push FOLDER REPO_ID [--revision BRANCH] [--private] [--json] [options]",
            summary="Upload a trained model folder (weights, code, both tokenizers, a model card) to the Hub.",
            examples="""examples:
  mine-vae push mine-vae-minilm-smollm2 me/mine-vae-ptb
  mine-vae push runs/ptb me/mine-vae-ptb --revision experiment-2 --dataset_name ptb_text_only --json""",
            dataclasses=(PushArguments,),
            run=run_push,
            positionals=push_positionals,
        )
    )


def _ensure_commands() -> None:
    if not COMMANDS:
        _register_builtin_commands()


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
        f"  {PROG} train            # train the default model (MiniLM -> z -> SmolLM2) on the Penn Treebank",
        f"  {PROG} generate         # then sample from it",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mine-vae` with `argv` (default: the process's arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    who = f"{PROG} {argv[0]}" if argv else PROG
    try:
        with sigterm_as_interrupt():
            return _dispatch(argv)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C (or SIGTERM) anywhere `train` has not taken it over (imports, parsing, loading, decoding): one line,
        # no traceback; a command that kept partial results says where, as the interrupt's message.
        detail = f"; {one_line(str(interrupt))}" if str(interrupt) else ""
        if isinstance(interrupt, Terminated):
            inform(f"{who}: terminated (SIGTERM){detail}.")
            return EXIT_TERMINATED
        inform(f"{who}: interrupted{detail}.")
        return EXIT_INTERRUPTED


def _dispatch(argv: list[str]) -> int:
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
        parsed = parse_command(command, rest)
        extra = parsed[-1] if isinstance(parsed[-1], argparse.Namespace) else argparse.Namespace()
        arguments = parsed[:-1] if isinstance(parsed[-1], argparse.Namespace) else parsed
        return command.run(*arguments, extra)
    except CliError as error:
        inform(f"{PROG} {name}: error: {one_line(str(error))}")
        return error.exit_code
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
