"""Decoding from z: `generate()` with every option of transformers' `GenerationMixin`, z's place in its cache, and
the latent space it decodes from (prior draws, paths between latents, standardisation).

This file also loads as remote code (`trust_remote_code=True`, copied with `modeling_mine_vae.py`): it imports only
installed libraries.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput


class MineVaeGenerationMixin(GenerationMixin):
    """What [`MineVaeModel`] adds to `GenerationMixin`: z chosen from encoder inputs, a given latent or the prior, and
    carried as generation's model input to each decoding step (`prepare_inputs_for_generation`), where
    `MineVaeModel.forward` decodes under it."""

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
        (z's key/value, embedding and vocabulary heads, the bag-of-words head, the critic) takes z' with the change
        folded into its weights. q(z|x) and p(x|z) describe the same model as before, so reconstructions do not
        change; the prior N(0, I) now sits over z', where the decoder was trained. Given the aggregate posterior's
        moments over training data (`mine_vae.evaluation.aggregate_posterior_moments`), prior samples land where
        posterior samples did: free bits let the posterior drift off the prior (a shared offset the decoder reads as
        "this corpus"), and a prior sample without that offset decodes to text the decoder never saw in training.

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
        bow_head = getattr(self, "bow_head", None)
        self.latent_path.standardize(mean, std, others=[bow_head] if bow_head is not None else None)  # all reading z
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


__all__ = ["MineVaeGenerationMixin"]
