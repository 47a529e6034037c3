"""What every command shares: exit codes, `CliError`, the `Command` registry, one-line errors, output (tables,
JSON) and the library and thread settings."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PROG = "mine-vae"
EXIT_USAGE = 2  # bad input: the convention of argparse and most Unix tools
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and `timeout` send to stop a job), taken the way Ctrl-C is: a KeyboardInterrupt
    wherever the command does not handle it itself (`train` saves a checkpoint first), reported in one line with exit
    code 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise `Terminated` on SIGTERM while the command runs (the default would end the process on the spot: no line,
    no partial results kept, no checkpoint)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class CliError(Exception):
    """Reported as one line naming the fix, without a traceback; exit code 2 (bad input) unless told otherwise."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


MAX_SEED = 2**32 - 1  # numpy's seeds (set_seed seeds python, numpy and torch) end there


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise CliError(f"--seed must be between 0 and {MAX_SEED}, got {seed}.")


@dataclass(frozen=True)
class Command:
    """
    One `mine-vae` subcommand: each lives in its own module of `mine_vae.cli` and is registered by
    `mine_vae.cli._register_builtin_commands` with `register_command`.

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


def register_command(command: Command) -> None:
    """Add (or replace) a subcommand of `mine-vae`."""
    COMMANDS[command.name] = command


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the package's checks of user input (clear ValueErrors, missing files) into one-line CLI errors."""
    try:
        yield
    except types as error:
        raise CliError(str(error)) from error


INPUT_ERRORS = (ValueError, FileNotFoundError, OSError, TypeError, ImportError)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def inform(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None, title: str | None = None) -> str:
    """Rows as aligned plain-text columns (numbers right-aligned, text left-aligned)."""
    cells = [[format_cell(value) for value in row] for row in rows]
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


def format_cell(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())  # a generated newline would break the table's rows
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def print_json(document: Mapping[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=json_default, allow_nan=True))


def json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def quiet_library_logs(show_progress: bool) -> None:
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


def busy_cores(window: float = 0.5) -> float:
    """How many cores other processes keep busy now: the share of non-idle CPU time over `window` seconds (Linux's
    /proc/stat) times the core count. Not the 1-minute load average, which still counts a `pip install` that ended
    seconds ago, and would make the command right after it train on one thread of two idle cores."""
    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total_start, idle_start = sample()
        time.sleep(window)
        total_end, idle_end = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    total = total_end - total_start
    if total <= 0:
        return 0.0
    return (1 - (idle_end - idle_start) / total) * (os.cpu_count() or 1)


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells, else the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def set_threads(requested: int | None) -> None:
    """Use `requested` CPU threads, or pick them: torch's default (one per core) on an idle machine, fewer when
    the load average says other processes already use the cores. Oversubscribed OpenMP threads spin at every
    barrier while the thread they wait for is descheduled; on a shared 2-core machine that made a training step
    15 times slower with 2 threads than with 1."""
    if requested is not None:
        if requested < 1:
            raise CliError(f"--num_threads must be at least 1, got {requested}.")
        cores = _usable_cores()
        if requested > cores:  # thousands of OpenMP threads end the process; more than the cores never helps
            inform(f"--num_threads {requested} is more than the {cores} CPU core(s) here; using {cores}.")
            requested = cores
        torch.set_num_threads(requested)
        return
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return  # the user already chose, or the platform cannot tell
    default = torch.get_num_threads()
    load = busy_cores()
    idle_cores = (os.cpu_count() or default) - load
    threads = max(1, min(default, int(idle_cores + 0.5)))
    if threads < default:
        torch.set_num_threads(threads)
        # A log line, not stderr output: error paths must stay one line long. (`train` states its thread count in
        # the model summary, printed once the inputs have been checked.)
        logging.getLogger(__name__).info(
            f"The machine is busy ({load:.1f} of {os.cpu_count()} cores in use): using {threads} thread(s) instead of "
            f"{default}; --num_threads N to choose."
        )
