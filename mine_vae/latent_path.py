"""z's way into the decoder: the heads that read z (key/value positions, embedding shift, vocabulary bias, residual
shifts), their injection into the decoder's run, and the cache layer that carries z's key/value positions.

This file also loads as remote code (`trust_remote_code=True`, copied with `modeling_mine_vae.py`): it imports only
installed libraries.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput


class LatentPath:
    """
    The latent path of a [`MineVaeModel`]: builds the heads its config asks for and conditions the decoder on z.

    The heads are the model's own attributes (`latent_to_key`, `latent_to_value`, `latent_to_embedding`,
    `latent_to_vocab`, `latent_to_residual`), not this object's: their weights keep the names every saved MINE-VAE
    has, and they stay among `model.head_names` (trained whatever is frozen, peft's `modules_to_save`). They are read
    from the model at each call, because peft's wrappers and `resize_token_embeddings` replace them.

    Args:
        model (`MineVaeModel`): the model, its decoder built; the heads are added to it here.
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model
        config, decoder = model.config, model.decoder
        latent_size, decoder_hidden = config.latent_size, config.decoder.hidden_size
        if config.injects_memory:
            num_layers, num_kv_heads, head_dim = _decoder_kv_geometry(decoder)
            positions = config.latent_memory_positions
            self.kv_shape = (num_kv_heads, positions, head_dim)
            model.latent_to_key = nn.Linear(latent_size, num_layers * num_kv_heads * positions * head_dim)
            model.latent_to_value = nn.Linear(latent_size, num_layers * num_kv_heads * positions * head_dim)
        if config.injects_embedding:
            model.latent_to_embedding = nn.Linear(latent_size, decoder_hidden)
        if config.latent_vocab_bias:
            # out_features, not weight.shape: DeepSpeed ZeRO-3 partitions the weight to 0 rows
            vocab_size = decoder.get_output_embeddings().out_features
            model.latent_to_vocab = nn.Linear(latent_size, vocab_size)
        self.residual_layers: list[nn.Module] = []
        if config.latent_residual_layers:
            layers = decoder_layers(decoder)
            model.latent_to_residual = nn.ModuleList(
                nn.Linear(latent_size, decoder_hidden) for _ in config.latent_residual_layers
            )
            # The hooked layers, found once: generation calls `set_residual_shifts` at every step.
            self.residual_layers = [layers[index] for index in config.latent_residual_layers]
            for layer in self.residual_layers:
                layer.register_forward_hook(_add_latent_residual)

    def heads(self) -> list[nn.Linear]:
        """Every layer that reads z, as the model holds it now."""
        names = ("latent_to_key", "latent_to_value", "latent_to_embedding", "latent_to_vocab")
        layers = [getattr(self.model, name) for name in names if hasattr(self.model, name)]
        return layers + list(getattr(self.model, "latent_to_residual", []))

    def starts_at_zero(self, module: nn.Module) -> bool:
        """Whether `module` is a head that starts at zero, so that the decoder starts as it was: see
        `MineVaeConfig.latent_injection`, `latent_vocab_bias` and `latent_residual_layers`."""
        residual = getattr(self.model, "latent_to_residual", None)
        embedding_only = self.model.config.latent_injection == "embedding"
        return (
            module is getattr(self.model, "latent_to_vocab", None)
            or (embedding_only and module is getattr(self.model, "latent_to_embedding", None))
            or (residual is not None and any(module is layer for layer in residual))
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Conditioning the decoder
    # ----------------------------------------------------------------------------------------------------------------
    def decode(
        self,
        latent: torch.Tensor,
        decoder_input_ids: torch.LongTensor,
        decoder_attention_mask: torch.Tensor | None,
        cache: Cache | None,
        use_cache: bool,
        **decoder_kwargs,
    ) -> ModelOutput:
        """Run the decoder on `decoder_input_ids` conditioned on `latent`; returns the decoder's own output."""
        model, config = self.model, self.model.config
        # is_activation_checkpointing walks every module: test it last, so that generation steps (eval mode, no grad)
        # never pay for it.
        if use_cache and model.training and torch.is_grad_enabled() and model.is_activation_checkpointing:
            use_cache = False  # as transformers' checkpointed layers do: a stored cache would be written twice
        embeddings = model.decoder.get_input_embeddings()(decoder_input_ids)
        if config.injects_memory:
            if cache is None or int(cache.get_seq_length()) == 0:
                cache = self.cache(latent, cache, store=use_cache or cache is not None, dtype=embeddings.dtype)
            decoder_attention_mask = _with_latent_columns(
                decoder_attention_mask,
                int(cache.get_seq_length()) + decoder_input_ids.shape[1],
                config.latent_memory_positions,
            )
        if config.injects_embedding:
            shift = model.latent_to_embedding(latent.to(model.latent_to_embedding.weight.dtype))
            embeddings = embeddings + shift.to(embeddings.dtype).unsqueeze(1)
        self.set_residual_shifts(latent)
        try:
            outputs = model.decoder(
                inputs_embeds=embeddings,
                attention_mask=decoder_attention_mask,
                cache=cache,
                use_cache=use_cache,
                return_dict=True,
                **decoder_kwargs,
            )
        finally:
            # Checkpointed layers run again in the backward pass and must see the same shifts then; otherwise the
            # decoder is left as it was, so that a call to the bare decoder adds nothing.
            if not (model.training and torch.is_grad_enabled() and model.is_activation_checkpointing):
                self.set_residual_shifts(None)
        if config.latent_vocab_bias:
            bias = model.latent_to_vocab(latent.to(model.latent_to_vocab.weight.dtype))
            outputs.logits = outputs.logits + bias.to(outputs.logits.dtype).unsqueeze(1)
        return outputs

    def cache(self, latent: torch.Tensor, cache: Cache | None, store: bool, dtype: torch.dtype | None = None) -> Cache:
        """z's key/value positions in every decoder layer, as a cache: written into `cache` (or a new `DynamicCache`)
        when the decoder's keys and values are to be kept (`store`, generation), else a `LatentPrefixLayer` stack that
        keeps nothing (training and scoring: no cache to build, and safe under activation checkpointing). `dtype` is
        the decoder's compute dtype (default: its embedding weights'; under mixed precision the token embeddings'
        output dtype, which the decoder's keys and values will have)."""
        model = self.model
        dtype = dtype or model.decoder.get_input_embeddings().weight.dtype
        batch_size = latent.shape[0]
        keys = model.latent_to_key(latent.to(model.latent_to_key.weight.dtype)).to(dtype)
        values = model.latent_to_value(latent.to(model.latent_to_value.weight.dtype)).to(dtype)
        keys = keys.view(batch_size, -1, *self.kv_shape).unbind(1)
        values = values.view(batch_size, -1, *self.kv_shape).unbind(1)
        if not store:
            return Cache(layers=[LatentPrefixLayer(key, value) for key, value in zip(keys, values)])
        if cache is None:
            cache = DynamicCache(config=model.config.decoder)
        for layer_idx, (key, value) in enumerate(zip(keys, values)):
            cache.update(key, value, layer_idx)
        return cache

    def set_residual_shifts(self, latent: torch.Tensor | None) -> None:
        """Hand each layer of `config.latent_residual_layers` its shift (batch_size, hidden_size) computed from
        `latent`, or take the shifts away (None); `_add_latent_residual` adds them to the layers' outputs."""
        if not self.residual_layers:
            return
        scale = self.model.config.latent_residual_scale
        for layer, projection in zip(self.residual_layers, self.model.latent_to_residual):
            shift = None if latent is None else scale * projection(latent.to(projection.weight.dtype))
            layer._mine_vae_residual = shift

    # ----------------------------------------------------------------------------------------------------------------
    # What the model's other operations ask of the heads
    # ----------------------------------------------------------------------------------------------------------------
    def check_checkpointing(self, reentrant: bool) -> None:
        """Refuse reentrant activation checkpointing where z reaches the layers inside the cache."""
        config = self.model.config
        if config.injects_memory and reentrant:
            # Reentrant checkpointing differentiates only through tensors passed to a layer as arguments; z's
            # key/value position reaches the layer inside the cache object, so its gradient would be lost.
            raise ValueError(
                f"Reentrant activation checkpointing cannot carry z's gradient with latent_injection="
                f"'{config.latent_injection}' (z reaches each layer inside the cache); drop use_reentrant=True "
                "(transformers' default, use_reentrant=False, works) or use latent_injection='embedding'."
            )

    def keep_cache_under_checkpointing(self) -> None:
        """After activation checkpointing is enabled: let the checkpointed layers see z's key/value positions."""
        if not self.model.config.injects_memory:
            return
        # z's key/value position reaches each layer through the cache, which checkpointing drops unless told it may
        # keep it. It may: without use_cache the cache is a `LatentPrefixLayer` stack, which stores nothing, so the
        # backward pass's re-run of a layer sees exactly the keys and values the first run saw. The layers are told
        # through their `_can_checkpoint_with_cache`; the decoder's outer modules (GPT-2's GPT2Model) drop the cache
        # when their own `gradient_checkpointing` flag is set, a flag that does no checkpointing itself (the layers
        # do), so it is cleared.
        for module in self.model.decoder.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module._can_checkpoint_with_cache = True
            elif getattr(module, "gradient_checkpointing", False):
                module.gradient_checkpointing = False

    def check_resizable(self) -> None:
        """Refuse a vocabulary resize that z's vocabulary bias could not follow; called before the decoder changes,
        so that the model is left as it was."""
        if self.model.config.latent_vocab_bias and not isinstance(self.model.latent_to_vocab, nn.Linear):
            # peft's wrapper (the heads are its modules_to_save): a resized Linear would drop out of the adapter.
            raise ValueError(
                "z's vocabulary bias is wrapped by peft, which a resized copy would drop out of; call "
                "resize_token_embeddings on the MineVaeModel before get_peft_model."
            )

    def resize_vocab_bias(self, num_tokens: int) -> None:
        """Give z's vocabulary bias one row per token again: kept rows keep their values, new tokens start at zero
        (as the whole bias does)."""
        if self.model.config.latent_vocab_bias:
            self.model.latent_to_vocab = resized_rows(self.model.latent_to_vocab, num_tokens)

    @torch.no_grad()
    def standardize(self, mean: torch.Tensor, std: torch.Tensor, others: list[nn.Linear] | None = None) -> None:
        """Fold z = std * z' + mean into every head, and into the linear layers `others` that also read z (the
        bag-of-words head), in place: W z + b = (W diag(std)) z' + (b + W mean). `mean` and `std` are float64 of
        shape `(latent_size,)` (see `MineVaeModel.standardize_latent`)."""
        for layer in self.heads() + list(others or []):
            weight = layer.weight.double()
            layer.bias.copy_((layer.bias.double() + weight @ mean).to(layer.bias.dtype))
            layer.weight.copy_((weight * std[None, :]).to(layer.weight.dtype))


class LatentPrefixLayer(DynamicLayer):
    """
    One decoder layer's cache entry holding only z's key/value positions: `update` returns it joined to the keys and
    values of the call and stores nothing. Calling a layer twice with the same inputs (activation checkpointing's
    re-run in the backward pass) therefore sees the same keys and values both times.

    Args:
        key, value (`torch.Tensor` of shape `(batch_size, num_kv_heads, latent_memory_positions, head_dim)`): z's
            projections.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        super().__init__()
        self.lazy_initialization(key, value)
        self.keys, self.values = key, value

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _with_latent_columns(mask: torch.Tensor | None, key_length: int, positions: int) -> torch.Tensor | None:
    """A 2D decoder mask covering every key position, z's `positions` included (the first). Callers give the mask over
    the decoder's tokens (cached and new), as `forward` documents; `generate` gives it with z's columns already in, so
    that the 4D masks it builds for static caches line up with the cache. 4D masks are built whole and pass
    unchanged."""
    if mask is None or mask.ndim != 2 or mask.shape[1] == key_length:
        return mask
    if mask.shape[1] != key_length - positions:
        raise ValueError(
            f"decoder_attention_mask covers {mask.shape[1]} positions, but the decoder attends to "
            f"{key_length - positions} tokens (cached and new) plus z's {positions}: give one mask column per decoder "
            "token."
        )
    return torch.cat([mask.new_ones(mask.shape[0], positions), mask], dim=1)


def resized_rows(old: nn.Linear, num_tokens: int) -> nn.Linear:
    """`old` with `num_tokens` output rows (one per decoder token): kept rows keep their values, new rows start at
    zero (a new token gets no logit from z). `old` itself when it already has that many."""
    if old.out_features == num_tokens:
        return old
    new = nn.Linear(old.in_features, num_tokens, device=old.weight.device, dtype=old.weight.dtype)
    kept = min(num_tokens, old.out_features)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.weight[:kept] = old.weight[:kept]
        new.bias[:kept] = old.bias[:kept]
    new.weight.requires_grad_(old.weight.requires_grad)
    new.bias.requires_grad_(old.bias.requires_grad)
    return new


def decoder_layers(decoder: PreTrainedModel, needed_by: str = "latent_residual_layers") -> nn.ModuleList:
    """The decoder's stack of transformer layers (Llama's `model.layers`, GPT-2's `transformer.h`, ...): the
    ModuleList holding one module per hidden layer. `needed_by` names the setting the error blames."""
    count = decoder.config.num_hidden_layers
    for module in decoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(
        f"Could not find the {count} transformer layers of the decoder {type(decoder).__name__}, which "
        f"{needed_by} needs; leave {needed_by} unset for this decoder."
    )


def _add_latent_residual(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook on a decoder layer: add the shift `LatentPath.set_residual_shifts` gave the layer (one vector per
    sequence, the same at every position) to its hidden states."""
    shift = getattr(module, "_mine_vae_residual", None)
    if shift is None:
        return output
    hidden = output[0] if isinstance(output, tuple) else output
    hidden = hidden + shift.to(hidden.dtype).unsqueeze(1)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _decoder_kv_geometry(decoder: PreTrainedModel) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder that can take a key/value prefix; a clear error otherwise."""
    config = decoder.config
    name = type(decoder).__name__
    if "cache" not in inspect.signature(decoder.forward).parameters:
        raise ValueError(
            f"The decoder {name}'s forward() has no `cache` argument (looked for `cache`, the name transformers "
            f">= 5.24 gives the decoder cache; transformers {transformers.__version__} is installed), so it cannot "
            "take z's key/value position, which latent_injection='memory' and 'both' need. Use a decoder that "
            "takes a cache (any causal LM of transformers' own), or latent_injection='embedding'."
        )
    num_heads = getattr(config, "num_attention_heads", None)
    why = (
        "it has no num_attention_heads"
        if num_heads is None
        else "it is an encoder-decoder model"
        if getattr(config, "is_encoder_decoder", False)
        else "it does not use transformers' DynamicCache"
        if not decoder._supports_default_dynamic_cache()
        else "it is stateful (a recurrent cache)"
        if getattr(decoder, "_is_stateful", False)
        else None
    )
    if why is not None:
        raise ValueError(
            f"The decoder {name} cannot take a key/value prefix ({why}), which latent_injection='memory' and 'both' "
            "need; use latent_injection='embedding'."
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    return config.num_hidden_layers, num_kv_heads, head_dim


__all__ = ["LatentPath", "LatentPrefixLayer"]
