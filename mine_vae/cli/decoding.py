"""Text from latents: prior samples, reconstructions and interpolations, shared by `train` and the commands that
decode."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .commands import user_errors


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


def prior_samples(model: Any, processor: Any, count: int, seed: int, **generate_kwargs: Any) -> list[str]:
    batches = prior_sample_batches(model, processor, count, seed, max(count, 1), **generate_kwargs)
    return [text for batch in batches for text in batch]


@torch.no_grad()
def prior_sample_batches(
    model: Any, processor: Any, count: int, seed: int, batch_size: int, **generate_kwargs: Any
) -> Iterator[list[str]]:
    """Decode `count` draws z ~ N(0, I), `batch_size` latents at a time: memory stays bounded by the batch, and the
    caller can show each batch as soon as it is done. The latents are drawn up front (a few floats each), so that
    the same seed gives the same draws whatever the batch size."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, model.config.latent_size, generator=generator)
    torch.manual_seed(seed)  # token sampling, when asked for
    for start in range(0, count, batch_size):
        batch = latents[start : start + batch_size].to(model.device)
        yield decode(processor, model.generate(latent=batch, **generate_kwargs))


def reconstructions(
    model: Any, processor: Any, sentences: Sequence[str], seed: int, sample_latent: bool = False, **generate_kwargs: Any
) -> list[str]:
    batches = reconstruction_batches(
        model, processor, sentences, seed, max(len(sentences), 1), sample_latent, **generate_kwargs
    )
    return [text for batch in batches for text in batch]


@torch.no_grad()
def reconstruction_batches(
    model: Any,
    processor: Any,
    sentences: Sequence[str],
    seed: int,
    batch_size: int,
    sample_latent: bool = False,
    **generate_kwargs: Any,
) -> Iterator[list[str]]:
    """Reconstruct `sentences`, `batch_size` of them at a time (each batch yields `num_return_sequences` outputs per
    sentence, in order)."""
    torch.manual_seed(seed)
    for start in range(0, len(sentences), batch_size):
        batch = processor(list(sentences[start : start + batch_size])).to(model.device)
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            sample_latent=sample_latent,
            **generate_kwargs,
        )
        yield decode(processor, generated)


@torch.no_grad()
def interpolation(
    model: Any, processor: Any, start: str, end: str, steps: int, seed: int, **generate_kwargs: Any
) -> list[tuple[float, str]]:
    """Decode `steps` latents evenly spaced between the posterior means of `start` and `end`."""
    batch = processor([start, end]).to(model.device)
    posterior = model.encode(batch["input_ids"], batch["attention_mask"])
    with user_errors(ValueError):
        latents = model.interpolate(posterior.mu[0], posterior.mu[1], steps)
    torch.manual_seed(seed)
    texts = decode(processor, model.generate(latent=latents, **generate_kwargs))
    return [(index / (steps - 1), text) for index, text in enumerate(texts)]
