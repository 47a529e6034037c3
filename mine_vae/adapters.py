"""peft adapters on a MINE-VAE: the plain `get_peft_model(vae, LoraConfig(target_modules=...))` idiom trains.

peft freezes every parameter that is not an adapter's. A MINE-VAE's heads (posterior, latent injection, critic) start
from random weights, so they must train whatever the adapters are on; `train_heads_with_adapters` makes them peft's
`modules_to_save`, which also puts them in the adapter's saved weights, so that `PeftModel.from_pretrained(base_vae,
folder)` restores the whole trained model. `MineVaeTrainer` calls it on every model it is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.pytorch_utils import Conv1D

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
    check_peft_task_type(model)
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


def check_peft_task_type(model: nn.Module) -> None:
    """Raise a `ValueError` naming the idiom that works when a MINE-VAE was wrapped with a peft `task_type`: the task
    wrappers (`PeftModelForCausalLM`, ...) call the model as that task's model class, which fails at the first step
    (or, for classification types, adds a head the MINE-VAE has not). `MineVaeTrainer` and `add_decoder_lora` check
    through `train_heads_with_adapters`, before training."""
    for config in getattr(model, "peft_config", {}).values():
        task_type = getattr(config, "task_type", None)
        if task_type is not None:
            raise ValueError(
                f"A MINE-VAE wrapped with peft task_type={str(task_type)!r} ({type(model).__name__}) cannot train: "
                "the wrapper calls it as that task's model. Leave task_type unset: get_peft_model(vae, "
                f"{type(config).__name__}(target_modules=[...])), or mine_vae.adapters.add_decoder_lora(vae, r=8)."
            )


def _active_adapters(model: Any) -> list[str]:
    active = model.active_adapters if hasattr(model, "active_adapters") else model.active_adapter
    return [active] if isinstance(active, str) else list(active)


LORA_BASE_JSON = "lora_base.json"  # in a checkpoint of a peft-wrapped VAE: what its adapters were trained on


def base_record(model: nn.Module) -> dict[str, Any]:
    """
    What a checkpoint of a peft-wrapped MINE-VAE records about the model under its adapters, which it does not hold:
    the config's own settings (β, λ, ξ, the heads' shapes, ...) and a SHA-256 of every weight the adapters leave
    fixed (the base layers, and the heads' copies as they were built). A base rebuilt for a resume must match both.
    """
    vae = peft_base_vae(model)
    if vae is None:
        raise ValueError("base_record needs a peft-wrapped MineVaeModel.")
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if "lora_" in name or ".modules_to_save." in name:  # what trains (and what the checkpoint holds)
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    # The config's own settings; the sub-configs are left to the weights' hash (their paths differ between machines).
    own = type(vae.config).__dataclass_fields__.keys() - PreTrainedConfig.__dataclass_fields__.keys()
    own -= {"encoder", "decoder", "use_cache"}
    settings = {key: value for key, value in vae.config.to_dict().items() if key in own}
    settings = json.loads(json.dumps(settings))  # as it reads back from the JSON file
    return {"config": settings, "base_sha256": digest.hexdigest()}


def write_base_record(model: nn.Module, folder: str) -> None:
    """Write `base_record(model)` to `folder/lora_base.json` (JSON, like everything training writes)."""
    with open(os.path.join(folder, LORA_BASE_JSON), "w", encoding="utf-8") as f:
        json.dump(base_record(model), f, indent=2, sort_keys=True)


def base_mismatch(model: nn.Module, folder: str) -> str | None:
    """What differs between the peft-wrapped `model`'s base and the one whose record `folder` holds; None when they
    match, or when `folder` holds no record (a checkpoint written by another trainer)."""
    path = os.path.join(folder, LORA_BASE_JSON)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    now = base_record(model)
    keys = sorted(saved["config"].keys() | now["config"].keys())
    changed = [f"{key} {saved['config'].get(key)!r} -> {now['config'].get(key)!r}" for key in keys
               if saved["config"].get(key) != now["config"].get(key)]  # fmt: skip
    if changed:
        return f"its settings differ from the run's ({'; '.join(changed)})"
    if saved["base_sha256"] != now["base_sha256"]:
        return "its weights differ from the run's base (another seed, corpus, tokenizer or pretrained model)"
    return None


def check_adapter_base(
    model: nn.Module, folder: str, fix: str = "build the model as the run did (its settings, seed and data)"
) -> None:
    """A ValueError naming what differs (and `fix`) when the adapters in `folder` were trained on another base than
    the peft-wrapped `model`'s (see `base_mismatch`)."""
    mismatch = base_mismatch(model, folder)
    if mismatch:
        raise ValueError(f"The adapters in {folder} were trained on another base model: {mismatch}; {fix}.")


# The attention blocks of the decoder families (GPT-2's `attn`, Llama's and most others' `self_attn`): their projections
# are what LoRA adapts by default, the choice of the LoRA paper and of Optimus-style fine-tuning on a budget.
ATTENTION_BLOCKS = ("attn", "self_attn", "attention")


def decoder_lora_targets(model: MineVaeModel, module_names: Sequence[str] | None = None) -> list[str]:
    """
    The full names of the decoder's modules that LoRA adapts: those whose own name is in `module_names`, or (None)
    every linear projection of the decoder's attention blocks. The encoder and the heads are never matched, nor is an
    LM head tied to the input embeddings (merging an update into it would change the embeddings too).

    Raises:
        ValueError: when a name in `module_names` matches nothing, or nothing matches at all (naming the decoder's
            linear layers to choose from).
    """
    linear = (nn.Linear, Conv1D)
    embedding = model.decoder.get_input_embeddings().weight
    found, names = [], set()
    for name, module in model.decoder.named_modules():
        if not isinstance(module, linear) or module.weight is embedding:
            continue
        parts = name.split(".")
        names.add(parts[-1])
        if (parts[-1] in module_names) if module_names else (len(parts) > 1 and parts[-2] in ATTENTION_BLOCKS):
            found.append(f"decoder.{name}")
    unknown = [name for name in module_names or () if name not in names]
    if unknown or not found:
        wanted = f"modules named {', '.join(unknown)}" if unknown else "attention projections"
        raise ValueError(
            f"The decoder has no {wanted} for LoRA; choose among its linear layers: {', '.join(sorted(names))}."
        )
    return found


def add_decoder_lora(
    model: MineVaeModel,
    r: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    module_names: Sequence[str] | None = None,
) -> nn.Module:
    """
    Wrap a MINE-VAE in peft LoRA adapters of rank `r` on its decoder (`decoder_lora_targets`), with its heads and
    critic trainable and saved with the adapter (`train_heads_with_adapters`). Every other weight is frozen.

    Args:
        model: the `MineVaeModel` to adapt.
        r: the adapters' rank.
        alpha: LoRA's scale numerator (the update is scaled by alpha / r); None: 2r.
        dropout: dropout on the adapters' input.
        module_names: names of the decoder's modules to adapt; None: its attention projections.

    Returns:
        the `PeftModel`; `merged_vae` turns it back into a plain `MineVaeModel`.
    """
    from peft import LoraConfig, get_peft_model

    targets = decoder_lora_targets(model, module_names)
    lora_config = LoraConfig(
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores its weight transposed (in x out), which LoRA must know to merge.
        fan_in_fan_out=isinstance(model.get_submodule(targets[0]), Conv1D),
    )
    with peft_deprecations_silenced():
        return train_heads_with_adapters(get_peft_model(model, lora_config))


@contextlib.contextmanager
def peft_deprecations_silenced() -> Iterator[None]:
    """peft asks the model for `is_gradient_checkpointing`, which transformers deprecates with a FutureWarning the
    user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def merged_vae(model: nn.Module) -> nn.Module:
    """A peft-wrapped MINE-VAE as a plain `MineVaeModel`: LoRA updates merged into the decoder's weights and the
    trained heads in their places, so that it saves, loads and generates without peft. Anything else is returned
    unchanged."""
    if peft_base_vae(model) is None:
        return model
    return model.merge_and_unload()


__all__ = [
    "LORA_BASE_JSON",
    "add_decoder_lora",
    "base_mismatch",
    "check_peft_task_type",
    "base_record",
    "check_adapter_base",
    "decoder_lora_targets",
    "is_peft_model",
    "merged_vae",
    "peft_base_vae",
    "peft_deprecations_silenced",
    "train_heads_with_adapters",
    "write_base_record",
]
