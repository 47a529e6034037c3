"""Benchmark MineVaeModel against its own decoder and encoder, measured side by side in one run.

Builds a BERT encoder + GPT-2 decoder pair from configs (random weights, no download) and prints one table of ratios:

1. `MineVaeModel.generate(latent=z)` tokens/s vs the bare decoder's `generate(BOS column)` (greedy, fixed length).
2. Cached vs `use_cache=False` decoding with `MineVaeModel.generate`.
3. One MINE-VAE training step (forward + backward, labels) vs the encoder's forward/backward plus the decoder's own LM
   forward/backward on the same batch.

The compared variants are interleaved (their order rotating every round) after a warm-up. Values A and B are medians
over rounds; each ratio is the median of the per-round ratios, so that load drifting on a shared machine cancels. The
exit status is 1 when a target fails.

Wall-clock time with torch's default thread count is the measure. On a machine other processes keep busy (load
average above the core count, which the script reports) multi-threaded wall-clock timings swing several-fold; there,
`--clock cpu` runs torch on one thread and measures that thread's CPU time, which other processes barely disturb.

Usage:
    python bench/bench_model.py                 # full run
    python bench/bench_model.py --quick         # smoke run (few repeats)
    python bench/bench_model.py --repeats 30 --json results.json
    python bench/bench_model.py --clock cpu     # on a busy shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import common
import torch
import transformers
from common import BOS_ID, EOS_ID, SEED, ModelShape, RatioRow, environment, format_table, measure

from mine_vae import MineVaeModel

# generate()'s tokens/s over the bare decoder's: z's key/value positions and the model's bookkeeping cost at most 5%.
GENERATE_TARGET = 0.95


@dataclass(frozen=True)
class Shape(ModelShape):
    """Sizes of the benchmarked model and workloads."""

    latent_injection: str = "both"
    generate_batch: int = 8
    new_tokens: int = 64
    train_batch: int = 16
    train_length: int = 48


@dataclass
class Row(RatioRow):
    """One line of the result table: A and B are medians; `ratio` (A / B) is the median of per-round ratios."""

    seconds_a: list[float]
    seconds_b: list[float]


# --------------------------------------------------------------------------------------------------------------------
# Model and inputs
# --------------------------------------------------------------------------------------------------------------------
def build_model(shape: Shape) -> MineVaeModel:
    return common.build_model(shape, latent_injection=shape.latent_injection)


def latent_batch(shape: Shape) -> torch.Tensor:
    return torch.randn(shape.generate_batch, shape.latent_size, generator=torch.Generator().manual_seed(SEED))


def token_batch(shape: Shape, seed: int) -> torch.Tensor:
    """Random non-special token ids of shape `(train_batch, train_length)`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(EOS_ID + 1, shape.vocab_size, (shape.train_batch, shape.train_length), generator=generator)


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def on_gpu(model: MineVaeModel) -> bool:
    """Whether timings must wait for the model's queued CUDA kernels (`bench/gpu_check.py` runs these rows on a GPU,
    with the wall clock)."""
    return model.device.type == "cuda"


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio: the two were timed back to back, so slow drifts in machine load
    (other processes on a shared box) cancel in each pair."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


# --------------------------------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------------------------------
def greedy_kwargs(shape: Shape) -> dict[str, object]:
    return {"max_new_tokens": shape.new_tokens, "min_new_tokens": shape.new_tokens, "do_sample": False}


def mine_generate(model: MineVaeModel, shape: Shape, use_cache: bool = True) -> Callable[[], torch.Tensor]:
    z = latent_batch(shape).to(model.device)
    return lambda: model.generate(latent=z, use_cache=use_cache, **greedy_kwargs(shape))


def decoder_generate(model: MineVaeModel, shape: Shape) -> Callable[[], torch.Tensor]:
    bos = torch.full((shape.generate_batch, 1), BOS_ID, dtype=torch.long, device=model.device)
    return lambda: model.decoder.generate(input_ids=bos, **greedy_kwargs(shape))


def mine_train_step(model: MineVaeModel, source: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    mask = torch.ones_like(source)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=source, attention_mask=mask, labels=target).loss.backward()

    return step


def parts_train_step(model: MineVaeModel, source: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """The encoder's forward/backward (sum of its last states) plus the decoder's own LM step, one backward."""
    mask = torch.ones_like(source)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        encoded = model.encoder(input_ids=source, attention_mask=mask).last_hidden_state.sum()
        decoded = model.decoder(input_ids=target, labels=target).loss
        (encoded + decoded).backward()

    return step


def check_generation(model: MineVaeModel, shape: Shape) -> None:
    """The generate variants must really produce `new_tokens` tokens, or the throughput comparison is meaningless."""
    expected = (shape.generate_batch, 1 + shape.new_tokens)
    variants = {"MineVae.generate": mine_generate(model, shape), "decoder.generate": decoder_generate(model, shape)}
    for name, fn in variants.items():
        got = tuple(fn().shape)
        if got != expected:
            raise RuntimeError(f"{name} returned shape {got}, expected {expected}.")
    cached, uncached = mine_generate(model, shape, True)(), mine_generate(model, shape, False)()
    if not torch.equal(cached, uncached):
        raise RuntimeError("Cached and uncached greedy decoding disagree.")


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------
def generation_rows(
    model: MineVaeModel, shape: Shape, repeats: int, warmup: int, clock: Callable[[], float]
) -> list[Row]:
    model.eval()
    check_generation(model, shape)
    seconds = measure(
        {
            "mine": mine_generate(model, shape),
            "decoder": decoder_generate(model, shape),
            "mine_uncached": mine_generate(model, shape, use_cache=False),
        },
        repeats,
        warmup,
        clock,
        synchronize=on_gpu(model),
    )
    tokens = shape.generate_batch * shape.new_tokens
    rate = {name: tokens / statistics.median(times) for name, times in seconds.items()}
    # Ratios of tokens/s are inverse ratios of seconds.
    vs_decoder = paired_ratio(seconds["decoder"], seconds["mine"])
    vs_uncached = paired_ratio(seconds["mine_uncached"], seconds["mine"])
    return [
        Row(
            f"generate tok/s: MineVae vs decoder (b={shape.generate_batch}, {shape.new_tokens} new)",
            "tok/s",
            rate["mine"],
            rate["decoder"],
            vs_decoder,
            f">= {GENERATE_TARGET:.2f}",
            vs_decoder >= GENERATE_TARGET,
            seconds["mine"],
            seconds["decoder"],
        ),
        Row(
            f"generate tok/s: cached vs use_cache=False ({shape.new_tokens} new)",
            "tok/s",
            rate["mine"],
            rate["mine_uncached"],
            vs_uncached,
            ">= 3.00",
            vs_uncached >= 3.0,
            seconds["mine"],
            seconds["mine_uncached"],
        ),
    ]


def training_row(model: MineVaeModel, shape: Shape, repeats: int, warmup: int, clock: Callable[[], float]) -> Row:
    model.train()
    source, target = token_batch(shape, SEED + 1).to(model.device), token_batch(shape, SEED + 2).to(model.device)
    torch.manual_seed(SEED)
    seconds = measure(
        {"mine": mine_train_step(model, source, target), "parts": parts_train_step(model, source, target)},
        repeats,
        warmup,
        clock,
        synchronize=on_gpu(model),
    )
    model.zero_grad(set_to_none=True)
    ratio = paired_ratio(seconds["mine"], seconds["parts"])
    return Row(
        f"train step ms: MineVae vs encoder+decoder (b={shape.train_batch}, len={shape.train_length})",
        "ms",
        1000 * statistics.median(seconds["mine"]),
        1000 * statistics.median(seconds["parts"]),
        ratio,
        "<= 1.10",
        ratio <= 1.10,
        seconds["mine"],
        seconds["parts"],
    )


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------
def load_average() -> float | None:
    """The 1-minute load average where the system reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_warning(loads: list[float | None]) -> str | None:
    """A warning when other work kept the machine's cores busy while timing with the wall clock."""
    busiest = max((load for load in loads if load is not None), default=None)
    cpus = os.cpu_count() or 1
    if busiest is None or busiest <= cpus:
        return None
    return (
        f"WARNING: load average reached {busiest:.1f} on {cpus} CPUs: other processes compete for the cores and "
        "multi-threaded wall-clock timings are unreliable; rerun on an idle machine or with --clock cpu."
    )


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=count(1), help="timed rounds (default 11, or 3 with --quick)")
    parser.add_argument("--warmup", type=count(0), help="untimed rounds first (default 2, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not a measurement")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: wall-clock time, torch's default threads (default); cpu: this thread's CPU time, torch on 1 thread",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 11
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = CLOCKS[args.clock]
    shape = Shape()
    model = build_model(shape)
    loads = [load_average()]
    rows = generation_rows(model, shape, args.repeats, args.warmup, clock)
    loads.append(load_average())
    rows.append(training_row(model, shape, args.repeats, args.warmup, clock))
    loads.append(load_average())
    env = environment() | {"clock": args.clock, "load_average": loads}
    print(f"{args.clock} clock, medians of {args.repeats} interleaved rounds after {args.warmup} warm-up; {env}")
    print(format_table(rows))
    warning = load_warning(loads) if args.clock == "wall" else None
    if warning:
        print(warning)
    if args.json is not None:
        payload = {"shape": asdict(shape), "repeats": args.repeats, "warmup": args.warmup, "env": env}
        payload["rows"] = [asdict(row) for row in rows]
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
