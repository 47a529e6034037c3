"""Text from latents: prior samples, reconstructions and interpolations, shared by `train` and the commands that
decode."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from .core import _user_errors


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


@torch.no_grad()
def prior_samples(model: Any, processor: Any, count: int, seed: int, **generate_kwargs: Any) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(count, model.config.latent_size, generator=generator).to(model.device)
    torch.manual_seed(seed)  # token sampling, when asked for
    return decode(processor, model.generate(latent=latent, **generate_kwargs))


@torch.no_grad()
def reconstructions(
    model: Any, processor: Any, sentences: Sequence[str], seed: int, sample_latent: bool = False, **generate_kwargs: Any
) -> list[str]:
    batch = processor(list(sentences)).to(model.device)
    torch.manual_seed(seed)
    generated = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        sample_latent=sample_latent,
        **generate_kwargs,
    )
    return decode(processor, generated)


@torch.no_grad()
def interpolation(
    model: Any, processor: Any, start: str, end: str, steps: int, seed: int, **generate_kwargs: Any
) -> list[tuple[float, str]]:
    """Decode `steps` latents evenly spaced between the posterior means of `start` and `end`."""
    batch = processor([start, end]).to(model.device)
    posterior = model.encode(batch["input_ids"], batch["attention_mask"])
    with _user_errors(ValueError):
        latents = model.interpolate(posterior.mu[0], posterior.mu[1], steps)
    torch.manual_seed(seed)
    texts = decode(processor, model.generate(latent=latents, **generate_kwargs))
    return [(index / (steps - 1), text) for index, text in enumerate(texts)]
