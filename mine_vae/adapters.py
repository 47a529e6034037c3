"""peft adapters on a MINE-VAE: the plain `get_peft_model(vae, LoraConfig(target_modules=...))` idiom trains.

peft freezes every parameter that is not an adapter's. A MINE-VAE's heads (posterior, latent injection, critic) start
from random weights, so they must train whatever the adapters are on; `train_heads_with_adapters` makes them peft's
`modules_to_save`, which also puts them in the adapter's saved weights, so that `PeftModel.from_pretrained(base_vae,
folder)` restores the whole trained model. `MineVaeTrainer` calls it on every model it is given.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .modeling_mine_vae import MineVaeModel


def is_peft_model(model: nn.Module) -> bool:
    """True for a peft wrapper (`PeftModel` and its task subclasses), without importing peft."""
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def peft_base_vae(model: nn.Module) -> MineVaeModel | None:
    """The `MineVaeModel` inside a peft wrapper, or None when `model` is not a peft-wrapped MINE-VAE."""
    if not is_peft_model(model):
        return None
    inner = model.get_base_model()
    return inner if isinstance(inner, MineVaeModel) else None


def train_heads_with_adapters(model: nn.Module) -> nn.Module:
    """
    Make a peft-wrapped MINE-VAE's heads trainable and saved with each adapter (peft's `modules_to_save`), unless
    the adapter's config lists them already. Anything else is returned unchanged.

    Args:
        model: a `MineVaeModel`, or the `PeftModel` that `get_peft_model` made of one.

    Returns:
        the same model.
    """
    vae = peft_base_vae(model)
    if vae is None:
        return model
    from peft.tuners.tuners_utils import BaseTuner
    from peft.utils import set_additional_trainable_modules

    for adapter_name, config in model.peft_config.items():
        if getattr(config, "is_prompt_learning", False) or not hasattr(config, "modules_to_save"):
            continue
        listed = list(config.modules_to_save or [])
        missing = [name for name in vae.head_names if name not in listed]
        if not missing:
            continue
        config.modules_to_save = listed + missing
        set_additional_trainable_modules(
            model=model.base_model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(model),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in _active_adapters(model),
        )
    return model


def _active_adapters(model: Any) -> list[str]:
    active = model.active_adapters if hasattr(model, "active_adapters") else model.active_adapter
    return [active] if isinstance(active, str) else list(active)


__all__ = ["is_peft_model", "peft_base_vae", "train_heads_with_adapters"]
