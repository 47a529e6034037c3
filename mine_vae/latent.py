"""Operations on a trained model's latent space: encode texts to posterior means, move between and along them, and
decode the result.

Every operation returns latents of shape `(batch, latent_size)` that go straight into `model.generate(latent=...)`
or `decode(model, processor, latents)`:

    means = encode_texts(model, processor, ["the film was dull", "the film was great"])   # (2, latent_size)
    decode(model, processor, slerp(means[0], means[1], 5))                                 # 5 sentences

The latents are posterior means (the centre of q(z|x)), taken without gradients and in eval mode, on the CPU: they
are small, and `generate` moves them to the model's device.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch

from .modeling_mine_vae import MineVaeModel

# Greedy decoding's default length: long enough for a sentence, short enough that a model which never emits EOS
# (an untrained or collapsed one) answers in moments.
DEFAULT_MAX_NEW_TOKENS = 50
# Below this |sin(angle)| slerp's weights divide by (almost) zero; the arc is then (almost) a line.
_SLERP_PARALLEL_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# Text <-> latents
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
    batch_size: int = 64,
    return_logvar: bool = False,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """
    The posterior means of `texts`, `batch_size` texts at a time.

    Args:
        model: a `MineVaeModel`; it is put in eval mode for the call (dropout off, so the same text always gives the
            same mean) and put back in the mode it was in.
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
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


def decode(
    model: MineVaeModel, processor: Any, latents: torch.Tensor, batch_size: int = 64, **generate_kwargs: Any
) -> list[str]:
    """
    Text from latents: one sentence per row, greedy by default.

    Args:
        latents (`torch.Tensor` of shape `(batch, latent_size)`, or `(latent_size,)` for one).
        batch_size: latents per call of `generate`.
        generate_kwargs: any option of `model.generate` (`do_sample=True, top_p=0.9`, `num_beams=4`, ...);
            `max_new_tokens` defaults to `DEFAULT_MAX_NEW_TOKENS`, capped at what the decoder can hold. With
            `num_return_sequences=n` there are n sentences per latent, in order.

    Returns:
        `list[str]` of `batch * num_return_sequences` sentences.
    """
    latents = _as_batch(latents, "latents")
    generate_kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    generate_kwargs["max_new_tokens"] = min(generate_kwargs["max_new_tokens"], generation_limit(model))
    generate_kwargs.setdefault("do_sample", False)
    texts: list[str] = []
    with _eval_mode(model):
        for start in range(0, latents.shape[0], batch_size):
            ids = model.generate(latent=latents[start : start + batch_size], **generate_kwargs)
            texts += texts_from_ids(processor, ids)
    return texts


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
# Paths and arithmetic
# ----------------------------------------------------------------------------------------------------------------------
def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """
    `steps` latents evenly spaced on the line from `a` to `b` (each of shape `(latent_size,)` or
    `(1, latent_size)`): shape `(steps, latent_size)`, the first row exactly `a` and the last exactly `b`.
    """
    a, b = _pair(a, b, steps)
    path = MineVaeModel.interpolate(a, b, steps)
    # (1 - t)·a + t·b is a and b at t = 0, 1 up to rounding of linspace; the endpoints are set so they are exact.
    path[0], path[-1] = a, b
    return path


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """
    `steps` latents on the great-circle arc from `a` to `b` (spherical interpolation), shape `(steps, latent_size)`,
    the first row exactly `a` and the last exactly `b`.

    Under a Gaussian prior most of the mass of a high-dimensional latent lies near a sphere, and the midpoint of a
    straight line between two typical codes lies well inside it, where the decoder saw few codes in training; the
    arc keeps the norm between the two endpoints'. Near-parallel (or anti-parallel, or zero) vectors have no
    well-defined arc: those fall back to `lerp`.
    """
    a, b = _pair(a, b, steps)
    a64, b64 = a.double(), b.double()
    norms = a64.norm() * b64.norm()
    if norms == 0:
        return lerp(a, b, steps)
    cos = (a64 @ b64 / norms).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    sin = torch.sin(angle)
    if sin.abs() < _SLERP_PARALLEL_EPS:
        return lerp(a, b, steps)
    t = torch.linspace(0, 1, steps, dtype=torch.float64, device=a.device).unsqueeze(1)
    path = (torch.sin((1 - t) * angle) / sin) * a64 + (torch.sin(t * angle) / sin) * b64
    path = path.to(a.dtype)
    path[0], path[-1] = a, b
    return path


def analogy(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """
    a : b :: c : ?, as `c + (b - a)`: the offset that takes a to b, applied to c.

    Args:
        a, b, c (`torch.Tensor` of shape `(latent_size,)` or `(batch, latent_size)`, broadcast against each other).

    Returns:
        `torch.Tensor` of shape `(batch, latent_size)` (batch 1 for three single latents).
    """
    return _as_batch(c + (b - a), "analogy")


def attribute_vector(
    positive_latents: torch.Tensor,
    negative_latents: torch.Tensor,
    method: Literal["mean", "probe"] = "mean",
    probe_steps: int = 100,
    probe_weight_decay: float = 1e-3,
) -> torch.Tensor:
    """
    A direction in latent space from codes without an attribute (`negative_latents`) to codes with it
    (`positive_latents`); add it with `apply_attribute`.

    Args:
        positive_latents (`torch.Tensor` of shape `(n_pos, latent_size)`), negative_latents (`(n_neg, latent_size)`).
        method: `"mean"`, the difference of the two groups' means; or `"probe"`, the normal of a logistic-regression
            boundary between the groups (trained here with torch's L-BFGS), scaled so that its length is the mean
            difference's projection on it. The probe ignores dimensions that vary in both groups alike, which the
            difference of means picks up as noise when the groups are small.
        probe_steps: L-BFGS iterations of the probe.
        probe_weight_decay: L2 penalty on the probe's weights; it keeps them finite when the groups are separable.

    Returns:
        `torch.Tensor` of shape `(latent_size,)`.
    """
    positive = _as_batch(positive_latents, "positive_latents").float()
    negative = _as_batch(negative_latents, "negative_latents").float()
    if positive.shape[1] != negative.shape[1]:
        raise ValueError(f"positive and negative latents differ in size: {positive.shape[1]} vs {negative.shape[1]}.")
    difference = positive.mean(dim=0) - negative.mean(dim=0)
    if method == "mean":
        return difference
    if method != "probe":
        raise ValueError(f"method must be 'mean' or 'probe', got {method!r}.")
    weight, _ = logistic_probe(
        torch.cat([positive, negative]),
        torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]),
        steps=probe_steps,
        weight_decay=probe_weight_decay,
    )
    norm = weight.norm()
    if norm == 0:  # identical groups: no direction separates them
        return torch.zeros_like(difference)
    direction = weight / norm
    return (difference @ direction) * direction


def logistic_probe(
    features: torch.Tensor, labels: torch.Tensor, steps: int = 100, weight_decay: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A binary logistic regression fitted with L-BFGS from zero weights (deterministic: no random start).

    Args:
        features (`torch.Tensor` of shape `(n, dim)`), labels (`torch.Tensor` of shape `(n,)`, 0 or 1).

    Returns:
        `(weight, bias)` of shapes `(dim,)` and `()`: p(label = 1 | x) = sigmoid(x · weight + bias).
    """
    features, labels = features.detach().float(), labels.detach().float()
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # also when called under no_grad (e.g. from decoding code)
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def apply_attribute(latents: torch.Tensor, vector: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """
    `latents + strength · vector`: shape `(batch, latent_size)` for `latents` of that shape (or `(latent_size,)`)
    and `vector` of shape `(latent_size,)`. Strength 0 leaves the latents as they are; negative strengths remove the
    attribute.
    """
    return _as_batch(latents, "latents") + strength * vector.reshape(-1).to(latents.device, latents.dtype)


def traverse(latent: torch.Tensor, dim: int, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """
    Copies of `latent` (shape `(latent_size,)` or `(1, latent_size)`) with dimension `dim` set to each of `values`:
    shape `(len(values), latent_size)`; every other dimension is `latent`'s.
    """
    row = _as_batch(latent, "latent")
    if row.shape[0] != 1:
        raise ValueError(f"traverse takes one latent, got {row.shape[0]}.")
    if not -row.shape[1] <= dim < row.shape[1]:
        raise ValueError(f"dim {dim} is out of range for latents of size {row.shape[1]}.")
    values = torch.as_tensor(values, dtype=row.dtype, device=row.device).reshape(-1)
    path = row.repeat(len(values), 1)
    path[:, dim] = values
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The region of a label
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class LabelRegion:
    """
    A Gaussian over the posterior means of one label's texts, to sample new codes of that label.

    Attributes:
        mean (`torch.Tensor` of shape `(latent_size,)`).
        covariance (`torch.Tensor` of shape `(latent_size,)` for a diagonal one, `(latent_size, latent_size)` for a
            full one), ridge included.
    """

    mean: torch.Tensor
    covariance: torch.Tensor

    @property
    def diagonal(self) -> bool:
        return self.covariance.ndim == 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` draws from the region: shape `(n, latent_size)`."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        noise = torch.randn(n, self.mean.shape[0], generator=generator, dtype=self.mean.dtype)
        if self.diagonal:
            return self.mean + noise * self.covariance.sqrt()
        return self.mean + noise @ torch.linalg.cholesky(self.covariance).T


def fit_label_region(
    latents: torch.Tensor, covariance: Literal["diagonal", "full"] = "diagonal", ridge: float = 1e-4
) -> LabelRegion:
    """
    The `LabelRegion` of a label's posterior means.

    Args:
        latents (`torch.Tensor` of shape `(n, latent_size)`): one label's posterior means (`encode_texts`).
        covariance: `"diagonal"` (the default: few examples pin down variances, not a full covariance) or `"full"`.
        ridge: added to the variances; it keeps the region a proper Gaussian with one example, or with a full
            covariance from fewer examples than dimensions (singular otherwise).
    """
    points = _as_batch(latents, "latents").double()
    if covariance not in ("diagonal", "full"):
        raise ValueError(f"covariance must be 'diagonal' or 'full', got {covariance!r}.")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    mean = points.mean(dim=0)
    centred = points - mean
    # The maximum-likelihood estimate (divide by n): defined for a single example, where it is zero plus the ridge.
    if covariance == "diagonal":
        spread = centred.pow(2).mean(dim=0) + ridge
    else:
        spread = centred.T @ centred / len(points) + ridge * torch.eye(points.shape[1], dtype=points.dtype)
    return LabelRegion(mean=mean.to(latents.dtype), covariance=spread.to(latents.dtype))


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


def _as_batch(latents: torch.Tensor, name: str) -> torch.Tensor:
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
    a, b = _as_batch(a, "a"), _as_batch(b, "b")
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError(f"interpolate between two single latents, got {a.shape[0]} and {b.shape[0]}.")
    if a.shape != b.shape:
        raise ValueError(f"the two latents differ in size: {a.shape[1]} vs {b.shape[1]}.")
    return a[0], b[0]


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "LabelRegion",
    "analogy",
    "apply_attribute",
    "attribute_vector",
    "decode",
    "encode_texts",
    "fit_label_region",
    "generation_limit",
    "lerp",
    "logistic_probe",
    "slerp",
    "texts_from_ids",
    "traverse",
]
