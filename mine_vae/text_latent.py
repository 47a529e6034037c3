"""Between text and a trained model's latents: the one path that the CLI, the explorer, the study and the examples
take.

    means = encode_texts(model, processor, ["the film was dull", "the film was great"])   # (2, latent_size)
    decode_latents(model, processor, interpolate(means[0], means[1], 5, method="slerp"))   # 5 sentences
    decode_latents(model, processor, prior_latents(model.config.latent_size, 3, seed=0))    # 3 prior samples

- `encode_texts`: texts to posterior means (and log-variances), batched.
- `decode_latents` / `decode_latent_batches`: latents to texts, batched; `texts_from_ids`: generated ids to texts.
- `prior_latents`: seeded draws from the prior N(0, I); `interpolate`: the line or the arc between two latents.
- `prior_sample_batches`, `reconstruction_batches`, `interpolation`: the three decodings `mine-vae generate`,
  `interpolate` and `train`'s report show, seeded so that the same seed gives the same text.

Special tokens: a text is what the decoder generated after its start token, up to (not including) its first EOS,
with padding removed. Every other special token is kept, so a word-level vocabulary's `<unk>` stays visible instead of
silently vanishing from the text. (`MineVaeProcessor.batch_decode` follows the tokenizer's convention instead and drops
every special token.)

The model runs in eval mode (dropout off) for every call here and is put back in the mode it was in. Latents are
posterior means taken without gradients, on the CPU: they are small, and `generate` moves them to the model's device.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

import torch

from .modeling_mine_vae import MineVaeModel

# Greedy decoding's default length: long enough for a sentence, short enough that a model which never emits EOS
# (an untrained or collapsed one) answers in moments.
DEFAULT_MAX_NEW_TOKENS = 50
DEFAULT_BATCH_SIZE = 64  # texts or latents per forward pass: memory stays bounded however many are asked for
# Below this |sin(angle)| slerp's weights divide by (almost) zero; the arc is then (almost) a line.
_SLERP_PARALLEL_EPS = 1e-6
INTERPOLATION_METHODS = ("lerp", "slerp")


# ----------------------------------------------------------------------------------------------------------------------
# Text -> latents
# ----------------------------------------------------------------------------------------------------------------------
@overload
def encode_texts(
    model: MineVaeModel,
    processor: Any,
    texts: Sequence[str],
    batch_size: int = ...,
    return_logvar: Literal[False] = ...,
    progress: bool = ...,
) -> torch.Tensor: ...


@overload
def encode_texts(
    model: MineVaeModel,
    processor: Any,
    texts: Sequence[str],
    batch_size: int = ...,
    return_logvar: Literal[True] = ...,
    progress: bool = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def encode_texts(
    model: MineVaeModel,
    processor: Any,
    texts: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    return_logvar: bool = False,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """
    The posterior means of `texts`, `batch_size` texts at a time.

    Args:
        model: a `MineVaeModel`; in eval mode for the call (dropout off, so the same text always gives the same mean).
        processor: the model's `MineVaeProcessor`.
        texts: non-empty strings.
        batch_size: texts per forward pass of the encoder (memory grows with it, the result does not change).
        return_logvar: also return the posterior log-variances.
        progress: show a progress bar on stderr.

    Returns:
        `torch.FloatTensor` of shape `(len(texts), latent_size)` on the CPU; with `return_logvar=True`, a pair
        `(mu, logvar)` of that shape.
    """
    if isinstance(texts, str):
        raise TypeError("Give a list of texts, not one string.")
    if len(texts) == 0:
        raise ValueError("Got no texts to encode: give at least one sentence.")
    _check_batch_size(batch_size)
    from tqdm.auto import tqdm  # a dependency of transformers; imported here so that importing this module stays cheap

    means, logvars = [], []
    with (
        _eval_mode(model),
        torch.no_grad(),
        tqdm(total=len(texts), unit="text", file=sys.stderr, disable=not progress, desc="encoding") as bar,
    ):
        for start in range(0, len(texts), batch_size):
            batch = processor(list(texts[start : start + batch_size])).to(model.device)
            posterior = model.encode(batch["input_ids"], batch["attention_mask"])
            means.append(posterior.mu.float().cpu())
            logvars.append(posterior.logvar.float().cpu())
            bar.update(len(posterior.mu))
    mu = torch.cat(means)
    return (mu, torch.cat(logvars)) if return_logvar else mu


# ----------------------------------------------------------------------------------------------------------------------
# Latents -> text
# ----------------------------------------------------------------------------------------------------------------------
def decode_latents(
    model: MineVaeModel,
    processor: Any,
    latents: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    **generate_kwargs: Any,
) -> list[str]:
    """
    Text from latents: one sentence per row (see `decode_latent_batches`), all batches in one list.

    Returns:
        `list[str]` of `batch * num_return_sequences` sentences.
    """
    batches = decode_latent_batches(model, processor, latents, batch_size, **generate_kwargs)
    return [text for texts in batches for text in texts]


def decode_latent_batches(
    model: MineVaeModel,
    processor: Any,
    latents: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    **generate_kwargs: Any,
) -> Iterator[list[str]]:
    """
    Text from latents, `batch_size` latents per call of `generate`, each batch's texts yielded as soon as they are
    done (memory stays bounded by the batch; a caller can show them at once). Greedy by default.

    Args:
        latents (`torch.Tensor` of shape `(batch, latent_size)`, or `(latent_size,)` for one).
        batch_size: latents per call of `generate`.
        generate_kwargs: any option of `model.generate` (`do_sample=True, top_p=0.9`, `num_beams=4`, ...);
            `max_new_tokens` defaults to `DEFAULT_MAX_NEW_TOKENS`, capped at what the decoder can hold. With
            `num_return_sequences=n` there are n sentences per latent, in order.

    Yields:
        `list[str]`: the texts of one batch (`texts_from_ids`'s special-token policy).
    """
    latents = as_latent_batch(latents, "latents")
    _check_batch_size(batch_size)
    generate_kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    generate_kwargs["max_new_tokens"] = min(generate_kwargs["max_new_tokens"], generation_limit(model))
    generate_kwargs.setdefault("do_sample", False)
    with _eval_mode(model):
        for start in range(0, latents.shape[0], batch_size):
            ids = model.generate(latent=latents[start : start + batch_size], **generate_kwargs)
            yield texts_from_ids(processor, ids)


def generation_limit(model: Any) -> int:
    """Most new tokens the decoder can generate: its positions, less z's key/value positions and the start token."""
    positions = getattr(model.config.decoder, "max_position_embeddings", None)
    if positions is None:
        return sys.maxsize
    return positions - model.config.num_latent_positions - 1


def texts_from_ids(processor: Any, sequences: torch.Tensor) -> list[str]:
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


# ----------------------------------------------------------------------------------------------------------------------
# Where latents come from: the prior, and paths between two
# ----------------------------------------------------------------------------------------------------------------------
def prior_latents(latent_size: int, count: int, seed: int, prior_scale: float = 1.0) -> torch.Tensor:
    """
    `count` draws z ~ N(0, prior_scale² I) from a generator seeded with `seed`, on the CPU: shape `(count,
    latent_size)`. The same seed gives the same draws on any device and however they are later batched
    (`MineVaeModel.sample_prior` draws on the model's device instead, from the generator it is given).

    `prior_scale` below 1 samples a reduced-temperature prior (as Glow and NVAE show their samples): the draws stay
    nearer the bulk of the aggregate posterior, where the decoder was trained, and fewer of them decode to loops or
    symbols. The draws at any scale are the N(0, I) draws of the same seed, scaled.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    if not (math.isfinite(prior_scale) and prior_scale > 0):
        raise ValueError(f"prior_scale must be a number > 0 (1: the prior itself), got {prior_scale}.")
    return prior_scale * torch.randn(count, latent_size, generator=torch.Generator().manual_seed(seed))


def interpolate(
    start: torch.Tensor, end: torch.Tensor, steps: int, method: Literal["lerp", "slerp"] = "lerp"
) -> torch.Tensor:
    """
    `steps` latents from `start` to `end` (each of shape `(latent_size,)` or `(1, latent_size)`): shape
    `(steps, latent_size)`, the first row exactly `start` and the last exactly `end`.

    Args:
        method: `"lerp"`, evenly spaced on the straight line (as `MineVaeModel.interpolate`); or `"slerp"`, on the
            great-circle arc. Under a Gaussian prior most of the mass of a high-dimensional latent lies near a sphere,
            and the midpoint of a straight line between two typical codes lies well inside it, where the decoder saw
            few codes in training; the arc keeps the norm between the two endpoints'. Near-parallel (or
            anti-parallel, or zero) vectors have no well-defined arc: those fall back to the line.
    """
    if method not in INTERPOLATION_METHODS:
        raise ValueError(f"method must be 'lerp' or 'slerp', got {method!r}.")
    a, b = _pair(start, end, steps)
    path = _arc(a, b, steps) if method == "slerp" else None
    if path is None:
        path = MineVaeModel.interpolate(a, b, steps)
    # The weights at t = 0 and 1 give a and b only up to rounding; the endpoints are set so that they are exact.
    path[0], path[-1] = a, b
    return path


def _arc(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor | None:
    """Spherical interpolation from `a` to `b` in float64; None where the arc is not defined."""
    a64, b64 = a.double(), b.double()
    norms = a64.norm() * b64.norm()
    if norms == 0:
        return None
    cos = (a64 @ b64 / norms).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    sin = torch.sin(angle)
    if sin.abs() < _SLERP_PARALLEL_EPS:
        return None
    t = torch.linspace(0, 1, steps, dtype=torch.float64, device=a.device).unsqueeze(1)
    return ((torch.sin((1 - t) * angle) / sin) * a64 + (torch.sin(t * angle) / sin) * b64).to(a.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# The seeded decodings the CLI shows
# ----------------------------------------------------------------------------------------------------------------------
def prior_sample_batches(
    model: MineVaeModel,
    processor: Any,
    count: int,
    seed: int,
    batch_size: int,
    prior_scale: float = 1.0,
    **generate_kwargs: Any,
) -> Iterator[list[str]]:
    """Decode `count` draws z ~ N(0, prior_scale² I) (`prior_latents`), `batch_size` latents at a time. The latents
    are drawn up front (a few floats each), so that the same seed gives the same draws whatever the batch size; `seed`
    also seeds token sampling."""
    latents = prior_latents(model.config.latent_size, count, seed, prior_scale)
    torch.manual_seed(seed)  # token sampling, when asked for
    yield from decode_latent_batches(model, processor, latents, batch_size, **generate_kwargs)


def prior_samples(
    model: MineVaeModel, processor: Any, count: int, seed: int, prior_scale: float = 1.0, **generate_kwargs: Any
) -> list[str]:
    """`prior_sample_batches` in one batch, as one list."""
    batches = prior_sample_batches(model, processor, count, seed, max(count, 1), prior_scale, **generate_kwargs)
    return [text for batch in batches for text in batch]


def reconstruction_batches(
    model: MineVaeModel,
    processor: Any,
    sentences: Sequence[str],
    seed: int,
    batch_size: int,
    sample_latent: bool = False,
    **generate_kwargs: Any,
) -> Iterator[list[str]]:
    """Reconstruct `sentences`, `batch_size` of them at a time, from the posterior mean (or a posterior sample with
    `sample_latent`): each batch yields `num_return_sequences` outputs per sentence, in order."""
    _check_batch_size(batch_size)
    torch.manual_seed(seed)
    with _eval_mode(model):
        for start in range(0, len(sentences), batch_size):
            batch = processor(list(sentences[start : start + batch_size])).to(model.device)
            generated = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                sample_latent=sample_latent,
                **generate_kwargs,
            )
            yield texts_from_ids(processor, generated)


def reconstructions(
    model: MineVaeModel,
    processor: Any,
    sentences: Sequence[str],
    seed: int,
    sample_latent: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """`reconstruction_batches` in one batch, as one list."""
    batches = reconstruction_batches(
        model, processor, sentences, seed, max(len(sentences), 1), sample_latent, **generate_kwargs
    )
    return [text for batch in batches for text in batch]


def interpolation(
    model: MineVaeModel,
    processor: Any,
    start: str,
    end: str,
    steps: int,
    seed: int,
    method: Literal["lerp", "slerp"] = "lerp",
    batch_size: int = DEFAULT_BATCH_SIZE,
    **generate_kwargs: Any,
) -> list[tuple[float, str]]:
    """Decode `steps` latents between the posterior means of `start` and `end` (`interpolate`'s `method`),
    `batch_size` at a time: `(t, text)` pairs, t from 0 to 1."""
    means = encode_texts(model, processor, [start, end])
    path = interpolate(means[0], means[1], steps, method=method)
    torch.manual_seed(seed)  # token sampling, when asked for
    texts = decode_latents(model, processor, path, batch_size, **generate_kwargs)
    return [(index / (steps - 1), text) for index, text in enumerate(texts)]


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block (dropout off), back in its previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")


def as_latent_batch(latents: torch.Tensor, name: str) -> torch.Tensor:
    """`(latent_size,)` as `(1, latent_size)`; `(batch, latent_size)` as it is; anything else refused."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(latents).__name__}.")
    if latents.ndim == 1:
        return latents.unsqueeze(0)
    if latents.ndim != 2 or latents.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, latent_size) or (latent_size,), got {tuple(latents.shape)}.")
    return latents


def _pair(a: torch.Tensor, b: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (both endpoints), got {steps}.")
    a, b = as_latent_batch(a, "a"), as_latent_batch(b, "b")
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError(f"interpolate between two single latents, got {a.shape[0]} and {b.shape[0]}.")
    if a.shape != b.shape:
        raise ValueError(f"the two latents differ in size: {a.shape[1]} vs {b.shape[1]}.")
    return a[0], b[0]


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "INTERPOLATION_METHODS",
    "as_latent_batch",
    "decode_latent_batches",
    "decode_latents",
    "encode_texts",
    "generation_limit",
    "interpolate",
    "interpolation",
    "prior_latents",
    "prior_sample_batches",
    "prior_samples",
    "reconstruction_batches",
    "reconstructions",
    "texts_from_ids",
]
