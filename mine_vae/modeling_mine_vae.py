"""MINE-VAE: a text VAE whose encoder and decoder are pretrained transformers, with a mutual-information critic head.

`MineVaeModel` is composed of the files beside this one: its outputs and `PreTrainedModel` base
(`pretrained_mine_vae`), z's way into the decoder (`latent_path`), decoding (`generation_mine_vae`) and the critic
(`critic`). All of them also load as remote code (`trust_remote_code=True`): they import only installed libraries and
each other, relatively.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_mine_vae import MineVaeConfig
from .critic import MineCritic, derangement
from .generation_mine_vae import MineVaeGenerationMixin
from .latent_path import LatentPath
from .pretrained_mine_vae import MineVaeOutput, MineVaePosterior, MineVaePreTrainedModel

logger = logging.get_logger(__name__)

# peft's task wrappers (PeftModelForCausalLM, ...) call the model as the task's own model class (inputs_embeds,
# classification heads); a MINE-VAE is none of them. Its idiom is the plain wrapper, as docs/api.md shows.
PEFT_TASK_TYPE_REFUSAL = (
    "MineVaeModel.forward takes no inputs_embeds (it embeds the decoder's tokens itself and adds z): peft's "
    "task_type wrappers (task_type='CAUSAL_LM', 'SEQ_2_SEQ_LM', ...) pass them. Leave task_type unset: "
    "get_peft_model(vae, LoraConfig(target_modules=[...])), or mine_vae.adapters.add_decoder_lora(vae, r=8)."
)


class MineVaeModel(MineVaePreTrainedModel, MineVaeGenerationMixin):
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
        if config.bow_weight > 0:
            # z -> one logit per decoder token: the bag-of-words loss (see `MineVaeConfig.bow_weight`). out_features,
            # not weight.shape: DeepSpeed ZeRO-3 partitions the weight to 0 rows.
            # Built last and without drawing from the global generator (post_init initialises it, last), so that every
            # other weight is the same with and without it: the study starts each method of a seed from the same
            # weights.
            with torch.random.fork_rng(devices=[]):
                self.bow_head = nn.Linear(config.latent_size, self.decoder.get_output_embeddings().out_features)
        # The critic has its own optimizer and step; distributed training syncs its gradients there, not in DDP.
        self._ddp_params_and_buffers_to_ignore = [f"critic.{name}" for name, _ in self.critic.named_parameters()]
        self.generation_config.decoder_start_token_id = config.decoder_start_token_id
        self.post_init()

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
        kl_per_dimension = kl = bound = reconstruction = bow = loss = None
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
            if posterior is not None and hasattr(self, "bow_head"):
                bow = self.bag_of_words_loss(latent, labels)
            loss = self.vae_loss(reconstruction, kl_per_dimension, bound, kl_weight=beta, mi_weight=lam, bow_loss=bow)

        return MineVaeOutput(
            loss=loss,
            logits=logits,
            reconstruction_loss=reconstruction,
            kl=kl,
            kl_per_dimension=kl_per_dimension,
            mi_lower_bound=bound,
            bow_loss=bow,
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
        bow_loss: torch.Tensor | None = None,
        free_bits: float | None = None,
    ) -> torch.Tensor:
        """The VAE's objective: reconstruction + β Σ_d max(KL_d, free_bits) − λ bound (+ `config.bow_weight` ×
        `bow_loss` when given, see `bag_of_words_loss`), with β, λ and the free bits defaulting to
        `config.kl_weight` / `config.mi_weight` / `config.free_bits` (`MineVaeTrainer` lowers the free bits for a
        rate cut, `final_free_bits`). Without `kl_per_dimension` (z given, not encoded) it is the reconstruction
        alone; without a bound (fewer than 2 examples) or with λ = 0 the bound term is left out.

        `forward` and `MineVaeTrainer` both assemble the loss here. Training alternates two phases: the critic's
        updates maximise the bound with z detached (they train the critic alone), then the VAE step minimises this
        loss with the just-updated critic held fixed, so the bound's gradient reaches the encoder through z only.
        The trainer therefore scores the bound itself, after the critic's updates, and passes it in.
        """
        beta = self.config.kl_weight if kl_weight is None else kl_weight
        lam = self.config.mi_weight if mi_weight is None else mi_weight
        floor = self.config.free_bits if free_bits is None else free_bits
        loss = reconstruction
        if kl_per_dimension is not None:
            loss = loss + beta * kl_per_dimension.clamp(min=floor).sum()
            if mi_lower_bound is not None and lam > 0:
                loss = loss - lam * mi_lower_bound
        if bow_loss is not None:
            loss = loss + self.config.bow_weight * bow_loss
        return loss

    def bag_of_words_loss(self, latent: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
        """−Σ_t log softmax(bow_head(z))[label_t] over each sentence's target tokens (-100 skipped), averaged over the
        batch (nats per sentence, like the reconstruction): how well z alone predicts the sentence's words, in any
        order. Needs the `bow_head` a config with `bow_weight` > 0 builds."""
        scores = self.bow_head(latent.to(self.bow_head.weight.dtype))
        log_probs = F.log_softmax(scores.float(), dim=-1)
        kept = labels != -100
        picked = log_probs.gather(1, labels.masked_fill(~kept, 0))
        return -(picked * kept).sum(dim=1).mean()

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


__all__ = ["MineVaeModel", "MineVaeOutput", "MineVaePosterior", "MineVaePreTrainedModel"]
