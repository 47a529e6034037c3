"""The record of a study's invocations (`<out>/meta.json`: wall time, load average, code version, machine) and the
description of the machine the report gives."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .methods import Budget
from .runner import StudyPaths, run_study

META = "meta.json"


def code_version() -> str:
    """The commit the study ran from, marked when the package differed from it (the version outside a checkout)."""
    from .. import __version__

    package = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
        tracked = head.returncode == 0 and bool(git("ls-files", "--", ".").stdout.strip())
        if not tracked:  # an installed package, maybe inside some other repository (a virtual environment)
            return f"mine-vae {__version__}"
        changed = git("status", "--porcelain", "--", ".").stdout.strip()
    except OSError:  # no git
        return f"mine-vae {__version__}"
    return head.stdout.strip() + (" with local changes" if changed else "")


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        return "?"


def relative_path(path: Path) -> str:
    """`path` relative to the current folder when it lies inside it: how the page names the results folder."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def read_meta(out: Path) -> dict[str, Any]:
    """The study's record (command, results folder, invocations), or {} before its first run."""
    path = out / META
    return json.loads(path.read_text()) if path.is_file() else {}


def cpu_model() -> str:
    """The CPU's model name (Linux), or what `platform` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """The device, core count and library versions of this machine, as the study's record keeps them."""
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu_model()}"
    return (
        f"{device}, {os.cpu_count()} cores; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}"
    )


def _finished(out: Path) -> set[str]:
    """The names of the runs finished in `out` so far."""
    return {path.name for path in (out / "finished").glob("*.json")}


def run_and_record(
    specs: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    paths: StudyPaths,
    command: str,
    jobs: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """`run_study`, then this invocation added to `<out>/meta.json` (when it ran anything: wall time, load average at
    start and end, code version) under `command`, the command line that regenerates the study. Returns the record."""
    previous = read_meta(paths.out)
    load_start, start, code = load_average(), time.perf_counter(), code_version()
    finished_before = _finished(paths.out)
    ran: Sequence[Any] | None = None
    try:
        ran = run_study(specs, seeds, budget, paths, jobs=jobs, **options)
    finally:
        # Recorded when the study is stopped too (Ctrl-C, a cut-off session): the runs it finished keep its wall time.
        invocation = {
            "wall_seconds": round(time.perf_counter() - start, 1),
            "load_start": load_start,
            "code": code,
            "machine": machine_description(),
        }
        runs = len(ran) if ran is not None else len(_finished(paths.out) - finished_before)
        invocation.update(load_end=load_average(), runs=runs)
        if ran is None:
            invocation["interrupted"] = True
        invocations = previous.get("invocations", [])
        meta = {
            "command": command,
            "out_rel": relative_path(paths.out),
            "jobs": jobs,
            "invocations": [*invocations, invocation] if runs else invocations,
        }
        paths.out.mkdir(parents=True, exist_ok=True)
        (paths.out / META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
