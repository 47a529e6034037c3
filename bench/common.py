"""What the benchmark scripts share: the benchmarked model, the result table and the description of the environment."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import BertConfig, GPT2Config

from mine_vae import MineVaeConfig, MineVaeModel

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SEED = 0


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the benchmarked model: a BERT encoder and a GPT-2 decoder, both from configs (random weights)."""

    vocab_size: int = 10000
    encoder_layers: int = 4
    encoder_hidden: int = 256
    encoder_heads: int = 4
    encoder_intermediate: int = 1024
    decoder_layers: int = 4
    decoder_hidden: int = 256
    decoder_heads: int = 4
    latent_size: int = 32
    max_positions: int = 128


def build_model(shape: ModelShape, **config: object) -> MineVaeModel:
    """A MINE-VAE of the given sizes with `MineVaeConfig` settings `config`; the same weights on every call."""
    torch.manual_seed(SEED)
    encoder = BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.encoder_hidden,
        num_hidden_layers=shape.encoder_layers,
        num_attention_heads=shape.encoder_heads,
        intermediate_size=shape.encoder_intermediate,
        max_position_embeddings=shape.max_positions,
    )
    decoder = GPT2Config(
        vocab_size=shape.vocab_size,
        n_embd=shape.decoder_hidden,
        n_layer=shape.decoder_layers,
        n_head=shape.decoder_heads,
        n_positions=shape.max_positions,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return MineVaeModel(MineVaeConfig(encoder=encoder, decoder=decoder, latent_size=shape.latent_size, **config))


def ptb_batch(
    processor: Any, texts: Sequence[str], size: int, seed: int, max_words: int = 40
) -> dict[str, torch.Tensor]:
    """`size` random training sentences of at most `max_words` words, padded by the processor."""
    generator = torch.Generator().manual_seed(seed)
    fitting = [text for text in texts if len(text.split()) <= max_words]
    chosen = torch.randperm(len(fitting), generator=generator)[:size].tolist()
    return dict(processor([fitting[i] for i in chosen]))


def main_job_sentences(processor: Any, count: int) -> Any:
    """The first `count` sentences the main job evaluates on: PTB's validation split tokenised and filtered as
    `mine-vae train` does (sentences over the processor's length dropped); a `datasets.Dataset` with `text`,
    `input_ids` and `decoder_token_ids`."""
    from mine_vae.cli.loading import tokenize_splits
    from mine_vae.data import load_corpus

    limit = processor.max_decoder_length - 1
    tokenized, _ = tokenize_splits({"validation": load_corpus()["validation"]}, processor, limit, overlength="drop")
    validation = tokenized["validation"]
    return validation.select(range(min(count, len(validation))))


@dataclass
class RatioRow:
    """One line of a ratio table: A and B in `unit`, their `ratio`, checked against `target`."""

    what: str
    unit: str
    value_a: float
    value_b: float
    ratio: float
    target: str
    passed: bool


def time_call(
    fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter, synchronize: bool = False
) -> float:
    """Seconds of one call of `fn` by `clock`; with `synchronize`, after the GPU's queued kernels have finished."""
    start = clock()
    fn()
    if synchronize:  # CUDA kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize()
    return clock() - start


def measure(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
    synchronize: bool = False,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round; variants are interleaved (their order rotating each
    round) after `warmup` untimed rounds, so that drifts of the machine's speed reach all of them alike."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_call(variants[name], clock, synchronize))
    return samples


HEADER = ("what", "A", "B", "ratio", "target", "result")


def format_table(rows: Sequence[RatioRow]) -> str:
    """Rows as an aligned plain-text table, one line each, PASS or FAIL in the last column."""
    lines = [HEADER] + [
        (
            row.what,
            f"{row.value_a:.1f} {row.unit}",
            f"{row.value_b:.1f} {row.unit}",
            f"{row.ratio:.3f}",
            row.target,
            "PASS" if row.passed else "FAIL",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(HEADER))]
    rendered = [" | ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in lines]
    return "\n".join([rendered[0], "-+-".join("-" * width for width in widths), *rendered[1:]])


def environment() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
