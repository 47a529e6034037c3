"""The MINE-VAE's outputs and its `PreTrainedModel` base: loading (safetensors only, mismatches refused), saving,
sharing (Hub, pipeline, sentence-transformers), weight initialisation and construction from two pretrained models.

This file also loads as remote code (`trust_remote_code=True`, copied with `modeling_mine_vae.py`): it imports only
installed libraries and its sibling modules, relatively.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from .configuration_mine_vae import MineVaeConfig
from .critic import MineCritic
from .latent_path import resized_rows

# `modules.json` of every saved folder (see `save_pretrained`): sentence-transformers chains the one module of
# `sentence_mine_vae.py`, which needs sentence-transformers (an optional extra), so this file does not import it.
SENTENCE_TRANSFORMERS_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_mine_vae.MineVaeSentenceEncoder"}
]


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
            reconstruction_loss + kl_weight * KL (after free bits) - mi_weight * mi_lower_bound (+ bow_weight *
            bow_loss with a bag-of-words head).
        logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`): decoder logits.
        reconstruction_loss (`torch.FloatTensor` scalar, *optional*): -log p(x|z), summed over the label tokens of
            each sentence and averaged over the batch (nats per sentence).
        kl (`torch.FloatTensor` scalar, *optional*): KL(q(z|x) || p(z)) per sentence, averaged over the batch.
        kl_per_dimension (`torch.FloatTensor` of shape `(latent_size,)`, *optional*): the same per latent dimension.
        mi_lower_bound (`torch.FloatTensor` scalar, *optional*): the critic's lower bound on I(x; z), in nats, with the
            critic's parameters held fixed (gradients reach the encoder through z only). Needs at least 2 examples.
        bow_loss (`torch.FloatTensor` scalar, *optional*, with `labels`, x encoded and `config.bow_weight` > 0): the
            bag-of-words loss of z, nats per sentence (see `MineVaeModel.bag_of_words_loss`).
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
    bow_loss: torch.FloatTensor | None = None
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
        # Tensors of another shape are reported below, naming the setting, not as transformers' RuntimeError.
        accepts_other_shapes = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
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
        reshaped = sorted(info.get("mismatched_keys") or [])
        if reshaped and not accepts_other_shapes and pretrained_model_name_or_path is not None:
            changed = _settings_changed_by(kwargs, cls.config_class, pretrained_model_name_or_path)
            key, saved, built = reshaped[0]
            shapes = (
                f"{len(reshaped)} tensor(s) differ in shape, e.g. {key} is {list(saved)} in the weights and "
                f"{list(built)} in the config"
            )
            if changed:
                raise ValueError(
                    f"The weights in {pretrained_model_name_or_path} do not fit the config as changed by "
                    f"{', '.join(changed)}: {shapes}. Load without those arguments."
                )
            raise ValueError(
                f"The weights in {pretrained_model_name_or_path} do not fit its config: {shapes}. Use the config.json "
                "saved with these weights, or save the model again with MineVaeModel.save_pretrained."
            )
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
        bow_head = getattr(self, "bow_head", None)
        if bow_head is not None and not isinstance(bow_head, nn.Linear):  # peft's wrapper, as check_resizable says
            raise ValueError(
                "The bag-of-words head is wrapped by peft, which a resized copy would drop out of; call "
                "resize_token_embeddings on the MineVaeModel before get_peft_model."
            )
        embeddings = self.decoder.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.vocab_size = self.config.decoder.vocab_size  # as PreTrainedModel.resize_token_embeddings records it
        num_tokens = self.decoder.get_output_embeddings().out_features
        self.latent_path.resize_vocab_bias(num_tokens)
        if bow_head is not None:
            self.bow_head = resized_rows(bow_head, num_tokens)
        return embeddings

    # ----------------------------------------------------------------------------------------------------------------
    # Construction from two pretrained models
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str,
        decoder_pretrained_model_name_or_path: str,
        **kwargs,
    ) -> MineVaePreTrainedModel:
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

    # The package sets this to `mine_vae.hub.push_to_hub` when it is imported (mine_vae/__init__.py): the model's files
    # import only each other, because they also run as remote code, where the package may be absent.
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


__all__ = ["MineVaeOutput", "MineVaePosterior", "MineVaePreTrainedModel"]
