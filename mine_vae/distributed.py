"""What MineVaeTrainer needs under sharded training (FSDP2, DeepSpeed ZeRO), whose wrappers would otherwise shard or
train the critic, which takes its own steps outside the model's forward and backward with its own optimizer."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from .checkpointing import CRITIC_WEIGHTS, read_checkpoint_file, unreadable


def leave_critic_unsharded(plugin: Any, model: nn.Module, device: torch.device) -> None:
    """Keep FSDP off the critic, as DDP is kept off it (`_ddp_params_and_buffers_to_ignore`). The critic takes its
    steps outside the model's forward and backward, with its own optimizer: sharded, its weights would be DTensors
    gathered only by the hooks of the root's forward, its gradients never reduced, and an optimizer built before
    sharding would hold tensors the critic no longer uses. It is small, so every process keeps all of it and the
    critic step averages its gradients (`MineCritic.sync_gradients`). FSDP moves only what it shards: the critic goes
    to the device here."""
    critic = model.critic
    ignored = plugin.ignored_modules
    if isinstance(ignored, str):  # a regular expression over module names, as accelerate reads it from its config
        pattern = re.compile(ignored)
        ignored = [module.to(device) for name, module in model.named_modules() if pattern.fullmatch(name)]
    ignored = list(ignored or [])
    if not any(module is critic for module in ignored):
        ignored.append(critic)
    plugin.ignored_modules = ignored
    critic.to(device)


def freeze_unused_pooler(model: nn.Module) -> None:
    """The encoder's pooler is used only with `pooling="pooler"`; otherwise it never gets a gradient, so the optimizer
    never makes a state for it, and loading FSDP2's optimizer checkpoint (torch's `set_optimizer_state_dict`) fails
    on a trainable parameter without state. Frozen, it trains exactly as before (AdamW skips parameters without a
    gradient) and the checkpoint resumes. Only under FSDP: elsewhere the optimizer's layout stays that of earlier
    checkpoints."""
    pooler = getattr(model.encoder, "pooler", None)
    if model.config.pooling != "pooler" and isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)


def check_deepspeed_config(config: Mapping[str, Any]) -> None:
    """DeepSpeed builds the optimizer of an "optimizer" block over every trainable parameter, the critic's included,
    where MineVaeTrainer's own VAE optimizer leaves the critic to the critic's optimizer."""
    if "optimizer" in config:
        raise ValueError(
            'The DeepSpeed config has an "optimizer" block, which would make DeepSpeed also train the critic with the '
            "VAE loss; remove it and choose the optimizer with the training arguments (optim, learning_rate, "
            'weight_decay, adam_beta1, adam_beta2), which the config\'s "auto" values take.'
        )


def whole_parameters(module: nn.Module) -> AbstractContextManager:
    """DeepSpeed ZeRO-3 keeps each process's slice of a weight and gathers the whole tensor only within a module's
    forward and backward; the critic's optimizer steps outside both, so it steps on the gathered weights, whose
    result ZeRO-3 slices again on leaving (from process 0: every process computes the same update from the averaged
    gradients). Other parameters are left as they are."""
    partitioned = _zero3_partitioned(module)
    if not partitioned:
        return nullcontext()
    import deepspeed  # an optional dependency, there whenever ZeRO-3 partitioned something

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


def _zero3_partitioned(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of `module` that DeepSpeed ZeRO-3 partitions (those it gave a `ds_id`)."""
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


def release_backward_leftovers(engine: nn.Module) -> None:
    """DeepSpeed ZeRO-3 gathers a module's weights again for its backward and lets them go when the gradient of its
    inputs is computed: a module whose inputs need no gradient (the critic's, whose x view and z are detached) keeps
    them gathered until the engine's own backward ends by letting go of such leftovers. The critic's backward is not
    the engine's, so it does the same."""
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    if offload is not None:
        offload.release_backward_leftovers()


def partitioned_critic_weights(critic: nn.Module) -> dict[str, torch.Tensor] | None:
    """The critic's whole weights and buffers when ZeRO-3 partitions it (gathered on every process), else None."""
    partitioned = _zero3_partitioned(critic)
    if not partitioned:
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned):
        return {name: value.detach().cpu().contiguous() for name, value in critic.state_dict().items()}


def restore_partitioned_critic(critic: nn.Module, checkpoint: str) -> None:
    """Under ZeRO-3, put back the critic's weights and buffers from the checkpoint (see CRITIC_WEIGHTS)."""
    partitioned = _zero3_partitioned(critic)
    if not partitioned:
        return
    import deepspeed

    path = os.path.join(checkpoint, CRITIC_WEIGHTS)
    if not os.path.isfile(path):
        raise ValueError(
            f"{checkpoint} holds no {CRITIC_WEIGHTS}, which a run under DeepSpeed ZeRO-3 resumes the critic from "
            "(it was saved without ZeRO-3); resume it without ZeRO-3, or from a checkpoint saved with it."
        )
    weights = read_checkpoint_file(path, load_file)
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        try:
            critic.load_state_dict(weights)
        except RuntimeError as error:
            raise unreadable(path, error, "does not fit this model's critic") from None


@contextmanager
def as_model_class(model: nn.Module) -> Iterator[None]:
    """FSDP2 turns the model's class into one it makes (`FSDPMineVaeModel`, in torch's `_fsdp_init` module), and
    `save_pretrained` writes the class of the object it saves into the config's `auto_map` and copies the file that
    defines it (with its relative imports) for `trust_remote_code`. The model's own class is put back for the save."""
    if not dist.is_available():  # torch builds without distributed support have no FSDP
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if not issubclass(cls, FSDPModule):
        yield
        return
    model.__class__ = next(base for base in cls.__mro__ if not issubclass(base, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = cls


__all__ = [
    "as_model_class",
    "check_deepspeed_config",
    "freeze_unused_pooler",
    "leave_critic_unsharded",
    "partitioned_critic_weights",
    "release_backward_leftovers",
    "restore_partitioned_critic",
    "whole_parameters",
]
