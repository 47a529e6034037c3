"""The MI critic f(x, z) and the lower bound I(x; z) >= E_joint[f] - ξ E_marginal[e^f] + log ξ + 1.

What the critic sees of x: the pooled encoder states, *detached*. They are rich (a pretrained encoder's view of the
text) and cost nothing extra, and because no gradient flows into them from the bound, the VAE step can raise the bound
only by putting information about x into z, never by reshaping the critic's view of x. Gradients of the bound reach the
encoder through z alone, as in the paper (its Eq. 5: the gradient through the critic's own dependence on the encoder
vanishes at the optimal critic).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

# Past this log-value, e^x is continued linearly (value e^T (1 + x - T), slope e^T): the bound stays finite and its
# gradient bounded for any score, and where this applies the bound is already below -e^T (about -4.9e8).
_EXP_LINEAR_ABOVE = 20.0


def stable_exp(x: torch.Tensor) -> torch.Tensor:
    """e^x up to `_EXP_LINEAR_ABOVE`, continued by its tangent above: finite and with a bounded gradient for any x."""
    capped = x.clamp(max=_EXP_LINEAR_ABOVE)
    return torch.exp(capped) * (1 + (x - capped))


def log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    """log(mean(e^x)) over the last dimension, without overflow."""
    return torch.logsumexp(x, dim=-1) - math.log(x.shape[-1])


def mi_lower_bound(
    joint_scores: torch.Tensor,
    marginal_scores: torch.Tensor,
    xi: float | str = 1.0,
    log_ema: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    The lower bound E_joint[f] - ξ E_marginal[e^f] + log ξ + 1 on I(x; z), in nats, computed stably in float32.

    Args:
        joint_scores (`torch.Tensor` of shape `(batch_size,)`): f(x_i, z_i).
        marginal_scores (`torch.Tensor` of shape `(batch_size,)`): f(x_i, z_j) for j != i.
        xi: a positive number, `"dv"` (ξ = 1 / E_marginal[e^f], the Donsker-Varadhan bound) or `"ema"`.
        log_ema (`torch.Tensor`, scalar): with `xi="ema"`, the log of the moving average of E_marginal[e^f]; ξ is its
            inverse. Any positive ξ gives a valid bound, so the value is a lower bound whatever the average's lag.

    Returns:
        `torch.Tensor` scalar: the bound.
    """
    joint = joint_scores.float().mean()
    log_marginal = log_mean_exp(marginal_scores.float())
    if xi == "dv":
        return joint - log_marginal
    if xi == "ema":
        if log_ema is None:
            raise ValueError("xi='ema' needs log_ema, the log of the moving average of E_marginal[e^f].")
        log_xi = -log_ema.float().detach()
    else:
        log_xi = torch.tensor(math.log(float(xi)), device=joint.device)
    return joint - stable_exp(log_marginal + log_xi) + log_xi + 1


def derangement(batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None):
    """A random permutation with no fixed point: pairing example i with z[perm[i]] gives a marginal pair."""
    if batch_size < 2:
        raise ValueError(f"Marginal pairs need at least 2 examples in a batch, got {batch_size}.")
    order = torch.randperm(batch_size, generator=generator, device="cpu")
    # Each example in a random cycle takes the next one's z: a uniformly random cyclic derangement.
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm.to(device)


class MineCritic(nn.Module):
    """
    f(x, z) = MLP([LayerNorm(x_features) W_x + z W_z]): scores joint and marginal pairs with shared projections, so
    scoring the marginal pairs costs one extra MLP pass over the batch and no new projection of x or z. With
    `score_bound` c, the scores are c tanh(f / c).
    """

    def __init__(
        self,
        feature_size: int,
        latent_size: int,
        hidden_size: int,
        num_layers: int,
        xi: float | str = 1.0,
        ema_decay: float = 0.99,
        score_bound: float | None = None,
    ):
        super().__init__()
        self.xi = xi
        self.ema_decay = ema_decay
        self.score_bound = score_bound
        self.feature_norm = nn.LayerNorm(feature_size)
        self.feature_proj = nn.Linear(feature_size, hidden_size)
        self.latent_proj = nn.Linear(latent_size, hidden_size, bias=False)
        layers: list[nn.Module] = [nn.GELU()]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(hidden_size, hidden_size), nn.GELU()]
        layers.append(nn.Linear(hidden_size, 1))
        self.mlp = nn.Sequential(*layers)
        # log of the moving average of E_marginal[e^f] and how many updates it has seen (for xi="ema"); saved with the
        # weights so that a resumed run continues the same average.
        self.register_buffer("log_ema", torch.zeros(()))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    def forward(
        self, features: torch.Tensor, latent: torch.Tensor, permutation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features (`torch.Tensor` of shape `(batch_size, feature_size)`): the critic's view of x.
            latent (`torch.Tensor` of shape `(batch_size, latent_size)`): z, one per example.
            permutation (`torch.LongTensor` of shape `(batch_size,)`): a derangement making the marginal pairs.

        Returns:
            joint and marginal scores, each of shape `(batch_size,)`.
        """
        dtype = self.feature_proj.weight.dtype
        x = self.feature_proj(self.feature_norm(features.to(dtype)))
        z = self.latent_proj(latent.to(dtype))
        joint = self.mlp(x + z).squeeze(-1)
        marginal = self.mlp(x + z[permutation]).squeeze(-1)
        if self.score_bound is not None:  # c tanh(f / c): the bound's estimate stays below 2c (see MineVaeConfig)
            joint = self.score_bound * torch.tanh(joint / self.score_bound)
            marginal = self.score_bound * torch.tanh(marginal / self.score_bound)
        return joint, marginal

    def lower_bound(self, joint_scores: torch.Tensor, marginal_scores: torch.Tensor) -> torch.Tensor:
        return mi_lower_bound(joint_scores, marginal_scores, self.xi, self.log_ema)

    @torch.no_grad()
    def update_moving_average(self, marginal_scores: torch.Tensor) -> None:
        """Fold this batch's E_marginal[e^f] into the moving average (only the critic's own step calls this)."""
        if self.xi != "ema":
            return
        current = log_mean_exp(marginal_scores.detach().float())
        decayed = torch.logaddexp(self.log_ema + math.log(self.ema_decay), current + math.log1p(-self.ema_decay))
        # The first batch starts the average (MINE's initialisation); torch.where avoids a device sync.
        self.log_ema.copy_(torch.where(self.ema_updates == 0, current, decayed))
        self.ema_updates.add_(1)

    @torch.no_grad()
    def reset_moving_average(self) -> None:
        """Start the moving average of E_marginal[e^f] afresh (a new critic's state)."""
        self.log_ema.zero_()
        self.ema_updates.zero_()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Hold the critic's parameters fixed for the block: no gradient reaches them, and an optimizer built inside
        (the VAE's) does not see them. Their gradients are switched off for the block rather than the critic run on
        detached copies (torch.func.functional_call): DeepSpeed ZeRO-3 gathers a module's partitioned parameters in
        hooks on the module, and a copy is not a parameter it knows."""
        parameters = list(self.parameters())
        trainable = [p.requires_grad for p in parameters]
        try:
            for p in parameters:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in zip(parameters, trainable):
                p.requires_grad_(flag)

    @torch.no_grad()
    def sync_gradients(self) -> None:
        """Average the critic's gradients (and moving average) over processes: distributed wrappers (DDP, FSDP) leave
        the critic to its own step, which calls this before each update. Does nothing in a single process."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [self.log_ema.reshape(1)])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for grad, chunk in zip(grads, flat[:-1].split([g.numel() for g in grads])):
            grad.copy_(chunk.view_as(grad))
        self.log_ema.copy_(flat[-1])

    @torch.no_grad()
    def standardize_latent(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Take z' = (z - mean) / std in place of z, scoring every pair as before (see
        `MineVaeModel.standardize_latent`). z's projection has no bias, and it is added to x's before the MLP, so z's
        shift W mean goes into x's bias."""
        weight = self.latent_proj.weight.double()
        bias = self.feature_proj.bias
        bias.copy_((bias.double() + weight @ mean.double()).to(bias.dtype))
        self.latent_proj.weight.copy_((weight * std.double()[None, :]).to(self.latent_proj.weight.dtype))
