"""Text from latents: prior samples, reconstructions and interpolations, shared by `train` and the commands that
decode."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..latent import generation_limit as generation_limit  # re-exported: the decoding flags cap max_new_tokens with it
from ..latent import texts_from_ids as decode
from .commands import user_errors


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
