"""Text from latents: prior samples, reconstructions and interpolations, shared by `train` and the commands that
decode."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..latent import generation_limit as generation_limit  # re-exported: the decoding flags cap max_new_tokens with it
from ..latent import texts_from_ids as decode
from .commands import user_errors


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`: the GPU's free memory, or the memory Linux reports available (all of
    the machine's where it cannot tell)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40  # cannot tell: the allocator will say so


def sequence_bytes(model: Any, max_new_tokens: int) -> int:
    """A generous estimate of the memory one sequence takes while it is decoded: the next-token scores over the
    vocabulary (a few copies: softmax, sampling) and the decoder's key/value cache over every position, in fp32."""
    head = model.decoder.get_output_embeddings()
    layers = getattr(model.config.decoder, "num_hidden_layers", 1) or 1
    positions = max_new_tokens + 2 + (getattr(model.config, "latent_memory_positions", 0) or 0)
    return 4 * (4 * head.out_features + 2 * layers * head.in_features * positions)


def most_that_fit(bytes_each: int, device: torch.device) -> int:
    """How many items of `bytes_each` bytes fit in the memory free on `device`, keeping a quarter of it free."""
    return available_memory(device) * 3 // 4 // max(1, bytes_each)


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


INTERPOLATION_BATCH = 64  # latents decoded at once: memory stays bounded however many steps are asked for


@torch.no_grad()
def interpolation(
    model: Any,
    processor: Any,
    start: str,
    end: str,
    steps: int,
    seed: int,
    batch_size: int = INTERPOLATION_BATCH,
    **generate_kwargs: Any,
) -> list[tuple[float, str]]:
    """Decode `steps` latents evenly spaced between the posterior means of `start` and `end`, `batch_size` at a
    time."""
    batch = processor([start, end]).to(model.device)
    posterior = model.encode(batch["input_ids"], batch["attention_mask"])
    with user_errors(ValueError):
        latents = model.interpolate(posterior.mu[0], posterior.mu[1], steps)
    torch.manual_seed(seed)
    texts: list[str] = []
    for first in range(0, steps, batch_size):
        generated = model.generate(latent=latents[first : first + batch_size], **generate_kwargs)
        texts += decode(processor, generated)
    return [(index / (steps - 1), text) for index, text in enumerate(texts)]
