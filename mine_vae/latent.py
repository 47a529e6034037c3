"""Arithmetic on a trained model's latent space: analogies, attribute directions and probes, traversals, and the
region of a label's codes.

Every operation returns latents of shape `(batch, latent_size)` that go straight into `model.generate(latent=...)`
or `decode_latents(model, processor, latents)`; texts become latents with `encode_texts` (`mine_vae.text_latent`,
where text <-> latent conversion, prior draws and interpolation live; their names are re-exported here):

    means = encode_texts(model, processor, ["the film was dull", "the film was great", "the plot was dull"])
    decode_latents(model, processor, analogy(means[0], means[1], means[2]))   # dull : great :: the plot was dull : ?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

# Re-exported: `mine_vae.latent` was where these lived first, and users import them from here.
from .text_latent import DEFAULT_MAX_NEW_TOKENS as DEFAULT_MAX_NEW_TOKENS
from .text_latent import as_latent_batch
from .text_latent import decode_latents as decode_latents
from .text_latent import encode_texts as encode_texts
from .text_latent import generation_limit as generation_limit
from .text_latent import interpolate as interpolate
from .text_latent import texts_from_ids as texts_from_ids

decode = decode_latents  # the first name of latents -> text, kept for the code that calls it


# ----------------------------------------------------------------------------------------------------------------------
# Paths and arithmetic
# ----------------------------------------------------------------------------------------------------------------------
def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`interpolate(a, b, steps, method="lerp")`: the straight line from `a` to `b`."""
    return interpolate(a, b, steps, method="lerp")


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`interpolate(a, b, steps, method="slerp")`: the great-circle arc from `a` to `b`."""
    return interpolate(a, b, steps, method="slerp")


def analogy(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """
    a : b :: c : ?, as `c + (b - a)`: the offset that takes a to b, applied to c.

    Args:
        a, b, c (`torch.Tensor` of shape `(latent_size,)` or `(batch, latent_size)`, broadcast against each other).

    Returns:
        `torch.Tensor` of shape `(batch, latent_size)` (batch 1 for three single latents).
    """
    return as_latent_batch(c + (b - a), "analogy")


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
    positive = as_latent_batch(positive_latents, "positive_latents").float()
    negative = as_latent_batch(negative_latents, "negative_latents").float()
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
    return as_latent_batch(latents, "latents") + strength * vector.reshape(-1).to(latents.device, latents.dtype)


def traverse(latent: torch.Tensor, dim: int, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """
    Copies of `latent` (shape `(latent_size,)` or `(1, latent_size)`) with dimension `dim` set to each of `values`:
    shape `(len(values), latent_size)`; every other dimension is `latent`'s.
    """
    row = as_latent_batch(latent, "latent")
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
    points = as_latent_batch(latents, "latents").double()
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


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "LabelRegion",
    "analogy",
    "apply_attribute",
    "attribute_vector",
    "decode",
    "decode_latents",
    "encode_texts",
    "fit_label_region",
    "generation_limit",
    "interpolate",
    "lerp",
    "logistic_probe",
    "slerp",
    "texts_from_ids",
    "traverse",
]
