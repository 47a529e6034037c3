r"""The estimators of :mod:`mine_vae.evaluation` on tensors alone: Gaussian log-densities, the KL to the prior, the
importance-weighted log-likelihood, the mutual information under the aggregate posterior and the active units
(notation and references: :mod:`mine_vae.evaluation`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .modeling_mine_vae import MineVaePosterior

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu, diag(exp(logvar)))`` summed over the last (latent) dimension.

    Args:
        z: ``(..., L)``.
        mu, logvar: broadcastable to ``z``, e.g. ``(B, L)`` against ``z`` of shape ``(K, B, L)``.
    Returns:
        ``(...)``: ``z``'s shape without the last dimension (after broadcasting).
    """
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension: ``(..., L) -> (...)``."""
    return -0.5 * (_LOG_2PI + z.pow(2)).sum(dim=-1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mu, exp(logvar)) || N(0, 1))`` per latent dimension, averaged over the batch.

    Args:
        mu, logvar: ``(B, L)``.
    Returns:
        ``(L,)``; its sum is the mean KL per example.
    """
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be (B, L); got {tuple(mu.shape)} and {tuple(logvar.shape)}.")
    return MineVaePosterior(mu=mu, logvar=logvar).kl_per_dimension()


def importance_weighted_log_likelihood(
    log_px_given_z: torch.Tensor, log_pz: torch.Tensor, log_qz_given_x: torch.Tensor
) -> torch.Tensor:
    """The importance-weighted estimate of ``log p(x)`` from ``K`` samples ``z_k ~ q(z|x)``.

    ``logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K``; logsumexp keeps it exact
    when the weights underflow (log-weights of whole sentences are in the hundreds of nats).

    Args:
        log_px_given_z, log_pz, log_qz_given_x: ``(K, B)``.
    Returns:
        ``(B,)``.
    """
    if not (log_px_given_z.shape == log_pz.shape == log_qz_given_x.shape) or log_pz.dim() != 2:
        raise ValueError(
            "log_px_given_z, log_pz and log_qz_given_x must all be (K, B); got "
            f"{tuple(log_px_given_z.shape)}, {tuple(log_pz.shape)}, {tuple(log_qz_given_x.shape)}."
        )
    num_samples = log_pz.shape[0]
    log_weights = log_px_given_z + log_pz - log_qz_given_x
    return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)


def mutual_information(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: int = 1,
    chunk_size: int = 1024,
    generator: torch.Generator | None = None,
    closed_form_entropy: bool = False,
) -> float:
    """Aggregate-posterior estimate of ``I_q(x; z)`` (He et al. 2019, ``calc_mi``).

    ``MI = E_x E_{q(z|x)}[log q(z|x)] - E_x E_{q(z|x)}[log q(z)]``, where
    ``q(z) ~= (1/N) sum_j q(z|x_j)`` is the mixture of all ``N`` posteriors given, and ``x`` is
    uniform over those examples. The expectations use ``num_samples`` draws ``z ~ q(z|x_i)`` per
    example. The ``(M, N)`` matrix of ``log q(z_m|x_j)`` is built ``chunk_size`` rows at a time,
    so memory is ``O(chunk_size * N)`` whatever ``N`` is (float64, because the quadratic form is
    expanded into matrix products).

    By default both terms are averaged over the *same* draws, i.e. the mean of
    ``log q(z|x_i) - log q(z)``: the two terms are strongly correlated, so this has far less
    variance than He et al.'s version, which takes the first term in closed form (the negative
    entropy); both have the same expectation. Each paired term is at most ``log N``, so the
    estimate is too, and it is exactly 0 when the posterior ignores ``x``.
    ``closed_form_entropy=True`` reproduces He et al.'s ``calc_mi`` number for number.

    Args:
        mu, logvar: ``(N, L)`` posterior parameters of the whole evaluation set, ``N >= 2``.
        num_samples: draws of ``z`` per example (He et al. use 1).
        chunk_size: rows of ``z`` per chunk.
        generator: optional ``torch.Generator`` (on ``mu``'s device) for reproducible draws.
        closed_form_entropy: use the closed-form negative entropy for the first term (He et al.).
    Returns:
        The estimate in nats.
    """
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be (N, L); got {tuple(mu.shape)} and {tuple(logvar.shape)}.")
    num_examples, latent_size = mu.shape
    if num_examples < 2:
        raise ValueError(
            "mutual_information needs at least 2 examples: q(z) is approximated by the mixture of the "
            f"posteriors of the evaluation set; got {num_examples}."
        )
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples and chunk_size must be >= 1; got {num_samples} and {chunk_size}.")
    mu = mu.detach().to(torch.float64)
    logvar = logvar.detach().to(torch.float64)

    z = MineVaePosterior(mu=mu, logvar=logvar).sample(num_samples, generator)
    z = z.reshape(num_samples * num_examples, latent_size)  # (M, L), row s * N + i
    source = torch.arange(num_examples, device=mu.device).repeat(num_samples)  # (M,): the i of each row

    if closed_form_entropy:
        # E_{q(z|x)}[log q(z|x)] = -0.5 * (L * log 2pi + sum_d (1 + logvar_d)), the negative entropy.
        first_term = (-0.5 * (latent_size * _LOG_2PI + (1.0 + logvar).sum(dim=-1))).mean()
    else:
        first_term = gaussian_log_density(z, mu[source], logvar[source]).mean()

    # sum_d (z_d - mu_jd)^2 / var_jd = z^2 @ (1/var)^T - 2 z @ (mu/var)^T + sum_d mu_jd^2/var_jd:
    # two (chunk, L) x (L, N) products instead of a (chunk, N, L) tensor.
    inv_var = torch.exp(-logvar)  # (N, L)
    mu_inv_var = mu * inv_var  # (N, L)
    const = (mu.pow(2) * inv_var).sum(dim=-1) + logvar.sum(dim=-1) + latent_size * _LOG_2PI  # (N,)
    log_qz_total = torch.zeros((), dtype=torch.float64, device=mu.device)
    for begin in range(0, z.shape[0], chunk_size):
        chunk = z[begin : begin + chunk_size]  # (C, L)
        quad = chunk.pow(2) @ inv_var.T - 2.0 * (chunk @ mu_inv_var.T)  # (C, N)
        log_q_z_given_xj = -0.5 * (quad + const)  # (C, N): log q(z_c | x_j)
        log_qz = torch.logsumexp(log_q_z_given_xj, dim=1) - math.log(num_examples)  # (C,)
        log_qz_total = log_qz_total + log_qz.sum()
    return float(first_term - log_qz_total / z.shape[0])


# An estimate within log(10/9) of log N gives each z at least 9/10 of the mixture's weight at its own posterior on
# average: the estimator can tell no more, so the value is reported as a lower bound.
MI_SATURATION_MARGIN = math.log(10 / 9)


def describe_mi(mi: float, ceiling: float) -> str:
    """The aggregate-posterior MI as reports print it, with its ceiling log N: "4.12 (ceiling 5.30)", or
    "≥ 5.29 (ceiling 5.30, saturated)" when it sits at the ceiling and measures only that the posteriors differ."""
    if not (math.isfinite(mi) and math.isfinite(ceiling)):
        return f"{mi:.4g}"
    if mi >= ceiling - MI_SATURATION_MARGIN:
        return f"≥ {mi:.3g} (ceiling {ceiling:.3g}, saturated)"
    return f"{mi:.3g} (ceiling {ceiling:.3g})"


class ActiveUnits(NamedTuple):
    """Result of :func:`active_units`: ``count`` of active dims and per-dim ``variances`` ``(L,)``."""

    count: int
    variances: torch.Tensor


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> ActiveUnits:
    """Active units (Burda et al. 2016): dims whose posterior mean varies over the data.

    Args:
        mu: ``(N, L)`` posterior means of the evaluation set, ``N >= 2``.
        threshold: a dim is active when ``Var_x(mu_d) > threshold`` (0.01 in He et al. 2019).
    Returns:
        ``ActiveUnits(count, variances)`` with ``variances`` ``(L,)``, the unbiased variance over
        examples (He et al. divide by ``N - 1``).
    """
    if mu.dim() != 2:
        raise ValueError(f"mu must be (N, L); got {tuple(mu.shape)}.")
    if mu.shape[0] < 2:
        raise ValueError(f"active_units needs at least 2 examples to compute a variance; got {mu.shape[0]}.")
    variances = mu.detach().to(torch.float64).var(dim=0, unbiased=True).to(torch.float32)
    return ActiveUnits(count=int((variances > threshold).sum()), variances=variances)


__all__ = [
    "MI_SATURATION_MARGIN",
    "ActiveUnits",
    "active_units",
    "describe_mi",
    "gaussian_log_density",
    "importance_weighted_log_likelihood",
    "kl_per_dimension",
    "mutual_information",
    "standard_normal_log_density",
]
