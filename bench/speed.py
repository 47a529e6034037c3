"""Speed and memory of MINE-VAE in one table: the ratios of bench_model.py and bench_trainer.py, plus training
throughput of the `small` preset with and without `torch.compile` and bf16 autocast.

1. Ratios, measured by the functions of `bench/bench_model.py` (MineVae.generate vs the bare decoder, cached vs
   uncached decoding, the training step vs its encoder + decoder parts) and `bench/bench_trainer.py` (a MINE step,
   k = 1 and λ = 1, vs a plain Trainer step at λ = 0: time, peak tensor memory, peak RSS; batched vs looped IW-NLL).
   If their functions cannot be imported as expected, the scripts run as subprocesses with `--json` instead.
2. Throughput: optimizer steps of `MineVaeTrainer` (the alternating step: one critic update, then the VAE update with
   λ active) on the model of the `small` preset (built by `mine_vae.presets.build_from_scratch`) on a batch of 32
   Penn Treebank training sentences, in decoder tokens per second, four ways: eager float32, eager under
   `torch.autocast(bfloat16)`, `torch.compile`d float32, compiled under bf16 autocast.

The table is printed, saved as JSON (`bench/results/speed[-quick].json`) and written into the `speed` section of
`docs/benchmarks.md`.

Usage:
    python bench/speed.py --quick          # smoke run: few repeats
    python bench/speed.py                  # the measurement
    python bench/speed.py --clock cpu      # a busy machine: one torch thread, CPU time for the model ratios
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mine_vae.study import (
    DEFAULT_PRESET,
    QUICK,
    StudyData,
    build_model,
    cpu_model,
    quiet_libraries,
    resolve_method,
    training_kwargs,
    write_section,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOC = REPO / "docs" / "benchmarks.md"
sys.path.insert(0, str(BENCH))  # bench_model.py and bench_trainer.py, imported by the ratio rows
from common import ptb_batch  # noqa: E402

SECTION = "speed"


@dataclass
class Row:
    """One line of the table: `ratio = value_a / value_b` (for throughput rows, vs eager float32)."""

    source: str
    what: str
    value_a: str
    value_b: str
    ratio: float | None
    target: str
    result: str


# --------------------------------------------------------------------------------------------------------------------
# 1. The ratios of bench_model.py and bench_trainer.py
# --------------------------------------------------------------------------------------------------------------------
def table_row(source: str, row: Any) -> Row:
    """A row of either script (its dataclass, or its JSON dict) in this table's shape."""
    fields = row if isinstance(row, dict) else dataclasses.asdict(row)
    unit = fields["unit"]
    return Row(
        source,
        fields["what"],
        f"{fields['value_a']:.1f} {unit}",
        f"{fields['value_b']:.1f} {unit}",
        fields["ratio"],
        fields["target"],
        "PASS" if fields["passed"] else "FAIL",
    )


def _flags(quick: bool, **options: object) -> list[str]:
    """The scripts' own command-line flags, so that their `parse_args` picks repeats and warm-up as they do."""
    flags = ["--quick"] if quick else []
    for name, value in options.items():
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def model_rows(quick: bool, clock: str) -> list[Row]:
    """bench_model.py: generation vs the decoder, cached vs uncached, train step vs its parts."""
    import bench_model

    args = bench_model.parse_args(_flags(quick, clock=clock))
    shape = bench_model.Shape()
    model = bench_model.build_model(shape)
    timer = bench_model.CLOCKS[args.clock]
    rows = bench_model.generation_rows(model, shape, args.repeats, args.warmup, timer)
    rows.append(bench_model.training_row(model, shape, args.repeats, args.warmup, timer))
    return [table_row("bench_model", row) for row in rows]


def trainer_rows(quick: bool, threads: int | None, clock: str = "wall") -> list[Row]:
    """bench_trainer.py: MINE step vs λ = 0 step (time, memory), batched vs looped IW-NLL, the pretrained pair's step
    vs its decoder's."""
    import bench_trainer

    args = bench_trainer.parse_args(_flags(quick, threads=threads))
    shape = bench_trainer.Shape(importance_samples=10) if quick else bench_trainer.Shape()
    rows = bench_trainer.training_rows(shape, args)
    rows += bench_trainer.importance_rows(shape, args.iw_repeats, min(args.warmup, 1), args.device)
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    rows.append(bench_trainer.pretrained_row(args.repeats, args.warmup, clock=timer))
    return [table_row("bench_trainer", row) for row in rows]


def subprocess_rows(script: str, quick: bool, extra: Sequence[str] = ()) -> list[Row]:
    """The fallback: run the script with `--json` and read its rows back."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.json"
        command = [sys.executable, str(BENCH / f"{script}.py"), "--json", str(path), *extra]
        subprocess.run(command + (["--quick"] if quick else []), check=False, cwd=REPO)
        if not path.is_file():
            raise RuntimeError(f"{script}.py wrote no results ({' '.join(command)}).")
        return [table_row(script, row) for row in json.loads(path.read_text())["rows"]]


def ratio_rows(quick: bool, clock: str, threads: int | None) -> list[Row]:
    rows = []
    for script, by_import, extra in (
        ("bench_model", lambda: model_rows(quick, clock), _flags(False, clock=clock)),
        ("bench_trainer", lambda: trainer_rows(quick, threads, clock), _flags(False, threads=threads, clock=clock)),
    ):
        try:
            rows += by_import()
        except (ImportError, AttributeError, TypeError) as error:  # the script's functions changed shape
            print(f"{script}: importing its functions failed ({error!r}); running it with --json.", flush=True)
            rows += subprocess_rows(script, quick, extra)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 2. Training throughput of the small preset
# --------------------------------------------------------------------------------------------------------------------
THROUGHPUT_METHOD = "mine-xi1@critic_warmup_ratio=0"  # λ active from the first step: the full alternating step
VARIANTS = {
    "eager, float32": (False, False),
    "eager, bf16 autocast": (False, True),
    "torch.compile, float32": (True, False),
    "torch.compile, bf16 autocast": (True, True),
}


def small_trainer(data: StudyData, output_dir: str) -> Any:
    """A `MineVaeTrainer` of the small preset, its optimizers built, ready for `training_step`."""
    from mine_vae.trainer import MineVaeTrainer
    from mine_vae.training_args import MineVaeTrainingArguments

    method = resolve_method(THROUGHPUT_METHOD)
    model, processor = build_model(DEFAULT_PRESET, data, method, seed=0)
    budget = QUICK
    kwargs = training_kwargs(DEFAULT_PRESET, method, budget, 0, Path(output_dir))
    args = MineVaeTrainingArguments(**{**kwargs, "save_strategy": "no"})
    trainer = MineVaeTrainer(model=model, args=args, processing_class=processor)
    trainer.create_optimizer_and_scheduler(num_training_steps=budget.steps)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _autocast(enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def optimizer_step(trainer: Any, batch: dict[str, torch.Tensor], bf16: bool) -> Callable[[], None]:
    """What Trainer's loop does per step: `training_step` (critic update + VAE forward/backward), clipping, update."""
    model = trainer.model

    def step() -> None:
        with _autocast(bf16):
            trainer.training_step(model, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    return step


@dataclass
class Throughput:
    variant: str
    tokens_per_second: float | None
    step_seconds: float | None
    first_step_seconds: float | None
    error: str | None = None


def measure_variant(
    data: StudyData,
    batch: dict[str, torch.Tensor],
    variant: str,
    repeats: int,
    warmup: int,
    clock: Callable[[], float],
) -> Throughput:
    compiled, bf16 = VARIANTS[variant]
    tokens = int((batch["labels"] != -100).sum())
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = small_trainer(data, output_dir)
        if compiled:
            trainer.model = torch.compile(trainer.model)
        step = optimizer_step(trainer, batch, bf16)
        try:
            start = clock()
            step()  # the first step compiles
            first = clock() - start
            for _ in range(warmup):
                step()
            seconds = []
            for _ in range(repeats):
                start = clock()
                step()
                seconds.append(clock() - start)
        except Exception as error:  # noqa: BLE001 - a failing variant is a result, reported in the table
            return Throughput(variant, None, None, None, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
    median = statistics.median(seconds)
    return Throughput(variant, tokens / median, median, first)


def throughput_rows(quick: bool, clock: Callable[[], float]) -> tuple[list[Row], list[Throughput], int]:
    from mine_vae.data import load_corpus

    repeats, warmup = (3, 1) if quick else (10, 2)
    texts = list(load_corpus()["train"]["text"])
    data = StudyData(texts, None, {})
    _, processor = build_model(DEFAULT_PRESET, data, resolve_method("vae"), seed=0)
    batch = ptb_batch(processor, texts, size=32, seed=0)
    tokens = int((batch["labels"] != -100).sum())
    results = [measure_variant(data, batch, variant, repeats, warmup, clock) for variant in VARIANTS]
    base = results[0].tokens_per_second
    rows = []
    for result in results:
        if result.error is not None:
            rows.append(Row("throughput", f"small preset, {result.variant}", "–", "–", None, "–", result.error))
            continue
        ratio = result.tokens_per_second / base if base else None
        rows.append(
            Row(
                "throughput",
                f"small preset train tokens/s, {result.variant} (first step {result.first_step_seconds:.1f} s)",
                f"{result.tokens_per_second:.0f} tok/s",
                f"{base:.0f} tok/s",
                ratio,
                "vs eager float32",
                "measured",
            )
        )
    return rows, results, tokens


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| source | what | A | B | A / B | target | result |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "–" if row.ratio is None else f"{row.ratio:.3f}"
        lines.append(
            f"| {row.source} | {row.what} | {row.value_a} | {row.value_b} | {ratio} | {row.target} | {row.result} |"
        )
    return "\n".join(lines)


def environment(clock: str) -> str:
    import transformers

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), transformers {transformers.__version__}, Python "
        f"{platform.python_version()}; clock: {clock}; load average {load:.1f} at the end"
    )


def section(rows: Sequence[Row], tokens: int, args: argparse.Namespace, wall: float) -> str:
    gpu = (
        f"GPU: {torch.cuda.get_device_name(0)}."
        if torch.cuda.is_available()
        else "**GPU tier: not run.** No GPU was available to the session that produced this table, so the "
        "pretrained `minilm-smollm2` preset and GPU throughput are not measured here; on a GPU machine run "
        "`python bench/speed.py` again (the throughput rows then run on the GPU's device of the trainer)."
    )
    flags = (["--quick"] if args.quick else []) + (["--clock", args.clock] if args.clock != "wall" else [])
    command = " ".join(["python bench/speed.py", *flags])
    return "\n\n".join(
        [
            f"### Speed and memory (`{command}`)",
            markdown_table(rows),
            f"Ratio rows: A and B are medians over interleaved rounds (see `bench/README.md`). Throughput rows: "
            f"medians of timed `MineVaeTrainer` optimizer steps (critic update + VAE update, λ active) on one batch "
            f"of 32 PTB training sentences ({tokens} decoder tokens), the `small` preset's model; B is eager "
            f"float32. bf16 autocast on a CPU without native bf16 matrix units (no AVX-512 BF16/AMX) is emulated "
            f"and is expected to be slower; `torch.compile` (inductor) pays its compilation in the first step "
            f"(less when inductor's cache already holds the kernels from an earlier run).",
            f"{environment(args.clock)}; wall time {wall / 60:.1f} min.",
            gpu,
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: wall-clock, torch's threads (default); cpu: one torch thread and its CPU time where supported",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--skip-ratios", action="store_true", help="only the throughput rows")
    parser.add_argument("--doc", type=Path, default=DOC, help="page to write the section into")
    parser.add_argument("--no-doc", action="store_true", help="print and save JSON only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.clock == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    start = time.perf_counter()
    rows = [] if args.skip_ratios else ratio_rows(args.quick, args.clock, args.threads)
    throughput, results, tokens = throughput_rows(args.quick, clock)
    rows += throughput
    text = section(rows, tokens, args, time.perf_counter() - start)
    print(text)
    out = REPO / "bench" / "results" / ("speed-quick.json" if args.quick else "speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"rows": [dataclasses.asdict(r) for r in rows], "throughput": [dataclasses.asdict(r) for r in results]}
    out.write_text(json.dumps(payload, indent=1) + "\n")
    if not args.no_doc:
        write_section(args.doc, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
