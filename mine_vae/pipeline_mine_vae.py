"""A transformers pipeline for what a MINE-VAE does: embed texts (posterior means), reconstruct them, sample from the
prior and interpolate between texts.

Every saved MINE-VAE names this pipeline in its config (`custom_pipelines`, under transformers' `feature-extraction`
task), and `save_pretrained` copies this file next to the modelling code, so that

    pipe = pipeline(model=folder_or_hub_id, trust_remote_code=True)      # or pipeline("feature-extraction", ...)
    pipe(["the cat sees the moon"])                                    # posterior means, one list per text
    pipe(["the cat sees the moon"], mode="reconstruct", num_beams=4)   # [{"generated_text": ...}]
    pipe(mode="sample", num_samples=3, do_sample=True, top_p=0.9)     # three samples of p(x)
    pipe(["a cat", "a dog"], mode="interpolate", num_steps=5)        # five texts on the line between them

This file also loads as remote code: it imports only installed libraries (the model arrives as an object).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoTokenizer, Pipeline

MODES = ("embed", "reconstruct", "sample", "interpolate")
# The folders `MineVaeProcessor.save_pretrained` writes the two tokenizers to.
ENCODER_TOKENIZER_FOLDER = "encoder_tokenizer"
DECODER_TOKENIZER_FOLDER = "decoder_tokenizer"


class MineVaePipeline(Pipeline):
    """
    The MINE-VAE's own tasks behind transformers' pipeline interface, batched (`batch_size=`), on the pipeline's device.

    Args (of a call):
        inputs (`str` or list of `str`, *optional*): the texts (none with `mode="sample"`).
        mode (`str`, defaults to `"embed"`): `"embed"` (posterior means: one list of `latent_size` floats per text, or
            a tensor with `return_tensors=True`), `"reconstruct"` (decode each text's posterior mean, or a posterior
            sample with `sample_latent=True`), `"sample"` (`num_samples` texts from prior draws) or `"interpolate"`
            (`num_steps` texts on the line between the posterior means of two texts).
        batch_size (`int`, *optional*): texts or latents per model call.
        generate_kwargs: any option of `model.generate` (`max_new_tokens`, `do_sample`, `top_p`, `num_beams`,
            `num_return_sequences`, ...), passed through.

    Returns:
        `"embed"`: a list of float lists (one per text; one list for a single string). Otherwise a list of
        `{"generated_text": str}` (for `"reconstruct"` with `num_return_sequences=n`, a list of n per text).
    """

    # The tokenizers live in the folder's `encoder_tokenizer/` and `decoder_tokenizer/`: the pipeline loads them.
    _load_tokenizer = False
    _load_processor = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False
    # `model.generate` reads a pipeline caller as a text-generation pipeline (decoder prompts) unless told otherwise.
    drives_mine_vae = True

    def __init__(self, model: Any, processor: Any = None, **kwargs: Any) -> None:
        encoder_tokenizer = kwargs.pop("encoder_tokenizer", None)
        decoder_tokenizer = kwargs.pop("decoder_tokenizer", None)
        if processor is not None:  # a MineVaeProcessor (not a transformers processor this pipeline loads)
            encoder_tokenizer, decoder_tokenizer = processor.encoder_tokenizer, processor.decoder_tokenizer
        if encoder_tokenizer is None or decoder_tokenizer is None:
            encoder_tokenizer, decoder_tokenizer = _load_tokenizers(model, kwargs)
        kwargs.pop("tokenizer", None)
        super().__init__(model=model, tokenizer=decoder_tokenizer, **kwargs)
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        return {}, kwargs, {}

    # The work is done per batch in `__call__`; these keep `Pipeline`'s abstract interface whole.
    def preprocess(self, inputs: Any, **kwargs: Any) -> Any:
        return inputs

    def _forward(self, model_inputs: Any, **kwargs: Any) -> Any:
        return model_inputs

    def postprocess(self, model_outputs: Any, **kwargs: Any) -> Any:
        return model_outputs

    def __call__(  # type: ignore[override]
        self,
        inputs: str | Sequence[str] | None = None,
        mode: str = "embed",
        batch_size: int | None = None,
        return_tensors: bool = False,
        num_samples: int = 1,
        num_steps: int = 5,
        sample_latent: bool = False,
        **generate_kwargs: Any,
    ) -> Any:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not a MINE-VAE pipeline mode; choose one of {', '.join(MODES)}.")
        batch_size = batch_size or self._batch_size or 8
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        generate_kwargs = {**self._forward_params, **generate_kwargs}
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs or [])
        if mode == "sample":
            if texts:
                raise ValueError("mode='sample' draws from the prior and takes no texts; give num_samples=n instead.")
            if num_samples < 1:
                raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
            latents = torch.randn(num_samples, self.model.config.latent_size, device=self.device)
            return self._decode_latents(latents, batch_size, generate_kwargs)
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError(f"mode={mode!r} needs non-empty texts: give a string or a list of strings.")
        if mode == "interpolate":
            if len(texts) != 2:
                raise ValueError(f"mode='interpolate' takes two texts (start and end), got {len(texts)}.")
            means = self._encode(texts, batch_size, sample_latent=False)
            path = self.model.interpolate(means[0], means[1], num_steps)  # refuses num_steps < 2
            return self._decode_latents(path, batch_size, generate_kwargs)
        if mode == "embed":
            if generate_kwargs:
                raise ValueError(f"mode='embed' does not generate; drop {', '.join(sorted(generate_kwargs))}.")
            means = self._encode(texts, batch_size, sample_latent=False).float().cpu()
            embeddings = means if return_tensors else means.tolist()
            return embeddings[0] if single else embeddings
        latents = self._encode(texts, batch_size, sample_latent=sample_latent)
        copies = generate_kwargs.get("num_return_sequences") or 1
        decoded = self._decode_latents(latents, batch_size, generate_kwargs)
        if copies == 1:
            return decoded[0] if single else decoded
        grouped = [decoded[i : i + copies] for i in range(0, len(decoded), copies)]
        return grouped[0] if single else grouped

    @torch.no_grad()
    def _encode(self, texts: list[str], batch_size: int, sample_latent: bool) -> torch.Tensor:
        """Posterior means (or samples) of `texts`, `batch_size` at a time, in eval mode."""
        latents = []
        for start in range(0, len(texts), batch_size):
            batch = self.encoder_tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            posterior = self.model.encode(batch["input_ids"], batch["attention_mask"])
            latents.append(posterior.sample() if sample_latent else posterior.mu)
        return torch.cat(latents)

    def _decode_latents(self, latents: torch.Tensor, batch_size: int, generate_kwargs: dict) -> list[dict[str, str]]:
        """One `{"generated_text": ...}` per latent (and per returned sequence), `batch_size` latents a call."""
        generate_kwargs = {"max_new_tokens": 50, **generate_kwargs}  # as mine_vae.latent.decode's default
        texts = []
        for start in range(0, latents.shape[0], batch_size):
            ids = self.model.generate(latent=latents[start : start + batch_size], **generate_kwargs)
            texts += self.decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


def _load_tokenizers(model: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Both tokenizers from the model's folder or Hub repo (where `MineVaeProcessor.save_pretrained` put them)."""
    source = getattr(model, "name_or_path", "") or ""
    # The revision the model was loaded at (a Hub commit; None for a local folder), so both come from one state.
    hub = {"revision": getattr(model.config, "_commit_hash", None)}
    try:
        return tuple(
            AutoTokenizer.from_pretrained(source, subfolder=folder, **hub)
            for folder in (ENCODER_TOKENIZER_FOLDER, DECODER_TOKENIZER_FOLDER)
        )
    except (OSError, ValueError) as error:
        where = source if source and os.path.isdir(source) else (source or "the model")
        raise ValueError(
            f"The MINE-VAE pipeline found no tokenizers in {where}/{ENCODER_TOKENIZER_FOLDER} and "
            f"{DECODER_TOKENIZER_FOLDER} ({type(error).__name__}); save them with processor.save_pretrained(folder), "
            "or pass processor=MineVaeProcessor(...)."
        ) from error


__all__ = ["MineVaePipeline"]
