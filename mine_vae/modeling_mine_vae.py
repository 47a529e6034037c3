"""MINE-VAE: a text VAE whose encoder and decoder are pretrained transformers, with a mutual-information critic head.

This file also loads as remote code (`trust_remote_code=True`): it imports only installed libraries and its sibling
modules `configuration_mine_vae` and `critic`, relatively.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_mine_vae import MineVaeConfig
from .critic import MineCritic, derangement
from .latent_path import LatentPath

logger = logging.get_logger(__name__)

# `modules.json` of every saved folder (see `save_pretrained`): sentence-transformers chains the one module of
# `sentence_mine_vae.py`, which needs sentence-transformers (an optional extra), so this file does not import it.
SENTENCE_TRANSFORMERS_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_mine_vae.MineVaeSentenceEncoder"}
]

# peft's task wrappers (PeftModelForCausalLM, ...) call the model as the task's own model class (inputs_embeds,
# classification heads); a MINE-VAE is none of them. Its idiom is the plain wrapper, as docs/api.md shows.
PEFT_TASK_TYPE_REFUSAL = (
    "MineVaeModel.forward takes no inputs_embeds (it embeds the decoder's tokens itself and adds z): peft's "
    "task_type wrappers (task_type='CAUSAL_LM', 'SEQ_2_SEQ_LM', ...) pass them. Leave task_type unset: "
    "get_peft_model(vae, LoraConfig(target_modules=[...])), or mine_vae.adapters.add_decoder_lora(vae, r=8)."
)


@dataclass
class MineVaePosterior(ModelOutput):
    """
    The Gaussian posterior q(z|x) = N(mu, diag(exp(logvar))).

    Args:
        mu (`torch.FloatTensor` of shape `(batch_size, latent_size)`): posterior means.
        logvar (`torch.FloatTensor` of shape `(batch_size, latent_size)`): posterior log-variances.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, encoder_hidden_size)`): the pooled encoder states
            the posterior was read from; detached, they are also what the critic sees of x.
        hidden_states, attentions (`tuple(torch.FloatTensor)`, *optional*): the encoder's, when asked for with
            `output_hidden_states` / `output_attentions`.
    """

    mu: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    def sample(self, num_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps (reparameterised). Shape `(batch_size, latent_size)`, or
        `(num_samples, batch_size, latent_size)` when `num_samples` is given."""
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        eps = torch.randn(shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def kl_per_dimension(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per latent dimension, averaged over the batch: shape `(latent_size,)`."""
        kl = 0.5 * (self.mu.float().pow(2) + self.logvar.float().exp() - 1.0 - self.logvar.float())
        return kl.mean(dim=0)


@dataclass
class MineVaeOutput(ModelOutput):
    """
    Output of [`MineVaeModel.forward`].

    Args:
        loss (`torch.FloatTensor` scalar, *optional*, with `labels`):
            reconstruction_loss + kl_weight * KL (after free bits) - mi_weight * mi_lower_bound.
        logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`): decoder logits.
        reconstruction_loss (`torch.FloatTensor` scalar, *optional*): -log p(x|z), summed over the label tokens of
            each sentence and averaged over the batch (nats per sentence).
        kl (`torch.FloatTensor` scalar, *optional*): KL(q(z|x) || p(z)) per sentence, averaged over the batch.
        kl_per_dimension (`torch.FloatTensor` of shape `(latent_size,)`, *optional*): the same per latent dimension.
        mi_lower_bound (`torch.FloatTensor` scalar, *optional*): the critic's lower bound on I(x; z), in nats, with the
            critic's parameters held fixed (gradients reach the encoder through z only). Needs at least 2 examples.
        mu, logvar (`torch.FloatTensor` of shape `(batch_size, latent_size)`, *optional*): the posterior.
        z (`torch.FloatTensor` of shape `(batch_size, latent_size)`): the latent the decoder was conditioned on.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, encoder_hidden_size)`, *optional*): pooled
            encoder states (the critic's view of x, detached).
        cache (`Cache`, *optional*): the decoder's cache, the latent's key/value positions included.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`): the decoder's
            embedding output and each layer's output, each of shape `(batch_size, target_length, decoder_hidden)`.
            Named as a causal LM names them, because `generate()` drives this model as a decoder-only model.
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`): the decoder's attention
            weights per layer, `(batch_size, heads, target_length, cached_length + target_length)`; with memory
            injection the latent's key/value positions are the first keys.
        encoder_hidden_states, encoder_attentions (*optional*): the same for the encoder, when x was encoded (as
            `EncoderDecoderModel` returns them).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl: torch.FloatTensor | None = None
    kl_per_dimension: torch.FloatTensor | None = None
    mi_lower_bound: torch.FloatTensor | None = None
    mu: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None
    z: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None


def _only_heads(keys: list[str], model: nn.Module) -> bool:
    """Whether every key names a weight of one of the heads this model adds (not of the encoder or decoder)."""
    return bool(keys) and all(key.split(".")[0] in model.head_names for key in keys)


def _settings_changed_by(kwargs: dict[str, Any], config_class: type, path: str | os.PathLike) -> list[str]:
    """The MineVaeConfig settings among `from_pretrained`'s `kwargs` whose value differs from the saved config's
    (`config.json` read again; a setting it leaves out has its default there)."""
    own = config_class.__dataclass_fields__.keys() - PreTrainedConfig.__dataclass_fields__.keys()
    passed = [key for key in kwargs if key in own]
    if not passed:
        return []
    hub = ("revision", "subfolder", "cache_dir", "token", "local_files_only")
    where = {key: kwargs[key] for key in hub if key in kwargs}
    try:
        saved, _ = config_class.get_config_dict(path, **where)
    except (OSError, ValueError):
        return []
    defaults = config_class.__dataclass_fields__
    return sorted(key for key in passed if saved.get(key, defaults[key].default) != kwargs[key])


class MineVaePreTrainedModel(PreTrainedModel):
    config: MineVaeConfig
    config_class = MineVaeConfig
    base_model_prefix = "mine_vae"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # A decoding step with a static cache compiles to one graph (torch.compile fullgraph; tests/test_generation.py).
    _can_compile_fullgraph = True
    _supports_sdpa = True
    _supports_flash_attn = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args, **kwargs):
        """Like [`PreTrainedModel.from_pretrained`], but only ever reads safetensors weights: pickled weights
        (`.bin`, `.pt`) can run arbitrary code when loaded, so they are refused, and a corrupt file gets an error
        that says so. Weights that do not fit the config (missing or unexpected keys) are an error, not a warning:
        a MINE-VAE with a silently random encoder or decoder is never what was saved. With
        `output_loading_info=True` they are reported in the returned info instead, as transformers does."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("MINE-VAE models load safetensors weights only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise ValueError(
                f"The safetensors weights of {pretrained_model_name_or_path} are corrupt or incomplete ({error}); "
                "save or download the checkpoint again, or load the previous checkpoint."
            ) from error
        except OSError as error:
            if "safetensors" not in str(error):
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} has no safetensors weights. MINE-VAE never loads pickled weights "
                "(.bin/.pt can run code when unpickled); convert them in a trusted environment with "
                "`model.save_pretrained(folder)` (which writes model.safetensors)."
            ) from error
        mismatched = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"])
        # A caller who asks for the loading info (or builds from a config with its own state_dict) judges it.
        if mismatched and not wants_info and pretrained_model_name_or_path is not None:
            counts = f"{len(info['missing_keys'])} missing and {len(info['unexpected_keys'])} unexpected key(s)"
            # A setting passed here that adds or reshapes a head (latent_vocab_bias=True on a model saved without
            # it) explains a mismatch confined to the heads better than a badly saved folder does.
            changed = []
            if _only_heads(mismatched, model):
                changed = _settings_changed_by(kwargs, cls.config_class, pretrained_model_name_or_path)
            if changed:
                raise ValueError(
                    f"The weights in {pretrained_model_name_or_path} do not fit the config as changed by "
                    f"{', '.join(changed)}: {counts}, e.g. {mismatched[:3]}. Load without those arguments, or pass "
                    "output_loading_info=True to accept the new weights at their initial values."
                )
            raise ValueError(
                f"The weights in {pretrained_model_name_or_path} do not fit its config: {counts}, e.g. "
                f"{mismatched[:3]}. Save the model again with MineVaeModel.save_pretrained (an adapter folder loads "
                "with peft's PeftModel.from_pretrained(base_model, folder))."
            )
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """[`PreTrainedModel.save_pretrained`], refusing a model whose encoder or decoder is wrapped by peft (see
        `check_savable`)."""
        self.check_savable()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            # sentence-transformers reads the modules a folder chains from `modules.json`: here the one module
            # (`sentence_mine_vae.py`, copied with this file) that embeds texts as posterior means.
            with open(os.path.join(save_directory, "modules.json"), "w", encoding="utf-8") as f:
                json.dump(SENTENCE_TRANSFORMERS_MODULES, f, indent=2)

    def check_savable(self) -> None:
        """Raise a `ValueError` naming the fix when the encoder or decoder is wrapped by peft: its weights would be
        saved under the wrapper's names and load back as a random sub-model. `MineVaeTrainer` asks before training
        when checkpoints are to be saved."""
        for side in ("encoder", "decoder"):
            if hasattr(getattr(self, side, None), "peft_config"):
                raise ValueError(
                    f"The {side} is a peft model, which save_pretrained cannot store in a MINE-VAE folder. Either "
                    f"merge it first (model.{side} = model.{side}.merge_and_unload()), or wrap the whole MINE-VAE "
                    "with get_peft_model and save the adapter with its save_pretrained."
                )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "posterior", None) and module.bias is not None:
            with torch.no_grad():  # the log-variance half: see `MineVaeConfig.posterior_logvar_init`
                module.bias[self.config.latent_size :].fill_(self.config.posterior_logvar_init)
        latent_path = getattr(self, "latent_path", None)
        if latent_path is not None and latent_path.starts_at_zero(module):
            module.weight.zero_()
            module.bias.zero_()
        if isinstance(module, MineCritic):
            module.reset_moving_average()


class MineVaeModel(MineVaePreTrainedModel, GenerationMixin):
    r"""
    A text VAE with a mutual-information critic (Qian & Cheung, 2019).

    x -> encoder -> pooled h -> (mu, logvar) -> z = mu + sigma * eps -> decoder p(x|z), where z enters the decoder as
    extra key/value positions in every layer (`memory`), as a vector added to every input embedding
    (`embedding`), or both. A critic f(x, z) scores joint pairs (x_i, z_i) and marginal pairs (x_i, z_perm(i)) and
    gives a lower bound on I(x; z) that the loss rewards with weight `config.mi_weight`.

    The critic is trained by its own step (see `critic_loss` and `MineVaeTrainer`): inside `forward` its parameters are
    held fixed, so the loss's gradient reaches the encoder only through z.
    """

    # The loss is a per-sentence mean of its own terms, not a token sum to renormalise across accumulation steps.
    accepts_loss_kwargs = False

    def __init__(
        self,
        config: MineVaeConfig,
        encoder: PreTrainedModel | None = None,
        decoder: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder)
        self.decoder = decoder if decoder is not None else AutoModelForCausalLM.from_config(config.decoder)
        # The sub-models read the composite config's sections, so edits to one are seen by the other.
        self.config.encoder._attn_implementation = self.encoder.config._attn_implementation
        self.config.decoder._attn_implementation = self.decoder.config._attn_implementation
        self.encoder.config = self.config.encoder
        self.decoder.config = self.config.decoder
        if self.decoder.get_output_embeddings() is None:
            raise ValueError(
                f"The decoder {type(self.decoder).__name__} has no language-model head; give a causal LM "
                "(a model AutoModelForCausalLM can build)."
            )

        encoder_hidden = config.encoder.hidden_size
        self.posterior = nn.Linear(encoder_hidden, 2 * config.latent_size)
        self.latent_path = LatentPath(self)
        self.critic = MineCritic(
            feature_size=encoder_hidden,
            latent_size=config.latent_size,
            hidden_size=config.critic_hidden_size,
            num_layers=config.critic_num_layers,
            xi=config.xi,
            ema_decay=config.ema_decay,
            score_bound=config.critic_score_bound,
        )
        # The critic has its own optimizer and step; distributed training syncs its gradients there, not in DDP.
        self._ddp_params_and_buffers_to_ignore = [f"critic.{name}" for name, _ in self.critic.named_parameters()]
        self.generation_config.decoder_start_token_id = config.decoder_start_token_id
        self.post_init()

    # ----------------------------------------------------------------------------------------------------------------
    # Construction from two pretrained models
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str,
        decoder_pretrained_model_name_or_path: str,
        **kwargs,
    ) -> MineVaeModel:
        """
        Build a MINE-VAE from a pretrained encoder and a pretrained causal decoder (local folders or Hub ids).

        Keyword arguments prefixed `encoder_` go to the encoder's `AutoModel.from_pretrained`, those prefixed `decoder_`
        to the decoder's `AutoModelForCausalLM.from_pretrained` (e.g. `decoder_gguf_file=...`, `decoder_dtype=...`);
        the rest configure the [`MineVaeConfig`] (e.g. `latent_size=64`, `xi="dv"`). The new heads (posterior, latent
        injection, critic) start from random weights.
        """
        # Config fields that happen to start with a prefix (decoder_start_token_id) stay with the config.
        config_fields = set(MineVaeConfig.__dataclass_fields__)
        config_kwargs = {
            k: v for k, v in kwargs.items() if k in config_fields or not k.startswith(("encoder_", "decoder_"))
        }
        encoder_kwargs = {
            k[len("encoder_") :]: v for k, v in kwargs.items() if k.startswith("encoder_") and k not in config_kwargs
        }
        decoder_kwargs = {
            k[len("decoder_") :]: v for k, v in kwargs.items() if k.startswith("decoder_") and k not in config_kwargs
        }
        encoder = AutoModel.from_pretrained(encoder_pretrained_model_name_or_path, **encoder_kwargs)
        decoder = AutoModelForCausalLM.from_pretrained(decoder_pretrained_model_name_or_path, **decoder_kwargs)
        if encoder.get_output_embeddings() is not None:
            raise ValueError(
                f"{encoder_pretrained_model_name_or_path} loaded with a language-model head; give an encoder "
                "checkpoint that AutoModel loads as a base model (e.g. a BERT-family encoder)."
            )
        # Building the composite config resets the sub-configs' attention implementation; keep what each model loaded.
        attention = {"encoder": encoder.config._attn_implementation, "decoder": decoder.config._attn_implementation}
        config = MineVaeConfig(encoder=encoder.config, decoder=decoder.config, **config_kwargs)
        config._attn_implementation = {"": config._attn_implementation, **attention}
        return cls(config, encoder=encoder, decoder=decoder)

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        reentrant = (activation_checkpointing_kwargs or {}).get("use_reentrant", False)
        self.latent_path.check_checkpointing(reentrant)
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)
        self.latent_path.keep_cache_under_checkpointing()

    @property
    def head_names(self) -> list[str]:
        """The modules this model adds around the encoder and the decoder (posterior, latent injection, critic):
        they start random, so they always train, whatever is frozen or adapted."""
        return [name for name, _ in self.named_children() if name not in ("encoder", "decoder")]

    # The model's "token embeddings" are the decoder's: it reads and writes the decoder tokenizer's ids. The encoder
    # keeps its own vocabulary (reach it through `model.encoder`).
    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings: nn.Module) -> None:
        self.decoder.set_input_embeddings(new_embeddings)

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.decoder.set_output_embeddings(new_embeddings)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the decoder's vocabulary (input embeddings and LM head together, ties kept, `config.decoder.
        vocab_size` updated), e.g. after adding tokens to the decoder tokenizer; the decoder does the work, as a
        causal LM's own `resize_token_embeddings` would."""
        self.latent_path.check_resizable()
        embeddings = self.decoder.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.vocab_size = self.config.decoder.vocab_size  # as PreTrainedModel.resize_token_embeddings records it
        self.latent_path.resize_vocab_bias(self.decoder.get_output_embeddings().out_features)
        return embeddings

    # ----------------------------------------------------------------------------------------------------------------
    # The VAE's parts
    # ----------------------------------------------------------------------------------------------------------------
    def encode(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ) -> MineVaePosterior:
        """
        q(z|x) for a batch of encoder inputs.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, source_length)`): encoder token ids.
            attention_mask (`torch.Tensor` of shape `(batch_size, source_length)`, *optional*): 1 on real tokens.
            token_type_ids (`torch.LongTensor` of shape `(batch_size, source_length)`, *optional*).
            output_hidden_states, output_attentions (`bool`): also return the encoder's hidden states / attentions
                (`output_hidden_states` may be a list of layer indices).

        Returns:
            [`MineVaePosterior`] with `mu`, `logvar` of shape `(batch_size, latent_size)`.
        """
        if input_ids is None or input_ids.numel() == 0:
            raise ValueError("encode() got an empty batch: pass at least one non-empty sequence of encoder input_ids.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True}
        if token_type_ids is not None:
            encoder_kwargs["token_type_ids"] = token_type_ids
        if output_hidden_states:
            encoder_kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions:
            encoder_kwargs["output_attentions"] = True
        encoder_outputs = self.encoder(**encoder_kwargs)
        pooled = self._pool(encoder_outputs, attention_mask)
        mu, logvar = self.posterior(pooled).float().chunk(2, dim=-1)
        return MineVaePosterior(
            mu=mu,
            logvar=logvar,
            pooler_output=pooled.detach(),
            hidden_states=encoder_outputs.get("hidden_states"),
            attentions=encoder_outputs.get("attentions"),
        )

    def _pool(self, encoder_outputs: ModelOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "pooler":
            pooled = getattr(encoder_outputs, "pooler_output", None)
            if pooled is None:
                raise ValueError(
                    f"pooling='pooler' but the encoder {type(self.encoder).__name__} returns no pooler_output; "
                    "use pooling='first' or 'mean'."
                )
            return pooled
        states = encoder_outputs.last_hidden_state
        if self.config.pooling == "first":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def mi_lower_bound(
        self, pooler_output: torch.Tensor, latent: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """
        The critic's lower bound on I(x; z) with the critic's parameters held fixed: gradients flow into `latent`
        only. Needs `batch_size >= 2` (marginal pairs pair each example with another example's z).

        Args:
            pooler_output (`torch.Tensor` of shape `(batch_size, encoder_hidden_size)`): the critic's view of x.
            latent (`torch.Tensor` of shape `(batch_size, latent_size)`): z.
            generator (`torch.Generator`, *optional*, on the CPU): draws the pairing of the marginal pairs.
        """
        permutation = derangement(latent.shape[0], device=latent.device, generator=generator)
        with self.critic.frozen():  # the graph then holds no path to the critic's weights
            joint, marginal = self.critic(pooler_output.detach(), latent, permutation)
        return self.critic.lower_bound(joint, marginal)

    def critic_loss(self, pooler_output: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """
        The critic's own objective, -bound, with x's view and z detached: its gradient reaches only the critic's
        parameters. With `xi="ema"` it also updates the moving average. Needs `batch_size >= 2`.
        """
        permutation = derangement(latent.shape[0], device=latent.device)
        joint, marginal = self.critic(pooler_output.detach(), latent.detach(), permutation)
        self.critic.update_moving_average(marginal)
        return -self.critic.lower_bound(joint, marginal)

    def decoder_log_likelihood(
        self,
        decoder_input_ids: torch.LongTensor,
        labels: torch.LongTensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        log p(x) under the decoder alone, without z (no key/value positions, no shifts, no vocabulary bias): the
        baseline a text VAE must beat as a language model, on the same tokens as `log_likelihood`.

        Args:
            decoder_input_ids, labels, decoder_attention_mask (`(batch_size, target_length)`): as in `forward`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size,)`.
        """
        self.latent_path.set_residual_shifts(None)
        logits = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, use_cache=False, return_dict=True
        ).logits
        return -_token_nll(logits, labels).sum(dim=1)

    def log_likelihood(
        self,
        latent: torch.Tensor,
        decoder_input_ids: torch.LongTensor,
        labels: torch.LongTensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        log p(x|z) per example: the sum over label positions (labels != -100) of log p(token | z, previous tokens).

        Args:
            latent (`torch.Tensor` of shape `(batch_size, latent_size)`).
            decoder_input_ids, labels, decoder_attention_mask (`(batch_size, target_length)`): as in `forward`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size,)`.
        """
        self._check_decoder_length(decoder_input_ids.shape[1])
        logits = self.latent_path.decode(latent, decoder_input_ids, decoder_attention_mask, None, False).logits
        return -_token_nll(logits, labels).sum(dim=1)

    def _check_decoder_length(self, length: int) -> None:
        limit = getattr(self.config.decoder, "max_position_embeddings", None)
        prefix = self.config.num_latent_positions
        if limit is not None and length + prefix > limit:
            raise ValueError(
                f"The decoder sequence has {length} tokens (+{prefix} latent positions) but the decoder accepts "
                f"{limit} positions; truncate the text (MineVaeProcessor(max_decoder_length=...) does, with a warning)."
            )

    # ----------------------------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------------------------
    # The decoder cache's name before transformers 5.24, accepted with transformers' own FutureWarning and schedule.
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        latent: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        sample_latent: bool | None = None,
        kl_weight: float | None = None,
        mi_weight: float | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **decoder_kwargs,
    ) -> MineVaeOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, source_length)`): encoder token ids of x.
            attention_mask (`torch.Tensor` of shape `(batch_size, source_length)`, *optional*): encoder mask.
            decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*): decoder inputs,
                BOS first. Built from `labels` (shifted right, BOS prepended) when omitted; without either, the
                decoder reads its start token alone (logits of shape `(batch_size, 1, vocab_size)`: p(first token|z)).
            decoder_attention_mask (`torch.Tensor` of shape `(batch_size, target_length)`, *optional*): over the
                decoder's tokens, the cached ones first when continuing a cache; z's positions are added by the model.
            labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*): the targets aligned with
                `decoder_input_ids` (label t is the token after input t), -100 where ignored.
            latent (`torch.Tensor` of shape `(batch_size, latent_size)`, *optional*): decode from this z; the encoder,
                the KL and the MI bound are skipped.
            sample_latent (`bool`, *optional*): use a posterior sample (default in training mode) or the posterior
                mean (default in eval mode, like dropout).
            kl_weight, mi_weight (`float`, *optional*): override `config.kl_weight` / `config.mi_weight` for this
                call (the trainer's schedules use this).
            cache (`Cache`, *optional*), use_cache (`bool`, *optional*, defaults to `config.use_cache`): the decoder
                cache (the latent's key/value positions included) to continue from, and whether to return it.
            output_hidden_states, output_attentions (`bool`, *optional*, default to the config's): also return the
                decoder's (and, when x is encoded, the encoder's) hidden states / attention weights.
                `output_hidden_states` may also be a list of layer indices, as transformers' models take it.
            return_dict (`bool`, *optional*, defaults to `config.return_dict`): a [`MineVaeOutput`], or a tuple of its
                non-`None` fields in order.

        Returns:
            [`MineVaeOutput`], or a tuple with `return_dict=False`.
        """
        if "inputs_embeds" in decoder_kwargs:
            # The model builds the decoder's input embeddings itself (z is added to them); peft's task wrappers
            # (task_type="CAUSAL_LM", ...) pass inputs_embeds=None on every call.
            raise ValueError(PEFT_TASK_TYPE_REFUSAL)
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        use_cache = self.config.use_cache if use_cache is None else use_cache
        posterior = None
        if latent is None:
            if input_ids is None:
                raise ValueError("forward() needs encoder `input_ids` (to encode x) or a `latent` z to decode from.")
            posterior = self.encode(
                input_ids,
                attention_mask,
                token_type_ids,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            )
            sample = self.training if sample_latent is None else sample_latent
            latent = posterior.sample() if sample else posterior.mu
        elif latent.ndim != 2 or latent.shape[-1] != self.config.latent_size:
            raise ValueError(
                f"latent must have shape (batch_size, {self.config.latent_size}), got {tuple(latent.shape)}."
            )

        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = self._shift_right(labels)
        elif decoder_input_ids is None:
            # Every forward call decodes, as a decoder-only model's does: here the first step, from the start token.
            decoder_input_ids = self._start_tokens(latent.shape[0], latent.device)
            decoder_attention_mask = None
        beta = self.config.kl_weight if kl_weight is None else kl_weight
        lam = self.config.mi_weight if mi_weight is None else mi_weight
        kl_per_dimension = kl = bound = reconstruction = loss = None
        if posterior is not None:
            kl_per_dimension = posterior.kl_per_dimension()
            kl = kl_per_dimension.sum()
            if latent.shape[0] >= 2:
                # Keep a graph only when the bound enters the loss: a stray graph through the critic's weights
                # would be backpropagated by DDP's output hooks after the critic has stepped.
                with torch.set_grad_enabled(torch.is_grad_enabled() and lam > 0):
                    bound = self.mi_lower_bound(posterior.pooler_output, latent, generator=self._eval_pairing())

        cached = int(cache.get_seq_length()) if cache is not None else 0
        self._check_decoder_length(decoder_input_ids.shape[1] + max(cached - self.config.num_latent_positions, 0))
        if output_hidden_states:
            # True, or the indices of the layers to keep (passed as given: the decoder resolves them).
            decoder_kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions:
            decoder_kwargs["output_attentions"] = True
        decoder_outputs = self.latent_path.decode(
            latent, decoder_input_ids, decoder_attention_mask, cache, bool(use_cache), **decoder_kwargs
        )
        logits = decoder_outputs.logits

        if labels is not None:
            reconstruction = _token_nll(logits, labels).sum(dim=1).mean()
            loss = self.vae_loss(reconstruction, kl_per_dimension, bound, kl_weight=beta, mi_weight=lam)

        return MineVaeOutput(
            loss=loss,
            logits=logits,
            reconstruction_loss=reconstruction,
            kl=kl,
            kl_per_dimension=kl_per_dimension,
            mi_lower_bound=bound,
            mu=posterior.mu if posterior is not None else None,
            logvar=posterior.logvar if posterior is not None else None,
            z=latent,
            pooler_output=posterior.pooler_output if posterior is not None else None,
            cache=decoder_outputs.get("cache") if use_cache else None,
            hidden_states=decoder_outputs.get("hidden_states"),
            attentions=decoder_outputs.get("attentions"),
            encoder_hidden_states=posterior.hidden_states if posterior is not None else None,
            encoder_attentions=posterior.attentions if posterior is not None else None,
        )

    def vae_loss(
        self,
        reconstruction: torch.Tensor,
        kl_per_dimension: torch.Tensor | None = None,
        mi_lower_bound: torch.Tensor | None = None,
        kl_weight: float | None = None,
        mi_weight: float | None = None,
    ) -> torch.Tensor:
        """The VAE's objective: reconstruction + β Σ_d max(KL_d, free_bits) − λ bound, with β and λ defaulting to
        `config.kl_weight` / `config.mi_weight`. Without `kl_per_dimension` (z given, not encoded) it is the
        reconstruction alone; without a bound (fewer than 2 examples) or with λ = 0 the bound term is left out.

        `forward` and `MineVaeTrainer` both assemble the loss here. Training alternates two phases: the critic's
        updates maximise the bound with z detached (they train the critic alone), then the VAE step minimises this
        loss with the just-updated critic held fixed, so the bound's gradient reaches the encoder through z only.
        The trainer therefore scores the bound itself, after the critic's updates, and passes it in.
        """
        beta = self.config.kl_weight if kl_weight is None else kl_weight
        lam = self.config.mi_weight if mi_weight is None else mi_weight
        loss = reconstruction
        if kl_per_dimension is not None:
            loss = loss + beta * kl_per_dimension.clamp(min=self.config.free_bits).sum()
            if mi_lower_bound is not None and lam > 0:
                loss = loss - lam * mi_lower_bound
        return loss

    def _eval_pairing(self) -> torch.Generator | None:
        """In eval mode the bound's marginal pairing is drawn from a fixed seed, so evaluating the same batch twice
        gives the same value; in training a fresh pairing each step is what the estimator needs."""
        if self.training:
            return None
        return torch.Generator().manual_seed(0)

    def _start_tokens(self, batch_size: int, device: torch.device) -> torch.LongTensor:
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError("Set config.decoder_start_token_id (the decoder's BOS) to decode.")
        return torch.full((batch_size, 1), start, dtype=torch.long, device=device)

    def _shift_right(self, labels: torch.LongTensor) -> torch.LongTensor:
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError(
                "Set config.decoder_start_token_id (the decoder's BOS) to build decoder inputs from labels."
            )
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else start
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, pad)

    # The package sets this to `mine_vae.hub.push_to_hub` when it is imported (mine_vae/__init__.py): the model file
    # imports only its configuration and critic, because it also runs as remote code, where the package may be absent.
    hub_push: ClassVar[Callable[..., Any] | None] = None

    def push_to_hub(self, repo_id: str, *, processor: Any = None, **kwargs: Any) -> Any:
        """Upload in one commit: safetensors weights, config with `auto_map`, the modelling code, a MINE-VAE model
        card and, with `processor=`, both tokenizers (options: `mine_vae.hub.push_to_hub`). Without the mine-vae
        package (remote code), the weights and the processor go up as transformers pushes them."""
        push = type(self).hub_push
        if push is None:
            if processor is not None:
                processor.push_to_hub(repo_id, **kwargs)
            return super().push_to_hub(repo_id, **kwargs)
        return push(self, repo_id, processor, **kwargs)

    def pipeline(self, processor: Any = None, **kwargs: Any) -> Any:
        """The MINE-VAE pipeline (embed, reconstruct, sample, interpolate) around this model: what
        `transformers.pipeline(model=folder, trust_remote_code=True)` returns for a saved model. `processor` is the
        model's `MineVaeProcessor` (default: the tokenizers saved with the model); `kwargs` go to the pipeline
        (`device`, `batch_size`, default generation options)."""
        # A relative import here, not at the top: transformers copies (and downloads) the modules a modelling file
        # imports relatively, so the pipeline's file travels with every saved model without loading at import time.
        from .pipeline_mine_vae import MineVaePipeline

        return MineVaePipeline(model=self, processor=processor, task="feature-extraction", **kwargs)

    def sentence_transformer(self, processor: Any, **kwargs: Any) -> Any:
        """This model as a `sentence_transformers.SentenceTransformer` (posterior means as embeddings): what
        `SentenceTransformer(folder, trust_remote_code=True)` loads from a saved model. `processor` is the model's
        `MineVaeProcessor`; `kwargs` go to `SentenceTransformer` (`device`, ...)."""
        from sentence_transformers import SentenceTransformer

        # Relative, as `pipeline` above: transformers copies the module's file with every saved model.
        from .sentence_mine_vae import MineVaeSentenceEncoder

        encoder = MineVaeSentenceEncoder(self, processor.encoder_tokenizer, processor.max_encoder_length)
        return SentenceTransformer(modules=[encoder], **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Latent-space helpers
    # ----------------------------------------------------------------------------------------------------------------
    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`num_samples` draws from the prior N(0, I): shape `(num_samples, latent_size)`."""
        return torch.randn(num_samples, self.config.latent_size, generator=generator, device=self.device)

    @torch.no_grad()
    def standardize_latent(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """
        Re-express z as z' = (z - mean) / std, in place: the posterior head outputs z' and every layer that reads z
        (z's key/value, embedding and vocabulary heads, the critic) takes z' with the change folded into its weights.
        q(z|x) and p(x|z) describe the same model as before, so reconstructions do not change; the prior N(0, I) now
        sits over z', where the decoder was trained. Given the aggregate posterior's moments over training data
        (`mine_vae.evaluation.aggregate_posterior_moments`), prior samples land where posterior samples did: free bits
        let the posterior drift off the prior (a shared offset the decoder reads as "this corpus"), and a prior sample
        without that offset decodes to text the decoder never saw in training.

        Args:
            mean, std (`torch.Tensor` of shape `(latent_size,)`): the per-dimension location and scale to remove
                (`std` > 0).
        """
        size = self.config.latent_size
        if mean.shape != (size,) or std.shape != (size,):
            raise ValueError(
                f"mean and std must each have shape ({size},), got {tuple(mean.shape)} and {tuple(std.shape)}."
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("mean must be finite and std finite and > 0 in every dimension.")
        mean, std = mean.double(), std.double()

        def assign(parameter: torch.Tensor, value: torch.Tensor) -> None:
            parameter.copy_(value.to(parameter.dtype))

        # The posterior head: its first `size` outputs are the means, the rest the log-variances.
        weight, bias = self.posterior.weight, self.posterior.bias
        assign(weight[:size], weight[:size].double() / std[:, None])
        assign(bias[:size], (bias[:size].double() - mean) / std)
        assign(bias[size:], bias[size:].double() - 2 * std.log())
        self.latent_path.standardize(mean, std)  # every layer reading z
        self.critic.standardize_latent(mean, std)

    @staticmethod
    def interpolate(start: torch.Tensor, end: torch.Tensor, num_steps: int) -> torch.Tensor:
        """
        `num_steps` latents evenly spaced on the line from `start` to `end` (both of shape `(latent_size,)`, or
        `(1, latent_size)`), endpoints included: shape `(num_steps, latent_size)`.
        """
        if num_steps < 2:
            raise ValueError(f"num_steps must be at least 2 (both endpoints), got {num_steps}.")
        start, end = start.reshape(-1), end.reshape(-1)
        if start.shape != end.shape:
            raise ValueError(f"start and end latents differ in size: {tuple(start.shape)} vs {tuple(end.shape)}.")
        weights = torch.linspace(0, 1, num_steps, device=start.device, dtype=start.dtype).unsqueeze(1)
        return (1 - weights) * start + weights * end

    # ----------------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        sample_latent: bool = False,
        decoder_prompt_ids: torch.LongTensor | None = None,
        decoder_prompt_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor | ModelOutput:
        r"""
        Decode text from a latent, with every option of [`~GenerationMixin.generate`] (greedy, sampling, beam search,
        `num_return_sequences`, `max_new_tokens`, static caches, `return_dict_in_generate`, ...).

        Where z comes from:
        - encoder inputs (`input_ids`, `attention_mask`, `token_type_ids`): x is encoded and decoded from the posterior
          mean, or a posterior sample with `sample_latent=True` (reconstruction, paraphrase);
        - `latent` of shape `(batch_size, latent_size)`: interpolations (`model.interpolate`), edited codes;
        - neither: z is drawn from the prior N(0, I), one draw per returned sequence, so `num_return_sequences=n`
          gives n samples of p(x) (and `generate()` alone gives one).

        `decoder_prompt_ids` (decoder token ids, the decoder start token first) with an optional
        `decoder_prompt_attention_mask` is a decoder prefix to continue under z (guided completion); by default the
        prefix is the decoder start token alone. One prefix row is shared by every latent; otherwise there is one per
        latent. With `cache=` (a cache returned by `generate(..., return_dict_in_generate=True)` or
        `forward(use_cache=True)`) the prefix is the whole decoded text so far, and only its uncached part is run.

        A training batch's decoder inputs and targets (`decoder_input_ids`, `decoder_attention_mask`, `labels`, as
        `MineVaeProcessor` returns them) are ignored, so `generate(**processor(texts))` reconstructs the texts.

        Returns:
            `torch.LongTensor` of shape `(batch_size * num_return_sequences, prefix_length + new_tokens)`: the decoder
            prefix (by default the decoder start token, which `skip_special_tokens=True` drops) followed by the new
            tokens; a [`~generation.GenerateOutput`] with `return_dict_in_generate=True`.
        """
        if _called_from_pipeline():
            raise TypeError(
                "MineVaeModel does not run in a text-generation pipeline: the pipeline passes the decoder prompt's "
                "token ids, but generate() reads encoder input_ids (text to reconstruct) or a latent. Call "
                "model.generate(**processor(texts)) or model.generate(latent=...) instead."
            )
        _refuse_assistants(kwargs)
        token_type_ids = kwargs.pop("token_type_ids", None)
        for key in ("decoder_input_ids", "decoder_attention_mask", "labels"):
            kwargs.pop(key, None)  # the text to reconstruct is read through the encoder, not continued
        if latent is None and input_ids is not None:
            posterior = self.encode(input_ids, attention_mask, token_type_ids)
            latent = posterior.sample() if sample_latent else posterior.mu
        prompt, prompt_mask = self._generation_prefix(decoder_prompt_ids, decoder_prompt_attention_mask)
        if latent is None:
            # The prior: one draw per returned sequence, so that each is a sample of p(x), not n decodings of one z.
            copies = kwargs.pop("num_return_sequences", None) or self.generation_config.num_return_sequences or 1
            rows = (prompt.shape[0] if prompt is not None else 1) * copies
            latent = torch.randn(rows, self.config.latent_size, device=self.device)
            if prompt is not None:
                prompt, prompt_mask = prompt.repeat_interleave(copies, 0), prompt_mask.repeat_interleave(copies, 0)
            kwargs["num_return_sequences"] = 1
        if latent.ndim != 2 or latent.shape[-1] != self.config.latent_size or latent.shape[0] == 0:
            raise ValueError(
                f"latent must have shape (batch_size, {self.config.latent_size}) with batch_size >= 1, "
                f"got {tuple(latent.shape)}; sample one with model.sample_prior(n)."
            )
        if not torch.isfinite(latent).all():
            raise ValueError("latent holds NaN or infinite values; give finite latents (e.g. model.sample_prior(n)).")
        latent = latent.to(self.device)
        if prompt is None:
            prompt = self._start_tokens(latent.shape[0], self.device)
            # An explicit mask: the start token may equal the pad token (GPT-2), which generate() would mask out.
            prompt_mask = torch.ones_like(prompt)
        elif prompt.shape[0] != latent.shape[0]:
            if prompt.shape[0] == 1:
                prompt, prompt_mask = prompt.expand(latent.shape[0], -1), prompt_mask.expand(latent.shape[0], -1)
            elif latent.shape[0] == 1:
                latent = latent.expand(prompt.shape[0], -1)
            else:
                raise ValueError(
                    f"decoder_prompt_ids has {prompt.shape[0]} rows but there are {latent.shape[0]} latents: give "
                    "one prefix row per latent, or one row for all."
                )
        self._check_cache_is_shorter_than_prefix(kwargs.get("cache"), prompt.shape[1])
        if self.config.injects_memory:
            # The mask generate() carries covers z's key/value positions too (the first): generate() then builds the
            # masks and positions of every cache type, static ones included, over what the cache really holds.
            latent_columns = prompt_mask.new_ones(prompt_mask.shape[0], self.config.latent_memory_positions)
            prompt_mask = torch.cat([latent_columns, prompt_mask], dim=1)
        return super().generate(prompt, attention_mask=prompt_mask, latent=latent, **kwargs)

    def _check_cache_is_shorter_than_prefix(self, cache: Cache | None, prefix_length: int) -> None:
        """A cache continues the decoding it came from: the prefix is that text, and at least its last token is new.
        A shorter prefix would leave no token to run (transformers then fails reshaping an empty tensor) or silently
        continue from the wrong place."""
        if cache is None:
            return
        cached = int(cache.get_seq_length()) - self.config.num_latent_positions
        if cached >= prefix_length:
            raise ValueError(
                f"The cache holds {cached} decoder tokens but the decoder prefix has {prefix_length}: pass the whole "
                "text decoded so far as decoder_prompt_ids (generate(..., return_dict_in_generate=True).sequences, "
                "whose last token the cache has not run yet) together with its cache."
            )

    def _generation_prefix(
        self, prompt_ids: torch.LongTensor | None, prompt_mask: torch.Tensor | None
    ) -> tuple[torch.LongTensor | None, torch.Tensor | None]:
        """The decoder prefix given to `generate`, checked, on the model's device, with a mask."""
        if prompt_ids is None:
            if prompt_mask is not None:
                raise ValueError("decoder_prompt_attention_mask was given without decoder_prompt_ids.")
            return None, None
        if prompt_ids.ndim != 2 or prompt_ids.shape[0] == 0 or prompt_ids.shape[1] == 0:
            raise ValueError(
                "decoder_prompt_ids must have shape (batch_size, length) with both at least 1 (the decoder start "
                f"token first), got {tuple(prompt_ids.shape)}."
            )
        if prompt_mask is None:
            return prompt_ids.to(self.device), torch.ones_like(prompt_ids, device=self.device)
        if prompt_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"decoder_prompt_attention_mask has shape {tuple(prompt_mask.shape)}, decoder_prompt_ids "
                f"{tuple(prompt_ids.shape)}: give one mask value per prefix token."
            )
        return prompt_ids.to(self.device), prompt_mask.to(self.device)

    def _prepare_cache_for_generation(
        self,
        generation_config: GenerationConfig,
        model_kwargs: dict,
        generation_mode: Any,
        batch_size: int,
        max_cache_length: int,
    ) -> Any:
        # z's key/value positions take slots of a fixed-size (static) cache ahead of the decoder's tokens.
        return super()._prepare_cache_for_generation(
            generation_config,
            model_kwargs,
            generation_mode,
            batch_size,
            max_cache_length + self.config.num_latent_positions,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        latent: torch.Tensor | None = None,
        **kwargs,
    ) -> dict:
        if self.config.injects_memory and cache is not None and latent is not None:
            if int(cache.get_seq_length()) == 0:
                # z goes into the cache before the first step's mask is built, so that mask (4D for static caches)
                # and the positions count z's key/value positions, as the cache holds them.
                self.latent_path.cache(latent, cache, store=True)
            # The cache holds z and the decoder tokens run so far; the rest of `input_ids` is this step's input.
            cached_tokens = int(cache.get_seq_length()) - self.config.latent_memory_positions
            next_sequence_length = input_ids.shape[1] - cached_tokens
        inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, latent=latent, **kwargs
        )
        # GenerationMixin's `input_ids`/`attention_mask` are the decoder's: rename them to this model's decoder inputs.
        inputs["decoder_input_ids"] = inputs.pop("input_ids")
        inputs["decoder_attention_mask"] = inputs.pop("attention_mask", None)
        return inputs


# GenerationMixin.prepare_inputs_for_generation reads forward's signature at every decoding step of a model registered
# for the auto classes (a check for a `cache_position` argument), and inspect.signature through forward's two decorators
# costs as much Python as the rest of the step's bookkeeping. The signature never changes: compute it once.
MineVaeModel.forward.__signature__ = inspect.signature(MineVaeModel.forward)


def _token_nll(logits: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
    """Per-token negative log-likelihood in float32, 0 where labels are -100: shape `(batch_size, target_length)`."""
    # Rows of (batch * length, vocab): cross_entropy over a transposed (batch, vocab, length) view is ~5x slower on CPU.
    flat = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    )
    return flat.view(labels.shape)


def _refuse_assistants(generate_kwargs: dict[str, Any]) -> None:
    """Assisted decoding with a second model is refused in one line: the assistant drafts from the decoder's tokens
    alone (a plain decoder has no z; a MINE-VAE's `generate` reads `input_ids` as text to encode), and its cache
    bookkeeping does not count z's positions. Prompt lookup (`prompt_lookup_num_tokens`) drafts from the prefix
    itself and works."""
    for key in ("assistant_model", "assistant_early_exit"):
        if generate_kwargs.get(key) is not None:
            raise ValueError(
                f"MINE-VAE's generate() does not take {key}: a draft model would decode without z. Generate without "
                "it, or use prompt_lookup_num_tokens=n (assisted decoding that drafts from the prefix, no second "
                "model)."
            )


def _called_from_pipeline() -> bool:
    """True when the caller of `generate` is a transformers pipeline (which would pass decoder prompt ids)."""
    base = sys.modules.get("transformers.pipelines.base")  # only loaded once a pipeline exists
    if base is None:
        return False
    frame = sys._getframe(2)  # generate's caller, or the no_grad wrapper around generate
    for _ in range(3):  # a few frames up: wrappers (no_grad, peft) may stand between the pipeline and generate
        if frame is None:
            return False
        caller = frame.f_locals.get("self")
        if isinstance(caller, base.Pipeline):
            return not getattr(caller, "drives_mine_vae", False)  # the MINE-VAE pipeline passes latents itself
        frame = frame.f_back
    return False


__all__ = ["MineVaeModel", "MineVaeOutput", "MineVaePosterior", "MineVaePreTrainedModel"]
